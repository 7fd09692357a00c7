"""Benchmark: extraction of generated tenants from Excel exports — records/second and peak memory.

Each size is extracted in its own process so peak RSS is that run's alone. Memory must stay flat as
the tenant grows: extraction is bounded by one Parquet part plus small id indexes, not by the tenant.

CI runs the small sizes; ``make bench`` (ASCORA_FULL_BENCH=1) adds 100k and 1M records.
Figures are printed and recorded in docs/performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.harness import REPO

FULL = os.environ.get("ASCORA_FULL_BENCH") == "1"
SIZES = [5_000, 20_000] + ([100_000, 1_000_000] if FULL else [])

_CHILD = r"""
import json, sys, time
from airflow_ascora_provider.source.export_reader import ExportReader
from tests.bench.harness import own_peak_rss_mb
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.staging import Snapshot
start = time.perf_counter()
manifest = extract(ExportReader(sys.argv[1]), Snapshot(sys.argv[2], "bench"))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": own_peak_rss_mb(), "totals": manifest["totals"]}))
"""


def _tenant(root: Path, size: int) -> Path:
    folder = root / f"tenant-{size}"
    if not (folder / "exports").exists():
        subprocess.run([sys.executable, "-m", "airflow_ascora_provider.sandbox", "generate", "--out", str(folder),
                        "--size", str(size), "--seed", "5", "--format", "xlsx"], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    shared = os.environ.get("ASCORA_BENCH_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("bench")


@pytest.mark.timeout(5400 if FULL else 600)
def test_extract_exports_throughput_and_flat_memory(bench_root):
    results = []
    for size in SIZES:
        tenant = _tenant(bench_root, size)
        staging = bench_root / f"staging-{size}-{time.time_ns()}"
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tenant / "exports"), str(staging)],
                             check=True, capture_output=True, text=True, cwd=REPO)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        totals = figures["totals"]
        assert totals["read"] == totals["staged"] + totals["quarantined"] + totals["skipped"]
        rate = totals["read"] / figures["seconds"]
        results.append((size, totals["read"], figures["seconds"], rate, figures["peak_mb"]))
    print("\nextract from xlsx exports")
    print(f"{'tenant size':>12} {'records':>10} {'seconds':>9} {'records/s':>10} {'peak RSS MB':>12}")
    for size, read, seconds, rate, peak in results:
        print(f"{size:>12,} {read:>10,} {seconds:>9.1f} {rate:>10,.0f} {peak:>12.0f}")
    smallest, largest = results[0], results[-1]
    growth = largest[4] / smallest[4]
    scale = largest[1] / smallest[1]
    print(f"records x{scale:.0f} → peak memory x{growth:.2f}")
    # Flat: memory grows far slower than the tenant (the id/name indexes are the only part that grows).
    assert growth < max(1.6, scale ** 0.25), results
