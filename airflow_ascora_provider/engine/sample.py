"""The sample migration: a representative slice, closed under foreign keys, written for real.

The slice starts from jobs spread over every status (then the other mapped objects), brings along
every parent its records point at (a job brings its customer, site, contacts, quote, type) and the
children that hang off what is included (sections, notes, files, invoices), so the reviewer sees
complete records in the CRM, not dangling ones. It is loaded through the same loader as the full
load, read back, and compared field by field.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.diff import compare_record, display
from airflow_ascora_provider.engine.load import LoadStats, MapLoader
from airflow_ascora_provider.reports.render import Section, Table
from airflow_ascora_provider.source.model import children_of, get_object

log = logging.getLogger(__name__)
OWNED_CHILDREN = ("job_section", "note", "attachment", "form_response", "invoice", "invoice_line",
                  "quote_line_item", "quote_section", "contact", "equipment")


def select_sample(ctx: MigrationContext, size: int) -> dict[str, set[str]]:
    snapshot = ctx.snapshot
    staged = set(snapshot.manifest()["objects"])
    wanted_objects = {m.source for m in ctx.mapping.maps.values()} & staged
    # id + relation columns of every involved object: enough to walk references both ways.
    involved = set(wanted_objects)
    for name in list(wanted_objects):
        for rel in get_object(name).relations:
            involved.update(t for t in rel.targets if t in staged)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name in involved:
        schema = get_object(name)
        columns = ["id"] + [r.field for r in schema.relations] + [f.name for f in schema.fields if f.choices]
        rows[name] = {r["id"]: r for r in snapshot.iter_records(name, list(dict.fromkeys(columns)))}
    children: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for name in involved:
        for child, rel in children_of(name):
            if child in rows and child in OWNED_CHILDREN:
                for cid, row in rows[child].items():
                    parent = row.get(rel.field)
                    if parent is not None:
                        children[name][parent].append((child, cid))
    chosen: dict[str, set[str]] = defaultdict(set)

    def total() -> int:
        return sum(len(v) for v in chosen.values())

    def add(obj: str, rid: str) -> None:
        stack = [(obj, rid)]
        while stack:
            name, record_id = stack.pop()
            if record_id in chosen[name] or record_id not in rows.get(name, {}):
                continue
            chosen[name].add(record_id)
            row = rows[name][record_id]
            for rel in get_object(name).relations:
                target_id = row.get(rel.field)
                if target_id is None:
                    continue
                for target in rel.targets:
                    if target_id in rows.get(target, {}):
                        stack.append((target, target_id))
                        break
            for child, cid in children[name].get(record_id, ())[:20]:
                stack.append((child, cid))

    seed_order = ["job"] + sorted(wanted_objects - {"job"})
    for obj in seed_order:
        if obj not in rows or total() >= size:
            continue
        schema = get_object(obj)
        strata_field = next((f.name for f in schema.fields if f.choices), None)
        strata: dict[Any, list[str]] = defaultdict(list)
        for rid, row in sorted(rows[obj].items()):
            strata[row.get(strata_field) if strata_field else None].append(rid)
        share = size * (0.5 if obj == "job" else 0.05)
        per_stratum = max(1, math.ceil(share / max(1, len(strata))))
        for members in strata.values():
            for rid in members[:per_stratum]:
                if total() >= size:
                    break
                add(obj, rid)
    return {k: v for k, v in chosen.items() if v}


def load_sample(ctx: MigrationContext, selection: dict[str, set[str]]) -> dict[str, LoadStats]:
    results: dict[str, LoadStats] = {}
    for map_name in ctx.mapping.order():
        om = ctx.mapping.maps[map_name]
        ids = selection.get(om.source)
        if not ids:
            continue
        records = (r for r in ctx.snapshot.iter_records(om.source) if r["id"] in ids)
        results[map_name] = MapLoader(ctx, om, collect=True).load(records, len(ids))
    return results


def diff_sample(ctx: MigrationContext, loaded: dict[str, LoadStats]) -> dict[str, Any]:
    rows, per_map = [], {}
    linked_total = linked_ok = 0
    for map_name, stats in loaded.items():
        om = ctx.mapping.maps[map_name]
        written = stats.written
        fields = sorted({f for _, _, payload in written for f in payload})
        read = ctx.destination.read_records(om.target, [d for _, d, _ in written], fields)
        counts = {"records": len(written), "fields": 0, "match": 0, "mismatch": 0, "missing": 0}
        lookups = {fm.dest_field for fm in om.fields if fm.transform in ("lookup", "attach", "owner")}
        for source_id, dest_id, payload in written:
            for field, sent, back, verdict in compare_record(payload, read.get(dest_id)):
                counts["fields"] += 1
                counts[verdict] += 1
                if field in lookups and sent is not None:
                    linked_total += 1
                    linked_ok += verdict == "match"
                rows.append({"map": map_name, "source_id": source_id, "dest_id": dest_id, "field": field,
                             "transformed": display(sent), "read_back": display(back), "verdict": verdict})
        per_map[map_name] = {**counts, "created": stats.created, "updated": stats.updated,
                             "unchanged": stats.unchanged, "quarantined": stats.quarantined}
    totals = {k: sum(m[k] for m in per_map.values()) for k in ("records", "fields", "match", "mismatch", "missing",
                                                               "quarantined")}
    totals["linked_percentage"] = round(100.0 * linked_ok / linked_total, 2) if linked_total else 100.0
    return {"per_map": per_map, "totals": totals, "rows": rows}


def attach_source_values(ctx: MigrationContext, diff: dict[str, Any]) -> None:
    """Add the Ascora value(s) behind each compared field, for the reviewer."""
    by_map: dict[str, set[str]] = defaultdict(set)
    for row in diff["rows"]:
        by_map[row["map"]].add(row["source_id"])
    sources: dict[tuple[str, str], dict[str, Any]] = {}
    for map_name, ids in by_map.items():
        om = ctx.mapping.maps[map_name]
        for record in ctx.snapshot.iter_records(om.source):
            if record["id"] in ids:
                sources[(map_name, record["id"])] = record
    for row in diff["rows"]:
        om = ctx.mapping.maps[row["map"]]
        fm = next((f for f in om.fields if f.dest_field == row["field"]), None)
        record = sources.get((row["map"], row["source_id"]), {})
        names = fm.sources if fm else ("id",)
        row["source"] = {n: display(record.get(n)) for n in names} if len(names) != 1 else display(record.get(names[0]))


def sample_sections(diff: dict[str, Any]) -> list[Section]:
    t = diff["totals"]
    return [
        Section("Sample summary", facts={**t}, verdict="ok" if not (t["mismatch"] or t["missing"]) else "fail"),
        Section("Per object map", tables=[Table(
            ["map", "records", "fields compared", "match", "mismatch", "missing", "quarantined"],
            [[m, v["records"], v["fields"], v["match"], v["mismatch"], v["missing"], v["quarantined"]]
             for m, v in diff["per_map"].items()])]),
        Section("Mismatches", tables=[Table(
            ["map", "source id", "field", "Ascora value", "transformed", "read back", "verdict"],
            [[r["map"], r["source_id"], r["field"], r.get("source"), r["transformed"], r["read_back"], r["verdict"]]
             for r in diff["rows"] if r["verdict"] != "match"])]),
        Section("Every field", tables=[Table(
            ["map", "source id", "field", "Ascora value", "transformed", "read back", "verdict"],
            [[r["map"], r["source_id"], r["field"], r.get("source"), r["transformed"], r["read_back"], r["verdict"]]
             for r in diff["rows"]], limit=2000)]),
    ]
