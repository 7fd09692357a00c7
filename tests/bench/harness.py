"""What every benchmark shares: the destinations table, emulators in their own process, tenants.

A destination joins the benchmarks by adding one :class:`BenchTarget` row to :data:`TARGETS`: its
plugin name, its emulator module, its published rate limit, how its plugin is told the emulator's
address and pace, and the fewest calls its API allows for a batch of records. Every benchmark then
runs for every row whose plugin is installed.

Emulators run in a child process (uvicorn on a socket this process bound), so their CPU and memory
are not the engine's: timings and peak RSS measure the migration side only, as against a real CRM.
A row with ``tls`` is served over https (msal, which the Dynamics 365 plugin authenticates with,
accepts only https authorities; simple-salesforce builds every URL as ``https://``) with one
self-signed certificate per run, see :func:`bench_certificate`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FULL = os.environ.get("ASCORA_FULL_BENCH") == "1"
REPO = Path(__file__).resolve().parents[2]


def own_peak_rss_mb() -> float:
    """This process's own peak resident memory since it started (``VmHWM``), in MB.

    Not ``ru_maxrss``: Linux carries a parent's peak over ``fork`` and ``exec`` into the child's
    ``ru_maxrss``, so a stage run as ``python -c`` from pytest would report at least the size of the
    pytest process that started it (300 MB and more), whatever the stage itself used.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the destinations table


@dataclass(frozen=True)
class Limit:
    """A published request limit: ``requests`` per ``per_seconds``."""

    requests: int
    per_seconds: float
    label: str

    @property
    def per_minute(self) -> float:
        return self.requests * 60.0 / self.per_seconds


@dataclass(frozen=True)
class BenchTarget:
    """One destination as the benchmarks see it.

    :param name: the destination plugin's name (its entry point).
    :param emulator: module whose ``create_app(**kwargs)`` builds the emulator.
    :param published_limit: the real API's limit; the emulator is set to it and the plugin paces under it.
    :param ci_limit: the limit of the short CI run of the rate-limit benchmark (the published one,
        or a scaled one when the published window is an hour or a day; docs/performance.md says why).
    :param options: ``(emulator URL, limit or None for unpaced) -> plugin options``.
    :param emulator_kwargs: ``(tenant folder, limit or None) -> create_app kwargs`` (JSON-serialisable).
    :param minimum_calls: ``(target object, records written) -> fewest calls the API allows for them``.
    :param fallback_owner: e-mail of a user the emulator seeds, for records whose staff has no account.
    :param throughput_maps: the maps the rate-limit benchmark loads: those whose records go out in
        batches and nothing else (no file uploads, no link records), so records per call is the cap.
    :param limit_cost: ``(target object, records written) -> fewest requests the rate limit counts for
        them``, when that is not one per call (Dataverse counts every request inside a ``$batch``);
        None: ``minimum_calls``.
    :param pace_share: ``() -> share of the published limit the plugin is built to use`` (Dataverse's
        hook leaves 10% to other clients of the same application user); the throughput ceiling is that
        share. A callable, so the plugin is imported only when a benchmark asks.
    :param tls: serve the emulator over https with :func:`bench_certificate`.
    :param daily_quota: for a destination whose limit is a daily request *quota* rather than a rate
        (Salesforce): ``limit -> (control path, JSON body)`` that gives the emulator a quota of
        ``limit.requests`` with nothing used yet. Such a plugin does not pace; it stops before its
        reserve, so the rate-limit benchmark skips the row and ``test_quota_bound_load_stops_at_the_reserve``
        measures it instead. None: the limit is a rate. ``limit_cost`` says what the quota counts
        when that is not calls (Zoho's credits: one per 10 records written).
    :param quota_reading: ``(the answer of a GET on daily_quota's control path) -> (quota, spent)``,
        in the units the quota counts (Salesforce's org settings: ``api_max``/``api_used`` requests;
        Zoho's credit meter: ``allowance``/``used`` credits).
    :param refused_jobs: ``(emulator URL, request log) -> how many asynchronous jobs the log started
        whose every record the destination refused`` (a job answers 202 when it is accepted, and
        refuses its records later, inside the job): such a call wrote nothing.
    :param read_paths: path endings of calls that only *read* although not a GET (Zoho's COQL is a
        POST), so a benchmark that tells writes from reads by method counts them as reads.
    :param admin_schema: ``(destination, schema plan, emulator URL) -> None``, for a destination whose
        API cannot make every schema change (Freshsales: custom fields and dropdown values are made
        by an admin in its UI, only custom modules by API). :func:`prepare_migration` calls it after
        the by-API changes, to do what the customer's admin does by hand before the load (through
        the emulator's admin route). None: the API makes every change.
    :param known_failures: benchmark (module name) -> why it fails for this row today, for a cause
        outside the row's plugin; marked ``xfail(strict=True)``, so the day it passes the suite says so.
    :param full_only: benchmarks (module names, ``test_scale`` …) this row runs only with
        ASCORA_FULL_BENCH=1 (marked ``slow``), because their short CI run would cost the suite more
        than the row's share; the reason is given where the row is defined.
    """

    name: str
    emulator: str
    published_limit: Limit
    ci_limit: Limit
    options: Callable[[str, Limit | None], dict[str, Any]]
    emulator_kwargs: Callable[[Path, Limit | None], dict[str, Any]]
    minimum_calls: Callable[[str, list[Any]], int]
    throughput_maps: tuple[str, ...] = ()
    fallback_owner: str = "owner@example.com"
    limit_cost: Callable[[str, list[Any]], int] | None = None
    pace_share: Callable[[], float] = lambda: 1.0
    tls: bool = False
    daily_quota: Callable[[Limit], tuple[str, dict[str, Any]]] | None = None
    full_only: frozenset[str] = frozenset()
    admin_schema: Callable[[Any, Any, str], None] | None = None
    known_failures: dict[str, str] = field(default_factory=dict)
    quota_reading: Callable[[dict[str, Any]], tuple[int, int]] = lambda q: (q["api_max"], q["api_used"])
    read_paths: tuple[str, ...] = ()
    refused_jobs: Callable[[str, list[dict[str, Any]]], int] = lambda url, log: 0

    def is_read(self, request: dict[str, Any]) -> bool:
        """A logged request that reads: a GET, or a POST to one of ``read_paths``."""
        return request["method"] == "GET" or (bool(self.read_paths) and request["path"].endswith(self.read_paths))

    @property
    def installed(self) -> bool:
        from airflow_ascora_provider.destinations.manager import destinations

        return self.name in destinations()

    def batch_cap(self) -> int:
        from airflow_ascora_provider.destinations.manager import get_destination_class

        cls = get_destination_class(self.name)
        if isinstance(cls.__dict__.get("capabilities"), property):  # per connection (Zoho: per edition)
            return cls.max_batch_size
        return cls.capabilities.batch_size


