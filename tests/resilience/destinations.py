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
    # Why the 5,000-record fault soak runs slower than 1.5x its fault-free time (measured figures): a
    # run over the bound is then an xfail with its ratio, once every correctness check has passed.
    over_time_bound: str = ""

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
    # 100 requests a minute (Twenty's documented limit), counted in a minute's window; the hook's
    # default 30 s timeout.
    published_limits=lambda speedup: {"requests_per_minute": 100 * speedup, "rate_window_seconds": 60 / speedup,
                                      "timeout": 30 / speedup},
    # 5 calls in any second: about 0.2 s a call.
    crash_pacing={"requests_per_minute": 300, "rate_window_seconds": 1.0},
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
    # Batches of 10 weigh 11 requests. The hook keeps its requests in any window to 90% of the limit
    # (22 in 0.25 s here), so two batches go out per quarter second: about 90 requests a second, the
    # pace of 90% of 6,000 a minute, with a window short enough to bind on a 400-record load.
    crash_pacing={"requests_per_window": 25, "window_seconds": 0.25, "batch_size": 10},
    serve=_dataverse_serve,
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
    # compress). Its session retries under the provider's RetryPolicy (compressed like every other
    # plugin's) with the plugin's default 30 s client timeout.
    published_limits=lambda speedup: {"timeout": 30 / speedup},
    # No pacing to slow down with: batches of 5, and every answer 0.1 s late (a real org's latency;
    # the emulator answers in a few ms), so that about 0.15 s a call every kill lands inside the load.
    crash_pacing={"batch_size": 5},
    crash_faults=FaultPlan(rate_slow=1.0, slow_seconds=0.1),
    serve=_salesforce_serve,
)


# ---- Freshsales ----------------------------------------------------------------------------------

def _freshsales_users(tenant: Path) -> list[dict[str, str]]:
    return [{"email": m["email"], "display_name": f"{m['firstName']} {m['lastName']}"} for m in tenant_members(tenant)]


def _freshsales_admin_setup(app, tenant: Path, api_key: str) -> None:
    """The account as the customer's admin leaves it before the migration.

    Freshsales' API creates custom modules but not custom fields or dropdown values: those are made
    in its UI from the list the schema step gives (``admin_steps``). A DAG run stops at its schema step
    until they exist, so the account is prepared for the tenant here, once: the tenant extracted,
    the mapping completed, the module created by API and the rest done "as the admin" (the emulator's
    own state, as ``Rig.prepare_schema`` in tests/integration/test_freshsales_engine.py does).
    """
    from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.sandbox.ascora import DEFAULT_API_KEY, create_app as ascora_app
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    snapshot = Snapshot(tempfile.mkdtemp(prefix="freshsales-admin-"), "admin")
    with ServedApp(ascora_app(tenant, api_key=DEFAULT_API_KEY)) as ascora, ServedApp(app) as crm:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key=DEFAULT_API_KEY, enable_extensions=True)),
                snapshot)
        dest = FreshsalesDestination(base_url=crm.url, api_key=api_key, plan="pro", requests_per_minute=0)
        try:
            described = dest.describe_schema()
            mapping = complete_mapping(
                load_mapping(FreshsalesDestination.default_mapping), audit_snapshot(snapshot), dest.custom_field_name,
                {n: {f for f, d in o.fields.items() if not d.custom} for n, o in described.items()}, described)
            plan = plan_for(mapping, dest)
            apply_schema(dest, plan)
            app.state.freshsales.apply_admin_steps(dest.admin_steps(plan.changes))
        finally:
            dest.close()
        crm.control.reset_log()


def _freshsales_emulator(tenant: Path, api_key: str):
    """A Pro account (the Growth plan's custom-field caps do not fit a generated tenant's mapping) with
    the tenant's staff as users and its schema prepared; no per-minute limit and an hourly budget out
    of reach (tests that measure the limits set their own)."""
    from airflow_ascora_provider.sandbox.freshsales import create_app

    app = create_app(api_key=api_key, plan="pro", rate_limit=0, hourly_limit=1_000_000,
                     users=_freshsales_users(tenant))
    _freshsales_admin_setup(app, tenant, api_key)
    return app


def _freshsales_stored(app, target: str) -> list[StoredRecord]:
    """Live records of the target; a note's or task's Ascora id is the last line of its text, a
    document holds none (its crosswalk entry is still checked by id). Leads are contacts at stage Lead
    on an account without the Leads module (the emulator's default)."""
    from airflow_ascora_provider.destinations.freshsales.plugin import _split_key

    state = app.state.freshsales
    if target == "deal_product":  # rows of a deal's product list: "<deal id>:<product id>"
        with state.lock:
            return [StoredRecord(f"{d['id']}:{p['id']}", None) for d in state.records["deal"].values()
                    for p in d.get("products") or []]
    entity = {"equipment": "cm_equipment", "lead": "contact"}.get(target, target)
    if target == "lead" and state.fields.get("leads"):
        entity = "lead"
    out = []
    for row in state.records_of(entity):
        key = (row.get("custom_field") or {}).get("cf_ascora_id") or _split_key(row.get("description"))[1]
        if target == "lead" and entity == "contact" and row.get("lifecycle_stage_id") is None:
            continue  # a contact of another map
        if target == "contact" and row.get("lifecycle_stage_id") is not None:
            continue  # an enquiry's lead
        out.append(StoredRecord(str(row["id"]), key))
    return out


