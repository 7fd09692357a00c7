"""Rollback: replay a run's audit log backwards.

Creates are deleted (children first: the log is replayed newest first, and children were written
after their parents), updates get their before-image back. Every undo is itself recorded under the
rollback run, the crosswalk follows (deleted records leave it), and the original run is marked
``rolled_back``. Running it again finds nothing left to undo and changes nothing: deleting what is
already gone counts as done.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_ascora_provider.ledger import Write
from airflow_ascora_provider.mapping.values import from_jsonable
from airflow_ascora_provider.reports.render import Section, Table

log = logging.getLogger(__name__)


def rollback_run(ledger, destination, destination_name: str, run_id: str, rollback_run_id: str) -> dict[str, Any]:
    run = ledger.get_run(run_id)
    if run is None:
        raise KeyError(f"no migration run {run_id!r} in the ledger")
    ledger.start_run(rollback_run_id, destination=destination_name, kind="rollback",
                     params={"rolls_back": run_id})
    deleted = restored = 0
    failures: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    entries = [e for e in ledger.iter_audit(run_id, reverse=True) if e.op in ("create", "update")]
    for entry in entries:
        key = (entry.target_object, entry.dest_id)
        if entry.op == "create":
            if key in seen:
                continue
            seen.add(key)
            error = destination.delete_records(entry.target_object, [entry.dest_id]).get(entry.dest_id)
            if error:
                failures.append({"op": "delete", "target": entry.target_object, "dest_id": entry.dest_id,
                                 "source_id": entry.source_id, "error": error})
                continue
            ledger.record_writes(rollback_run_id, destination_name, [Write(
                entry.source_object, entry.source_id, entry.target_object, entry.dest_id, "delete")])
            deleted += 1
        else:
            if key in seen and (entry.target_object, entry.dest_id) in {(f["target"], f["dest_id"]) for f in failures}:
                continue
            image = from_jsonable(entry.before_image) if entry.before_image else None
            if image is None:
                failures.append({"op": "restore", "target": entry.target_object, "dest_id": entry.dest_id,
                                 "source_id": entry.source_id, "error": "no before-image was recorded"})
                continue
            try:
                destination.restore_record(entry.target_object, entry.dest_id, image)
            except Exception as exc:  # report it and go on: one stubborn record must not block the rest
                failures.append({"op": "restore", "target": entry.target_object, "dest_id": entry.dest_id,
                                 "source_id": entry.source_id, "error": str(exc)})
                continue
            ledger.record_writes(rollback_run_id, destination_name, [Write(
                entry.source_object, entry.source_id, entry.target_object, entry.dest_id, "restore",
                payload_hash=None)])
            restored += 1
    status = "rolled_back" if not failures else run["status"]
    ledger.finish_run(run_id, status=status)
    summary = {"rolled_back_run": run_id, "deleted": deleted, "restored": restored, "failures": failures,
               "complete": not failures}
    ledger.finish_run(rollback_run_id, status="success" if not failures else "failed", summary=summary)
    return summary


def rollback_sections(summaries: list[dict[str, Any]]) -> list[Section]:
    return [
        Section(f"Rollback of {s['rolled_back_run']}", facts={"deleted": s["deleted"], "restored": s["restored"],
                                                             "could not undo": len(s["failures"])},
                verdict="ok" if s["complete"] else "fail",
                tables=[Table(["op", "object", "destination id", "Ascora id", "error"],
                              [[f["op"], f["target"], f["dest_id"], f["source_id"], f["error"]] for f in s["failures"]])])
        for s in summaries
    ]
