"""The migration steps as Airflow operators.

Every step takes the same handful of names (destination, connections, staging path, snapshot, run
id) and rebuilds what it needs from staging and the ledger (see :mod:`engine.context`), so any task
can be retried or run on another worker; XCom carries only small summaries and report paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow_ascora_provider.compat import AirflowFailException, BaseOperator, Context
from airflow_ascora_provider.settings import default_staging_root, reports_folder

PROPOSED_MAPPING = "proposed_mapping"
SAMPLE_SUFFIX = "__sample"


def sample_run_id(run_id: str) -> str:
    return f"{run_id}{SAMPLE_SUFFIX}"


class MigrationStepOperator(BaseOperator):
    """Base of every migration step: common parameters and the context builder.

    :param destination: destination plugin name (``twenty``, ``salesforce`` ...).
    :param destination_conn_id: Airflow connection of the destination (plugin's default when None).
    :param destination_options: extra plugin options (e.g. ``base_url``/``api_key`` for a sandbox).
    :param ledger_conn_id: the ledger's connection (SQLite file by default, PostgreSQL in production).
    :param staging_path: staging root (ObjectStoragePath URI).
    :param snapshot_id: the extraction snapshot to read.
    :param migration_run_id: the run the ledger files writes under (default: the DAG run id).
    :param mapping_path: a mapping YAML to propose instead of the plugin's default.
    :param quota_wait: seconds a writing step pauses (deferred) when the destination's quota runs out
        and the destination does not say when it resets.
    """

    template_fields: Sequence[str] = ("destination", "destination_conn_id", "staging_path", "snapshot_id",
                                      "migration_run_id", "fallback_owner", "mapping_path", "destination_options")
    template_fields_renderers = {"destination_options": "json"}
    ui_color = "#eef6ee"

    def __init__(
        self,
        *,
        destination: str,
        destination_conn_id: str | None = None,
        destination_options: dict[str, Any] | None = None,
        ledger_conn_id: str = "ascora_ledger_default",
        staging_path: str | None = None,
        snapshot_id: str = "{{ run_id }}",
        migration_run_id: str = "{{ run_id }}",
        fallback_owner: str | None = None,
        mapping_path: str | None = None,
        quota_wait: float = 900.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.quota_wait = quota_wait
        self.destination = destination
        self.destination_conn_id = destination_conn_id or None
        self.destination_options = destination_options or {}
        self.ledger_conn_id = ledger_conn_id
        self.staging_path = staging_path
        self.snapshot_id = snapshot_id
        self.migration_run_id = migration_run_id
        self.fallback_owner = fallback_owner
        self.mapping_path = mapping_path

    # -- building blocks ----------------------------------------------------------------------
    @property
    def staging(self) -> str:
        return self.staging_path or default_staging_root()

    def ledger(self):
        from airflow_ascora_provider.hooks.ledger import LedgerHook

        return LedgerHook(ledger_conn_id=self.ledger_conn_id).get_ledger()

    def reports(self):
        return reports_folder(self.staging, self.migration_run_id)

    def default_mapping_text(self) -> str:
        if self.mapping_path:
            return Path(self.mapping_path).read_text(encoding="utf-8")
        from airflow_ascora_provider.destinations.manager import get_destination_class

        return get_destination_class(self.destination).default_mapping.read_text(encoding="utf-8")

    def build_context(self, *, approved: bool = True, run_id: str | None = None):
        from airflow_ascora_provider.engine.context import MigrationContext
        from airflow_ascora_provider.mapping.spec import load_mapping

        ledger = self.ledger()
        if approved:
            record = ledger.approved_mapping(self.destination)
            if record is None:
                from airflow_ascora_provider.engine.context import MappingNotApproved

                raise MappingNotApproved(f"no approved mapping for {self.destination}: approve one first")
            mapping = load_mapping(record["mapping_text"])
        else:
            proposed = ledger.get_watermark(self.destination, PROPOSED_MAPPING)
            mapping = load_mapping(proposed or self.default_mapping_text())
        return MigrationContext(
            run_id=run_id or self.migration_run_id,
            destination_name=self.destination,
            ledger=ledger,
            staging_path=self.staging,
            snapshot_id=self.snapshot_id,
            mapping=mapping,
            destination_conn_id=self.destination_conn_id or None,
            destination_options=dict(self.destination_options),
            fallback_owner_email=self.fallback_owner or None,
        )

    def write(self, ledger, name: str, title: str, data: dict[str, Any], sections, run_id: str | None = None):
        from airflow_ascora_provider.reports.render import write_report

        paths = write_report(self.reports(), name, title, data, sections,
                             meta={"run": self.migration_run_id, "destination": self.destination})
        summary = data.get("summary") or data.get("totals")
        ledger.add_report(run_id or self.migration_run_id, name, paths["html"],
                          summary if isinstance(summary, dict) else None)
        self.log.info("%s report: %s", title, paths["html"])
        return paths


class ProposeMappingOperator(MigrationStepOperator):
    """Propose the field map for this tenant and write the proposal and compatibility reports.

    Step 1 of the approach (audit against the destination's described schema) and the input of the
    approval step. The baseline is the latest approved map (the plugin's default before the first
    approval); the proposer (:mod:`airflow_ascora_provider.mapping.propose`) fills its gaps, each
    choice with a confidence and a reason, and completion spells out every custom, form and unmapped
    field. The proposed mapping is stored in the ledger with its hash.

    :param propose: False skips the proposer and only completes the baseline (custom, form and
        unmapped fields as new fields), as before the proposer existed.
    :param use_embeddings: use the packaged sentence-embedding model when it is installed.
    """

    def __init__(self, *, propose: bool = True, use_embeddings: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.propose = propose
        self.use_embeddings = use_embeddings

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.engine.schema import plan_schema, schema_sections
        from airflow_ascora_provider.mapping.complete import complete_mapping
        from airflow_ascora_provider.mapping.propose import (
            Proposal,
            proposal_markdown,
            proposal_sections,
            propose_mapping,
        )
        from airflow_ascora_provider.mapping.spec import load_mapping
        from airflow_ascora_provider.source.audit import audit_snapshot
        from airflow_ascora_provider.source.staging import Snapshot
        from airflow_ascora_provider.ui.links import run_page_url

        ctx = self.build_context(approved=False)
        try:
            snapshot = Snapshot(self.staging, self.snapshot_id)
            audit = audit_snapshot(snapshot)
            described = ctx.destination.describe_schema()
            # An approved map is the baseline: re-proposing only adds what is new (custom fields the
            # audit found since), it never replaces a human's choices with the defaults again.
            approved = ctx.ledger.approved_mapping(self.destination)
            base = load_mapping(approved["mapping_text"] if approved and not self.mapping_path
                                else self.default_mapping_text())
            if self.propose:
                proposal = propose_mapping(base, audit, described, field_name=ctx.destination.custom_field_name,
                                           snapshot=snapshot, embedder="auto" if self.use_embeddings else None)
            else:
                # Only the destination's own fields are off limits: custom fields an earlier run created
                # for this mapping keep their names, so re-proposing gives the same map (and hash).
                existing = {n: {f for f, d in obj.fields.items() if not d.custom} for n, obj in described.items()}
                proposal = Proposal(complete_mapping(base, audit, ctx.destination.custom_field_name, existing,
                                                     described),
                                    [], [])
            mapping = proposal.mapping
            caps = ctx.destination.capabilities
            plan = plan_schema(mapping, described, caps.creatable, caps.custom_object_fields)
            folder = self.reports()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "mapping.yaml").write_text(mapping.to_yaml())
            proposal_paths = self.write(ctx.ledger, "mapping_proposal", "Proposed field map", proposal.as_dict(),
                                        proposal_sections(proposal))
            paths = self.write(ctx.ledger, "compatibility", "Field-type compatibility and schema plan",
                               {"summary": {"changes": len(plan.changes), "problems": len(plan.problems)},
                                "plan": plan.as_dict(), "mapping": proposal.as_dict()["summary"]},
                               schema_sections(plan, []))
            ctx.ledger.set_watermark(self.destination, PROPOSED_MAPPING, mapping.to_yaml())
            markdown = proposal_markdown(proposal, proposal_paths["html"], run_page_url(self.migration_run_id))
            return {"hash": mapping.hash, "markdown": markdown, "mapping_uri": str(folder / "mapping.yaml"),
                    "report": paths, "proposal_report": proposal_paths, "proposal": proposal.stats(),
                    "low_confidence": proposal.low_confidence()[:20],
                    "schema_changes": len(plan.changes), "problems": plan.problems[:20]}
        finally:
            ctx.close()


def _approval_base():
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    return ApprovalOperator


class _ApprovalGate(_approval_base()):  # type: ignore[misc]
    """An ApprovalOperator that can be bypassed by ``params.auto_approve`` and acts on the answer.

    With ``auto_approve`` (demo, tests, scripted re-runs) the decision is recorded as automatic and no
    human is asked; otherwise the task waits for Approve/Reject in Airflow's Required Actions.
    """

    def __init__(self, *, destination: str, ledger_conn_id: str = "ascora_ledger_default",
                 migration_run_id: str = "{{ run_id }}", staging_path: str | None = None,
                 destination_conn_id: str | None = None, destination_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("fail_on_reject", True)
        super().__init__(**kwargs)
        self.destination = destination
        self.ledger_conn_id = ledger_conn_id
        self.migration_run_id = migration_run_id
        self.staging_path = staging_path
        self.destination_conn_id = destination_conn_id
        self.destination_options = destination_options or {}

    template_fields = (*_approval_base().template_fields, "migration_run_id", "staging_path", "destination_options")

    def ledger(self):
        from airflow_ascora_provider.hooks.ledger import LedgerHook

        return LedgerHook(ledger_conn_id=self.ledger_conn_id).get_ledger()

    def execute(self, context: Context):
        if _truthy(context["params"].get("auto_approve")):
            self.log.info("auto_approve is set: recording an automatic approval, nobody is asked")
            self.on_approve(context, approved_by="auto_approve", params_input={})
            return {"chosen_options": [self.APPROVE], "params_input": {}, "auto": True}
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        chosen = event.get("chosen_options") or []
        if "error" not in event:
            who = (event.get("responded_by_user") or {}).get("name") or "unknown"
            if self.APPROVE in chosen:
                self.on_approve(context, approved_by=who, params_input=event.get("params_input") or {})
            else:
                self.on_reject(context, rejected_by=who)
        return super().execute_complete(context, event)

    def on_approve(self, context: Context, *, approved_by: str, params_input: dict[str, Any]) -> None:
        """What approval means for this gate."""

    def on_reject(self, context: Context, *, rejected_by: str) -> None:
        """What rejection means for this gate (the run stops afterwards)."""


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


class MappingApprovalOperator(_ApprovalGate):
    """Step 2: show the proposed map; Approve stores it (edited or not) with its hash; Reject stops.

    The form shows the proposer's compact Markdown summary (matches with their confidence, what to
    check, links to the full proposal report and the migration reports page). The reviewer approves
    the proposal as it is, pastes an edited YAML (``edited_mapping``), or gives the path or URI of an
    edited file uploaded next to the staging data (``edited_mapping_uri``, any ObjectStoragePath
    location); an edit is validated before it can be approved. The ledger keeps the approved text, its
    hash, who approved it and when, and whether it was edited from the proposal.
    """

    def __init__(self, **kwargs: Any) -> None:
        from airflow.sdk import Param

        kwargs.setdefault("subject", "Approve the Ascora → {{ task.destination }} field map")
        kwargs.setdefault("body", "{{ ti.xcom_pull(task_ids='propose_mapping')['markdown'] }}")
        kwargs.setdefault("params", {
            "edited_mapping": Param("", type="string", format="multiline", title="Edited mapping YAML (optional)",
                                    description="Paste an edited mapping YAML to approve it instead of the proposal."),
            "edited_mapping_uri": Param("", type="string", title="Edited mapping file (optional)",
                                        description="Path or URI (s3://, gs://, file) of an uploaded mapping YAML "
                                                    "to approve instead of the proposal."),
        })
        super().__init__(**kwargs)

    def on_approve(self, context: Context, *, approved_by: str, params_input: dict[str, Any]) -> None:
        from airflow_ascora_provider.mapping.spec import load_mapping

        ledger = self.ledger()
        proposed = ledger.get_watermark(self.destination, PROPOSED_MAPPING)
        edited, origin = _edited_mapping(params_input)
        text = edited or proposed
        if not text:
            raise RuntimeError("no proposed mapping in the ledger: run propose_mapping first")
        mapping = load_mapping(text)  # an edited map is validated before it can be approved
        if mapping.destination != self.destination:
            raise ValueError(f"the edited mapping is for {mapping.destination!r}, not {self.destination!r}")
        proposal_hash = load_mapping(proposed).hash if proposed else None
        if edited and mapping.hash != proposal_hash:
            note = f"edited in review ({origin}); proposal was {(proposal_hash or 'none')[:12]}"
        else:
            note = f"proposal {mapping.hash[:12]} accepted"
        source = "auto_approve" if approved_by == "auto_approve" else "hitl"
        ledger.approve_mapping(self.destination, mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                               approved_by=approved_by, source=source, note=note)
        self.log.info("Mapping %s approved by %s (%s)", mapping.hash[:12], approved_by, note)

    def on_reject(self, context: Context, *, rejected_by: str) -> None:
        import datetime as dt

        record = {"rejected_by": rejected_by, "rejected_at": dt.datetime.now(dt.UTC).isoformat(),
                  "run_id": self.migration_run_id}
        self.ledger().set_watermark(self.destination, MAPPING_REJECTED, json.dumps(record))
        self.log.info("Mapping rejected by %s; the run stops here", rejected_by)


MAPPING_REJECTED = "mapping_rejected"


def _edited_mapping(params_input: dict[str, Any]) -> tuple[str, str]:
    """The edited YAML the reviewer gave (pasted, or the file at a path/URI), and where it came from."""
    pasted = (params_input.get("edited_mapping") or "").strip()
    uri = (params_input.get("edited_mapping_uri") or "").strip()
    if pasted and uri:
        raise ValueError("give either a pasted mapping or the path of an uploaded one, not both")
    if uri:
        from airflow_ascora_provider.source.staging import as_path

        path = as_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"edited mapping file {uri} does not exist")
        return path.read_text(encoding="utf-8").strip(), f"from {uri}"
    return pasted, "pasted"


class SetupSchemaOperator(MigrationStepOperator):
    """Step 3: plan, apply what the API allows, list the rest; fail while anything is missing.

    A schema still missing something only a person can add (a field the API cannot create, a plan
    over its limits) fails the task without its retries: no retry adds it. A failing call is retried
    like any other step's.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.engine.schema import (
            SchemaNotReady,
            apply_schema,
            plan_for,
            require_schema_ready,
            schema_sections,
        )

        ctx = self.build_context()
        try:
            dest = ctx.destination
            plan = plan_for(ctx.mapping, dest, ctx.snapshot)
            applied = apply_schema(dest, plan) if not plan.problems else []
            paths = self.write(ctx.ledger, "schema", "Schema setup",
                               {"summary": {"applied": len(applied), "manual": len(plan.manual),
                                            "problems": len(plan.problems)}, "plan": plan.as_dict(),
                                "applied": applied}, schema_sections(plan, applied))
            try:
                require_schema_ready(ctx.mapping, dest)
            except SchemaNotReady as exc:
                raise AirflowFailException(str(exc)) from exc
            return {"applied": len(applied), "manual": [c.describe() for c in plan.manual], "report": paths}
        finally:
            ctx.close()