def _members(tenant: Path) -> list[dict[str, str]]:
    from tests.conftest import tenant_members  # imported late: conftest sets AIRFLOW_HOME when imported

    return tenant_members(tenant)


def _twenty_minimum_calls(target: str, records: list[Any]) -> int:
    """Twenty: one batch create per 60 records; one ``uploadFile`` per file (no batch upload exists);
    notes and tasks attach through ``noteTargets``/``taskTargets``, one batch create per 60 links."""
    from airflow_ascora_provider.mapping.values import AttachTo, FileRef

    cap = 60
    calls = math.ceil(len(records) / cap)
    calls += sum(1 for r in records for v in r.payload.values() if isinstance(v, FileRef))
    if target in ("note", "task"):
        links = sum(len(v.refs) for r in records for v in r.payload.values() if isinstance(v, AttachTo))
        calls += math.ceil(links / cap)
    return calls


TWENTY = BenchTarget(
    name="twenty",
    emulator="airflow_ascora_provider.sandbox.twenty",
    published_limit=Limit(100, 60.0, "100 requests/minute per API key"),
    # The CI run keeps the real rate in a 6 s window: its load (about 75 calls) would fit in the first
    # minute's window whole, and a run that never waits for the window measures no pacing.
    ci_limit=Limit(10, 6.0, "100 requests/minute per API key, counted in 6 s windows"),
    options=lambda url, limit: {"base_url": url, "api_key": "twenty-sandbox-key",
                                "requests_per_minute": limit.per_minute if limit else 0,
                                "rate_window_seconds": limit.per_seconds if limit else 60.0},
    emulator_kwargs=lambda tenant, limit: {"members": _members(tenant),
                                           "rate_limit": limit.requests if limit else None,
                                           "window": limit.per_seconds if limit else 60.0},
    minimum_calls=_twenty_minimum_calls,
    throughput_maps=("company", "person", "site", "quote", "opportunity", "equipment", "quote_line_item", "invoice"),
)

def bench_certificate() -> tuple[Path, Path]:
    """``(certificate, key)``: one self-signed certificate (its own CA) for every https emulator of a run.

    Made once and found again through ``ASCORA_BENCH_TLS``, which child processes inherit, so a stage
    run in a process of its own (``test_scale``) builds a plugin that trusts the emulator the parent
    started, and a row's ``options`` can name the CA file before any emulator exists.
    """
    from airflow_ascora_provider.sandbox.dataverse import self_signed_certificate

    folder = os.environ.get("ASCORA_BENCH_TLS")
    if folder and (Path(folder) / "dataverse-sandbox.key").exists():
        return Path(folder) / "dataverse-sandbox.pem", Path(folder) / "dataverse-sandbox.key"
    folder = tempfile.mkdtemp(prefix="ascora-bench-tls-")
    certificate = self_signed_certificate(folder)
    os.environ["ASCORA_BENCH_TLS"] = folder
    return certificate


# Dataverse's documented $batch cap: "up to 1000 individual requests" (shared/reference/
# salesforce-and-dataverse-api.md, B.5).
DATAVERSE_BATCH_REQUESTS = 1000


def _dataverse_minimum_calls(target: str, records: list[Any]) -> int:
    """Dataverse: every record is one request (POST, or PATCH by id) inside a ``$batch`` of at most 1000.

    A note's file travels inside its request as base64 ``documentbody`` and lookups (a task's or a
    note's "regarding" record included) as ``@odata.bind``, so nothing needs a call of its own.
    ``CreateMultiple`` would also take one call per batch of one table, with no documented cap of
    its own in the reference, so it does not lower the floor. (An *update* that clears a lookup adds
    a ``DELETE …/$ref`` request; the benchmarks' loads are first loads, which have none.)
    """
    return math.ceil(len(records) / DATAVERSE_BATCH_REQUESTS)


