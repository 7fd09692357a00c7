"""The audit: what is in the tenant and what is wrong with it, before anything moves.

Reads a staged snapshot only (so it runs the same on API and export extractions) and reports:
inventory with custom fields and their inferred types, null rates, exact and fuzzy duplicate
customers, orphans (every declared relation checked), field problems found at extraction (invalid
e-mails and phones, dates stored as text ...), pick-list values in use and which are not in Ascora's
known lists, and the records extraction had to quarantine or skip.

Column work is vectorised with pyarrow per batch, so the audit of a million records stays flat in
memory apart from the id sets relation checks need.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_ascora_provider.reports.render import Section, Table, write_report
from airflow_ascora_provider.source.coerce import EMAIL_RE, CoercionError, to_bool, to_datetime, to_decimal
from airflow_ascora_provider.source.model import ISSUES_COLUMN, FieldType, get_object
from airflow_ascora_provider.source.staging import Snapshot

SAMPLE = 10
_LEGAL = re.compile(r"\b(pty|ltd|limited|p/?l|proprietary|inc|co|company|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def name_key(name: str | None) -> str:
    """Fold the ways one business gets typed twice: case, punctuation, '&', legal suffixes."""
    if not name:
        return ""
    text = name.casefold().replace("&", " and ").replace("p/l", " pl ")
    text = _PUNCT.sub(" ", text)
    text = _LEGAL.sub(" ", text)
    text = re.sub(r"\bpl\b", " ", text)
    return _SPACE.sub(" ", text).strip()


def infer_type(values: list[str]) -> str:
    """Best canonical type for free-text custom field values (majority of non-empty values)."""
    votes: Counter[str] = Counter()
    for value in values:
        if EMAIL_RE.match(value):
            votes["email"] += 1
            continue
        for kind, parse in (("number", to_decimal), ("boolean", to_bool)):
            try:
                parse(value)
                votes[kind] += 1
                break
            except (CoercionError, ValueError, ArithmeticError):
                continue
        else:
            try:
                if re.search(r"\d", value) and re.search(r"[/\-.: ]", value):
                    to_datetime(value)
                    votes["date"] += 1
                    continue
            except (CoercionError, ValueError, OverflowError):
                pass
            votes["text"] += 1
    if not votes:
        return "text"
    kind, count = votes.most_common(1)[0]
    return kind if count >= 0.9 * sum(votes.values()) else "text"


class _CustomFieldStats:
    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.samples: dict[str, list[str]] = defaultdict(list)
        self.distinct: dict[str, set[str]] = defaultdict(set)

    def add(self, mapping: dict[str, Any]) -> None:
        for name, value in mapping.items():
            if value in (None, ""):
                continue
            self.count[name] += 1
            if len(self.samples[name]) < 200:
                self.samples[name].append(str(value))
            if len(self.distinct[name]) <= 50:
                self.distinct[name].add(str(value))

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in sorted(self.count):
            kind = infer_type(self.samples[name])
            distinct = self.distinct[name]
            picklist = kind == "text" and len(distinct) <= 12 and self.count[name] >= 20
            out[name] = {
                "inferred_type": "picklist" if picklist else kind,
                "non_empty": self.count[name],
                "distinct_values": sorted(distinct)[:50] if picklist or len(distinct) <= 12 else None,
                "samples": self.samples[name][:5],
            }
        return out


def _id_sets(snapshot: Snapshot, names: set[str]) -> dict[str, pa.Array]:
    present = set(snapshot.manifest()["objects"])
    return {n: snapshot.read_table(n, ["id"]).column("id").combine_chunks() if n in present else pa.array([], pa.string())
            for n in names}


def _duplicates(snapshot: Snapshot, object_name: str) -> dict[str, Any]:
    rows = [r for r in snapshot.iter_records(object_name, ["id", "name", "email", "phone"]) if r["name"]]
    by_key: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_key[name_key(row["name"])].append(row)
    exact, variant = [], []
    for key, members in by_key.items():
        if len(members) < 2 or not key:
            continue
        spellings = {m["name"] for m in members}
        group = {"key": key, "ids": [m["id"] for m in members], "names": sorted(spellings)}
        (variant if len(spellings) > 1 else exact).append(group)
    # Near-miss spellings ("Harbourside Plumbng"): compare keys within blocks sharing a prefix.
    blocks: dict[str, list[str]] = defaultdict(list)
    for key in by_key:
        if key:
            blocks[key[:4]].append(key)
    fuzzy = []
    for keys in blocks.values():
        if len(keys) < 2 or len(keys) > 200:
            continue
        keys.sort()
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if difflib.SequenceMatcher(None, a, b).ratio() >= 0.92:
                    fuzzy.append({"keys": [a, b], "ids": [m["id"] for m in by_key[a] + by_key[b]],
                                  "names": sorted({m["name"] for m in by_key[a] + by_key[b]})})
    return {"exact": exact, "variant_spelling": variant, "near_match": fuzzy}


def audit_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    manifest = snapshot.manifest()
    objects = list(manifest["objects"])
    targets_needed = {t for n in objects for rel in get_object(n).relations for t in rel.targets}
    ids = _id_sets(snapshot, targets_needed)
    result: dict[str, Any] = {
        "snapshot": manifest["snapshot"],
        "source": manifest["source"],
        "extracted_at": manifest["extracted_at"],
        "inventory": {},
        "null_rates": {},
        "orphans": {},
        "field_issues": {},
        "picklists": {},
        "custom_fields": {},
        "duplicates": {},
        "extraction_rejects": [],
    }
    for name in objects:
        schema = get_object(name)
        counts = manifest["objects"][name]
        nulls: Counter[str] = Counter()
        total = 0
        issue_counts: Counter[tuple[str, str]] = Counter()
        issue_samples: dict[tuple[str, str], list] = defaultdict(list)
        orphan_counts: Counter[str] = Counter()
        orphan_samples: dict[str, list] = defaultdict(list)
        picks: dict[str, Counter[str]] = {f.name: Counter() for f in schema.fields if f.choices or f.open_choices}
        custom = _CustomFieldStats()
        json_fields = [f.name for f in schema.fields if f.type is FieldType.JSON]
        for batch in snapshot.iter_batches(name):
            total += batch.num_rows
            for field in schema.fields:
                nulls[field.name] += batch.column(field.name).null_count
            for rel in schema.relations:
                column = batch.column(rel.field)
                known = pa.concat_arrays([ids[t] for t in rel.targets]) if len(rel.targets) > 1 else ids[rel.targets[0]]
                missing = pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, value_set=known)))
                n_missing = pc.sum(missing).as_py() or 0
                if n_missing:
                    orphan_counts[rel.field] += n_missing
                    if len(orphan_samples[rel.field]) < SAMPLE:
                        rows = batch.filter(missing).slice(0, SAMPLE).select(["id", rel.field]).to_pylist()
                        orphan_samples[rel.field].extend(rows)
                if rel.required:
                    absent = column.null_count
                    if absent:
                        orphan_counts[f"{rel.field} (empty)"] += absent
            for field_name, counter in picks.items():
                vc = pc.value_counts(batch.column(field_name).drop_null())
                for item in vc.to_pylist():
                    counter[item["values"]] += item["counts"]
            issues_col = batch.column(ISSUES_COLUMN)
            if issues_col.null_count < batch.num_rows:
                ids_col = batch.column("id")
                for rid, text in zip(ids_col.to_pylist(), issues_col.to_pylist()):
                    if not text:
                        continue
                    for issue in json.loads(text):
                        key = (issue["field"], _reason_kind(issue["reason"]))
                        issue_counts[key] += 1
                        if len(issue_samples[key]) < SAMPLE:
                            issue_samples[key].append({"id": rid, "value": issue["value"], "reason": issue["reason"]})
            for jf in json_fields:
                for text in batch.column(jf).drop_null().to_pylist():
                    custom.add(json.loads(text))
        result["inventory"][name] = {
            "label": schema.label,
            "read": counts["read"],
            "staged": counts["staged"],
            "quarantined": counts["quarantined"],
            "skipped": counts["skipped"],
            "records_with_issues": counts.get("records_with_issues", 0),
        }
        result["null_rates"][name] = {f: round(nulls[f] / total, 4) if total else None for f in schema.field_names}
        if orphan_counts:
            result["orphans"][name] = {f: {"count": c, "samples": orphan_samples.get(f, [])}
                                       for f, c in orphan_counts.items()}
        if issue_counts:
            result["field_issues"][name] = [
                {"field": f, "kind": k, "count": c, "samples": issue_samples[(f, k)]}
                for (f, k), c in issue_counts.most_common()
            ]
        for field_name, counter in picks.items():
            choices = set(schema.field(field_name).choices)
            result["picklists"].setdefault(name, {})[field_name] = {
                "in_use": dict(counter.most_common()),
                # An open list (labour roles) has nothing to be outside of.
                "not_in_ascora_list": sorted(v for v in counter if v not in choices) if choices else [],
            }
        summary = custom.summary()
        if summary:
            result["custom_fields"][name] = summary
    for name in ("customer", "site"):
        if name in objects:
            result["duplicates"][name] = _duplicates(snapshot, name)
    result["extraction_rejects"] = list(snapshot.iter_rejected())
    result["summary"] = _summary(result)
    return result


def _reason_kind(reason: str) -> str:
    if "not a date" in reason or "Excel date" in reason or "year" in reason:
        return "date stored as text"
    if "e-mail" in reason:
        return "invalid e-mail"
    if "phone" in reason:
        return "invalid phone"
    if "required" in reason:
        return "required value missing"
    if "no customer" in reason or "not found" in reason or "unresolved" in reason.lower():
        return "unresolved reference"
    return reason.split(" (expected")[0]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    dup = result["duplicates"]
    return {
        "objects": len(result["inventory"]),
        "records": sum(i["staged"] for i in result["inventory"].values()),
        "quarantined_at_extraction": sum(i["quarantined"] for i in result["inventory"].values()),
        "skipped_at_extraction": sum(i["skipped"] for i in result["inventory"].values()),
        "records_with_field_issues": sum(i["records_with_issues"] for i in result["inventory"].values()),
        "orphans": sum(v["count"] for o in result["orphans"].values() for v in o.values()),
        "duplicate_customer_groups": sum(len(d["exact"]) + len(d["variant_spelling"]) + len(d["near_match"])
                                         for d in dup.values()),
        "custom_fields": sum(len(v) for v in result["custom_fields"].values()),
        "unmapped_picklist_values": sum(len(f["not_in_ascora_list"]) for o in result["picklists"].values()
                                        for f in o.values()),
    }


def audit_sections(result: dict[str, Any]) -> list[Section]:
    s = result["summary"]
    sections = [
        Section("Summary", facts=s, verdict="ok" if not (s["orphans"] or s["quarantined_at_extraction"]) else "warn"),
        Section("Inventory", tables=[Table(
            ["object", "read", "staged", "quarantined", "skipped", "with field issues"],
            [[n, i["read"], i["staged"], i["quarantined"], i["skipped"], i["records_with_issues"]]
             for n, i in result["inventory"].items()])]),
    ]
    cf_rows = [[obj, name, info["inferred_type"], info["non_empty"], ", ".join(info["samples"][:3])]
               for obj, fields in result["custom_fields"].items() for name, info in fields.items()]
    sections.append(Section("Custom fields", text="Every Ascora custom field and form field code, with the "
                            "type inferred from its values; each needs a destination field.",
                            tables=[Table(["object", "field", "inferred type", "non-empty", "samples"], cf_rows)]))
    issue_rows = [[obj, i["field"], i["kind"], i["count"], "; ".join(f"{x['id']}: {x['value']!r}" for x in i["samples"][:3])]
                  for obj, items in result["field_issues"].items() for i in items]
    sections.append(Section("Field problems", text="Values that could not be read as their type. The field is "
                            "empty in staging; the original value is kept in the record's issues.",
                            tables=[Table(["object", "field", "problem", "records", "examples"], issue_rows)],
                            verdict="warn" if issue_rows else "ok"))
    orphan_rows = [[obj, f, v["count"], ", ".join(str(x.get("id")) for x in v["samples"][:5])]
                   for obj, fields in result["orphans"].items() for f, v in fields.items()]
    sections.append(Section("Orphans", text="Records whose reference points at nothing in the tenant.",
                            tables=[Table(["object", "reference", "records", "examples"], orphan_rows)],
                            verdict="warn" if orphan_rows else "ok"))
    dup_rows = [[obj, kind, ", ".join(g["names"]), ", ".join(g["ids"][:5])]
                for obj, kinds in result["duplicates"].items() for kind, groups in kinds.items() for g in groups]
    sections.append(Section("Duplicate customers", tables=[Table(["object", "kind", "spellings", "ids"], dup_rows)],
                            verdict="warn" if dup_rows else "ok"))
    pick_rows = [[obj, f, ", ".join(f"{k} ({v})" for k, v in info["in_use"].items()), ", ".join(info["not_in_ascora_list"])]
                 for obj, fields in result["picklists"].items() for f, info in fields.items()]
    sections.append(Section("Pick-list values in use", tables=[Table(["object", "field", "values (records)",
                                                                       "not in Ascora's list"], pick_rows)]))
    null_rows = [[obj, f, rate] for obj, rates in result["null_rates"].items() for f, rate in rates.items()
                 if rate is not None and rate > 0]
    sections.append(Section("Null rates", tables=[Table(["object", "field", "share empty"], null_rows, limit=300)]))
    rej = result["extraction_rejects"]
    sections.append(Section("Quarantined or skipped at extraction", tables=[Table(
        ["object", "source id", "field", "reason", "disposition", "origin"],
        [[r["object"], r["source_id"], r["field"], r["reason"], r["disposition"], r["origin"]] for r in rej])]))
    return sections


def write_audit_report(result: dict[str, Any], folder) -> dict[str, str]:
    return write_report(folder, "audit", "Ascora audit", result, audit_sections(result),
                        meta={"snapshot": result["snapshot"], "source": result["source"]})


__all__ = ["audit_snapshot", "write_audit_report", "name_key", "infer_type"]
