"""Secrets: a full DAG run leaves the API keys it used nowhere an operator or a log shipper reads.

The migration DAG runs end to end (``dag.test`` with ``auto_approve``) with distinctive keys in the
Ascora and CRM connections. Afterwards the task logs (everything the run printed or logged, down to
DEBUG, and every file under AIRFLOW_HOME, its logs folder included), the XCom table and the rest of
the Airflow metadata DB, the reports, the staging snapshot and the ledger are searched for the keys,
and hold none of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ASCORA_SECRET = "ascora-KEY-4f9d2c7e51b8a3"
CRM_SECRET = "crm-TOKEN-8c1e6b0a93d57f"


def _files_holding(folder: Path, secrets: tuple[str, ...]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return hits


def _rows_holding(engine, secrets: tuple[str, ...]) -> tuple[list[str], dict[str, int]]:
    """Every table's rows as text, searched; also returns the row count per table."""
    import sqlalchemy as sa

    hits, counts = [], {}
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            counts[table.name] = len(rows)
            for row in rows:
                text = " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
                hits += [f"{table.name}: {s}" for s in secrets if s in text]
    return hits, counts


def test_full_run_leaves_no_api_key_behind(destination, small_tenant, tmp_path):
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from tests.resilience.destinations import FALLBACK_OWNER

    secrets = (ASCORA_SECRET, CRM_SECRET)
    # An AIRFLOW_HOME of its own: every file in it is searched, and the session's shared one carries
    # other tests' processes (a full CI run found its DB damaged by then).
    airflow_db = tmp_path / "airflow-home"
    airflow_db.mkdir()
    home_env = os.environ | {"AIRFLOW_HOME": str(airflow_db)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=home_env, check=True, capture_output=True)
    tenant = tmp_path / "tenant"
    shutil.copytree(small_tenant, tenant)
    staging, ledger = tmp_path / "staging", tmp_path / "ledger.sqlite"
    conf = {"auto_approve": True, "fallback_owner": FALLBACK_OWNER, "sample_size": 60, "verify": "sample"}
    with ServedApp(ascora_app(tenant, api_key=ASCORA_SECRET)) as ascora, \
            destination.serve(destination.create_emulator(tenant, CRM_SECRET)) as crm:
        env = home_env | dict([destination.conn_env(crm.url, CRM_SECRET)]) | {
            "AIRFLOW_CONN_ASCORA_DEFAULT": json.dumps({"conn_type": "ascora", "host": ascora.url,
                                                       "password": ASCORA_SECRET,
                                                       "extra": {"enable_extensions": True}}),
            "ASCORA_LEDGER_URL": f"sqlite:///{ledger}",
            "ASCORA_STAGING_PATH": str(staging),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",  # the most a task ever logs
        }
        # The CLI's `dags test`: the whole DAG in one process, task logs on its stdout/stderr.
        cli = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", destination.dag_id,
                              "--conf", json.dumps(conf)], env=env, capture_output=True, text=True, timeout=900)
        # The keys really were used: both emulators served authenticated requests.
        assert any(r.status == 200 for r in ascora.control.requests), cli.stderr[-3000:]
        assert any(200 <= r.status < 300 and r.method == "POST" for r in crm.control.requests)
    printed = cli.stdout + cli.stderr
    assert "extracted customer" in printed and "DEBUG" in printed.upper(), "task logs were captured at DEBUG"
    assert re.search(r"state=success|DagRunState.SUCCESS|'success'", printed) or _last_run_state(
        destination.dag_id) == "success", printed[-3000:]
    leaks = [line[:300] for line in printed.splitlines()
             if any(s in line for s in secrets) and not _mask_request(line)]
    assert not leaks, "\n".join(leaks[:40])
    # AIRFLOW_HOME: its logs folder, the config and the metadata DB file, byte for byte.
    assert _files_holding(airflow_db, secrets) == []

    assert list(staging.rglob("*.html")), "the run wrote reports"
    assert _files_holding(staging, secrets) == []  # snapshot, files, manifest, reports

    import sqlalchemy as sa

    metadata = sa.create_engine(f"sqlite:///{_snapshot_db(airflow_db / 'airflow.db', tmp_path / 'metadata.db')}")
    hits, counts = _rows_holding(metadata, secrets)
    metadata.dispose()
    assert counts.get("xcom", 0) > 0, "the run pushed XComs, which are searched"
    assert hits == []
    ledger_engine = sa.create_engine(f"sqlite:///{ledger}")
    hits, counts = _rows_holding(ledger_engine, secrets)
    ledger_engine.dispose()
    assert counts.get("ascora_crosswalk", 0) > 0
    assert hits == []


def _snapshot_db(source: Path, target: Path, attempts: int = 5) -> Path:
    """A consistent copy of a SQLite file other processes of the session may still be writing.

    The metadata DB is shared by the whole test session; reading it in place once failed with "database
    disk image is malformed" in a full CI run (never alone), as a page changed under the reader. SQLite's
    backup API copies a consistent snapshot and starts over when the source changes; a file that is
    really damaged fails every attempt, and the test with it.
    """
    import sqlite3
    import time

    for attempt in range(attempts):
        try:
            target.unlink(missing_ok=True)
            with sqlite3.connect(source, timeout=30) as src, sqlite3.connect(target) as dst:
                src.backup(dst)
            return target
        except sqlite3.DatabaseError:
            if attempt == attempts - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def _mask_request(line: str) -> bool:
    """The one line allowed to hold a key: ``dags test``'s in-process supervisor echoing a MaskSecret.

    When a task reads a connection, the Task SDK sends its password to the supervisor in a
    ``MaskSecret`` message so the redactor masks it from then on. ``dags test`` replaces the socket to
    a worker's supervisor with an in-process stand-in (``InProcessSupervisorComms``) that logs every
    message it relays at DEBUG, that one included. A worker's real supervisor does not log it, and
    the message is Airflow's, not the provider's: every other line the run printed must hold no key.
    """
    return "Sending request" in line and "supervisor.py" in line and "msg=MaskSecret(value=" in line


def _last_run_state(dag_id: str) -> str | None:
    from airflow.models import DagRun

    runs = sorted(DagRun.find(dag_id=dag_id), key=lambda r: r.start_date or r.logical_date)
    return str(runs[-1].state) if runs else None
