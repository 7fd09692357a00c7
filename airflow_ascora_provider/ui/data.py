"""What the reports page shows, read from the ledger and the report files (never written).

A migration run in the ledger (``ascora_runs``, kind ``full``) has relatives: its sample
(``<run>__sample``), the rollbacks that undid it or its sample (``<run>__rollback__…``,
``<run>__sample__rollback``), and the delta runs of the same destination that followed it. The
reports each step wrote are indexed in ``ascora_reports`` (HTML URI; the JSON sits beside it) and the
audit and proposed ``mapping.yaml`` live in the same folder. The approved map is the approval whose
hash the run loaded with.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from airflow_ascora_provider.ledger import schema as tables

log = logging.getLogger(__name__)

SAMPLE_SUFFIX = "__sample"
ROLLBACK_MARK = "__rollback"
ROW_LIMIT = 500  # rows a page shows per table; CSV downloads have them all


def is_child_run(run_id: str) -> bool:
    """Samples and rollbacks are shown under the run they belong to."""
    return run_id.endswith(SAMPLE_SUFFIX) or ROLLBACK_MARK in run_id


def parent_run_id(run_id: str) -> str:
    base = run_id.split(ROLLBACK_MARK, 1)[0]
    return base.removesuffix(SAMPLE_SUFFIX)


def _path(uri: str):
    from airflow_ascora_provider.source.staging import as_path

    return as_path(uri)


def read_text(uri: str) -> str | None:
    """A report file's text, or None when it is gone (staging cleaned up, bucket unreachable)."""
    try:
        path = _path(uri)
        return path.read_text(encoding="utf-8") if path.exists() else None
    except Exception as exc:  # noqa: BLE001 - one unreadable report must not take the page down
        log.warning("cannot read report %s: %s", uri, type(exc).__name__)
        return None


def read_json(html_uri: str) -> dict[str, Any] | None:
    text = read_text(html_uri[: -len(".html")] + ".json" if html_uri.endswith(".html") else html_uri)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def sibling(uri: str, name: str) -> str:
    """A file in the same reports folder as ``uri``."""
    return str(_path(uri).parent / name)


