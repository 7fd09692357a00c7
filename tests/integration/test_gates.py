"""The human gates and the refusals that protect a load.

* Mapping approval stores the approved map (edited or not) with its hash and who approved it; a load
  refuses a mapping whose hash is not the approved one.
* Sample rejection rolls the sample back.
* Schema changes the destination cannot make by API are listed, and the load refuses to start
  until they exist.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.integration.test_engine_twenty import _setup


def _event(option: str, params: dict | None = None) -> dict:
    return {"chosen_options": [option], "params_input": params or {},
            "responded_at": dt.datetime.now(dt.UTC), "responded_by_user": {"id": "7", "name": "Priya (ops)"}}


class _Ti:
    def xcom_pull(self, *a, **k):
        return None


def test_mapping_gate_stores_the_edited_map_and_the_load_checks_its_hash(small_tenant, tmp_path, monkeypatch):
    from airflow_ascora_provider.engine.context import MappingNotApproved
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.operators.migration import PROPOSED_MAPPING, MappingApprovalOperator

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    try:
        monkeypatch.setenv("ASCORA_LEDGER_URL", str(ctx.ledger.engine.url))
        ledger = ctx.ledger
        ledger.set_watermark("twenty", PROPOSED_MAPPING, ctx.mapping.to_yaml())
        edited = ctx.mapping.document | {"currency": "NZD"}
        edited_text = load_mapping(edited).to_yaml()
        gate = MappingApprovalOperator(task_id="approve_mapping", destination="twenty")
        gate.on_approve({}, approved_by="Priya (ops)", params_input={"edited_mapping": edited_text})
        record = ledger.approved_mapping("twenty")
        assert record["approved_by"] == "Priya (ops)" and record["source"] == "hitl"
        assert record["mapping_hash"] == load_mapping(edited_text).hash
        # The context still holds the unedited map: the load must refuse it.
        with pytest.raises(MappingNotApproved, match="differs from the one approved"):
            ctx.require_approved_mapping()
        # A broken edit is refused before it can be approved.
        with pytest.raises(Exception, match="maps.company"):
            gate.on_approve({}, approved_by="x", params_input={"edited_mapping": edited_text.replace(
                "source: customer", "source: nobody", 1)})
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()


def test_rejecting_the_sample_rolls_it_back(small_tenant, tmp_path, monkeypatch):
    from airflow_ascora_provider.engine.sample import load_sample, select_sample
    from airflow_ascora_provider.operators.migration import SampleApprovalOperator, sample_run_id

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    try:
        before = twenty.app.state.twenty.snapshot()["records"]
        ctx.run_id = sample_run_id("mig-1")
        ctx.ledger.start_run(ctx.run_id, destination="twenty", kind="sample")
        loaded = load_sample(ctx, select_sample(ctx, 40))
        assert sum(s.created for s in loaded.values()) > 0
        monkeypatch.setenv("ASCORA_LEDGER_URL", str(ctx.ledger.engine.url))
        monkeypatch.setenv("AIRFLOW_CONN_TWENTY_DEFAULT",
                           f'{{"conn_type": "twenty", "host": "{twenty.url}", "password": "twenty-sandbox-key", '
                           f'"extra": {{"requests_per_minute": 0}}}}')
        gate = SampleApprovalOperator(task_id="approve_sample", destination="twenty", migration_run_id="mig-1")
        gate.on_reject({}, rejected_by="Priya (ops)")
        after = twenty.app.state.twenty.snapshot()["records"]
        assert {k: v for k, v in after.items() if k in before} == before
        assert all(not rows for k, rows in after.items() if k not in before)
        assert ctx.ledger.get_run(ctx.run_id)["status"] == "rolled_back"
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()


def test_manual_schema_changes_are_listed_and_block_the_load(small_tenant, tmp_path):
    from airflow_ascora_provider.destinations.spec import Capabilities
    from airflow_ascora_provider.destinations.twenty.plugin import TwentyDestination
    from airflow_ascora_provider.engine.schema import SchemaNotReady, plan_for, require_schema_ready
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app

    class LockedTwenty(TwentyDestination):
        """A plan tier whose API cannot create fields: everything goes to the admin's list."""

        capabilities = Capabilities(batch_size=60, creatable=frozenset(), custom_object_fields=frozenset({"name"}))

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    ascora.stop()
    twenty.stop()
    with ServedApp(create_app(rate_limit=100_000)) as fresh:
        dest = LockedTwenty(base_url=fresh.url, api_key="twenty-sandbox-key", requests_per_minute=0)
        plan = plan_for(ctx.mapping, dest)
        assert plan.changes and not plan.by_api
        assert any(c.kind == "custom_object" and c.object == "site" for c in plan.manual)
        assert all(c.reason for c in plan.manual)
        with pytest.raises(SchemaNotReady, match=r"custom_field opportunity\.jobStatus \(picklist\) \(by hand\)"):
            require_schema_ready(ctx.mapping, dest)
        dest.close()
    ctx.close()