class ResolveUsersOperator(MigrationStepOperator):
    """Step 4: staff e-mail → destination user; unmatched staff listed; fallback owner required.

    A missing fallback owner fails the task without its retries (someone must name one or add the
    user); a failing call is retried like any other step's."""

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.engine.users import NoFallbackOwner, resolve_users, users_sections

        ctx = self.build_context()
        try:
            try:
                result = resolve_users(ctx)
            except NoFallbackOwner as exc:
                raise AirflowFailException(str(exc)) from exc
            paths = self.write(ctx.ledger, "users", "Owner resolution",
                               {"summary": {"matched": result["matched"], "unmatched": len(result["unmatched"])},
                                **result}, users_sections(result))
            return {"matched": result["matched"], "unmatched": len(result["unmatched"]), "report": paths}
        finally:
            ctx.close()


class SampleMigrationOperator(MigrationStepOperator):
    """Step 5: FK-closed sample written for real, read back, field-level diff."""

    template_fields = (*MigrationStepOperator.template_fields, "sample_size")

    def __init__(self, *, sample_size: int | str = 300, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sample_size = sample_size

    def execute(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_ascora_provider.engine.sample import (
            attach_source_values,
            diff_sample,
            load_sample,
            sample_sections,
            select_sample,
        )
        from airflow_ascora_provider.engine.schema import require_schema_ready

        run_id = sample_run_id(self.migration_run_id)
        ctx = self.build_context(run_id=run_id)
        try:
            ctx.require_approved_mapping()
            require_schema_ready(ctx.mapping, ctx.destination)
            ctx.ledger.start_run(run_id, destination=self.destination, kind="sample", dag_id=self.dag_id,
                                 mapping_hash=ctx.mapping.hash, params={"sample_size": int(self.sample_size)})
            selection = select_sample(ctx, int(self.sample_size))
            with pausing_on_quota(self, self.quota_wait):
                loaded = load_sample(ctx, selection)
            diff = diff_sample(ctx, loaded)
            attach_source_values(ctx, diff)
            diff["selection"] = {k: len(v) for k, v in selection.items()}
            paths = self.write(ctx.ledger, "sample_diff", "Sample migration: field-level diff", diff,
                               sample_sections(diff), run_id=run_id)
            ctx.ledger.finish_run(run_id, status="success", summary=diff["totals"])
            totals = diff["totals"]
            self.log.info("Sample: %s records, %s fields compared, %s mismatches, %s%% linked",
                          totals["records"], totals["fields"], totals["mismatch"], totals["linked_percentage"])
            return {"totals": totals, "report": paths, "sample_run_id": run_id}
        finally:
            ctx.close()


class SampleApprovalOperator(_ApprovalGate):
    """Approve the sample diff before the full load; Reject rolls the sample back and stops."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Approve the sample migration into {{ task.destination }}")
        kwargs.setdefault("body", "Sample: {{ ti.xcom_pull(task_ids='sample')['totals'] | tojson }}\n\n"
                                  "Full diff: {{ ti.xcom_pull(task_ids='sample')['report']['html'] }}")
        super().__init__(**kwargs)

    def on_reject(self, context: Context, *, rejected_by: str) -> None:
        from airflow_ascora_provider.destinations.manager import get_destination
        from airflow_ascora_provider.engine.rollback import rollback_run

        ledger = self.ledger()
        run_id = sample_run_id(self.migration_run_id)
        dest = get_destination(self.destination, self.destination_conn_id, **self.destination_options)
        try:
            summary = rollback_run(ledger, dest, self.destination, run_id, f"{run_id}__rollback")
        finally:
            dest.close()
        self.log.info("Sample rejected by %s; rolled back: %s", rejected_by, summary)


class PlanLoadOperator(MigrationStepOperator):
    """Step 6a: the units of one wave of the full load (mapped over by :class:`LoadUnitOperator`).

    :param unit_rows: smallest number of rows in one unit (more when a map would otherwise need over
        1,000 units); small values spread a small tenant over many mapped tasks.
    """

    template_fields = (*MigrationStepOperator.template_fields, "wave", "unit_rows")

    def __init__(self, *, wave: int, unit_rows: int | str = 2000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wave = wave
        self.unit_rows = unit_rows

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_ascora_provider.engine.runner import plan_units, waves
        from airflow_ascora_provider.engine.schema import require_schema_ready

        ctx = self.build_context()
        try:
            ctx.require_approved_mapping()
            if int(self.wave) == 0:
                require_schema_ready(ctx.mapping, ctx.destination)
                ctx.ledger.start_run(self.migration_run_id, destination=self.destination, kind="full",
                                     dag_id=self.dag_id, mapping_hash=ctx.mapping.hash)
            all_waves = waves(ctx.mapping)
            if len(all_waves) > MAX_WAVES:
                # Folding the deeper waves into the last one would load children beside their parents.
                raise ValueError(
                    f"the approved {self.destination} mapping needs {len(all_waves)} load waves "
                    f"({all_waves}); the migration DAG has {MAX_WAVES}: shorten the chain of lookups "
                    "or build the DAG with more waves")
            wave = int(self.wave)
            maps = all_waves[wave] if wave < len(all_waves) else []
            units = plan_units(ctx, maps, min_rows=int(self.unit_rows))
            self.log.info("Wave %s: maps %s in %s units", wave, maps, len(units))
            return units
        finally:
            ctx.close()


MAX_WAVES = 8  # load waves in the example DAGs; the shipped mappings need at most 6 (a plan task each)


class LoadUnitOperator(MigrationStepOperator):
    """Step 6b: load one unit (a row range of one map); safe to retry: upserts keyed by the Ascora id.

    Two waits never hold a worker slot: a destination bulk job (the task defers on
    :class:`~airflow_ascora_provider.triggers.bulk_job.BulkJobTrigger` and records the job's results
    when it wakes) and an exhausted API quota (the plugin raises ``QuotaExhausted`` before the call
    that would overrun it; the task defers until the quota resets and runs the unit again, which
    skips everything already written by its payload hash).

    :param bulk_poll_interval: seconds between bulk job status checks (default: the plugin's advice).
    """

    template_fields = (*MigrationStepOperator.template_fields, "unit")

    def __init__(self, *, unit: dict[str, Any] | str | None = None, bulk_poll_interval: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        self.bulk_poll_interval = bulk_poll_interval

    def _unit(self) -> dict[str, Any]:
        return json.loads(self.unit) if isinstance(self.unit, str) else self.unit

    def execute(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_ascora_provider.engine.runner import start_unit

        unit = self._unit()
        ctx = self.build_context()
        try:
            ctx.require_approved_mapping()
            with pausing_on_quota(self, self.quota_wait):
                stats, job = start_unit(ctx, unit)
            if job is not None:
                from airflow_ascora_provider.triggers.bulk_job import BulkJobTrigger

                self.log.info("Bulk job %s submitted for %s[%s:%s]; deferring until it finishes",
                              job.get("id"), unit["map"], unit["start"], unit["stop"])
                self.defer(trigger=BulkJobTrigger(destination=self.destination, job=job,
                                                  conn_id=self.destination_conn_id,
                                                  options=self.destination_options,
                                                  poll_interval=self.bulk_poll_interval
                                                  or ctx.destination.bulk_poll_interval),
                           method_name="execute_complete")
            return self._done(ctx, unit, stats)
        finally:
            ctx.close()

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Record a finished bulk job's per-record results (failed rows go to quarantine)."""
        from airflow_ascora_provider.engine.runner import finish_bulk_unit

        if event.get("state") != "done":
            # The task fails and its retry prepares the unit again: records the job did write are
            # adopted by their Ascora id, so nothing is duplicated.
            raise RuntimeError(f"{self.destination} bulk job {event.get('job', {}).get('id')} "
                               f"ended {event.get('state')}: {event.get('message')}")
        unit = self._unit()
        ctx = self.build_context()
        try:
            ctx.require_approved_mapping()
            return self._done(ctx, unit, finish_bulk_unit(ctx, unit, event["job"]), bulk_job=event["job"])
        finally:
            ctx.close()

    def _done(self, ctx, unit: dict[str, Any], stats, **extra: Any) -> dict[str, Any]:
        self.log.info("Loaded %s[%s:%s]: %s", unit["map"], unit["start"], unit["stop"], stats.as_dict())
        return {"unit": unit, **stats.as_dict(), "api": ctx.destination.api_stats(), **extra}


@contextmanager
def pausing_on_quota(operator: MigrationStepOperator, wait_seconds: float) -> Iterator[None]:
    """Turn a plugin's ``QuotaExhausted`` into a deferral of the task until the quota resets.

    The task resumes through ``execute`` itself: loading is idempotent, so running it again writes
    only what the interrupted attempt had not.
    """
    from airflow_ascora_provider.destinations.spec import QuotaExhausted

    try:
        yield
    except QuotaExhausted as exc:
        import datetime as dt

        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        now = dt.datetime.now(dt.timezone.utc)
        resume_at = exc.resume_at or now + dt.timedelta(seconds=wait_seconds)
        if resume_at.tzinfo is None:
            resume_at = resume_at.replace(tzinfo=dt.timezone.utc)
        operator.log.warning("%s quota nearly exhausted (%s): pausing until %s; the task resumes where "
                             "it stopped", operator.destination, exc, resume_at.isoformat())
        operator.defer(trigger=DateTimeTrigger(moment=max(resume_at, now)), method_name="execute")


class ReconcileOperator(MigrationStepOperator):
    """Step 7: source = loaded + quarantined + skipped per object; content check; JSON + HTML."""

    template_fields = (*MigrationStepOperator.template_fields, "verify", "verify_size")

    def __init__(self, *, verify: str = "sample", verify_size: int | str = 200, fail_on_mismatch: bool = True,
                 finish_run: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verify = verify
        self.verify_size = verify_size
        self.fail_on_mismatch = fail_on_mismatch
        self.finish_run = finish_run

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.engine.reconcile import reconcile, reconcile_sections

        ctx = self.build_context()
        try:
            result = reconcile(ctx, verify=self.verify, verify_size=int(self.verify_size))
            paths = self.write(ctx.ledger, "reconciliation", "Reconciliation", result, reconcile_sections(result))
            if self.finish_run and ctx.ledger.get_run(self.migration_run_id):
                ctx.ledger.finish_run(self.migration_run_id, status="success" if result["ok"] else "failed",
                                      summary=result["totals"])
            self.log.info("Reconciliation %s: %s", "OK" if result["ok"] else "FAILED", result["totals"])
            if not result["ok"] and self.fail_on_mismatch:
                raise RuntimeError(f"reconciliation failed: {result['totals']}; see {paths['html']}")
            return {"ok": result["ok"], "totals": result["totals"], "report": paths}
        finally:
            ctx.close()


class DeltaLoadOperator(MigrationStepOperator):
    """Step 8: load a fresh snapshot; only new and changed records are written; vanished ones reported."""

    template_fields = (*MigrationStepOperator.template_fields, "delete_vanished")

    def __init__(self, *, delete_vanished: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delete_vanished = delete_vanished

    def execute(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_ascora_provider.engine.delta import delta_sections, run_delta

        ctx = self.build_context()
        try:
            ctx.require_approved_mapping()
            with pausing_on_quota(self, self.quota_wait):
                result = run_delta(ctx, delete_vanished=_truthy(self.delete_vanished), dag_id=self.dag_id)
            paths = self.write(ctx.ledger, "delta", "Delta pickup", result, delta_sections(result))
            return {"totals": result["totals"], "vanished": result["vanished_total"], "report": paths}
        finally:
            ctx.close()


class RollbackOperator(MigrationStepOperator):
    """Step 9: undo one migration run (and its sample), newest first; reports what could not be undone."""

    template_fields = (*MigrationStepOperator.template_fields, "target_run_id", "confirm")

    def __init__(self, *, target_run_id: str, confirm: str | bool = False, include_sample: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_run_id = target_run_id
        self.confirm = confirm
        self.include_sample = include_sample

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.engine.rollback import rollback_run, rollback_sections

        if not _truthy(self.confirm):
            raise ValueError("rollback needs confirm=true: it deletes records from the destination")
        ledger = self.ledger()
        runs = [self.target_run_id]
        if self.include_sample and ledger.get_run(sample_run_id(self.target_run_id)):
            runs.append(sample_run_id(self.target_run_id))
        from airflow_ascora_provider.destinations.manager import get_destination

        dest = get_destination(self.destination, self.destination_conn_id or None, **self.destination_options)
        summaries = []
        try:
            for run_id in runs:
                if ledger.get_run(run_id) is None:
                    raise KeyError(f"no migration run {run_id!r} in the ledger")
                summaries.append(rollback_run(ledger, dest, self.destination, run_id,
                                              f"{run_id}__rollback__{self.migration_run_id}"))
        finally:
            dest.close()
        data = {"summary": {"runs": runs, "complete": all(s["complete"] for s in summaries)}, "runs": summaries}
        self.write(ledger, "rollback", "Rollback", data, rollback_sections(summaries))
        if not data["summary"]["complete"]:
            raise RuntimeError(f"rollback could not undo everything: {[s['failures'][:5] for s in summaries]}")
        return data["summary"]
