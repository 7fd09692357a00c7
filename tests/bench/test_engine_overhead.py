"""Benchmark: what the engine costs on top of the API calls it makes.

Three fresh emulators of the same destination, in their own processes, unthrottled:

1. a recording run through the engine captures every batch exactly as it went out (untimed);
2. the *bare loop* sends those batches, in the same order, with the same plugin and settings, to a
   second emulator: nothing but ``write_batch`` calls (parent ids and owners are translated to the
   second emulator's ids between calls, outside the timing);
3. the *engine* loads the same snapshot into a third emulator: transform, payload hashes, crosswalk
   look-ups, write intents, the write, crosswalk + audit rows, quarantine, all against a real ledger.

The ratio engine / bare loop is the engine's overhead. Both legs run in the same process, one after
the other, so they see the same machine. Target: at most 1.15x.

Both emulators answer each call after :data:`SERVICE_TIME`, the low end of what a CRM's API takes for
a batch write. An emulator answering in a millisecond makes the bare loop a measure of the HTTP
client alone, against which any bookkeeping at all is a large ratio; no CRM answers that fast. The
engine's own cost per batch, which does not depend on the service time, is printed beside the ratio
and held under :data:`MAX_ENGINE_MS_PER_BATCH` so that a slower engine cannot hide behind slow calls.

CI loads a 2,000-record tenant on SQLite; ``make bench`` a 20,000-record one on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.bench.harness import FULL, bench_root, emulator_for, fmt_table, prepare_migration, recording, staged, \
    target_params

SIZE = 20_000 if FULL else 2_000
TARGET_RATIO = 1.15
# 50 ms a call plus 2 ms a KiB sent or received: a 60-record Twenty batch (~40 KiB) answers in about
# 0.13 s, a 200-record Salesforce collection in about 0.3 s. Real orgs answer such writes in 0.2-2 s,
# so this is the strict end (the faster the API, the larger the engine's share).
SERVICE_TIME = (0.05, 0.002)
MAX_ENGINE_MS_PER_BATCH = 150  # CI measures 10-75 ms (docs/performance.md)
LEDGERS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)] if FULL else ["sqlite"]


def _remap(value: Any, ids: dict[str, str], users: dict[str, str]) -> Any:
    from airflow_ascora_provider.mapping.values import AttachTo, DestRef, UserRef

    if isinstance(value, DestRef):
        return DestRef(value.target_object, ids[value.dest_id])
    if isinstance(value, AttachTo):
        return AttachTo(tuple(_remap(ref, ids, users) for ref in value.refs))
    if isinstance(value, UserRef):
        return UserRef(users[value.user_id], value.fallback)
    return value


def _bare_loop(dest, sent, users: dict[str, str]) -> tuple[float, int]:
    """Send the recorded batches; returns (seconds spent inside write_batch, records written)."""
    from airflow_ascora_provider.destinations.spec import OutgoingRecord

    ids: dict[str, str] = {}
    seconds, written = 0.0, 0
    for batch in sent:
        # A map that updates existing users (Salesforce's staff roles) sends the first org's User ids.
        records = [OutgoingRecord(r.source_id, {k: _remap(v, ids, users) for k, v in r.payload.items()},
                                  (ids.get(r.dest_id) or users.get(r.dest_id)) if r.dest_id else None)
                   for r in batch.records]
        started = time.perf_counter()
        results = dest.write_batch(batch.target, records, batch.key_field)
        seconds += time.perf_counter() - started
        for first, again in zip(batch.results, results):
            if first.ok and again.ok:
                ids[first.dest_id] = again.dest_id
                written += 1
    return seconds, written


def _users(dest) -> dict[str, str]:
    return {u.email.casefold(): u.id for u in dest.list_users()}


@pytest.mark.timeout(3600 if FULL else 600)
@pytest.mark.parametrize("ledger_url", LEDGERS, indirect=True)
@pytest.mark.parametrize("row", target_params())
def test_engine_overhead_against_a_bare_loop(row, ledger_url, tmp_path_factory, tmp_path):
    from airflow_ascora_provider.engine.runner import load_everything

    url, schema = ledger_url
    folder, staging, snapshot_id = staged(bench_root(tmp_path_factory), SIZE)

    with emulator_for(row, folder, None) as first:
        ctx = prepare_migration(row, staging, snapshot_id, f"sqlite:///{tmp_path / 'recording.sqlite'}", first.url)
        try:
            with recording(ctx) as recorder:
                load_everything(ctx)
            first_users = {v: k for k, v in _users(ctx.destination).items()}
        finally:
            ctx.close()
    sent = recorder.sent

    with emulator_for(row, folder, None) as second:
        second.set_service_time(*SERVICE_TIME)
        bare_ctx = prepare_migration(row, staging, snapshot_id, f"sqlite:///{tmp_path / 'bare.sqlite'}", second.url)
        try:
            by_email = _users(bare_ctx.destination)
            users = {uid: by_email[email] for uid, email in first_users.items()}
            bare_seconds, bare_written = _bare_loop(bare_ctx.destination, sent, users)
        finally:
            bare_ctx.close()

    with emulator_for(row, folder, None) as third:
        third.set_service_time(*SERVICE_TIME)
        ctx = prepare_migration(row, staging, snapshot_id, url, third.url, ledger_schema=schema)
        try:
            started = time.perf_counter()
            stats = load_everything(ctx)
            engine_seconds = time.perf_counter() - started
        finally:
            ctx.close()

    engine_written = sum(s.created + s.updated for s in stats.values())
    ratio = engine_seconds / bare_seconds
    ledger = "PostgreSQL" if schema else "SQLite"
    print(f"\nengine overhead: {row.name}, tenant of {SIZE:,}, {ledger} ledger, {len(sent):,} write_batch calls")
    print(fmt_table(["leg", "records written", "seconds", "records/s"], [
        ["bare loop (write_batch only)", bare_written, bare_seconds, bare_written / bare_seconds],
        ["engine (load_everything)", engine_written, engine_seconds, engine_written / engine_seconds],
    ]))
    per_batch_ms = 1000 * (engine_seconds - bare_seconds) / max(1, len(sent))
    print(f"engine / bare = {ratio:.3f}x (target <= {TARGET_RATIO}x) at a service time of "
          f"{SERVICE_TIME[0] * 1000:.0f} ms a call + {SERVICE_TIME[1] * 1000:.0f} ms a KiB; "
          f"engine cost {per_batch_ms:.1f} ms per batch")

    assert engine_written == bare_written == sum(1 for b in sent for r in b.results if r.ok)
    assert ratio <= TARGET_RATIO, ratio
    assert per_batch_ms <= MAX_ENGINE_MS_PER_BATCH, per_batch_ms
