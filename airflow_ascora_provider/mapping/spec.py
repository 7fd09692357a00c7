"""The mapping file: which Ascora object becomes which destination object, field by field.

One YAML file per destination (the defaults ship beside each plugin). It is validated up front with
errors that name the exact place (``maps.company.fields.name: customer has no field 'nme'``), hashed
on its *content* (comments and key order do not change the hash), and a load refuses to run unless
that hash is the one approved in the ledger.

Shape::

    destination: twenty
    currency: AUD
    key_field: ascoraId            # destination field holding the Ascora id (upsert key), per object
    reference_time: 2026-06-01     # optional: what older_than_days/newer_than_days measure from
                                   # (default: the snapshot's extraction time)
    custom_objects:
      site: {label: Site, plural: sites, label_plural: Sites}
    maps:
      company:                     # map name: also the crosswalk's target key
        source: customer
        target: company
        when: {field: is_company, equals: true}
        unmapped: custom_field     # or skip; what happens to source fields no entry uses
        skip: {lead_source: "kept in Ascora only"}
        fields:
          name: name               # shorthand for {from: name}
          address: {transform: address}
          jobStatus: {transform: value_map, from: status, values: {Completed: COMPLETED},
                      create: {type: picklist, label: Job Status}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

from airflow_ascora_provider.source.model import MODEL, ObjectSchema

NEUTRAL_TYPES = frozenset({
    "text", "long_text", "number", "currency", "date", "datetime", "boolean", "picklist",
    "multi_picklist", "email", "phone", "url", "address", "full_name", "lookup", "rich_text",
})
UNMAPPED_POLICIES = frozenset({"custom_field", "skip"})
EXISTING_RECORDS = frozenset({"users"})  # destination records a map may update but never create


class MappingError(ValueError):
    """Every problem found in a mapping file, one per line, each naming where it is."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("mapping is not valid:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class FieldCreate:
    """A destination field the schema step must make exist before records use it."""

    type: str
    label: str
    options: tuple[str, ...] = ()
    unique: bool = False
    lookup_target: str | None = None  # for type lookup: the destination object it points at
    help_text: str | None = None
    # A pick-list of values the tenant defines (labour roles, kinds of equipment): completion adds the
    # values the audit found in use to ``options``, and the schema step adds any the destination lacks.
    values_in_use: bool = False


@dataclass(frozen=True)
class FieldMap:
    dest_field: str
    transform: str
    sources: tuple[str, ...]
    options: dict[str, Any]
    required: bool = False
    default: Any = None
    create: FieldCreate | None = None


class ConditionNeedsTime(ValueError):
    """A date condition was evaluated without a reference time.

    Age is measured from the snapshot's extraction time, never from the wall clock, so the same
    staged record lands in the same map on every retry and re-run; a caller that has no snapshot
    time must say so rather than silently use "now".
    """


DATE_OPS = ("older_than_days", "newer_than_days")
COMPOUND_OPS = ("all", "any", "not")


@dataclass(frozen=True)
class Condition:
    """A map's ``when``: equals | in | truthy | falsy | older_than_days | newer_than_days on one field,
    or ``all`` / ``any`` / ``not`` over nested conditions (``parts``).

    The date tests are true only for a record that *has* the date (a missing date is neither older
    nor newer); ``not`` is the exact complement, which is how two maps split a source without a
    record taken by both or by neither.
    """

    field: str  # "" for all/any/not
    op: str
    value: Any = None
    parts: tuple[Condition, ...] = ()

    def matches(self, record: dict[str, Any], as_of: dt.datetime | None = None) -> bool:
        if self.op == "all":
            return all(p.matches(record, as_of) for p in self.parts)
        if self.op == "any":
            return any(p.matches(record, as_of) for p in self.parts)
        if self.op == "not":
            return not self.parts[0].matches(record, as_of)
        value = record.get(self.field)
        if self.op == "equals":
            return value == self.value
        if self.op == "in":
            return value in self.value
        if self.op == "truthy":
            return bool(value)
        if self.op in DATE_OPS:
            return self._date_matches(value, as_of)
        return not value

    def _date_matches(self, value: Any, as_of: dt.datetime | None) -> bool:
        if as_of is None:
            raise ConditionNeedsTime(f"'{self.field} {self.op} {self.value}' needs the snapshot's extraction time")
        when = _as_datetime(value)
        if when is None:
            return False
        cutoff = _as_datetime(as_of) - dt.timedelta(days=self.value)
        return when < cutoff if self.op == "older_than_days" else when >= cutoff

    def fields(self) -> set[str]:
        if self.parts:
            return set().union(*(p.fields() for p in self.parts))
        return {self.field}

    def uses_time(self) -> bool:
        return self.op in DATE_OPS or any(p.uses_time() for p in self.parts)

    def describe(self) -> str:
        if self.op == "not":
            return f"not ({self.parts[0].describe()})"
        if self.parts:
            return f" {'and' if self.op == 'all' else 'or'} ".join(f"({p.describe()})" for p in self.parts)
        if self.op in DATE_OPS:
            return f"{self.field} {self.op.replace('_days', '')} {self.value} days before extraction"
        return f"{self.field} {self.op} {self.value!r}" if self.op in ("equals", "in") else f"{self.field} {self.op}"


