"""Shared test set-up.

Airflow reads its configuration when first imported, so the isolated AIRFLOW_HOME is set here, at
import time, before any test module imports Airflow. Emulators run as real HTTP servers on loopback;
ledgers are real SQLite files and the real PostgreSQL on 127.0.0.1:5432 (one fresh schema per test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="ascora-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("ASCORA_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite) for dag.test()."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy())
    return _HOME


@pytest.fixture(scope="session")
def small_tenant(tmp_path_factory):
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    folder = tmp_path_factory.mktemp("tenant-small")
    generate_tenant(folder, size=600, seed=7)
    return folder


@pytest.fixture(scope="session")
def dirty_tenant(tmp_path_factory):
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    folder = tmp_path_factory.mktemp("tenant-dirty")
    generate_tenant(folder, size=1500, seed=11, dirty=True)
    return folder


def tenant_members(tenant: Path, keep_unmatched: int = 1) -> list[dict]:
    """Twenty workspace members for a tenant's staff, leaving some staff unmatched (fallback owner)."""
    users = [json.loads(line) for line in (tenant / "api" / "users.jsonl").read_text().splitlines() if line]
    members = [{"email": u["emailAddress"], "firstName": u["firstName"], "lastName": u["lastName"]}
               for u in users[: max(0, len(users) - keep_unmatched)] if u.get("emailAddress")]
    return members + [{"email": "owner@example.com", "firstName": "Fallback", "lastName": "Owner"}]


@pytest.fixture
def ledger_url(request, tmp_path):
    """Parametrise indirectly with 'sqlite' or 'postgres'; yields (url, schema)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}", None
        return
    import sqlalchemy as sa

    schema = f"ledger_e2e_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - the machine's PostgreSQL is down
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    yield PG_URL, schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (long soaks, large tenants) run only with ASCORA_FULL_BENCH=1 (``make bench``)."""
    if os.environ.get("ASCORA_FULL_BENCH") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ASCORA_FULL_BENCH=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def in_doubt_settled(monkeypatch):
    """Per target object, the most creates a ``MapLoader`` held in doubt when it settled them: what shows
    that a load went on past a timed-out create instead of waiting for it (``engine.load``)."""
    from airflow_ascora_provider.engine.load import MapLoader

    seen: dict[str, int] = {}
    settle = MapLoader.settle

    def counting(self):
        seen[self.map.target] = max(seen.get(self.map.target, 0), len(self._in_doubt))
        return settle(self)

    monkeypatch.setattr(MapLoader, "settle", counting)
    return seen
