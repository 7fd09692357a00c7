"""Freshsales plan tiers: API rate limits and custom-field caps, and the checks built on them.

Why a table of its own: the plan decides two things before a single record moves. How many custom
fields of each type an entity may hold (custom fields cannot be created through the API, so a map
that needs more than the plan allows can only fail, and should fail up front, naming the fields
that will not fit), and how many API calls an hour the whole account gets (which decides how long
the load takes, and when it must pause). The hook paces and budgets with it, the plugin checks the
schema plan and estimates the load with it, and the emulator enforces the caps when an "admin"
creates fields.

Sources (see the API fact sheet, sections 1.4 and 1.6):

* Hourly limits per account [VENDOR-KB]: Free 1000, Growth 1000, Pro 2000, Enterprise 5000; legacy
  Sprout none, Blossom and Garden 1000, Estate 2000, Forest 5000. Per minute: 400 on paid plans.
* Custom-field caps per entity (contacts, accounts, deals, each custom module), per field type
  [VENDOR-KB] for Free/Growth/Pro/Enterprise. The legacy plans publish only a total per entity
  (0/10/150/305/450; 310 for custom modules), so for them only the total is checked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Freshsales custom field types, as ``/settings/<entity>/fields`` reports them, grouped the way the
#: plan table counts them ("Dropdown / Radio" share one cap).
CAP_GROUPS = {
    "text": "text",
    "textarea": "textarea",
    "dropdown": "dropdown",
    "radio": "dropdown",
    "multi_select_dropdown": "multi_select",
    "number": "number",
    "checkbox": "checkbox",
    "date": "date",
    "lookup": "lookup",
    "formula": "formula",
}
CAP_LABELS = {
    "text": "Text field", "dropdown": "Dropdown / Radio", "textarea": "Text area", "multi_select": "Multi-select",
    "number": "Number", "checkbox": "Checkbox", "date": "Date picker", "lookup": "Lookup", "formula": "Formula",
}

#: Neutral mapping type (``create.type``) → the Freshsales custom field type an admin creates.
#: Freshsales has no custom e-mail, phone, URL, address or rich-text type: those become text or text
#: area; datetimes become date pickers (the time of day is lost, and the plan says so as "lossy").
FIELD_TYPE_FOR = {
    "text": "text", "email": "text", "phone": "text", "url": "text",
    "long_text": "textarea", "rich_text": "textarea", "address": "textarea", "full_name": "text",
    "number": "number", "currency": "number",
    "date": "date", "datetime": "date",
    "boolean": "checkbox",
    "picklist": "dropdown", "multi_picklist": "multi_select_dropdown",
    "lookup": "lookup",
}


@dataclass(frozen=True)
class Plan:
    """One Freshsales plan tier."""

    name: str
    label: str
    requests_per_hour: int | None  # None: the plan has no API access
    requests_per_minute: int
    caps: Mapping[str, int] | None  # per cap group and entity; None when only a total is published
    total: int  # custom fields per entity
    custom_module_total: int | None = None  # legacy plans publish a separate total for custom modules

    def cap_for(self, group: str) -> int | None:
        return None if self.caps is None else self.caps.get(group, 0)

    def total_for(self, entity_is_custom_module: bool) -> int:
        if entity_is_custom_module and self.custom_module_total is not None:
            return self.custom_module_total
        return self.total


def _caps(text, dropdown, textarea, multi, number, checkbox, date, lookup, formula) -> dict[str, int]:
    return {"text": text, "dropdown": dropdown, "textarea": textarea, "multi_select": multi, "number": number,
            "checkbox": checkbox, "date": date, "lookup": lookup, "formula": formula}


PLANS: dict[str, Plan] = {p.name: p for p in (
    Plan("free", "Free", 1000, 400, _caps(0, 0, 0, 0, 0, 0, 0, 0, 0), 0),
    Plan("growth", "Growth", 1000, 400, _caps(20, 30, 5, 5, 30, 30, 30, 0, 0), 150),
    Plan("pro", "Pro", 2000, 400, _caps(30, 40, 10, 10, 50, 50, 50, 10, 40), 250),
    Plan("enterprise", "Enterprise", 5000, 400, _caps(70, 250, 20, 30, 70, 70, 70, 50, 40), 630),
    Plan("sprout", "Sprout (legacy)", None, 400, None, 0, 0),
    Plan("blossom", "Blossom (legacy)", 1000, 400, None, 10, 10),
    Plan("garden", "Garden (legacy)", 1000, 400, None, 150, 310),
    Plan("estate", "Estate (legacy)", 2000, 400, None, 305, 310),
    Plan("forest", "Forest (legacy)", 5000, 400, None, 450, 310),
)}
DEFAULT_PLAN = "growth"


class UnknownPlan(ValueError):
    pass


def get_plan(name: str | None) -> Plan:
    key = (name or DEFAULT_PLAN).strip().lower()
    try:
        return PLANS[key]
    except KeyError:
        raise UnknownPlan(f"unknown Freshsales plan {name!r}; one of: {', '.join(PLANS)}") from None


@dataclass(frozen=True)
class PlannedField:
    """A custom field the mapping needs on one Freshsales entity, existing or still to create."""

    entity: str  # the mapping's target name (sales_account, deal, equipment ...)
    name: str
    fs_type: str  # Freshsales field type
    exists: bool
    custom_module: bool = False


@dataclass
class FitReport:
    """How the custom fields the mapping needs fit the plan: one problem per entity and cap that overflows."""

    plan: Plan
    usage: dict[str, Counter] = field(default_factory=dict)  # entity → cap group → fields used
    problems: list[str] = field(default_factory=list)
    wont_fit: dict[str, list[str]] = field(default_factory=dict)  # entity → the new fields that overflow

    @property
    def ok(self) -> bool:
        return not self.problems


def check_fit(plan: Plan, fields: Iterable[PlannedField]) -> FitReport:
    """Count custom fields per entity and type (existing first, then new ones) against the plan's caps.

    Existing fields are counted before new ones because they already take their slots; the new fields
    past a cap are the ones that "will not fit", named so the reviewer can drop or retype them.
    """
    report = FitReport(plan)
    by_entity: dict[str, list[PlannedField]] = {}
    for f in fields:
        by_entity.setdefault(f.entity, []).append(f)
    for entity, items in sorted(by_entity.items()):
        items = sorted(items, key=lambda f: (not f.exists, f.name))
        module = any(f.custom_module for f in items)
        groups: Counter = Counter()
        overflow_by_group: dict[str, list[str]] = {}
        total_overflow: list[str] = []
        used = 0
        for f in items:
            group = CAP_GROUPS.get(f.fs_type, "text")
            groups[group] += 1
            used += 1
            cap = plan.cap_for(group)
            if cap is not None and groups[group] > cap and not f.exists:
                overflow_by_group.setdefault(group, []).append(f.name)
            elif used > plan.total_for(module) and not f.exists:
                total_overflow.append(f.name)
        report.usage[entity] = groups
        for group, names in overflow_by_group.items():
            cap = plan.cap_for(group)
            report.problems.append(
                f"{entity}: the {plan.label} plan allows {cap} {CAP_LABELS[group]} custom field(s) per "
                f"entity; the mapping needs {groups[group]}. Will not fit: {', '.join(names)}")
            report.wont_fit.setdefault(entity, []).extend(names)
        if total_overflow:
            report.problems.append(
                f"{entity}: the {plan.label} plan allows {plan.total_for(module)} custom field(s) per "
                f"{'custom module' if module else 'entity'}; the mapping needs {used}. Will not fit: "
                f"{', '.join(total_overflow)}")
            report.wont_fit.setdefault(entity, []).extend(total_overflow)
    return report


@dataclass(frozen=True)
class LoadEstimate:
    """Calls a load needs and how long they take at the plan's hourly and per-minute limits."""

    plan: str
    calls: int
    calls_per_target: dict[str, int]
    requests_per_hour: int
    requests_per_minute: int
    seconds: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "calls": self.calls, "calls_per_target": self.calls_per_target,
                "requests_per_hour": self.requests_per_hour, "requests_per_minute": self.requests_per_minute,
                "seconds": round(self.seconds, 1), "hours": round(self.hours, 2)}


def duration_for(calls: int, per_hour: int, per_minute: int) -> float:
    """Wall-clock seconds for ``calls`` requests when at most ``per_hour`` fit in an hour window and
    ``per_minute`` in a minute: full hours for every exhausted hourly budget, then the remainder at
    the per-minute pace."""
    if calls <= 0:
        return 0.0
    if per_hour <= 0:
        return math.inf
    full_hours, rest = divmod(calls, per_hour)
    if rest == 0:
        full_hours, rest = full_hours - 1, per_hour
    return full_hours * 3600.0 + rest * 60.0 / per_minute
