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

Destinations whose limit is a daily **quota** (Salesforce: 100,000 requests a day per org, 403
``REQUEST_LIMIT_EXCEEDED`` beyond it, no rate; Zoho CRM: credits per rolling 24 h, one per 10
records written, 429 ``TOO_MANY_REQUESTS`` beyond it) have no pace to measure: their plugin sends as
fast as the org answers and stops *before* a reserve it keeps for other integrations
(``QuotaExhausted``, resumed later). :func:`test_quota_bound_load_stops_at_the_reserve` measures
what matters there instead: how many records the quota buys, and that the stop is clean.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from airflow_ascora_provider.destinations.manager import get_destination
from tests.bench.harness import FULL, UNBOUND_QUOTA, bench_root, emulator_for, fmt_table, load_by_map, \
    prepare_migration, recording, staged, target_params

SIZE = 100_000 if FULL else 10_000
TARGET = 0.95
# CI shares two cores with the whole suite: a starved engine can miss a pacing slot, which is not a
# pacing regression. The short run guards against collapse; ``make bench`` holds the 95% target.
FLOOR = TARGET if FULL else 0.85


@pytest.mark.timeout(5400 if FULL else 900)
@pytest.mark.parametrize("row", target_params(lambda row: row.daily_quota is None))
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


def _written(recorder) -> list[tuple[str, Any]]:
    """``(target, record)`` for every record a recorded ``write_batch`` call wrote."""
    return [(b.target, rec) for b in recorder.sent for rec, res in zip(b.records, b.results) if res.ok]


def _minimum(row, written: list[tuple[str, Any]], cost=None) -> int:
    cost = cost or row.minimum_calls
    return sum(cost(target, [rec for t, rec in written if t == target]) for target in {t for t, _ in written})


def _load_until_the_quota_stops(ctx, maps: tuple[str, ...]) -> Exception | None:
    """Load ``maps`` in order; returns the ``QuotaExhausted`` that stopped the load (None: it finished)."""
    from airflow_ascora_provider.destinations.spec import QuotaExhausted

    try:
        for _loaded in load_by_map(ctx, maps):
            pass
    except QuotaExhausted as stop:
        return stop
    return None


# ``make bench``: a quota this many times the CI one, so that the fixed calls of a task (the quota
# read, one describe per object) weigh under 5% of it; 100,000 a day would not bind on 100,000 records.
FULL_QUOTA_SCALE = 6


