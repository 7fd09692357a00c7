"""Completing a default mapping for one tenant: every custom field and unmapped field made explicit.

The default map cannot know a tenant's custom fields or form field codes; the audit does. Completion
adds one explicit entry per such field (with the destination field to create and its inferred type)
and one per unmapped canonical field when the map's policy is ``custom_field``. The result is what a
human approves: nothing is created or written that the approved file does not spell out, and every
field left out is listed with the rule that left it out.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_ascora_provider.mapping.spec import Mapping, load_mapping
from airflow_ascora_provider.source.model import FieldType

CANONICAL_TO_NEUTRAL = {
    FieldType.STRING: "text",
    FieldType.TEXT: "long_text",
    FieldType.EMAIL: "text",
    FieldType.PHONE: "text",
    FieldType.INTEGER: "number",
    FieldType.DECIMAL: "number",
    FieldType.BOOLEAN: "boolean",
    FieldType.DATE: "date",
    FieldType.DATETIME: "datetime",
    FieldType.JSON: "long_text",
}
INFERRED_TO_NEUTRAL = {"number": "number", "date": "date", "boolean": "boolean", "email": "text",
                       "picklist": "text", "text": "text"}
NEVER_EXPANDED = {"id", "custom_fields", "answers"}


def _label(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.replace("_", " ").split())


def complete_mapping(mapping: Mapping, audit: dict[str, Any], field_name=None,
                     existing_fields: dict[str, set[str]] | None = None, described: dict[str, Any] | None = None
                     ) -> Mapping:
    """Return a new mapping with custom, form and unmapped fields spelled out.

    ``field_name(label)`` turns a label into the destination's API name for a new field (the
    plugin's rule); ``existing_fields`` are destination fields per object, used to avoid clashes.
    ``described`` (the destination's objects) lets completion leave out links the destination
    cannot hold (:func:`_drop_unholdable_links`).
    """
    from airflow_ascora_provider.destinations.spec import Destination

    name_of = field_name or (lambda label: Destination.custom_field_name(None, label))  # type: ignore[arg-type]
    document = copy.deepcopy(mapping.document)
    if existing_fields is not None:
        mapping = _drop_maps_for_objects(mapping, document, set(existing_fields))
    if described is not None:
        mapping = _drop_unholdable_links(mapping, document, described)
    existing_fields = existing_fields or {}
    custom_inventory = audit.get("custom_fields", {})
    for map_name, om in mapping.maps.items():
        raw = document["maps"][map_name]
        fields: dict[str, Any] = raw.setdefault("fields", {}) or {}
        raw["fields"] = fields
        taken = set(fields) | existing_fields.get(om.target, set())

        def unique(label: str) -> str:
            base = name_of(label)
            candidate = base
            n = 2
            while candidate in taken:
                candidate = f"{base}{n}"
                n += 1
            taken.add(candidate)
            return candidate

        # Completing an already completed (approved) map adds only what is new.
        covered_custom = {fm.options.get("key") for fm in om.fields
                          if fm.transform == "json_key" and fm.sources == ("custom_fields",)}
        covered_form = {fm.options.get("key") for fm in om.fields
                        if fm.transform == "related" and fm.options.get("object") == "form_response"}
        if "custom_fields" in om.expand:
            for cf_name, info in custom_inventory.get(om.source, {}).items():
                if cf_name in covered_custom:
                    continue
                neutral = INFERRED_TO_NEUTRAL.get(info["inferred_type"], "text")
                dest = unique(f"ascora {cf_name}")
                entry: dict[str, Any] = {"transform": "json_key", "from": "custom_fields", "key": cf_name,
                                         "create": {"type": neutral, "label": cf_name,
                                                    "help_text": f"Ascora custom field '{cf_name}'"}}
                if neutral != "text":
                    entry["as"] = neutral
                fields[dest] = entry
        if "form_fields" in om.expand and om.source == "job":
            for code, info in custom_inventory.get("form_response", {}).items():
                if code in covered_form:
                    continue
                neutral = INFERRED_TO_NEUTRAL.get(info["inferred_type"], "text")
                dest = unique(f"form {code}")
                entry = {"transform": "related", "object": "form_response", "by": "job_id", "field": "answers",
                         "key": code, "aggregate": "last",
                         "create": {"type": neutral, "label": f"Form: {code}",
                                    "help_text": f"Ascora custom form field code {{{code}}}"}}
                if neutral != "text":
                    entry["as"] = neutral
                fields[dest] = entry
        _fill_values_in_use(fields, om, audit)
        if om.unmapped == "custom_field":
            used = om.used_source_fields() | set(om.skip) | NEVER_EXPANDED
            for canonical in om.schema.fields:
                if canonical.name in used or om.schema.relation_for(canonical.name):
                    continue
                dest = unique(f"ascora {canonical.name}")
                fields[dest] = {"from": canonical.name,
                                "create": {"type": CANONICAL_TO_NEUTRAL[canonical.type],
                                           "label": f"Ascora {_label(canonical.name)}"}}
            relation_fields = [r.field for r in om.schema.relations if r.field not in used]
            skip = raw.setdefault("skip", {}) or {}
            raw["skip"] = skip
            for rel_field in relation_fields:
                skip.setdefault(rel_field, "a reference no map of this destination resolves")
    return load_mapping(document)


def _fill_values_in_use(fields: dict[str, Any], om, audit: dict[str, Any]) -> None:
    """Give each ``values_in_use`` pick-list the values the audit counted for its source field.

    Values already listed stay first, in their order (an admin's ordering survives); new ones follow
    sorted. Completing again for a delta snapshot adds what appeared since, never removes a value:
    records already loaded may hold it.
    """
    in_use_by_field = (audit.get("picklists") or {}).get(om.source, {})
    for fm in om.fields:
        if fm.create is None or not fm.create.values_in_use or not fm.sources:
            continue
        in_use = in_use_by_field.get(fm.sources[0], {}).get("in_use") or {}
        entry = fields[fm.dest_field]
        listed = [str(o) for o in entry["create"].get("options") or ()]
        entry["create"]["options"] = listed + sorted(str(v) for v in in_use if str(v) not in listed)


def _drop_unholdable_links(mapping: Mapping, document: dict[str, Any], described: dict[str, Any]) -> Mapping:
    """Leave out the ``related`` entries of ``refs`` fields whose records the field cannot hold.

    A Freshsales deal lists contacts. An enquiry is a contact on an account without the Leads
    module (its object is ``stored_as`` contact) and a lead otherwise, which no deal can list; the
    same mapping serves both, and completion decides which applies. Each entry left out is listed
    under ``dropped_links`` with the reason, so the approved file says what is not linked and why.
    """
    dropped: dict[str, str] = dict(document.get("dropped_links") or {})
    for name, om in mapping.maps.items():
        target = described.get(om.target)
        for fm in om.fields:
            parts = fm.options.get("related") if fm.transform == "refs" else None
            holds = target.fields.get(fm.dest_field).lookup_target if target and fm.dest_field in target.fields \
                else None
            if not parts or not holds:
                continue
            keep = []
            for part in parts:
                linked = mapping.maps[part["map"]].target
                stored_as = getattr(described.get(linked), "stored_as", None)
                if linked == holds or stored_as == holds:
                    keep.append(part)
                else:
                    dropped[f"{name}.{fm.dest_field}: {part['object']} via {part['map']}"] = (
                        f"{om.target}.{fm.dest_field} holds {holds} records; {part['map']} writes {linked} records")
            if len(keep) != len(parts):
                entry = document["maps"][name]["fields"][fm.dest_field]
                if keep:
                    entry["related"] = keep
                else:
                    entry.pop("related")
    if not dropped:
        return mapping
    document["dropped_links"] = dropped
    return load_mapping(document)


def _drop_maps_for_objects(mapping: Mapping, document: dict[str, Any], objects: set[str]) -> Mapping:
    """Maps whose ``requires_object`` the destination lacks (or whose ``unless_object`` it has) leave
    the document; each is listed under ``dropped_maps`` with the reason, so the file a person approves
    shows both which maps apply to this destination and which do not (and why). A dropped map also
    leaves the lists of maps other maps look up through (a File's parent is ``[invoice,
    invoice_order]``: whichever applies); a lookup naming only a dropped map stays, and loading the
    file says so.

    ``objects`` are the objects the destination described. Called only with a described destination:
    without one there is nothing to decide, and every map stays.
    """
    dropped: dict[str, str] = dict(document.get("dropped_maps") or {})
    removed: set[str] = set()
    for name, om in mapping.maps.items():
        if om.requires_object and not objects & set(om.requires_object):
            dropped[name] = f"{om.source} → {om.target}: the destination has no {' or '.join(om.requires_object)}"
        elif om.unless_object and objects & set(om.unless_object):
            present = sorted(objects & set(om.unless_object))
            dropped[name] = f"{om.source} → {om.target}: the destination has {', '.join(present)}, another map is used"
        else:
            continue
        document["maps"].pop(name, None)
        removed.add(name)
    if not dropped:
        return mapping
    for raw in document["maps"].values():
        for entry in (raw.get("fields") or {}).values():
            if isinstance(entry, dict):
                _forget_maps(entry, removed)
    document["dropped_maps"] = dropped
    return load_mapping(document)


def _forget_maps(entry: dict[str, Any], removed: set[str]) -> None:
    """Take ``removed`` out of a field's ``map`` list and ``by_type`` lists where others remain."""
    def keep(value: Any) -> Any:
        if isinstance(value, list):
            left = [m for m in value if m not in removed]
            return left if left else value
        return value

    if "map" in entry:
        entry["map"] = keep(entry["map"])
    by_type = entry.get("by_type")
    if isinstance(by_type, dict) and isinstance(by_type.get("maps"), dict):
        by_type["maps"] = {k: keep(v) for k, v in by_type["maps"].items()}


def mapping_summary(mapping: Mapping, low_confidence: list[str] | None = None) -> dict[str, Any]:
    """What a reviewer needs: maps, fields to create, unmapped/skipped fields with their reasons."""
    maps = []
    for name in mapping.order():
        om = mapping.maps[name]
        maps.append({
            "map": name,
            "source": om.source,
            "target": om.target,
            "condition": om.when.describe() if om.when else None,
            "fields": len(om.fields),
            "creates": [fm.dest_field for fm in om.fields if fm.create],
            "skipped": om.skip,
            "unused_source_fields": sorted(
                set(om.schema.field_names) - om.used_source_fields() - set(om.skip) - NEVER_EXPANDED
            ),
        })
    return {"destination": mapping.destination, "hash": mapping.hash, "maps": maps,
            "dropped_maps": dict(mapping.document.get("dropped_maps") or {}),
            "low_confidence": low_confidence or []}


def summary_markdown(summary: dict[str, Any], report_url: str | None = None) -> str:
    lines = [f"**Mapping for {summary['destination']}** (hash `{summary['hash'][:12]}`)", "",
             "| map | Ascora → destination | fields | new fields | skipped |", "|---|---|---|---|---|"]
    for m in summary["maps"]:
        cond = f" when {m['condition']}" if m["condition"] else ""
        lines.append(f"| {m['map']} | {m['source']} → {m['target']}{cond} | {m['fields']} | "
                     f"{len(m['creates'])} | {len(m['skipped'])} |")
    for name, reason in (summary.get("dropped_maps") or {}).items():
        lines.append(f"| ~~{name}~~ | not used: {reason} | | | |")
    unused = [(m["map"], f) for m in summary["maps"] for f in m["unused_source_fields"]]
    if unused:
        lines += ["", f"**Unmapped Ascora fields ({len(unused)})**: " +
                  ", ".join(f"{m}.{f}" for m, f in unused[:40]) + (" …" if len(unused) > 40 else "")]
    if summary.get("low_confidence"):
        lines += ["", "**Low-confidence fields**: " + ", ".join(summary["low_confidence"])]
    if report_url:
        lines += ["", f"Full report: {report_url}"]
    return "\n".join(lines)