def _as_datetime(value: Any) -> dt.datetime | None:
    """Dates and datetimes (staged values, or ISO text from a manifest) as aware UTC datetimes."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class ObjectMap:
    name: str
    source: str
    target: str
    fields: tuple[FieldMap, ...]
    when: Condition | None = None
    unmapped: str = "skip"
    skip: dict[str, str] = field(default_factory=dict)
    key_field: str | None = None
    expand: tuple[str, ...] = ()  # "custom_fields" and/or "form_fields": filled in by completion
    requires_object: tuple[str, ...] = ()  # kept by completion only if the destination has one of these
    unless_object: tuple[str, ...] = ()  # dropped by completion if the destination has one of these
    # "users": the map only updates records the destination already holds, its users matched to Ascora
    # staff by e-mail at user resolution. Nothing is created or deleted, and every write keeps the
    # user's values from before it, so rollback puts them back.
    existing: str | None = None

    @property
    def schema(self) -> ObjectSchema:
        return MODEL[self.source]

    def lookups(self) -> set[str]:
        names: set[str] = set()
        for fm in self.fields:
            if fm.transform in ("lookup", "attach"):
                names.update(_lookup_maps(fm.options))
            elif fm.transform == "refs":
                names.update(_lookup_maps(fm.options) if fm.sources else ())
                names.update(part["map"] for part in fm.options.get("related") or () if isinstance(part, dict)
                             and isinstance(part.get("map"), str))
            elif fm.transform == "related_rows":  # row columns that look up other maps' records
                for column in (fm.options.get("columns") or {}).values():
                    names.update(_lookup_maps(column) if isinstance(column, dict) else ())
        return names

    def used_source_fields(self) -> set[str]:
        used = {s for fm in self.fields for s in fm.sources}
        if self.when:
            used.update(self.when.fields())
        return used


@dataclass(frozen=True)
class CustomObject:
    name: str
    label: str
    plural: str
    label_plural: str


@dataclass(frozen=True)
class Mapping:
    destination: str
    maps: dict[str, ObjectMap]
    currency: str = "AUD"
    key_field: str | None = None
    custom_objects: dict[str, CustomObject] = field(default_factory=dict)
    not_migrated: dict[str, str] = field(default_factory=dict)  # Ascora object → why it has no map
    # What date conditions measure age from instead of the snapshot's extraction time: pins the split
    # across delta runs (a later snapshot would otherwise move a job that crossed the threshold).
    reference_time: dt.datetime | None = None
    document: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def hash(self) -> str:
        return mapping_hash(self.document)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True, width=110)

    def order(self) -> list[str]:
        """Maps ordered so every lookup target is written first; ties follow the file's order."""
        position = {name: i for i, name in enumerate(self.maps)}
        sorter: TopologicalSorter[str] = TopologicalSorter()
        for name, om in self.maps.items():
            sorter.add(name, *(n for n in om.lookups() if n != name))
        try:
            sorter.prepare()
        except CycleError as exc:
            raise MappingError([f"maps: lookups form a cycle: {' -> '.join(exc.args[1])}"]) from exc
        out: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=lambda n: position.get(n, 1 << 30))
            out.extend(ready)
            sorter.done(*ready)
        return out

    def condition_time(self, extracted_at: str | dt.datetime) -> dt.datetime:
        """The time ``when`` date conditions measure from: the mapping's pinned ``reference_time``,
        else the snapshot's extraction time."""
        return self.reference_time or _as_datetime(extracted_at)

    def maps_for_source(self, source: str) -> list[ObjectMap]:
        return [m for m in self.maps.values() if m.source == source]

    def source_objects(self) -> list[str]:
        return sorted({m.source for m in self.maps.values()})


