"""Delta pickup during the cutover window.

Ascora has no modified timestamp, so a delta is: re-extract, then run the normal loader over the
new snapshot. The loader compares each record's payload hash with the crosswalk, so new records are
created, changed ones updated (their before-image kept for rollback) and unchanged ones cost nothing.
Records the crosswalk knows but the new snapshot no longer has are *reported* as vanished, and only
deleted when the user asks for it. Runs any number of times; each is its own ledger run.
"""

from __future__ import annotations

from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.runner import load_everything
from airflow_ascora_provider.ledger import Write
from airflow_ascora_provider.reports.render import Section, Table


def run_delta(ctx: MigrationContext, *, delete_vanished: bool = False, dag_id: str | None = None) -> dict[str, Any]:
    ctx.ledger.start_run(ctx.run_id, destination=ctx.destination_name, kind="delta", dag_id=dag_id,
                         mapping_hash=ctx.mapping.hash, params={"snapshot": ctx.snapshot.id,
                                                                "delete_vanished": delete_vanished})
    stats = load_everything(ctx)
    vanished: dict[str, list[dict[str, str]]] = {}
    staged_objects = set(ctx.snapshot.manifest()["objects"])
    for name in ctx.mapping.order():
        om = ctx.mapping.maps[name]
        if om.source not in staged_objects:
            continue
        present = {r["id"] for r in ctx.snapshot.iter_records(om.source, ["id"])}
        gone = [e for e in ctx.ledger.iter_crosswalk(ctx.destination_name, om.source, om.target)
                if e.source_id not in present]
        if not gone:
            continue
        vanished[name] = [{"source_id": e.source_id, "dest_id": e.dest_id, "deleted": False} for e in gone]
        if delete_vanished and om.existing:  # a user was never ours to create, so never ours to delete
            for item in vanished[name]:
                item["error"] = f"not deleted: the {om.target} existed before the migration"
        elif delete_vanished:
            errors = ctx.destination.delete_records(om.target, [e.dest_id for e in gone])
            writes = []
            for item, entry in zip(vanished[name], gone):
                if errors.get(entry.dest_id) is None:
                    item["deleted"] = True
                    writes.append(Write(om.source, entry.source_id, om.target, entry.dest_id, "delete"))
                else:
                    item["error"] = errors[entry.dest_id]
            ctx.ledger.record_writes(ctx.run_id, ctx.destination_name, writes)
    per_map = {name: s.as_dict() for name, s in stats.items()}
    totals = {k: sum(s[k] for s in per_map.values()) for k in ("created", "updated", "unchanged", "quarantined")}
    result = {"per_map": per_map, "totals": totals, "vanished": vanished,
              "vanished_total": sum(len(v) for v in vanished.values()), "snapshot": ctx.snapshot.id}
    ctx.ledger.finish_run(ctx.run_id, status="success", summary=totals | {"vanished": result["vanished_total"]})
    return result


def delta_sections(result: dict[str, Any]) -> list[Section]:
    return [
        Section("Delta pickup", facts=result["totals"] | {"vanished": result["vanished_total"],
                                                          "snapshot": result["snapshot"]}),
        Section("Per map", tables=[Table(["map", "created", "updated", "unchanged", "quarantined"],
                                         [[m, s["created"], s["updated"], s["unchanged"], s["quarantined"]]
                                          for m, s in result["per_map"].items()])]),
        Section("Vanished from Ascora (reported, not deleted unless asked)", tables=[Table(
            ["map", "Ascora id", "destination id", "deleted"],
            [[m, v["source_id"], v["dest_id"], v["deleted"]] for m, items in result["vanished"].items() for v in items])]),
    ]
