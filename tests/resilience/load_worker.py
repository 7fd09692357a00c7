"""Run the full load of a prepared migration in processes the crash test can SIGKILL.

``python -m tests.resilience.load_worker CONFIG.json`` imports the provider once, prints ``ready``,
then serves one command per line on stdin: ``load`` forks a child that runs the load and prints
``pid <n>`` (the process to kill); when the child ends the server prints ``exit <code>`` (negative:
killed by that signal). ``quit`` ends the server. Forking from a warm process keeps a kill round
from paying Airflow's import time again, while every load still runs in a process of its own.

A child rebuilds everything from names, the way an Airflow task does: the ledger from its URL, the
approved mapping from the ledger, the snapshot from staging and the destination from its plugin
name and options. It prints ``loading`` when the load starts and ``done`` when it finished.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run_load(config: dict) -> None:
    from airflow_ascora_provider.engine.context import MigrationContext, approved_mapping_or_default
    from airflow_ascora_provider.engine.runner import load_everything
    from airflow_ascora_provider.ledger import Ledger

    ledger = Ledger(config["ledger_url"], schema=config["ledger_schema"])
    ctx = MigrationContext(config["run_id"], config["destination"], ledger, config["staging"], config["snapshot"],
                           approved_mapping_or_default(ledger, config["destination"]),
                           destination_options=config["plugin_options"],
                           fallback_owner_email=config["fallback_owner"])
    ctx.require_approved_mapping()
    ctx.destination  # noqa: B018 - build the plugin before announcing the load
    print("loading", flush=True)
    try:
        load_everything(ctx)
    finally:
        ctx.close()
    print("done", flush=True)


def _preload(config: dict) -> None:
    """Import everything a load imports (the plugin's hook included) before any fork."""
    import airflow_ascora_provider.engine.runner  # noqa: F401
    from airflow_ascora_provider.destinations.manager import get_destination

    get_destination(config["destination"], None, **config["plugin_options"]).close()


def serve(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    _preload(config)
    print("ready", flush=True)
    for command in sys.stdin:
        if command.strip() != "load":
            break
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_load(config)
            except BaseException as exc:  # noqa: BLE001 - reported to the test, then the child ends
                print(f"error {exc!r}", flush=True)
                code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
