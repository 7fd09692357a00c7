"""Benchmark: a generated tenant through extract → load (transform inside) → transform re-run, at growing sizes.

Each stage runs in its own process, as it would in its own Airflow task, so its peak RSS
(``VmHWM``, see :func:`~tests.bench.harness.own_peak_rss_mb`) is that stage's alone; the emulator runs in yet another process and is not counted.

* **extract**: the tenant's CSV exports → Parquet staging;
* **setup**: audit, mapping approval, schema and owners (the steps before the load);
* **load**: every map through the engine (transform, hashes, crosswalk, intents, writes, ledger)
  into an unthrottled emulator;
* **transform**: every staged record through its map's transform, validation and payload hash once
  more, with the crosswalk full, so every lookup is a real ledger query: what an idempotent re-run
  costs before it decides to write nothing. The clock starts after a warm-up over each map's first
  rows (:func:`~tests.bench.harness.warm_up_transform`: the imports a task process pays once);
* **transform, N workers**: the same, as the DAG runs it: the load units of each wave (the mapped
  tasks' row ranges) spread over one worker process a core, wave after wave. Each unit builds its
  own transformer, as each task does, so a unit's set-up is counted; the outcome must equal the
  one-process stage's.

Memory must stay flat as the tenant grows (bounded by batch and Parquet part size, not by tenant
size). CI runs 2,000 and 10,000 records; ``make bench`` 10,000, 100,000 and 1,000,000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.harness import FULL, REPO, bench_root, emulator_for, fmt_table, target_params, tenant

SIZES = [10_000, 100_000, 1_000_000] if FULL else [2_000, 10_000]
TRANSFORM_TARGET = 100_000  # records/second
CI_TRANSFORM_FLOOR = 3_000  # records/second; CI measures 25,000 to 35,000 on a 10,000-record tenant
# Worker processes of the ``transform_workers`` stage: one a core, as a worker pool sized to the
# machine would run a wave's mapped load tasks.
WORKERS = max(2, os.cpu_count() or 1)

_PREAMBLE = r"""
import json, sys, time
from tests.bench.harness import own_peak_rss_mb
args = json.loads(sys.argv[1])
def done(**figures):
    figures["peak_mb"] = own_peak_rss_mb()
    print(json.dumps(figures))
def context():
    from tests.bench.harness import bench_context
    return bench_context(args)
"""

STAGES = {
    "extract": r"""
from airflow_ascora_provider.source.export_reader import ExportReader
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.staging import Snapshot
started = time.perf_counter()
manifest = extract(ExportReader(args["exports"]), Snapshot(args["staging"], "scale"))
done(seconds=time.perf_counter() - started, records=manifest["totals"]["read"], totals=manifest["totals"])
""",
    "setup": r"""
from tests.bench.harness import TARGETS, prepare_migration
started = time.perf_counter()
ctx = prepare_migration(TARGETS[args["destination"]], args["staging"], "scale", args["ledger"], args["url"])
ctx.close()
done(seconds=time.perf_counter() - started, records=0)
""",
    "load": r"""
from airflow_ascora_provider.engine.runner import load_everything
ctx = context()
started = time.perf_counter()
stats = load_everything(ctx)
seconds = time.perf_counter() - started
ctx.close()
done(seconds=seconds, records=sum(s.considered for s in stats.values()),
     written=sum(s.created + s.updated for s in stats.values()),
     quarantined=sum(s.quarantined for s in stats.values()))
""",
    "transform": r"""
from tests.bench.harness import transform_records, warm_up_transform
from airflow_ascora_provider.engine.transform import staged_reads
ctx = context()
warm_up = warm_up_transform(ctx)
records = outgoing = quarantined = 0
started = time.perf_counter()
for om in ctx.mapping.maps.values():
    seen, out, bad = transform_records(ctx, om, ctx.snapshot.iter_records(om.source, staged_reads(om)))
    records += seen
    outgoing += out
    quarantined += bad
seconds = time.perf_counter() - started
ctx.close()
done(seconds=seconds, records=records, outgoing=outgoing, quarantined=quarantined, warm_up=warm_up)
""",
    "transform_workers": r"""
import multiprocessing
from tests.bench.harness import start_transform_worker, transform_unit
from airflow_ascora_provider.engine.runner import plan_units, waves
ctx = context()
plan = [units for units in (plan_units(ctx, wave) for wave in waves(ctx.mapping)) if units]
ctx.close()
spawn = multiprocessing.get_context("spawn")
ready = spawn.Queue()
workers = args["workers"]
with spawn.Pool(workers, initializer=start_transform_worker, initargs=(args, ready)) as pool:
    for _ in range(workers):  # every worker started, its context built
        ready.get(timeout=600)
    started = time.perf_counter()
    # Wave by wave, as the DAG runs them: a wave's units spread over the workers as they free up,
    # and the next wave starts when the last unit of this one is done.
    results = [result for units in plan for result in pool.map(transform_unit, units, chunksize=1)]
    seconds = time.perf_counter() - started
