"""Schema setup: compare what the mapping needs with what the destination has; create what is missing.

Planning is generic (the mapping says which fields and objects it needs, the plugin describes what
exists); applying is the plugin's API call per change. Changes the destination cannot make by API
are listed for an admin, and :func:`require_schema_ready` refuses to start a load until a fresh plan
comes back empty. The same comparison yields the field-type compatibility report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_ascora_provider.destinations.spec import DestField, DestObject, LoadForecast, SchemaChange
from airflow_ascora_provider.mapping.spec import FieldCreate, Mapping
from airflow_ascora_provider.reports.render import Section, Table
from airflow_ascora_provider.source.model import FieldType

log = logging.getLogger(__name__)

# Which neutral destination types can hold which canonical Ascora type without loss.
COMPATIBLE = {
    FieldType.STRING: {"text", "long_text", "picklist", "email", "phone", "url", "full_name", "lookup", "rich_text"},
    FieldType.TEXT: {"long_text", "rich_text", "text"},
    FieldType.EMAIL: {"email", "text", "url"},
    FieldType.PHONE: {"phone", "text"},
    FieldType.INTEGER: {"number", "text"},
    FieldType.DECIMAL: {"number", "currency", "text"},
    FieldType.BOOLEAN: {"boolean", "text", "picklist"},
    FieldType.DATE: {"date", "datetime", "text"},
    FieldType.DATETIME: {"datetime", "date", "text"},
    FieldType.JSON: {"long_text", "text", "rich_text"},
}
LOSSY = {(FieldType.TEXT, "text"), (FieldType.DATETIME, "date"), (FieldType.DECIMAL, "text"),
         (FieldType.STRING, "picklist")}


class SchemaNotReady(RuntimeError):
    """The destination still lacks objects or fields the approved mapping writes to."""


@dataclass
class SchemaPlan:
    changes: list[SchemaChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    compatibility: list[dict[str, Any]] = field(default_factory=list)
    forecast: LoadForecast | None = None  # the destination's estimate of the load, when it gives one

    @property
    def by_api(self) -> list[SchemaChange]:
        return [c for c in self.changes if c.by_api]

    @property
    def manual(self) -> list[SchemaChange]:
        return [c for c in self.changes if not c.by_api]

    def as_dict(self) -> dict[str, Any]:
        return {
            "by_api": [c.describe() for c in self.by_api],
            "manual": [{"change": c.describe(), "reason": c.reason} for c in self.manual],
            "problems": self.problems,
            "compatibility": self.compatibility,
            "load_estimate": {"facts": self.forecast.facts, "per_target": self.forecast.per_target}
            if self.forecast else None,
        }


def _value_map_outputs(options: dict[str, Any]) -> list[str]:
    values = [str(v) for v in (options.get("values") or {}).values()]
    if options.get("default") is not None:
        values.append(str(options["default"]))
    return sorted(set(values))


def _wanted_options(fm) -> list[str]:
    """The pick-list values a field's records can carry: a value map's or a choice's outputs, or the
    values in use that completion copied from the audit into the field's ``create`` spec."""
    if fm.transform == "value_map":
        return _value_map_outputs(fm.options)
    if fm.transform == "choose":
        values = [case.get("value") for case in fm.options.get("cases") or ()] + [fm.default]
        return sorted({str(v) for v in values if v is not None})
    if fm.create is not None and fm.create.values_in_use:
        return list(fm.create.options)
    return []


