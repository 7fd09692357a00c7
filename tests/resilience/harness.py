"""A migration set up to the point where the load starts, for any destination in ``DESTINATIONS``.

The resilience tests all need the same starting line: an Ascora emulator over a tenant, the CRM's
emulator, an extracted snapshot, the schema created, the mapping approved, users resolved and a run
started. :func:`prepare_migration` gets there through the engine API (no Airflow), and
:func:`ledger_disagreements` is the check every test ends with: what the ledger believes against
what the emulator holds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from airflow_ascora_provider.sandbox.emulator import FaultPlan, Latency, ServedApp
from tests.resilience.destinations import FALLBACK_OWNER, DestinationUnderTest

T = TypeVar("T")

ASCORA_KEY = "ascora-resilience-key"
RUN_ID = "run-1"
SNAPSHOT = "s1"


@dataclass
class Migration:
    """Everything a test needs to drive (or hand to a child process) one migration run."""

    spec: DestinationUnderTest
    ctx: Any  # MigrationContext
    ascora: ServedApp
    crm: ServedApp
    manifest: dict[str, Any]
    ledger_url: str
    ledger_schema: str | None
    staging: Path
    plugin_options: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step before the load

    @property
    def ledger(self):
        return self.ctx.ledger

    def stored(self) -> dict[str, list]:
        """Live records per mapped target, as the emulator holds them."""
        targets = {om.target for om in self.ctx.mapping.maps.values()}
        return {t: self.spec.stored(self.crm.app, t) for t in sorted(targets)}

    def worker_config(self) -> dict[str, Any]:
        """What a separate process needs to rebuild the context from names (as an Airflow task does)."""
        return {
            "destination": self.spec.name,
            "plugin_options": self.plugin_options,
            "ledger_url": self.ledger_url,
            "ledger_schema": self.ledger_schema,
            "staging": str(self.staging),
            "snapshot": SNAPSHOT,
            "run_id": RUN_ID,
            "fallback_owner": FALLBACK_OWNER,
        }

    def close(self) -> None:
        self.ctx.close()
        self.ascora.stop()
        self.crm.stop()


def as_task(step: Callable[[], T]) -> T:
    """Run ``step`` as a DAG run does: a step that raises is run again, up to the retries the example
    DAGs give their extract, schema, users and load tasks (each is safe to run again)."""
    from airflow_ascora_provider.example_dags import TASK_RETRIES

    for attempt in range(TASK_RETRIES["retries"] + 1):
        try:
            return step()
        except Exception as exc:
            if attempt == TASK_RETRIES["retries"]:
                raise
            print(f"task attempt {attempt + 1} failed ({type(exc).__name__}: {str(exc)[:200]}); retrying")
    raise AssertionError("unreachable")


def prepare_migration(
    spec: DestinationUnderTest,
    tenant: Path,
    workdir: Path,
    ledger_url: str,
    ledger_schema: str | None = None,
    *,
    plugin_overrides: dict[str, Any] | None = None,
    faults: FaultPlan | None = None,
    latency: Latency | None = None,
    ascora_timeout: float | None = None,
) -> Migration:
    """Extract ``tenant`` and prepare a load into ``spec``'s emulator, ready for ``load_everything``.

    ``faults`` and ``latency`` are switched on in both emulators *before* extraction, so the whole
    migration runs through them (the schema step and user resolution included). ``ascora_timeout``
    is the Ascora client's timeout (default: the hook's).
    """
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    ascora = ServedApp(ascora_app(tenant, api_key=ASCORA_KEY)).start()
    crm = spec.serve(spec.create_emulator(tenant, spec.api_key)).start()
    if faults is not None:
        ascora.control.set_faults(faults)
        crm.control.set_faults(faults)
    if latency is not None:
        ascora.control.latency = crm.control.latency = latency
    staging = workdir / "staging"
    snapshot = Snapshot(str(staging), SNAPSHOT)
    phases: dict[str, float] = {}
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases[name] = now - clock
        clock = now

    manifest = extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key=ASCORA_KEY, timeout=ascora_timeout,
                                                  enable_extensions=True)), snapshot)
    phase("extract")
    audit = audit_snapshot(snapshot)
    ledger = Ledger(ledger_url, schema=ledger_schema)
    ledger.migrate()
    options = spec.plugin_options(crm.url, spec.api_key) | (plugin_overrides or {})
    dest = spec.connect(crm.url, **options)
    described = dest.describe_schema()
    mapping = complete_mapping(load_mapping(type(dest).default_mapping), audit, dest.custom_field_name,
                               {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()},
                               described)
    phase("audit+describe")
    as_task(lambda: apply_schema(dest, plan_for(mapping, dest)))
    phase("schema")
    ledger.approve_mapping(spec.name, mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                           approved_by="resilience-test", source="cli")
    ctx = MigrationContext(RUN_ID, spec.name, ledger, str(staging), SNAPSHOT, mapping,
                           destination_options=options, fallback_owner_email=FALLBACK_OWNER)
    ctx.use_destination(dest)
    as_task(lambda: resolve_users(ctx))
    phase("users")
    ledger.start_run(RUN_ID, destination=spec.name, kind="full", mapping_hash=mapping.hash)
    return Migration(spec, ctx, ascora, crm, manifest, ledger_url, ledger_schema, staging, options, phases)


def ledger_disagreements(migration: Migration, *, allow_in_flight: bool = False) -> list[str]:
    """Every way the ledger and the destination disagree; empty when they agree exactly.

    * a key (Ascora id) held by two live records of one target: a duplicate;
    * a crosswalk entry whose destination id the emulator does not hold: a record the ledger
      believes loaded that is not there;
    * a keyed record the crosswalk does not point at: a write the ledger never heard of. With
      ``allow_in_flight`` (just after a kill) such a record is tolerated while a write intent for
      it is pending, because the retry adopts exactly those.
    """
    ledger, name = migration.ledger, migration.spec.name
    problems: list[str] = []
    pending = {(i["target_object"], i["source_id"]) for i in ledger.pending_intents(name)}
    for target, records in migration.stored().items():
        keys = Counter(r.key for r in records if r.key)
        problems += [f"{target}: Ascora id {k} is held by {n} records" for k, n in keys.items() if n > 1]
        held = {r.dest_id: r.key for r in records}
        known: set[str] = set()
        for om in migration.ctx.mapping.maps.values():
            if om.target != target:
                continue
            for entry in ledger.iter_crosswalk(name, om.source, target):
                known.add(entry.dest_id)
                if entry.dest_id not in held:
                    problems.append(f"{target}: crosswalk {om.source} {entry.source_id} -> {entry.dest_id} "
                                    "is not in the destination")
        for record in records:
            if record.key and record.dest_id not in known:
                if allow_in_flight and (target, record.key) in pending:
                    continue
                problems.append(f"{target}: record {record.dest_id} (Ascora id {record.key}) is not in the ledger")
    return problems


def quarantined_records(migration: Migration) -> dict[tuple[str, str], list[str]]:
    """Unresolved ledger quarantine: ``(source object, source id)`` -> reasons."""
    out: dict[tuple[str, str], list[str]] = {}
    for entry in migration.ledger.list_quarantine(destination=migration.spec.name):
        out.setdefault((entry["source_object"], entry["source_id"]), []).append(entry["reason"] or "")
    return out
