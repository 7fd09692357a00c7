"""The engine against the Ascora and Freshsales emulators, without Airflow in the way.

* Schema: what the plan cannot create by API is handed to an "admin" (the plugin's ``admin_steps``)
  and checked against the plan's caps before anything is written; a tenant with more custom fields
  than the plan allows gets a plan error naming the fields that will not fit.
* Full load of every seed row, an idempotent re-run, reconciliation with every record accounted for,
  and a rollback that leaves the account exactly as it was.
* A worker killed between the Freshsales write and the ledger update: the retry adopts (upserts and
  lookups by the Ascora id), nothing is duplicated, and rollback still removes everything.
* The bulk upsert, driven the way the engine's trigger drives it, and the hourly budget running out
  mid-load: the load stops before the call that would overrun it and resumes without duplicates.
"""

from __future__ import annotations

import collections
import time

import pytest

from tests.conftest import tenant_members

pytestmark = pytest.mark.timeout(300)

API_KEY = "freshsales-engine-key"


def _users(tenant) -> list[dict]:
    return [{"email": m["email"], "display_name": f"{m['firstName']} {m['lastName']}"} for m in tenant_members(tenant)]


@pytest.fixture(scope="module")
def extracted(small_tenant, tmp_path_factory):
    """One extraction of the small tenant, shared (read-only) by every test of this module."""
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    staging = tmp_path_factory.mktemp("freshsales-staging")
    snapshot = Snapshot(staging, "s1")
    with ServedApp(ascora_app(small_tenant)) as ascora:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                           enable_extensions=True)), snapshot)
    return {"staging": staging, "audit": audit_snapshot(snapshot), "users": _users(small_tenant)}