def _dataverse_limit_cost(target: str, records: list[Any]) -> int:
    """What service protection counts for those records sent in the fewest calls: each request inside
    a ``$batch`` counts, and the emulator (like the hook, which paces for it) counts the batch too."""
    return len(records) + _dataverse_minimum_calls(target, records)


def _dataverse_users(tenant: Path) -> list[dict[str, str]]:
    from tests.integration.dataverse_support import dataverse_users

    return dataverse_users(tenant)


def _dataverse_options(url: str, limit: Limit | None) -> dict[str, Any]:
    """The emulator's own Entra ID tenant and app registration; batches of the ``$batch`` cap.

    Paced, the hook reserves a batch's ``n + 1`` requests at once in its model of the sliding window
    and caps a batch at what its share of the window can hold (``share x L - 1`` records: 539 at the
    CI limit; the full 1,000 at the published 6,000), so the cap is asked for either way.
    """
    from airflow_ascora_provider.sandbox.dataverse import (
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        DEFAULT_PREFIX,
        DEFAULT_TENANT,
    )

    return {"base_url": url, "tenant_id": DEFAULT_TENANT, "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET, "authority_host": url,
            "ca_bundle": str(bench_certificate()[0]),
            "publisher_prefix": DEFAULT_PREFIX, "key_wait_seconds": 30,
            "requests_per_window": limit.requests if limit else 0,
            "window_seconds": limit.per_seconds if limit else 300.0,
            "batch_size": DATAVERSE_BATCH_REQUESTS}


def _dataverse_pace_share() -> float:
    from airflow_ascora_provider.hooks.dataverse import PACE_SHARE

    return PACE_SHARE


DYNAMICS = BenchTarget(
    name="dynamics365",
    emulator="airflow_ascora_provider.sandbox.dataverse",
    published_limit=Limit(6000, 300.0, "6,000 requests/5 minutes per user"),
    # The published rate (20 requests/s) with limit and window scaled down alike (the same spacing,
    # see docs/performance.md), so that the window turns over inside the short CI run and the limit
    # binds: a 5-minute window would never fill in a run of under a minute.
    ci_limit=Limit(600, 30.0, "600 requests/30 s per user (6,000/5 minutes, scaled by 1/10)"),
    options=_dataverse_options,
    emulator_kwargs=lambda tenant, limit: {"users": _dataverse_users(tenant),
                                           "rate_limit": limit.requests if limit else None,
                                           "window": limit.per_seconds if limit else 300.0,
                                           "key_activation_seconds": 0.05},
    minimum_calls=_dataverse_minimum_calls,
    throughput_maps=("account", "site"),
    limit_cost=_dataverse_limit_cost,
    pace_share=_dataverse_pace_share,
    tls=True,
)

# sObject Collections' documented cap: "up to 200 records" per call (shared/reference/
# salesforce-and-dataverse-api.md, A.5). Files (ContentVersion) have no batch upload in REST: one
# call per file, base64 ``VersionData`` in JSON (A.12).
SALESFORCE_COLLECTION_RECORDS = 200
SALESFORCE_FILE_OBJECT = "ContentVersion"
# Collections only: Bulk API 2.0 takes over above the plugin's ``bulk_threshold`` (2,000 pending
# records by default), and a bulk job's calls (create, upload, close, polls, results) are not
# comparable with a floor of records / 200. A threshold above the largest benchmark tenant
# (``make bench`` loads 1,000,000 records) keeps every batch on Collections, so the minimum is well defined.
SALESFORCE_BENCH_BULK_THRESHOLD = 10_000_000
# The emulator's quota when a benchmark does not measure it: far above what any load spends, so that
# the daily quota never binds where throughput or call counts are measured.
UNBOUND_QUOTA = 1_000_000_000
SALESFORCE_CUSTOM_OBJECTS = ({"name": "Invoice__c", "label": "Invoice"},
                             {"name": "Quote_Line_Item__c", "label": "Quote Line Item"})


def _salesforce_minimum_calls(target: str, records: list[Any]) -> int:
    """Salesforce: one Collections call per 200 records of an object; a File is one call of its own.

    Owners, parents and a Task's ``WhatId``/``WhoId`` are fields of the record, and a File is shared
    with its record through ``FirstPublishLocationId``, so nothing else needs a call.
    """
    if target == SALESFORCE_FILE_OBJECT:
        return len(records)
    return math.ceil(len(records) / SALESFORCE_COLLECTION_RECORDS)


def _salesforce_options(url: str, limit: Limit | None) -> dict[str, Any]:
    """The emulator's session id and CA, Collections only (see ``SALESFORCE_BENCH_BULK_THRESHOLD``).

    SalesforceHook reads ``instance_url`` from the Airflow connection and nowhere else, so the row
    defines ``salesforce_default`` for this emulator in the environment (as a deployment's
    connection would), here and in every child process that builds the plugin (``test_scale``'s
    stages call this function themselves). ``limit`` is not an option: the plugin does not pace, it
    reads the quota from ``Sforce-Limit-Info``.
    """
    from airflow_ascora_provider.sandbox.salesforce import DEFAULT_SESSION_ID

    os.environ["AIRFLOW_CONN_SALESFORCE_DEFAULT"] = json.dumps(
        {"conn_type": "salesforce", "extra": {"instance_url": url, "version": "62.0"}})
    return {"access_token": DEFAULT_SESSION_ID, "ca_bundle": str(bench_certificate()[0]),
            "bulk_threshold": SALESFORCE_BENCH_BULK_THRESHOLD}


