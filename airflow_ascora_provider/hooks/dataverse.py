"""Airflow hook for the Microsoft Dataverse Web API v9.2 (the store behind Dynamics 365 Sales).

Why a hook of our own: a migration needs what no generic HTTP hook gives. Authentication is OAuth2
client credentials through ``msal`` (token cached by msal and acquired again when it expires or the
service answers 401). Writes go through ``$batch`` with one change set per record and ``Prefer:
odata.continue-on-error``, so one bad record does not sink the other 99. Lookups are written with
``@odata.bind`` through navigation properties read from metadata, never guessed. Tables, columns,
choices, lookups and alternate keys are created through the metadata API, keys are polled until their
index is Active, and customisations are published (columns, lookups and keys can go through
``$batch`` too: :meth:`DataverseHook.create_metadata`). And the service-protection limits (6000
requests per user in a sliding 5-minute window, each request inside a batch counted) are respected
*before* they bite: the hook models the window (:class:`RequestWindow`) and a call waits until its
whole weight fits in the hook's 90% share, so full batches go out without a 429; a 429 is still
honoured through ``Retry-After`` and lowers the share for a while.

All HTTP goes through :class:`~airflow_ascora_provider.hooks.http_client.ApiClient` (retries that
honour ``Retry-After``, backoff, token-bucket pacing, request budget, call stats).

Connection (type ``dataverse``): host = environment URL (``https://contoso.crm6.dynamics.com``),
login = application (client) id, password = client secret. Extra: ``tenant_id`` (required),
``authority_host`` (default ``https://login.microsoftonline.com``; the emulator's URL in tests),
``ca_bundle`` (a CA file to trust, e.g. the emulator's self-signed certificate), ``publisher_prefix``
(default ``new``), ``solution`` (unique name that new components are added to), ``licence``
(``enterprise`` or ``professional``), ``requests_per_window`` (default 6000; 0 disables pacing),
``window_seconds`` (300), ``batch_size`` (records per ``$batch``, default 100, at most 1000, and at most what the paced share
of the window holds),
``timeout`` (30), ``request_budget``, ``key_wait_seconds`` (600), ``large_file_link``.

msal and custom authorities: msal validates an authority against Microsoft's instance-discovery
endpoint and accepts only ``https`` URLs. The hook passes ``instance_discovery=False`` (and
``validate_authority=False``) whenever ``authority_host`` is not Microsoft's, so msal reads
``{authority}/v2.0/.well-known/openid-configuration`` from that host directly; the emulator serves it
over TLS with a self-signed certificate that ``ca_bundle`` names.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import requests  # msal's own HTTP library

try:  # Airflow 3
    from airflow.sdk.bases.hook import BaseHook
except ImportError:  # pragma: no cover - Airflow 2 fallback
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]

from airflow_ascora_provider.hooks.http_client import (
    ApiClient,
    ApiError,
    CallStats,
    Pacer,
    RequestWindow,
    RetryPolicy,
    combined_stats,
)
from airflow_ascora_provider.hooks.requests_retry import mount_policy

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_REQUESTS_PER_WINDOW = 6000  # service protection: requests per user per 5 minutes
DEFAULT_WINDOW_SECONDS = 300.0
PACE_SHARE = 0.9  # pace at 90% of the published limit: other tools may share the application user
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_REQUESTS = 1000
METADATA_BATCH = 20  # metadata creates per $batch: each can take seconds server-side, the timeout is per call
DEFAULT_TIMEOUT = 30.0
DEFAULT_KEY_WAIT = 600.0
LANGUAGE = 1033
# Key values with these characters cannot be used in an alternate-key URL (documented).
UNSAFE_KEY_CHARACTERS = set("/<>*%&:\\?+")
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class DataverseApiError(ApiError):
    """A non-2xx answer, with Dataverse's error ``code`` (``0x80040237`` …) and ``message`` kept apart."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None, url: str = "",
                 code: str = "", detail: str = ""):
        super().__init__(message, status=status, body=body, url=url)
        self.code = code
        self.detail = detail


class DataverseAuthError(ApiError):
    """The token endpoint refused the client credentials (msal's ``error`` / ``error_description``)."""


@dataclass
class BatchOperation:
    """One request of a ``$batch``: ``url`` is relative to the API root (``accounts(<id>)``)."""

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # A write goes into a change set of its own (atomic, rolled back on failure); False sends it as a
    # plain part of the batch, as GETs always go (metadata creates: ExecuteMultiple, not a transaction).
    changeset: bool = True


@dataclass
class BatchResult:
    status: int
    headers: dict[str, str]
    body: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def entity_id(self) -> str | None:
        url = self.headers.get("odata-entityid") or self.headers.get("location") or ""
        match = _ENTITY_ID.search(url)
        if match:
            return match.group(1).lower()
        if isinstance(self.body, dict):
            for key, value in self.body.items():
                if key.endswith("id") and isinstance(value, str) and len(value) == 36:
                    return value.lower()
        return None

    @property
    def error_code(self) -> str:
        return ((self.body or {}).get("error") or {}).get("code", "") if isinstance(self.body, dict) else ""

    @property
    def error_message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message") or "")
        return str(self.body or f"HTTP {self.status}")


def _label(text: str) -> dict[str, Any]:
    return {"@odata.type": "Microsoft.Dynamics.CRM.Label",
            "LocalizedLabels": [{"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text,
                                 "LanguageCode": LANGUAGE}]}


