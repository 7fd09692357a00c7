"""The one table that plugs a destination into the resilience tests.

Every test in this folder is written against :class:`DestinationUnderTest`, never against a CRM by
name. Adding a destination is one more entry in :data:`DESTINATIONS` once its plugin and emulator
exist: how to build its emulator for a tenant, the options its plugin takes to reach that emulator
(JSON-able, because the crash test hands them to a child process), the Airflow connection a DAG
run uses, and how to list what the emulator holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import tenant_members

FALLBACK_OWNER = "owner@example.com"


@dataclass(frozen=True)
class StoredRecord:
    """One record as the emulator holds it: its destination id and the Ascora id in its key field."""

    dest_id: str
    key: str | None


@dataclass(frozen=True)
class DestinationUnderTest:
    name: str  # the plugin's registered name
    dag_id: str  # its migration DAG in dags/
    conn_id: str  # the connection that DAG reads
    api_key: str  # the credential its emulator accepts (tests pass distinctive ones)
    create_emulator: Callable[[Path, str], Any]  # (tenant folder, api key) -> instrumented ASGI app
    plugin_options: Callable[[str, str], dict[str, Any]]  # (url, api key) -> Destination(**options)
    connection: Callable[[str, str], dict[str, Any]]  # (url, api key) -> AIRFLOW_CONN_* JSON
    stored: Callable[[Any, str], list[StoredRecord]]  # (emulator app, target) -> live records
    # Plugin options that pace at the CRM's published rate limit with its usual client timeout, both
    # divided by ``speedup`` (the fault soak runs in compressed time; see test_fault_soak).
    published_limits: Callable[[float], dict[str, Any]]

    def connect(self, url: str, api_key: str | None = None, **overrides: Any):
        """The plugin, talking to an emulator at ``url`` (``overrides`` go to its constructor)."""
        from airflow_ascora_provider.destinations.manager import get_destination

        return get_destination(self.name, None, **(self.plugin_options(url, api_key or self.api_key) | overrides))

    def conn_env(self, url: str, api_key: str | None = None) -> tuple[str, str]:
        """``(variable, value)`` defining the DAG's connection through the environment."""
        return f"AIRFLOW_CONN_{self.conn_id.upper()}", json.dumps(self.connection(url, api_key or self.api_key))


# ---- Twenty ------------------------------------------------------------------------------------

def _twenty_emulator(tenant: Path, api_key: str):
    from airflow_ascora_provider.sandbox.twenty import create_app

    return create_app(api_key=api_key, rate_limit=None, members=tenant_members(tenant))


def _twenty_stored(app, target: str) -> list[StoredRecord]:
    rows = app.state.twenty.snapshot()["records"].get(target, [])
    return [StoredRecord(r["id"], r.get("ascoraId")) for r in rows if not r.get("deletedAt")]


TWENTY = DestinationUnderTest(
    name="twenty",
    dag_id="ascora_to_twenty",
    conn_id="twenty_default",
    api_key="twenty-resilience-key",
    create_emulator=_twenty_emulator,
    plugin_options=lambda url, key: {"base_url": url, "api_key": key, "requests_per_minute": 0},
    connection=lambda url, key: {"conn_type": "twenty", "host": url, "password": key,
                                 "extra": {"requests_per_minute": 0}},
    stored=_twenty_stored,
    # 100 requests a minute (Twenty's documented limit); the hook's default 30 s timeout.
    published_limits=lambda speedup: {"requests_per_minute": 100 * speedup, "timeout": 30 / speedup},
)

DESTINATIONS: dict[str, DestinationUnderTest] = {d.name: d for d in (TWENTY,)}
