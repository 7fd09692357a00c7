"""The engine with the Dynamics 365 plugin against the Dataverse and Ascora emulators, without Airflow.

* A worker killed between the Dataverse write and the ledger write: the retry adopts the rows by their
  Ascora id (no duplicates), reconciliation of every record passes, a re-run writes nothing, rollback
  leaves Dataverse exactly as it was.
* A dirty tenant (SQLite and PostgreSQL ledgers): every record is loaded, quarantined with a reason or
  skipped by a rule; the seed's data-quality cases (variant-spelling duplicates, orphaned attachments,
  jobs without a technician, unknown statuses) are reported or quarantined, never dropped.
* The Professional licence's 15-custom-table limit is checked on the whole plan before anything is
  created; note files over the organisation's upload limit are quarantined or recorded as a link.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from airflow_ascora_provider.destinations.spec import OutgoingRecord
from tests.integration.dataverse_support import connection_options, dataverse_users, serve
from tests.integration.test_engine_twenty import _DiesAfterWrite


def _setup(tenant, tmp_path, ledger=None, **emulator):
    from airflow_ascora_provider.destinations.dynamics365.plugin import DynamicsDestination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    ascora = ServedApp(ascora_app(tenant)).start()
    dataverse = serve(users=dataverse_users(tenant), **emulator)
    snapshot = Snapshot(tmp_path / "staging", "s1")
    extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key", enable_extensions=True)),
            snapshot)
    audit = audit_snapshot(snapshot)
    ledger = ledger or Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.migrate()
    dest = DynamicsDestination(**connection_options(dataverse))
    described = dest.describe_schema()
    mapping = complete_mapping(load_mapping(DynamicsDestination.default_mapping), audit, dest.custom_field_name,
                               {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()})
    plan = plan_for(mapping, dest)
    assert not plan.problems and not plan.manual, plan.problems
    assert dest.check_plan(plan.changes) == []  # Enterprise: no table limit
    apply_schema(dest, plan)
    dest.close()  # publishes what the schema step changed
    assert dataverse.app.state.dataverse.snapshot()["unpublished"] == []
    ledger.approve_mapping("dynamics365", mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                           approved_by="test", source="cli")
    dest = DynamicsDestination(**connection_options(dataverse))
    ctx = MigrationContext("run-1", "dynamics365", ledger, str(tmp_path / "staging"), "s1", mapping,
                           fallback_owner_email="owner@example.com")
    ctx.use_destination(dest)
    resolve_users(ctx)
    ledger.start_run("run-1", destination="dynamics365", kind="full", mapping_hash=mapping.hash)
    return ctx, ascora, dataverse, audit


def _ascora_ids(records: dict[str, list[dict]]) -> dict[str, list[str]]:
    out = {}
    for table, rows in records.items():
        if table == "annotation":
            out[table] = [t for r in rows for t in _tags(r.get("notetext"))]
        else:
            out[table] = [r["asc_ascora_id"] for r in rows if r.get("asc_ascora_id")]
    return out


def _tags(text):
    import re

    return re.findall(r"\[ascora:([^\]]+)\]", text or "")


def test_killed_mid_load_then_retried_has_no_duplicates_and_rolls_back_exactly(small_tenant, tmp_path):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.rollback import rollback_run
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, dataverse, _ = _setup(small_tenant, tmp_path)
    state = dataverse.app.state.dataverse
    try:
        before = state.snapshot()["records"]
        real_ledger = ctx.ledger
        for die_on in (2, 7):
            ctx.ledger = _DiesAfterWrite(real_ledger, die_on)
            with pytest.raises(SystemExit):
                load_everything(ctx)
        ctx.ledger = real_ledger
        assert real_ledger.pending_intents("dynamics365")
        load_everything(ctx)
        assert not real_ledger.pending_intents("dynamics365")
        records = state.snapshot()["records"]
        for table, ids in _ascora_ids(records).items():
            assert len(ids) == len(set(ids)), f"duplicate {table} rows after the retry"
        assert records["asc_job"] and records["annotation"] and records["customeraddress"]
        job = next(r for r in records["asc_job"] if r.get("asc_technician"))
        assert job["ownerid"]["entity"] == "systemuser" and job["asc_status"] >= 100000000
        assert all(r["regardingobjectid"] for r in records["task"])
        assert {r["addressnumber"] for r in records["customeraddress"]} >= {3}
        first = state.snapshot()["records"]["account"][0]
        assert first["createdon"] < first["overriddencreatedon"]  # the original Ascora date is kept
        result = reconcile(ctx, verify="all")
        assert result["ok"], (result["totals"], {m: c["examples"][:3] for m, c in result["content"].items()
                                                 if c["mismatch"] or c["missing"]})
        assert result["totals"]["missing"] == 0
        writes_before = len(dataverse.control.calls("POST", "/api/data/v9.2/$batch"))
        stats = load_everything(ctx)
        assert sum(s.created + s.updated for s in stats.values()) == 0
        assert len(dataverse.control.calls("POST", "/api/data/v9.2/$batch")) == writes_before
        summary = rollback_run(real_ledger, ctx.destination, "dynamics365", "run-1", "run-1__rollback")
        assert summary["complete"], summary["failures"][:5]
        assert state.snapshot()["records"] == before
    finally:
        ctx.close()
        ascora.stop()
        dataverse.stop()


def test_stalled_note_batches_are_settled_after_the_unit_not_waited_for(small_tenant, tmp_path, in_doubt_settled):
    """Notes (annotations) have no alternate key: a $batch of new notes that stalls past the client's
    timeout may still land. The load goes on and settles it at the end of its unit: no note twice,
    none missing, no intent left open."""
    from airflow_ascora_provider.destinations.dynamics365.plugin import DynamicsDestination
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    ctx, ascora, dataverse, _ = _setup(small_tenant, tmp_path)
    state = dataverse.app.state.dataverse
    try:
        ctx.destination.close()
        ctx.use_destination(DynamicsDestination(**connection_options(dataverse, timeout=0.6)))
        dataverse.control.set_faults(FaultPlan(rate_slow=0.35, slow_seconds=1.0, seed=4,
                                               paths=["/api/data/v9.2/$batch"]))
        load_everything(ctx)
        dataverse.control.set_faults(FaultPlan())
        assert in_doubt_settled.get("annotation", 0) >= 1, in_doubt_settled
        for table, ids in _ascora_ids(state.snapshot()["records"]).items():
            assert len(ids) == len(set(ids)), f"duplicate {table} rows"
        assert not ctx.ledger.pending_intents("dynamics365")
        result = reconcile(ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
    finally:
        ctx.close()
        ascora.stop()
        dataverse.stop()


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_dirty_tenant_every_record_accounted_for(dirty_tenant, tmp_path, ledger_url):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.ledger import Ledger

    url, schema = ledger_url
    ledger = Ledger(url, schema=schema) if schema else Ledger(url)
    ctx, ascora, dataverse, audit = _setup(dirty_tenant, tmp_path, ledger=ledger)
    try:
        load_everything(ctx)
        result = reconcile(ctx, verify="sample", verify_size=40)
        assert result["totals"]["missing"] == 0, result["objects"]
        assert result["ok"], {m: c["examples"][:3] for m, c in result["content"].items() if c["mismatch"]}
        quarantine = ctx.ledger.list_quarantine(destination="dynamics365")
        assert all(q["reason"] and q["source_id"] for q in quarantine)
        # The seed's data-quality step: reported or quarantined, never dropped.
        assert audit["summary"]["duplicate_customer_groups"] > 0  # variant spellings, listed for merging
        # Orphans (a job whose customer is missing, a site without its billing customer …) are quarantined
        # with the reason, and so is everything hanging off them (an orphaned job's notes and attachments).
        quarantined = {(q["source_object"], q["source_id"]): q["reason"] for q in quarantine}
        orphans = [(obj, sample["id"]) for obj, fields in audit["orphans"].items()
                   for info in fields.values() for sample in info["samples"]]
        assert orphans and all(key in quarantined for key in orphans), orphans
        assert all(quarantined[key].startswith("[") for key in orphans)  # "[map] reason"
        assert any("no value-map entry" in q["reason"] and q["source_object"] == "job" for q in quarantine)
        manifest = json.loads((dirty_tenant / "dirty_manifest.json").read_text())
        unassigned = {d["id"] for d in manifest.get("job_without_technician", [])}
        jobs = dataverse.app.state.dataverse.snapshot()["records"]["asc_job"]
        fallback = next(u for u in ctx.destination.list_users() if u.email == "owner@example.com").id
        landed = [j for j in jobs if j["asc_ascora_id"] in unassigned]
        assert landed and all(j["ownerid"]["id"] == fallback and not j.get("asc_technician_name") for j in landed)
    finally:
        ctx.close()
        ascora.stop()
        dataverse.stop()


def test_professional_licence_plan_says_what_fits_before_creating_anything(tmp_path):
    from airflow_ascora_provider.destinations.dynamics365.plugin import DynamicsDestination, SchemaLimitExceeded
    from airflow_ascora_provider.engine.schema import plan_for
    from airflow_ascora_provider.mapping.spec import load_mapping

    server = serve(professional=True)
    try:
        dest = DynamicsDestination(**connection_options(server, licence="professional"))
        for n in range(10):
            dest.hook.create_table(f"asc_existing{n}", "Existing", "Existing", "asc_name")
        plan = plan_for(load_mapping(DynamicsDestination.default_mapping), dest)
        tables = [c.object for c in plan.changes if c.kind == "custom_object"]
        assert len(tables) == 7
        problems = dest.check_plan(plan.changes)
        assert len(problems) == 1 and "has 10 and the mapping needs 7 more" in problems[0]
        assert problems[0] in plan.problems  # so the schema step applies nothing and the load never starts
        assert f"5 fit ({', '.join(tables[:5])})" in problems[0]
        created_before = len(server.control.calls("POST", "/api/data/v9.2/EntityDefinitions"))
        for change in [c for c in plan.changes if c.kind == "custom_object"][:5]:
            dest.apply_schema_change(change)
        with pytest.raises(SchemaLimitExceeded, match="15 custom tables"):
            dest.apply_schema_change(next(c for c in plan.changes if c.object == tables[5]))
        assert len(server.control.calls("POST", "/api/data/v9.2/EntityDefinitions")) == created_before + 5
        dest.close()
    finally:
        server.stop()


def test_note_files_over_the_upload_limit_are_quarantined_or_linked(tmp_path):
    from airflow_ascora_provider.destinations.dynamics365.plugin import DynamicsDestination
    from airflow_ascora_provider.mapping.values import AttachTo, DestRef, FileRef

    server = serve(max_upload_bytes=400)  # base64 of 300 bytes is exactly 400 characters
    try:
        files = {}
        for name, size in (("fits.pdf", 300), ("big.pdf", 301)):
            content = bytes(range(256)) * 2
            content = content[:size]
            (tmp_path / name).write_bytes(content)
            files[name] = FileRef(hashlib.sha256(content).hexdigest(), size, name, "application/pdf",
                                  str(tmp_path / name))
        plain = DynamicsDestination(**connection_options(server))
        account = plain.hook.create("accounts", {"name": "Parent"})

        def note(source_id, ref):
            return OutgoingRecord(source_id, {"subject": ref.name, "filename": ref.name, "documentbody": ref,
                                              "objectid": AttachTo((DestRef("account", account),)),
                                              "ascora_id": source_id})

        results = plain.write_batch("annotation", [note("a1", files["fits.pdf"]), note("a2", files["big.pdf"])],
                                    "ascora_id")
        assert results[0].ok and not results[1].ok
        assert "over the organisation's note limit" in results[1].error and results[1].error_field == "documentbody"
        linked = DynamicsDestination(**connection_options(
            server, large_file_link="https://contoso.sharepoint.com/sites/ascora/Shared%20Documents/{name}"))
        (result,) = linked.write_batch("annotation", [note("a2", files["big.pdf"])], "ascora_id")
        assert result.ok
        back = linked.read_records("annotation", [results[0].dest_id, result.dest_id],
                                   ["documentbody", "ascora_id", "filename", "objectid"])
        assert back[results[0].dest_id]["documentbody"] == files["fits.pdf"]
        assert back[result.dest_id]["documentbody"] == files["big.pdf"]
        assert back[result.dest_id]["ascora_id"] == "a2"
        assert back[result.dest_id]["objectid"] == AttachTo((DestRef("account", account),))
        stored = next(r for r in server.app.state.dataverse.snapshot()["records"]["annotation"]
                      if r["annotationid"] == result.dest_id)
        assert "sharepoint.com/sites/ascora/Shared%20Documents/big.pdf" in stored["notetext"]
        assert linked.find_by_source_ids("annotation", "ascora_id", ["a1", "a2", "a3"]) == {
            "a1": results[0].dest_id, "a2": result.dest_id}
        plain.close()
        linked.close()
    finally:
        server.stop()
