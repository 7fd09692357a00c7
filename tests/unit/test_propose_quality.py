"""Precision and recall of the mapping proposer on the labelled pairs of every destination.

Run with ``-s`` to see the table (the figures in docs/mapping.md come from it):

    .venv/bin/python -m pytest -q -s tests/unit/test_propose_quality.py

The proposer sees a staged snapshot of a generated tenant (so value evidence is real) and, per
destination, the schema from the labelled file (derived from the reference sheets) or, for Twenty,
the live plugin's ``describe_schema()`` against the Twenty emulator. No language model is used: the
figures are what every installation gets.
"""

from __future__ import annotations

import pytest

from tests.unit.propose_quality import DESTINATIONS, Score, evaluate, fixture_schema, load_labelled

# What the proposer must keep reaching (the measured figures are higher; see docs/mapping.md).
MIN_PRECISION = 0.88
MIN_RECALL = 0.88
MIN_OVERALL = 0.92


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A small generated tenant, extracted through the Ascora emulator, and its audit."""
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.generate import generate_tenant
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    folder = tmp_path_factory.mktemp("quality")
    generate_tenant(folder / "tenant", size=300, seed=5)
    snapshot = Snapshot(folder / "staging", "s1")
    with ServedApp(ascora_app(folder / "tenant")) as ascora:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                           enable_extensions=True)), snapshot)
    return snapshot, audit_snapshot(snapshot)


@pytest.fixture(scope="module")
def schemas():
    """Per destination: the fixture schema, or the live plugin's description where it is declared live."""
    from airflow_ascora_provider.destinations.twenty.plugin import TwentyDestination
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app

    out = {}
    for destination in DESTINATIONS:
        document = load_labelled(destination)
        if document["schema"] == "live":
            assert destination == "twenty", "only the Twenty plugin is described live here"
            with ServedApp(twenty_app(rate_limit=100_000)) as twenty:
                out[destination] = TwentyDestination(base_url=twenty.url, api_key="twenty-sandbox-key",
                                                     requests_per_minute=0).describe_schema()
        else:
            out[destination] = fixture_schema(document)
    return out


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_labelled_sets_name_real_fields(destination, schemas):
    from airflow_ascora_provider.source.model import get_object

    document = load_labelled(destination)
    described = schemas[destination]
    for pair in document["pairs"]:
        source = get_object(pair["source"])
        target = described[pair["target"]]
        for name, dest in pair["fields"].items():
            if not name.startswith("custom_fields["):
                assert source.has_field(name), f"{destination}: {pair['source']} has no field {name}"
            if dest is not None:
                assert dest in target.fields, f"{destination}: {pair['target']} has no field {dest}"
                assert target.fields[dest].type not in ("lookup", "system"), dest
                assert not target.fields[dest].read_only, dest


def test_precision_and_recall_per_destination(staged, schemas):
    snapshot, audit = staged
    overall = Score()
    lines = [f"{'destination':<13} {'pairs':>5} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>10} {'recall':>7}"]
    results = {}
    for destination in DESTINATIONS:
        document = load_labelled(destination)
        score = evaluate(document, schemas[destination], audit, snapshot)
        results[destination] = score
        overall.add(score)
        lines.append(f"{destination:<13} {len(document['pairs']):>5} {score.tp:>4} {score.fp:>4} {score.fn:>4} "
                     f"{score.precision:>10.2f} {score.recall:>7.2f}")
    lines.append(f"{'all':<13} {'':>5} {overall.tp:>4} {overall.fp:>4} {overall.fn:>4} "
                 f"{overall.precision:>10.2f} {overall.recall:>7.2f}")
    print("\nMapping proposer against the labelled pairs (no language model):\n" + "\n".join(lines))
    print("Disagreements with the labels:\n  " + "\n  ".join(overall.mistakes))
    for destination, score in results.items():
        assert score.precision >= MIN_PRECISION, (destination, score.mistakes)
        assert score.recall >= MIN_RECALL, (destination, score.mistakes)
    assert overall.precision >= MIN_OVERALL and overall.recall >= MIN_OVERALL, overall.mistakes
