"""Benchmark: API calls per 1,000 records per object, against the fewest the destination's API allows.

A full load of a generated tenant into each destination's emulator (unthrottled, so the figures are
the engine's and the plugin's choices, not the limiter's). Every call the plugin makes while one
map loads is charged to that map's object. The minimum is ``ceil(records / batch cap)`` plus what
the API cannot batch (for Twenty: one ``uploadFile`` per file, one link batch per 60 note/task
targets); the fixed overhead is the schema step and the user list, paid once per migration. Wasted
calls (429s and retries) are counted apart. An identical second run must make no write at all.

CI loads a 2,000-record tenant; ``make bench`` (ASCORA_FULL_BENCH=1) a 20,000-record one.
Figures are printed and recorded in docs/performance.md.
"""

from __future__ import annotations

import pytest

from tests.bench.harness import FULL, bench_root, emulator_for, fmt_table, load_by_map, prepare_migration, recording, \
    staged, target_params

SIZE = 20_000 if FULL else 2_000


@pytest.mark.timeout(3600 if FULL else 600)
@pytest.mark.parametrize("row", target_params())
def test_calls_per_thousand_records_against_the_minimum(row, tmp_path_factory, tmp_path):
    folder, staging, snapshot_id = staged(bench_root(tmp_path_factory), SIZE)
    with emulator_for(row, folder, None) as emulator:
        ctx = prepare_migration(row, staging, snapshot_id, f"sqlite:///{tmp_path / 'ledger.sqlite'}", emulator.url)
        try:
            fixed = len(emulator.requests())
            rows, totals = [], dict.fromkeys(("records", "calls", "minimum", "refused", "reads", "wasted"), 0)
            with recording(ctx) as recorder:
                for name, target, stats, calls in load_by_map(ctx):
                    log = emulator.requests()[fixed + totals["calls"]:]
                    sent = [b for b in recorder.sent if b.target == target]
                    recorder.sent.clear()
                    written = [rec for b in sent for rec, res in zip(b.records, b.results) if res.ok]
                    minimum = row.minimum_calls(target, written)
                    count = stats.created + stats.updated
                    refused = sum(1 for r in log if 400 <= r["status"] < 500 and r["status"] != 429)
                    reads = sum(1 for r in log if row.is_read(r) and r["status"] < 400)
                    wasted = calls["retries"] + sum(1 for r in log if r["status"] == 429)
                    if count:
                        rows.append([name, count, len(log), minimum, 1000 * len(log) / count, 1000 * minimum / count,
                                     (len(log) - refused) / max(1, minimum), refused, reads, wasted])
                    for key, value in (("records", count), ("calls", len(log)), ("minimum", minimum),
                                       ("refused", refused), ("reads", reads), ("wasted", wasted)):
                        totals[key] += value
            # The same snapshot again: every payload hash matches, so nothing is written (records the
            # destination refused are offered again, in case someone fixed them).
            seen = len(emulator.requests())
            rerun_written = sum(stats.created + stats.updated for _n, _t, stats, _c in load_by_map(ctx))
            rerun_log = emulator.requests()[seen:]
            rerun_refused_jobs = row.refused_jobs(emulator.url, rerun_log)
            counters = emulator.counters()
        finally:
            ctx.close()

    print(f"\nAPI efficiency: {row.name}, tenant of {SIZE:,} generated records, batch cap {row.batch_cap()}")
    print(fmt_table(["object (map)", "records", "calls", "minimum", "calls/1k", "min/1k", "useful/min", "refused",
                     "reads", "wasted"], rows))
    useful = (totals["calls"] - totals["refused"]) / totals["minimum"]
    print(f"total: {totals['records']:,} records, {totals['calls']:,} calls vs minimum {totals['minimum']:,}; "
          f"without refused batches x{useful:.3f}; refused {totals['refused']}, reads {totals['reads']}, "
          f"wasted (429s + retries) {totals['wasted']} (emulator 429s: {counters['429']}); fixed overhead "
          f"(schema + users) {fixed:,} calls; identical re-run: {rerun_written} writes, {len(rerun_log)} calls "
          f"({sum(1 for r in rerun_log if r['status'] >= 400)} refused again)")

    assert totals["records"] > 0.4 * SIZE, totals
    assert totals["wasted"] == 0 and counters["429"] == 0, (totals, counters)
    # Apart from batches refused for bad data, within a quarter of the fewest calls the API allows.
    assert useful <= 1.25, rows
    assert rerun_written == 0
    # Every call of the re-run reads or is refused; a job accepted (202) whose records were all refused
    # inside it wrote nothing either.
    writes = [r for r in rerun_log if r["status"] < 400 and not row.is_read(r) and "/metadata/" not in r["path"]]
    accepted_jobs = sum(1 for r in writes if r["status"] == 202)
    assert len(writes) == accepted_jobs == rerun_refused_jobs or not writes, (writes, rerun_refused_jobs)
