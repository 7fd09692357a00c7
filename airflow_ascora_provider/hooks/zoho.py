"""Airflow hook for Zoho CRM's REST API v8 (records, COQL, metadata, attachments, Bulk Write).

Why a hook of our own: a migration needs things a generic HTTP hook does not give. Zoho's
``Zoho-oauthtoken`` header with an access token minted from a refresh token at the data centre's
accounts server (the reply's ``api_domain`` is where the API lives); API *credits* rather than a
request rate, so every call is priced before it is sent and the load stops resumably (raising
:class:`~airflow_ascora_provider.destinations.spec.QuotaExhausted`) before the org's allowance runs
out; batch writes of at most 100 records with per-record results (HTTP 207 when some fail);
``page_token`` paging past the first 2,000 records; COQL read-back; and the Bulk Write flow (a zip
with one CSV uploaded to the file server, a job, a result zip).

All HTTP goes through :class:`~airflow_ascora_provider.hooks.http_client.ApiClient` (retries on
429/5xx honouring ``Retry-After``, backoff, call statistics).

Connection (type ``zoho``): login = client id, password = client secret, host = the accounts server
(``https://accounts.zoho.com.au``; empty = from ``data_centre``). Extra: ``refresh_token``
(required), ``data_centre`` (``com``, ``eu``, ``in``, ``com.au``, ``com.cn``, ``jp``, ``ca``, ``sa``;
default ``com``), ``edition`` (``free`` … ``ultimate``; default ``enterprise``), ``users`` (licensed
users, for the credit allowance), ``add_on_credits``, ``credits_per_day`` (the org's allowance as its
API dashboard shows it, when that is not the edition's formula), ``credit_budget`` (credits this
provider may spend per window; default 90 % of the allowance; the rest is the reserve kept for people
and other integrations), ``credit_window_seconds`` (default
86400), ``credit_state_path`` (a file shared by workers that keeps the spend; default: per process),
``bulk_threshold``, ``upload_url``, ``max_custom_fields``, ``max_custom_modules``, ``timeout``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import io
import json as jsonlib
import threading
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx

from airflow_ascora_provider.compat import BaseHook
from airflow_ascora_provider.destinations.spec import QuotaExhausted
from airflow_ascora_provider.destinations.zoho.limits import call_cost, daily_credits, edition_spec
from airflow_ascora_provider.hooks.http_client import ApiClient, ApiError, Pacer, RetryPolicy, combined_stats

API_VERSION = "v8"
MAX_RECORDS_PER_CALL = 100
MAX_FIELDS_PER_GET = 50
PAGE_SIZE = 200
COQL_IN_VALUES = 50
DEFAULT_TIMEOUT = 30.0
DEFAULT_BUDGET_SHARE = 0.9  # leave 10 % of the allowance for people and other integrations
ACCOUNTS_SERVERS = {
    "com": "https://accounts.zoho.com", "eu": "https://accounts.zoho.eu", "in": "https://accounts.zoho.in",
    "com.au": "https://accounts.zoho.com.au", "au": "https://accounts.zoho.com.au",
    "com.cn": "https://accounts.zoho.com.cn", "cn": "https://accounts.zoho.com.cn",
    "jp": "https://accounts.zoho.jp", "ca": "https://accounts.zohocloud.ca", "sa": "https://accounts.zoho.sa",
}
UPLOAD_SERVERS = {"com": "https://content.zohoapis.com", "eu": "https://content.zohoapis.eu",
                  "in": "https://content.zohoapis.in", "com.au": "https://content.zohoapis.com.au",
                  "au": "https://content.zohoapis.com.au", "com.cn": "https://content.zohoapis.com.cn",
                  "cn": "https://content.zohoapis.com.cn", "jp": "https://content.zohoapis.jp",
                  "ca": "https://content.zohoapis.ca", "sa": "https://content.zohoapis.sa"}


# Access tokens per (accounts server, client, refresh token) shared by the hooks of one process.
_TOKENS: dict[str, tuple[str, float, str]] = {}
_TOKENS_LOCK = threading.Lock()


class ZohoApiError(ApiError):
    """A request-level Zoho error, with Zoho's ``code`` and ``details`` kept for callers."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None, url: str = "",
                 code: str = "", details: dict | None = None):
        super().__init__(message, status=status, body=body, url=url)
        self.code = code
        self.details = details or {}


