"""Real DAG runs (dag.test) of ascora_to_freshsales, its delta DAG and ascora_rollback, against the emulators.

One scenario per ledger backend (SQLite file, PostgreSQL schema):

1. the first run stops at ``setup_schema``: Freshsales cannot create custom fields through its API,
   so the load refuses to start (nothing written) until an admin has created what the plan lists;
2. the admin does exactly what ``admin_steps()`` says; the next run loads everything and reconciles;
3. an identical run writes nothing; a delta after changing source records writes exactly those;
4. rolling back the delta and the migration leaves the account's records exactly as they were.

Then, on SQLite: the bulk upsert with a low threshold (load tasks defer on the bulk job trigger), and
an hourly budget that runs out mid-load (load tasks pause until the window resets and resume without
duplicates or task retries).
"""

from __future__ import annotations

import collections
import json
import shutil

import httpx
import pytest

from tests.conftest import tenant_members
from tests.e2e.scenario import DELTA_WRITES, change_ascora_for_delta, roll_back
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run as _run

pytestmark = pytest.mark.e2e

API_KEY = "freshsales-e2e-key"
CONF = {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 60, "verify": "all"}


def _users(tenant) -> list[dict]:
    return [{"email": m["email"], "display_name": f"{m['firstName']} {m['lastName']}"} for m in tenant_members(tenant)]


def _serve(tenant, tmp_path, ledger_url, monkeypatch, *, extra=None, **emulator):
    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.freshsales import create_app as freshsales_app

    ascora = ServedApp(ascora_app(tenant)).start()
    emulator.setdefault("hourly_limit", 1_000_000)
    freshsales = ServedApp(freshsales_app(api_key=API_KEY, plan="pro", rate_limit=0, users=_users(tenant),
                                          **emulator)).start()
    url, schema = ledger_url
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
        "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
        "extra": {"enable_extensions": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_FRESHSALES_DEFAULT", json.dumps({
        "conn_type": "freshsales", "host": freshsales.url, "password": API_KEY,
        "extra": {"plan": "pro", "requests_per_minute": 0, **(extra or {})}}))
    monkeypatch.setenv("ASCORA_LEDGER_URL", url)
    if schema:
        monkeypatch.setenv("ASCORA_LEDGER_SCHEMA", schema)
    monkeypatch.setenv("ASCORA_STAGING_PATH", str(tmp_path / "staging"))
    dispose_engines()
    return ascora, freshsales


@pytest.fixture
def sandbox(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch):
    from airflow_ascora_provider.hooks.ledger import dispose_engines

    tenant = tmp_path / "tenant"  # a private copy: the delta test edits source records
    shutil.copytree(small_tenant, tenant)
    ascora, freshsales = _serve(tenant, tmp_path, ledger_url, monkeypatch)
    yield {"ascora": ascora, "freshsales": freshsales, "tenant": tenant}
    ascora.stop()
    freshsales.stop()
    dispose_engines()


def _records(freshsales) -> dict[str, list[dict]]:
    return freshsales.app.state.freshsales.snapshot()["records"]


def _admin_creates_what_the_plan_lists():
    """What the admin does after the schema report: every field, choice and stage admin_steps() names."""
    from airflow_ascora_provider.destinations.manager import get_destination
    from airflow_ascora_provider.engine.schema import plan_for, require_schema_ready
    from airflow_ascora_provider.mapping.spec import load_mapping

    mapping = load_mapping(_ledger().approved_mapping("freshsales")["mapping_text"])
    dest = get_destination("freshsales", None)
    try:
        plan = plan_for(mapping, dest)
        assert dest.check_plan(plan.changes) == [], "the Pro plan has room for this tenant's fields"
        steps = dest.admin_steps(plan.changes)
        with httpx.Client(base_url=dest.hook.settings()["base_url"].split("/crm/")[0]) as admin:
            response = admin.post("/__freshsales__/steps", json={"steps": steps})
            assert response.status_code == 201, response.text
        require_schema_ready(mapping, dest)
    finally:
        dest.close()
    return steps


def _prepare(freshsales):
    """First run: stopped at setup_schema with nothing written; then the admin's part."""
    before = _records(freshsales)
    first = _run("ascora_to_freshsales", CONF, expect="failed")
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    assert states["setup_schema"] == "failed" and states["sample"] in (None, "upstream_failed"), states
    assert _records(freshsales) == {**before, "cm_equipment": []}, "nothing may be written before the schema exists"
    modules = freshsales.app.state.freshsales.snapshot()["modules"]
    assert [m["entity_name"] for m in modules] == ["cm_equipment"], "the one thing the API can create"
    steps = _admin_creates_what_the_plan_lists()
    assert any(s.get("name") == "cf_ascora_id" for s in steps)
    return before


