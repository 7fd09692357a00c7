"""The load's two waits, through real DAG runs: a bulk job (deferred on BulkJobTrigger) and an
exhausted quota (deferred until it resets), both ending with every record loaded exactly once.

Twenty has no bulk API and no daily quota, so these tests give the real Twenty plugin the two
behaviours the way Salesforce, Zoho and Freshsales have them: a job that accepts records, runs for a
while, then reports per-record results; a quota that runs out after a number of write calls. The
engine's side (prepare, defer, poll in the triggerer, commit the results; defer until reset and
resume the unit) is the real code path.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading

import pytest

from airflow_ascora_provider.destinations.spec import BulkJobStatus, QuotaExhausted, WriteResult
from airflow_ascora_provider.destinations.twenty.plugin import TwentyDestination
from tests.e2e.scenario import ledger as _ledger
from tests.e2e.scenario import run
from tests.e2e.test_twenty_dag import _records, sandbox  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e

#: Bulk jobs of the test double, keyed by id: (target, records, key field, polls so far, results).
JOBS: dict[str, dict] = {}
_ids = itertools.count(1)


def _bulk_threshold(self, target):
    return 5


def _submit(self, target, records, key_field):
    job_id = f"job-{next(_ids)}"
    JOBS[job_id] = {"target": target, "records": list(records), "key": key_field, "polls": 0, "results": None}
    return {"id": job_id, "target": target, "size": len(records)}


def _poll(self, job):
    state = JOBS[job["id"]]
    state["polls"] += 1
    if state["polls"] < 2:
        return BulkJobStatus("running", processed=0)
    if state["results"] is None:  # the "server" works through the job in batches of the API's cap
        results: dict[str, WriteResult] = {}
        records = state["records"]
        for start in range(0, len(records), self.batch_size):
            chunk = records[start:start + self.batch_size]
            for record, result in zip(chunk, self.write_batch(state["target"], chunk, state["key"])):
                results[record.source_id] = result
        state["results"] = results
    return BulkJobStatus("done", processed=len(state["records"]))


def _results(self, job, records):
    done = JOBS[job["id"]]["results"]
    return [done.get(r.source_id) or WriteResult(r.source_id, None, error="not in the bulk job") for r in records]


def _test_run():
    return run("ascora_to_twenty", {"auto_approve": True, "fallback_owner": "owner@example.com", "sample_size": 30,
                                    "verify": "all"})


def _assert_each_record_once(twenty, ledger, run):
    reconcile = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
    assert reconcile["ok"] and reconcile["totals"]["missing"] == 0, reconcile
    for name, rows in _records(twenty).items():
        ids = [r["ascoraId"] for r in rows if r.get("ascoraId")]
        assert len(ids) == len(set(ids)), f"{name}: a record was written twice"


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_bulk_jobs_defer_and_their_results_are_recorded(sandbox, monkeypatch):  # noqa: F811
    monkeypatch.setattr(TwentyDestination, "bulk_threshold", _bulk_threshold)
    monkeypatch.setattr(TwentyDestination, "submit_bulk_job", _submit)
    monkeypatch.setattr(TwentyDestination, "poll_bulk_job", _poll)
    monkeypatch.setattr(TwentyDestination, "bulk_job_results", _results)
    monkeypatch.setattr(TwentyDestination, "bulk_poll_interval", 0.2)
    JOBS.clear()

    run = _test_run()

    assert JOBS, "no unit reached the bulk threshold"
    assert all(job["polls"] >= 2 for job in JOBS.values()), "the trigger did not poll until done"
    loads = [ti for ti in run.get_task_instances() if ti.task_id.startswith("load_wave_")]
    bulk_units = [ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) for ti in loads]
    bulk_units = [x for x in bulk_units if x and x.get("bulk_job")]
    assert len(bulk_units) == len(JOBS)
    ledger = _ledger()
    created = ledger.audit_ops_count(run.run_id).get("create", 0)
    assert created == sum(x["created"] for x in bulk_units) + sum(
        (ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) or {}).get("created", 0)
        for ti in loads if not (ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) or {}).get("bulk_job"))
    _assert_each_record_once(sandbox["twenty"], ledger, run)
    # A second run has nothing pending: no job is submitted and nothing is written.
    JOBS.clear()
    again = _test_run()
    assert JOBS == {} and ledger.audit_ops_count(again.run_id) == {}


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_quota_runs_out_mid_load_and_the_unit_resumes_without_duplicates(sandbox, monkeypatch):  # noqa: F811
    original = TwentyDestination.write_batch
    calls = {"n": 0, "paused": 0}
    lock = threading.Lock()

    def write_batch(self, target, records, key_field):
        with lock:
            calls["n"] += 1
            # Every 4th call finds the quota spent (the plugin checks *before* the call).
            if calls["n"] % 4 == 0:
                calls["paused"] += 1
                raise QuotaExhausted("daily API requests 14,990 of 15,000 used",
                                     resume_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        return original(self, target, records, key_field)

    monkeypatch.setattr(TwentyDestination, "write_batch", write_batch)
    run = _test_run()
    assert calls["paused"] >= 2, calls
    _assert_each_record_once(sandbox["twenty"], _ledger(), run)
    load_tis = [ti for ti in run.get_task_instances() if ti.task_id.startswith("load_wave_")]
    assert all(ti.try_number <= 1 for ti in load_tis), "a quota pause must not cost a task retry"