class Rig:
    """A Freshsales emulator, a ledger and the completed mapping, ready for the schema and load steps."""

    def __init__(self, extracted, tmp_path, *, plan="pro", ledger_url=None, **emulator_kwargs):
        from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination
        from airflow_ascora_provider.ledger import Ledger
        from airflow_ascora_provider.mapping.complete import complete_mapping
        from airflow_ascora_provider.mapping.spec import load_mapping
        from airflow_ascora_provider.sandbox.emulator import ServedApp
        from airflow_ascora_provider.sandbox.freshsales import create_app as freshsales_app

        self.tmp_path = tmp_path
        self.staging = extracted["staging"]
        self.plan = plan
        emulator_kwargs.setdefault("rate_limit", 0)
        emulator_kwargs.setdefault("hourly_limit", 1_000_000)  # tests of the hourly budget set their own
        self.freshsales = ServedApp(freshsales_app(api_key=API_KEY, plan=plan, users=extracted["users"],
                                                   **emulator_kwargs)).start()
        self.state = self.freshsales.app.state.freshsales
        self.ledger = ledger_url if isinstance(ledger_url, Ledger) else Ledger(
            ledger_url or f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        self.ledger.migrate()
        self.dest = self.destination()
        described = self.dest.describe_schema()
        self.mapping = complete_mapping(load_mapping(FreshsalesDestination.default_mapping), extracted["audit"],
                                        self.dest.custom_field_name,
                                        {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()},
                                        described)

    def destination(self, **overrides):
        from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination

        options = {"base_url": self.freshsales.url, "api_key": API_KEY, "plan": self.plan, "requests_per_minute": 0}
        return FreshsalesDestination(**(options | overrides))

    def prepare_schema(self):
        """Plan, check against the plan's caps, create the module by API and the rest as the admin."""
        from airflow_ascora_provider.engine.schema import apply_schema, plan_for, require_schema_ready

        plan = plan_for(self.mapping, self.dest)
        assert not plan.problems, plan.problems
        assert self.dest.check_plan(plan.changes) == []
        assert [c.describe() for c in plan.by_api] == ["custom_object equipment"]
        apply_schema(self.dest, plan)
        self.state.apply_admin_steps(self.dest.admin_steps(plan.changes))
        require_schema_ready(self.mapping, self.dest)
        return plan

    def context(self, run_id="run-1"):
        from airflow_ascora_provider.engine.context import MigrationContext
        from airflow_ascora_provider.engine.users import resolve_users

        self.ledger.approve_mapping("freshsales", mapping_hash=self.mapping.hash, mapping_text=self.mapping.to_yaml(),
                                    approved_by="test", source="cli")
        ctx = MigrationContext(run_id, "freshsales", self.ledger, str(self.staging), "s1", self.mapping,
                               fallback_owner_email="owner@example.com")
        ctx.use_destination(self.dest)
        resolve_users(ctx)
        self.ledger.start_run(run_id, destination="freshsales", kind="full", mapping_hash=self.mapping.hash)
        return ctx

    def records(self):
        return self.state.snapshot()["records"]

    def close(self):
        self.dest.close()
        self.freshsales.stop()


@pytest.fixture
def rig(extracted, tmp_path):
    rig = Rig(extracted, tmp_path)
    yield rig
    rig.close()


def _keys(records) -> dict[str, list[str]]:
    """Ascora ids held per entity (custom field, or the id line of notes and tasks)."""
    from airflow_ascora_provider.destinations.freshsales.plugin import _split_key

    out = {}
    for entity, rows in records.items():
        keys = [(r.get("custom_field") or {}).get("cf_ascora_id") or _split_key(r.get("description"))[1]
                for r in rows]
        out[entity] = [k for k in keys if k]
    return out


def _assert_no_duplicates(records):
    for entity, keys in _keys(records).items():
        dupes = [k for k, n in collections.Counter(keys).items() if n > 1]
        assert not dupes, f"{entity} written twice: {dupes[:5]}"
    documents = [(d["targetable_type"], d["targetable_id"], d["name"]) for d in records["document"]]
    assert len(documents) == len(set(documents)), "a document was uploaded twice"


def test_schema_is_listed_for_the_admin_and_checked_against_the_plan(rig):
    from airflow_ascora_provider.engine.schema import plan_for, require_schema_ready, SchemaNotReady

    plan = plan_for(rig.mapping, rig.dest)
    manual = {(c.object, c.field) for c in plan.manual if c.kind == "custom_field"}
    # Fields the seed asks for, and one per Ascora custom field and form code of the tenant.
    assert {("sales_account", "cf_ascora_id"), ("contact", "cf_contact_role"), ("deal", "cf_assigned_technician"),
            ("deal", "cf_quote_status"), ("deal", "cf_material_cost"), ("equipment", "cf_account"),
            ("deal", "cf_form_gas_pressure_kpa"), ("deal", "cf_ascora_switchboard_type")} <= manual
    assert not any(c.object in ("task", "note", "document", "deal_product") for c in plan.manual)
    stages = {v for c in plan.manual if c.kind == "picklist_option" for v in c.spec}
    assert {"Quoted", "In Progress", "Completed", "Invoiced"} <= stages
    with pytest.raises(SchemaNotReady, match="cf_ascora_id"):
        require_schema_ready(rig.mapping, rig.dest)
    steps = rig.dest.admin_steps(plan.changes)
    field = next(s for s in steps if s["action"] == "create_field" and s["name"] == "cf_ascora_id"
                 and s["entity"] == "deals")
    assert field == {"action": "create_field", "entity": "deals", "name": "cf_ascora_id", "label": "Ascora ID",
                     "type": "text", "unique": True}
    quote_status = next(s for s in steps if s.get("name") == "cf_quote_status")
    assert quote_status["type"] == "dropdown" and set(quote_status["choices"]) == {"Draft", "Sent", "Accepted",
                                                                                   "Declined"}
    assert {"action": "add_selector_value", "selector": "deal_stages", "value": "Invoiced"} in steps
    # The enquiry map targets leads; this account has no Leads module, so its fields go on contacts.
    assert any(s["entity"] == "contacts" and s["name"] == "cf_enquiry_number" for s in steps
               if s["action"] == "create_field")
    # The custom fields of the Pro plan are enough for this tenant.
    assert rig.dest.check_plan(plan.changes) == []


def _by_key(rows) -> dict[str, dict]:
    return {(r.get("custom_field") or {}).get("cf_ascora_id"): r for r in rows
            if (r.get("custom_field") or {}).get("cf_ascora_id")}


def _converted_and_equipment_rows(rig, ctx):
    """Staged enquiries converted into a quote or job, and staged equipment, as the seed rows read them."""
    enquiries = [e for e in ctx.snapshot.iter_records("enquiry")
                 if e["converted_to_quote_number"] or e["converted_to_job_number"]]
    return enquiries, list(ctx.snapshot.iter_records("equipment"))


@pytest.mark.parametrize("leads_module", [False, True], ids=["contacts-as-leads", "leads-module"])
def test_converted_enquiries_link_to_their_deals_and_equipment_has_type_and_status(extracted, tmp_path, leads_module):
    """Seed rows: "if the enquiry converted to a job, the resulting Deal links back to the original Lead via
    the Deal's Contact", and "equipment type and status become custom pick-list fields"."""
    import datetime as dt

    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    rig = Rig(extracted, tmp_path, leads_module=leads_module)
    try:
        dropped = rig.mapping.document.get("dropped_links") or {}
        if leads_module:  # a deal cannot list a lead: completion says so instead of a load refusing it
            assert set(dropped) == {"deal.contacts_added_list: enquiry via enquiry",
                                    "quote_deal.contacts_added_list: enquiry via enquiry"}
        else:
            assert not dropped
        rig.prepare_schema()
        before = rig.state.snapshot()
        ctx = rig.context()
        load_everything(ctx)
        records = rig.records()
        enquiries, equipment = _converted_and_equipment_rows(rig, ctx)
        assert enquiries and equipment
        deals = list(records["deal"])
        by_number = {}
        for deal in deals:
            fields = deal.get("custom_field") or {}
            by_number[fields.get("cf_quote_number") or fields.get("cf_job_number")] = deal
        leads = _by_key(records["lead" if leads_module else "contact"])
        for enquiry in enquiries:
            deal = by_number[enquiry["converted_to_quote_number"] or enquiry["converted_to_job_number"]]
            assert deal["custom_field"]["cf_source_enquiry"] == enquiry["enquiry_number"]
            if leads_module:  # the lead is its own record, found by the enquiry number both carry
                assert leads[enquiry["id"]]["custom_field"]["cf_enquiry_number"] == enquiry["enquiry_number"]
                continue
            # Without the Leads module the enquirer is a contact, and that contact is on the deal: the
            # enquiry's own contact, or (one e-mail, one contact) the customer's person it became.
            holder = [c["id"] for c in records["contact"] if c.get("email") and
                      c["email"].casefold() == (enquiry["email"] or "").casefold()]
            assert len(holder) == 1 and holder[0] in deal["contacts_added_list"], (enquiry["enquiry_number"], deal)
            if enquiry["id"] in leads:
                assert leads[enquiry["id"]]["id"] == holder[0]
        if not leads_module:
            assert any(e["id"] in leads for e in enquiries), "an enquiry contact of its own is linked too"

        modules = _by_key(records["cm_equipment"])
        as_of = ctx.as_of.date()
        states = set()
        for item in equipment:
            fields = modules[item["id"]]["custom_field"]
            assert fields["cf_equipment_type"] == item["name"]
            expiry = item["warranty_expiry"]
            expected = "No warranty date" if expiry is None else \
                "Under warranty" if expiry >= as_of else "Warranty expired"
            assert fields["cf_equipment_status"] == expected, item["id"]
            states.add(expected)
        assert {"Under warranty", "Warranty expired"} <= states
        # Both are dropdowns whose choices are exactly the kinds in use and the three states.
        settings = {f["name"]: f for f in rig.state.fields["cm_equipment"]}
        assert settings["cf_equipment_type"]["type"] == "dropdown"
        assert {c["value"] for c in settings["cf_equipment_type"]["choices"]} == {i["name"] for i in equipment}
        assert {c["value"] for c in settings["cf_equipment_status"]["choices"]} == {
            "Under warranty", "Warranty expired", "No warranty date"}

        result = reconcile(ctx, verify="all")
        assert result["ok"], ({m: c for m, c in result["content"].items() if c["mismatch"] or c["missing"]},
                              result["totals"])
        summary = rollback_run(rig.ledger, rig.dest, "freshsales", "run-1", "run-1__rollback")
        assert summary["complete"], summary["failures"]
        assert rig.state.snapshot()["records"] == before["records"]
    finally:
        rig.close()


def test_a_tenant_over_the_plans_custom_field_caps_gets_a_plan_error_before_any_write(extracted, tmp_path):
    from airflow_ascora_provider.engine.schema import plan_for

    rig = Rig(extracted, tmp_path, plan="growth")
    try:
        plan = plan_for(rig.mapping, rig.dest)
        problems = rig.dest.check_plan(plan.changes)
        # The engine's plan carries them, so the schema step applies nothing and the load refuses to start.
        assert problems and set(problems) <= set(plan.problems)
        text = "\n".join(problems)
        # Deals need more text fields than Growth's 20, and Growth has no lookup fields at all.
        assert "deals: the Growth plan allows 20 Text field custom field(s) per entity" in text
        assert "cm_equipment: the Growth plan allows 0 Lookup custom field(s) per entity" in text
        assert "Will not fit: cf_account" in text
        deals = next(p for p in problems if p.startswith("deals:"))
        overflow = deals.split("Will not fit: ")[1].split(", ")
        assert len(overflow) == int(deals.split("the mapping needs ")[1].split(".")[0]) - 20
        # Nothing was written: the check reads metadata only.
        assert not rig.state.snapshot()["records"]["deal"]
        assert all(r.method == "GET" for r in rig.freshsales.control.requests)
        # And the admin really could not create them: the account enforces the same caps.
        steps = [s for s in rig.dest.admin_steps(plan.changes) if s["action"] == "create_field"
                 and s["entity"] == "deals"]
        from airflow_ascora_provider.sandbox.freshsales import FsError

        with pytest.raises(FsError, match="Custom field limit reached"):
            rig.state.apply_admin_steps(steps)
    finally:
        rig.close()


def test_full_load_rerun_reconcile_and_exact_rollback(rig):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    rig.prepare_schema()
    before = rig.state.snapshot()
    ctx = rig.context()
    stats = load_everything(ctx)
    created = {m: s.created for m, s in stats.items()}
    records = rig.records()
    # Every seed row landed where the seed says.
    assert records["sales_account"] and records["deal"] and records["task"] and records["note"]
    assert created["site_contact"] > 0 and created["contact"] > 0 and created["enquiry"] > 0
    assert created["quote_line"] > 0 and created["equipment"] > 0 and created["equipment_product"] > 0
    assert created["invoice_note"] > 0 and created["bill_note"] > 0 and created["attachment"] > 0
    assert any(d.get("products") for d in records["deal"])
    assert records["cm_equipment"] and any(r["custom_field"].get("cf_account") for r in records["cm_equipment"])
    leads = [c for c in records["contact"] if c.get("lifecycle_stage_id")]
    assert len(leads) == created["enquiry"], "enquiries are contacts at lifecycle stage Lead on this account"
    assert all(isinstance(d["deal_stage_id"], int) for d in records["deal"]), "stages are sent as ids"
    assert all(t["status"] == 1 and t["owner_id"] for t in records["task"])
    _assert_no_duplicates(records)

    result = reconcile(ctx, verify="all")
    assert result["totals"]["missing"] == 0, result["objects"]
    assert result["ok"], {m: c for m, c in result["content"].items() if c["mismatch"] or c["missing"]}
    for entry in ctx.ledger.list_quarantine(destination="freshsales"):
        assert entry["reason"] and entry["source_id"], entry

    # A second run writes nothing at all (payload hashes); only the quarantined records are tried again.
    loaded = rig.state.snapshot()
    again = load_everything(ctx)
    assert sum(s.created + s.updated for s in again.values()) == 0
    assert rig.state.snapshot() == loaded

    summary = rollback_run(rig.ledger, rig.dest, "freshsales", "run-1", "run-1__rollback")
    assert summary["complete"], summary["failures"]
    after = rig.state.snapshot()
    assert after["records"] == before["records"]
    assert after["files"] == {}


class _DiesAfterWrite:
    """Wraps the ledger: the Nth batch with writes dies before the ledger records it, as if the
    worker was killed right after Freshsales accepted the batch."""

    def __init__(self, ledger, die_on_call: int):
        self._ledger = ledger
        self._calls = 0
        self._die = die_on_call

    def record_writes(self, run_id, destination, writes, *args, **kwargs):
        self._calls += 1 if writes else 0  # batches that only had refusals record nothing
        if self._calls == self._die and writes:
            raise SystemExit(writes[0].target_object)
        return self._ledger.record_writes(run_id, destination, writes, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ledger, name)


def test_killed_mid_load_then_retried_has_no_duplicates_and_rolls_back(rig):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    rig.prepare_schema()
    before = rig.state.snapshot()["records"]
    ctx = rig.context()
    real_ledger = ctx.ledger
    # The first attempt dies on its first batch; every later one recovers the batch the previous one
    # died on and dies on the next: every batch of every map (accounts, contacts, deals, tasks, notes,
    # documents, deal products ...) is killed once.
    killed_in = []
    while True:
        ctx.ledger = _DiesAfterWrite(real_ledger, 2 if killed_in else 1)
        ctx.use_destination(rig.destination())  # a fresh worker: nothing remembered in memory
        try:
            load_everything(ctx)
            break
        except SystemExit as exc:
            killed_in.append(str(exc))
    assert {"sales_account", "contact", "lead", "deal", "task", "note", "document", "deal_product", "product",
            "equipment"} <= set(killed_in), killed_in
    ctx.ledger = real_ledger
    assert not real_ledger.pending_intents("freshsales"), "every interrupted write was recovered"
    records = rig.records()
    _assert_no_duplicates(records)
    result = reconcile(ctx, verify="all")
    assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
    summary = rollback_run(real_ledger, ctx.destination, "freshsales", "run-1", "run-1__rollback")
    assert summary["complete"], summary["failures"]
    after = rig.records()
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(not rows for k, rows in after.items() if k not in before)


def test_stalled_creates_are_settled_after_the_unit_not_waited_for(extracted, tmp_path, in_doubt_settled):
    """Notes and tasks have no upsert key: a create whose request stalls past the client's timeout may
    still land. The load goes on without it and settles it at the end of its unit (one look finds the
    late write), so nothing is written twice, nothing is missing and no intent is left open."""
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    rig = Rig(extracted, tmp_path)
    try:
        rig.prepare_schema()
        rig.dest = rig.destination(timeout=0.6)
        ctx = rig.context()
        stalled = FaultPlan(rate_slow=0.3, slow_seconds=1.0, seed=11,
                            paths=["/crm/sales/api/notes", "/crm/sales/api/tasks"])
        rig.freshsales.control.set_faults(stalled)
        stats = load_everything(ctx)
        rig.freshsales.control.set_faults(FaultPlan())
        assert rig.freshsales.control.counters["slow"] >= 3
        assert in_doubt_settled.get("note", 0) + in_doubt_settled.get("task", 0) > 0, in_doubt_settled
        records = rig.records()
        _assert_no_duplicates(records)
        for target in ("task", "note"):
            created = sum(s.created for name, s in stats.items() if ctx.mapping.maps[name].target == target)
            assert created == len(records[target]) > 0, target
        assert not rig.ledger.pending_intents("freshsales"), "every create in doubt was settled"
        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
    finally:
        rig.close()


def test_an_in_process_load_settles_creates_in_doubt_after_the_whole_wave(extracted, tmp_path, monkeypatch):
    """``load_everything`` (delta runs, the demo) runs a wave's maps one after the other: a map's creates
    left in doubt are settled after the wave's other maps went out, not at the end of the map, so the
    wait for a stalled request to land overlaps with other writes. Nothing is written twice or lost."""
    from airflow_ascora_provider.engine.load import MapLoader
    from airflow_ascora_provider.engine.runner import load_everything, waves
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    events: list[tuple[str, str, int]] = []
    load, settle = MapLoader.load, MapLoader.settle

    def loading(self, *args, **kwargs):
        stats = load(self, *args, **kwargs)
        events.append(("loaded", self.map.name, 0))
        return stats

    def settling(self):
        events.append(("settle", self.map.name, len(self._in_doubt)))
        return settle(self)

    monkeypatch.setattr(MapLoader, "load", loading)
    monkeypatch.setattr(MapLoader, "settle", settling)
    rig = Rig(extracted, tmp_path)
    try:
        rig.prepare_schema()
        rig.dest = rig.destination(timeout=0.6)
        ctx = rig.context()
        rig.freshsales.control.set_faults(FaultPlan(rate_slow=0.3, slow_seconds=1.0, seed=11,
                                                    paths=["/crm/sales/api/notes", "/crm/sales/api/tasks"]))
        load_everything(ctx)
        rig.freshsales.control.set_faults(FaultPlan())
        in_doubt = [(name, n) for kind, name, n in events if kind == "settle" and n]
        assert in_doubt, events
        for name, _ in in_doubt:
            wave = next(w for w in waves(ctx.mapping) if name in w)
            settled_at = events.index(("settle", name, dict(in_doubt)[name]))
            loaded = {n for kind, n, _ in events[:settled_at] if kind == "loaded"}
            assert set(wave) <= loaded, (name, sorted(set(wave) - loaded))
        _assert_no_duplicates(rig.records())
        assert not rig.ledger.pending_intents("freshsales"), "every create in doubt was settled"
    finally:
        rig.close()


def test_bulk_upsert_as_the_trigger_drives_it(rig):
    """submit → poll until done → results, for accounts, contacts and deals; then idempotent."""
    from airflow_ascora_provider.engine.runner import finish_bulk_unit, plan_units, start_unit, waves

    rig.prepare_schema()
    ctx = rig.context()
    ctx.use_destination(rig.destination(bulk_threshold=3))
    ctx.destination_options = {}
    jobs = 0
    for wave in waves(rig.mapping):
        for unit in plan_units(ctx, wave, min_rows=1 << 40):
            stats, job = start_unit(ctx, unit)
            if job is None:
                continue
            jobs += 1
            assert rig.mapping.maps[unit["map"]].target in ("sales_account", "contact", "deal")
            polls = 0
            while not (status := ctx.destination.poll_bulk_job(job)).finished:
                polls += 1
                time.sleep(0.1)
            assert status.state == "done" and polls >= 1, status
            stats = finish_bulk_unit(ctx, unit, job)
            assert stats.created > 0
    assert jobs >= 4
    assert rig.freshsales.control.calls("POST", "/crm/sales/api/deals/bulk_upsert")
    assert not rig.freshsales.control.calls("POST", "/crm/sales/api/deals/upsert")
    records = rig.records()
    _assert_no_duplicates(records)
    # Everything pending went out: a second pass submits nothing.
    for wave in waves(rig.mapping):
        for unit in plan_units(ctx, wave, min_rows=1 << 40):
            stats, job = start_unit(ctx, unit)
            assert job is None and stats.created == stats.updated == 0


def test_bulk_job_reports_failed_rows_per_record(rig):
    from airflow_ascora_provider.destinations.spec import OutgoingRecord

    rig.prepare_schema()
    dest = rig.destination()
    records = [OutgoingRecord(f"acc-{i}", {"name": f"Account {i}", "cf_ascora_id": f"acc-{i}"}) for i in range(150)]
    records[7].payload["name"] = "Account 3"  # a duplicate name: refused by the server, row by row
    records[120].payload["owner_id"] = None
    records[130].payload["deal_stage_id"] = "x"  # not a field of accounts: refused by the plugin
    job = dest.submit_bulk_job("sales_account", records, "cf_ascora_id")
    assert [len(j["records"]) for j in job["jobs"]] == [100, 49]
    while not dest.poll_bulk_job(job).finished:
        time.sleep(0.1)
    results = dest.bulk_job_results(job, records)
    assert len(results) == 150
    failed = {r.source_id: r for r in results if not r.ok}
    assert set(failed) == {"acc-7", "acc-130"}
    assert "not unique" in failed["acc-7"].error and failed["acc-7"].error_field == "name"
    assert len({r.dest_id for r in results if r.ok}) == 148


def test_hourly_budget_runs_out_mid_load_and_resumes_without_duplicates(extracted, tmp_path):
    """A 60-call "hour" of 2 seconds: every batch checks the budget before it is sent, stops with
    QuotaExhausted (nothing half-written), and the unit, run again after the reset, writes the rest."""
    from airflow_ascora_provider.destinations.spec import QuotaExhausted
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import plan_units, run_unit, waves

    rig = Rig(extracted, tmp_path, hourly_limit=60, hour_seconds=2.0)
    try:
        rig.prepare_schema()
        ctx = rig.context()
        ctx.use_destination(rig.destination(requests_per_hour=60, quota_window_seconds=2.0))
        time.sleep(2.1)  # a fresh window; the schema and user steps above spent some of the old one
        rig.freshsales.control.reset_log()
        pauses = 0
        for wave in waves(rig.mapping):
            for unit in plan_units(ctx, wave, min_rows=1 << 40):
                while True:
                    try:
                        run_unit(ctx, unit)
                        break
                    except QuotaExhausted as exc:
                        pauses += 1
                        assert exc.resume_at is not None
                        time.sleep(max(0.0, exc.resume_at.timestamp() - time.time()) + 0.05)
        assert pauses >= 3
        throttled = [r for r in rig.freshsales.control.requests if r.status == 429]
        assert not throttled, "the budget is checked before sending: no request may bounce off the limit"
        _assert_no_duplicates(rig.records())
        result = reconcile(ctx, verify="none")
        assert result["totals"]["missing"] == 0
    finally:
        rig.close()


def test_estimate_at_the_plans_limits():
    from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination

    dest = FreshsalesDestination(base_url="acme.myfreshworks.com", api_key="unused", plan="pro")
    estimate = dest.estimate_load({"sales_account": 3000, "contact": 100, "note": 5000, "deal_product": 200})
    # Pro: 2,000 calls an hour, 400 a minute. Accounts go in bulk jobs (4 calls per 100 records).
    assert estimate.calls_per_target == {"sales_account": 120, "contact": 100, "note": 5000, "deal_product": 600}
    assert estimate.calls == 5820
    # Two full hours spent, then 1,820 calls at 400 a minute.
    assert estimate.seconds == pytest.approx(2 * 3600 + 1820 * 60 / 400)
    # Keeping calls in reserve for other integrations makes it longer; Enterprise makes it shorter.
    reserved = FreshsalesDestination(base_url="acme.myfreshworks.com", api_key="unused", plan="pro",
                                     hourly_reserve=500).estimate_load({"note": 5000})
    assert reserved.requests_per_hour == 1500 and reserved.seconds == pytest.approx(3 * 3600 + 500 * 60 / 400)
    enterprise = FreshsalesDestination(base_url="acme.myfreshworks.com", api_key="unused",
                                       plan="enterprise").estimate_load({"note": 5000})
    assert enterprise.seconds == pytest.approx(5000 * 60 / 400)
    small = dest.estimate_load({"contact": 40})
    assert small.seconds == pytest.approx(6.0) and small.hours < 0.01


def test_jobs_closed_long_before_the_extraction_become_tasks_the_rest_stay_deals(rig):
    """The seed's 90-day rule, measured from the snapshot's extraction time (the manifest), not now."""
    import datetime as dt

    from airflow_ascora_provider.engine.transform import BatchTransformer

    ctx = rig.context()
    extracted_at = dt.datetime.fromisoformat(ctx.snapshot.manifest()["extracted_at"])
    assert ctx.as_of == extracted_at
    job = next(ctx.snapshot.iter_records("job"))
    old = job | {"id": "old-job", "status": "Closed", "completed_date": extracted_at - dt.timedelta(days=100)}
    recent = job | {"id": "recent-job", "status": "Closed", "completed_date": extracted_at - dt.timedelta(days=10)}
    taken = {}
    for name in ("deal", "job_task"):
        outcome = BatchTransformer(ctx, rig.mapping.maps[name]).transform([old, recent])
        taken[name] = {r.source_id for r in outcome.records} | {q.source_id for q in outcome.quarantined}
        assert outcome.not_for_this_map == 1
    assert taken == {"deal": {"recent-job"}, "job_task": {"old-job"}}


def test_schema_report_shows_the_load_estimate_for_the_staged_records(rig):
    """The schema step prices the load: records per target from the snapshot and the mapping's
    conditions (a job is a deal or a task, never both), calls and hours at the plan's limits."""
    import datetime as dt

    from airflow_ascora_provider.engine.schema import plan_for, schema_sections
    from airflow_ascora_provider.reports.render import to_html
    from airflow_ascora_provider.source.staging import Snapshot

    snapshot = Snapshot(rig.staging, "s1")
    as_of = dt.datetime.fromisoformat(snapshot.manifest()["extracted_at"])
    jobs = list(snapshot.iter_records("job", ["status", "completed_date"]))
    historical = [j for j in jobs if j["status"] == "Closed" and j["completed_date"] is not None
                  and j["completed_date"] < as_of - dt.timedelta(days=90)]
    customers = list(snapshot.iter_records("customer", ["is_company"]))
    plan = plan_for(rig.mapping, rig.dest, snapshot)
    per_target = plan.forecast.per_target
    assert per_target["task"]["records"] == len(historical)
    assert per_target["deal"]["records"] == len(jobs) - len(historical) + snapshot.count("quote")
    assert per_target["sales_account"]["records"] == sum(1 for c in customers if c["is_company"])
    assert per_target["note"]["records"] == (snapshot.count("note") + snapshot.count("invoice")
                                             + snapshot.count("supplier_bill"))
    expected = rig.dest.estimate_load({t: f["records"] for t, f in per_target.items()})
    assert plan.forecast.facts["API calls"] == expected.calls > 0
    assert plan.forecast.facts["plan"] == "pro"
    sections = {s.heading: s for s in schema_sections(plan, [])}
    assert sections["Load estimate"].facts["hours"] == round(expected.hours, 2)
    html = to_html("Schema setup", schema_sections(plan, []))
    assert "Load estimate" in html and str(expected.calls) in html
    assert plan.as_dict()["load_estimate"]["facts"]["API calls"] == expected.calls
    # Without a snapshot (the pre-flight check the load runs) nothing is estimated.
    assert plan_for(rig.mapping, rig.dest).forecast is None


def test_supplier_bills_are_notes_on_the_account_of_their_jobs_customer(rig):
    """Seed and issue: "supplier bills → notes on the account". A bill names its job; the job names the
    customer, whose account (or, for an individual, contact) holds the note, historical jobs included."""
    from airflow_ascora_provider.engine.runner import load_everything

    rig.prepare_schema()
    ctx = rig.context()
    stats = load_everything(ctx)
    jobs = {j["id"]: j for j in ctx.snapshot.iter_records("job", ["id", "customer_id"])}
    bills = list(ctx.snapshot.iter_records("supplier_bill", ["id", "job_id", "tracking_number"]))
    accounts = {e.source_id: int(e.dest_id) for m, obj in (("account", "customer"), ("person", "customer"))
                for e in ctx.ledger.iter_crosswalk("freshsales", obj, rig.mapping.maps[m].target)}
    notes = {n["description"].rsplit("Ascora ID: ", 1)[-1].strip(): n for n in rig.records()["note"]
             if "Ascora ID: " in (n.get("description") or "")}
    on_jobs = [b for b in bills if b["job_id"]]
    assert on_jobs and stats["bill_note"].created == len(on_jobs)
    for bill in on_jobs:
        note = notes[bill["id"]]
        assert note["targetable_type"] in ("SalesAccount", "Contact")
        assert note["targetable_id"] == accounts[jobs[bill["job_id"]]["customer_id"]], bill["id"]
