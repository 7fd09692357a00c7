"""The Twenty migration DAG on Airflow's CeleryExecutor: two workers, Redis broker, PostgreSQL everywhere.

What a production deployment looks like, on this machine: a fresh PostgreSQL database holds Airflow's
metadata, Celery's results and the ledger; Redis (one free database number) is the broker; an API
server, a scheduler, a DAG processor and two ``airflow celery worker`` processes with distinct names
run as real processes. The DAG is the Twenty migration with small load units, so every wave maps
into several tasks. The test checks that

* the run succeeds and the mapped load tasks ran on *both* workers (``task_instance.hostname``);
* Twenty ends up with the same records (by ``ascoraId``, and the same content) as a local
  ``dag.test()`` run of the same DAG against a second emulator.

Every process is started in its own session and its whole group is stopped at the end, pass or fail;
the database is dropped and the Redis database flushed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "ascora_to_twenty_celery"
WORKERS = ("worker-a", "worker-b")
UNIT_ROWS = 50
CONF = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "sample"}
WORKER_ENV = "ASCORA_CELERY_WORKER"

DAG_FILE = f'''"""The Twenty migration with small load units, so each wave maps into several tasks."""

from airflow_ascora_provider.example_dags import migration_dag

dag = migration_dag("twenty", dag_id="{DAG_ID}", label="Twenty CRM", max_concurrency=2)
for task in dag.tasks:
    if task.task_id.startswith("plan_wave_"):
        task.unit_rows = {UNIT_ROWS}
'''


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the workers: the name each worker was started with.

    Both workers run on this one machine, so the default (the machine's FQDN) would not tell them apart.
    """
    return os.environ.get(WORKER_ENV) or socket.getfqdn()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_redis_db():
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.dbsize() == 0:
            client.set("ascora-celery-test", "claimed")  # keep other runs off it until we flush
            return number, client
    pytest.fail("no empty Redis database on 127.0.0.1:6379")


class _Processes:
    """Airflow components started by this test; each in its own session so its children stop with it."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def run(self, *args: str, timeout: float = 300) -> str:
        out = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, cwd=REPO, timeout=timeout,
                             capture_output=True, text=True)
        if out.returncode:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out.stdout

    def start(self, name: str, *args: str, **extra_env: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "airflow", *args], env={**self.env, **extra_env}, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.started.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group too: a worker's forked children, the scheduler's subprocesses
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture
def metadata_db():
    """A fresh PostgreSQL database for Airflow's metadata, Celery's results and the ledger; dropped after."""
    import sqlalchemy as sa

    from tests.conftest import PG_URL

    name = f"ascora_celery_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - the machine's PostgreSQL is down
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    url = sa.engine.make_url(PG_URL).set(database=name)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _stable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Twenty's records with everything an instance makes up (ids, timestamps, file paths) replaced by
    what identifies it across instances: the Ascora id, the member's e-mail, the file's content."""
    keys: dict[str, str] = {}
    for name, rows in snapshot["records"].items():
        for row in rows:
            if row.get("ascoraId"):
                keys[row["id"]] = f"{name}:{row['ascoraId']}"
            elif name == "workspaceMember":
                keys[row["id"]] = f"member:{row.get('userEmail')}"
    files = {path: info["sha256"] for path, info in snapshot["files"].items()}
    volatile = {"id", "createdAt", "updatedAt", "deletedAt", "position", "createdBy"}

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, str):
            return keys.get(value) or files.get(value) or value
        return value

    out: dict[str, Any] = {}
    for name, rows in snapshot["records"].items():
        if name == "workspaceMember":
            continue
        keyed = {row["ascoraId"]: norm(row) for row in rows if row.get("ascoraId")}
        loose = sorted(json.dumps(norm(row), sort_keys=True, default=str) for row in rows if not row.get("ascoraId"))
        if keyed or loose:
            out[name] = {"by_ascora_id": keyed, "others": loose}
    return out


def _dag_run_state(engine, run_id: str) -> str | None:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r"),
                            {"d": DAG_ID, "r": run_id}).scalar()