def _salesforce_emulator_kwargs(tenant: Path, limit: Limit | None) -> dict[str, Any]:
    """Users for the tenant's staff and the custom objects an admin creates before the schema step."""
    return {"users": _members(tenant), "custom_objects": list(SALESFORCE_CUSTOM_OBJECTS),
            "daily_api_limit": limit.requests if limit else UNBOUND_QUOTA}


def _salesforce_quota(limit: Limit) -> tuple[str, dict[str, Any]]:
    """The org's settings: a daily quota of ``limit.requests`` with none of it used yet."""
    return "/__salesforce__/settings", {"api_max": limit.requests, "api_used": 0}


SALESFORCE = BenchTarget(
    name="salesforce",
    emulator="airflow_ascora_provider.sandbox.salesforce",
    # A daily quota, not a rate (Enterprise Edition: 100,000 + 1,000 per licence a day, rolling 24 h).
    published_limit=Limit(100_000, 86_400.0, "100,000 requests/24 h per org (daily quota; no rate)"),
    # Scaled down so that a CI load runs into it: the load must stop at the plugin's 10% reserve.
    ci_limit=Limit(30, 86_400.0, "a daily quota of 30 requests (scaled down so a CI load reaches it)"),
    options=_salesforce_options,
    emulator_kwargs=_salesforce_emulator_kwargs,
    minimum_calls=_salesforce_minimum_calls,
    throughput_maps=("account", "site", "contact", "opportunity", "quote", "quote_line_item", "invoice",
                     "equipment"),
    tls=True,
    daily_quota=_salesforce_quota,
    # The schema step alone (about 380 calls: a describe, a Tooling create and a field permission per
    # custom field) takes some 20 s against the emulator, and the scale benchmark runs it once per
    # tenant size, in processes that each import Airflow: about two minutes, beyond the row's share
    # of CI. ``make bench`` runs it.
    full_only=frozenset({"test_scale"}),
)

# ---- Freshsales
# The bulk upsert's cap, for accounts, contacts and deals: "100 records per request" (shared/reference/
# freshsales-zoho-twenty-api.md, 1.7; the plugin's ``capabilities.batch_size`` is the same 100).
FRESHSALES_BULK_RECORDS = 100
FRESHSALES_BULK_TARGETS = frozenset({"sales_account", "contact", "deal", "lead"})
FRESHSALES_BENCH_KEY = "freshsales-bench-key"
# The plan of the benchmark account: Pro (2,000 requests an hour, 400 a minute; shared/reference 1.4).
# Growth's custom-field caps do not fit the mapping of a generated tenant (see test_freshsales_engine).
FRESHSALES_PLAN = "pro"


def _freshsales_minimum_calls(target: str, records: list[Any]) -> int:
    """Freshsales: accounts, contacts (leads are contacts at stage Lead on accounts without the Leads
    module, as the emulator's is) and deals have an asynchronous bulk upsert of up to 100 records. A
    bulk call answers only a job id, so writing 100 of them costs at least the ``bulk_upsert``, one
    ``GET /job_statuses/<id>`` for its outcome and one filtered search (100 values a page) for the ids.
    Everything else has no batch endpoint: one call per note, task, document (multipart upload),
    product and custom-module record. Quote lines are a deal's ``products`` list, written whole: at
    least one ``PUT`` per deal, and one create per catalogue product the lines name (by code, else by
    name). That last part assumes the products are not in the catalogue yet, as in the benchmark's
    account: it starts with none but those of the equipment map, whose codes are equipment models,
    which no quote line of the generated tenants uses (0 of 41 at 2,000 records).
    """
    if target in FRESHSALES_BULK_TARGETS:
        return 3 * math.ceil(len(records) / FRESHSALES_BULK_RECORDS)
    if target == "deal_product":
        deals = {r.payload["deal_id"].dest_id for r in records if r.payload.get("deal_id") is not None}
        products = {f"code:{code}" if (code := str(r.payload.get("product_code") or "").strip())
                    else f"name:{str(r.payload.get('product_name') or '').strip()}" for r in records}
        return len(deals) + len(products)
    return len(records)


def _freshsales_refused_jobs(url: str, log: list[dict[str, Any]]) -> int:
    """Bulk upsert jobs of ``log`` (the ids its status reads name) whose every record Freshsales refused."""
    ids = {r["path"].rsplit("/", 1)[-1] for r in log if "/job_statuses/" in r["path"] and r["status"] == 200}
    refused = 0
    for job_id in ids:
        answer = httpx.get(f"{url}/crm/sales/api/job_statuses/{job_id}", timeout=30,
                           headers={"Authorization": f"Token token={FRESHSALES_BENCH_KEY}"})
        status = answer.json()["job_status"]
        refused += status["status"] == "completed" and len(status["failed_records"]) == status["total"]
    return refused


def _freshsales_options(url: str, limit: Limit | None) -> dict[str, Any]:
    """Paced at ``limit``'s rate (calls spaced ``per_seconds / requests`` apart), so the hourly budget,
    counted by the hook over the same window, never runs out; unpaced, an hourly budget out of reach."""
    return {"base_url": url, "api_key": FRESHSALES_BENCH_KEY, "plan": FRESHSALES_PLAN,
            "requests_per_minute": limit.per_minute if limit else 0,
            "requests_per_hour": limit.requests if limit else UNBOUND_QUOTA,
            "quota_window_seconds": limit.per_seconds if limit else 3600.0}


