"""Crash safety: the load is SIGKILLed at random moments, many times, then resumed to the end.

The load runs in a child process (``load_worker``) that rebuilds its context from names, as an
Airflow task does; the CRM emulator runs in this process, so it survives every kill. After each
kill the destination holds no duplicate and the ledger agrees with it (a record the ledger has not
heard of is allowed only while its write intent is pending: the resume adopts exactly those).
After the final resume nothing is pending, the ledger and the destination agree record for record,
reconciliation finds nothing missing, and the destination holds the same records as a load that
was never interrupted.

CI kills 8 times per ledger backend; ``ASCORA_FULL_BENCH=1`` kills ``ASCORA_CRASH_ROUNDS`` (40) times.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from tests.resilience.harness import ledger_disagreements, prepare_migration, quarantined_records

FULL = os.environ.get("ASCORA_FULL_BENCH") == "1"
ROUNDS = int(os.environ.get("ASCORA_CRASH_ROUNDS", "40")) if FULL else 8
KILL_AFTER = (0.1, 1.5)  # seconds after the worker announced the load
STARTUP_TIMEOUT = 180


@pytest.fixture(scope="session")
def child_env(tmp_path_factory):
    """The worker's environment: only this destination's plugin, and a bytecode cache it can reuse.

    Each worker is a fresh interpreter importing Airflow; with PYTHONDONTWRITEBYTECODE every one of
    them would compile it again, so the workers share a private cache folder instead.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    # An Airflow home of the workers' own. A load needs no metadata DB (its connection comes from the
    # environment), but these processes fork and are SIGKILLed: had anything in them opened the
    # session's shared SQLite metadata DB, a kill or a connection carried over a fork could damage
    # it for every later test.
    home = tmp_path_factory.mktemp("crash-airflow-home")
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    return env


@pytest.fixture(scope="session")
def uninterrupted(soak_tenant, tmp_path_factory):
    """What the destination holds after a load nobody interrupted, per destination name."""
    from airflow_ascora_provider.engine.runner import load_everything
    from tests.resilience.destinations import DESTINATIONS

    out = {}
    for name, spec in DESTINATIONS.items():
        workdir = tmp_path_factory.mktemp(f"uninterrupted-{name}")
        migration = prepare_migration(spec, soak_tenant, workdir, f"sqlite:///{workdir / 'ledger.sqlite'}")
        try:
            load_everything(migration.ctx)
            out[name] = {"stored": _keys(migration), "quarantined": set(quarantined_records(migration))}
        finally:
            migration.close()
    return out


def _keys(migration) -> dict[str, list[str]]:
    return {t: sorted(r.key for r in rows if r.key) for t, rows in migration.stored().items()}


class LoadServer:
    """The ``load_worker`` server: one warm interpreter forking a load process per round."""

    def __init__(self, config_path, env, destination: str):
        self.log = config_path.with_suffix(".log")
        with self.log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.resilience.load_worker", str(config_path)],
                cwd=REPO, env=env | {"ASCORA_LOAD_DESTINATIONS": destination},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready", STARTUP_TIMEOUT)

    def _read(self) -> None:
        """Every line the worker prints, in a queue (then "" at its end).

        Not ``select`` on the pipe: ``readline`` buffers whatever arrived, so when two lines come in
        one read (``done`` and ``exit 0`` of a load that finished on its own) the second sits in the
        buffer while ``select`` sees an empty pipe, and the test waited for a line it already had.
        """
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line:
            raise AssertionError(f"the load worker went quiet; it said {self.output[-20:]}, and on stderr:\n"
                                 + self.log.read_text()[-3000:])
        self.output.append(line.strip())
        return line.strip()

    def _expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(max(0.1, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line
            if line.startswith("error"):
                raise AssertionError(f"the load failed: {line}\n" + self.log.read_text()[-3000:])

    def start_load(self) -> int:
        """Fork a load; returns its pid once it announced the load."""
        self.proc.stdin.write("load\n")
        self.proc.stdin.flush()
        pid = int(self._expect("pid", 30).split()[1])
        self._expect("loading", 60)
        return pid

    def outcome(self, timeout: float = 600) -> int:
        """The exit code of the current load (negative: the signal that killed it)."""
        return int(self._expect("exit", timeout).split()[1])

    def finished_on_its_own(self) -> bool:
        """Whether the current load already ended (read without waiting)."""
        return not self._lines.empty()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _kill_and_resume(destination, soak_tenant, tmp_path, ledger_url, child_env, uninterrupted, seed):
    from airflow_ascora_provider.engine.reconcile import reconcile

    url, schema = ledger_url
    migration = prepare_migration(destination, soak_tenant, tmp_path, url, schema)
    if destination.crash_faults is not None:
        migration.crm.control.set_faults(destination.crash_faults)
    worker_config = migration.worker_config()
    # Only the load is paced, slow enough (about 0.2 s a call) for every kill to land inside it.
    worker_config["plugin_options"] |= destination.crash_pacing
    config = tmp_path / "worker.json"
    config.write_text(json.dumps(worker_config))
    rng = random.Random(seed)
    # The worker reads the DAG's connection from its environment, as a task does (Salesforce's hook
    # finds the org's address there and only there).
    server = LoadServer(config, child_env | dict([destination.conn_env(migration.crm.url)]), destination.name)
    try:
        kills = 0
        for round_no in range(ROUNDS):
            pid = server.start_load()
            time.sleep(rng.uniform(*KILL_AFTER))
            if server.finished_on_its_own():
                break
            os.kill(pid, signal.SIGKILL)
            assert server.outcome() == -signal.SIGKILL
            kills += 1
            problems = ledger_disagreements(migration, allow_in_flight=True)
            assert problems == [], f"after kill {round_no + 1}: {problems[:10]}"
        else:
            server.start_load()
        assert server.outcome() == 0, server.output[-20:]
        assert kills >= min(ROUNDS, 5), f"only {kills} kills landed inside the load; slow the pacing down"

        assert migration.ledger.pending_intents(destination.name) == []
        assert ledger_disagreements(migration) == []
        expected = uninterrupted[destination.name]
        assert _keys(migration) == expected["stored"]
        assert set(quarantined_records(migration)) == expected["quarantined"]
        result = reconcile(migration.ctx, verify="all")
        assert result["ok"] and result["totals"]["missing"] == 0, result["totals"]
        return kills
    finally:
        server.close()
        migration.close()


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_sigkill_at_random_points_then_resume(destination, soak_tenant, tmp_path, ledger_url, child_env,
                                              uninterrupted):
    kills = _kill_and_resume(destination, soak_tenant, tmp_path, ledger_url, child_env, uninterrupted,
                             seed=ROUNDS)
    assert kills > 0
