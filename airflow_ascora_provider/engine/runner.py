"""The full load as units of work: waves of maps (parents first), each wave split into row ranges.

Airflow maps one task per unit (``expand``), so a wave's ranges spread over workers while the next
wave waits for its parents. Unit counts stay under Airflow's ``max_map_length`` (1024) by growing
the range size with the tenant.
"""

from __future__ import annotations

import logging
import math
from graphlib import TopologicalSorter
from collections.abc import Iterator
from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.load import LoadStats, MapLoader, PendingBatch, batch_size_for
from airflow_ascora_provider.engine.transform import staged_reads
from airflow_ascora_provider.mapping.spec import Mapping

MAX_UNITS_PER_WAVE = 1000

log = logging.getLogger(__name__)


def waves(mapping: Mapping) -> list[list[str]]:
    """Maps grouped into load waves: every map's lookups are in an earlier wave, and two maps that write
    the same destination object never share one.

    The second rule makes a full load deterministic. Maps of one wave run in parallel; when two of them
    write one object (Twenty's customer people and enquiry people, Zoho's three kinds of notes) and the
    destination holds a unique field (a person's e-mail), which record wins would depend on which task
    ran first, so a Celery run and a local run could end differently. One map a wave per object gives
    the same winner every time: the map listed first in the mapping.
    """
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name, om in mapping.maps.items():
        sorter.add(name, *(n for n in om.lookups() if n != name))
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=list(mapping.maps).index)
        order.extend(ready)
        sorter.done(*ready)
    level: dict[str, int] = {}
    taken: set[tuple[int, str]] = set()
    for name in order:
        om = mapping.maps[name]
        depth = max((level[parent] + 1 for parent in om.lookups() if parent != name), default=0)
        while (depth, om.target) in taken:
            depth += 1
        level[name] = depth
        taken.add((depth, om.target))
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in mapping.maps:
        out[level[name]].append(name)
    return [wave for wave in out if wave]


def plan_units(ctx: MigrationContext, wave_maps: list[str], min_rows: int = 2000) -> list[dict[str, Any]]:
    units = []
    for name in wave_maps:
        om = ctx.mapping.maps[name]
        rows = ctx.snapshot.count(om.source)
        if rows == 0:
            continue
        size = max(min_rows, math.ceil(rows / MAX_UNITS_PER_WAVE))
        units.extend({"map": name, "start": start, "stop": min(rows, start + size)} for start in range(0, rows, size))
    return units


def run_unit(ctx: MigrationContext, unit: dict[str, Any]) -> LoadStats:
    return _load_unit(ctx, unit)[1]


def _load_unit(ctx: MigrationContext, unit: dict[str, Any], *, settle: bool = True) -> tuple[MapLoader, LoadStats]:
    loader = MapLoader(ctx, ctx.mapping.maps[unit["map"]])
    return loader, loader.load(_unit_records(ctx, unit), unit["stop"] - unit["start"], settle=settle)


def _unit_records(ctx: MigrationContext, unit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The unit's staged rows, only the columns its map reads."""
    om = ctx.mapping.maps[unit["map"]]
    return ctx.snapshot.iter_range(om.source, unit["start"], unit["stop"], staged_reads(om))


def prepare_unit(ctx: MigrationContext, unit: dict[str, Any], *, resuming: bool = False
                 ) -> tuple[MapLoader, list[PendingBatch]]:
    """Every batch of a unit up to (not including) the write: what a bulk job would carry."""
    om = ctx.mapping.maps[unit["map"]]
    loader = MapLoader(ctx, om)
    return loader, [loader.prepare(batch, resuming=resuming)
                    for batch in loader.transformer.batches(_unit_records(ctx, unit), batch_size_for(ctx))]


def start_unit(ctx: MigrationContext, unit: dict[str, Any]) -> tuple[LoadStats | None, dict[str, Any] | None]:
    """Load a unit, or hand it to the destination's bulk API when enough records are pending.

    Returns ``(stats, None)`` when the unit was written by batch calls, ``(None, job)`` when a bulk
    job was submitted: the caller waits for the job (deferred, holding no worker) and then calls
    :func:`finish_bulk_unit`. Records are prepared (intents saved) before the job is submitted, so a
    crash at any point leaves the same state a crashed batch write would.
    """
    om = ctx.mapping.maps[unit["map"]]
    # A bulk job's results are matched back to records by their Ascora id: a map without a key field
    # (one that only updates users it found by e-mail) writes batch by batch.
    threshold = ctx.destination.bulk_threshold(om.target) if om.key_field else None
    if threshold is None:
        return run_unit(ctx, unit), None
    loader, batches = prepare_unit(ctx, unit)
    pending = [record for batch in batches for record in batch.records]
    if len(pending) < threshold:
        stats = LoadStats()
        for batch in batches:
            if batch.to_write:
                results = ctx.destination.write_batch(om.target, batch.records, om.key_field)
                batch.stats.write_calls += 1
                loader.commit(batch, results)
            stats.add(batch.stats)
        stats.add(loader.settle())
        return stats, None
    log.info("%s[%s:%s]: %d records pending, submitting a bulk job (threshold %d)",
             unit["map"], unit["start"], unit["stop"], len(pending), threshold)
    return None, ctx.destination.submit_bulk_job(om.target, pending, om.key_field)


def finish_bulk_unit(ctx: MigrationContext, unit: dict[str, Any], job: dict[str, Any]) -> LoadStats:
    """Record a finished bulk job: the unit is prepared again (same snapshot, same ledger state),
    so the records line up with the job's; its per-record results go through the same commit as
    batch writes."""
    loader, batches = prepare_unit(ctx, unit, resuming=True)
    records = [record for batch in batches for record in batch.records]
    results = ctx.destination.bulk_job_results(job, records) if records else []
    if len(results) != len(records):
        raise RuntimeError(f"{ctx.destination_name}: bulk job returned {len(results)} results for "
                           f"{len(records)} records of {unit['map']}")
    stats, offset = LoadStats(), 0
    for batch in batches:
        if batch.to_write:
            loader.commit(batch, results[offset:offset + len(batch.to_write)])
            offset += len(batch.to_write)
        stats.add(batch.stats)
    stats.write_calls += 1
    return stats


def load_everything(ctx: MigrationContext) -> dict[str, LoadStats]:
    """All maps in order, in-process (delta runs, tests, the demo's single-worker path)."""
    out: dict[str, LoadStats] = {}
    for wave in waves(ctx.mapping):
        loaders = []
        for unit in plan_units(ctx, wave, min_rows=1 << 40):
            loader, stats = _load_unit(ctx, unit, settle=False)
            out.setdefault(unit["map"], LoadStats()).add(stats)
            loaders.append(loader)
        # Creates left in doubt are settled once the whole wave went out, not at the end of each map:
        # by then a stalled request has usually landed and one look finds it, where settling at once
        # would wait for it with nothing else to do. (A DAG run settles each unit at its own end,
        # while the wave's other units run beside it.) No later map needs them before the next wave.
        for loader in loaders:
            out[loader.map.name].add(loader.settle())
    return out