def _freshsales_emulator_kwargs(tenant: Path, limit: Limit | None) -> dict[str, Any]:
    """A Pro account with the tenant's staff as users; the limit is the emulator's sliding-window
    limiter (``window`` = the limit's), its own fixed-hour counter out of reach."""
    users = [{"email": m["email"], "display_name": f"{m['firstName']} {m['lastName']}"} for m in _members(tenant)]
    return {"api_key": FRESHSALES_BENCH_KEY, "plan": FRESHSALES_PLAN, "users": users,
            "rate_limit": limit.requests if limit else 0, "window": limit.per_seconds if limit else 60.0,
            "hourly_limit": UNBOUND_QUOTA}


def _freshsales_admin_schema(dest: Any, plan: Any, url: str) -> None:
    """Custom fields and dropdown values cannot be created through the Freshsales API: the admin
    creates what ``admin_steps`` lists (the emulator's ``/__freshsales__/steps`` plays the admin), then
    the plugin reads the schema again, as the DAG's schema check does before the load."""
    steps = dest.admin_steps(plan.changes)
    httpx.post(f"{url}/__freshsales__/steps", json={"steps": steps}, timeout=60).raise_for_status()
    dest.describe_schema()


FRESHSALES = BenchTarget(
    name="freshsales",
    emulator="airflow_ascora_provider.sandbox.freshsales",
    # Per account, whatever the number of users; 400 a minute within it (shared/reference, 1.4).
    published_limit=Limit(2000, 3600.0, "2,000 requests/hour per account (Pro)"),
    # The hour's rate raised to the per-minute limit, 400/minute (12x the hourly rate, so stricter,
    # see docs/performance.md), in a window of one minute so that it binds inside a CI run.
    ci_limit=Limit(400, 60.0, "400 requests/minute (2,000/hour raised 12x to the per-minute limit)"),
    options=_freshsales_options,
    emulator_kwargs=_freshsales_emulator_kwargs,
    minimum_calls=_freshsales_minimum_calls,
    # Custom-module records: one create each, nothing else, so calls per record is the minimum. The
    # bulk maps are not here: between its calls a bulk upsert waits for its job, which is not pacing.
    throughput_maps=("equipment",),
    admin_schema=_freshsales_admin_schema,
    # Notes, tasks, documents, products and module records cost a call each (no batch endpoint): the
    # scale benchmark's unthrottled load of the 10,000 tenant took 186 s (42 records/s) and the whole
    # test about 5 minutes, beyond the row's share of CI. ``make bench`` runs it.
    full_only=frozenset({"test_scale"}),
    # Freshsales searches by POST (filtered search on the key field, on product codes).
    read_paths=tuple(f"/filtered_search/{name}" for name in ("sales_account", "contact", "deal", "lead",
                                                              "product", "cm_equipment")),
    refused_jobs=_freshsales_refused_jobs,
)

# ---- Zoho CRM
# Insert, update and upsert take "at most 100 records per call" and cost "1 credit per 10 records";
# an attachment is one multipart upload of its own (shared/reference/freshsales-zoho-twenty-api.md,
# 2.2, 2.5, 2.8; the plugin's ``capabilities.batch_size`` is the same 100).
ZOHO_RECORDS_PER_CALL = 100
ZOHO_RECORDS_PER_CREDIT = 10
ZOHO_ATTACHMENTS = "Attachments"
ZOHO_CLIENT = {"client_id": "1000.SANDBOXCLIENT", "client_secret": "sandbox-secret",
               "refresh_token": "1000.sandbox-refresh-token"}


def _zoho_minimum_calls(target: str, records: list[Any]) -> int:
    """Zoho: one insert/upsert per 100 records of a module. Owners and lookups are fields of the record,
    a Task's deal is its ``What_Id``, a note's parent its ``Parent_Id``, and a quote's lines are rows of
    its ``Quoted_Items`` subform (each naming a Product written by the quote_product map), so nothing
    else needs a call. An attachment is one upload to its parent record: no batch upload exists."""
    if target == ZOHO_ATTACHMENTS:
        return len(records)
    return math.ceil(len(records) / ZOHO_RECORDS_PER_CALL)


def _zoho_limit_cost(target: str, records: list[Any]) -> int:
    """Credits those records cost sent in the fewest calls: 1 per 10 records written (10 per full
    call of 100), 1 per attachment upload."""
    if target == ZOHO_ATTACHMENTS:
        return len(records)
    return math.ceil(len(records) / ZOHO_RECORDS_PER_CREDIT)


def _zoho_options(url: str, limit: Limit | None) -> dict[str, Any]:
    """The emulator's OAuth client (it is also the accounts server), batches of 100, no Bulk Write.

    ``credits_per_day`` is the org's allowance (``limit``: a scaled-down one for the quota benchmark),
    so the plugin's budget is its default 90% and 10% stays in reserve; unbound otherwise.
    """
    return {"accounts_url": url, **ZOHO_CLIENT, "edition": "enterprise",
            "credits_per_day": limit.requests if limit else UNBOUND_QUOTA,
            "credit_window_seconds": limit.per_seconds if limit else 86_400.0}