def _quote_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def odata_or(field_name: str, values: Sequence[Any]) -> str:
    """``a eq 'x' or a eq 'y'`` (quotes doubled), the portable way to ask for several values."""
    return " or ".join(f"{field_name} eq {_quote_literal(v)}" for v in values)


def column_definition(kind: str, schema_name: str, label: str, *, description: str = "",
                      max_length: int | None = None, options: Sequence[tuple[int, str]] = (),
                      required: bool = False) -> dict[str, Any]:
    """AttributeMetadata for a new column. ``kind``: String Memo Integer Decimal Money Boolean Date
    DateTime Picklist MultiPicklist (plus String formats via ``Email``/``Phone``/``Url``)."""
    base: dict[str, Any] = {"SchemaName": schema_name, "DisplayName": _label(label),
                            "Description": _label(description or label),
                            "RequiredLevel": {"Value": "ApplicationRequired" if required else "None",
                                              "CanBeChanged": True}}
    option_set = {"@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata", "IsGlobal": False,
                  "OptionSetType": "Picklist",
                  "Options": [{"Value": value, "Label": _label(text)} for value, text in options]}
    specs: dict[str, dict[str, Any]] = {
        "String": {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "AttributeType": "String",
                   "AttributeTypeName": {"Value": "StringType"}, "MaxLength": max_length or 4000,
                   "FormatName": {"Value": "Text"}},
        "Memo": {"@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata", "AttributeType": "Memo",
                 "AttributeTypeName": {"Value": "MemoType"}, "MaxLength": max_length or 100000, "Format": "TextArea"},
        "Integer": {"@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata", "AttributeType": "Integer",
                    "AttributeTypeName": {"Value": "IntegerType"}, "MinValue": -2147483648,
                    "MaxValue": 2147483647, "Format": "None"},
        "Decimal": {"@odata.type": "Microsoft.Dynamics.CRM.DecimalAttributeMetadata", "AttributeType": "Decimal",
                    "AttributeTypeName": {"Value": "DecimalType"}, "MinValue": -100000000000.0,
                    "MaxValue": 100000000000.0, "Precision": 6},
        "Money": {"@odata.type": "Microsoft.Dynamics.CRM.MoneyAttributeMetadata", "AttributeType": "Money",
                  "AttributeTypeName": {"Value": "MoneyType"}, "PrecisionSource": 2, "MinValue": -922337203685477.0,
                  "MaxValue": 922337203685477.0},
        "Boolean": {"@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata", "AttributeType": "Boolean",
                    "AttributeTypeName": {"Value": "BooleanType"}, "DefaultValue": False,
                    "OptionSet": {"@odata.type": "Microsoft.Dynamics.CRM.BooleanOptionSetMetadata",
                                  "TrueOption": {"Value": 1, "Label": _label("Yes")},
                                  "FalseOption": {"Value": 0, "Label": _label("No")}, "OptionSetType": "Boolean"}},
        "Date": {"@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata", "AttributeType": "DateTime",
                 "AttributeTypeName": {"Value": "DateTimeType"}, "Format": "DateOnly"},
        "DateTime": {"@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata", "AttributeType": "DateTime",
                     "AttributeTypeName": {"Value": "DateTimeType"}, "Format": "DateAndTime"},
        "Picklist": {"@odata.type": "Microsoft.Dynamics.CRM.PicklistAttributeMetadata", "AttributeType": "Picklist",
                     "AttributeTypeName": {"Value": "PicklistType"}, "OptionSet": option_set},
        "MultiPicklist": {"@odata.type": "Microsoft.Dynamics.CRM.MultiSelectPicklistAttributeMetadata",
                          "AttributeType": "Virtual", "AttributeTypeName": {"Value": "MultiSelectPicklistType"},
                          "OptionSet": option_set},
    }
    formats = {"Email": "Email", "Phone": "Phone", "Url": "Url"}
    if kind in formats:
        spec = dict(specs["String"], FormatName={"Value": formats[kind]}, MaxLength=max_length or 200)
    elif kind in specs:
        spec = specs[kind]
    else:
        raise ValueError(f"unknown Dataverse column kind {kind!r}; known: {', '.join(sorted(specs) + sorted(formats))}")
    return {**spec, **base}


class _PinnedSession(requests.Session):
    """msal's HTTP session with the CA and timeout pinned on every request, retried by the provider's
    rule (a 429 or 5xx from the sign-in endpoint, or a dropped connection, is waited and retried like
    any Dataverse call instead of failing the task; msal itself retries nothing).

    requests lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify`` (psf/requests#3829), which would
    silently drop the connection's ``ca_bundle``; a per-request ``verify`` always wins.
    """

    def __init__(self, verify: str | bool, timeout: float, retry: RetryPolicy, stats: CallStats):
        super().__init__()
        self._pinned_verify = verify
        self._timeout = timeout
        mount_policy(self, retry, timeout, stats, "dataverse sign-in")

    def request(self, method, url, **kwargs):
        kwargs["verify"] = self._pinned_verify
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