def mapping_hash(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _lookup_maps(options: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    maps = options.get("map")
    if isinstance(maps, str):
        names.add(maps)
    elif isinstance(maps, list):
        names.update(maps)
    for targets in (options.get("by_type") or {}).get("maps", {}).values():
        names.update([targets] if isinstance(targets, str) else targets)
    return names


def _parse_condition(raw: Any, where: str, schema: ObjectSchema, problems: list[str]) -> Condition | None:
    if raw is None:
        return None
    if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in COMPOUND_OPS:
        op, inner = next(iter(raw.items()))
        if op == "not":
            if inner is None:
                problems.append(f"{where}.not: needs a condition")
                return None
            part = _parse_condition(inner, f"{where}.not", schema, problems)
            return Condition("", "not", parts=(part,)) if part else None
        if not isinstance(inner, list) or not inner:
            problems.append(f"{where}.{op}: needs a list of conditions")
            return None
        parts = [_parse_condition(p, f"{where}.{op}[{i}]", schema, problems) for i, p in enumerate(inner)]
        return Condition("", op, parts=tuple(parts)) if all(parts) else None
    if not isinstance(raw, dict) or "field" not in raw:
        problems.append(f"{where}: 'when' needs a field and one of equals/in/truthy/falsy/older_than_days/"
                        "newer_than_days, or one of all/any/not")
        return None
    name = raw["field"]
    if not schema.has_field(name):
        problems.append(f"{where}: {schema.name} has no field {name!r}")
    for op in DATE_OPS:
        if op in raw:
            days = raw[op]
            if isinstance(days, bool) or not isinstance(days, int) or days < 0:
                problems.append(f"{where}.{op}: must be a whole number of days (0 or more), got {days!r}")
                return None
            if schema.has_field(name) and schema.field(name).type.value not in ("date", "datetime"):
                problems.append(f"{where}.{op}: {schema.name}.{name} is {schema.field(name).type.value}, "
                                "not a date or datetime")
                return None
            return Condition(name, op, days)
    if "equals" in raw:
        return Condition(name, "equals", raw["equals"])
    if "in" in raw:
        return Condition(name, "in", tuple(raw["in"]))
    return Condition(name, "truthy" if raw.get("truthy", True) else "falsy")


def _parse_create(raw: Any, where: str, problems: list[str], dest_field: str) -> FieldCreate | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in NEUTRAL_TYPES:
        problems.append(f"{where}.create: type must be one of {sorted(NEUTRAL_TYPES)}")
        return None
    return FieldCreate(
        type=raw["type"],
        label=str(raw.get("label") or dest_field),
        options=tuple(str(o) for o in raw.get("options") or ()),
        unique=bool(raw.get("unique", False)),
        lookup_target=raw.get("target"),
        help_text=raw.get("help_text"),
        values_in_use=bool(raw.get("values_in_use", False)),
    )


def _parse_field(dest_field: str, raw: Any, where: str, schema: ObjectSchema, problems: list[str]) -> FieldMap | None:
    from airflow_ascora_provider.mapping.transforms import TRANSFORMS

    if isinstance(raw, str):
        raw = {"from": raw}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a source field name or a mapping, got {type(raw).__name__}")
        return None
    transform = raw.get("transform", "copy")
    impl = TRANSFORMS.get(transform)
    if impl is None:
        problems.append(f"{where}: unknown transform {transform!r}; known: {', '.join(sorted(TRANSFORMS))}")
        return None
    sources = raw.get("from", impl.default_sources)
    if isinstance(sources, str):
        sources = (sources,)
    elif isinstance(sources, dict):
        sources = tuple(sources.values())
    sources = tuple(sources or ())
    for name in sources:
        if not schema.has_field(name):
            problems.append(f"{where}: {schema.name} has no field {name!r}")
    options = {k: v for k, v in raw.items() if k not in {"transform", "from", "required", "default", "create"}}
    fm = FieldMap(
        dest_field=dest_field,
        transform=transform,
        sources=sources,
        options=options,
        required=bool(raw.get("required", False)),
        default=raw.get("default"),
        create=_parse_create(raw.get("create"), where, problems, dest_field),
    )
    problems.extend(f"{where}: {p}" for p in impl.check(fm, schema))
    return fm


def _object_names(raw: dict[str, Any], key: str, where: str, problems: list[str]) -> tuple[str, ...]:
    """One destination object, or a list of them meaning "any of these" (Salesforce CPQ *or* Financial
    Services Cloud)."""
    value = raw.get(key)
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append(f"{where}.{key}: must name a destination object or a list of them, got {value!r}")
        return ()
    return tuple(names)


def parse_mapping(document: dict[str, Any]) -> Mapping:
    problems: list[str] = []
    if not isinstance(document, dict):
        raise MappingError(["the mapping file must be a YAML mapping at top level"])
    destination = document.get("destination")
    if not destination:
        problems.append("destination: missing")
    custom_objects = {}
    for name, raw in (document.get("custom_objects") or {}).items():
        raw = raw or {}
        custom_objects[name] = CustomObject(
            name=name,
            label=str(raw.get("label") or name.title()),
            plural=str(raw.get("plural") or name + "s"),
            label_plural=str(raw.get("label_plural") or (raw.get("label") or name.title()) + "s"),
        )
    maps: dict[str, ObjectMap] = {}
    raw_maps = document.get("maps") or {}
    if not raw_maps:
        problems.append("maps: at least one object map is needed")
    for name, raw in raw_maps.items():
        where = f"maps.{name}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        source = raw.get("source")
        if source not in MODEL:
            problems.append(f"{where}.source: unknown Ascora object {source!r}; known: {', '.join(sorted(MODEL))}")
            continue
        schema = MODEL[source]
        if not raw.get("target"):
            problems.append(f"{where}.target: missing")
        unmapped = raw.get("unmapped", "skip")
        if unmapped not in UNMAPPED_POLICIES:
            problems.append(f"{where}.unmapped: must be one of {sorted(UNMAPPED_POLICIES)}")
        fields = []
        seen_dest: set[str] = set()
        for dest_field, fraw in (raw.get("fields") or {}).items():
            if dest_field in seen_dest:
                problems.append(f"{where}.fields.{dest_field}: mapped twice")
            seen_dest.add(dest_field)
            fm = _parse_field(dest_field, fraw, f"{where}.fields.{dest_field}", schema, problems)
            if fm:
                fields.append(fm)
        skip = {str(k): str(v) for k, v in (raw.get("skip") or {}).items()}
        for fname in skip:
            if not schema.has_field(fname):
                problems.append(f"{where}.skip: {source} has no field {fname!r}")
        expand = tuple(raw.get("expand") or ())
        existing = raw.get("existing")
        if existing is not None and existing not in EXISTING_RECORDS:
            problems.append(f"{where}.existing: must be one of {sorted(EXISTING_RECORDS)}")
            existing = None
        elif existing == "users" and source != "staff_user":
            problems.append(f"{where}.existing: users are matched to staff members; the source must be "
                            f"staff_user, not {source}")
            existing = None
        for item in expand:
            if item not in ("custom_fields", "form_fields"):
                problems.append(f"{where}.expand: unknown {item!r} (custom_fields, form_fields)")
        maps[name] = ObjectMap(
            name=name,
            source=source,
            target=str(raw.get("target")),
            fields=tuple(fields),
            when=_parse_condition(raw.get("when"), f"{where}.when", schema, problems),
            unmapped=unmapped,
            skip=skip,
            # A record this map never creates needs no Ascora id to be found again by: the user is the key.
            key_field=None if existing else raw.get("key_field", document.get("key_field")),
            expand=expand,
            existing=existing,
            requires_object=_object_names(raw, "requires_object", where, problems),
            unless_object=_object_names(raw, "unless_object", where, problems),
        )
    pairs: dict[tuple[str, str], str] = {}
    for name, om in maps.items():
        other = pairs.setdefault((om.source, om.target), name)
        if other != name:
            problems.append(f"maps.{name}: {other} already maps {om.source} to {om.target}; one map per pair "
                            "(use 'when' conditions inside one map's fields instead)")
    for name, om in maps.items():
        for ref in om.lookups():
            if ref not in maps:
                problems.append(f"maps.{name}: lookup refers to unknown map {ref!r}")
    if problems:
        raise MappingError(problems)
    not_migrated = {str(k): str(v) for k, v in (document.get("not_migrated") or {}).items()}
    for name in not_migrated:
        if name not in MODEL:
            problems.append(f"not_migrated: unknown Ascora object {name!r}")
        elif any(m.source == name for m in maps.values()):
            problems.append(f"not_migrated: {name} is also mapped")
    reference_time = None
    if document.get("reference_time") is not None:
        try:
            reference_time = _as_datetime(document["reference_time"])
        except (TypeError, ValueError, AttributeError):
            problems.append(f"reference_time: not a date or ISO date-time: {document['reference_time']!r}")
    if problems:
        raise MappingError(problems)
    mapping = Mapping(
        reference_time=reference_time,
        destination=str(destination),
        not_migrated=not_migrated,
        maps=maps,
        currency=str(document.get("currency", "AUD")),
        key_field=document.get("key_field"),
        custom_objects=custom_objects,
        document=document,
    )
    mapping.order()  # raises on lookup cycles
    return mapping


def load_mapping(source: str | Path | dict[str, Any]) -> Mapping:
    """Parse a mapping from a dict, YAML text or a file path."""
    if isinstance(source, dict):
        return parse_mapping(source)
    text = str(source)
    if isinstance(source, Path) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
        text = Path(source).read_text(encoding="utf-8")
    try:
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~10x faster
    except yaml.YAMLError as exc:
        raise MappingError([f"YAML syntax: {exc}"]) from exc
    return parse_mapping(document)