def plan_schema(mapping: Mapping, described: dict[str, DestObject], creatable: frozenset[str],
                born_with: frozenset[str] = frozenset()) -> SchemaPlan:
    """``born_with``: fields a custom object has as soon as it is created (Twenty: ``name``)."""
    plan = SchemaPlan()
    planned_fields: dict[tuple[str, str], FieldCreate] = {}
    for name, co in mapping.custom_objects.items():
        if name not in described and any(m.target == name for m in mapping.maps.values()):
            plan.changes.append(SchemaChange("custom_object", name, spec=co, by_api="custom_object" in creatable,
                                             reason="" if "custom_object" in creatable else
                                             "this destination cannot create objects through its API"))
    for map_name in mapping.order():
        om = mapping.maps[map_name]
        target = described.get(om.target)
        if target is None and om.target not in mapping.custom_objects:
            plan.problems.append(f"maps.{map_name}: {mapping.destination} has no object {om.target!r} and the "
                                 "mapping does not declare it under custom_objects")
            continue
        existing = target.fields if target else {
            name: DestField(name, "text") for name in born_with}
        for fm in om.fields:
            dest_field = existing.get(fm.dest_field)
            key = (om.target, fm.dest_field)
            spec = fm.create
            if dest_field is None and spec is None and key not in planned_fields:
                if om.key_field == fm.dest_field:
                    spec = FieldCreate("text", "Ascora ID", unique=True)
                else:
                    plan.problems.append(f"maps.{map_name}.fields.{fm.dest_field}: {om.target} has no field "
                                         f"{fm.dest_field!r}; add a 'create' spec or fix the name")
                    continue
            if dest_field is None and key not in planned_fields:
                planned_fields[key] = spec
                plan.changes.append(SchemaChange(
                    "custom_field", om.target, fm.dest_field, spec, by_api="custom_field" in creatable,
                    reason="" if "custom_field" in creatable else "custom fields must be created by an admin"))
            dest_type = dest_field.type if dest_field else (planned_fields.get(key) or spec).type
            if dest_field is None and spec is not None and spec.values_in_use and not \
                    (planned_fields.get(key) or spec).options:
                plan.problems.append(f"maps.{map_name}.fields.{fm.dest_field}: no value of {om.source}."
                                     f"{fm.sources[0] if fm.sources else '?'} is in use, so the new pick-list would "
                                     "have no values; complete the mapping from the audit, list 'options', or "
                                     "remove the field")
            wanted = _wanted_options(fm) if dest_type in ("picklist", "multi_picklist") else []
            if wanted:
                have = set(dest_field.options) if dest_field else set((planned_fields.get(key) or spec).options)
                missing = [v for v in wanted if v not in have]
                if missing and dest_field is None:
                    created = planned_fields[key]
                    planned_fields[key] = replace(created, options=tuple(created.options) + tuple(missing))
                    for change in plan.changes:
                        if change.kind == "custom_field" and (change.object, change.field) == key:
                            object.__setattr__(change, "spec", planned_fields[key])
                elif missing:
                    plan.changes.append(SchemaChange(
                        "picklist_option", om.target, fm.dest_field, tuple(missing),
                        by_api="picklist_option" in creatable,
                        reason="" if "picklist_option" in creatable else "pick-list values must be added by an admin"))
            for source in fm.sources[:1]:
                canonical = om.schema.field(source)
                verdict = "compatible"
                if fm.transform != "copy":
                    verdict = "transformed"
                elif dest_type not in COMPATIBLE[canonical.type]:
                    verdict = "clash"
                elif (canonical.type, dest_type) in LOSSY:
                    verdict = "lossy"
                plan.compatibility.append({"map": map_name, "source": f"{om.source}.{source}",
                                           "source_type": canonical.type.value,
                                           "destination": f"{om.target}.{fm.dest_field}",
                                           "destination_type": dest_type, "transform": fm.transform,
                                           "verdict": verdict})
                if verdict == "clash":
                    plan.problems.append(f"maps.{map_name}.fields.{fm.dest_field}: {om.source}.{source} is "
                                         f"{canonical.type.value} but {om.target}.{fm.dest_field} is {dest_type}")
    return plan


def plan_for(mapping: Mapping, destination, snapshot=None) -> SchemaPlan:
    """The schema plan against what the destination holds now, plan-tier limits included; with the
    staged ``snapshot``, also the destination's estimate of what loading it will cost."""
    caps = destination.capabilities
    plan = plan_schema(mapping, destination.describe_schema(), caps.creatable, caps.custom_object_fields)
    plan.problems.extend(destination.check_plan(plan.changes))
    if snapshot is not None:
        plan.forecast = destination.forecast_load(records_per_target(mapping, snapshot))
    return plan