FRESHSALES = DestinationUnderTest(
    name="freshsales",
    dag_id="ascora_to_freshsales",
    conn_id="freshsales_default",
    api_key="freshsales-resilience-key",
    create_emulator=_freshsales_emulator,
    plugin_options=lambda url, key: {"base_url": url, "api_key": key, "plan": "pro", "requests_per_minute": 0},
    connection=lambda url, key: {"conn_type": "freshsales", "host": url, "password": key,
                                 "extra": {"plan": "pro", "requests_per_minute": 0}},
    stored=_freshsales_stored,
    # 400 requests a minute on paid plans; the hourly budget (2,000 on Pro) is a stop, not a pace, and
    # the emulator's is out of reach here. The hook's default 30 s timeout.
    published_limits=lambda speedup: {"requests_per_minute": 400 * speedup, "timeout": 30 / speedup},
    # Batches of 5 at 300 calls a minute: about 0.2 s per single write call, so every kill lands
    # inside the load (bulk-capable batches of 4 or more new records are one job of 3 calls).
    crash_pacing={"requests_per_minute": 300, "batch_size": 5},
)


# ---- Zoho CRM ----------------------------------------------------------------------------------

ZOHO_CLIENT = {"client_id": "1000.SANDBOXCLIENT", "client_secret": "sandbox-secret"}


def _zoho_emulator(tenant: Path, api_key: str):
    """An Enterprise org with the tenant's staff as users; ``api_key`` is the refresh token it accepts."""
    from airflow_ascora_provider.sandbox.zoho import create_app

    users = [{"email": m["email"], "first_name": m["firstName"], "last_name": m["lastName"]}
             for m in tenant_members(tenant)]
    return create_app(api_key=api_key, users=users, edition="enterprise")


def _zoho_stored(app, target: str) -> list[StoredRecord]:
    """Live records of a module, keyed by ``Ascora_ID`` (a note's by the key line of its body). The
    plugin's holding records (``holding:<name>``, e.g. the 'Ascora Import' account) are its own, not
    migrated ones: no key. Attachments have no key; their id is the plugin's ``module:record:id``."""
    from airflow_ascora_provider.destinations.zoho.plugin import HOLDING_PREFIX, split_note_key

    org = app.state.zoho
    with org.lock:
        if target == "Attachments":
            return [StoredRecord(f"{a['module']}:{a['parent_id']}:{a['id']}", None) for a in org.attachments.values()]
        module = org.modules.get(target)
        rows = list(module.records.values()) if module else []
    out = []
    for row in rows:
        key = split_note_key(row.get("Note_Content"))[1] if target == "Notes" else row.get("Ascora_ID")
        out.append(StoredRecord(row["id"], None if str(key or "").startswith(HOLDING_PREFIX) else key))
    return out


ZOHO = DestinationUnderTest(
    name="zoho",
    dag_id="ascora_to_zoho",
    conn_id="zoho_default",
    api_key="1000.zoho-resilience-refresh-token",  # the refresh token the org's OAuth client accepts
    create_emulator=_zoho_emulator,
    plugin_options=lambda url, key: {"accounts_url": url, **ZOHO_CLIENT, "refresh_token": key,
                                     "edition": "enterprise"},
    connection=lambda url, key: {"conn_type": "zoho", "host": url, "login": ZOHO_CLIENT["client_id"],
                                 "password": ZOHO_CLIENT["client_secret"],
                                 "extra": {"refresh_token": key, "edition": "enterprise"}},
    stored=_zoho_stored,
    # Zoho publishes credits per 24 h and a concurrency per app, no rate: the plugin does not pace
    # (nothing to compress). The hook's default 30 s timeout.
    published_limits=lambda speedup: {"timeout": 30 / speedup},
    # No pacing to slow down with: batches of 5, and every answer 0.1 s late (a real org's latency),
    # so that every kill lands inside the load.
    crash_pacing={"batch_size": 5},
    crash_faults=FaultPlan(rate_slow=1.0, slow_seconds=0.1),
)


DESTINATIONS: dict[str, DestinationUnderTest] = {d.name: d for d in (TWENTY, DYNAMICS, SALESFORCE, FRESHSALES, ZOHO)}
