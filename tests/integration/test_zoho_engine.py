"""The engine with the Zoho plugin against the emulators, without Airflow in the way.

* a worker killed between the Zoho write and the ledger write: the retry adopts what was written
  (Ascora_ID upserts, the key line of notes), nothing is duplicated, rollback restores the org exactly;
* a tenant whose custom fields do not fit the edition: a plan error naming the module, before any write;
* a credit budget that runs out mid-load: the load stops before the call that would overrun it and a
  later run finishes without duplicates;
* the Bulk Write methods the engine calls (submit, poll, results), and the credit estimate.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_zoho_dag import CLIENT, zoho_users
from tests.integration.test_engine_twenty import _DiesAfterWrite


def _setup(tenant, tmp_path, *, emulator=None, options=None, apply=True):
    from airflow_ascora_provider.destinations.zoho.plugin import ZohoDestination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.zoho import create_app as zoho_app
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    ascora = ServedApp(ascora_app(tenant)).start()
    zoho = ServedApp(zoho_app(users=zoho_users(tenant), **(emulator or {}))).start()
    snapshot = Snapshot(tmp_path / "staging", "s1")
    extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key", enable_extensions=True)),
            snapshot)
    audit = audit_snapshot(snapshot)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.migrate()
    dest = ZohoDestination(accounts_url=zoho.url, **CLIENT, **(options or {}))
    described = dest.describe_schema()
    mapping = complete_mapping(load_mapping(ZohoDestination.default_mapping), audit, dest.custom_field_name,
                               {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()})
    plan = plan_for(mapping, dest)
    ctx = MigrationContext("run-1", "zoho", ledger, str(tmp_path / "staging"), "s1", mapping,
                           fallback_owner_email="owner@example.com")
    ctx.use_destination(dest)
    if apply:
        dest.require_plan_fits(plan.changes)
        apply_schema(dest, plan)
        ledger.approve_mapping("zoho", mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                               approved_by="test", source="cli")
        resolve_users(ctx)
        ledger.start_run("run-1", destination="zoho", kind="full", mapping_hash=mapping.hash)
    return ctx, ascora, zoho, plan


def roll_back_to(before: dict[str, list[dict]], ledger, ctx, zoho) -> dict:
    """Roll back run-1 and check the org holds exactly ``before`` again: every module that existed has
    its records as they were, modules the migration created are empty, and no attachment is left."""
    from airflow_ascora_provider.engine.rollback import rollback_run

    summary = rollback_run(ledger, ctx.destination, "zoho", "run-1", "run-1__rollback")
    assert summary["complete"], summary["failures"]
    after = zoho.app.state.zoho.snapshot()
    assert {k: v for k, v in after["records"].items() if k in before} == before
    assert all(not rows for k, rows in after["records"].items() if k not in before)
    assert not after["attachments"]
    return after


def _keys(zoho) -> dict[str, list[str]]:
    from airflow_ascora_provider.destinations.zoho.plugin import split_note_key

    out = {}
    for module, rows in zoho.app.state.zoho.snapshot()["records"].items():
        if module == "Notes":
            out[module] = [split_note_key(r.get("Note_Content"))[1] for r in rows]
        else:
            out[module] = [r.get("Ascora_ID") for r in rows if r.get("Ascora_ID")]
    return out


def test_killed_mid_load_then_retried_has_no_duplicates_and_rolls_back(small_tenant, tmp_path):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path)
    try:
        before = zoho.app.state.zoho.snapshot()["records"]
        real_ledger = ctx.ledger
        for die_on in (2, 4, 3):  # three crashes, early, middle (deals) and late (notes) in the load
            ctx.ledger = _DiesAfterWrite(real_ledger, die_on)
            with pytest.raises(SystemExit):
                load_everything(ctx)
        ctx.ledger = real_ledger
        assert real_ledger.pending_intents("zoho"), "the crash must leave intents behind"
        load_everything(ctx)
        assert not real_ledger.pending_intents("zoho")
        for module, keys in _keys(zoho).items():
            assert len(keys) == len(set(keys)), f"duplicate {module} after the retry"
        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
        roll_back_to(before, real_ledger, ctx, zoho)
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_more_custom_fields_than_the_edition_allows_is_a_plan_error_before_any_write(small_tenant, tmp_path):
    from airflow_ascora_provider.destinations.zoho.plugin import ZohoPlanError

    ctx, ascora, zoho, plan = _setup(small_tenant, tmp_path, emulator={"edition": "standard"},
                                     options={"edition": "standard", "max_custom_fields": 12}, apply=False)
    try:
        problems = ctx.destination.check_plan(plan.changes)
        assert any(p.startswith("Zoho CRM standard edition allows 12 custom fields per module; Deals has 0 and "
                                "the plan adds") for p in problems), problems
        assert any("Job_Status" in p for p in problems)
        with pytest.raises(ZohoPlanError, match="does not fit the Zoho CRM edition"):
            ctx.destination.require_plan_fits(plan.changes)
        writes = [r for r in zoho.control.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")
                  and not r.path.startswith("/oauth/")]  # minting a token writes nothing
        assert not writes, [(r.method, r.path) for r in writes]
        # Free has no custom modules: Service Sites is left for an admin, the rest is planned by API.
        free = type(ctx.destination)(accounts_url=zoho.url, **CLIENT, edition="free")
        assert "custom_object" not in free.capabilities.creatable
        assert any("custom module" in p for p in free.check_plan(plan.changes))
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_the_schema_step_reads_a_modules_fields_again_only_when_it_needs_them(small_tenant, tmp_path):
    """A field list is read after the plugin changed it only when something asks for it (a pick-list's
    current values), not after every field created; the plan still ends fully applied, and the
    edition's per-module cap still counts the fields created earlier in the step."""
    from airflow_ascora_provider.destinations.zoho.plugin import ZohoPlanError
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for

    ctx, ascora, zoho, plan = _setup(small_tenant, tmp_path, apply=False)
    try:
        zoho.control.reset_log()
        apply_schema(ctx.destination, plan)
        reads = zoho.control.calls("GET", "/crm/v8/settings/fields")
        fields = [c for c in plan.changes if c.kind == "custom_field"]
        picklists = [c for c in plan.changes if c.kind == "picklist_option"]
        assert len(fields) > 10 and len(reads) <= len(picklists) + len({c.object for c in plan.changes}), (
            len(reads), len(fields), len(picklists))
        fresh = type(ctx.destination)(accounts_url=zoho.url, **CLIENT)
        fresh.describe_schema()
        assert plan_for(ctx.mapping, fresh).changes == []
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()

    ctx, ascora, zoho, plan = _setup(small_tenant, tmp_path / "capped", options={"max_custom_fields": 1},
                                     apply=False)
    try:
        deals = [c for c in plan.changes if c.kind == "custom_field" and c.object == "Deals"]
        ctx.destination.apply_schema_change(deals[0])
        with pytest.raises(ZohoPlanError, match="allows 1 custom fields per module; Deals has 1"):
            ctx.destination.apply_schema_change(deals[1])
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_stalled_note_inserts_are_settled_after_the_unit_not_waited_for(small_tenant, tmp_path, in_doubt_settled):
    """Notes have no upsert: a batch of notes whose request stalls past the client's timeout may still
    land. The load goes on and settles the batch at the end of its unit (one look finds the late
    notes): no note twice, none missing, no intent left open."""
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path, options={"timeout": 0.6})
    try:
        zoho.control.set_faults(FaultPlan(rate_slow=0.5, slow_seconds=1.0, seed=1, paths=["/crm/v8/Notes"]))
        stats = load_everything(ctx)
        assert in_doubt_settled.get("Notes", 0) >= 2, in_doubt_settled  # a batch of notes, settled at the end
        stalled = zoho.control.counters["slow"]
        zoho.control.set_faults(FaultPlan())
        assert stalled >= 2, stalled
        notes = _keys(zoho)["Notes"]
        assert len(notes) == len(set(notes)), "a note was written twice"
        created = sum(s.created for name, s in stats.items() if ctx.mapping.maps[name].target == "Notes")
        assert created == len(notes) > 0
        assert not ctx.ledger.pending_intents("zoho")
        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_a_credit_budget_that_runs_out_mid_load_resumes_later_without_duplicates(small_tenant, tmp_path):
    from airflow_ascora_provider.destinations.spec import QuotaExhausted
    from airflow_ascora_provider.destinations.zoho.plugin import ZohoDestination
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.zoho_model import CreditMeter

    window = 2.0
    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path)  # the schema step (a 500-credit module) first
    # Then the org allows 80 credits per window and the provider may spend 60 of them.
    zoho.app.state.zoho.meter = CreditMeter(80, window)
    ctx.use_destination(ZohoDestination(accounts_url=zoho.url, **CLIENT, credit_budget=60,
                                        credit_window_seconds=window))
    try:
        stops = 0
        while True:
            try:
                load_everything(ctx)
                break
            except QuotaExhausted as exc:
                stops += 1
                assert stops < 200 and exc.resume_at is not None
                time.sleep(max(0.0, exc.resume_at.timestamp() - time.time()))
        state = zoho.app.state.zoho
        assert stops >= 1 and state.meter.refused == 0
        # Each stop comes after a (nearly) full budget: no more stops than the credits spent need.
        assert stops <= state.meter.total // 40 + 1, (stops, state.meter.total)
        for module, keys in _keys(zoho).items():
            assert len(keys) == len(set(keys)), f"duplicate {module} after resuming"
        assert reconcile(ctx, verify="none")["totals"]["missing"] == 0
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_bulk_write_methods_and_the_credit_estimate(small_tenant, tmp_path):
    from airflow_ascora_provider.destinations.spec import OutgoingRecord

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path, options={"bulk_threshold": 3})
    try:
        dest = ctx.destination
        assert dest.bulk_threshold("Accounts") == 3 and dest.bulk_threshold("Notes") is None
        existing = dest.write_batch("Accounts", [OutgoingRecord("x1", {"Account_Name": "Old", "Ascora_ID": "x1"})],
                                    "Ascora_ID")[0]
        records = [OutgoingRecord("x1", {"Account_Name": "New", "Ascora_ID": "x1"}, dest_id=existing.dest_id),
                   OutgoingRecord("x2", {"Account_Name": "Two", "Ascora_ID": "x2", "Phone": "08 9000 0000"}),
                   OutgoingRecord("x3", {"Account_Name": None, "Ascora_ID": "x3"})]
        job = dest.submit_bulk_job("Accounts", records, "Ascora_ID")
        deadline = time.monotonic() + 10
        while not (status := dest.poll_bulk_job(job)).finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status.state == "done" and status.processed == 3
        results = dest.bulk_job_results(job, records)
        assert results[0].dest_id == existing.dest_id and not results[0].created
        assert results[1].ok and results[1].created
        assert not results[2].ok and results[2].error_field == "Account_Name"
        estimate = dest.estimate_credits({"Accounts": 12_000, "Notes": 950, "Attachments": 40})
        assert estimate["targets"]["Accounts"]["method"] == "bulk write"
        assert estimate["targets"]["Notes"]["credits"] == 95
        assert estimate["credits"] == estimate["targets"]["Accounts"]["credits"] + 95 + 40
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()


def test_schema_report_shows_the_credit_estimate_for_the_staged_records(small_tenant, tmp_path):
    from airflow_ascora_provider.engine.schema import plan_for, records_per_target, schema_sections

    ctx, ascora, zoho, _ = _setup(small_tenant, tmp_path, apply=False)
    try:
        plan = plan_for(ctx.mapping, ctx.destination, ctx.snapshot)
        counts = records_per_target(ctx.mapping, ctx.snapshot)
        assert sum(counts.values()) > 0
        expected = ctx.destination.estimate_credits(counts)
        assert plan.forecast.facts["credits"] == expected["credits"] > 0
        assert plan.forecast.facts["windows needed"] == expected["windows_needed"]
        assert plan.forecast.per_target == expected["targets"]
        section = next(s for s in schema_sections(plan, []) if s.heading == "Load estimate")
        rows = {row[0]: row for row in section.tables[0].rows}
        assert set(rows) == set(expected["targets"])
    finally:
        ctx.close()
        ascora.stop()
        zoho.stop()
