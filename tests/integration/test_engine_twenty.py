"""The engine against real emulators without Airflow in the way: crash safety and a dirty tenant.

* A worker that dies after Twenty accepted a batch but before the ledger recorded it: the retry
  adopts those records (no duplicates), misses nothing, and rollback still removes every one.
* A ``--dirty`` tenant: every source record ends loaded, quarantined with a reason, or skipped by a
  visible rule; reconciliation finds nothing missing.
"""

from __future__ import annotations

import pytest

from tests.conftest import tenant_members


def _setup(tenant, tmp_path, ledger_url=None, twenty_kwargs=None):
    from airflow_ascora_provider.destinations.twenty.plugin import TwentyDestination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    ascora = ServedApp(ascora_app(tenant)).start()
    twenty = ServedApp(twenty_app(rate_limit=100_000, members=tenant_members(tenant), **(twenty_kwargs or {}))).start()
    snapshot = Snapshot(tmp_path / "staging", "s1")
    manifest = extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                                  enable_extensions=True)), snapshot)
    audit = audit_snapshot(snapshot)
    ledger = ledger_url if isinstance(ledger_url, Ledger) else Ledger(ledger_url or f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.migrate()
    dest = TwentyDestination(base_url=twenty.url, api_key="twenty-sandbox-key", requests_per_minute=0)
    described = dest.describe_schema()
    mapping = complete_mapping(load_mapping(TwentyDestination.default_mapping), audit, dest.custom_field_name,
                               {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()})
    apply_schema(dest, plan_for(mapping, dest))
    ledger.approve_mapping("twenty", mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                           approved_by="test", source="cli")
    ctx = MigrationContext("run-1", "twenty", ledger, str(tmp_path / "staging"), "s1", mapping,
                           fallback_owner_email="owner@example.com")
    ctx.use_destination(dest)
    resolve_users(ctx)
    ledger.start_run("run-1", destination="twenty", kind="full", mapping_hash=mapping.hash)
    return ctx, ascora, twenty, manifest, audit


class _DiesAfterWrite:
    """Wraps the ledger: the Nth record_writes call raises, as if the worker was killed right then."""

    def __init__(self, ledger, die_on_call: int):
        self._ledger = ledger
        self._calls = 0
        self._die = die_on_call

    def record_writes(self, *args, **kwargs):
        self._calls += 1
        if self._calls == self._die:
            raise SystemExit("worker killed between the CRM write and the ledger write")
        return self._ledger.record_writes(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ledger, name)


def test_killed_mid_load_then_retried_has_no_duplicates_and_rolls_back(small_tenant, tmp_path):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    try:
        before = twenty.app.state.twenty.snapshot()["records"]
        real_ledger = ctx.ledger
        for die_on in (3, 9):  # two crashes at different points of the load
            ctx.ledger = _DiesAfterWrite(real_ledger, die_on)
            with pytest.raises(SystemExit):
                load_everything(ctx)
        ctx.ledger = real_ledger
        assert real_ledger.pending_intents("twenty"), "the crash must leave intents behind"
        load_everything(ctx)  # the retry
        assert not real_ledger.pending_intents("twenty")
        records = twenty.app.state.twenty.snapshot()["records"]
        for name, rows in records.items():
            ids = [r.get("ascoraId") for r in rows if r.get("ascoraId")]
            assert len(ids) == len(set(ids)), f"duplicate {name} after the retry"
        result = reconcile(ctx, verify="all")
        assert result["ok"], result["totals"]
        assert result["totals"]["missing"] == 0
        summary = rollback_run(real_ledger, ctx.destination, "twenty", "run-1", "run-1__rollback")
        assert summary["complete"], summary["failures"]
        after = twenty.app.state.twenty.snapshot()["records"]
        assert {k: v for k, v in after.items() if k in before} == before
        assert all(not rows for k, rows in after.items() if k not in before)
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()


def test_batches_cut_short_or_unanswered_are_recognised_by_their_own_ids(small_tenant, tmp_path):
    """A batch written but unanswered, or cut short before a 500, is sent again by the client; Twenty
    refuses the records already there because their ids (chosen by the plugin) exist. Those are this
    write's own records: taken as created, with no search by Ascora id and no second write."""
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    try:
        twenty.control.set_faults(FaultPlan(rate_lost_reply=0.15, rate_partial=0.25, seed=7, paths=["/rest/batch/"]))
        stats = load_everything(ctx)
        counters = dict(twenty.control.counters)
        twenty.control.set_faults(FaultPlan())
        assert counters["lost_reply"] > 0 and counters["partial"] > 0, counters
        # A first load only creates: an upsert here would be an adopted record written a second time.
        rewrites = [r for r in twenty.control.calls("POST", "/rest/batch/") if "upsert=true" in r.query]
        assert not rewrites, f"{len(rewrites)} batches written again as updates"
        records = twenty.app.state.twenty.snapshot()["records"]
        for name, rows in records.items():
            ids = [r.get("ascoraId") for r in rows if r.get("ascoraId")]
            assert len(ids) == len(set(ids)), f"duplicate {name}"
        assert not ctx.ledger.pending_intents("twenty")
        assert sum(s.created for s in stats.values()) == sum(
            len([r for r in rows if r.get("ascoraId")]) for rows in records.values())
        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()


@pytest.mark.parametrize("ledger_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_dirty_tenant_every_record_accounted_for(dirty_tenant, tmp_path, ledger_kind, request):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything

    url = None
    if ledger_kind == "postgres":
        import uuid

        import sqlalchemy as sa

        from tests.conftest import PG_URL

        schema = f"ledger_dirty_{uuid.uuid4().hex[:8]}"
        engine = sa.create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        from airflow_ascora_provider.ledger import Ledger

        url = Ledger(PG_URL, schema=schema)
    ctx, ascora, twenty, manifest, audit = _setup(dirty_tenant, tmp_path, ledger_url=url)
    try:
        assert manifest["totals"]["read"] == (manifest["totals"]["staged"] + manifest["totals"]["quarantined"]
                                              + manifest["totals"]["skipped"])
        # The mess the generator put in is seen by the audit.
        assert audit["summary"]["orphans"] > 0
        assert audit["summary"]["duplicate_customer_groups"] > 0
        kinds = {i["kind"] for items in audit["field_issues"].values() for i in items}
        assert {"invalid e-mail", "date stored as text"} <= kinds, kinds
        load_everything(ctx)
        result = reconcile(ctx, verify="sample", verify_size=50)
        assert result["totals"]["missing"] == 0, result["objects"]
        assert result["totals"]["quarantined"] > 0
        for entry in ctx.ledger.list_quarantine(destination="twenty"):
            assert entry["reason"], entry
            assert entry["source_id"], entry
        assert result["ok"], {m: c for m, c in result["content"].items() if c["mismatch"] or c["missing"]}
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()
        if ledger_kind == "postgres":
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