class DataverseHook(BaseHook):
    """Talks to one Dataverse environment. Construct with an Airflow connection id, or with the
    explicit keyword arguments (tests, the demo, scripts), in which case no connection is looked up."""

    conn_name_attr = "dataverse_conn_id"
    default_conn_name = "dataverse_default"
    conn_type = "dataverse"
    hook_name = "Microsoft Dataverse (Dynamics 365 Sales)"

    def __init__(self, dataverse_conn_id: str = default_conn_name, *, base_url: str | None = None,
                 tenant_id: str | None = None, client_id: str | None = None, client_secret: str | None = None,
                 authority_host: str | None = None, ca_bundle: str | None = None,
                 requests_per_window: float | None = None, window_seconds: float | None = None,
                 batch_size: int | None = None, timeout: float | None = None, request_budget: int | None = None,
                 key_wait_seconds: float | None = None, retry: RetryPolicy | None = None,
                 extra: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataverse_conn_id = dataverse_conn_id
        self._explicit = {"base_url": base_url, "tenant_id": tenant_id, "client_id": client_id,
                          "client_secret": client_secret, "authority_host": authority_host, "ca_bundle": ca_bundle,
                          "requests_per_window": requests_per_window, "window_seconds": window_seconds,
                          "batch_size": batch_size, "timeout": timeout, "request_budget": request_budget,
                          "key_wait_seconds": key_wait_seconds}
        self._extra_override = dict(extra or {})
        self._retry = retry
        self._settings_cache: dict[str, Any] | None = None
        self._client: ApiClient | None = None
        self._once: ApiClient | None = None
        self._msal = None
        self._token_session: _PinnedSession | None = None
        self.token_stats = CallStats()  # the sign-in endpoint's calls, apart from Dataverse's
        self._token_lock = threading.Lock()
        self._throttled_seen = 0
        self._calm_calls = 0
        self._halved_from: float | None = None  # the pace before the last halving after a 429
        self.rate_headers: dict[str, str] = {}

    # ---- Airflow connection plumbing -----------------------------------------------------------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {"host": "Environment URL", "login": "Application (client) ID",
                           "password": "Client secret"},
            "placeholders": {
                "host": "https://contoso.crm6.dynamics.com",
                "login": "00000000-0000-0000-0000-000000000000",
                "extra": '{"tenant_id": "<directory id>", "publisher_prefix": "contoso", "licence": "enterprise"}',
            },
        }

    @property
    def settings(self) -> dict[str, Any]:
        """Resolved URL, credentials and limits: explicit arguments win over the connection."""
        if self._settings_cache is not None:
            return self._settings_cache
        given = self._explicit
        extra = dict(self._extra_override)
        base_url, client_id, secret = given["base_url"], given["client_id"], given["client_secret"]
        if not (base_url and client_id and secret):
            conn = self.get_connection(self.dataverse_conn_id)
            extra = {**(conn.extra_dejson or {}), **extra}
            base_url = base_url or conn.host
            client_id = client_id or conn.login
            secret = secret or conn.password
        missing = [name for name, value in (("host (environment URL)", base_url), ("login (client id)", client_id),
                                            ("password (client secret)", secret)) if not value]
        tenant = given["tenant_id"] or extra.get("tenant_id")
        if not tenant:
            missing.append("extra.tenant_id")
        if missing:
            raise ValueError(f"Dataverse connection '{self.dataverse_conn_id}' lacks {', '.join(missing)}")

        def pick(key: str, default: Any, cast: type) -> Any:
            raw = given.get(key) if given.get(key) is not None else extra.get(key)
            return default if raw in (None, "") else cast(raw)

        url = str(base_url).strip().rstrip("/")
        if not re.match(r"^https?://", url):
            url = "https://" + url
        url = url.removesuffix(API_PATH)
        batch = pick("batch_size", DEFAULT_BATCH_SIZE, int)
        if not 1 <= batch <= MAX_BATCH_REQUESTS:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_REQUESTS}, got {batch}")
        self._settings_cache = {
            "base_url": url, "client_id": client_id, "client_secret": secret, "tenant_id": tenant,
            "authority_host": str(pick("authority_host", MICROSOFT_AUTHORITY, str)).rstrip("/"),
            "ca_bundle": pick("ca_bundle", None, str),
            "requests_per_window": pick("requests_per_window", DEFAULT_REQUESTS_PER_WINDOW, float),
            "window_seconds": pick("window_seconds", DEFAULT_WINDOW_SECONDS, float),
            "batch_size": batch, "timeout": pick("timeout", DEFAULT_TIMEOUT, float),
            "request_budget": pick("request_budget", None, int),
            "key_wait_seconds": pick("key_wait_seconds", DEFAULT_KEY_WAIT, float),
            "publisher_prefix": str(extra.get("publisher_prefix") or "new").rstrip("_"),
            "solution": extra.get("solution") or None,
            "licence": str(extra.get("licence") or "enterprise").lower(),
            "large_file_link": extra.get("large_file_link") or None,
        }
        return self._settings_cache

    @property
    def batch_size(self) -> int:
        """Records per ``$batch``: the connection's, but never more than the paced window can hold (a
        batch of ``n`` weighs ``n + 1`` requests against the hook's share of the limit)."""
        s = self.settings
        if s["requests_per_window"]:
            return max(1, min(s["batch_size"], int(s["requests_per_window"] * PACE_SHARE) - 1))
        return s["batch_size"]

    def get_conn(self) -> ApiClient:
        """The shared :class:`ApiClient`, paced under the service-protection request limit."""
        if self._client is None:
            s = self.settings
            # A known limit: the service's sliding window, modelled (RequestWindow). None known: no
            # pacing until the service answers 429, then a token bucket under the documented default.
            pacer: Pacer | RequestWindow = (
                RequestWindow(s["requests_per_window"] * PACE_SHARE, s["window_seconds"])
                if s["requests_per_window"] else Pacer(None, per=s["window_seconds"]))
            self._client = ApiClient(
                s["base_url"] + API_PATH,
                headers=ODATA_HEADERS, timeout=s["timeout"], retry=self._retry, pacer=pacer,
                budget=s["request_budget"], name="dataverse",
                transport=httpx.HTTPTransport(verify=s["ca_bundle"] or True, retries=0),
            )
            self._max_rate = None if isinstance(pacer, RequestWindow) else pacer.rate
        return self._client

    @property
    def client(self) -> ApiClient:
        return self.get_conn()

    @property
    def once_client(self) -> ApiClient:
        """A client that sends exactly once (no retries), sharing the pace and the answer deadline of
        :attr:`client`: for a ``$batch`` of creates without an alternate key (notes), which a blind
        retry after a batch cut short or an answer lost would write twice. The caller looks for what
        landed first."""
        if self._once is None:
            s, client = self.settings, self.client
            self._once = ApiClient(
                s["base_url"] + API_PATH, headers=ODATA_HEADERS, timeout=s["timeout"],
                retry=RetryPolicy(max_attempts=1), pacer=client.pacer, budget=s["request_budget"],
                name="dataverse", transport=httpx.HTTPTransport(verify=s["ca_bundle"] or True, retries=0),
                deadline=client.deadline)
        return self._once

    def call_stats(self) -> dict[str, int]:
        """Calls, retries, throttles and errors of both clients."""
        return combined_stats(self._client, self._once)

    def close(self) -> None:
        for client in (self._client, self._once):
            if client is not None:
                client.close()
        self._client = self._once = None
        if self._token_session is not None:
            self._token_session.close()
            self._token_session = None
            self._msal = None

    # ---- authentication ------------------------------------------------------------------------
    def _msal_app(self):
        import msal

        if self._msal is None:
            s = self.settings
            if self._token_session is None:
                self._token_session = _PinnedSession(s["ca_bundle"] or True, s["timeout"],
                                                     self._retry or RetryPolicy(), self.token_stats)
            authority = f"{s['authority_host']}/{s['tenant_id']}"
            custom = s["authority_host"] != MICROSOFT_AUTHORITY
            self._msal = msal.ConfidentialClientApplication(
                s["client_id"], client_credential=s["client_secret"], authority=authority,
                # A non-Microsoft authority (the emulator, a sovereign cloud proxy) is not in msal's
                # instance-discovery list: skip discovery and read its OpenID configuration directly.
                instance_discovery=False if custom else None, validate_authority=not custom,
                http_client=self._token_session,
            )
        return self._msal

    def access_token(self) -> str:
        """A bearer token for the environment; msal serves it from its cache until it nearly expires."""
        with self._token_lock:
            scope = f"{self.settings['base_url']}/.default"
            result = self._msal_app().acquire_token_for_client(scopes=[scope])
        if "access_token" not in result:
            raise DataverseAuthError(f"Dataverse token request failed: {result.get('error')}: "
                                     f"{result.get('error_description')}", body=result)
        return result["access_token"]

    def _forget_token(self) -> None:
        with self._token_lock:
            self._msal = None  # a new msal app starts with an empty token cache

    # ---- request core --------------------------------------------------------------------------
    def _pace_extra(self, weight: int) -> None:
        """Token-bucket pacing (limit unknown, switched on by a 429): a ``$batch``'s inner requests
        count too, so their tokens are taken before it goes. (With a known limit the
        :class:`RequestWindow` reserves a call's whole weight at once instead.)"""
        for _ in range(max(0, weight - 1)):
            self.client.pacer.acquire(self.client.retry.sleep)

    def _adapt(self, weight: int = 1) -> None:
        """Lower the pace after a 429 and bring it back after a calm spell, without compounding.

        With a known limit the hook never exceeds its own share, so a 429 means someone else (another
        tool on the same application user) or another limit (execution time) took room: the budget of
        the modelled window is halved and creeps back (x1.25 per 50 calm requests) to the hook's share.
        Without a known limit the token bucket starts at half the documented default and the same rule
        applies. Calm is counted in requests as the limit counts them (a ``$batch`` of 100 is 101), and
        a 429 that comes while the pace has not yet climbed back from the last halving is waited out
        (``Retry-After``) without halving again: compounded, a few 429s in a row left the pace at 1/64
        for the rest of a run (fault soak: 28x slower than without faults).
        """
        stats, pacer = self.client.stats, self.client.pacer
        window = pacer if isinstance(pacer, RequestWindow) else None
        if stats.throttled > self._throttled_seen:
            self._throttled_seen = stats.throttled
            s = self.settings
            if window is not None:
                if self._halved_from is not None and window.budget < self._halved_from:
                    return  # still recovering from the last halving
                self._halved_from = window.budget
                window.budget = max(window.full_budget / 64, window.budget / 2)
                self._calm_calls = 0
                log.warning("dataverse: throttled by the service; lowering this client's share of the window "
                            "to %.0f requests per %.0f s", window.budget, window.window)
                return
            known = (s["requests_per_window"] or DEFAULT_REQUESTS_PER_WINDOW) * PACE_SHARE
            if self._halved_from is not None and (pacer.rate or known) < self._halved_from:
                return  # still recovering from the last halving
            self._halved_from = pacer.rate or known
            pacer.rate = max(known / 64, self._halved_from / 2)
            pacer.per = s["window_seconds"]
            self._calm_calls = 0
            log.warning("dataverse: throttled by the service; pacing down to %.0f requests per %.0f s",
                        pacer.rate, pacer.per)
            return
        if window is not None:
            if window.budget < window.full_budget:
                self._calm_calls += weight
                if self._calm_calls >= 50:
                    steps, self._calm_calls = divmod(self._calm_calls, 50)
                    window.budget = min(window.full_budget, window.budget * 1.25 ** steps)
            return
        if pacer.rate and self._max_rate and pacer.rate < self._max_rate:
            self._calm_calls += weight
            if self._calm_calls >= 50:
                steps, self._calm_calls = divmod(self._calm_calls, 50)
                pacer.rate = min(self._max_rate, pacer.rate * 1.25 ** steps)
        elif pacer.rate and not self._max_rate:
            self._calm_calls += weight
            if self._calm_calls >= 200:  # pacing was off: switch it off again after a long calm spell
                pacer.rate = None
                self._calm_calls = 0

    def send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
             content: bytes | None = None, headers: Mapping[str, str] | None = None, weight: int = 1,
             ok_statuses: Sequence[int] = (), once: bool = False) -> httpx.Response:
        """One request with a fresh token (retried once after a 401); raises on a non-2xx answer.

        ``weight`` is what service protection counts for it (a ``$batch`` of ``n``: ``n + 1``);
        ``once`` sends it through :attr:`once_client` (no retries)."""
        pacer = self.client.pacer
        if isinstance(pacer, RequestWindow):
            pacer.weigh(weight)  # every attempt reserves the whole weight in the modelled window
        else:
            self._pace_extra(weight)
        for attempt in (1, 2):
            request_headers = {"Authorization": f"Bearer {self.access_token()}", **(headers or {})}
            kwargs: dict[str, Any] = {"headers": request_headers}
            if params:
                kwargs["params"] = {k: v for k, v in params.items() if v is not None}
            if json is not None:
                kwargs["content"] = jsonlib.dumps(json, ensure_ascii=False).encode("utf-8")
                request_headers.setdefault("Content-Type", "application/json; charset=utf-8")
            elif content is not None:
                kwargs["content"] = content
            response = (self.once_client if once else self.client).request(method, path, **kwargs)
            self._adapt(weight)
            for name in ("x-ms-ratelimit-burst-remaining-xrm-requests", "x-ms-ratelimit-time-remaining-xrm-requests"):
                if name in response.headers:
                    self.rate_headers[name] = response.headers[name]
            if response.status_code == 401 and attempt == 1:
                self._forget_token()
                continue
            break
        if response.status_code >= 400 and response.status_code not in ok_statuses:
            raise self._error(method, path, response)
        return response

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> DataverseApiError:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(body, dict) and not isinstance(error, dict):  # a gateway's answer, not Dataverse's shape
            error = {"code": error if isinstance(error, str) else "", "message": body.get("message") or ""}
        code = str((error or {}).get("code") or "")
        detail = str((error or {}).get("message") or (body if isinstance(body, str) else ""))[:1000]
        return DataverseApiError(f"Dataverse {method} {path} answered HTTP {response.status_code}"
                                 f"{' ' + code if code else ''}: {detail}", status=response.status_code, body=body,
                                 url=path, code=code, detail=detail)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> Any:
        response = self.send("GET", path, params=params, headers=headers)
        return response.json() if response.content else None

    # ---- records -------------------------------------------------------------------------------
    def iter_rows(self, entity_set: str, *, select: Sequence[str] | None = None, filter: str | None = None,
                  page_size: int = 5000, top: int | None = None) -> Iterator[dict[str, Any]]:
        """Every matching row, following ``@odata.nextLink``; lookups carry their table annotation."""
        params = {"$select": ",".join(select) if select else None, "$filter": filter, "$top": top}
        headers = {"Prefer": f'odata.maxpagesize={page_size},'
                             f'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'}
        url: str | None = entity_set
        while url:
            payload = self.get_json(url, params=params, headers=headers)
            yield from payload.get("value") or []
            url, params = payload.get("@odata.nextLink"), None

    def create(self, entity_set: str, body: Mapping[str, Any]) -> str:
        """POST a new row; returns its id from ``OData-EntityId``."""
        response = self.send("POST", entity_set, json=dict(body))
        return BatchResult(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                           response.json() if response.content else None).entity_id or ""

    def update(self, entity_set: str, record_id: str, body: Mapping[str, Any]) -> None:
        """PATCH an existing row; ``If-Match: *`` makes sure this never creates one."""
        self.send("PATCH", f"{entity_set}({record_id})", json=dict(body), headers={"If-Match": "*"})

    def upsert(self, entity_set: str, key: Mapping[str, Any], body: Mapping[str, Any], *,
               create_only: bool = False, update_only: bool = False) -> tuple[str, bool]:
        """PATCH through an alternate key (``accounts(asc_ascora_id='…')``); returns (id, created).

        ``create_only`` sends ``If-None-Match: *`` (412 when a row already holds the key),
        ``update_only`` sends ``If-Match: *`` (404 when none does). Key values containing any of
        ``/ < > * % & : \\ ? +`` cannot be addressed this way (documented), so they are refused here.
        """
        for name, value in key.items():
            if isinstance(value, str) and UNSAFE_KEY_CHARACTERS & set(value):
                raise ValueError(f"alternate key value {value!r} of {name} contains characters Dataverse cannot "
                                 "take in a key URL; look the row up with $filter and use its id")
        segment = ",".join(f"{name}={_quote_literal(value)}" for name, value in key.items())
        headers = {"Prefer": "return=representation"}
        if create_only:
            headers["If-None-Match"] = "*"
        if update_only:
            headers["If-Match"] = "*"
        response = self.send("PATCH", f"{entity_set}({quote(segment, safe='=,')})", json=dict(body),
                             headers=headers)
        result = BatchResult(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                             response.json() if response.content else None)
        return result.entity_id or "", response.status_code == 201

    def delete(self, entity_set: str, record_id: str) -> bool:
        """Delete a row; False when it was already gone (404)."""
        response = self.send("DELETE", f"{entity_set}({record_id})", ok_statuses=(404,))
        return response.status_code != 404

    # ---- $batch --------------------------------------------------------------------------------
    def execute_batch(self, operations: Sequence[BatchOperation], *, once: bool = False) -> list[BatchResult]:
        """Run operations in ``$batch`` calls of at most ``batch_size``; one result per operation, in order.

        Every write goes into a change set of its own (atomic per record) and the batch carries
        ``Prefer: odata.continue-on-error``, so a refused record answers with its error and the rest are
        still written. GETs go outside change sets (they are not allowed inside), and so do operations
        marked ``changeset=False``. ``once``: each ``$batch`` is sent once (see :attr:`once_client`).
        """
        return self.execute_batches(operations, self.batch_size, once=once)

    def execute_batches(self, operations: Sequence[BatchOperation], size: int, *,
                        once: bool = False) -> list[BatchResult]:
        """:meth:`execute_batch` with ``size`` operations per ``$batch`` (at most the documented 1,000)."""
        results: list[BatchResult] = []
        size = max(1, min(size, MAX_BATCH_REQUESTS))
        for start in range(0, len(operations), size):
            results.extend(self._one_batch(list(operations[start:start + size]), once=once))
        return results

    def _one_batch(self, operations: list[BatchOperation], *, once: bool = False) -> list[BatchResult]:
        boundary = f"batch_{uuid.uuid4()}"
        lines: list[str] = []
        for index, op in enumerate(operations, 1):
            lines.append(f"--{boundary}")
            request = [f"{op.method} {API_PATH}/{op.url} HTTP/1.1"]
            if op.body is not None:
                request.append("Content-Type: application/json; type=entry")
            request += [f"{k}: {v}" for k, v in op.headers.items()]
            request.append("")
            request.append(jsonlib.dumps(op.body, ensure_ascii=False) if op.body is not None else "")
            if op.method == "GET" or not op.changeset:
                lines += ["Content-Type: application/http", "Content-Transfer-Encoding: binary", "", *request]
                continue
            changeset = f"changeset_{uuid.uuid4()}"
            lines += [f"Content-Type: multipart/mixed; boundary={changeset}", "", f"--{changeset}",
                      "Content-Type: application/http", "Content-Transfer-Encoding: binary", f"Content-ID: {index}",
                      "", *request, f"--{changeset}--"]
        lines += [f"--{boundary}--", ""]
        response = self.send("POST", "$batch", content="\r\n".join(lines).encode("utf-8"), weight=len(operations) + 1,
                             headers={"Content-Type": f"multipart/mixed; boundary={boundary}",
                                      "Prefer": "odata.continue-on-error"}, ok_statuses=(400,), once=once)
        if response.status_code == 400 and not response.headers.get("content-type", "").startswith("multipart"):
            raise self._error("POST", "$batch", response)
        parts = parse_batch_response(response.headers.get("content-type", ""), response.content)
        if len(parts) > len(operations):
            raise DataverseApiError(f"Dataverse answered {len(parts)} parts for {len(operations)} batch requests",
                                    status=response.status_code)
        missing = BatchResult(424, {}, {"error": {"code": "", "message": "not executed: the batch stopped at an "
                                                                          "earlier failure"}})
        return parts + [missing] * (len(operations) - len(parts))

    # ---- metadata ------------------------------------------------------------------------------
    def _metadata_headers(self) -> dict[str, str]:
        solution = self.settings["solution"]
        return {"MSCRM.SolutionUniqueName": solution} if solution else {}

    def entity_definitions(self, select: Sequence[str] = ("LogicalName", "EntitySetName", "IsCustomEntity"),
                           filter: str | None = None) -> list[dict[str, Any]]:
        params = {"$select": ",".join(select), "$filter": filter}
        return list(self.get_json("EntityDefinitions", params=params).get("value") or [])

    def entity_definition(self, logical_name: str, *,
                          expand: Sequence[str] = ("Attributes", "Keys", "ManyToOneRelationships")) -> dict[str, Any]:
        params = {"$expand": ",".join(expand)} if expand else None
        return self.get_json(f"EntityDefinitions(LogicalName='{logical_name}')", params=params)

    def choice_options(self, logical_name: str) -> dict[str, dict[int, str]]:
        """Choice columns of a table: attribute → {option value: label} (single and multi-select)."""
        return choice_options_from([self.get_json(path) for path in choice_paths(logical_name)])

    def get_many(self, paths: Sequence[str]) -> list[Any]:
        """Several GETs (paths relative to the API root, query included) in ``$batch`` calls: one round
        trip per ``batch_size`` reads instead of one each. Their JSON bodies, in order; raises on a
        refusal."""
        answers = self.execute_batch([BatchOperation("GET", path) for path in paths])
        for path, answer in zip(paths, answers):
            if not answer.ok:
                raise DataverseApiError(f"Dataverse GET {path} (in $batch) answered HTTP {answer.status} "
                                        f"{answer.error_code}: {answer.error_message}", status=answer.status,
                                        body=answer.body, url=path, code=answer.error_code,
                                        detail=answer.error_message)
        return [answer.body for answer in answers]

    def create_table(self, schema_name: str, label: str, plural_label: str, primary_column: str, *,
                     primary_label: str = "Name", description: str = "", has_notes: bool = True,
                     has_activities: bool = True) -> None:
        """Create a user-owned custom table with its primary name column (notes and activities on)."""
        body = {"@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata", "SchemaName": schema_name,
                "DisplayName": _label(label), "DisplayCollectionName": _label(plural_label),
                "Description": _label(description or label), "OwnershipType": "UserOwned", "IsActivity": False,
                "HasNotes": has_notes, "HasActivities": has_activities,
                "Attributes": [{**column_definition("String", primary_column, primary_label, max_length=850),
                                "IsPrimaryName": True}]}
        self.send("POST", "EntityDefinitions", json=body, headers=self._metadata_headers())

    def create_column(self, entity: str, definition: Mapping[str, Any]) -> None:
        self._send_operation(self.column_operation(entity, definition))

    def column_operation(self, entity: str, definition: Mapping[str, Any]) -> BatchOperation:
        """The request that adds a column to ``entity`` (send it alone, or in :meth:`create_metadata`)."""
        return BatchOperation("POST", f"EntityDefinitions(LogicalName='{entity}')/Attributes", dict(definition),
                              self._metadata_headers(), changeset=False)

    def _send_operation(self, op: BatchOperation) -> None:
        self.send(op.method, op.url, json=op.body, headers=op.headers)

    def create_metadata(self, operations: Sequence[BatchOperation]) -> list[BatchResult]:
        """Several metadata creates (columns, lookups, keys) in ``$batch`` calls of
        :data:`METADATA_BATCH` operations, as plain parts run in order (a key after its column), each
        answering for itself (``continue-on-error``). One call per 20 creates instead of one each: the
        schema step of a mapping with a couple of hundred columns makes a dozen calls, not 200.

        A batch whose answer is lost is sent again; creates the first attempt already made then answer
        "already exists", which the caller checks against the metadata rather than trusting codes."""
        return self.execute_batches(operations, METADATA_BATCH)

    def create_lookup(self, relationship_schema: str, referencing: str, referenced: str, lookup_schema: str,
                      label: str) -> None:
        """A 1:N relationship whose lookup column ``lookup_schema`` sits on ``referencing``."""
        self._send_operation(self.lookup_operation(relationship_schema, referencing, referenced, lookup_schema,
                                                   label))

    def lookup_operation(self, relationship_schema: str, referencing: str, referenced: str, lookup_schema: str,
                         label: str) -> BatchOperation:
        body = {"@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
                "SchemaName": relationship_schema, "ReferencedEntity": referenced,
                "ReferencingEntity": referencing,
                "CascadeConfiguration": {"Assign": "NoCascade", "Delete": "RemoveLink", "Merge": "NoCascade",
                                         "Reparent": "NoCascade", "Share": "NoCascade", "Unshare": "NoCascade"},
                "Lookup": {"@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata", "AttributeType": "Lookup",
                           "AttributeTypeName": {"Value": "LookupType"}, "SchemaName": lookup_schema,
                           "DisplayName": _label(label), "Description": _label(label),
                           "RequiredLevel": {"Value": "None", "CanBeChanged": True}}}
        return BatchOperation("POST", "RelationshipDefinitions", body, self._metadata_headers(), changeset=False)

    def create_key(self, entity: str, schema_name: str, attributes: Sequence[str], label: str) -> None:
        self._send_operation(self.key_operation(entity, schema_name, attributes, label))

    def key_operation(self, entity: str, schema_name: str, attributes: Sequence[str], label: str) -> BatchOperation:
        body = {"SchemaName": schema_name, "DisplayName": _label(label), "KeyAttributes": list(attributes)}
        return BatchOperation("POST", f"EntityDefinitions(LogicalName='{entity}')/Keys", body,
                              self._metadata_headers(), changeset=False)

    def key_status(self, entity: str, key_logical_name: str) -> str:
        row = self.get_json(f"EntityDefinitions(LogicalName='{entity}')/Keys(LogicalName='{key_logical_name}')",
                            params={"$select": "EntityKeyIndexStatus"})
        return str(row.get("EntityKeyIndexStatus"))

    def wait_for_key(self, entity: str, key_logical_name: str, timeout: float | None = None) -> None:
        """Poll until the key's index is Active (the key cannot be used before); 0.1 s doubling to 10 s."""
        deadline = time.monotonic() + (self.settings["key_wait_seconds"] if timeout is None else timeout)
        poll = 0.1
        while True:
            status = self.key_status(entity, key_logical_name)
            if status == "Active":
                return
            if status == "Failed":
                raise DataverseApiError(f"the index of alternate key {key_logical_name} on {entity} failed to build "
                                        "(duplicate values?); fix the data and reactivate it (ReactivateEntityKey)")
            if time.monotonic() > deadline:
                raise DataverseApiError(f"alternate key {key_logical_name} on {entity} is still {status} after "
                                        f"{self.settings['key_wait_seconds']:.0f}s")
            time.sleep(poll)
            poll = min(10.0, poll * 2)

    def insert_option(self, entity: str, attribute: str, label: str, value: int | None = None) -> int:
        body: dict[str, Any] = {"EntityLogicalName": entity, "AttributeLogicalName": attribute, "Label": _label(label)}
        if value is not None:
            body["Value"] = value
        if self.settings["solution"]:
            body["SolutionUniqueName"] = self.settings["solution"]
        return int(self.send("POST", "InsertOptionValue", json=body).json()["NewOptionValue"])

    def publish(self, entities: Sequence[str]) -> None:
        """PublishXml for these tables: new columns, choices and keys reach forms and views."""
        if not entities:
            return
        xml = "<importexportxml><entities>" + "".join(f"<entity>{e}</entity>" for e in sorted(set(entities))) + \
              "</entities></importexportxml>"
        self.send("POST", "PublishXml", json={"ParameterXml": xml})

    def publisher(self, prefix: str) -> dict[str, Any] | None:
        rows = self.get_json("publishers", params={
            "$select": "publisherid,friendlyname,customizationprefix,customizationoptionvalueprefix",
            "$filter": f"customizationprefix eq {_quote_literal(prefix)}"}).get("value") or []
        return rows[0] if rows else None

    def max_upload_bytes(self) -> int:
        """``Organization.MaxUploadFileSize``: the largest note file, measured on its base64 text."""
        rows = self.get_json("organizations", params={"$select": "maxuploadfilesize"}).get("value") or []
        return int(rows[0]["maxuploadfilesize"]) if rows else 5 * 1024 * 1024

    def users(self) -> list[dict[str, Any]]:
        return list(self.iter_rows("systemusers", select=["systemuserid", "fullname", "internalemailaddress",
                                                          "isdisabled", "accessmode"]))

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        rows = list(self.iter_rows("systemusers", select=["systemuserid", "fullname", "internalemailaddress",
                                                          "isdisabled"],
                                   filter=f"internalemailaddress eq {_quote_literal(email)}", top=1))
        return rows[0] if rows else None

    # ---- Airflow test-connection protocol ------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        try:
            who = self.get_json("WhoAmI")
        except Exception as exc:  # noqa: BLE001 - the protocol wants a message, not an exception
            return False, f"Could not use Dataverse: {exc}"
        return True, f"Connected to {self.settings['base_url']} as application user {who.get('UserId')}"


