"""Airflow hook for the Freshsales (Freshworks CRM) REST API.

Why a hook of our own: Freshsales has no official Python SDK, and a migration needs behaviour a
generic HTTP hook does not give:

* the account's **hourly** request budget (1000/2000/5000 an hour by plan, shared by every user and
  integration of the account) is tracked from the ``x-ratelimit-*`` headers, and a write that would
  overrun it stops *before* it is sent with :class:`QuotaExhausted`, so the engine can pause the task
  until the window resets instead of bouncing off 429s for an hour;
* the per-minute limit (400 on paid plans) is paced with a token bucket so no 429 is earned;
* a 429 that asks for a long wait (the hourly budget was spent by someone else) becomes the same
  resumable stop instead of a sleeping worker;
* upserts keyed on a unique field (``unique_identifier``), the asynchronous bulk upsert and its job
  status, filtered search, selectors (owners, stages, sources: dropdowns that take ids), field
  metadata, custom modules, and multipart document upload.

All HTTP goes through :class:`~airflow_ascora_provider.hooks.http_client.ApiClient` (retries that
honour ``Retry-After``, backoff, pacing, request budget, call statistics).

Connection (type ``freshsales``): host = the bundle alias (``acme.myfreshworks.com/crm/sales``, or a
legacy ``acme.freshsales.io``), password = API key. Extra: ``plan`` (growth, pro, enterprise, free,
or a legacy sprout/blossom/garden/estate/forest; default growth), ``requests_per_hour`` and
``requests_per_minute`` (default: the plan's), ``hourly_reserve`` (calls left for other integrations,
default 0), ``batch_size`` (records per write batch, default 100), ``bulk_threshold`` (records that make
a load unit use the bulk upsert; default 200, 0 = never), ``timeout`` (seconds, default 30),
``request_budget`` (optional cap on calls per hook instance), ``quota_window_seconds`` (length of the
hourly window; only for emulators that compress time).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

try:  # Airflow 3
    from airflow.sdk.bases.hook import BaseHook
except ImportError:  # pragma: no cover - Airflow 2 fallback
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]

from airflow_ascora_provider.destinations.freshsales.plans import Plan, get_plan
from airflow_ascora_provider.destinations.spec import QuotaExhausted
from airflow_ascora_provider.hooks.http_client import (
    ApiClient,
    ApiError,
    Pacer,
    RetryPolicy,
    combined_stats,
    parse_retry_after,
)

DEFAULT_TIMEOUT = 30.0
DEFAULT_BATCH_SIZE = 100  # the bulk upsert's cap: a batch of new accounts, contacts or deals is one job
DEFAULT_BULK_THRESHOLD = 200
BULK_CAP = 100  # records per bulk_upsert request (3P: "100 records per request"; the stricter reading)
PAGE_SIZE = 100  # per_page maximum (inferred; the emulator clamps to it)
LONG_WAIT = 60.0  # a 429 asking for a longer wait than this is an exhausted hourly budget, not a blip


@dataclass(frozen=True)
class Entity:
    """One Freshsales record type: its URL segment and the JSON root key its bodies are wrapped in."""

    path: str  # relative to the API base: "contacts", "cpq/products", "custom_module/cm_equipment"
    root: str  # "contact", "product", "cm_equipment"
    search_name: str | None = None  # the name filtered search takes ("contact"), None: not searchable
    bulk: bool = False  # has POST <path>/bulk_upsert
    upsert: bool = False  # has POST <path>/upsert


ENTITIES: dict[str, Entity] = {
    "sales_account": Entity("sales_accounts", "sales_account", "sales_account", bulk=True, upsert=True),
    "contact": Entity("contacts", "contact", "contact", bulk=True, upsert=True),
    "deal": Entity("deals", "deal", "deal", bulk=True, upsert=True),
    "lead": Entity("leads", "lead", "lead", upsert=True),
    "task": Entity("tasks", "task"),
    "note": Entity("notes", "note"),
    "document": Entity("documents", "document"),
    "product": Entity("cpq/products", "product", "product"),
}


def custom_module_entity(entity_name: str) -> Entity:
    """Records of a custom module live under ``custom_module/<entity_name>`` (developers.freshworks.com)."""
    return Entity(f"custom_module/{entity_name}", entity_name, entity_name)


class FreshsalesApiError(ApiError):
    """A non-2xx answer from Freshsales, with its ``errors.message`` list kept apart for callers.

    ``retry_after`` is the server's ``Retry-After`` in seconds (429 answers), for callers that send
    without the client's retries (non-idempotent creates).
    """

    def __init__(self, message: str, *, status: int | None = None, body: Any = None, url: str = "",
                 messages: list[str] | None = None, retry_after: float | None = None):
        super().__init__(message, status=status, body=body, url=url)
        self.messages = messages or []
        self.retry_after = retry_after


def messages_of(body: Any) -> list[str]:
    """``{"errors": {"code": 400, "message": ["..."]}}`` (the documented shape) and its variants."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, dict):
            message = errors.get("message")
            if isinstance(message, list):
                return [str(m) for m in message]
            if message:
                return [str(message)]
        if isinstance(errors, list):
            return [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
        if body.get("message"):
            return [str(body["message"])]
    if isinstance(body, str) and body:
        return [body[:500]]
    return []


def normalise_base_url(host: str) -> str:
    """The API root for a bundle alias, a full URL, or a legacy ``*.freshsales.io`` domain.

    ``acme.myfreshworks.com`` and ``acme.myfreshworks.com/crm/sales`` → ``…/crm/sales/api``;
    ``acme.freshsales.io`` → ``https://acme.freshsales.io/api`` (the legacy domain has no
    ``/crm/sales`` segment); a URL already ending in ``/api`` is kept as given.
    """
    url = host.strip().rstrip("/")
    if not url:
        raise ValueError("the Freshsales bundle alias (connection host) is empty")
    if not re.match(r"^https?://", url):
        url = "https://" + url
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    if path.endswith("/api"):
        return url
    if path.endswith("/crm/sales"):
        return url + "/api"
    if not path and (parsed.host or "").endswith(".freshsales.io"):
        return url + "/api"
    return url + "/crm/sales/api"


class HourlyQuota:
    """The account's hourly request budget, as far as this process can tell.

    Freshsales counts requests per account per hour, whoever sends them. The answer headers
    (``x-ratelimit-remaining``/``x-ratelimit-reset``) are the truth and win whenever present; without
    them the calls this process made since its window opened are counted. :meth:`ensure` is called
    before a write that needs ``calls`` requests and raises :class:`QuotaExhausted` when they would not
    fit (keeping ``reserve`` calls for other integrations), with the time the window resets.
    """

    def __init__(self, limit: int | None, *, window: float = 3600.0, reserve: int = 0,
                 clock: Callable[[], float] = time.time):
        self.limit = limit
        self.window = window
        self.reserve = max(0, reserve)
        self.clock = clock
        self.remaining: int | None = limit
        self.resets_at: float | None = None
        self._answered_window: float | None = None  # the reset time of the window answers last counted
        self._lock = threading.Lock()

    def _roll(self, now: float) -> None:
        if self.resets_at is not None and now >= self.resets_at:
            self.remaining, self.resets_at, self._answered_window = self.limit, None, None

    def spend(self) -> None:
        """One request is about to go out (local count; replaced by the headers of its answer)."""
        with self._lock:
            now = self.clock()
            self._roll(now)
            if self.resets_at is None:
                self.resets_at = now + self.window
            if self.remaining is not None:
                self.remaining = max(0, self.remaining - 1)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take an answer's count. Answers to calls made at the same time (a plugin's concurrent writes)
        arrive in any order, so within one window the count only goes down: an answer that left with
        more calls remaining than one already seen is older news. A later reset time is a new window,
        whose count is taken as it is."""
        remaining = _int_header(headers, "x-ratelimit-remaining")
        if remaining is None:
            return
        with self._lock:
            limit = _int_header(headers, "x-ratelimit-limit")
            if limit is not None:
                self.limit = limit
            reset = _int_header(headers, "x-ratelimit-reset")
            # an epoch second, or seconds from now (both are seen in the wild)
            resets_at = None if reset is None else float(reset) if reset > 1_000_000_000 else self.clock() + reset
            # The first answer of a window is taken as it is (what was counted locally before it is a
            # guess: the plan's limit, a window this process opened itself).
            new_window = self._answered_window is None or (
                resets_at is not None and resets_at > self._answered_window + 1.0)
            if new_window or self.remaining is None:
                self.remaining = remaining
                self._answered_window = resets_at if resets_at is not None else self.clock() + self.window
            else:
                self.remaining = min(self.remaining, remaining)
            if resets_at is not None:
                self.resets_at = resets_at

    @property
    def per_window(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.reserve)

    def ensure(self, calls: int, what: str) -> None:
        if self.limit is None:
            return
        with self._lock:
            now = self.clock()
            self._roll(now)
            remaining = self.limit if self.remaining is None else self.remaining
            if remaining - self.reserve >= calls:
                return
            resets_at = self.resets_at if self.resets_at is not None else now + self.window
        when = dt.datetime.fromtimestamp(resets_at, dt.UTC)
        raise QuotaExhausted(
            f"Freshsales hourly API budget: {remaining} of {self.limit} calls left"
            f"{f' (keeping {self.reserve} in reserve)' if self.reserve else ''}, {what} needs {calls}; "
            f"resuming when the window resets at {when.isoformat(timespec='seconds')}",
            resume_at=when,
        )


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


class QuotaAwareRetry(RetryPolicy):
    """Retries like :class:`RetryPolicy`, except that a 429 asking for a long wait stops the task.

    A ``Retry-After`` of seconds is a per-minute blip and is waited out. One of many minutes means the
    account's hourly budget is gone (another integration used it): holding a worker asleep for that
    long helps nobody, so the engine is told to pause the task until then.
    """

    def __init__(self, *, long_wait: float = LONG_WAIT, **kwargs: Any):
        super().__init__(**kwargs)
        self.long_wait = long_wait

    def wait_for(self, response: httpx.Response | None, attempt: int) -> float:
        if response is not None and response.status_code == 429:
            header = response.headers.get("Retry-After")
            seconds = parse_retry_after(header) if header is not None else None
            if seconds is not None and seconds > self.long_wait:
                resume = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
                raise QuotaExhausted(f"Freshsales answered 429 with Retry-After {seconds:.0f}s: the account's "
                                     "hourly API budget is spent", resume_at=resume)
        return super().wait_for(response, attempt)


class FreshsalesHook(BaseHook):
    """Talks to one Freshsales account.

    Construct with an Airflow connection id, or with ``base_url=`` and ``api_key=`` (tests, the demo,
    scripts). One :class:`ApiClient` is built lazily and reused, so pacing, the hourly budget and
    the call statistics cover every call this hook makes.
    """

    conn_name_attr = "freshsales_conn_id"
    default_conn_name = "freshsales_default"
    conn_type = "freshsales"
    hook_name = "Freshsales"

    def __init__(
        self,
        freshsales_conn_id: str = default_conn_name,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        plan: str | None = None,
        requests_per_hour: int | None = None,
        requests_per_minute: float | None = None,
        hourly_reserve: int | None = None,
        quota_window_seconds: float | None = None,
        batch_size: int | None = None,
        bulk_threshold: int | None = None,
        timeout: float | None = None,
        request_budget: int | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.freshsales_conn_id = freshsales_conn_id
        self._explicit = {
            "base_url": base_url, "api_key": api_key, "plan": plan, "requests_per_hour": requests_per_hour,
            "requests_per_minute": requests_per_minute, "hourly_reserve": hourly_reserve,
            "quota_window_seconds": quota_window_seconds, "batch_size": batch_size,
            "bulk_threshold": bulk_threshold, "timeout": timeout, "request_budget": request_budget,
        }
        self._retry = retry
        self._settings_cache: dict[str, Any] | None = None
        self._client: ApiClient | None = None
        self._once: ApiClient | None = None
        self._quota: HourlyQuota | None = None

    # ---- Airflow connection plumbing -----------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"host": "Bundle alias", "password": "API key"},
            "placeholders": {
                "host": "acme.myfreshworks.com/crm/sales (Profile Settings > API Settings), or acme.freshsales.io",
                "password": "API key from Profile Settings > API Settings",
                "extra": '{"plan": "growth", "hourly_reserve": 100, "bulk_threshold": 200}',
            },
        }

    def settings(self) -> dict[str, Any]:
        """URL, key, plan and limits from explicit arguments, else from the Airflow connection."""
        if self._settings_cache is not None:
            return self._settings_cache
        explicit = self._explicit
        extra: dict[str, Any] = {}
        base_url, api_key = explicit["base_url"], explicit["api_key"]
        if base_url is None or api_key is None:
            conn = self.get_connection(self.freshsales_conn_id)
            extra = conn.extra_dejson or {}
            base_url = base_url or conn.host
            api_key = api_key or conn.password
            if not base_url:
                raise ValueError(f"Connection '{self.freshsales_conn_id}' has no host (the Freshsales bundle alias)")
            if not api_key:
                raise ValueError(f"Connection '{self.freshsales_conn_id}' has no password (the Freshsales API key)")

        def pick(key: str, default: Any, cast: type) -> Any:
            if explicit.get(key) is not None:
                return cast(explicit[key])
            raw = extra.get(key)
            return default if raw in (None, "") else cast(raw)

        plan = get_plan(pick("plan", None, str))
        if plan.requests_per_hour is None and pick("requests_per_hour", None, int) is None:
            raise ValueError(f"the Freshsales {plan.label} plan has no API access; upgrade the plan or set "
                             "requests_per_hour on the connection if the account has it")
        self._settings_cache = {
            "base_url": normalise_base_url(base_url),
            "api_key": api_key,
            "plan": plan,
            "requests_per_hour": pick("requests_per_hour", plan.requests_per_hour, int),
            "requests_per_minute": pick("requests_per_minute", plan.requests_per_minute, float),
            "hourly_reserve": pick("hourly_reserve", 0, int),
            "quota_window_seconds": pick("quota_window_seconds", 3600.0, float),
            "batch_size": pick("batch_size", DEFAULT_BATCH_SIZE, int),
            "bulk_threshold": pick("bulk_threshold", DEFAULT_BULK_THRESHOLD, int),
            "timeout": pick("timeout", DEFAULT_TIMEOUT, float),
            "request_budget": pick("request_budget", None, int),
        }
        return self._settings_cache

    @property
    def plan(self) -> Plan:
        return self.settings()["plan"]

    @property
    def quota(self) -> HourlyQuota:
        if self._quota is None:
            s = self.settings()
            self._quota = HourlyQuota(s["requests_per_hour"], window=s["quota_window_seconds"],
                                      reserve=s["hourly_reserve"])
        return self._quota

    def get_conn(self) -> ApiClient:
        """The shared :class:`ApiClient`, paced under the per-minute limit."""
        if self._client is None:
            s = self.settings()
            self._client = ApiClient(
                s["base_url"],
                headers={"Authorization": f"Token token={s['api_key']}", "Accept": "application/json"},
                timeout=s["timeout"],
                retry=self._retry or QuotaAwareRetry(),
                pacer=Pacer(s["requests_per_minute"] or None, per=60.0),
                budget=s["request_budget"],
                name="freshsales",
            )
        return self._client

    @property
    def client(self) -> ApiClient:
        return self.get_conn()

    @property
    def once_client(self) -> ApiClient:
        """A client that sends exactly once: for creates, where a retry after a lost answer would
        write the record twice. Callers check whether the first attempt landed before sending again.
        Shares the pacer (and so the per-minute pace) and the learned answer deadline with :attr:`client`."""
        if self._once is None:
            s = self.settings()
            self._once = ApiClient(
                s["base_url"],
                headers={"Authorization": f"Token token={s['api_key']}", "Accept": "application/json"},
                timeout=s["timeout"], retry=RetryPolicy(max_attempts=1), pacer=self.client.pacer,
                budget=s["request_budget"], name="freshsales", deadline=self.client.deadline)
        return self._once

    def stats(self) -> dict[str, Any]:
        """Calls made, retried and throttled by both clients, and what is left of the hourly budget."""
        out: dict[str, Any] = combined_stats(self._client, self._once)
        out["hourly_remaining"] = self.quota.remaining
        return out

    def close(self) -> None:
        for client in (self._client, self._once):
            if client is not None:
                client.close()
        self._client = self._once = None

    # ---- request core --------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One request (retried by the client unless ``retry`` is False); the rate-limit headers of
        the answer update the hourly budget."""
        self.quota.spend()
        response = (self.client if retry else self.once_client).request(method, path, **kwargs)
        self.quota.observe(response.headers)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            messages = messages_of(body)
            detail = "; ".join(messages) if messages else response.text[:500]
            header = response.headers.get("Retry-After")
            raise FreshsalesApiError(f"Freshsales {method} {path} answered HTTP {response.status_code}: {detail}",
                                     status=response.status_code, body=body, url=path, messages=messages,
                                     retry_after=parse_retry_after(header) if header else None)
        return response

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
              **extra: Any) -> Any:
        kwargs: dict[str, Any] = dict(extra)
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        if json is not None:
            kwargs["json"] = json
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def reserve(self, calls: int, what: str) -> None:
        """Stop with :class:`QuotaExhausted` unless ``calls`` more requests fit in this hour's budget."""
        self.quota.ensure(calls, what)

    # ---- metadata ------------------------------------------------------------------------------

    def fields(self, settings_name: str) -> list[dict] | None:
        """``GET /settings/<entity>/fields``; None when the account has no such module (e.g. leads)."""
        try:
            payload = self._call("GET", f"/settings/{settings_name}/fields")
        except FreshsalesApiError as exc:
            if exc.status == 404:
                return None
            raise
        return list((payload or {}).get("fields") or [])

    def selector(self, name: str) -> list[dict]:
        """``GET /selector/<name>`` (owners, deal_stages, lead_sources, lifecycle_stages ...)."""
        payload = self._call("GET", f"/selector/{name}") or {}
        key = "users" if name == "owners" else name
        return list(payload.get(key) or [])

    def module_customizations(self) -> list[dict]:
        payload = self._call("GET", "/settings/module_customizations") or {}
        return list(payload.get("module_customizations") or [])

    def create_module(self, singular: str, plural: str) -> dict:
        """Create a custom module (the one schema object Freshsales lets the API create)."""
        body = {"module_customization": {"singular_name": singular, "plural_name": plural}}
        return (self._call("POST", "/settings/module_customizations", json=body) or {})["module_customization"]

    # ---- records -------------------------------------------------------------------------------

    def upsert(self, entity: Entity, unique_identifier: Mapping[str, Any], record: Mapping[str, Any]) -> dict:
        """Create or update the record holding ``unique_identifier`` (one unique field and its value)."""
        body = {"unique_identifier": dict(unique_identifier), entity.root: dict(record)}
        return self._call("POST", f"/{entity.path}/upsert", json=body)[entity.root]

    def create(self, entity: Entity, record: Mapping[str, Any], *, retry: bool = True) -> dict:
        """Create one record. ``retry=False`` sends once (see :attr:`once_client`)."""
        return self._call("POST", f"/{entity.path}", json={entity.root: dict(record)}, retry=retry)[entity.root]

    def update(self, entity: Entity, record_id: str, record: Mapping[str, Any]) -> dict:
        return self._call("PUT", f"/{entity.path}/{record_id}", json={entity.root: dict(record)})[entity.root]

    def get(self, entity: Entity, record_id: str, *, include: Sequence[str] = ()) -> dict | None:
        """One record (with side-loaded ``include`` lists next to it), or None when it does not exist."""
        params = {"include": ",".join(include)} if include else None
        try:
            return self._call("GET", f"/{entity.path}/{record_id}", params=params)
        except FreshsalesApiError as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, entity: Entity, record_id: str) -> bool:
        """Delete one record; False when it was already gone (404)."""
        try:
            self._send("DELETE", f"/{entity.path}/{record_id}")
        except FreshsalesApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def search(self, entity: Entity, attribute: str, values: Sequence[Any]) -> Iterator[dict]:
        """Records whose ``attribute`` is one of ``values`` (``POST /filtered_search/<entity>``, paged)."""
        if not entity.search_name:
            raise ValueError(f"Freshsales cannot search {entity.root} records")
        for start in range(0, len(values), PAGE_SIZE):
            chunk = list(values[start:start + PAGE_SIZE])
            page = 1
            while True:
                payload = self._call("POST", f"/filtered_search/{entity.search_name}", json={
                    "filter_rule": [{"attribute": attribute, "operator": "is_in", "value": chunk}],
                    "page": page, "per_page": PAGE_SIZE}) or {}
                rows = next((v for k, v in payload.items() if k != "meta" and isinstance(v, list)), [])
                yield from rows
                total_pages = int(((payload.get("meta") or {}).get("total_pages")) or 1)
                if page >= total_pages or not rows:
                    break
                page += 1

    # ---- bulk upsert ---------------------------------------------------------------------------

    def bulk_upsert(self, entity: Entity, unique_field: str, records: Sequence[Mapping[str, Any]]) -> str:
        """Start one asynchronous bulk upsert (at most :data:`BULK_CAP` records); return its job id."""
        if not entity.bulk:
            raise ValueError(f"Freshsales has no bulk upsert for {entity.root}")
        if len(records) > BULK_CAP:
            raise ValueError(f"{len(records)} records is over the bulk upsert cap of {BULK_CAP}")
        body = {"unique_identifier": unique_field, entity.path: [dict(r) for r in records]}
        payload = self._call("POST", f"/{entity.path}/bulk_upsert", json=body) or {}
        job_id = payload.get("job_id") or payload.get("id")
        if job_id is None:
            raise ApiError(f"Freshsales bulk_upsert answered without a job id: {str(payload)[:300]}")
        return str(job_id)

    def job_status(self, job_id: str) -> dict:
        """``GET /job_statuses/<id>``: ``status``, ``total``, ``processed``, ``failed_records``."""
        return (self._call("GET", f"/job_statuses/{job_id}") or {}).get("job_status") or {}

    # ---- documents -----------------------------------------------------------------------------

    def upload_document(self, file_name: str, content: bytes, *, targetable_type: str, targetable_id: str,
                        content_type: str = "application/octet-stream") -> dict:
        """``POST /documents`` (multipart): the file attached to one record. Sent once (an upload is not
        idempotent); the caller checks whether a failed attempt landed before sending it again."""
        payload = self._call("POST", "/documents", retry=False,
                             data={"file_name": file_name, "is_shared": "true", "targetable_type": targetable_type,
                                   "targetable_id": str(targetable_id)},
                             files={"file": (file_name, bytes(content), content_type)})
        return (payload or {})["document"]

    def download_document(self, document_id: str) -> bytes:
        return self._send("GET", f"/documents/{document_id}/download", headers={"Accept": "*/*"}).content

    # ---- Airflow test-connection protocol ------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (the owners selector); never raises."""
        try:
            s = self.settings()
            probe = ApiClient(s["base_url"], headers={"Authorization": f"Token token={s['api_key']}",
                                                      "Accept": "application/json"},
                              timeout=min(s["timeout"], 15.0),
                              retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=2.0), name="freshsales-test")
            with probe:
                response = probe.request("GET", "/selector/owners")
        except Exception as exc:  # noqa: BLE001 - the protocol wants a message, not an exception
            return False, f"Could not reach Freshsales: {exc}"
        if response.status_code == 401:
            return False, "Freshsales rejected the API key (HTTP 401)"
        if response.status_code >= 400:
            return False, f"Freshsales answered HTTP {response.status_code}: {response.text[:200]}"
        try:
            users = response.json().get("users") or []
        except (ValueError, AttributeError):
            return False, f"{s['base_url']} answered, but not with the Freshsales API"
        remaining = response.headers.get("x-ratelimit-remaining")
        budget = f"; {remaining} calls left this hour" if remaining else ""
        return True, f"Connected to Freshsales ({s['plan'].label} plan) at {s['base_url']}: {len(users)} users{budget}"
