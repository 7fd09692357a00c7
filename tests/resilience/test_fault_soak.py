"""Fault soak: a whole migration through emulators that misbehave at set rates.

Both emulators (Ascora for the extraction, the CRM for the schema step, users and the load) inject
429 bursts, 5xx, timeouts, dropped connections, replies lost after the write was done and batches
only partly written. The run must end exactly where a fault-free run of the same tenant ends: every
valid record held once (same Ascora ids per object, no duplicate), the same records quarantined with
reasons, a ledger that agrees with the destination, and a reconciliation with nothing missing.

It also has to stay within 1.5x of the fault-free run time. That bound is asserted on a tenant of a
migration's size (``test_fault_soak_large_tenant``, 5,000 records, ``make bench``), not on the CI
run's 400 records: there the run is mostly its fixed part (extraction, the schema step's one call per
custom field, user resolution), and one injected timeout (30 s real) weighs like a fifth of the whole
run. The CI run prints its ratio and asserts everything else. A destination whose row explains why
it is still over the bound (``over_time_bound``) is an xfail with the measured ratio, and only after
every correctness check has passed; any other row over the bound fails.

Time is compressed: the CRM is paced at its published rate limit, and the clients' timeouts, their
back-offs, the ``Retry-After`` waits and the services' own time to answer (``SERVICE_TIME``) are all
divided by ``SPEEDUP``. Every wait keeps its real proportion to the others, so the ratio of the two
run times is the one a real migration would see, in a thirtieth of the time. Without a service time
an emulator answers in a millisecond or two, a hundred times faster than a SaaS API across the
internet, and a single client timeout would weigh like a hundred calls more than it does.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from airflow_ascora_provider.sandbox.emulator import FAULT_KINDS, FaultPlan, Latency
from tests.resilience.harness import as_task, ledger_disagreements, prepare_migration, quarantined_records

SPEEDUP = 30.0
MAX_SLOWDOWN = 1.5
# What a SaaS CRM takes to answer, in real time: 100 ms a call (a round trip across the internet and
# the API's own work) and 5 ms a KiB sent or received (a 200-record batch of about 100 KiB takes
# 0.6 s). An assumption on the low side: vendors publish limits, not latencies, and an org with
# triggers or workflows on its objects answers more slowly.
SERVICE_TIME = Latency(per_call=0.1, per_kb=0.005)
CLIENT_TIMEOUT = 30.0  # every hook's default
# A request stuck this long (real time) is handled in the end: past the client's timeout, inside the
# 60 s a load balancer usually keeps an idle request open. The client gives up; the write lands later.
STALL = 45.0
# Per-request rates. A timeout costs a whole client timeout (30 s in real time), so it stays rare; every
# kind a short run did not draw by its 40th request is injected then (each kind must be survived).
SOAK_FAULTS = FaultPlan(rate_429=0.03, rate_5xx=0.03, rate_slow=0.004, rate_drop=0.02, rate_lost_reply=0.02,
                        rate_partial=0.15, slow_seconds=STALL / SPEEDUP, retry_after="1", seed=20240607,
                        cover_every_kind_after=40)


@pytest.fixture
def compressed_time(monkeypatch):
    """Every ``RetryPolicy`` built from now on, and the one of every ``ApiClient``, sleeps ``1/SPEEDUP`` of
    each back-off and ``Retry-After``: the policy is what every plugin's retries wait through, whether
    its HTTP goes through ``ApiClient`` or through a session driven by the policy. Each policy is
    compressed once, however often it is built or handed on."""
    from airflow_ascora_provider.hooks import http_client

    def compress(retry):
        if not getattr(retry.sleep, "compressed", False):
            def sleep(seconds, _sleep=retry.sleep):
                _sleep(seconds / SPEEDUP)

            sleep.compressed = True
            retry.sleep = sleep
        return retry

    policy_init = http_client.RetryPolicy.__init__

    def init_policy(self, *args, **kwargs):
        policy_init(self, *args, **kwargs)
        compress(self)

    client_init = http_client.ApiClient.__init__

    def init_client(self, *args, retry=None, **kwargs):
        client_init(self, *args, retry=compress(retry or http_client.RetryPolicy()), **kwargs)

    monkeypatch.setattr(http_client.RetryPolicy, "__init__", init_policy)
    monkeypatch.setattr(http_client.ApiClient, "__init__", init_client)

    # The pacers' rates are set in compressed time already (``published_limits``): their waits are
    # real. Through the compressed clock a pacer would wake thirty times per wait and spin for the lock.
    pacer_acquire, window_reserve = http_client.Pacer.acquire, http_client.RequestWindow.reserve
    monkeypatch.setattr(http_client.Pacer, "acquire", lambda self, sleep=None: pacer_acquire(self, time.sleep))
    monkeypatch.setattr(http_client.RequestWindow, "reserve",
                        lambda self, weight, sleep=None: window_reserve(self, weight, time.sleep))


@pytest.fixture
def warmed_up(destination, tmp_path_factory):
    """One tiny migration before the clock starts: modules imported on first use (Parquet, object
    storage, the plugin's hook) would otherwise be charged to whichever timed run comes first."""
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    workdir = tmp_path_factory.mktemp("warm-up")
    generate_tenant(workdir / "tenant", size=30, seed=1)
    migration = prepare_migration(destination, workdir / "tenant", workdir, f"sqlite:///{workdir / 'ledger.sqlite'}")
    try:
        load_everything(migration.ctx)
    finally:
        migration.close()


def _migrate(destination, tenant, workdir, faults):
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything

    started = time.monotonic()
    migration = prepare_migration(destination, tenant, workdir, f"sqlite:///{workdir / 'ledger.sqlite'}",
                                  plugin_overrides=destination.published_limits(SPEEDUP), faults=faults,
                                  latency=SERVICE_TIME.scaled(1 / SPEEDUP), ascora_timeout=CLIENT_TIMEOUT / SPEEDUP)
    prepared = time.monotonic() - started
    try:
        as_task(lambda: load_everything(migration.ctx))
        elapsed = time.monotonic() - started
        calls = len(migration.crm.control.requests)  # the migration's, not the checks' below
        migration.crm.control.set_faults(FaultPlan())  # the checks below read without faults
        migration.ascora.control.set_faults(FaultPlan())
        result = reconcile(migration.ctx, verify="all" if faults else "none")
        return {
            "seconds": elapsed,
            "prepare_seconds": prepared,
            "phases": migration.phases,
            "stored": {t: sorted(r.key for r in rows if r.key) for t, rows in migration.stored().items()},
            "quarantined": quarantined_records(migration),
            "disagreements": ledger_disagreements(migration),
            "reconcile": result,
            "crm_calls": calls,
            "crm_faults": dict(migration.crm.control.counters),
            "ascora_faults": dict(migration.ascora.control.counters),
        }
    finally:
        migration.close()


def _soak(destination, tenant, tmp_path, faults, *, time_bound: bool):
    clean = _migrate(destination, tenant, tmp_path / "clean", None)
    soaked = _migrate(destination, tenant, tmp_path / "soaked", faults)

    print(f"{destination.name}: clean {clean['seconds']:.1f}s ({clean['prepare_seconds']:.1f}s to the load; "
          f"{clean['crm_calls']} CRM calls), soaked {soaked['seconds']:.1f}s ({soaked['prepare_seconds']:.1f}s; "
          f"{soaked['crm_calls']}), {soaked['seconds'] / clean['seconds']:.2f}x; CRM faults {soaked['crm_faults']}, "
          f"Ascora {soaked['ascora_faults']}")
    for run in (clean, soaked):
        print("  " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in run["phases"].items())
              + f", load {run['seconds'] - run['prepare_seconds']:.1f}s")
    injected = soaked["crm_faults"]
    assert all(injected[kind] > 0 for kind in FAULT_KINDS), f"every fault kind must occur: {injected}"
    assert sum(soaked["ascora_faults"].values()) > 0, soaked["ascora_faults"]

    assert soaked["disagreements"] == [], soaked["disagreements"][:20]
    for target, keys in clean["stored"].items():
        missing = sorted(set(keys) - set(soaked["stored"][target]))
        why = {k: reasons for (_, k), reasons in soaked["quarantined"].items() if k in missing}
        assert soaked["stored"][target] == keys, (f"{target}: the soaked run holds other records than a clean "
                                                  f"run; missing {missing[:5]}, quarantined as {why}")
    assert soaked["quarantined"].keys() == clean["quarantined"].keys(), {
        k: v for k, v in soaked["quarantined"].items() if k not in clean["quarantined"]}
    assert all(all(reasons) for reasons in soaked["quarantined"].values())
    totals = soaked["reconcile"]["totals"]
    assert soaked["reconcile"]["ok"] and totals["missing"] == 0, totals
    assert totals["loaded"] == clean["reconcile"]["totals"]["loaded"]

    ratio = soaked["seconds"] / clean["seconds"]
    if not time_bound or ratio <= MAX_SLOWDOWN:
        return
    measured = f"{ratio:.2f}x slower ({soaked['seconds']:.1f}s vs {clean['seconds']:.1f}s; {injected})"
    if destination.over_time_bound:  # known and explained; everything above passed
        pytest.xfail(f"{measured}: {destination.over_time_bound}")
    raise AssertionError(f"faults made the run {measured}")


def test_fault_soak_loads_every_valid_record_once(destination, soak_tenant, tmp_path, compressed_time, warmed_up):
    _soak(destination, soak_tenant, tmp_path, SOAK_FAULTS, time_bound=False)


@pytest.mark.slow
def test_fault_soak_large_tenant(destination, tmp_path_factory, tmp_path, compressed_time, warmed_up):
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    tenant = tmp_path_factory.mktemp("tenant-soak-large")
    generate_tenant(tenant, size=int(os.environ.get("ASCORA_SOAK_SIZE", "5000")), seed=29, dirty=True)
    _soak(destination, tenant, tmp_path, replace(SOAK_FAULTS, seed=31), time_bound=True)
