"""Builders for the example DAGs, shared by every destination.

The files in ``dags/`` are three lines each; the chain lives here once so every destination runs the
same approach: audit → mapping approval → schema → users → sample → sample approval → full load
(waves of mapped batches) → reconcile; a delta-pickup DAG for the cutover window; a rollback DAG.
Nothing here imports a destination plugin: plugins load when tasks run, not when DAGs are parsed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param

from airflow_ascora_provider.operators.audit import AscoraAuditOperator
from airflow_ascora_provider.operators.extract import AscoraExtractOperator
from airflow_ascora_provider.operators.migration import (
    MAX_WAVES,
    LoadUnitOperator,
    MappingApprovalOperator,
    PlanLoadOperator,
    ProposeMappingOperator,
    ReconcileOperator,
    ResolveUsersOperator,
    RollbackOperator,
    SampleApprovalOperator,
    SampleMigrationOperator,
    SetupSchemaOperator,
)

STAGING = "{{ params.staging_path or '' }}"
# Steps that talk to Ascora or the CRM are retried like a call that failed: each is safe to run again
# (extraction writes a new snapshot, the schema step checks what is in place, loads resume from the
# ledger), and a step whose API misbehaved past its client's retries should not stop a cutover.
TASK_RETRIES = {"retries": 3, "retry_delay": dt.timedelta(seconds=5)}


def _common(destination: str, destination_conn_id: str | None) -> dict[str, Any]:
    return {
        "destination": destination,
        "destination_conn_id": destination_conn_id,
        "staging_path": STAGING,
        "fallback_owner": "{{ params.fallback_owner or '' }}",
    }


def migration_dag(destination: str, *, dag_id: str | None = None, destination_conn_id: str | None = None,
                  label: str | None = None, max_concurrency: int = 4, pool: str | None = None,
                  load_options: dict | None = None) -> DAG:
    """``max_concurrency``: load tasks of one run at once (the destination's limit: Twenty wants 1, as
    every task paces itself under the same per-key request limit). ``pool`` caps it across runs and DAGs.
    ``load_options``: extra :class:`LoadUnitOperator` arguments (``bulk_poll_interval``, ``quota_wait``)."""
    label = label or destination.title()
    with DAG(
        dag_id=dag_id or f"ascora_to_{destination}",
        description=f"Migrate Ascora into {label}: audit, approvals, schema, users, sample, full load, reconcile",
        schedule=None,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["ascora", "migration", destination],
        params={
            "source": Param("api", type="string", description="'api' or the path of a folder of Ascora exports"),
            "staging_path": Param("", type="string", description="ObjectStoragePath URI; empty = default"),
            "sample_size": Param(300, type="integer", minimum=1),
            "auto_approve": Param(False, type="boolean",
                                  description="Approve the mapping and the sample without asking (demo, tests)"),
            "fallback_owner": Param("", type="string",
                                    description="E-mail of the user who owns records whose technician has no account"),
            "verify": Param("sample", enum=["sample", "all", "none"],
                            description="Reconciliation content check: a sample of records or all of them"),
        },
        doc_md=__doc__,
    ) as dag:
        common = _common(destination, destination_conn_id)
        extract = AscoraExtractOperator(task_id="extract", source="{{ params.source }}", staging_path=STAGING,
                                        **TASK_RETRIES)
        audit = AscoraAuditOperator(task_id="audit", staging_path=STAGING)
        propose = ProposeMappingOperator(task_id="propose_mapping", **common)
        approve_mapping = MappingApprovalOperator(task_id="approve_mapping", destination=destination,
                                                  staging_path=STAGING)
        schema = SetupSchemaOperator(task_id="setup_schema", **TASK_RETRIES, **common)
        users = ResolveUsersOperator(task_id="resolve_users", **TASK_RETRIES, **common)
        sample = SampleMigrationOperator(task_id="sample", sample_size="{{ params.sample_size }}", **common)
        approve_sample = SampleApprovalOperator(task_id="approve_sample", destination=destination,
                                                destination_conn_id=destination_conn_id, staging_path=STAGING)
        extract >> audit >> propose >> approve_mapping >> schema >> users >> sample >> approve_sample
        previous = approve_sample
        for wave in range(MAX_WAVES):
            plan = PlanLoadOperator(task_id=f"plan_wave_{wave}", wave=wave, trigger_rule="none_failed", **common)
            load = LoadUnitOperator.partial(task_id=f"load_wave_{wave}", trigger_rule="none_failed",
                                            **TASK_RETRIES,
                                            max_active_tis_per_dagrun=max_concurrency,
                                            **({"pool": pool} if pool else {}), **(load_options or {}),
                                            **common).expand(unit=plan.output)
            previous >> plan >> load
            previous = load
        reconcile = ReconcileOperator(task_id="reconcile", verify="{{ params.verify }}",
                                      trigger_rule="none_failed", **common)
        previous >> reconcile
    return dag


def delta_dag(destination: str, *, dag_id: str | None = None, destination_conn_id: str | None = None,
              schedule: str | None = "*/30 * * * *") -> DAG:
    """Re-extract and load what changed, every ``schedule`` tick inside the cutover window."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    def inside_window(params: dict[str, Any], logical_date=None, **_: Any) -> bool:
        now = dt.datetime.now(dt.UTC)
        start = params.get("window_start")
        end = params.get("window_end")
        parse = lambda v: dt.datetime.fromisoformat(v).astimezone(dt.UTC) if v else None  # noqa: E731
        if start and now < parse(start):
            return False
        if end and now > parse(end):
            return False
        return True

    with DAG(
        dag_id=dag_id or f"ascora_{destination}_delta",
        description=f"Delta pickup into {destination} during the cutover window",
        schedule=schedule,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["ascora", "migration", "delta", destination],
        params={
            "source": Param("api", type="string"),
            "staging_path": Param("", type="string"),
            "window_start": Param("", type="string", description="ISO timestamp; empty = no start bound"),
            "window_end": Param("", type="string", description="ISO timestamp; empty = no end bound"),
            "fallback_owner": Param("", type="string"),
            "delete_vanished": Param(False, type="boolean",
                                     description="Delete CRM records whose Ascora record disappeared"),
        },
    ) as dag:
        common = _common(destination, destination_conn_id)
        window = ShortCircuitOperator(task_id="inside_cutover_window", python_callable=inside_window)
        extract = AscoraExtractOperator(task_id="extract", source="{{ params.source }}", staging_path=STAGING,
                                        **TASK_RETRIES)
        users = ResolveUsersOperator(task_id="resolve_users", **common)
        delta = DeltaLoadOperator_(common)
        reconcile = ReconcileOperator(task_id="reconcile", verify="sample", finish_run=False, **common)
        window >> extract >> users >> delta >> reconcile
    return dag