records = sum(r["records"] for r in results)
figures = {"seconds": seconds, "records": records, "workers": workers,
           "units": len(results), "workers_used": len({r["pid"] for r in results}),
           "cpu_rate": records / sum(r["cpu"] for r in results),
           "outgoing": sum(r["outgoing"] for r in results),
           "quarantined": sum(r["quarantined"] for r in results)}
print(json.dumps({**figures, "peak_mb": max(r["peak_mb"] for r in results)}))
""",
}


def _stage(name: str, **args) -> dict:
    out = subprocess.run([sys.executable, "-c", _PREAMBLE + STAGES[name], json.dumps(args)], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode:
        raise AssertionError(f"stage {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(4 * 3600 if FULL else 900)
@pytest.mark.parametrize("row", target_params(bench=__name__))
def test_stage_throughput_and_flat_memory(row, tmp_path_factory, tmp_path):
    root = bench_root(tmp_path_factory)
    figures: dict[int, dict[str, dict]] = {}
    for size in SIZES:
        folder = tenant(root, size)
        staging = tmp_path / f"staging-{size}-{time.time_ns()}"
        ledger = f"sqlite:///{tmp_path / f'ledger-{size}.sqlite'}"
        figures[size] = {"extract": _stage("extract", exports=str(folder / "exports"), staging=str(staging))}
        totals = figures[size]["extract"]["totals"]
        assert totals["read"] == totals["staged"] + totals["quarantined"] + totals["skipped"]
        with emulator_for(row, folder, None) as emulator:
            common = {"destination": row.name, "staging": str(staging), "ledger": ledger, "url": emulator.url}
            for stage in ("setup", "load", "transform"):
                figures[size][stage] = _stage(stage, **common)
            figures[size]["transform_workers"] = _stage("transform_workers", workers=WORKERS, **common)
            figures[size]["emulator_mb"] = emulator.peak_rss_mb()

    stages = ("extract", "setup", "load", "transform", "transform_workers")
    rows = []
    for size, by_stage in figures.items():
        for stage in stages:
            f = by_stage[stage]
            rate = f["records"] / f["seconds"] if f["records"] else None
            label = f"transform, {WORKERS} workers" if stage == "transform_workers" else stage
            rows.append([size, label, f["records"], f["seconds"], f"{rate:,.0f}" if rate else "-", f["peak_mb"]])
    print(f"\nscale: {row.name}, generated tenants {', '.join(f'{s:,}' for s in SIZES)} (CSV exports); "
          "every stage in its own process")
    print(fmt_table(["tenant", "stage", "records", "seconds", "records/s", "peak RSS MB"], rows))
    print("emulator peak RSS MB (not the engine's): "
          + ", ".join(f"{s:,}: {f['emulator_mb']:.0f}" for s, f in figures.items() if f.get("emulator_mb")))

    smallest, largest = figures[SIZES[0]], figures[SIZES[-1]]
    scale = largest["extract"]["records"] / smallest["extract"]["records"]
    for size, by_stage in figures.items():
        f = by_stage["transform_workers"]
        print(f"transform, {WORKERS} workers, {size:,}: {f['units']} units on {f['workers_used']} workers, "
              f"{f['cpu_rate']:,.0f} records/s a worker (CPU)")
        # Every unit's records were transformed, and to the same outcome as in one process.
        assert {k: f[k] for k in ("records", "outgoing", "quarantined")} == {
            k: by_stage["transform"][k] for k in ("records", "outgoing", "quarantined")}, by_stage
    for stage in ("extract", "load", "transform", "transform_workers"):
        growth = largest[stage]["peak_mb"] / smallest[stage]["peak_mb"]
        print(f"{stage}: records x{scale:.0f} → peak memory x{growth:.2f}")
        # Flat: memory grows far slower than the tenant (per-task indexes are the only part that grows).
        assert growth < max(1.6, scale ** 0.25), (stage, figures)
    load = largest["load"]
    assert load["written"] > 0.4 * largest["extract"]["records"], load
    rate = largest["transform_workers"]["records"] / largest["transform_workers"]["seconds"]
    # The stage's rate is the workers' together: a load wave's units run as mapped tasks, one a worker
    # slot. The 100,000 records/s target is asserted at full size (`make bench`: 126,400 on this
    # machine's two cores, 124,600-128,100 in runs of the stage alone: see docs/performance.md). CI, on
    # small tenants where the per-task set-up (related-object indexes, first queries) weighs most,
    # guards against a collapse: several times below what it measures there.
    assert rate >= (TRANSFORM_TARGET if FULL else CI_TRANSFORM_FLOOR), rate
