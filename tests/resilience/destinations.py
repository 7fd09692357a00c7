"""The one table that plugs a destination into the resilience tests.

Every test in this folder is written against :class:`DestinationUnderTest`, never against a CRM by
name. Adding a destination is one more entry in :data:`DESTINATIONS` once its plugin and emulator
exist: how to build its emulator for a tenant, the options its plugin takes to reach that emulator
(JSON-able, because the crash test hands them to a child process), the Airflow connection a DAG
run uses, and how to list what the emulator holds.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ascora_provider.sandbox.emulator import FaultPlan, ServedApp
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
    # Plugin options that slow the load to about 0.2 s a write call, so that every kill of the crash
    # test lands inside the load (test_crash_safety).
    crash_pacing: dict[str, Any]
    # (emulator app) -> a ServedApp to start (an emulator may need https, as Dataverse's does).
    serve: Callable[[Any], ServedApp] = ServedApp
    # For a plugin with no pacing to slow down (Salesforce): faults switched on in the CRM emulator for
    # the crash test's load, e.g. every answer ``slow`` by a real org's latency.
    crash_faults: FaultPlan | None = None
    # Test function -> why it fails for this destination today: marked xfail(strict=True) by the
    # ``destination`` fixture, so the day it passes the suite says so.
    known_failures: dict[str, str] = field(default_factory=dict)

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
    crash_pacing={"requests_per_minute": 300},
)


# ---- Dynamics 365 (Dataverse) ------------------------------------------------------------------

@functools.cache
def _tls_certificate() -> tuple[Path, Path]:
    """One self-signed certificate for every https emulator of the session (msal and simple-salesforce
    need https), made before any emulator, so the plugin options (handed to child processes too) can
    name its CA file."""
    from airflow_ascora_provider.sandbox.dataverse import self_signed_certificate

    return self_signed_certificate(tempfile.mkdtemp(prefix="resilience-tls-"))


def _dataverse_emulator(tenant: Path, api_key: str):
    from airflow_ascora_provider.sandbox.dataverse import create_app
    from tests.integration.dataverse_support import dataverse_users

    return create_app(api_key=api_key, rate_limit=None, users=dataverse_users(tenant),
                      key_activation_seconds=0.05)


def _dataverse_serve(app) -> ServedApp:
    from airflow_ascora_provider.sandbox.dataverse import TlsServedApp

    return TlsServedApp(app, certificate=_tls_certificate())


def _dataverse_extra() -> dict[str, Any]:
    from airflow_ascora_provider.sandbox.dataverse import DEFAULT_PREFIX, DEFAULT_TENANT

    return {"tenant_id": DEFAULT_TENANT, "ca_bundle": str(_tls_certificate()[0]),
            "publisher_prefix": DEFAULT_PREFIX, "key_wait_seconds": 30, "requests_per_window": 0}


def _dataverse_options(url: str, key: str) -> dict[str, Any]:
    from airflow_ascora_provider.sandbox.dataverse import DEFAULT_CLIENT_ID

    return {"base_url": url, "client_id": DEFAULT_CLIENT_ID, "client_secret": key, "authority_host": url,
            **_dataverse_extra()}


def _dataverse_connection(url: str, key: str) -> dict[str, Any]:
    from airflow_ascora_provider.sandbox.dataverse import DEFAULT_CLIENT_ID

    return {"conn_type": "dataverse", "host": url, "login": DEFAULT_CLIENT_ID, "password": key,
            "extra": {"authority_host": url, **_dataverse_extra()}}


def _dataverse_stored(app, target: str) -> list[StoredRecord]:
    """Rows of the target's table; a note (annotation) keeps its Ascora id as a tag in ``notetext``."""
    import re

    from airflow_ascora_provider.destinations.dynamics365.plugin import STANDARD_TABLES
    from airflow_ascora_provider.sandbox.dataverse import DEFAULT_PREFIX

    state = app.state.dataverse
    logical = target if target in STANDARD_TABLES else f"{DEFAULT_PREFIX}_{target}"
    primary = state.entity(logical).primary_id
    out = []
    for row in state.snapshot()["records"].get(logical, []):
        if logical == "annotation":
            tag = re.search(r"\[ascora:([^\]\n]+)\]", row.get("notetext") or "")
            key = tag.group(1) if tag else None
        else:
            key = row.get(f"{DEFAULT_PREFIX}_ascora_id")
        out.append(StoredRecord(row[primary], key))
    return out


DYNAMICS = DestinationUnderTest(
    name="dynamics365",
    dag_id="ascora_to_dynamics365",
    conn_id="dataverse_default",
    api_key="dataverse-resilience-secret",  # the app registration's client secret
    create_emulator=_dataverse_emulator,
    plugin_options=_dataverse_options,
    connection=_dataverse_connection,
    stored=_dataverse_stored,
    # 6,000 requests per 5 minutes per user, each request inside a $batch counted (Dataverse's service
    # protection); the hook's default 30 s timeout.
    published_limits=lambda speedup: {"requests_per_window": 6000 * speedup, "window_seconds": 300.0,
                                      "timeout": 30 / speedup},
    # The hook keeps a modelled window of 90% of the limit: 25 requests per 0.25 s (about 90 a second,
    # batches of 10 weighing 11) keeps every kill of the crash test inside the load.
    crash_pacing={"requests_per_window": 25, "window_seconds": 0.25, "batch_size": 10},
    serve=_dataverse_serve,
    known_failures={"test_fault_soak_loads_every_valid_record_once": (
        "correct but over the 1.5x time bound (1.9-2.1x: 6.8-7.0 s against 3.3-3.6 s fault-free): at "
        "Dataverse's 6,000 requests/5 min the 400-record tenant loads almost unpaced (3.3 s compressed, "
        "100 s real), "
        "so fixed fault costs weigh: one injected timeout costs a whole client timeout (1 s, 30 s real), "
        "and the schema step's 240 single calls (one per column, lookup, key) meet about 70 faults and "
        "retries. Every record, quarantine, ledger and reconciliation check passes.")},
)