@pytest.mark.timeout(3600 if FULL else 600)
@pytest.mark.parametrize("row", target_params(lambda row: row.daily_quota is not None))
def test_quota_bound_load_stops_at_the_reserve(row, tmp_path_factory, tmp_path):
    """A load into an org with a small daily quota: it stops cleanly at the plugin's reserve, and the
    quota it spent bought as many records as the API allows for it.

    The schema step and the owners run under an unbound quota first (not what this measures); then
    the emulator gets a fresh quota of ``limit.requests`` with nothing used, as an admin would see
    it at the start of a day, and a fresh plugin (a new task) loads the batch-only maps until it stops.

    * The stop is the plugin's own (``QuotaExhausted``, resumable), never the org's over-limit answer
      (Salesforce's 403 ``REQUEST_LIMIT_EXCEEDED``, Zoho's 429 ``TOO_MANY_REQUESTS``), and the plugin's
      reserve is left unused: exactly, where every call costs one unit; where a call costs more (a
      Zoho write of 100 records is 10 credits), less than the dearest call above it, as the plugin
      stops before a call that would reach into it.
    * **Records per call spent**, against the cap (Salesforce 200, Zoho 100): ``minimum`` is the
      fewest calls the API allows for the records written (``minimum_calls``). Against the *write*
      calls it must reach 95%. What the quota counts (``limit_cost``: calls, or Zoho's credits) for
      those records, against *everything* the org counted, the task's fixed reads included (the
      quota read and one describe per object), is printed, and asserted at 95% by ``make bench``,
      whose quota is large enough for fixed reads to weigh under 5%. In CI they weigh about a
      quarter of the small quota: the figure is printed, not hidden.
    * The next day (quota reset) the load resumes and finishes; no record is written twice.
    """
    limit = row.ci_limit
    if FULL:
        limit = replace(limit, requests=FULL_QUOTA_SCALE * limit.requests,
                        label=f"a daily quota of {FULL_QUOTA_SCALE * limit.requests} requests")
    folder, staging, snapshot_id = staged(bench_root(tmp_path_factory), SIZE)
    with emulator_for(row, folder, None) as emulator:
        ctx = prepare_migration(row, staging, snapshot_id, f"sqlite:///{tmp_path / 'ledger.sqlite'}", emulator.url)
        path, body = row.daily_quota(limit)
        try:
            ctx.close()
            ctx.use_destination(get_destination(row.name, None, **row.options(emulator.url, limit)))
            emulator.control(path, body)
            seen = len(emulator.requests())
            with recording(ctx) as recorder:
                started = time.perf_counter()
                stop = _load_until_the_quota_stops(ctx, row.throughput_maps)
                seconds = time.perf_counter() - started
            quota_max, spent = row.quota_reading(emulator.control(path))
            log = [r for r in emulator.requests()[seen:] if r["path"] != path]  # the control read is not the load's
            written = _written(recorder)
            reserve = ctx.destination.api_stats()["api_reserve"]
            # The next day: a fresh quota far above what the rest needs; the load resumes where it stopped.
            ctx.close()
            ctx.use_destination(get_destination(row.name, None, **row.options(emulator.url, None)))
            emulator.control(*row.daily_quota(replace(limit, requests=UNBOUND_QUOTA)))
            with recording(ctx) as resumed:
                finished = _load_until_the_quota_stops(ctx, row.throughput_maps)
            maps = [ctx.mapping.maps[m] for m in row.throughput_maps]
            crosswalk = sum(1 for om in maps for _ in ctx.ledger.iter_crosswalk(row.name, om.source, om.target))
            pending = ctx.ledger.pending_intents(row.name)
        finally:
            ctx.close()

    writes = sum(1 for r in log if not row.is_read(r))
    minimum = _minimum(row, written)
    cost = row.limit_cost or row.minimum_calls
    min_cost = _minimum(row, written, cost)
    # The dearest single call of the load: what the plugin's stop may leave above its reserve.
    dearest = max([cost(b.target, b.records) for b in recorder.sent] + [1])
    refused = sum(1 for r in log if r["status"] in (403, 429))  # the org's over-limit answers
    more = len(_written(resumed))
    print(f"\nquota-bound load: {row.name} at {limit.label}; tenant of {SIZE:,}, maps "
          f"{', '.join(row.throughput_maps)}; the plugin keeps {reserve:,} of it in reserve")
    print(fmt_table(["records", "seconds", "quota", "spent", "left", "calls", "writes", "reads", "minimum",
                     "records/write", "min cost", "records/unit", "cap", "min/writes", "min cost/spent",
                     "403/429s", "stopped by"],
                    [[len(written), seconds, quota_max, spent, quota_max - spent, len(log), writes,
                      len(log) - writes, minimum, len(written) / max(1, writes), min_cost, len(written) / spent,
                      row.batch_cap(), f"{minimum / max(1, writes):.1%}", f"{min_cost / spent:.1%}", refused,
                      type(stop).__name__ if stop else "nothing"]]))
    print(f"next day: the load resumed and wrote {more:,} more records; {len(written) + more:,} writes in all "
          f"for {crosswalk:,} records in the crosswalk, {len(pending)} write intents pending")

    assert stop is not None, "the quota never bound: raise SIZE or lower the CI quota"
    assert refused == 0, [r for r in log if r["status"] in (403, 429)][:3]
    assert reserve <= quota_max - spent < reserve + dearest, (quota_max, spent, reserve, dearest)
    # Call counts do not depend on the machine (unlike pacing), so CI holds the 95% target too.
    assert minimum / writes >= TARGET, (minimum, writes)
    if FULL:
        assert min_cost / spent >= TARGET, (min_cost, spent)
    # Resumable: the rest loads the next day, and no record was written twice (a write per crosswalk entry).
    assert finished is None and more > 0 and pending == []
    assert len(written) + more == crosswalk, (len(written), more, crosswalk)
