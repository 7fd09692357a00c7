"""The mapping proposer: fill the gaps of the default (or approved) map, with a confidence for each choice.

The seeds promise "AI proposes the map; you confirm before any record moves". Each map of the
baseline names an Ascora object and a destination object; the proposer looks at the Ascora fields no
entry uses yet (canonical fields when the map's policy is ``unmapped: custom_field``, custom fields when
it ``expand``s them) and at the destination fields no entry writes yet, and scores every pair on

* **name**: same meaning (a generic CRM vocabulary, :mod:`.similarity`) or close spelling (RapidFuzz),
  plus a local sentence-embedding model when the ``embeddings`` extra is installed;
* **type**: can the destination type hold the Ascora type, and with which transform;
* **values**: do the staged values fit that type (:mod:`.evidence`); pick-list values must find options.

Pairs above :data:`ACCEPT` become entries (greedy, best first, one destination field per Ascora field,
except the composite fields: a full name from first and last name, an address from its parts, one
``phones``/``emails`` field fed by several sources). Pick-lists get value maps (:mod:`.picklists`),
and value maps already in the baseline get entries for values in use that they do not list. Whatever
is left becomes a custom field of the right type: money as currency and Ascora pick-lists as
pick-lists here, everything else through :func:`~.complete.complete_mapping`, which then spells out the
custom, form and unmapped fields as before.

What the proposer never does: change or remove an entry of the baseline. A human's approved map is
the baseline of every later proposal, so a reviewer's choice is never silently overridden; the
proposer only adds entries for fields nothing covers and value-map keys a value map lacks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_ascora_provider.destinations.spec import DestField, DestObject
from airflow_ascora_provider.mapping.complete import (
    CANONICAL_TO_NEUTRAL,
    NEVER_EXPANDED,
    _label,
    complete_mapping,
    mapping_summary,
    summary_markdown,
)
from airflow_ascora_provider.mapping.embeddings import EmbeddingSimilarity, load_packaged_model
from airflow_ascora_provider.mapping.evidence import (
    ValueProfile,
    canonical_profiles,
    custom_profile,
    is_money,
    type_evidence,
)
from airflow_ascora_provider.mapping.picklists import choose_option, option_value
from airflow_ascora_provider.mapping.similarity import NameProfile, humanise, name_similarity, profile, tokens
from airflow_ascora_provider.mapping.spec import Mapping, ObjectMap, load_mapping
from airflow_ascora_provider.source.model import FieldType

ACCEPT = 0.6  # a pair scoring at least this becomes an entry
CONFIDENT = 0.75  # below this an accepted entry (or value) is listed for the reviewer to check
# Destination fields the CRM manages itself: audit timestamps are create-only or read-only.
MANAGED_CONCEPTS = {"created", "updated", "deleted"}
MANAGED_NAMES = {"id", "position"}
# Which Ascora fields a plural phones/emails field takes besides its best match (a fax is not a phone).
SHAREABLE = {"phone": {"phone", "mobile"}, "email": {"email"}}
ADDRESS_PARTS = ("address_line1", "address_line2", "suburb", "state", "postcode", "country", "latitude", "longitude")

NameFn = Callable[[str], str]


@dataclass
class FieldDecision:
    """One choice the proposer made (or left to the baseline), with why."""

    map: str
    source: str  # canonical field, "custom_fields[Panel kW]" or "form_response.answers[Code]"
    dest: str | None
    action: str  # keep | match | create
    confidence: float | None
    reason: str
    transform: str = "copy"
    dest_type: str | None = None
    alternatives: list[str] = field(default_factory=list)  # next best destination fields, with scores

    @property
    def low(self) -> bool:
        return self.action == "match" and (self.confidence or 0) < CONFIDENT


@dataclass
class ValueDecision:
    """One pick-list value mapped (or not) to a destination option."""

    map: str
    dest: str
    value: str
    option: str | None
    confidence: float
    reason: str
    records: int | None = None
    new_option: bool = False

    @property
    def low(self) -> bool:
        return self.option is None or self.confidence < CONFIDENT


@dataclass
class Proposal:
    mapping: Mapping
    decisions: list[FieldDecision]
    values: list[ValueDecision]
    embedder: str | None = None

    def by_action(self, action: str) -> list[FieldDecision]:
        return [d for d in self.decisions if d.action == action]

    def low_confidence(self) -> list[str]:
        items = [f"{d.map}.{d.dest} ← {d.source} ({d.confidence:.2f})" for d in self.decisions if d.low]
        items += [f"{v.map}.{v.dest}: {v.value!r} → {v.option if v.option is not None else 'no option'}"
                  + (f" ({v.confidence:.2f})" if v.option is not None else "") for v in self.values if v.low]
        return items

    def stats(self) -> dict[str, int]:
        return {"kept": len(self.by_action("keep")), "matched": len(self.by_action("match")),
                "created": len(self.by_action("create")),
                "values_mapped": sum(v.option is not None and not v.new_option for v in self.values),
                "new_options": sum(v.new_option for v in self.values),
                "values_unmapped": sum(v.option is None for v in self.values),
                "low_confidence": len(self.low_confidence())}

    def as_dict(self) -> dict[str, Any]:
        return {"summary": {**self.stats(), "hash": self.mapping.hash,
                            "embedding_model": self.embedder or "none"},
                "decisions": [asdict(d) for d in self.decisions],
                "values": [asdict(v) for v in self.values],
                "low_confidence": self.low_confidence()}


# -- type fit -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    weight: float  # how well the destination type holds the source type (1 = natively)
    transform: str
    options: tuple[tuple[str, Any], ...] = ()
    note: str = ""


# Canonical Ascora type -> destination type -> (weight, transform).
CANONICAL_FITS: dict[FieldType, dict[str, tuple[float, str]]] = {
    FieldType.STRING: {"text": (1.0, "copy"), "long_text": (0.9, "copy"), "rich_text": (0.6, "rich_text")},
    FieldType.TEXT: {"long_text": (1.0, "copy"), "rich_text": (1.0, "rich_text"), "text": (0.75, "copy")},
    FieldType.EMAIL: {"email": (1.0, "email"), "text": (0.6, "copy"), "long_text": (0.5, "copy")},
    FieldType.PHONE: {"phone": (1.0, "phone"), "text": (0.6, "copy")},
    FieldType.INTEGER: {"number": (1.0, "number"), "currency": (0.5, "currency"), "text": (0.5, "copy")},
    FieldType.DECIMAL: {"number": (1.0, "number"), "currency": (0.75, "currency"), "text": (0.4, "copy")},
    FieldType.BOOLEAN: {"boolean": (1.0, "boolean"), "text": (0.4, "copy")},
    FieldType.DATE: {"date": (1.0, "date"), "datetime": (0.85, "datetime"), "text": (0.4, "copy")},
    FieldType.DATETIME: {"datetime": (1.0, "datetime"), "date": (0.85, "date"), "text": (0.4, "copy")},
    FieldType.JSON: {},
}
# Free text that turns out to be something more specific (judged by its values).
STRING_BY_VALUES = {"email": "email", "phone": "phone", "url": "link", "number": "number",
                    "currency": "currency", "date": "date", "datetime": "datetime"}
# Custom fields reach the destination through json_key, which can read them as these types only.
CUSTOM_FITS: dict[str, dict[str, tuple[float, str | None]]] = {
    "number": {"number": (1.0, "number"), "currency": (0.8, "number"), "text": (0.6, None)},
    "date": {"date": (1.0, "date"), "datetime": (0.8, "datetime"), "text": (0.5, None)},
    "boolean": {"boolean": (1.0, "boolean"), "text": (0.4, None)},
    "email": {"text": (0.8, None), "long_text": (0.7, None)},
    "picklist": {"text": (0.9, None), "long_text": (0.7, None)},
    "text": {"text": (1.0, None), "long_text": (0.9, None)},
}


@dataclass
class Source:
    """An Ascora field the proposer may place."""

    name: str  # canonical field name, or the custom field's name
    custom: bool
    kind: Any  # FieldType for canonical fields, the audit's inferred type for custom ones
    values: ValueProfile
    choices: tuple[str, ...] = ()
    label: str = ""

    @property
    def display(self) -> str:
        return f"custom_fields[{self.name}]" if self.custom else self.name

    def entry(self, fit: Fit) -> dict[str, Any]:
        if self.custom:
            entry: dict[str, Any] = {"transform": "json_key", "from": "custom_fields", "key": self.name}
            entry.update(fit.options)
            return entry
        entry = {"from": self.name} if fit.transform == "copy" else {"transform": fit.transform, "from": self.name}
        entry.update(fit.options)
        return entry


def _value_map(source: Source, options: tuple[str, ...], map_name: str, dest: str
               ) -> tuple[dict[str, str], list[ValueDecision], float]:
    """Values of ``source`` mapped onto ``options``; the decisions; the share of records covered."""
    counts = source.values.counts
    values = list(dict.fromkeys([*source.choices, *(source.values.distinct or [])]))
    mapped: dict[str, str] = {}
    decisions = []
    for value in values:
        choice = choose_option(value, options)
        decisions.append(ValueDecision(map_name, dest, value, choice.option, choice.confidence, choice.reason,
                                       counts.get(value)))
        if choice.option is not None:
            mapped[value] = choice.option
    if counts:
        total = sum(counts.values())
        covered = sum(n for v, n in counts.items() if v in mapped) / total if total else 0.0
    else:
        covered = len(mapped) / len(values) if values else 0.0
    return mapped, decisions, covered


def type_fit(source: Source, dest: DestField, map_name: str) -> tuple[Fit, list[ValueDecision]] | None:
    """How ``dest`` can hold ``source``, with the transform to use; None when it cannot."""
    if source.custom:
        if dest.type == "picklist":
            distinct = source.values.distinct or []
            if distinct and dest.options and set(distinct) <= set(dest.options):
                return Fit(1.0, "json_key", note="every value is an option"), []
            return None
        weight, as_type = CUSTOM_FITS.get(source.kind, CUSTOM_FITS["text"]).get(dest.type, (0.0, None))
        if not weight:
            return None
        return Fit(weight, "json_key", (("as", as_type),) if as_type else ()), []
    kind: FieldType = source.kind
    if dest.type == "picklist" and kind is FieldType.STRING:
        if not (source.choices or source.values.distinct) or not dest.options:
            return None
        values, decisions, covered = _value_map(source, dest.options, map_name, dest.name)
        if not values or covered < 0.5:
            return None
        return Fit(0.6 + 0.4 * covered, "value_map", (("values", values),),
                   note=f"{covered:.0%} of values have an option"), decisions
    weight, transform = CANONICAL_FITS[kind].get(dest.type, (0.0, ""))
    if kind is FieldType.DECIMAL and dest.type == "currency" and is_money(source.name, kind, source.values):
        weight = 1.0
    if not weight and kind is FieldType.STRING and dest.type in STRING_BY_VALUES:
        evidence = type_evidence(source.values, dest.type)
        if evidence is not None and evidence >= 0.9:
            weight, transform = 0.85, STRING_BY_VALUES[dest.type]
    if not weight:
        return None
    return Fit(weight, transform), []


# -- the proposer ----------------------------------------------------------------------------------

@dataclass
class _Pair:
    score: float
    source: Source
    dest: DestField
    fit: Fit
    reason: str
    values: list[ValueDecision]


class _MapProposer:
    """Proposals for one map of the baseline."""

    def __init__(self, name: str, om: ObjectMap, raw: dict[str, Any], target: DestObject | None,
                 audit: dict[str, Any], snapshot, embedder: EmbeddingSimilarity | None, accept: float,
                 name_of: NameFn, standard_fields: set[str]) -> None:
        self.name, self.om, self.raw, self.target = name, om, raw, target
        self.audit, self.snapshot, self.embedder, self.accept = audit, snapshot, embedder, accept
        self.fields: dict[str, Any] = raw.setdefault("fields", {}) or {}
        raw["fields"] = self.fields
        self.name_of = name_of
        # New names avoid the map's own fields and the destination's standard ones (as completion does).
        self.taken_names = set(self.fields) | standard_fields
        self.decisions: list[FieldDecision] = []
        self.values: list[ValueDecision] = []
        self.best_rejected: dict[str, list[str]] = {}
        self.source_context = tuple(tokens(om.source)) + tuple(tokens(om.schema.label))
        self.dest_context = tuple(tokens(om.target)) + (tuple(tokens(target.label)) if target else ())

    # -- candidates ------------------------------------------------------------------------------
    def sources(self) -> list[Source]:
        om = self.om
        found: list[Source] = []
        if om.unmapped == "custom_field":
            used = om.used_source_fields() | set(om.skip) | NEVER_EXPANDED
            names = [f.name for f in om.schema.fields if f.name not in used and not om.schema.relation_for(f.name)]
            profiles = canonical_profiles(self.snapshot, om.source, names,
                                          self.audit.get("picklists", {}).get(om.source))
            for f in om.schema.fields:
                if f.name in profiles:
                    found.append(Source(f.name, False, f.type, profiles[f.name], f.choices, humanise(f.name)))
        if "custom_fields" in om.expand:
            covered = {fm.options.get("key") for fm in om.fields
                       if fm.transform == "json_key" and fm.sources == ("custom_fields",)}
            for cf, info in self.audit.get("custom_fields", {}).get(om.source, {}).items():
                if cf not in covered:
                    found.append(Source(cf, True, info.get("inferred_type", "text"), custom_profile(info), (), cf))
        return found

    def targets(self) -> list[DestField]:
        if self.target is None:
            return []
        written = set(self.fields) | {self.om.key_field}
        out = []
        for f in self.target.fields.values():
            if f.name in written or f.read_only or f.type in ("system", "lookup") or f.name in MANAGED_NAMES:
                continue
            if MANAGED_CONCEPTS & profile(f.name).concepts.keys():
                continue
            out.append(f)
        return out

    # -- scoring ---------------------------------------------------------------------------------
    def name_score(self, source: Source, dest: DestField) -> tuple[float, str]:
        score, reason = name_similarity(profile(source.name, self.source_context),
                                        self._dest_profile(dest.name))
        if self.embedder is not None:
            meaning = self.embedder.similarity(f"{self.om.schema.label} {source.label}",
                                               f"{self.target.label if self.target else ''} {humanise(dest.name)}")
            calibrated = max(0.0, min(1.0, (meaning - 0.35) / 0.45))
            if 0.9 * calibrated > score:
                score, reason = 0.9 * calibrated, f"same meaning to the language model ({meaning:.2f})"
        return score, reason

    def _dest_profile(self, name: str) -> NameProfile:
        return profile(name, self.dest_context)

    def pairs(self, sources: list[Source], dests: list[DestField]) -> list[_Pair]:
        pairs = []
        for source in sources:
            for dest in dests:
                if dest.type in ("full_name", "address"):
                    continue  # composite fields are filled from several sources (see composites)
                fitted = type_fit(source, dest, self.name)
                if fitted is None:
                    continue
                fit, value_decisions = fitted
                name, why = self.name_score(source, dest)
                evidence = None
                if source.custom or source.kind is FieldType.STRING:
                    evidence = type_evidence(source.values, dest.type)
                score = fit.weight * name * (1.0 if evidence is None else 0.5 + 0.5 * evidence)
                reasons = [why, f"{self._kind(source)} → {dest.type}" + (f" ({fit.transform})"
                                                                        if fit.transform != "copy" else "")]
                if evidence is not None and dest.type not in ("text", "long_text"):
                    reasons.append(f"{evidence:.0%} of values fit")
                if fit.note:
                    reasons.append(fit.note)
                pairs.append(_Pair(round(score, 4), source, dest, fit, "; ".join(reasons), value_decisions))
        order = {s.display: i for i, s in enumerate(sources)}
        dest_order = {d.name: i for i, d in enumerate(dests)}
        pairs.sort(key=lambda p: (-p.score, order[p.source.display], dest_order[p.dest.name]))
        return pairs

    @staticmethod
    def _kind(source: Source) -> str:
        return f"custom {source.kind}" if source.custom else source.kind.value

    # -- composites ------------------------------------------------------------------------------
    def composites(self, sources: list[Source], dests: list[DestField]) -> set[str]:
        """Full names and addresses made of several Ascora fields; returns the sources they used."""
        free = {s.name for s in sources if not s.custom}
        used: set[str] = set()
        for dest in dests:
            if dest.type == "full_name" and {"first_name", "last_name"} <= free - used:
                self._add_match(dest, ["first_name", "last_name"], "full_name", 0.9,
                                "first and last name make the full name", {})
                used |= {"first_name", "last_name"}
        address_dests = [d for d in dests if d.type == "address"]
        groups = [("primary", ""), ("secondary", "postal_")]
        for dest in sorted(address_dests, key=lambda d: self._dest_profile(d.name).role == "secondary"):
            role = self._dest_profile(dest.name).role or "primary"
            for group_role, prefix in sorted(groups, key=lambda g: g[0] != role):
                parts = [f"{prefix}{p}" for p in ADDRESS_PARTS if f"{prefix}{p}" in free - used]
                core = {f"{prefix}{p}" for p in ("address_line1", "suburb", "state", "postcode")}
                if core <= set(parts):
                    self._add_match(dest, parts, "address", 0.85 if group_role == role else 0.7,
                                    f"the {'postal' if prefix else 'main'} address parts make the address", {})
                    used |= set(parts)
                    break
        return used

    # -- applying --------------------------------------------------------------------------------
    def _add_match(self, dest: DestField, sources: list[str], transform: str, confidence: float, reason: str,
                   options: dict[str, Any], display: str | None = None, alternatives: list[str] | None = None) -> None:
        entry: dict[str, Any] = {"transform": transform, "from": sources if len(sources) > 1 else sources[0]}
        entry.update(options)
        self.fields[dest.name] = entry
        self.decisions.append(FieldDecision(self.name, display or ", ".join(sources), dest.name, "match",
                                            round(confidence, 3), reason, transform, dest.type, alternatives or []))

    def run(self) -> None:
        for dest_field, spec in list(self.fields.items()):
            self.decisions.append(FieldDecision(self.name, _sources_of(spec), dest_field, "keep", None,
                                                "in the baseline map (default or approved)",
                                                _transform_of(spec)))
        sources = self.sources()
        dests = self.targets()
        if not sources:
            return
        used_by_composites = self.composites(sources, dests)
        taken_dests = set(self.fields)
        sources = [s for s in sources if s.name not in used_by_composites or s.custom]
        pairs = self.pairs(sources, [d for d in dests if d.name not in taken_dests])
        placed: dict[str, _Pair] = {}
        dest_taken: dict[str, _Pair] = {}
        for pair in pairs:
            key = pair.source.display
            if key in placed or pair.dest.name in dest_taken:
                continue
            if pair.score < self.accept:
                self.best_rejected.setdefault(key, []).append(f"{pair.dest.name} {pair.score:.2f}")
                continue
            placed[key] = dest_taken[pair.dest.name] = pair
        for pair in sorted(placed.values(), key=lambda p: sources.index(p.source)):
            alternatives = [f"{p.dest.name} {p.score:.2f}" for p in pairs
                            if p.source is pair.source and p.dest is not pair.dest][:3]
            entry = pair.source.entry(pair.fit)
            self.fields[pair.dest.name] = entry
            self.decisions.append(FieldDecision(self.name, pair.source.display, pair.dest.name, "match",
                                                round(pair.score, 3), pair.reason, pair.fit.transform,
                                                pair.dest.type, alternatives))
            self.values.extend(pair.values)
        self._share_plural_fields(sources, placed)
        self._refined_creates(sources, set(placed))
        self._fill_value_maps()

    def _share_plural_fields(self, sources: list[Source], placed: dict[str, _Pair]) -> None:
        """``phones``/``emails`` hold several numbers or addresses: feed them every matching source."""
        for pair in list(placed.values()):
            if pair.dest.type not in ("phone", "email") or not pair.dest.name.lower().endswith("s"):
                continue
            kind = FieldType.PHONE if pair.dest.type == "phone" else FieldType.EMAIL
            extra = [s for s in sources if not s.custom and s.kind is kind and s.display not in placed
                     and SHAREABLE[pair.dest.type] & profile(s.name).concepts.keys()]
            if not extra:
                continue
            entry = self.fields[pair.dest.name]
            entry["from"] = [entry["from"], *(s.name for s in extra)]
            for s in extra:
                placed[s.display] = pair
                self.decisions.append(FieldDecision(self.name, s.name, pair.dest.name, "match", pair.score,
                                                    f"{pair.dest.name} holds several {pair.dest.type} values",
                                                    pair.fit.transform, pair.dest.type))

    def _refined_creates(self, sources: list[Source], placed: set[str]) -> None:
        """Unplaced money becomes a currency field and an Ascora pick-list a pick-list; the rest is left
        to completion (whose types already keep every value: text, long text, number, date ...)."""
        if self.om.unmapped != "custom_field":
            return
        for source in sources:
            if source.custom or source.display in placed:
                continue
            values = list(dict.fromkeys([*source.choices, *(source.values.distinct or [])]))
            if source.kind is FieldType.DECIMAL and is_money(source.name, source.kind, source.values):
                entry: dict[str, Any] = {"transform": "currency", "from": source.name,
                                         "create": {"type": "currency", "label": f"Ascora {_label(source.name)}"}}
                reason = "money: a currency field keeps the amount and its currency"
                neutral = "currency"
            elif source.kind is FieldType.STRING and source.choices and values:
                entry = {"transform": "value_map", "from": source.name,
                         "values": {v: option_value(v) for v in values},
                         "create": {"type": "picklist", "label": f"Ascora {_label(source.name)}"}}
                reason = f"an Ascora pick-list ({len(values)} values): a pick-list with one option per value"
                neutral = "picklist"
            else:
                continue
            dest = self.unique_name(f"ascora {source.name}")
            self.fields[dest] = entry
            self.decisions.append(FieldDecision(self.name, source.name, dest, "create", 0.9,
                                                self._no_fit(source) + reason, entry["transform"], neutral))
            if neutral == "picklist":
                self.values.extend(ValueDecision(self.name, dest, v, option_value(v), 1.0, "new option",
                                                 source.values.counts.get(v), new_option=True) for v in values)

    def _no_fit(self, source: Source) -> str:
        near = self.best_rejected.get(source.display)
        return f"no existing field fits (closest: {', '.join(near[:2])}); " if near else "no existing field fits; "

    def unique_name(self, label: str) -> str:
        base = self.name_of(label)
        candidate, n = base, 2
        while candidate in self.taken_names:
            candidate, n = f"{base}{n}", n + 1
        self.taken_names.add(candidate)
        return candidate

    def _fill_value_maps(self) -> None:
        """Value maps of the baseline that lack values in use (and have no default) get entries for them."""
        in_use = self.audit.get("picklists", {}).get(self.om.source, {})
        for fm in self.om.fields:
            if fm.transform != "value_map" or fm.default is not None or not fm.sources:
                continue
            counts = (in_use.get(fm.sources[0]) or {}).get("in_use") or {}
            listed = fm.options.get("values") or {}
            # Only values that can reach this map: a `when` on the same field keeps the others out.
            when = self.om.when if self.om.when and self.om.when.field == fm.sources[0] else None
            missing = [v for v in counts if v not in listed and (when is None or when.matches({when.field: v}))]
            if not missing:
                continue
            dest = self.target.fields.get(fm.dest_field) if self.target else None
            options = tuple(dict.fromkeys([*(dest.options if dest else ()), *map(str, listed.values())]))
            entry = self.fields[fm.dest_field]
            for value in missing:
                choice = choose_option(value, options)
                accepted = choice.option is not None and choice.confidence >= CONFIDENT
                self.values.append(ValueDecision(self.name, fm.dest_field, value,
                                                 choice.option if accepted else None, choice.confidence,
                                                 choice.reason if accepted else
                                                 f"{choice.reason}; records with it are quarantined until it is "
                                                 "added to the map or the field gets a default", counts[value]))
                if accepted:
                    entry["values"] = {**entry.get("values", {}), value: choice.option}


def _sources_of(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if spec.get("transform") == "json_key":
        return f"custom_fields[{spec.get('key')}]"
    if spec.get("transform") == "related" and spec.get("object") == "form_response":
        return f"form_response.answers[{spec.get('key')}]"
    sources = spec.get("from")
    if isinstance(sources, list):
        return ", ".join(sources)
    return sources or spec.get("transform", "")


def _transform_of(spec: Any) -> str:
    return "copy" if isinstance(spec, str) else spec.get("transform", "copy")


def propose_mapping(base: Mapping, audit: dict[str, Any], described: dict[str, DestObject], *,
                    field_name: NameFn | None = None, snapshot=None,
                    embedder: EmbeddingSimilarity | None | str = "auto", accept: float = ACCEPT) -> Proposal:
    """Fill the gaps of ``base`` for this tenant and destination; return the completed map and why.

    ``field_name`` is the destination's rule for a new field's API name (the plugin's
    ``custom_field_name``); ``snapshot`` (a staged :class:`~airflow_ascora_provider.source.staging.Snapshot`)
    gives value samples; ``embedder="auto"`` uses the packaged sentence-embedding model when installed.
    """
    from airflow_ascora_provider.destinations.spec import Destination

    name_of = field_name or (lambda label: Destination.custom_field_name(None, label))  # type: ignore[arg-type]
    model = load_packaged_model() if embedder == "auto" else embedder
    if isinstance(model, str):
        raise TypeError(f"embedder must be 'auto', None or an EmbeddingSimilarity, not {model!r}")
    existing = {name: {f for f, d in obj.fields.items() if not d.custom} for name, obj in described.items()}
    document = copy.deepcopy(base.document)
    decisions: list[FieldDecision] = []
    values: list[ValueDecision] = []
    for map_name, om in base.maps.items():
        proposer = _MapProposer(map_name, om, document["maps"][map_name], described.get(om.target), audit,
                                snapshot, model, accept, name_of, existing.get(om.target, set()))
        proposer.run()
        decisions += proposer.decisions
        values += proposer.values
    proposed = load_mapping(document)
    completed = complete_mapping(proposed, audit, name_of, existing, described)
    # Maps completion dropped for this destination (requires_object / unless_object) decide nothing;
    # the summary lists them as dropped instead.
    decisions = [d for d in decisions if d.map in completed.maps]
    values = [v for v in values if v.map in completed.maps]
    decisions += _completion_decisions(proposed, completed, audit, decisions)
    return Proposal(completed, decisions, values, model.name if model is not None else None)


def _completion_decisions(before: Mapping, after: Mapping, audit: dict[str, Any],
                          decisions: list[FieldDecision]) -> list[FieldDecision]:
    """A 'create' decision for every entry completion added, with the type's evidence."""
    near = {(d.map, d.source): d for d in decisions}
    out = []
    for map_name, om in after.maps.items():
        had = {fm.dest_field for fm in before.maps[map_name].fields}
        for fm in om.fields:
            if fm.dest_field in had or fm.create is None:
                continue
            key = fm.options.get("key")
            if fm.transform == "json_key":
                source = f"custom_fields[{key}]"
                info = audit.get("custom_fields", {}).get(om.source, {}).get(key, {})
                kind = info.get("inferred_type", "text")
                confidence = 0.85 if kind != "text" else 0.75
                reason = (f"Ascora custom field, values look like {kind} ({info.get('non_empty', 0)} records); "
                          f"created as {fm.create.type}")
            elif fm.transform == "related":
                source = f"form_response.answers[{key}]"
                reason, confidence = f"Ascora form field code; created as {fm.create.type}", 0.8
            else:
                source = fm.sources[0] if fm.sources else fm.dest_field
                canonical = om.schema.field(source).type if fm.sources else None
                confidence = 0.9
                reason = (f"Ascora {canonical.value} field; {CANONICAL_TO_NEUTRAL.get(canonical, fm.create.type)} "
                          "keeps every value" if canonical else "created")
            prior = near.get((map_name, source))
            if prior is None:
                reason = "no existing field fits; " + reason
            out.append(FieldDecision(map_name, source, fm.dest_field, "create", confidence, reason, fm.transform,
                                     fm.create.type))
    return out


