"""The full load as units of work: waves of maps (parents first), each wave split into row ranges.

Airflow maps one task per unit (``expand``), so a wave's ranges spread over workers while the next
wave waits for its parents. Unit counts stay under Airflow's ``max_map_length`` (1024) by growing
the range size with the tenant.
"""

from __future__ import annotations

import math
from graphlib import TopologicalSorter
from typing import Any

from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.engine.load import LoadStats, MapLoader
from airflow_ascora_provider.mapping.spec import Mapping

MAX_UNITS_PER_WAVE = 1000


def waves(mapping: Mapping) -> list[list[str]]:
    """Maps grouped by dependency depth: every map's lookups are in an earlier wave."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name, om in mapping.maps.items():
        sorter.add(name, *(n for n in om.lookups() if n != name))
    sorter.prepare()
    out: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=list(mapping.maps).index)
        out.append(ready)
        sorter.done(*ready)
    return out


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
    om = ctx.mapping.maps[unit["map"]]
    records = ctx.snapshot.iter_range(om.source, unit["start"], unit["stop"])
    return MapLoader(ctx, om).load(records, unit["stop"] - unit["start"])


def load_everything(ctx: MigrationContext) -> dict[str, LoadStats]:
    """All maps in order, in-process (delta runs, tests, the demo's single-worker path)."""
    out: dict[str, LoadStats] = {}
    for wave in waves(ctx.mapping):
        for unit in plan_units(ctx, wave, min_rows=1 << 40):
            out.setdefault(unit["map"], LoadStats()).add(run_unit(ctx, unit))
    return out