def _label_text(value: Any) -> str:
    if isinstance(value, dict):
        for item in value.get("LocalizedLabels") or ():
            if item.get("Label"):
                return str(item["Label"])
        return str((value.get("UserLocalizedLabel") or {}).get("Label") or "")
    return ""


def table_definition_path(logical_name: str) -> str:
    """A table's definition with what a client writing it needs: columns, keys and lookups."""
    return f"EntityDefinitions(LogicalName='{logical_name}')?$expand=Attributes,Keys,ManyToOneRelationships"


def choice_paths(logical_name: str) -> list[str]:
    """The reads that list a table's choice columns with their options (single, then multi-select)."""
    return [f"EntityDefinitions(LogicalName='{logical_name}')/Attributes/Microsoft.Dynamics.CRM.{cast}"
            "?$select=LogicalName&$expand=OptionSet"
            for cast in ("PicklistAttributeMetadata", "MultiSelectPicklistAttributeMetadata")]


def choice_options_from(bodies: Sequence[Any]) -> dict[str, dict[int, str]]:
    """attribute → {option value: label} from the answers to :func:`choice_paths`."""
    out: dict[str, dict[int, str]] = {}
    for body in bodies:
        for row in (body or {}).get("value") or []:
            options = (row.get("OptionSet") or {}).get("Options") or []
            out[row["LogicalName"]] = {int(o["Value"]): _label_text(o.get("Label")) for o in options}
    return out