def _zoho_emulator_kwargs(tenant: Path, limit: Limit | None) -> dict[str, Any]:
    """An Enterprise org with the tenant's staff as users, and ``limit`` credits a window (unbound: None)."""
    users = [{"email": m["email"], "first_name": m["firstName"], "last_name": m["lastName"]} for m in _members(tenant)]
    return {"users": users, "edition": "enterprise", "credits": limit.requests if limit else UNBOUND_QUOTA,
            "credit_window": limit.per_seconds if limit else 86_400.0}


ZOHO = BenchTarget(
    name="zoho",
    emulator="airflow_ascora_provider.sandbox.zoho",
    # A credit budget per rolling 24 h, not a rate: Enterprise is 50,000 + 1,000 per licensed user
    # (10 users here). The plugin does not pace; it stops before its 10% reserve (QuotaExhausted).
    published_limit=Limit(60_000, 86_400.0, "60,000 credits/24 h (Enterprise, 10 users; a quota, no rate)"),
    # Scaled down so that a CI load runs into it: 300 credits buy at most 3,000 records.
    ci_limit=Limit(300, 86_400.0, "a daily allowance of 300 credits (scaled down so a CI load reaches it)"),
    options=_zoho_options,
    emulator_kwargs=_zoho_emulator_kwargs,
    minimum_calls=_zoho_minimum_calls,
    # Every map but the attachments: records that go out 100 to a call.
    throughput_maps=("account", "service_site", "contact", "lead", "deal", "quote_deal", "job_phase",
                     "quote_product", "native_quote", "invoice_note", "note"),
    limit_cost=_zoho_limit_cost,
    daily_quota=lambda limit: ("/__zoho__/credits", {"allowance": limit.requests, "window": limit.per_seconds}),
    quota_reading=lambda q: (q["allowance"], q["used"]),
    read_paths=("/coql",),
)

#: Destination name → row. A new destination is one more row; rows whose plugin is not installed
#: are skipped by every benchmark.
TARGETS: dict[str, BenchTarget] = {row.name: row for row in (TWENTY, DYNAMICS, SALESFORCE, FRESHSALES, ZOHO)}


def installed_targets() -> list[BenchTarget]:
    return [row for row in TARGETS.values() if row.installed]


def target_params(where: Callable[[BenchTarget], bool] = lambda row: True, bench: str = "") -> list[Any]:
    """``pytest.mark.parametrize`` values: one per row (``where`` chooses), skipped when the plugin is
    not installed, and marked ``slow`` where the row lists ``bench`` (the calling module) in ``full_only``."""
    import pytest

    def marks(row: BenchTarget) -> list[Any]:
        out = [pytest.mark.skipif(not row.installed, reason=f"no {row.name} plugin installed")]
        # Evaluated per test against its module's globals, so a row's known failure marks only the
        # benchmark it names, whichever module asks for the parameters.
        out += [pytest.mark.xfail(f"__name__.rsplit('.', 1)[-1] == {module!r}", reason=reason, strict=True)
                for module, reason in row.known_failures.items()]
        return out + [pytest.mark.slow] if bench and bench.rsplit(".", 1)[-1] in row.full_only else out

    return [pytest.param(row, id=row.name, marks=marks(row)) for row in TARGETS.values() if where(row)]


# --------------------------------------------------------------------------- emulators in a child process

_SERVE = r"""
import importlib, json, socket, sys
import uvicorn
spec = json.loads(sys.argv[1])
app = importlib.import_module(spec["module"]).create_app(**spec["kwargs"])
# Not uvicorn's fd=: it wraps the descriptor as a Unix socket, so asyncio never sets TCP_NODELAY on the
# connections and every reply waited ~40 ms for the client's delayed ACK (Nagle).
sock = socket.socket(fileno=spec["fd"])
config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=60,
                        **spec["ssl"])
uvicorn.Server(config).run(sockets=[sock])
"""