def proposal_markdown(proposal: Proposal, report_url: str | None = None, page_url: str | None = None,
                      limit: int = 12) -> str:
    """The compact review text for the approval form (Markdown; the full report is linked)."""
    summary = mapping_summary(proposal.mapping, proposal.low_confidence())
    summary["low_confidence"] = summary["low_confidence"][:limit]
    stats = proposal.stats()
    lines = [summary_markdown(summary), "",
             f"**Proposer** ({proposal.embedder or 'names, types and values; no language model'}): "
             f"{stats['kept']} entries kept from the baseline, {stats['matched']} matched to existing fields, "
             f"{stats['created']} new fields, {stats['values_mapped']} pick-list values mapped"
             + (f", {stats['values_unmapped']} without an option" if stats["values_unmapped"] else "") + "."]
    matches = proposal.by_action("match")
    if matches:
        lines += ["", "| map | Ascora | → field | confidence | why |", "|---|---|---|---|---|"]
        for d in matches[:limit]:
            lines.append(f"| {d.map} | {d.source} | {d.dest} | {d.confidence:.2f} | {d.reason.split(';')[0]} |")
        if len(matches) > limit:
            lines.append(f"| … | {len(matches) - limit} more in the report | | | |")
    mapped = [v for v in proposal.values if not v.new_option and v.option is not None]
    if mapped:
        lines += ["", "**Pick-list values**: " + ", ".join(
            f"{v.map}.{v.dest}: {v.value} → {v.option} ({v.confidence:.2f})" for v in mapped[:limit])
            + (" …" if len(mapped) > limit else "")]
    links = [(f"[full proposal report]({report_url})" if report_url else ""),
             (f"[migration reports page]({page_url})" if page_url else "")]
    if any(links):
        lines += ["", " · ".join(link for link in links if link)]
    lines += ["", ("Approve to use this map; or paste an edited YAML (or give the path of an uploaded file) "
                   "below and approve that instead.")]
    return "\n".join(lines)


