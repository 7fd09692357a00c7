"""A real migration run for the reports-page tests: the DAG's operators, one after the other.

Runs every step the migration DAG runs (extract, audit, propose, approve, schema, users, sample, the
load waves, reconcile), then a delta run and a rollback of the delta, against the Ascora and Twenty
emulators, so the ledger and the staging folder hold exactly what a real run leaves behind. Calling
the operators directly (rather than ``dag.test()``) keeps this to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tenant_members

RUN_ID = "manual__2026-11-22T01:30:00+00:00"
DELTA_RUN_ID = "scheduled__2026-11-22T02:00:00+00:00"
_DONE: dict[str, dict[str, Any]] = {}


def run_migration(tmp_path_factory) -> dict[str, Any]:
    """The scenario's outcome (ledger URL, staging folder ...), computed once per test session on a
    small tenant of its own (every object, a few hundred records: enough for every section of the page)."""
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    if "result" not in _DONE:
        workdir = tmp_path_factory.mktemp("ui-scenario")
        generate_tenant(workdir / "tenant", size=200, seed=7)
        ledger_url = f"sqlite:///{workdir / 'ledger.sqlite'}"
        with pytest.MonkeyPatch.context() as monkeypatch:
            _DONE["result"] = _run(workdir / "tenant", workdir, monkeypatch, ledger_url) | {
                "ledger_url": ledger_url, "workdir": workdir}
    return _DONE["result"]


def _run(tenant: Path, workdir: Path, monkeypatch, ledger_url: str) -> dict[str, Any]:
    from airflow_ascora_provider.hooks.ledger import dispose_engines
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.operators.audit import AscoraAuditOperator
    from airflow_ascora_provider.operators.extract import AscoraExtractOperator
    from airflow_ascora_provider.operators.migration import (
        MAX_WAVES,
        DeltaLoadOperator,
        LoadUnitOperator,
        MappingApprovalOperator,
        PlanLoadOperator,
        ProposeMappingOperator,
        ReconcileOperator,
        ResolveUsersOperator,
        RollbackOperator,
        SampleMigrationOperator,
        SetupSchemaOperator,
    )
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app

    staging = str(workdir / "staging")
    ascora = ServedApp(ascora_app(tenant)).start()
    twenty = ServedApp(twenty_app(rate_limit=100_000, members=tenant_members(tenant))).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({
            "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
            "extra": {"enable_extensions": True}}))
        monkeypatch.setenv("AIRFLOW_CONN_TWENTY_DEFAULT", json.dumps({
            "conn_type": "twenty", "host": twenty.url, "password": "twenty-sandbox-key",
            "extra": {"requests_per_minute": 0}}))
        monkeypatch.setenv("ASCORA_LEDGER_URL", ledger_url)
        dispose_engines()
        common = {"destination": "twenty", "staging_path": staging, "snapshot_id": RUN_ID,
                  "migration_run_id": RUN_ID, "fallback_owner": "owner@example.com"}
        AscoraExtractOperator(task_id="extract", staging_path=staging, snapshot_id=RUN_ID).execute({})
        AscoraAuditOperator(task_id="audit", staging_path=staging, snapshot_id=RUN_ID,
                            report_run_id=RUN_ID).execute({})
        proposed = ProposeMappingOperator(task_id="propose_mapping", **common).execute({})
        MappingApprovalOperator(task_id="approve_mapping", destination="twenty", migration_run_id=RUN_ID,
                                staging_path=staging).on_approve({}, approved_by="Priya (ops)", params_input={})
        SetupSchemaOperator(task_id="setup_schema", **common).execute({})
        ResolveUsersOperator(task_id="resolve_users", **common).execute({})
        SampleMigrationOperator(task_id="sample", sample_size=30, **common).execute({})
        for wave in range(MAX_WAVES):
            units = PlanLoadOperator(task_id=f"plan_wave_{wave}", wave=wave, **common).execute({})
            for unit in units:
                LoadUnitOperator(task_id=f"load_wave_{wave}", unit=unit, **common).execute({})
        reconciled = ReconcileOperator(task_id="reconcile", verify="sample", **common).execute({})
        delta_common = {**common, "snapshot_id": DELTA_RUN_ID, "migration_run_id": DELTA_RUN_ID}
        AscoraExtractOperator(task_id="extract", staging_path=staging, snapshot_id=DELTA_RUN_ID).execute({})
        DeltaLoadOperator(task_id="delta_load", **delta_common).execute({})
        RollbackOperator(task_id="rollback", destination="twenty", target_run_id=DELTA_RUN_ID, confirm=True,
                         staging_path=staging, migration_run_id="manual__rollback_delta").execute({})
        ledger = Ledger(ledger_url)
        return {"run_id": RUN_ID, "delta_run_id": DELTA_RUN_ID, "staging": staging, "ledger": ledger,
                "proposed": proposed, "reconciled": reconciled}
    finally:
        ascora.stop()
        twenty.stop()