class ZohoAuthError(ZohoApiError):
    """The accounts server would not mint an access token (wrong client, revoked refresh token…)."""


# -- credits -------------------------------------------------------------------------------------------
class CreditBudget:
    """Credits this provider spends in a rolling window, checked *before* each call.

    ``reserve(cost)`` raises :class:`QuotaExhausted` (with the moment enough credits come back)
    when the call would overrun the budget, so a load stops between batches and resumes later.
    Spends are kept per process (one budget per org and client) or, with ``state_path``, in a file
    every worker on a shared disk updates under a lock. The server's ``X-API-CREDITS-REMAINING``
    header (sent from 50 % use) is honoured too: it also counts what other integrations and other
    workers spent, and the load stops before that count reaches ``reserve`` (the allowance's share
    outside the budget), so the reserve is kept however many processes spend.
    """

    _shared: ClassVar[dict[str, CreditBudget]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, budget: int | None, window: float, state_path: str | None = None, reserve: int = 0):
        self.budget = budget
        self.reserve_credits = max(0, reserve)
        self.window = window
        self.state_path = Path(state_path) if state_path else None
        self._spent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.server_remaining: int | None = None
        self.server_seen_at = 0.0

    @classmethod
    def shared(cls, key: str, budget: int | None, window: float, state_path: str | None,
               reserve: int = 0) -> CreditBudget:
        with cls._shared_lock:
            found = cls._shared.get(key)
            if found is None or (found.budget, found.window, found.state_path, found.reserve_credits) != (
                    budget, window, Path(state_path) if state_path else None, max(0, reserve)):
                found = cls._shared[key] = cls(budget, window, state_path, reserve)
            return found

    # wall-clock times: a file shared by processes needs a common clock
    def _load(self) -> list[tuple[float, int]]:
        if self.state_path is None:
            return list(self._spent)
        try:
            return [tuple(x) for x in jsonlib.loads(self.state_path.read_text() or "[]")]
        except (FileNotFoundError, ValueError):
            return []

    def _store(self, spent: list[tuple[float, int]]) -> None:
        if self.state_path is None:
            self._spent = deque(spent)
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(jsonlib.dumps(spent))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's lock, plus an exclusive file lock when the spend is kept in a file."""
        with self._lock:
            if self.state_path is None:
                yield
                return
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{self.state_path}.lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def used(self) -> int:
        now = time.time()
        return sum(c for t, c in self._load() if now - t < self.window)

    def reserve(self, cost: int, what: str) -> None:
        """Spend ``cost`` credits for the call ``what``, or raise QuotaExhausted before it is sent."""
        if self.budget is None and self.server_remaining is None:
            return
        with self._locked():
            now = time.time()
            spent = [(t, c) for t, c in self._load() if now - t < self.window]
            used = sum(c for _, c in spent)
            if self.budget is not None and used + cost > self.budget:
                raise QuotaExhausted(
                    f"Zoho CRM credit budget: {what} costs {cost} credit(s) but {used} of {self.budget} are "
                    f"spent in the current {self.window:.0f}s window; stopping before the allowance runs out",
                    resume_at=self._resume_at(spent, cost, now))
            if self.server_remaining is not None and now - self.server_seen_at < self.window \
                    and self.server_remaining - cost < self.reserve_credits:
                # The org's count was read at server_seen_at; by one window later it has renewed at the
                # latest (the budget's own window is what the reader set to the org's), so that is when to
                # try again, rather than leaving the task to guess.
                raise QuotaExhausted(
                    f"Zoho CRM reports {self.server_remaining} credits left for the org; {what} costs {cost} "
                    f"and {self.reserve_credits} are kept in reserve",
                    resume_at=dt.datetime.fromtimestamp(self.server_seen_at + self.window + 0.05, tz=dt.UTC))
            spent.append((now, cost))
            self._store(spent)
            if self.server_remaining is not None:
                self.server_remaining -= cost

    def _resume_at(self, spent: list[tuple[float, int]], cost: int, now: float) -> dt.datetime:
        """When enough of the oldest spends leave the window for ``cost`` to fit."""
        used = sum(c for _, c in spent)
        for t, c in sorted(spent):
            used -= c
            if used + cost <= (self.budget or 0):
                return dt.datetime.fromtimestamp(t + self.window + 0.05, tz=dt.UTC)
        return dt.datetime.fromtimestamp(now + self.window, tz=dt.UTC)

    def observe(self, headers: Mapping[str, str]) -> None:
        remaining = headers.get("X-API-CREDITS-REMAINING")
        if remaining is not None and remaining.strip().isdigit():
            self.server_remaining = int(remaining)
            self.server_seen_at = time.time()