class EmulatorProcess:
    """An emulator served by uvicorn in its own process, on a socket bound here (no port race).

    ``tls`` serves it over https with :func:`bench_certificate` (``kwargs`` go to ``create_app``).
    """

    def __init__(self, module: str, tls: bool = False, **kwargs: Any):
        self.module = module
        self.kwargs = kwargs
        self.tls = tls
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self.url = ""
        self._verify: str | bool = True

    def start(self) -> EmulatorProcess:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.set_inheritable(True)
        self._sock = sock
        ssl: dict[str, str] = {}
        if self.tls:
            cert, key = bench_certificate()
            ssl, self._verify = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}, str(cert)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
        spec = json.dumps({"module": self.module, "kwargs": self.kwargs, "fd": sock.fileno(), "ssl": ssl})
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVE, spec], pass_fds=(sock.fileno(),),
                                      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"emulator {self.module} exited: {self._proc.stderr.read().decode()[-2000:]}")
            try:
                answer = httpx.get(f"{self.url}/__sandbox__/counters", timeout=2, verify=self._verify)
                if answer.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator {self.module} did not answer within 60 s")
            time.sleep(0.1)

    def set_rate_limit(self, limit: Limit | None) -> None:
        """Switch the emulator's limiter (a fresh window), e.g. after an unpaced schema step."""
        body = {"limit": limit.requests if limit else None, "window": limit.per_seconds if limit else 60.0}
        httpx.post(f"{self.url}/__sandbox__/rate-limit", json=body, timeout=30,
                   verify=self._verify).raise_for_status()

    def set_service_time(self, per_call: float, per_kb: float = 0.0) -> None:
        """How long the emulator takes to answer each call its app handles (see ``sandbox.emulator.Latency``)."""
        self.control("/__sandbox__/latency", {"per_call": per_call, "per_kb": per_kb})

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` to one of the emulator's own control endpoints (GET without a body)."""
        if body is None:
            answer = httpx.get(f"{self.url}{path}", timeout=30, verify=self._verify)
        else:
            answer = httpx.post(f"{self.url}{path}", json=body, timeout=30, verify=self._verify)
        answer.raise_for_status()
        return answer.json()

    def counters(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/__sandbox__/counters", timeout=30, verify=self._verify).json()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/__sandbox__/requests", timeout=120, verify=self._verify).json()

    def peak_rss_mb(self) -> float | None:
        """The emulator's own high-water mark (VmHWM), for the record: it is not the engine's."""
        try:
            for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            return None
        return None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=15)
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        if self._sock is not None:
            self._sock.close()
        self._proc = self._sock = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def emulator_for(row: BenchTarget, tenant: Path, limit: Limit | None) -> EmulatorProcess:
    return EmulatorProcess(row.emulator, tls=row.tls, **row.emulator_kwargs(tenant, limit))


# --------------------------------------------------------------------------- tenants and snapshots


def bench_root(tmp_path_factory) -> Path:
    shared = os.environ.get("ASCORA_BENCH_DIR")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        return Path(shared)
    return tmp_path_factory.getbasetemp() / "bench"


def tenant(root: Path, size: int, seed: int = 5) -> Path:
    """A generated tenant with CSV exports, generated once per bench folder."""
    folder = root / f"tenant-csv-{size}-{seed}"
    if not (folder / "exports").exists():
        subprocess.run([sys.executable, "-m", "airflow_ascora_provider.sandbox", "generate", "--out", str(folder),
                        "--size", str(size), "--seed", str(seed), "--format", "csv"],
                       check=True, capture_output=True, cwd=REPO)
    return folder


def staged(root: Path, size: int, seed: int = 5) -> tuple[Path, Path, str]:
    """``(tenant folder, staging root, snapshot id)``: the tenant's exports extracted once."""
    from airflow_ascora_provider.source.export_reader import ExportReader
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    folder = tenant(root, size, seed)
    staging = folder / "staging"
    snapshot = Snapshot(staging, "bench")
    if not snapshot.exists():
        extract(ExportReader(folder / "exports"), snapshot)
    return folder, staging, "bench"


# --------------------------------------------------------------------------- a migration ready to load


def prepare_migration(row: BenchTarget, staging: Path, snapshot_id: str, ledger_url: str, url: str, *,
                      limit: Limit | None = None, run_id: str = "bench", ledger_schema: str | None = None):
    """Schema, mapping approval and owners done, run started: what the DAG has done before ``plan_wave_0``.

    Returns the :class:`MigrationContext`; its destination is paced under ``limit`` (None = unpaced).
    """
    from airflow_ascora_provider.destinations.manager import get_destination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.schema import apply_schema, plan_for
    from airflow_ascora_provider.engine.users import resolve_users
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.complete import complete_mapping
    from airflow_ascora_provider.mapping.spec import load_mapping
    from airflow_ascora_provider.source.audit import audit_snapshot
    from airflow_ascora_provider.source.staging import Snapshot

    dest = get_destination(row.name, None, **row.options(url, limit))
    audit = audit_snapshot(Snapshot(staging, snapshot_id))
    described = dest.describe_schema()
    existing = {name: {f for f, d in obj.fields.items() if not d.custom} for name, obj in described.items()}
    mapping = complete_mapping(load_mapping(type(dest).default_mapping), audit, dest.custom_field_name, existing,
                               described)
    plan = plan_for(mapping, dest)
    apply_schema(dest, plan)
    if row.admin_schema is not None:  # what the API cannot create, done as the customer's admin would
        row.admin_schema(dest, plan, url)
    ledger = Ledger(ledger_url, schema=ledger_schema)
    ledger.migrate()
    ledger.approve_mapping(row.name, mapping_hash=mapping.hash, mapping_text=mapping.to_yaml(),
                           approved_by="bench", source="cli")
    ctx = MigrationContext(run_id, row.name, ledger, str(staging), snapshot_id, mapping,
                           fallback_owner_email=row.fallback_owner)
    ctx.use_destination(dest)
    resolve_users(ctx)
    ledger.start_run(run_id, destination=row.name, kind="full", mapping_hash=mapping.hash)
    return ctx


@dataclass
class SentBatch:
    """One ``write_batch`` call as the engine made it: what went out and what came back."""

    target: str
    records: list[Any]
    key_field: str | None
    results: list[Any]
    seconds: float


@dataclass
class RecordingDestination:
    """Wraps a destination plugin and keeps every ``write_batch`` call (the rest passes through)."""

    inner: Any
    sent: list[SentBatch] = field(default_factory=list)

    def write_batch(self, target: str, records: list[Any], key_field: str | None) -> list[Any]:
        from airflow_ascora_provider.destinations.spec import OutgoingRecord

        copies = [OutgoingRecord(r.source_id, dict(r.payload), r.dest_id) for r in records]
        started = time.perf_counter()
        results = self.inner.write_batch(target, records, key_field)
        self.sent.append(SentBatch(target, copies, key_field, list(results), time.perf_counter() - started))
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextmanager
def recording(ctx) -> Iterator[RecordingDestination]:
    wrapper = RecordingDestination(ctx.destination)
    ctx.use_destination(wrapper)
    try:
        yield wrapper
    finally:
        ctx.use_destination(wrapper.inner)


def load_by_map(ctx, only: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Any, dict[str, int]]]:
    """Load every map (or those in ``only``) in wave order, one whole map at a time; yield
    ``(map, target, stats, api calls)``.

    ``api calls`` is the difference of the plugin's :meth:`api_stats` around the map, so every call
    (writes, uploads, lookups, retries) is charged to the object that caused it.
    """
    from airflow_ascora_provider.engine.runner import plan_units, run_unit, waves

    for wave in waves(ctx.mapping):
        for unit in plan_units(ctx, [m for m in wave if not only or m in only], min_rows=1 << 40):
            before = dict(ctx.destination.api_stats())
            stats = run_unit(ctx, unit)
            after = ctx.destination.api_stats()
            delta = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in ("calls", "retries", "throttled")}
            yield unit["map"], ctx.mapping.maps[unit["map"]].target, stats, delta


# --------------------------------------------------------------------------- the transform as the DAG's units run it

def bench_context(args: dict[str, Any]):
    """The :class:`MigrationContext` a stage (or a worker of one) rebuilds from a prepared ledger:
    ``args`` names the destination, ledger URL, staging folder and emulator URL."""
    from airflow_ascora_provider.destinations.manager import get_destination
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.ledger import Ledger
    from airflow_ascora_provider.mapping.spec import load_mapping

    row = TARGETS[args["destination"]]
    ledger = Ledger(args["ledger"])
    mapping = load_mapping(ledger.approved_mapping(row.name)["mapping_text"])
    ctx = MigrationContext("bench", row.name, ledger, args["staging"], args.get("snapshot", "scale"), mapping,
                           fallback_owner_email=row.fallback_owner)
    ctx.use_destination(get_destination(row.name, None, **row.options(args["url"], None)))
    return ctx


def transform_records(ctx, om, records) -> tuple[int, int, int]:
    """``(records, outgoing, quarantined)``: ``records`` through the map's transform, validation and
    payload hash, with a fresh transformer (what one load task builds), writing nothing."""
    from airflow_ascora_provider.engine.context import payload_hash
    from airflow_ascora_provider.engine.load import batch_size_for
    from airflow_ascora_provider.engine.transform import BatchTransformer

    transformer = BatchTransformer(ctx, om)
    seen = outgoing = quarantined = 0
    for batch in transformer.batches(records, batch_size_for(ctx)):
        outcome = transformer.transform(batch)
        for record in outcome.records:
            record.digest or payload_hash(record.payload)  # what the loader hashes (MapLoader.prepare)
        seen += len(batch)
        outgoing += len(outcome.records)
        quarantined += len(outcome.quarantined)
    return seen, outgoing, quarantined


def warm_up_transform(ctx, rows: int = 50) -> float:
    """Seconds taken to transform the first ``rows`` records of every map, writing nothing: what a
    task's process imports and builds once before its first record (pandas, which pyarrow imports on
    its first conversion of Python values, 0.8 s here where no bytecode is cached; Airflow's plugins,
    which the object-storage path's lineage hook loads on the first staging read, 0.4 s), kept out of
    a transform's clock. Each map's later run builds its transformer (indexes, first holders,
    crosswalk reads) anew, so what a task sets up per map is still counted."""
    from airflow_ascora_provider.engine.transform import staged_reads

    started = time.perf_counter()
    for om in ctx.mapping.maps.values():
        transform_records(ctx, om, ctx.snapshot.iter_range(om.source, 0, rows, staged_reads(om)))
    return time.perf_counter() - started


_worker_ctx = None  # a transform worker's context, built once as the worker starts


def start_transform_worker(args: dict[str, Any], ready) -> None:
    """A pool worker's start: context and imports first (:func:`warm_up_transform`), then ``ready`` is
    told, so the stage's clock (test_scale's ``transform_workers``) starts when every worker can take
    a unit at once."""
    global _worker_ctx
    _worker_ctx = bench_context(args)
    warm_up_transform(_worker_ctx)
    ready.put(os.getpid())


def transform_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """One load unit (a map's row range) transformed in this worker, as its load task would, writing
    nothing; with the worker's CPU time for it and the worker's peak RSS so far."""
    from airflow_ascora_provider.engine.transform import staged_reads

    om = _worker_ctx.mapping.maps[unit["map"]]
    started = time.process_time()
    records = _worker_ctx.snapshot.iter_range(om.source, unit["start"], unit["stop"], staged_reads(om))
    seen, outgoing, quarantined = transform_records(_worker_ctx, om, records)
    return {"records": seen, "outgoing": outgoing, "quarantined": quarantined,
            "cpu": time.process_time() - started, "peak_mb": own_peak_rss_mb(), "pid": os.getpid()}


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A fixed-width table for the terminal (the same figures go into docs/performance.md)."""
    cells = [[f"{c:,.2f}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else str(c) for c in r]
             for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