def DeltaLoadOperator_(common: dict[str, Any]):  # noqa: N802 - builds the task
    from airflow_ascora_provider.operators.migration import DeltaLoadOperator

    return DeltaLoadOperator(task_id="delta_load", delete_vanished="{{ params.delete_vanished }}", **common)


def rollback_dag(dag_id: str = "ascora_rollback") -> DAG:
    """Triggered by hand with the run id to undo and ``confirm: true``."""
    with DAG(
        dag_id=dag_id,
        description="Undo a migration run: delete what it created, restore what it updated",
        schedule=None,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        tags=["ascora", "migration", "rollback"],
        params={
            "destination": Param("twenty", type="string", description="Destination plugin name"),
            "destination_conn_id": Param("", type="string", description="Empty = the plugin's default"),
            "run_id": Param("", type="string", minLength=1, description="The migration run to undo"),
            "confirm": Param(False, type="boolean", description="Must be true: rollback deletes CRM records"),
            "staging_path": Param("", type="string"),
        },
    ) as dag:
        RollbackOperator(
            task_id="rollback",
            destination="{{ params.destination }}",
            destination_conn_id="{{ params.destination_conn_id or '' }}",
            target_run_id="{{ params.run_id }}",
            confirm="{{ params.confirm }}",
            staging_path=STAGING,
        )
    return dag