def _assert_each_record_once(freshsales, run):
    from airflow_ascora_provider.destinations.freshsales.plugin import _split_key

    reconcile = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    for entity, rows in _records(freshsales).items():
        keys = [(r.get("custom_field") or {}).get("cf_ascora_id") or _split_key(r.get("description"))[1]
                for r in rows]
        dupes = [k for k, n in collections.Counter(k for k in keys if k).items() if n > 1]
        assert not dupes, f"{entity} written twice: {dupes[:5]}"


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_schema_gate_full_rerun_delta_and_rollback(sandbox):
    freshsales = sandbox["freshsales"]
    before = _prepare(freshsales)

    full = _run("ascora_to_freshsales", CONF)
    ledger = _ledger()
    writes = ledger.audit_ops_count(full.run_id)
    sample = ledger.audit_ops_count(f"{full.run_id}__sample")
    assert writes.get("create", 0) + sample.get("create", 0) > 250
    _assert_each_record_once(freshsales, full)
    records = _records(freshsales)
    assert records["sales_account"] and records["deal"] and records["task"] and records["document"]
    assert any(d.get("products") for d in records["deal"]) and records["cm_equipment"]

    # An identical run changes nothing at all.
    again = _run("ascora_to_freshsales", CONF)
    assert ledger.audit_ops_count(again.run_id) == {}

    # Change two customers and one job in Ascora, add a new customer: the delta writes exactly those.
    change_ascora_for_delta(sandbox["ascora"].url)
    delta = _run("ascora_freshsales_delta", {})
    assert ledger.audit_ops_count(delta.run_id) == DELTA_WRITES

    # Roll back the delta, then the migration (with its sample): the records are back to where they were.
    roll_back("freshsales", delta.run_id, full.run_id)
    after = _records(freshsales)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(not rows for name, rows in after.items() if name not in before)
    assert freshsales.app.state.freshsales.snapshot()["files"] == {}
    assert ledger.get_run(full.run_id)["status"] == "rolled_back"


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_bulk_upserts_defer_on_the_trigger(small_tenant, ledger_url, tmp_path, airflow_db, monkeypatch):
    from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination
    from airflow_ascora_provider.hooks.ledger import dispose_engines

    monkeypatch.setattr(FreshsalesDestination, "bulk_poll_interval", 0.2)
    ascora, freshsales = _serve(small_tenant, tmp_path, ledger_url, monkeypatch, extra={"bulk_threshold": 5},
                                bulk_delay=0.5)
    try:
        _prepare(freshsales)
        run = _run("ascora_to_freshsales", CONF)
        _assert_each_record_once(freshsales, run)
        loads = [ti for ti in run.get_task_instances() if ti.task_id.startswith("load_wave_")]
        results = [ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) or {} for ti in loads]
        bulk = [r for r in results if r.get("bulk_job")]
        assert {r["unit"]["map"] for r in bulk} >= {"account", "site_contact", "contact", "deal", "quote_deal"}
        assert sum(r["created"] for r in bulk) > 50
        assert freshsales.control.calls("GET", "/crm/sales/api/job_statuses/")
        # Deals went in bulk jobs: single upserts carried only the sample's deals (the sample step
        # writes its few records directly, to read them straight back for the diff).
        sampled = {e.source_id for e in _ledger().iter_audit(f"{run.run_id}__sample")}
        upserted = {json.loads(r.body)["unique_identifier"]["cf_ascora_id"]
                    for r in freshsales.control.calls("POST", "/crm/sales/api/deals/upsert")}
        assert upserted <= sampled, upserted - sampled
        # Nothing pending any more: the next run submits no job and writes nothing.
        jobs = len(freshsales.control.calls("POST", "/crm/sales/api/deals/bulk_upsert"))
        again = _run("ascora_to_freshsales", CONF)
        assert _ledger().audit_ops_count(again.run_id) == {}
        assert len(freshsales.control.calls("POST", "/crm/sales/api/deals/bulk_upsert")) == jobs
    finally:
        ascora.stop()
        freshsales.stop()
        dispose_engines()


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_hourly_budget_runs_out_and_the_load_resumes_later(small_tenant, ledger_url, tmp_path, airflow_db,
                                                           monkeypatch):
    """An "hour" of 4 seconds with 70 calls: load tasks stop before overrunning it, defer until the
    window resets, and resume where they stopped, without duplicates and without using a retry."""
    from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination
    from airflow_ascora_provider.destinations.spec import QuotaExhausted
    from airflow_ascora_provider.hooks.ledger import dispose_engines

    pauses = []
    write_batch = FreshsalesDestination.write_batch

    def counting(self, target, records, key_field):
        try:
            return write_batch(self, target, records, key_field)
        except QuotaExhausted as exc:
            pauses.append((target, exc.resume_at))
            raise

    monkeypatch.setattr(FreshsalesDestination, "write_batch", counting)
    ascora, freshsales = _serve(small_tenant, tmp_path, ledger_url, monkeypatch,
                                extra={"requests_per_hour": 70, "quota_window_seconds": 4},
                                hourly_limit=70, hour_seconds=4.0)
    try:
        _prepare(freshsales)
        run = _run("ascora_to_freshsales", CONF)
        assert len(pauses) >= 2, pauses
        _assert_each_record_once(freshsales, run)
        loads = [ti for ti in run.get_task_instances() if ti.task_id.startswith("load_wave_")]
        assert all(ti.try_number <= 1 for ti in loads), "a quota pause must not cost a task retry"
        writes = [r for r in freshsales.control.requests if r.method in ("POST", "PUT") and r.status == 429
                  and "filtered_search" not in r.path]
        assert not writes, "writes are reserved before they are sent: none may bounce off the budget"
    finally:
        ascora.stop()
        freshsales.stop()
        dispose_engines()
