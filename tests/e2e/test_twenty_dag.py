"""Real DAG runs (dag.test) of ascora_to_twenty, its delta DAG and ascora_rollback, against the emulators.

One scenario per ledger backend (SQLite file, PostgreSQL schema): full run → idempotent re-run (zero
writes) → delta after changing source records (exactly those written) → rollback of the delta and of
the migration → the Twenty workspace holds exactly the records it held before.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import tenant_members
from tests.e2e.scenario import DELTA_WRITES, change_ascora_for_delta, roll_back
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run as _run

pytestmark = pytest.mark.e2e


@pytest.fixture
def sandbox(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch):
    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app

    # A private copy: the delta test edits source records.
    import shutil

    tenant = tmp_path / "tenant"
    shutil.copytree(small_tenant, tenant)
    url, schema = ledger_url
    ascora = ServedApp(ascora_app(tenant)).start()
    twenty = ServedApp(twenty_app(rate_limit=100_000, members=tenant_members(tenant))).start()
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
        "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
        "extra": {"enable_extensions": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_TWENTY_DEFAULT", json.dumps({
        "conn_type": "twenty", "host": twenty.url, "password": "twenty-sandbox-key",
        "extra": {"requests_per_minute": 0}}))
    monkeypatch.setenv("ASCORA_LEDGER_URL", url)
    if schema:
        monkeypatch.setenv("ASCORA_LEDGER_SCHEMA", schema)
    monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging"))
    dispose_engines()
    yield {"ascora": ascora, "twenty": twenty, "tenant": tenant}
    ascora.stop()
    twenty.stop()
    dispose_engines()


def _records(twenty) -> dict[str, list[dict]]:
    return twenty.app.state.twenty.snapshot()["records"]


def _writes(ledger, run_id) -> dict[str, int]:
    return ledger.audit_ops_count(run_id)


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_full_rerun_delta_and_rollback(sandbox):
    twenty = sandbox["twenty"]
    before = _records(twenty)
    conf = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "all"}

    first = _run("ascora_to_twenty", conf)
    ledger = _ledger()
    writes = _writes(ledger, first.run_id)
    sample_writes = _writes(ledger, f"{first.run_id}__sample")
    assert writes.get("create", 0) + sample_writes.get("create", 0) > 250
    reconcile = first.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    people = _records(twenty)["person"]
    ascora_ids = [p["ascoraId"] for p in people if p.get("ascoraId")]
    assert len(ascora_ids) == len(set(ascora_ids)), "a person was written twice"

    # An identical second run changes nothing at all.
    second = _run("ascora_to_twenty", conf)
    assert _writes(ledger, second.run_id) == {}

    # Change two customers and one job in Ascora, add a new customer: the delta writes exactly those.
    change_ascora_for_delta(sandbox["ascora"].url)
    # Scheduled deltas run with default params: the fallback owner chosen for the migration stays.
    delta = _run("ascora_twenty_delta", {})
    ops = _writes(ledger, delta.run_id)
    assert ops == DELTA_WRITES, ops

    # Roll back the delta, then the migration (with its sample): Twenty is back to where it was.
    roll_back("twenty", delta.run_id, first.run_id)
    after = _records(twenty)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(not rows for name, rows in after.items() if name not in before)
    assert ledger.get_run(first.run_id)["status"] == "rolled_back"

    # Rollback is idempotent: a second one finds nothing to undo and leaves everything as it is.
    roll_back("twenty", first.run_id)
    assert _records(twenty) == after


def test_rollback_refuses_without_confirmation(sandbox):
    from airflow_ascora_provider.operators.migration import RollbackOperator

    op = RollbackOperator(task_id="rb", destination="twenty", target_run_id="nope", confirm=False)
    with pytest.raises(ValueError, match="confirm"):
        op.execute({})
