"""A value the destination holds once (a person's e-mail in Twenty and Freshsales) is kept by the
record that comes first in staging order, whatever order the map's units run in.

Left to the destination, whichever record was written first would win, and on several Celery workers
that depends on timing. The rule (``unique: true`` on the field in the mapping) decides before
anything is sent: the first record keeps the value, every later one is quarantined naming the value
and the record that keeps it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.integration.test_transform_chunks import _context


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """A tenant whose customers and contacts reuse e-mails, as real ones do (the generator's seed 5 at
    3,000 records shares several within one map)."""
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    from airflow_ascora_provider.sandbox.generate import generate_tenant

    tenant = tmp_path_factory.mktemp("unique-tenant")
    generate_tenant(tenant, size=3000, seed=5)
    staging = tmp_path_factory.mktemp("unique-staging")
    with ServedApp(ascora_app(tenant)) as ascora:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                           enable_extensions=True)), Snapshot(staging, "s1"))
    return staging


def _shared_emails(ctx, om) -> dict[str, list[str]]:
    """The test's own reading of staging: e-mail (no case, no spaces) → ids of the map's records holding
    it, in staging order, where more than one does."""
    holders: dict[str, list[str]] = defaultdict(list)
    for record in ctx.snapshot.iter_records(om.source):
        if om.when is not None and not om.when.matches(record, ctx.as_of):
            continue
        email = (record.get("email") or "").strip().casefold()
        if email:
            holders[email].append(record["id"])
    return {e: ids for e, ids in holders.items() if len(ids) > 1}


@pytest.mark.parametrize("destination", ["twenty", "freshsales"])
def test_the_first_record_keeps_a_shared_email_whatever_order_units_run_in(destination, snapshot, tmp_path):
    from airflow_ascora_provider.engine.transform import BatchTransformer

    ctx = _context(snapshot, tmp_path, destination)
    tested = 0
    for om in ctx.mapping.maps.values():
        if not [fm for fm in om.fields if fm.options.get("unique")]:
            continue
        shared = _shared_emails(ctx, om)
        records = list(ctx.snapshot.iter_records(om.source))
        half = len(records) // 2

        def run(units, om=om):
            kept, quarantined = set(), {}
            for unit in units:  # each unit a task of its own: a fresh transformer, as on another worker
                outcome = BatchTransformer(ctx, om).transform(unit)
                kept |= {r.source_id for r in outcome.records}
                quarantined |= {q.source_id: q for q in outcome.quarantined}
            return kept, quarantined

        kept, quarantined = run([records[:half], records[half:]])
        other_order = run([records[half:], records[:half]])
        assert (kept, quarantined.keys()) == (other_order[0], other_order[1].keys()), om.name

        for email, ids in shared.items():
            tested += 1
            first, later = ids[0], ids[1:]
            assert first in kept or first in quarantined, (om.name, first)
            for other in later:
                assert other not in kept, (om.name, other, email)
                entry = quarantined[other]
                if entry.field == "email":
                    assert entry.value == email and f"{om.source} {first}," in entry.reason, entry
                    assert "unique in the mapping" in entry.reason, entry
    assert tested, "no map of this tenant shares an e-mail: the test proves nothing"


def test_the_rule_is_read_from_the_mapping_only(snapshot, tmp_path):
    """A map whose e-mail field is not marked ``unique`` sends every record: the destination decides."""
    from airflow_ascora_provider.engine.transform import BatchTransformer

    ctx = _context(snapshot, tmp_path, "dynamics365")
    om = ctx.mapping.maps["contact"]
    assert not [fm for fm in om.fields if fm.options.get("unique")]
    records = list(ctx.snapshot.iter_records(om.source))
    outcome = BatchTransformer(ctx, om).transform(records)
    assert not [q for q in outcome.quarantined if "unique in the mapping" in q.reason]


def test_the_first_holders_are_worked_out_once_per_snapshot_and_kept_for_later_tasks(snapshot, tmp_path, monkeypatch):
    """Each load unit is a task of its own; the pass over the map's whole source is made by the first
    one, and the others read its answer from the snapshot, unless what the answer depends on changed."""
    from airflow_ascora_provider.engine.transform import USERS_WATERMARK, BatchTransformer

    ctx = _context(snapshot, tmp_path, "twenty")
    shared = [(om, held) for om in ctx.mapping.maps.values() if any(fm.options.get("unique") for fm in om.fields)
              if any((held := BatchTransformer(ctx, om).first_holders()).values())]
    assert shared, "no map shares a unique value: the test proves nothing"
    om, first = shared[0]
    kept = ctx.snapshot._derived_path(BatchTransformer(ctx, om)._first_holders_name(), ".json")
    assert kept.exists()

    passes = []
    real = BatchTransformer._find_first_holders
    monkeypatch.setattr(BatchTransformer, "_find_first_holders", lambda self: passes.append(self) or real(self))
    assert BatchTransformer(ctx, om).first_holders() == first
    assert passes == []  # read, not worked out again

    kept.write_text('{"email": {"a@')  # a damaged file is not trusted: worked out again
    assert BatchTransformer(ctx, om).first_holders() == first
    assert len(passes) == 1 and kept.read_text().startswith('{"')

    # Other users resolved (a fresh user-resolution step): another answer may hold, worked out anew.
    ctx.ledger.set_watermark(ctx.destination_name, USERS_WATERMARK, '{"by_name": {}}')
    assert BatchTransformer(ctx, om).first_holders() == first
    assert len(passes) == 2
