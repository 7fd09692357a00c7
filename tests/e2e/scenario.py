"""The steps every destination's end-to-end DAG test takes the same way.

Each destination test proves the same cutover story: full run, identical re-run that writes nothing,
a delta after Ascora changed, and rollback back to the destination as it was. What differs is the
destination's emulator and how its records are read back; what is the same lives here: running a
DAG with ``dag.test()``, reading the ledger, and making the source changes a delta must pick up.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

#: What :func:`change_ascora_for_delta` makes a delta write: the new customer, the two changed
#: customers and the renamed job.
DELTA_WRITES = {"create": 1, "update": 3}
NEW_PHONE = "08 9999 0000"


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run(dag_id: str, conf: dict[str, Any], *, expect: str = "success"):
    """One ``dag.test()`` run; a run in another state fails the test naming the tasks that did not succeed."""
    result = dag(dag_id).test(run_conf=conf)
    failed = [(ti.task_id, ti.map_index, ti.state) for ti in result.get_task_instances()
              if ti.state not in ("success", "skipped")]
    assert result.state == expect, failed
    return result


def ledger():
    from airflow_ascora_provider.hooks.ledger import LedgerHook

    return LedgerHook().get_ledger()


def roll_back(destination: str, *run_ids: str) -> None:
    """Roll back each run in the order given (newest first, as an operator would)."""
    for run_id in run_ids:
        run("ascora_rollback", {"destination": destination, "run_id": run_id, "confirm": True})


def change_ascora_for_delta(ascora_url: str, *, companies_only: bool = False) -> dict[str, Any]:
    """Change two customers' phone numbers, rename one job and add one customer in Ascora.

    ``companies_only`` picks company customers (a destination whose individuals live on several records
    would otherwise see more than one update per changed customer). Returns what was changed.
    """
    ascora = httpx.Client(base_url=ascora_url, headers={"Auth": "ascora-sandbox-key"})
    params = {"SiteBillingType": "Billing", "PageSize": 50 if companies_only else 5}
    billing = ascora.get("/Customers/Customers", params=params).json()["results"]
    customers = [c for c in billing if not companies_only or (c.get("companyName") or "").strip()][:2]
    for customer in customers:
        assert ascora.post("/Customers/Customer", json={**customer, "phoneNumber": NEW_PHONE}).json()["success"]
    job = ascora.get("/Jobs/Jobs", params={"JobStatus": "ALL", "PageSize": 1}).json()["results"][0]
    assert ascora.post(f"/__ascora__/jobs/{job['jobNumber']}", json={"jobName": "Replace hot water unit (delta)"}
                       ).json()["success"]
    created = ascora.post("/Customers/Customer", json={"customerName": "Delta Test Plumbing Pty Ltd",
                                                       "companyName": "Delta Test Plumbing Pty Ltd",
                                                       "emailAddress": "office@deltatest.example"}).json()
    assert created["success"]
    return {"customers": customers, "job": job}
