"""Benchmark: sustained throughput under each destination's published rate limit.

The emulator enforces the destination's real limit (429 + ``Retry-After`` beyond it) and the plugin
paces itself under the same limit, known in advance. The load covers the maps whose records go out
in batches and nothing else, so the ceiling is simply ``limit x batch cap`` records per unit of time
(Twenty: 100 calls/minute x 60 = 6,000 records/minute). Where the limit counts something else than
calls (Dataverse counts every request inside a ``$batch``), the row's ``limit_cost`` says what the
records cost against it; where the plugin is built to use only a share of the limit (Dataverse's
90%), the ceiling is that share. Two figures:

* **records/minute as a fraction of the ceiling** for the records loaded: the fewest calls those
  records need, at the limit, against the time the load really took;
* **pacing efficiency**: requests the limit counted (calls, or what the emulator reports as
  ``counted_requests``) against what the plugin's share of the limit allowed over the same time (the
  gap is idle time, or time lost to 429s and their back-off).

Target: at least 95% of the ceiling with zero 429s (asserted by ``make bench``; the CI run asserts
zero 429s and at least 85%, as CI shares two cores with the rest of the suite). The schema step runs unthrottled first (it is
not what this measures); the limit is switched on in the emulator just before the load.

CI: a 10,000-record tenant at the CI limit (Twenty: its real 100/minute, about 45 s of calls);
``make bench``: a 100,000-record tenant at the published limit (Twenty: about 7 minutes).
"""

from __future__ import annotations

import time

import pytest

from tests.bench.harness import FULL, bench_root, emulator_for, fmt_table, load_by_map, prepare_migration, recording, \
    staged, target_params

SIZE = 100_000 if FULL else 10_000
TARGET = 0.95
# CI shares two cores with the whole suite: a starved engine can miss a pacing slot, which is not a
# pacing regression. The short run guards against collapse; ``make bench`` holds the 95% target.
FLOOR = TARGET if FULL else 0.85


@pytest.mark.timeout(5400 if FULL else 900)
@pytest.mark.parametrize("row", target_params())
def test_throughput_under_the_published_rate_limit(row, tmp_path_factory, tmp_path):
    from airflow_ascora_provider.destinations.manager import get_destination

    limit = row.published_limit if FULL else row.ci_limit
    folder, staging, snapshot_id = staged(bench_root(tmp_path_factory), SIZE)
    with emulator_for(row, folder, None) as emulator:
        ctx = prepare_migration(row, staging, snapshot_id, f"sqlite:///{tmp_path / 'ledger.sqlite'}", emulator.url)
        ctx.close()
        emulator.set_rate_limit(limit)
        seen = len(emulator.requests())
        counted_before = emulator.counters().get("counted_requests", 0)
        ctx.use_destination(get_destination(row.name, None, **row.options(emulator.url, limit)))
        try:
            with recording(ctx) as recorder:
                started = time.perf_counter()
                loaded = list(load_by_map(ctx, row.throughput_maps))
                seconds = time.perf_counter() - started
            log = emulator.requests()[seen:]
            # Emulators whose limit weighs calls say what it counted; otherwise each call counts once.
            counted = emulator.counters().get("counted_requests", counted_before + len(log)) - counted_before
            stats = ctx.destination.api_stats()
        finally:
            ctx.close()

    records = sum(s.created + s.updated for _m, _t, s, _c in loaded)
    cost = row.limit_cost or row.minimum_calls
    minimum = sum(cost(target, [rec for b in recorder.sent if b.target == target
                                for rec, res in zip(b.records, b.results) if res.ok])
                  for target in {t for _m, t, _s, _c in loaded})
    per_second = limit.requests / limit.per_seconds * row.pace_share()
    throttled = sum(1 for r in log if r["status"] == 429)
    achieved = records / seconds * 60
    ceiling = per_second * 60 * records / minimum
    fraction = achieved / ceiling
    pacing = counted / (seconds * per_second)
    print(f"\nthroughput under the rate limit: {row.name} at {limit.label} (plugin's share "
          f"{row.pace_share():.0%}); tenant of {SIZE:,}, maps {', '.join(row.throughput_maps)}")
    print(fmt_table(["records", "seconds", "calls", "counted", "minimum", "records/min", "ceiling/min",
                     "of ceiling", "counted/min", "share/min", "pacing", "429s", "retries"],
                    [[records, seconds, len(log), counted, minimum, achieved, ceiling, f"{fraction:.1%}",
                      counted / seconds * 60, per_second * 60, f"{pacing:.1%}", throttled,
                      stats["retries"]]]))

    assert records > 0 and counted >= 20, (records, counted)
    assert throttled == 0 and stats["throttled"] == 0, (throttled, stats)
    assert fraction >= FLOOR, fraction
    assert pacing >= FLOOR, pacing
