"""Pick-list values one by one: an Ascora value (a job status and its synonyms) to a destination option.

Three kinds of evidence, strongest first: the same words (``In Progress`` and ``IN_PROGRESS``), the
same stage of the work (``Completed`` and ``Closed Won``, ``Sent To Customer`` and ``Proposal``),
and close spelling. A value nothing fits is reported, never guessed: either the destination can take
a new option (a custom pick-list) or the reviewer decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz

# Stages of a trade job's life, with how surely each phrase means that stage.
STAGES: dict[str, dict[str, float]] = {
    "new": {"new": 1, "open": 0.8, "unscheduled": 0.9, "not started": 1, "draft": 0.9, "pending": 0.8,
            "prospecting": 0.8, "qualification": 0.7, "lead": 0.6, "enquiry": 0.7, "screening": 0.7, "todo": 0.9,
            "to do": 0.9},
    "scheduled": {"booked": 1, "scheduled": 1, "planned": 0.9, "meeting": 0.7, "appointment": 0.8,
                  "needs analysis": 0.5},
    "in_progress": {"in progress": 1, "started": 0.9, "active": 0.7, "working": 0.8, "underway": 0.9,
                    "ongoing": 0.9, "value proposition": 0.4, "id decision makers": 0.4},
    "on_hold": {"on hold": 1, "deferred": 1, "waiting": 0.9, "paused": 0.9, "parts ordered": 0.8,
                "postponed": 0.9, "waiting on customer": 1, "on hold parts": 1},
    "proposal": {"quoted": 1, "sent": 0.8, "sent to customer": 1, "proposal": 1, "quote sent": 1,
                 "presented": 0.8, "negotiation": 0.7, "proposal price quote": 1, "perception analysis": 0.4,
                 "negotiation review": 0.7},
    "won": {"won": 1, "accepted": 1, "closed won": 1, "approved": 0.8, "customer": 0.7, "completed": 0.8,
            "closed": 0.6, "ready to invoice": 0.6, "invoiced": 0.6},
    "lost": {"lost": 1, "declined": 1, "closed lost": 1, "rejected": 1, "cancelled": 0.7},
    "done": {"completed": 1, "complete": 1, "done": 1, "finished": 1, "closed": 1},
    "invoicing": {"ready to invoice": 1, "invoiced": 1, "invoice sent": 1, "to invoice": 1, "billed": 0.9},
    "cancelled": {"cancelled": 1, "canceled": 1, "void": 0.9, "abandoned": 0.9, "closed lost": 0.6},
    "paid": {"paid": 1, "settled": 1, "fully paid": 1},
    "unpaid": {"unpaid": 1, "not paid": 1, "outstanding": 0.9, "due": 0.7},
    "part_paid": {"part paid": 1, "partially paid": 1, "partial": 0.9, "part payment": 1},
    "overdue": {"overdue": 1, "late": 0.8, "past due": 1},
}
EXACT, STAGE_WEIGHT, FUZZY_FLOOR = 1.0, 0.85, 0.85


def normalise(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", value.casefold()).strip()


def option_value(value: str) -> str:
    """A new option's API value in the form CRMs accept everywhere: ``Fixed-Price`` -> ``FIXED_PRICE``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", value).strip("_").upper() or "EMPTY"


def _stages(text: str) -> dict[str, float]:
    words = normalise(text)
    found: dict[str, float] = {}
    for stage, phrases in STAGES.items():
        weight = phrases.get(words, 0.0)
        if not weight:  # "On Hold - Parts" still says "on hold"
            weight = max((w * 0.9 for p, w in phrases.items() if len(p) > 3 and re.search(rf"\b{p}\b", words)),
                         default=0.0)
        if weight:
            found[stage] = weight
    return found


@dataclass(frozen=True)
class OptionChoice:
    option: str | None
    confidence: float
    reason: str


def choose_option(value: str, options: tuple[str, ...] | list[str]) -> OptionChoice:
    """The destination option that means ``value``, or None with the reason nothing fits."""
    if not options:
        return OptionChoice(None, 0.0, "the destination field has no options yet")
    wanted = normalise(value)
    for option in options:
        if normalise(option) == wanted:
            return OptionChoice(option, EXACT, "same value")
    value_stages = _stages(value)
    best: tuple[float, str, str] | None = None
    for option in options:
        option_stages = _stages(option)
        shared = value_stages.keys() & option_stages.keys()
        if shared:
            stage = max(shared, key=lambda s: min(value_stages[s], option_stages[s]))
            score = STAGE_WEIGHT * min(value_stages[stage], option_stages[stage])
            if best is None or score > best[0]:
                best = (score, option, f"same stage ({stage.replace('_', ' ')})")
    fuzzy = max(((fuzz.WRatio(wanted, normalise(o)) / 100.0, o) for o in options), key=lambda x: x[0])
    if fuzzy[0] >= FUZZY_FLOOR and (best is None or 0.9 * fuzzy[0] > best[0]):
        best = (0.9 * fuzzy[0], fuzzy[1], f"similar spelling ({fuzzy[0]:.0%})")
    if best is None:
        return OptionChoice(None, 0.0, "no option has the same words or the same stage")
    return OptionChoice(best[1], round(best[0], 3), best[2])
