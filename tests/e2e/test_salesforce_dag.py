"""Real DAG runs (dag.test) of ascora_to_salesforce, its delta DAG and ascora_rollback, against the emulators.

* Full run → identical re-run (zero writes) → delta after changing source records (exactly those
  written) → rollback of the delta and of the migration → the org holds exactly what it held before.
  Once per ledger backend (SQLite file, PostgreSQL schema).
* The load's two waits in one run: with a low ``bulk_threshold`` the units go out as Bulk API 2.0
  jobs and the tasks defer on BulkJobTrigger while the jobs run; and the daily API quota runs out
  mid-load: the plugin stops before the reserve, the task defers until the pause is over and resumes
  where it stopped, without a task retry. Every record lands once.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from urllib.parse import unquote_plus

import pytest

from tests.conftest import tenant_members
from tests.e2e.scenario import DELTA_WRITES, NEW_PHONE, change_ascora_for_delta, roll_back
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run as _run

pytestmark = pytest.mark.e2e

CONF = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "all"}


@pytest.fixture
def sandbox(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch, request):
    """Ascora + a Salesforce org where the admin created the custom objects; connections in the env."""
    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.salesforce import DEFAULT_SESSION_ID, TlsServedApp, create_app

    extras = getattr(request, "param", {})
    tenant = tmp_path / "tenant"  # a private copy: the delta test edits source records
    shutil.copytree(small_tenant, tenant)
    url, schema = ledger_url
    ascora = ServedApp(ascora_app(tenant)).start()
    org = TlsServedApp(create_app(users=tenant_members(tenant), custom_objects=[
        {"name": "Invoice__c", "label": "Invoice"}, {"name": "Quote_Line_Item__c", "label": "Quote Line Item"}]),
        cert_dir=tmp_path / "tls").start()
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
        "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
        "extra": {"enable_extensions": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps({"conn_type": "salesforce", "extra": {
        "instance_url": org.url, "version": "62.0", "access_token": DEFAULT_SESSION_ID,
        "ca_bundle": str(org.ca_file), "bulk_poll_seconds": 0.3, **extras}}))
    monkeypatch.setenv("ASCORA_LEDGER_URL", url)
    if schema:
        monkeypatch.setenv("ASCORA_LEDGER_SCHEMA", schema)
    monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging"))
    dispose_engines()
    yield {"ascora": ascora, "org": org, "tenant": tenant}
    ascora.stop()
    org.stop()
    dispose_engines()


def _data(org) -> dict[str, list[dict]]:
    return org.app.state.salesforce.snapshot()["records"]


def _assert_reconciled_once(org, run) -> None:
    reconcile = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    for name, rows in _data(org).items():
        keys = [r["Ascora_Id__c"] for r in rows if r.get("Ascora_Id__c")]
        assert len(keys) == len(set(keys)), f"{name}: an Ascora record was written twice"


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_full_rerun_delta_and_rollback_to_the_exact_org(sandbox):
    from tests.integration.test_salesforce_engine import _users

    org = sandbox["org"]
    before, users_before = _data(org), _users(org)

    first = _run("ascora_to_salesforce", CONF)
    ledger = _ledger()
    writes = ledger.audit_ops_count(first.run_id)
    sample = ledger.audit_ops_count(f"{first.run_id}__sample")
    assert writes.get("create", 0) + sample.get("create", 0) > 300
    _assert_reconciled_once(org, first)
    data = _data(org)
    assert data["Account"] and data["Opportunity"] and data["Invoice__c"] and data["ContentVersion"]
    assert all(o["OwnerId"] for o in data["Opportunity"] + data["Task"])
    assert any(u.get("Staff_Role__c") for u in org.app.state.salesforce.users()), "staff roles on their Users"

    second = _run("ascora_to_salesforce", CONF)
    assert ledger.audit_ops_count(second.run_id) == {}

    # Two company customers and one job change in Ascora, one customer is new: exactly those are written.
    changed = change_ascora_for_delta(sandbox["ascora"].url, companies_only=True)
    companies, job = changed["customers"], changed["job"]
    delta = _run("ascora_salesforce_delta", {})
    # The renamed job is also a line of the maintenance history Task of each piece of equipment at its site.
    site = (job.get("siteCustomer") or {}).get("id")
    lines = (sandbox["tenant"] / "api" / "equipment.jsonl").read_text().splitlines()
    histories = sum(1 for line in lines if line and site and json.loads(line).get("siteCustomerId") == site)
    assert ledger.audit_ops_count(delta.run_id) == {"create": 1, "update": DELTA_WRITES["update"] + histories}
    phones = {a["Phone"] for a in _data(org)["Account"] if a["Ascora_Id__c"] in {c["customerId"] for c in companies}}
    assert phones == {NEW_PHONE}

    roll_back("salesforce", delta.run_id, first.run_id)
    assert _data(org) == before
    assert _users(org, like=users_before) == users_before
    assert ledger.get_run(first.run_id)["status"] == "rolled_back"
    roll_back("salesforce", first.run_id)
    assert _data(org) == before


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("sandbox", [{"bulk_threshold": 25, "api_reserve_calls": 50, "quota_pause_minutes": 0.03}],
                         indirect=True)
def test_bulk_jobs_defer_and_a_spent_quota_pauses_the_load_until_it_resets(sandbox):
    """One run for both waits of the load (they are independent; one DAG run keeps the suite short)."""
    org = sandbox["org"]
    state = org.app.state.salesforce
    paused, stop = threading.Event(), threading.Event()

    def load_started() -> bool:
        """A write after the sample's read-back (``WHERE Id IN``) is the full load's first write."""
        requests = list(org.control.requests)
        readback = next((i for i, r in enumerate(requests) if "WHERE Id IN" in unquote_plus(r.query)), None)
        return readback is not None and any(
            r.method == "POST" and r.path.endswith(("/composite/sobjects", "/jobs/ingest"))
            for r in requests[readback:])

    def quota_runs_out_then_resets():
        while not stop.is_set() and not load_started():
            time.sleep(0.02)
        state.settings(api_max=state.api_used + 60)  # ten calls left above the reserve of 50
        while not stop.is_set() and state.api_max - state.api_used > 50:
            time.sleep(0.02)
        paused.set()
        time.sleep(2)  # the org's rolling 24 hours move on while the task waits
        state.settings(api_max=1_000_000)

    watcher = threading.Thread(target=quota_runs_out_then_resets, daemon=True)
    watcher.start()
    try:
        run = _run("ascora_to_salesforce", {**CONF, "verify": "sample"})
    finally:
        stop.set()
        watcher.join(timeout=5)

    # Quota: the load stopped before the reserve, waited without a retry, and went on.
    assert paused.is_set(), "the load never reached the reserve"
    assert not [r for r in org.control.requests if r.status == 403], "the plugin overran the quota"
    loads = [ti for ti in run.get_task_instances() if ti.task_id.startswith("load_wave_")]
    assert all(ti.try_number <= 1 for ti in loads), "a quota pause must not cost a task retry"
    # Bulk: the large units went out as Bulk API 2.0 jobs whose results were recorded.
    units = [ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) or {} for ti in loads]
    bulk = [u for u in units if u.get("bulk_job")]
    assert bulk, "no unit reached the bulk threshold"
    jobs = org.app.state.salesforce_bulk.jobs
    assert {j["id"] for u in bulk for j in u["bulk_job"]["jobs"]} <= set(jobs)
    assert all(job.state == "JobComplete" for job in jobs.values())
    ledger = _ledger()
    assert ledger.audit_ops_count(run.run_id).get("create", 0) == sum(u.get("created", 0) for u in units)
    _assert_reconciled_once(org, run)
    again = _run("ascora_to_salesforce", {**CONF, "verify": "none"})
    assert ledger.audit_ops_count(again.run_id) == {}
