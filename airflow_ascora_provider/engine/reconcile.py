"""Reconciliation: every source record accounted for, and what was written checked against what is there.

Per Ascora object::

    read = loaded + quarantined + skipped        (skipped = extraction duplicates + visible rules)

where ``loaded`` comes from the crosswalk, ``quarantined`` from the ledger (unresolved, distinct
records) and the rules are: the object is not mapped to this destination, or no map's condition
applies to the record. Anything left over is *missing* and fails the reconciliation. Content is
checked by re-transforming staged records and comparing with what the destination returns, for a
sample or for all records.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.diff import compare_record
from airflow_ascora_provider.engine.transform import BatchTransformer, UserDirectory
from airflow_ascora_provider.reports.render import Section, Table


def reconcile(ctx: MigrationContext, verify: str = "sample", verify_size: int = 200, seed: int = 0) -> dict[str, Any]:
    manifest = ctx.snapshot.manifest()
    objects: dict[str, Any] = {}
    content: dict[str, Any] = {}
    rng = random.Random(seed)
    users = UserDirectory(ctx)
    for name, info in manifest["objects"].items():
        maps = ctx.mapping.maps_for_source(name)
        staged_ids: set[str] = set()
        no_map = no_user = 0
        for record in ctx.snapshot.iter_records(name):
            staged_ids.add(record["id"])
            taken = [m for m in maps if m.when is None or m.when.matches(record, ctx.as_of)]
            if maps and not taken:
                no_map += 1
            elif taken and all(m.existing == "users" for m in taken) and users.user_for_staff(record["id"]) is None:
                no_user += 1
        loaded: set[str] = set()
        per_target: dict[str, list] = defaultdict(list)
        for om in maps:
            for entry in ctx.ledger.iter_crosswalk(ctx.destination_name, name, om.target):
                if entry.source_id in staged_ids:
                    loaded.add(entry.source_id)
                    per_target[om.name].append(entry)
        quarantined = {q["source_id"] for q in ctx.ledger.list_quarantine(
            destination=ctx.destination_name, source_object=name, unresolved_only=True)} & staged_ids
        quarantined -= loaded
        rule_skipped = 0 if maps else len(staged_ids)
        row = {
            "read": info["read"],
            "staged": info["staged"],
            "loaded": len(loaded),
            "quarantined": len(quarantined) + info["quarantined"],
            "skipped": info["skipped"] + rule_skipped + no_map + no_user,
            "skip_rules": ({ctx.mapping.not_migrated.get(name, "not mapped to " + ctx.destination_name): rule_skipped}
                           if rule_skipped else {}) |
                          ({"no map condition applies": no_map} if no_map else {}) |
                          ({f"no {ctx.destination_name} user has the staff member's e-mail (see Owners)": no_user}
                           if no_user else {}) |
                          ({"exact duplicate at extraction": info["skipped"]} if info["skipped"] else {}),
        }
        row["missing"] = row["read"] - row["loaded"] - row["quarantined"] - row["skipped"]
        objects[name] = row
        dup = Counter(e.dest_id for entries in per_target.values() for e in entries)
        row["duplicate_destination_ids"] = sum(1 for c in dup.values() if c > 1)
        for map_name, entries in per_target.items():
            chosen = entries if verify == "all" else rng.sample(entries, min(verify_size, len(entries)))
            if verify == "none" or not chosen:
                continue
            content[map_name] = _verify(ctx, map_name, {e.source_id: e.dest_id for e in chosen})
    totals = {k: sum(r[k] for r in objects.values()) for k in ("read", "loaded", "quarantined", "skipped", "missing")}
    mismatches = sum(c["mismatch"] + c["missing"] for c in content.values())
    ok = totals["missing"] == 0 and mismatches == 0 and not any(r["duplicate_destination_ids"] for r in objects.values())
    return {"ok": ok, "objects": objects, "totals": totals, "content": content, "verify": verify}


def _verify(ctx: MigrationContext, map_name: str, ids: dict[str, str]) -> dict[str, Any]:
    om = ctx.mapping.maps[map_name]
    records = [r for r in ctx.snapshot.iter_records(om.source) if r["id"] in ids]
    outcome = BatchTransformer(ctx, om).transform(records)
    fields = sorted({f for r in outcome.records for f in r.payload})
    read = ctx.destination.read_records(om.target, [ids[r.source_id] for r in outcome.records], fields)
    counts: Counter[str] = Counter()
    nulls: Counter[str] = Counter()
    examples = []
    for record in outcome.records:
        back = read.get(ids[record.source_id])
        for field, sent, got, verdict in compare_record(record.payload, back):
            counts[verdict] += 1
            if got is None:
                nulls[field] += 1
            if verdict != "match" and len(examples) < 20:
                examples.append({"source_id": record.source_id, "field": field, "verdict": verdict})
    checked = len(outcome.records)
    return {"records": checked, "match": counts["match"], "mismatch": counts["mismatch"], "missing": counts["missing"],
            "null_rates": {f: round(n / checked, 4) for f, n in sorted(nulls.items())} if checked else {},
            "examples": examples}


def reconcile_sections(result: dict[str, Any]) -> list[Section]:
    rows = [[n, r["read"], r["loaded"], r["quarantined"], r["skipped"], r["missing"],
             "; ".join(f"{k}: {v}" for k, v in r["skip_rules"].items()), r["duplicate_destination_ids"]]
            for n, r in result["objects"].items()]
    content = [[m, c["records"], c["match"], c["mismatch"], c["missing"]] for m, c in result["content"].items()]
    return [
        Section("Reconciliation", facts=result["totals"] | {"verify": result["verify"]},
                verdict="ok" if result["ok"] else "fail",
                text="source = loaded + quarantined + skipped for every object" if result["ok"] else
                "some records are missing or differ: see below"),
        Section("Per object", tables=[Table(["object", "read", "loaded", "quarantined", "skipped", "missing",
                                             "skip rules", "duplicate ids"], rows)]),
        Section("Content check (sent vs read back)", tables=[Table(["map", "records", "fields matching",
                                                                      "mismatching", "missing"], content)]),
    ]