@pytest.mark.timeout(900)
def test_mapped_loads_spread_over_two_celery_workers_and_match_a_local_run(
        small_tenant, metadata_db, airflow_db, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app
    from tests.conftest import tenant_members

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "ascora_to_twenty_celery.py").write_text(DAG_FILE)
    logs = tmp_path / "logs"
    logs.mkdir()
    db_url = metadata_db.render_as_string(hide_password=False)
    redis_db, redis_client = _free_redis_db()
    api_port = _free_port()
    jwt_secret = uuid.uuid4().hex

    ascora = ServedApp(ascora_app(small_tenant)).start()
    celery_twenty = ServedApp(twenty_app(rate_limit=100_000, members=tenant_members(small_tenant))).start()
    local_twenty = ServedApp(twenty_app(rate_limit=100_000, members=tenant_members(small_tenant))).start()

    def connections(twenty_url: str) -> dict[str, str]:
        return {
            "AIRFLOW_CONN_ASCORA_DEFAULT": json.dumps({"conn_type": "ascora", "host": ascora.url,
                                                       "password": "ascora-sandbox-key",
                                                       "extra": {"enable_extensions": True}}),
            "AIRFLOW_CONN_TWENTY_DEFAULT": json.dumps({"conn_type": "twenty", "host": twenty_url,
                                                       "password": "twenty-sandbox-key",
                                                       "extra": {"requests_per_minute": 0}}),
        }

    home = tmp_path / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASCORA_"))}
    env.update(connections(celery_twenty.url))
    env.update({
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__API__SECRET_KEY": jwt_secret,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "ASCORA_LEDGER_URL": db_url,
        "ASCORA_LEDGER_SCHEMA": "ascora_ledger",
        "ASCORA_STAGING_PATH": str(tmp_path / "staging-celery"),
    })
    procs = _Processes(env, logs)
    engine = sa.create_engine(db_url)
    try:
        # The metadata database migrates in the background while the local run goes.
        migrate = subprocess.Popen([sys.executable, "-m", "airflow", "db", "migrate"], env=env, cwd=REPO,
                                   stdout=open(logs / "db-migrate.log", "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        procs.started.append(("db-migrate", migrate))

        # 1. The reference: the same DAG, run locally with dag.test() against its own emulator and ledger.
        for key, value in connections(local_twenty.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("ASCORA_LEDGER_URL", f"sqlite:///{tmp_path / 'local-ledger.sqlite'}")
        monkeypatch.delenv("ASCORA_LEDGER_SCHEMA", raising=False)
        monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging-local"))
        # dag.test() runs what the metadata DB has parsed from the configured bundles: add this folder.
        monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
            {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
            {"name": "celery-test-dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": str(dags)}},
        ]))
        dispose_engines()
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(str(dags))
        assert not bag.import_errors, bag.import_errors
        local = bag.get_dag(DAG_ID).test(run_conf=CONF)
        assert local.state == "success", [(ti.task_id, ti.state) for ti in local.get_task_instances()]
        dispose_engines()

        # 2. The distributed run.
        assert migrate.wait(timeout=600) == 0, procs.tail("db-migrate")
        procs.started.remove(("db-migrate", migrate))
        procs.start("api-server", "api-server", "--port", str(api_port), "--host", "127.0.0.1")
        procs.start("scheduler", "scheduler")
        procs.start("dag-processor", "dag-processor")
        for name in WORKERS:
            procs.start(name, "celery", "worker", "--concurrency", "1", "--celery-hostname", f"{name}@%h",
                        **{WORKER_ENV: name})
        deadline = time.monotonic() + 240
        while True:
            procs.check_alive()
            with engine.connect() as conn:
                parsed = conn.execute(sa.text("SELECT count(*) FROM serialized_dag WHERE dag_id = :d"),
                                      {"d": DAG_ID}).scalar()
            if parsed:
                break
            assert time.monotonic() < deadline, procs.tail("dag-processor")
            time.sleep(2)
        run_id = f"celery-{uuid.uuid4().hex[:8]}"
        procs.run("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(CONF))
        deadline = time.monotonic() + 600
        while (state := _dag_run_state(engine, run_id)) not in ("success", "failed"):
            procs.check_alive()
            assert time.monotonic() < deadline, f"run still {state}: " + procs.tail("scheduler")
            time.sleep(3)
        with engine.connect() as conn:
            tis = conn.execute(sa.text(
                "SELECT task_id, map_index, state, hostname FROM task_instance WHERE dag_id = :d AND run_id = :r"),
                {"d": DAG_ID, "r": run_id}).all()
        failed = [(t.task_id, t.map_index, t.state) for t in tis if t.state not in ("success", "skipped")]
        assert state == "success", (failed, procs.tail(WORKERS[0]), procs.tail(WORKERS[1]))

        loads = [t for t in tis if t.task_id.startswith("load_wave_") and t.map_index >= 0 and t.state == "success"]
        hosts = {t.hostname for t in loads}
        print(f"\n{len(loads)} mapped load units: "
              + ", ".join(f"{h}: {sum(1 for t in loads if t.hostname == h)}" for h in sorted(hosts)))
        assert len(loads) >= 6, loads
        assert hosts == set(WORKERS), hosts
        assert {t.hostname for t in tis if t.state == "success"} <= set(WORKERS)

        # 3. Same records, same content, as the local run.
        celery_records = _stable(celery_twenty.app.state.twenty.snapshot())
        local_records = _stable(local_twenty.app.state.twenty.snapshot())
        # Exactly: two records sharing an e-mail Twenty keeps unique get the same winner on both, the
        # record first in staging order (``unique: true`` in the mapping; maps that write the same
        # object load in successive waves).
        assert set(celery_records) == set(local_records)
        for name in local_records:
            assert celery_records[name] == local_records[name], name
        assert sum(len(v["by_ascora_id"]) for v in celery_records.values()) > 250
    finally:
        procs.stop_all()
        engine.dispose()
        for app in (ascora, celery_twenty, local_twenty):
            app.stop()
        redis_client.flushdb()
        redis_client.close()
        dispose_engines()