def proposal_sections(proposal: Proposal):
    """The proposal as report sections (HTML/JSON through :mod:`airflow_ascora_provider.reports.render`)."""
    from airflow_ascora_provider.reports.render import Section, Table

    stats = proposal.stats()
    matches = proposal.by_action("match")
    creates = proposal.by_action("create")
    return [
        Section("Proposal", facts={**stats, "embedding model": proposal.embedder or "none",
                                   "mapping hash": proposal.mapping.hash[:12]},
                verdict="warn" if stats["low_confidence"] else "ok"),
        Section("Matched to existing destination fields", text="Ascora fields placed in fields the destination "
                "already has. Check the low-confidence ones.",
                tables=[Table(["map", "Ascora field", "destination field", "type", "transform", "confidence",
                               "why", "other candidates"],
                              [[d.map, d.source, d.dest, d.dest_type, d.transform, d.confidence, d.reason,
                                ", ".join(d.alternatives)] for d in matches])]),
        Section("New custom fields", tables=[Table(
            ["map", "Ascora field", "new field", "type", "transform", "confidence", "why"],
            [[d.map, d.source, d.dest, d.dest_type, d.transform, d.confidence, d.reason] for d in creates])]),
        Section("Pick-list values", tables=[Table(
            ["map", "field", "Ascora value", "destination option", "records", "confidence", "why"],
            [[v.map, v.dest, v.value, v.option, v.records, v.confidence,
              ("new option; " if v.new_option else "") + v.reason] for v in proposal.values])],
                verdict="warn" if any(v.option is None for v in proposal.values) else "ok"),
        Section("Low confidence", tables=[Table(["check this"], [[x] for x in proposal.low_confidence()])],
                verdict="warn" if proposal.low_confidence() else "ok"),
        Section("Kept from the baseline", tables=[Table(
            ["map", "destination field", "from", "transform"],
            [[d.map, d.dest, d.source, d.transform] for d in proposal.by_action("keep")], limit=300)]),
    ]
