"""Real DAG runs (dag.test) of ascora_to_zoho, its delta DAG and ascora_rollback, against the emulators.

* One scenario per ledger backend (SQLite file, PostgreSQL schema): full run → idempotent re-run (zero
  writes) → delta after changing source records (exactly those written) → rollback of the delta and
  of the migration → the Zoho org holds exactly the records it held before.
* A low Bulk Write threshold: big load units go out as Bulk Write jobs, the tasks defer on the
  bulk-job trigger, and the results land in the ledger like batch writes.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import tenant_members
from tests.e2e.scenario import DELTA_WRITES, change_ascora_for_delta, roll_back
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run as _run

pytestmark = pytest.mark.e2e

CLIENT = {"client_id": "1000.SANDBOXCLIENT", "client_secret": "sandbox-secret",
          "refresh_token": "1000.sandbox-refresh-token"}
CONF = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "all"}


def zoho_users(tenant) -> list[dict]:
    """Zoho users for the tenant's staff (one left unmatched), plus the fallback owner."""
    return [{"email": m["email"], "first_name": m["firstName"], "last_name": m["lastName"]}
            for m in tenant_members(tenant)]


@pytest.fixture
def sandbox(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch, request):
    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.zoho import create_app as zoho_app

    options = getattr(request, "param", {})
    tenant = tmp_path / "tenant"
    shutil.copytree(small_tenant, tenant)  # a private copy: the delta test edits source records
    url, schema = ledger_url
    ascora = ServedApp(ascora_app(tenant)).start()
    zoho = ServedApp(zoho_app(users=zoho_users(tenant), **options.get("emulator", {}))).start()
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
        "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
        "extra": {"enable_extensions": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_ZOHO_DEFAULT", json.dumps({
        "conn_type": "zoho", "host": zoho.url, "login": CLIENT["client_id"], "password": CLIENT["client_secret"],
        "extra": {"refresh_token": CLIENT["refresh_token"], "edition": "enterprise", "users": 4,
                  **options.get("connection", {})}}))
    monkeypatch.setenv("ASCORA_LEDGER_URL", url)
    if schema:
        monkeypatch.setenv("ASCORA_LEDGER_SCHEMA", schema)
    monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging"))
    dispose_engines()
    yield {"ascora": ascora, "zoho": zoho, "tenant": tenant}
    ascora.stop()
    zoho.stop()
    dispose_engines()


def _state(zoho):
    return zoho.app.state.zoho


def _records(zoho) -> dict[str, list[dict]]:
    return _state(zoho).snapshot()["records"]


def _assert_no_duplicates(zoho) -> None:
    for module, rows in _records(zoho).items():
        ids = [r["Ascora_ID"] for r in rows if r.get("Ascora_ID")]
        assert len(ids) == len(set(ids)), f"a {module} record was written twice"
    notes = [r["Note_Content"].rsplit("[Ascora ID: ", 1)[-1] for r in _records(zoho)["Notes"]
             if "[Ascora ID: " in (r.get("Note_Content") or "")]
    assert len(notes) == len(set(notes)), "a note was written twice"


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_full_rerun_delta_and_rollback(sandbox):
    zoho = sandbox["zoho"]
    before = _records(zoho)

    first = _run("ascora_to_zoho", CONF)
    ledger = _ledger()
    writes = ledger.audit_ops_count(first.run_id)
    sample_writes = ledger.audit_ops_count(f"{first.run_id}__sample")
    assert writes.get("create", 0) + sample_writes.get("create", 0) > 250
    reconcile = first.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    _assert_no_duplicates(zoho)
    records = _records(zoho)
    # Every seed row landed: accounts (with the holding account), sites, contacts, deals from jobs and
    # quotes, one task per job phase, notes (job notes, invoices, quote lines) and files.
    for module in ("Accounts", "Service_Sites", "Contacts", "Deals", "Tasks", "Notes"):
        assert records[module], f"nothing was written to {module}"
    assert _state(zoho).attachments
    holding = [a for a in records["Accounts"] if a.get("Ascora_ID") == "holding:Ascora Import"]
    assert len(holding) == 1 and any((a.get("Parent_Account") or {}).get("id") == holding[0]["id"]
                                     for a in records["Accounts"])
    assert any(d.get("Job_Status") for d in records["Deals"]) and any(d.get("Quote_Status") for d in records["Deals"])
    assert all(t.get("$se_module") is None and t["What_Id"]["module"] == "Deals" for t in records["Tasks"])
    fields = _state(zoho).modules["Deals"].fields
    form_fields = [f for f in fields.values() if f["custom_field"] and f["api_name"].startswith("form_")]
    assert form_fields and all("{" in (f["tooltip"] or {}).get("value", "") for f in form_fields)

    # An identical second run changes nothing at all.
    second = _run("ascora_to_zoho", CONF)
    assert ledger.audit_ops_count(second.run_id) == {}

    # Change two customers and one job in Ascora, add a new customer: the delta writes exactly those.
    change_ascora_for_delta(sandbox["ascora"].url)
    delta = _run("ascora_zoho_delta", {})
    assert ledger.audit_ops_count(delta.run_id) == DELTA_WRITES

    # Roll back the delta, then the migration (with its sample): the org is back to where it was.
    roll_back("zoho", delta.run_id, first.run_id)
    after = _records(zoho)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(not rows for name, rows in after.items() if name not in before)
    assert not _state(zoho).attachments
    assert ledger.get_run(first.run_id)["status"] == "rolled_back"

    roll_back("zoho", first.run_id)
    assert _records(zoho) == after


@pytest.mark.parametrize("sandbox", [{"connection": {"bulk_threshold": 10}}], indirect=True)
def test_big_units_go_through_bulk_write_jobs(sandbox):
    zoho = sandbox["zoho"]
    run = _run("ascora_to_zoho", {**CONF, "verify": "sample"})
    jobs = _state(zoho).bulk_jobs
    assert jobs and all(j["status"] == "COMPLETED" for j in jobs.values())
    bulk_modules = {j["module"] for j in jobs.values()}
    assert bulk_modules & {"Accounts", "Deals", "Contacts"}, bulk_modules
    reconcile = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    _assert_no_duplicates(zoho)
    # A second run writes nothing, bulk or not.
    second = _run("ascora_to_zoho", {**CONF, "verify": "none"})
    assert _ledger().audit_ops_count(second.run_id) == {}
    assert len(_state(zoho).bulk_jobs) == len(jobs)
