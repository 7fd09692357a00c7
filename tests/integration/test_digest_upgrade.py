"""A ledger written by a release before the current digest still tells which records changed.

Payload digests are kept in the crosswalk of every ledger. The digest changed its way once (the
payload's values joined under the hash of its keys, ``2:`` first, where the first way hashed the
whole canonical JSON); a migration upgraded between its full load and a delta must not rewrite the
tenant. Here a full load's entries are given the digests the earlier release made of the same
payloads, then the load runs again.
"""

from __future__ import annotations

from tests.bench.harness import recording
from tests.integration.test_engine_twenty import _setup


def test_a_ledger_of_first_way_digests_rewrites_nothing_and_is_brought_to_the_new_way(small_tenant, tmp_path,
                                                                                      monkeypatch):
    from airflow_ascora_provider.engine import load
    from airflow_ascora_provider.engine.context import DIGEST_PREFIX, is_digest_v1, payload_hash_v1
    from airflow_ascora_provider.engine.runner import load_everything

    ctx, ascora, twenty, _, _ = _setup(small_tenant, tmp_path)
    try:
        with recording(ctx) as first:
            load_everything(ctx)
        sent = {(batch.target, record.source_id): record.payload for batch in first.sent for record in batch.records}
        entries = list(ctx.ledger.iter_crosswalk("twenty"))
        assert entries and all(entry.payload_hash.startswith(DIGEST_PREFIX) for entry in entries)
        # What Twenty refused (a second person with an e-mail taken) has no entry: every run sends it again.
        refused = set(sent) - {(entry.target_object, entry.source_id) for entry in entries}

        # The ledger as the earlier release left it: each entry's digest made the first way.
        by_object: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for entry in entries:
            payload = sent[(entry.target_object, entry.source_id)]
            by_object.setdefault((entry.source_object, entry.target_object), []).append(
                (entry.source_id, entry.payload_hash, payload_hash_v1(payload)))
        # One record changed since: its entry holds the digest of another payload.
        changed = entries[len(entries) // 2]
        rows = by_object[(changed.source_object, changed.target_object)]
        rows[:] = [(sid, held, payload_hash_v1({"stale": True}) if sid == changed.source_id else old)
                   for sid, held, old in rows]
        for (source_object, target_object), rows in by_object.items():
            assert ctx.ledger.crosswalk_redigest("twenty", source_object, target_object, rows) == len(rows)
        assert all(is_digest_v1(entry.payload_hash) for entry in ctx.ledger.iter_crosswalk("twenty"))

        ctx.ledger.start_run("run-2", destination="twenty", kind="full", mapping_hash=ctx.mapping.hash)
        ctx.run_id = "run-2"
        with recording(ctx) as second:
            stats = load_everything(ctx)
        rewritten = [(batch.target, record.source_id) for batch in second.sent for record in batch.records]
        assert sorted(rewritten) == sorted(refused | {(changed.target_object, changed.source_id)})
        assert sum(s.updated for s in stats.values()) == 1 and sum(s.created for s in stats.values()) == 0
        assert sum(s.unchanged for s in stats.values()) == len(entries) - 1
        after = list(ctx.ledger.iter_crosswalk("twenty"))
        assert len(after) == len(entries)
        assert all(entry.payload_hash.startswith(DIGEST_PREFIX) for entry in after)

        # Brought to the new way: the next run compares by digest alone, never the first way.
        def first_way_asked(payload):
            raise AssertionError("an entry was compared by the first way's digest again")

        monkeypatch.setattr(load, "payload_hash_v1", first_way_asked)
        ctx.ledger.start_run("run-3", destination="twenty", kind="full", mapping_hash=ctx.mapping.hash)
        ctx.run_id = "run-3"
        with recording(ctx) as third:
            stats = load_everything(ctx)
        assert {(batch.target, record.source_id) for batch in third.sent for record in batch.records} == refused
        assert sum(s.unchanged for s in stats.values()) == len(entries)
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()