# ---- Salesforce ----------------------------------------------------------------------------------

SALESFORCE_CUSTOM_OBJECTS = ({"name": "Invoice__c", "label": "Invoice"},
                             {"name": "Quote_Line_Item__c", "label": "Quote Line Item"})
# Bulk API 2.0 jobs (above ``bulk_threshold`` pending records) are the DAG's deferrable path; the
# resilience loads run batch by batch through Collections, whatever the tenant's size.
SALESFORCE_BULK_THRESHOLD = 10_000_000


def _salesforce_emulator(tenant: Path, api_key: str):
    """An org with the tenant's staff as Users and the custom objects an admin creates in Setup."""
    from airflow_ascora_provider.sandbox.salesforce import create_app

    return create_app(api_key=api_key, users=tenant_members(tenant), custom_objects=list(SALESFORCE_CUSTOM_OBJECTS))


def _salesforce_serve(app) -> ServedApp:
    from airflow_ascora_provider.sandbox.salesforce import TlsServedApp

    return TlsServedApp(app, certificate=_tls_certificate())


def _salesforce_connection(url: str, key: str) -> dict[str, Any]:
    """Direct-session auth (``access_token`` + ``instance_url``), as the emulator's docs describe."""
    return {"conn_type": "salesforce", "extra": {
        "instance_url": url, "version": "62.0", "access_token": key, "ca_bundle": str(_tls_certificate()[0]),
        "bulk_threshold": SALESFORCE_BULK_THRESHOLD}}


def _salesforce_options(url: str, key: str) -> dict[str, Any]:
    """The plugin's options; ``instance_url`` only exists on the Airflow connection.

    SalesforceHook reads the org's address from its connection and nowhere else, so this defines
    ``salesforce_default`` for ``url`` in this process's environment (a child process gets it through
    :meth:`DestinationUnderTest.conn_env`, as an Airflow task reads its connection).
    """
    import os

    os.environ.update([SALESFORCE.conn_env(url, key)])
    return {"access_token": key, "ca_bundle": str(_tls_certificate()[0]),
            "bulk_threshold": SALESFORCE_BULK_THRESHOLD}


def _salesforce_stored(app, target: str) -> list[StoredRecord]:
    """Live records of the target, read from the org itself rather than ``Org.snapshot()``: the
    snapshot leaves setup objects out, and the ``staff_role`` map writes Users (existing ones, which
    keep no Ascora id), whose crosswalk entries must still be found in the org."""
    org = app.state.salesforce
    with org.lock:
        rows = list(org.records.get(target, {}).values())
        return [StoredRecord(r["Id"], r.get("Ascora_Id__c")) for r in rows if not r.get("IsDeleted")]


SALESFORCE = DestinationUnderTest(
    name="salesforce",
    dag_id="ascora_to_salesforce",
    conn_id="salesforce_default",
    api_key="salesforce-resilience-session",  # the session id (access token) the org accepts
    create_emulator=_salesforce_emulator,
    plugin_options=_salesforce_options,
    connection=_salesforce_connection,
    stored=_salesforce_stored,
    # Salesforce publishes a daily request quota, not a rate: the plugin does not pace (nothing to
    # compress), and simple-salesforce sets no client timeout. Its retries (urllib3) honour
    # ``Retry-After``, which the soak sets to 1 s.
    published_limits=lambda speedup: {},
    # No pacing to slow down with: batches of 5, and every answer 0.1 s late (a real org's latency;
    # the emulator answers in a few ms), so that about 0.15 s a call every kill lands inside the load.
    crash_pacing={"batch_size": 5},
    crash_faults=FaultPlan(rate_slow=1.0, slow_seconds=0.1),
    serve=_salesforce_serve,
    known_failures={"test_fault_soak_loads_every_valid_record_once": (
        "correct but far over the 1.5x time bound (33x: 27.2 s against 0.8 s fault-free), because time "
        "is not compressed for this plugin: simple-salesforce's session retries through urllib3 "
        "(Retry-After 1 s, back-off 0.5 s x 2^n) and the plugin's cut-off-reply re-send sleep in real "
        "time (compressed_time only patches ApiClient), and simple-salesforce sets no client timeout, "
        "so an injected 5 s stall is waited out in full. Every record, quarantine, ledger and "
        "reconciliation check before the time bound passes.")},
)

DESTINATIONS: dict[str, DestinationUnderTest] = {d.name: d for d in (TWENTY, DYNAMICS, SALESFORCE)}
