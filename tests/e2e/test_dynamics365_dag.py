"""Real DAG runs (dag.test) of ascora_to_dynamics365, its delta DAG and ascora_rollback, against the emulators.

One scenario per ledger backend (SQLite file, PostgreSQL schema): full run → idempotent re-run (zero
writes) → delta after changing source records (exactly those written) → rollback of the delta and of
the migration → the Dataverse environment holds exactly the rows it held before. The Dataverse
emulator is served over TLS and the hook authenticates through msal against its token endpoint.
"""

from __future__ import annotations

import shutil

import pytest

from tests.e2e.scenario import DELTA_WRITES, NEW_PHONE, change_ascora_for_delta, roll_back
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run as _run
from tests.integration.dataverse_support import airflow_connection, dataverse_users, serve

pytestmark = pytest.mark.e2e


@pytest.fixture
def sandbox(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch):
    import json

    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp

    tenant = tmp_path / "tenant"  # a private copy: the delta edits source records
    shutil.copytree(small_tenant, tenant)
    url, schema = ledger_url
    ascora = ServedApp(ascora_app(tenant)).start()
    dataverse = serve(users=dataverse_users(tenant))
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
        "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
        "extra": {"enable_extensions": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", airflow_connection(dataverse))
    monkeypatch.setenv("ASCORA_LEDGER_URL", url)
    if schema:
        monkeypatch.setenv("ASCORA_LEDGER_SCHEMA", schema)
    monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging"))
    dispose_engines()
    yield {"ascora": ascora, "dataverse": dataverse, "tenant": tenant}
    ascora.stop()
    dataverse.stop()
    dispose_engines()


def _rows(dataverse) -> dict[str, list[dict]]:
    return dataverse.app.state.dataverse.snapshot()["records"]


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_full_rerun_delta_and_rollback(sandbox):
    dataverse = sandbox["dataverse"]
    before = _rows(dataverse)
    conf = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "all"}

    first = _run("ascora_to_dynamics365", conf)
    ledger = _ledger()
    writes = ledger.audit_ops_count(first.run_id)
    sample_writes = ledger.audit_ops_count(f"{first.run_id}__sample")
    assert writes.get("create", 0) + sample_writes.get("create", 0) > 350
    reconcile = first.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    rows = _rows(dataverse)
    for table in ("account", "asc_job", "asc_quote", "asc_invoice", "task", "annotation", "asc_form_response"):
        assert rows[table], f"nothing written to {table}"
    accounts = [r["asc_ascora_id"] for r in rows["account"]]
    assert len(accounts) == len(set(accounts)), "an account was written twice"
    assert dataverse.app.state.dataverse.snapshot()["unpublished"] == []

    # An identical second run changes nothing at all.
    second = _run("ascora_to_dynamics365", conf)
    assert ledger.audit_ops_count(second.run_id) == {}

    # Change two customers and one job in Ascora, add a new customer: the delta writes exactly those.
    change_ascora_for_delta(sandbox["ascora"].url)
    delta = _run("ascora_dynamics365_delta", {})
    assert ledger.audit_ops_count(delta.run_id) == DELTA_WRITES
    assert any(r["telephone1"] == NEW_PHONE for r in _rows(dataverse)["account"])

    # Roll back the delta, then the migration (with its sample): Dataverse is back to where it was.
    roll_back("dynamics365", delta.run_id, first.run_id)
    after = _rows(dataverse)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(not rows for name, rows in after.items() if name not in before)  # the new tables are empty
    assert ledger.get_run(first.run_id)["status"] == "rolled_back"
    roll_back("dynamics365", first.run_id)
    assert _rows(dataverse) == after