# -- the hook ------------------------------------------------------------------------------------------
class ZohoHook(BaseHook):
    """Talks to one Zoho CRM org. Construct with a connection id, or with keyword arguments (tests)."""

    conn_name_attr = "zoho_conn_id"
    default_conn_name = "zoho_default"
    conn_type = "zoho"
    hook_name = "Zoho CRM"

    def __init__(self, zoho_conn_id: str = default_conn_name, *, accounts_url: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None,
                 refresh_token: str | None = None, retry: RetryPolicy | None = None, **options: Any) -> None:
        super().__init__()
        self.zoho_conn_id = zoho_conn_id
        self._explicit = {"accounts_url": accounts_url, "client_id": client_id, "client_secret": client_secret,
                          "refresh_token": refresh_token}
        self._options = {k: v for k, v in options.items() if v is not None}
        self._retry = retry
        self._settings: dict[str, Any] | None = None
        self._client: ApiClient | None = None
        self._once: ApiClient | None = None
        self._accounts: ApiClient | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._api_domain: str | None = None
        self._org: dict[str, Any] | None = None
        self._credits: CreditBudget | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {"host": "Accounts server (optional)", "login": "Client ID", "password": "Client secret"},
            "placeholders": {
                "host": "https://accounts.zoho.com.au (empty: from data_centre)",
                "login": "1000.XXXXXXXX (Self Client or server-based app)",
                "password": "client secret",
                "extra": jsonlib.dumps({"refresh_token": "1000.xxxx", "data_centre": "com.au",
                                        "edition": "professional", "users": 5, "credit_budget": None,
                                        "bulk_threshold": 5000}),
            },
        }

    # -- settings ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Credentials and limits from the explicit arguments, else from the Airflow connection."""
        if self._settings is not None:
            return self._settings
        explicit = self._explicit
        extra: dict[str, Any] = {}
        host = explicit["accounts_url"]
        client_id, client_secret, refresh = explicit["client_id"], explicit["client_secret"], explicit["refresh_token"]
        if not (client_id and client_secret and refresh):
            conn = self.get_connection(self.zoho_conn_id)
            extra = conn.extra_dejson or {}
            host = host or conn.host
            client_id = client_id or conn.login
            client_secret = client_secret or conn.password
            refresh = refresh or extra.get("refresh_token")
        merged = {**extra, **self._options}
        for name, value in (("login (client id)", client_id), ("password (client secret)", client_secret),
                            ("extra.refresh_token", refresh)):
            if not value:
                raise ValueError(f"Zoho connection '{self.zoho_conn_id}' has no {name}")
        dc = str(merged.get("data_centre") or "com").lower().lstrip(".")
        if dc not in ACCOUNTS_SERVERS:
            raise ValueError(f"Zoho data_centre {dc!r} is not one of {', '.join(sorted(ACCOUNTS_SERVERS))}")
        edition = str(merged.get("edition") or "enterprise").lower()
        edition_spec(edition)
        users = int(merged.get("users") or 1)
        allowance = (int(merged["credits_per_day"]) if merged.get("credits_per_day") not in (None, "")
                     else daily_credits(edition, users, int(merged.get("add_on_credits") or 0)))
        budget = merged.get("credit_budget")
        budget = int(budget) if budget not in (None, "") else (
            None if allowance is None else int(allowance * DEFAULT_BUDGET_SHARE))
        accounts = (host or ACCOUNTS_SERVERS[dc]).rstrip("/")
        if not accounts.startswith("http"):
            accounts = "https://" + accounts
        self._settings = {
            "accounts_url": accounts, "client_id": client_id, "client_secret": client_secret,
            "refresh_token": refresh, "data_centre": dc, "edition": edition, "users": users,
            "allowance": allowance, "credit_budget": budget,
            "credit_window": float(merged.get("credit_window_seconds") or 86_400),
            "credit_state_path": merged.get("credit_state_path") or None,
            "upload_url": (merged.get("upload_url") or "").rstrip("/") or None,
            "timeout": float(merged.get("timeout") or DEFAULT_TIMEOUT),
            "bulk_threshold": int(merged["bulk_threshold"]) if merged.get("bulk_threshold") not in (None, "") else None,
            "max_custom_fields": int(merged["max_custom_fields"]) if merged.get("max_custom_fields") else None,
            "max_custom_modules": int(merged["max_custom_modules"]) if merged.get("max_custom_modules") not in (None, "")
            else None,
            "batch_size": min(MAX_RECORDS_PER_CALL, int(merged.get("batch_size") or MAX_RECORDS_PER_CALL)),
        }
        return self._settings

    @property
    def edition(self) -> str:
        return self.settings()["edition"]

    # -- auth -------------------------------------------------------------------------------------
    def _accounts_client(self) -> ApiClient:
        if self._accounts is None:
            s = self.settings()
            self._accounts = ApiClient(s["accounts_url"], timeout=s["timeout"], retry=self._retry,
                                       name="zoho-accounts")
        return self._accounts

    def _token_key(self) -> str:
        s = self.settings()
        digest = hashlib.sha256(s["refresh_token"].encode()).hexdigest()[:16]
        return f"{s['accounts_url']}|{s['client_id']}|{digest}"

    def access_token(self, *, refresh: bool = False) -> str:
        """A live access token, shared by every hook of this process for the same refresh token.

        Zoho lets one refresh token mint at most 10 access tokens per 10 minutes, and a migration
        runs many short tasks: minting once per process and reusing the token for its hour keeps
        a run far below that. A refusal to mint (too many in the window) stops a load resumably.
        """
        key = self._token_key()
        with _TOKENS_LOCK:
            cached = _TOKENS.get(key)
            if cached and not refresh and time.monotonic() < cached[1] - 60:
                self._use_token(*cached)
                return cached[0]
            if refresh and cached and cached[0] != self._token:
                self._use_token(*cached)  # another hook already minted a fresh one
                return cached[0]
            token, expires, domain = self._mint()
            _TOKENS[key] = (token, expires, domain)
        self._use_token(token, expires, domain)
        return token

    def _mint(self) -> tuple[str, float, str]:
        s = self.settings()
        response = self._accounts_client().request("POST", "/oauth/v2/token", data={
            "grant_type": "refresh_token", "client_id": s["client_id"], "client_secret": s["client_secret"],
            "refresh_token": s["refresh_token"]})
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        # Zoho answers a bad refresh token with HTTP 200 and {"error": "invalid_code"}.
        if response.status_code >= 400 or "access_token" not in body:
            detail = body.get("error_description") or body.get("error") or response.text[:200]
            if "too many requests" in str(detail).lower():
                raise QuotaExhausted(f"Zoho accounts server: {detail} (at most 10 access tokens per 10 minutes "
                                     "per refresh token)",
                                     resume_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
            raise ZohoAuthError(f"Zoho accounts server refused the refresh token for connection "
                                f"'{self.zoho_conn_id}': {detail}", status=response.status_code, body=body,
                                code=str(body.get("error") or ""))
        domain = (body.get("api_domain") or "").rstrip("/")
        if not domain:
            raise ZohoAuthError("Zoho token reply has no api_domain", body=body)
        return body["access_token"], time.monotonic() + float(body.get("expires_in") or 3600), domain

    def _use_token(self, token: str, expires: float, domain: str) -> None:
        self._token, self._token_expires = token, expires
        if domain != self._api_domain:
            self._api_domain = domain
            for client in (self._client, self._once):
                if client is not None:
                    client.close()
            self._client = self._once = None

    @property
    def api_domain(self) -> str:
        self.access_token()
        return self._api_domain or ""

    def get_conn(self) -> ApiClient:
        """The :class:`ApiClient` on the api_domain the token reply named."""
        self.access_token()
        if self._client is None:
            s = self.settings()
            # Zoho publishes no per-minute limit; credits and concurrency are the limits, so no pacing.
            self._client = ApiClient(self._api_domain or "", timeout=s["timeout"], retry=self._retry,
                                     pacer=Pacer(None), name="zoho")
        return self._client

    @property
    def client(self) -> ApiClient:
        return self.get_conn()

    @property
    def once_client(self) -> ApiClient:
        """A client that sends exactly once, for inserts that have no upsert key (notes): a retry after
        a lost answer, a timeout or a batch half-written before a 5xx would write them twice. The
        caller looks for what landed before sending the rest again. It waits for answers as long as
        :attr:`client` has learned to (one service, one deadline)."""
        self.access_token()
        if self._once is None:
            s = self.settings()
            self._once = ApiClient(self._api_domain or "", timeout=s["timeout"],
                                   retry=RetryPolicy(max_attempts=1), pacer=Pacer(None), name="zoho",
                                   deadline=self.client.deadline)
        return self._once

    def call_stats(self) -> dict[str, int]:
        """Calls, retries, throttles and errors of both clients."""
        return combined_stats(self._client, self._once)

    @property
    def credits(self) -> CreditBudget:
        if self._credits is None:
            s = self.settings()
            key = f"{s['accounts_url']}|{s['client_id']}|{self.api_domain}"
            self._credits = CreditBudget.shared(key, s["credit_budget"], s["credit_window"], s["credit_state_path"],
                                                self.credit_reserve())
        return self._credits

    def credit_reserve(self) -> int:
        """Credits of the org's allowance this provider leaves unspent (allowance - budget; 0 if unknown)."""
        s = self.settings()
        if s["allowance"] is None or s["credit_budget"] is None:
            return 0
        return max(0, s["allowance"] - s["credit_budget"])

    def close(self) -> None:
        for client in (self._client, self._once, self._accounts):
            if client is not None:
                client.close()
        self._client = self._once = self._accounts = None

    # -- request core -----------------------------------------------------------------------------
    def reserve(self, credits: int, what: str) -> None:
        """Spend credits for calls about to be made (raises QuotaExhausted when they do not fit)."""
        self.credits.reserve(credits, what)

    def request(self, method: str, path: str, *, cost: int | None = None, reserved: bool = False,
                url: str | None = None, once: bool = False, **kwargs: Any) -> httpx.Response:
        """One API call: price it, send it with the token, re-mint the token once on 401.

        ``reserved`` means the caller already reserved the credits (a batch priced as a whole);
        ``once`` sends through :attr:`once_client` (no retries).
        Returns the response for 2xx, 207 and 400-with-``data`` (per-record results); raises
        :class:`ZohoApiError` for request-level errors.
        """
        if not reserved:
            records = len(kwargs["json"]["data"]) if isinstance(kwargs.get("json"), dict) and \
                isinstance(kwargs["json"].get("data"), list) else 0
            self.reserve(cost if cost is not None else call_cost(method, path, records=records), f"{method} {path}")
        client = self.once_client if once else self.client
        target = url or path
        for attempt in (1, 2):
            headers = {"Authorization": f"Zoho-oauthtoken {self.access_token(refresh=attempt == 2)}",
                       **kwargs.pop("headers", {})}
            response = client.request(method, target, headers=headers, **kwargs)
            self.credits.observe(response.headers)
            if response.status_code == 401 and attempt == 1 and _code_of(response) in ("INVALID_TOKEN", ""):
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            break
        if response.status_code < 400:
            return response
        body = _json_or_text(response)
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            return response  # all records refused: per-record results, not a request error
        raise _error(method, path, response, body)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- metadata ---------------------------------------------------------------------------------
    def org(self) -> dict[str, Any]:
        if self._org is None:
            self._org = (self.json("GET", f"/crm/{API_VERSION}/org") or {}).get("org", [{}])[0]
        return self._org

    def modules(self) -> list[dict[str, Any]]:
        return (self.json("GET", f"/crm/{API_VERSION}/settings/modules") or {}).get("modules", [])

    def fields(self, module: str) -> list[dict[str, Any]]:
        body = self.json("GET", f"/crm/{API_VERSION}/settings/fields", params={"module": module})
        return (body or {}).get("fields", [])

    def create_fields(self, module: str, specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Create custom fields; raise with Zoho's message when one is refused."""
        body = self.json("POST", f"/crm/{API_VERSION}/settings/fields", params={"module": module},
                         json={"fields": list(specs)})
        results = (body or {}).get("fields", [])
        failed = [r for r in results if r.get("status") != "success"]
        if failed:
            raise ZohoApiError(f"Zoho refused a custom field on {module}: {failed[0]}", body=body,
                               code=failed[0].get("code", ""), details=failed[0].get("details"))
        return results

    def set_picklist_values(self, module: str, field: Mapping[str, Any], values: Sequence[str]) -> None:
        """Add pick-list values, keeping the existing ones (the list sent replaces the options)."""
        current = [{"id": p["id"]} for p in field.get("pick_list_values") or [] if p.get("id")]
        known = {p.get("actual_value") for p in field.get("pick_list_values") or []}
        new = [{"display_value": v, "actual_value": v} for v in values if v not in known]
        if not new:
            return
        body = self.json("PATCH", f"/crm/{API_VERSION}/settings/fields", params={"module": module},
                         json={"fields": [{"id": field["id"], "pick_list_values": current + new}]})
        failed = [r for r in (body or {}).get("fields", []) if r.get("status") != "success"]
        if failed:
            raise ZohoApiError(f"Zoho refused pick-list values on {module}.{field.get('api_name')}: {failed[0]}",
                               body=body)

    def profiles(self) -> list[dict[str, Any]]:
        return (self.json("GET", f"/crm/{API_VERSION}/settings/profiles") or {}).get("profiles", [])

    def create_module(self, api_name: str, singular: str, plural: str) -> str:
        """Create a custom module visible to every profile; returns its id (costs 500 credits)."""
        profile_ids = [{"id": p["id"]} for p in self.profiles()]
        body = self.json("POST", f"/crm/{API_VERSION}/settings/modules", json={"modules": [{
            "api_name": api_name, "singular_label": singular[:25], "plural_label": plural[:25],
            "profiles": profile_ids}]})
        result = ((body or {}).get("modules") or [{}])[0]
        if result.get("status") != "success":
            raise ZohoApiError(f"Zoho refused the custom module {api_name}: {result}", body=body,
                               code=result.get("code", ""))
        return result["details"]["id"]

    def users(self, kind: str = "ActiveUsers") -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            response = self.request("GET", f"/crm/{API_VERSION}/users",
                                    params={"type": kind, "page": page, "per_page": PAGE_SIZE})
            if response.status_code == 204 or not response.content:
                return out
            body = response.json()
            out.extend(body.get("users") or [])
            if not (body.get("info") or {}).get("more_records"):
                return out
            page += 1

    # -- records ----------------------------------------------------------------------------------
    def _write(self, method: str, path: str, records: Sequence[Mapping[str, Any]], *,
               reserved: bool, once: bool = False, **extra: Any) -> list[dict[str, Any]]:
        if len(records) > MAX_RECORDS_PER_CALL:
            raise ValueError(f"Zoho takes at most {MAX_RECORDS_PER_CALL} records per call, got {len(records)}")
        if not records:
            return []
        body = self.json(method, path, reserved=reserved, once=once,
                         json={"data": [dict(r) for r in records], "trigger": [], **extra})
        results = (body or {}).get("data") or []
        if len(results) != len(records):
            raise ZohoApiError(f"Zoho answered {len(results)} results for {len(records)} records on {path}",
                               body=body)
        return results

    def upsert(self, module: str, records: Sequence[Mapping[str, Any]], duplicate_check_fields: Sequence[str],
               *, reserved: bool = False) -> list[dict[str, Any]]:
        """Upsert up to 100 records, matched on ``duplicate_check_fields``; one result per record.

        ``trigger: []`` keeps workflows, approvals and blueprints from firing on migrated data.
        """
        return self._write("POST", f"/crm/{API_VERSION}/{module}/upsert", records, reserved=reserved,
                           duplicate_check_fields=list(duplicate_check_fields))

    def insert(self, module: str, records: Sequence[Mapping[str, Any]], *, reserved: bool = False,
               once: bool = False) -> list[dict]:
        """Insert up to 100 records; ``once``: without retries (the caller checks what landed)."""
        return self._write("POST", f"/crm/{API_VERSION}/{module}", records, reserved=reserved, once=once)

    def update(self, module: str, records: Sequence[Mapping[str, Any]], *, reserved: bool = False) -> list[dict]:
        """Update up to 100 records; each carries its ``id``."""
        return self._write("PUT", f"/crm/{API_VERSION}/{module}", records, reserved=reserved)

    def delete(self, module: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        if len(ids) > MAX_RECORDS_PER_CALL:
            raise ValueError(f"Zoho deletes at most {MAX_RECORDS_PER_CALL} records per call")
        if not ids:
            return []
        body = self.json("DELETE", f"/crm/{API_VERSION}/{module}", params={"ids": ",".join(ids)})
        return (body or {}).get("data") or []

    def get_records(self, module: str, fields: Sequence[str], ids: Sequence[str] | None = None
                    ) -> Iterator[dict[str, Any]]:
        """Records with ``fields`` (at most 50); all of them, or those ``ids`` (100 per call)."""
        fields = list(dict.fromkeys(fields))
        if len(fields) > MAX_FIELDS_PER_GET:
            raise ValueError(f"Zoho returns at most {MAX_FIELDS_PER_GET} fields per call; asked for {len(fields)}")
        path = f"/crm/{API_VERSION}/{module}"
        if ids is not None:
            for start in range(0, len(ids), MAX_RECORDS_PER_CALL):
                chunk = list(ids[start:start + MAX_RECORDS_PER_CALL])
                response = self.request("GET", path, params={"fields": ",".join(fields), "ids": ",".join(chunk)})
                if response.status_code != 204 and response.content:
                    yield from response.json().get("data") or []
            return
        params: dict[str, Any] = {"fields": ",".join(fields), "per_page": PAGE_SIZE}
        while True:
            response = self.request("GET", path, params=params)
            if response.status_code == 204 or not response.content:
                return
            body = response.json()
            yield from body.get("data") or []
            info = body.get("info") or {}
            if not info.get("more_records") or not info.get("next_page_token"):
                return
            params = {"fields": ",".join(fields), "per_page": PAGE_SIZE, "page_token": info["next_page_token"]}

    def coql(self, select_query: str, *, limit: int = 200) -> tuple[list[dict[str, Any]], bool]:
        """One COQL query; returns (rows, more_records). Costs 1-3 credits by LIMIT."""
        response = self.request("POST", f"/crm/{API_VERSION}/coql", cost=call_cost("POST", "/coql", coql_limit=limit),
                                json={"select_query": select_query})
        if response.status_code == 204 or not response.content:
            return [], False
        body = response.json()
        return body.get("data") or [], bool((body.get("info") or {}).get("more_records"))

    def coql_in(self, module: str, select: Sequence[str], field: str, values: Sequence[str]) -> list[dict[str, Any]]:
        """Every record whose ``field`` is one of ``values`` (50 values per query, as COQL allows)."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(values), COQL_IN_VALUES):
            chunk = values[start:start + COQL_IN_VALUES]
            literal = ", ".join(coql_literal(v) for v in chunk)
            offset = 0
            while True:
                limit = 200
                query = (f"select {', '.join(select)} from {module} where {field} in ({literal}) "
                         f"limit {offset}, {limit}")
                found, more = self.coql(query, limit=limit)
                rows.extend(found)
                if not more:
                    break
                offset += limit
        return rows

    # -- attachments ------------------------------------------------------------------------------
    def upload_attachment(self, module: str, record_id: str, name: str, content: bytes,
                          content_type: str = "application/octet-stream", *, once: bool = False) -> str:
        """Upload a file to a record; ``once``: without retries (the caller checks what landed)."""
        body = self.json("POST", f"/crm/{API_VERSION}/{module}/{record_id}/Attachments", once=once,
                         files={"file": (name, content, content_type)})
        result = ((body or {}).get("data") or [{}])[0]
        if result.get("status") != "success":
            raise ZohoApiError(f"Zoho refused the attachment {name!r} on {module}/{record_id}: {result}",
                               body=body, code=result.get("code", ""), details=result.get("details"))
        return result["details"]["id"]

    def list_attachments(self, module: str, record_id: str) -> list[dict[str, Any]]:
        response = self.request("GET", f"/crm/{API_VERSION}/{module}/{record_id}/Attachments",
                                params={"fields": "id,File_Name,Size"})
        if response.status_code == 204 or not response.content:
            return []
        return response.json().get("data") or []

    def download_attachment(self, module: str, record_id: str, attachment_id: str) -> bytes:
        return self.request("GET", f"/crm/{API_VERSION}/{module}/{record_id}/Attachments/{attachment_id}").content

    def delete_attachment(self, module: str, record_id: str, attachment_id: str) -> None:
        self.request("DELETE", f"/crm/{API_VERSION}/{module}/{record_id}/Attachments/{attachment_id}")

    # -- bulk write -------------------------------------------------------------------------------
    def upload_bulk_file(self, csv_name: str, csv_text: str) -> str:
        """Zip one CSV and upload it to the file server (``feature: bulk-write``); returns the file id."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(csv_name, csv_text)
        s = self.settings()
        upload = s["upload_url"] or (self.api_domain if "zohoapis" not in self.api_domain
                                     else UPLOAD_SERVERS[s["data_centre"]])
        body = self.json("POST", f"/crm/{API_VERSION}/upload", url=f"{upload}/crm/{API_VERSION}/upload",
                         headers={"feature": "bulk-write", "X-CRM-ORG": str(self.org().get("zgid", ""))},
                         files={"file": (csv_name.rsplit(".", 1)[0] + ".zip", buffer.getvalue(), "application/zip")})
        if (body or {}).get("status") != "success":
            raise ZohoApiError(f"Zoho refused the bulk file: {body}", body=body)
        return str(body["details"]["file_id"])

    def create_bulk_write(self, module: str, file_id: str, field_mappings: list[dict[str, Any]], *,
                          operation: str = "upsert", find_by: str | None = None) -> str:
        """Create a Bulk Write job (500 credits); returns its id."""
        resource: dict[str, Any] = {"type": "data", "module": {"api_name": module}, "file_id": file_id,
                                    "field_mappings": field_mappings}
        if find_by:
            resource["find_by"] = find_by
        body = self.json("POST", f"/crm/bulk/{API_VERSION}/write",
                         json={"operation": operation, "ignore_empty": True, "resource": [resource]})
        return body["details"]["id"]

    def bulk_write_status(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/crm/bulk/{API_VERSION}/write/{job_id}")

    def download(self, url: str) -> bytes:
        return self.request("GET", url, url=url).content


def coql_literal(value: Any) -> str:
    """A COQL literal: strings single-quoted with quotes escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _code_of(response: httpx.Response) -> str:
    body = _json_or_text(response)
    return str(body.get("code") or "") if isinstance(body, dict) else ""


def _error(method: str, path: str, response: httpx.Response, body: Any) -> ZohoApiError:
    code, message, details = "", "", {}
    if isinstance(body, dict):
        code, message, details = str(body.get("code") or ""), str(body.get("message") or ""), body.get("details") or {}
    text = f"{code}: {message}" if code else str(body)[:300]
    return ZohoApiError(f"Zoho {method} {path} answered HTTP {response.status_code}: {text} {details or ''}".strip(),
                        status=response.status_code, body=body, url=path, code=code, details=details)
