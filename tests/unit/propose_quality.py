"""Measuring the mapping proposer against the labelled Ascora -> destination pairs.

Each file in ``tests/data/labelled_pairs/`` names object pairs (Ascora object -> destination object)
and, per pair, the destination field each Ascora field belongs in (``null``: none, a new custom field
is right). For every pair the proposer gets a bare map (no entries, ``unmapped: custom_field``, custom
fields expanded) and the destination schema; each Ascora field it places is compared with the label:

* true positive: placed in the labelled field;
* false positive: placed in another field, or placed where the label says "no standard field";
* false negative: a labelled field the proposer did not place it in.

precision = TP / (TP + FP), recall = TP / (TP + FN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LABELLED = Path(__file__).resolve().parents[1] / "data" / "labelled_pairs"
DESTINATIONS = ("twenty", "salesforce", "dynamics365", "freshsales", "zoho")


def load_labelled(destination: str) -> dict[str, Any]:
    return yaml.safe_load((LABELLED / f"{destination}.yaml").read_text(encoding="utf-8"))


def fixture_schema(document: dict[str, Any]):
    """The labelled file's ``schema:`` as ``describe_schema()`` would return it."""
    from airflow_ascora_provider.destinations.spec import DestField, DestObject

    described = {}
    for name, obj in document["schema"].items():
        fields = {}
        for fname, spec in obj["fields"].items():
            spec = {"type": spec} if isinstance(spec, str) else dict(spec)
            fields[fname] = DestField(fname, spec["type"], options=tuple(spec.get("options", ())),
                                      read_only=spec.get("read_only", False), custom=spec.get("custom", False),
                                      lookup_target=spec.get("lookup_target"))
        described[name] = DestObject(name, obj.get("label", name), fields=fields)
    return described


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    mistakes: list[str] = field(default_factory=list)

    def add(self, other: Score) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        self.mistakes += other.mistakes

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def candidates(source: str, audit: dict[str, Any]) -> list[str]:
    """Every Ascora field a map of ``source`` could place: canonical fields and the tenant's custom fields."""
    from airflow_ascora_provider.mapping.complete import NEVER_EXPANDED
    from airflow_ascora_provider.source.model import get_object

    schema = get_object(source)
    names = [f.name for f in schema.fields if f.name not in NEVER_EXPANDED and not schema.relation_for(f.name)]
    return names + [f"custom_fields[{cf}]" for cf in audit.get("custom_fields", {}).get(source, {})]


def evaluate(document: dict[str, Any], described, audit: dict[str, Any], snapshot, embedder=None) -> Score:
    from airflow_ascora_provider.mapping.propose import propose_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.source.model import get_object

    total = Score()
    for i, pair in enumerate(document["pairs"]):
        source = pair["source"]
        raw_map: dict[str, Any] = {"source": source, "target": pair["target"], "unmapped": "custom_field"}
        if get_object(source).has_field("custom_fields"):
            raw_map["expand"] = ["custom_fields"]
        base = load_mapping({"destination": document["destination"], "maps": {f"pair{i}": raw_map}})
        proposal = propose_mapping(base, audit, described, snapshot=snapshot, embedder=embedder)
        predicted: dict[str, str] = {}
        for decision in proposal.by_action("match"):
            for name in decision.source.split(", "):
                predicted[name] = decision.dest
        labels = pair["fields"]
        score = Score()
        for name in candidates(source, audit):
            want, got = labels.get(name), predicted.get(name)
            if got is not None and got == want:
                score.tp += 1
                continue
            if got is not None:
                score.fp += 1
                score.mistakes.append(f"{source}.{name} -> {got} (label: {want})")
            if want is not None:
                score.fn += 1
                if got is None:
                    score.mistakes.append(f"{source}.{name} -> nothing (label: {want})")
        total.add(score)
    return total
