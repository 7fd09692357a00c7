"""``make demo``: the whole migration on embedded defaults, end to end, on this machine.

1. generate a synthetic Ascora tenant (a few thousand records, some of them dirty);
2. start the Ascora and Twenty emulators on loopback;
3. run the ``ascora_to_twenty`` DAG with ``dag.test()`` on a SQLite metadata DB and a SQLite ledger
   (approvals automatic: ``auto_approve``);
4. change some records in Ascora, run the delta DAG, and print what it wrote;
5. print the reconciliation summary and where every report is.

Everything lands in ``./demo-output`` (or ``--out``). Nothing here is faked: the steps are the
provider's operators talking HTTP to the emulators.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _prepare_environment(out: Path) -> None:
    """Airflow reads its settings at import time, so they are set before anything imports it."""
    home = out / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_dags_folder())
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    os.environ["ASCORA_LEDGER_URL"] = f"sqlite:///{out / 'ledger.sqlite'}"
    os.environ["ASCORA_STAGING_PATH"] = str(out / "staging")


def _dags_folder() -> Path:
    repo_dags = REPO / "dags"
    return repo_dags if (repo_dags / "ascora_to_twenty.py").exists() else Path(__file__).parent / "example_dags_folder"


def _members(tenant: Path) -> list[dict]:
    users = [json.loads(line) for line in (tenant / "api" / "users.jsonl").read_text().splitlines() if line]
    members = [{"email": u["emailAddress"], "firstName": u["firstName"], "lastName": u["lastName"]}
               for u in users[:-1] if u.get("emailAddress")]  # one technician has no Twenty account
    return members + [{"email": "office@demo.example", "firstName": "Office", "lastName": "Manager"}]


def _run(dag_id: str, conf: dict) -> object:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    run = bag.get_dag(dag_id).test(run_conf=conf)
    if run.state != "success":
        failed = [ti.task_id for ti in run.get_task_instances() if ti.state == "failed"]
        raise SystemExit(f"{dag_id} ended {run.state}; failed tasks: {failed}")
    return run


def _change_source(ascora_url: str) -> dict:
    """What a busy office does during the cutover window: edit two customers and a job, add a customer."""
    import httpx

    client = httpx.Client(base_url=ascora_url, headers={"Auth": "ascora-sandbox-key"})
    billing = client.get("/Customers/Customers", params={"SiteBillingType": "Billing", "PageSize": 2}).json()["results"]
    for customer in billing:
        client.post("/Customers/Customer", json={**customer, "phoneNumber": "08 6555 0101"}).raise_for_status()
    job = client.get("/Jobs/Jobs", params={"JobStatus": "ALL", "PageSize": 1}).json()["results"][0]
    client.post(f"/__ascora__/jobs/{job['jobNumber']}", json={"jobName": job["jobName"] + " (revised)"}).raise_for_status()
    client.post("/Customers/Customer", json={"customerName": "Cutover Weekend Electrical Pty Ltd",
                                             "companyName": "Cutover Weekend Electrical Pty Ltd",
                                             "emailAddress": "admin@cutover-electrical.example"}).raise_for_status()
    return {"customers_edited": len(billing), "jobs_edited": 1, "customers_added": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="folder for everything the demo writes")
    parser.add_argument("--size", type=int, default=3000, help="approximate number of Ascora records")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--clean", action="store_true", help="generate a tenant without the usual mess")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _prepare_environment(out)
    print(f"[1/6] Airflow metadata DB in {os.environ['AIRFLOW_HOME']}")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)

    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.generate import generate_tenant
    from airflow_ascora_provider.sandbox.twenty import create_app as twenty_app

    tenant = out / "tenant"
    counts = generate_tenant(tenant, size=args.size, seed=args.seed, dirty=not args.clean)
    print(f"[2/6] Generated a {'clean' if args.clean else 'dirty'} Ascora tenant: {sum(counts.values())} records "
          f"in {tenant}")
    with ServedApp(ascora_app(tenant)) as ascora, ServedApp(twenty_app(rate_limit=100_000, members=_members(tenant))) as twenty:
        os.environ["AIRFLOW_CONN_ASCORA_DEFAULT"] = json.dumps({
            "conn_type": "ascora", "host": ascora.url, "password": "ascora-sandbox-key",
            "extra": {"enable_extensions": True}})
        os.environ["AIRFLOW_CONN_TWENTY_DEFAULT"] = json.dumps({
            "conn_type": "twenty", "host": twenty.url, "password": "twenty-sandbox-key",
            "extra": {"requests_per_minute": 0}})
        print(f"[3/6] Emulators: Ascora {ascora.url}, Twenty {twenty.url}")

        run = _run("ascora_to_twenty", {"auto_approve": True, "fallback_owner": "office@demo.example",
                                        "sample_size": 300, "verify": "all"})
        reconcile = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
        print(f"[4/6] ascora_to_twenty: {run.state}; reconciliation {'OK' if reconcile['ok'] else 'FAILED'}: "
              f"{reconcile['totals']}")

        changes = _change_source(ascora.url)
        delta = _run("ascora_twenty_delta", {})
        from airflow_ascora_provider.hooks.ledger import LedgerHook

        ops = LedgerHook().get_ledger().audit_ops_count(delta.run_id)
        print(f"[5/6] Delta after {changes}: wrote {ops or 'nothing'}")

    reports = Path(os.environ["ASCORA_STAGING_PATH"]) / "reports"
    print("[6/6] Reports:")
    for path in sorted(reports.glob("*/*.html")):
        print(f"      {path}")
    print(f"\nReconciliation report: {reconcile['report']['html']}")
    return 0 if reconcile["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