def records_per_target(mapping: Mapping, snapshot) -> dict[str, int]:
    """How many staged records each destination object will receive: a map with a ``when`` counts
    only the records its condition takes (measured from the snapshot's extraction time, as the load
    does), so a source split between two targets is not counted twice."""
    manifest = snapshot.manifest()
    as_of = mapping.condition_time(manifest["extracted_at"])
    counts: Counter[str] = Counter()
    for om in mapping.maps.values():
        if om.source not in manifest["objects"]:
            continue
        if om.when is None:
            counts[om.target] += snapshot.count(om.source)
        else:
            records = snapshot.iter_records(om.source, sorted(om.when.fields()))
            counts[om.target] += sum(1 for record in records if om.when.matches(record, as_of))
    return dict(counts)


def apply_schema(destination, plan: SchemaPlan) -> list[str]:
    """Apply the by-API changes in a safe order: objects, plain fields, lookups, then options."""
    order = {"custom_object": 0, "custom_field": 1, "picklist_option": 3}
    changes = sorted(plan.by_api, key=lambda c: (order[c.kind] + (1 if c.kind == "custom_field" and
                                                                   c.spec.type == "lookup" else 0)))
    done = []
    for change in changes:
        log.info("schema: creating %s", change.describe())
        try:
            destination.apply_schema_change(change)
        except Exception:
            # A create whose reply was lost is retried by the client and then refused as a
            # duplicate: what counts is whether the change is in place now.
            if not _in_place(destination.describe_schema(), change):
                raise
            log.warning("schema: %s answered an error but is in place (an earlier attempt's reply was lost)",
                        change.describe())
        done.append(change.describe())
    destination.finish_schema_changes()
    return done


def _in_place(described: dict[str, DestObject], change: SchemaChange) -> bool:
    obj = described.get(change.object)
    if obj is None or change.kind == "custom_object":
        return obj is not None
    dest_field = obj.fields.get(change.field)
    if dest_field is None or change.kind == "custom_field":
        return dest_field is not None
    return set(change.spec) <= set(dest_field.options)


def require_schema_ready(mapping: Mapping, destination) -> None:
    plan = plan_for(mapping, destination)
    if plan.problems or plan.changes:
        items = [c.describe() + (" (by hand)" if not c.by_api else "") for c in plan.changes] + plan.problems
        raise SchemaNotReady(
            f"{mapping.destination} is not ready for the approved mapping; still missing:\n  - " + "\n  - ".join(items)
        )


def schema_sections(plan: SchemaPlan, applied: list[str]) -> list[Section]:
    return [
        Section("Schema changes", facts={"created by API": len(applied), "to create by hand": len(plan.manual),
                                         "problems": len(plan.problems)},
                verdict="fail" if plan.problems or plan.manual else "ok"),
        Section("Created", tables=[Table(["change"], [[c] for c in applied])]),
        Section("For an admin to create", tables=[Table(["change", "why"], [[c.describe(), c.reason] for c in plan.manual])]),
        Section("Problems", tables=[Table(["problem"], [[p] for p in plan.problems])]),
        Section("Field-type compatibility", tables=[Table(
            ["map", "Ascora field", "type", "destination field", "type", "transform", "verdict"],
            [[c["map"], c["source"], c["source_type"], c["destination"], c["destination_type"], c["transform"],
              c["verdict"]] for c in plan.compatibility])]),
    ] + _forecast_sections(plan.forecast)


def _forecast_sections(forecast: LoadForecast | None) -> list[Section]:
    if forecast is None:
        return []
    columns = sorted({k for figures in forecast.per_target.values() for k in figures})
    return [Section("Load estimate", facts=forecast.facts, tables=[Table(
        ["target", *columns], [[target, *(figures.get(c) for c in columns)]
                               for target, figures in sorted(forecast.per_target.items())])])]