def parse_batch_response(content_type: str, body: bytes) -> list[BatchResult]:
    """Top-level parts of a ``$batch`` answer in order; a change set's first response stands for it."""
    match = _BOUNDARY.search(content_type)
    if not match:
        raise DataverseApiError(f"$batch answer without a multipart boundary: {content_type!r}")
    results = []
    for headers, payload in _split_multipart(body.decode("utf-8"), match.group(1)):
        inner = _BOUNDARY.search(headers.get("content-type", ""))
        if inner:
            nested = [_http_response(p) for h, p in _split_multipart(payload, inner.group(1))]
            failed = next((r for r in nested if not r.ok), None)
            results.append(failed or nested[0])
        else:
            results.append(_http_response(payload))
    return results


def _split_multipart(text: str, boundary: str) -> list[tuple[dict[str, str], str]]:
    text = text.replace("\r\n", "\n")
    parts = []
    for chunk in text.split(f"--{boundary}")[1:]:
        if chunk.startswith("--"):
            break
        head, _, payload = chunk.lstrip("\n").partition("\n\n")
        headers = {}
        for line in head.split("\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts


def _http_response(payload: str) -> BatchResult:
    head, _, body = payload.lstrip("\n").partition("\n\n")
    lines = head.split("\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise DataverseApiError(f"malformed response line in a $batch answer: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    text = body.strip()
    parsed: Any = None
    if text:
        try:
            parsed = jsonlib.loads(text)
        except ValueError:
            parsed = text
    return BatchResult(status, headers, parsed)