@dataclass
class MigrationReports:
    """Read model over one ledger."""

    ledger: Any

    # -- runs ----------------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Migration, delta and rollback-DAG runs (not samples or engine rollbacks), newest first."""
        everything = self.ledger.list_runs()
        by_id = {r["run_id"]: r for r in everything}
        out = []
        for run in everything:
            if is_child_run(run["run_id"]):
                continue
            sample = by_id.get(run["run_id"] + SAMPLE_SUFFIX)
            rollbacks = [r for r in everything if r["kind"] == "rollback"
                         and parent_run_id(r["run_id"]) == run["run_id"]]
            out.append({**run, "sample_status": sample["status"] if sample else None,
                        "rollback_status": _rollback_state(run, rollbacks)})
        return out

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self.ledger.get_run(run_id)

    def detail(self, run_id: str) -> dict[str, Any] | None:
        run = self.ledger.get_run(run_id)
        if run is None:
            return None
        everything = self.ledger.list_runs(destination=run["destination"])
        sample = next((r for r in everything if r["run_id"] == run_id + SAMPLE_SUFFIX), None)
        rollbacks = [r for r in everything if r["kind"] == "rollback" and parent_run_id(r["run_id"]) == run_id]
        deltas = [r for r in everything if r["kind"] == "delta" and r["run_id"] != run_id
                  and run["kind"] == "full" and r["started_at"] >= run["started_at"]]
        reports = self.reports(run_id)
        sample_reports = self.reports(run_id + SAMPLE_SUFFIX)
        detail = {
            "run": run,
            "sample": sample,
            "rollbacks": rollbacks,
            "rollback_status": _rollback_state(run, rollbacks),
            "deltas": [{**d, "report": self._report_summary(d["run_id"], "delta")} for d in deltas],
            "reports": sorted([*reports.values(), *sample_reports.values()], key=lambda r: r["id"]),
            "writes": self.ledger.audit_ops_count(run_id),
        }
        detail["mapping"] = self.mapping(run, reports)
        detail["compatibility"] = _data(reports.get("compatibility"))
        detail["proposal"] = _data(reports.get("mapping_proposal"))
        detail["audit"] = self.audit(reports)
        detail["sample_diff"] = _data(sample_reports.get("sample_diff"))
        detail["reconciliation"] = _data(reports.get("reconciliation"))
        detail["rollback_reports"] = [x for r in rollbacks for x in self.reports(r["run_id"]).values()] + \
            [x for x in reports.values() if x["kind"] == "rollback"]
        detail["quarantine"] = self.quarantine(run_id)
        return detail

    def reports(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Latest report per kind of one run."""
        latest: dict[str, dict[str, Any]] = {}
        for report in self.ledger.list_reports(run_id):
            latest[report["kind"]] = report
        return latest

    def report(self, report_id: int) -> dict[str, Any] | None:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(select(tables.reports).where(tables.reports.c.id == report_id)).mappings().first()
        return dict(row) if row else None

    def _report_summary(self, run_id: str, kind: str) -> dict[str, Any] | None:
        report = self.reports(run_id).get(kind)
        return {"id": report["id"], "summary": report["summary"]} if report else None

    # -- the map ---------------------------------------------------------------------------------
    def approvals(self, destination: str) -> list[dict[str, Any]]:
        ma = tables.mapping_approvals
        q = select(ma).where(ma.c.destination == destination).order_by(ma.c.approved_at.desc(), ma.c.id.desc())
        with self.ledger.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def mapping(self, run: dict[str, Any], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The proposed map (from the run's reports folder) and the approval the run loaded with."""
        anchor = reports.get("mapping_proposal") or reports.get("compatibility")
        proposed = read_text(sibling(anchor["uri"], "mapping.yaml")) if anchor else None
        history = self.approvals(run["destination"])
        approval = next((a for a in history if a["mapping_hash"] == run["mapping_hash"]), None)
        if approval is None and run["mapping_hash"] is None and history:
            approval = history[0]  # a run that has not loaded yet: the approval in force
        approved = approval["mapping_text"] if approval else None
        diff = ""
        if proposed and approved and proposed.strip() != approved.strip():
            diff = "\n".join(difflib.unified_diff(proposed.splitlines(), approved.splitlines(), "proposed",
                                                  "approved", lineterm="", n=2))
        rejected = self.ledger.get_watermark(run["destination"], "mapping_rejected")
        rejection = json.loads(rejected) if rejected else None
        if rejection and rejection.get("run_id") != run["run_id"]:
            rejection = None
        return {"proposed": proposed, "approval": approval, "approved": approved, "diff": diff,
                "rejection": rejection, "history": [{k: a[k] for k in ("mapping_hash", "approved_by", "approved_at",
                                                                       "source", "note")} for a in history[:10]]}

    # -- data quality, quarantine -------------------------------------------------------------------
    def audit(self, reports: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        anchor = next(iter(reports.values()), None)
        if anchor is None:
            return None
        return read_json(sibling(anchor["uri"], "audit.json"))

    def quarantine(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.ledger.list_quarantine(run_id=run_id, unresolved_only=False)
        rows += self.ledger.list_quarantine(run_id=run_id + SAMPLE_SUFFIX, unresolved_only=False)
        return rows


def _data(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    data = read_json(report["uri"])
    return {**data, "_report_id": report["id"]} if data is not None else None


def _rollback_state(run: dict[str, Any], rollbacks: list[dict[str, Any]]) -> str:
    if run["status"] == "rolled_back":
        return "rolled back"
    if not rollbacks:
        return "not rolled back"
    latest = max(rollbacks, key=lambda r: r["started_at"])
    return {"success": "rolled back", "running": "rollback running",
            "failed": "rollback incomplete"}.get(latest["status"], latest["status"])


# -- tables for the page and the CSV downloads ---------------------------------------------------------

def table(detail: dict[str, Any], name: str) -> tuple[list[str], list[list[Any]]]:
    """One of the run's tables as (columns, rows); the CSV download of the same name."""
    if name == "reconciliation":
        rec = detail.get("reconciliation") or {}
        cols = ["object", "read", "staged", "loaded", "quarantined", "skipped", "missing", "skip rules"]
        return cols, [[o, r.get("read"), r.get("staged"), r.get("loaded"), r.get("quarantined"), r.get("skipped"),
                       r.get("missing"), "; ".join(f"{k}: {v}" for k, v in (r.get("skip_rules") or {}).items())]
                      for o, r in (rec.get("objects") or {}).items()]
    if name == "quarantine":
        cols = ["run", "object", "source id", "field", "value", "reason", "stage", "resolved by run"]
        rows = [[q["run_id"], q["source_object"], q["source_id"], q["field"], q["value"], q["reason"], q["stage"],
                 q["resolved_run_id"]] for q in detail.get("quarantine") or []]
        rejects = (detail.get("audit") or {}).get("extraction_rejects") or []
        rows += [["extraction", r.get("object"), r.get("source_id"), r.get("field"), None, r.get("reason"),
                  "extract", r.get("disposition")] for r in rejects]
        return cols, rows
    if name == "sample_diff":
        cols = ["map", "source id", "destination id", "field", "Ascora value", "transformed", "read back", "verdict"]
        rows = (detail.get("sample_diff") or {}).get("rows") or []
        ordered = sorted(rows, key=lambda r: r.get("verdict") == "match")  # mismatches first
        return cols, [[r.get("map"), r.get("source_id"), r.get("dest_id"), r.get("field"),
                       json.dumps(r["source"], default=str) if isinstance(r.get("source"), dict) else r.get("source"),
                       r.get("transformed"), r.get("read_back"), r.get("verdict")] for r in ordered]
    if name == "compatibility":
        plan = (detail.get("compatibility") or {}).get("plan") or {}
        cols = ["map", "Ascora field", "type", "destination field", "type", "transform", "verdict"]
        return cols, [[c["map"], c["source"], c["source_type"], c["destination"], c["destination_type"],
                       c["transform"], c["verdict"]] for c in plan.get("compatibility", [])]
    if name == "proposal":
        decisions = (detail.get("proposal") or {}).get("decisions") or []
        cols = ["map", "Ascora field", "destination field", "action", "type", "transform", "confidence", "why"]
        return cols, [[d["map"], d["source"], d["dest"], d["action"], d.get("dest_type"), d["transform"],
                       d["confidence"], d["reason"]] for d in decisions]
    if name == "data_quality":
        return ["check", "object", "field", "detail", "records", "examples"], quality_rows(detail.get("audit") or {})
    if name == "deltas":
        cols = ["delta run", "status", "started", "finished", "summary"]
        return cols, [[d["run_id"], d["status"], d["started_at"], d["finished_at"],
                       json.dumps((d.get("report") or {}).get("summary") or d.get("summary") or {}, default=str)]
                      for d in detail.get("deltas") or []]
    raise KeyError(name)


def quality_rows(audit: dict[str, Any]) -> list[list[Any]]:
    """The audit as one table: field problems, orphans and duplicates first, then counts and null rates."""
    rows: list[list[Any]] = []
    for obj, items in (audit.get("field_issues") or {}).items():
        rows += [["field problem", obj, i["field"], i["kind"], i["count"],
                  "; ".join(f"{x['id']}: {x['value']!r}" for x in i.get("samples", [])[:3])] for i in items]
    for obj, refs in (audit.get("orphans") or {}).items():
        rows += [["orphan", obj, ref, "reference points at nothing", v["count"],
                  ", ".join(str(x.get("id")) for x in v.get("samples", [])[:5])] for ref, v in refs.items()]
    for obj, kinds in (audit.get("duplicates") or {}).items():
        rows += [["duplicate", obj, "name", kind.replace("_", " "), len(g["ids"]), ", ".join(g["names"])]
                 for kind, groups in kinds.items() for g in groups]
    for obj, fields in (audit.get("picklists") or {}).items():
        rows += [["pick-list value not in Ascora's list", obj, f, v, info["in_use"].get(v), ""]
                 for f, info in fields.items() for v in info.get("not_in_ascora_list", [])]
    rows += [["records", obj, "", "staged / read", i["staged"],
              f"read {i['read']}, quarantined {i['quarantined']}, skipped {i['skipped']}"]
             for obj, i in (audit.get("inventory") or {}).items()]
    rows += [["null rate", obj, f, "share empty", rate, ""] for obj, rates in (audit.get("null_rates") or {}).items()
             for f, rate in rates.items() if rate]
    return rows


TABLES = ("proposal", "compatibility", "data_quality", "sample_diff", "reconciliation", "quarantine", "deltas")
