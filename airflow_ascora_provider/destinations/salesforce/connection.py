"""The Salesforce client of the plugin: Airflow's ``SalesforceHook`` (simple-salesforce underneath),
a ``requests`` session with transport retries, and a guard on the org's daily API quota.

No second Salesforce client is written here. The hook is built from the ``salesforce`` connection
users already have; this module only adds what a migration needs around it:

* **Settings** the ``salesforce`` connection form does not show, read from the connection's extras
  (or the operators' ``destination_options``): ``access_token`` (a session id for direct-session
  auth with ``instance_url``), ``ca_bundle``, ``bulk_threshold``, ``batch_size``,
  ``api_reserve_percent``/``api_reserve_calls``, ``quota_pause_minutes``, ``permission_set``,
  ``set_audit_fields``, ``max_retries``, ``timeout`` and ``bulk_poll_seconds`` (see
  docs/destinations/salesforce.md).
* **Retries and timeout**: simple-salesforce retries nothing and sets no timeout, so the session's
  adapter sends every request under the provider's ``RetryPolicy`` (``hooks/http_client.py``), the
  policy every ``ApiClient`` hook uses: 429 and 5xx wait ``Retry-After`` (else the back-off),
  connection errors, timeouts and replies cut off mid-body (each reply is read in full inside the
  adapter) wait the back-off, all through the policy's ``sleep``; ``max_retries`` retries at most, and
  calls, retries, throttles and errors are counted in a ``CallStats`` (``api_stats``). urllib3 retries
  nothing itself. A request without a timeout gets ``timeout`` (30 s; connect at most 10 s), so a
  stalled answer costs one timeout and a retry, never a hung task. Sending a write twice cannot
  duplicate a record: ``Ascora_Id__c`` is unique, so a repeated insert is refused and the plugin
  upserts instead, and upserts, deletes and restores are idempotent. A certificate that fails
  verification is not retried.
* **Quota**: every response's ``Sforce-Limit-Info: api-usage=used/max`` is read by a session hook;
  :meth:`QuotaGuard.require` raises ``QuotaExhausted`` *before* a call that would eat into the
  reserve, so a load stops cleanly and resumes later instead of failing half-way.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from airflow_ascora_provider.destinations.spec import QuotaExhausted
from airflow_ascora_provider.hooks.http_client import CallStats, RetryPolicy
from airflow_ascora_provider.hooks.requests_retry import mount_policy

log = logging.getLogger(__name__)

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
DEFAULT_CONN_ID = "salesforce_default"


@dataclass(frozen=True)
class Settings:
    access_token: str | None = None
    ca_bundle: str | None = None
    bulk_threshold: int | None = 2000
    batch_size: int = 200
    api_reserve_percent: float = 10.0
    api_reserve_calls: int | None = None
    quota_pause_minutes: float = 60.0
    permission_set: str = "Ascora_Migration"
    set_audit_fields: str = "auto"  # auto | true | false
    max_retries: int = 5
    timeout: float = 30.0
    bulk_poll_seconds: float = 10.0
    describe_objects: tuple[str, ...] = ()

    @classmethod
    def from_sources(cls, extras: dict[str, Any], options: dict[str, Any]) -> Settings:
        """Destination options win over connection extras; empty values mean "use the default"."""

        def pick(name: str, *aliases: str) -> Any:
            for source in (options, extras):
                for key in (name, *aliases):
                    value = source.get(key)
                    if value not in (None, ""):
                        return value
            return None

        def number(name: str, cast, default):
            value = pick(name)
            try:
                return cast(value) if value is not None else default
            except (TypeError, ValueError):
                raise ValueError(f"salesforce connection: {name} must be a number, got {value!r}") from None

        threshold = pick("bulk_threshold")
        audit = str(pick("set_audit_fields") or "auto").lower()
        if audit not in ("auto", "true", "false"):
            raise ValueError(f"salesforce connection: set_audit_fields must be auto, true or false, got {audit!r}")
        timeout = number("timeout", float, 30.0)
        if timeout <= 0:
            raise ValueError(f"salesforce connection: timeout must be seconds above 0, got {timeout!r}")
        objects = pick("describe_objects") or ()
        if isinstance(objects, str):
            objects = tuple(o.strip() for o in objects.split(",") if o.strip())
        return cls(
            access_token=pick("access_token", "session_id"),
            ca_bundle=pick("ca_bundle"),
            bulk_threshold=None if str(threshold).lower() in ("0", "false", "off") else
            number("bulk_threshold", int, 2000),
            batch_size=max(1, min(200, number("batch_size", int, 200))),
            api_reserve_percent=number("api_reserve_percent", float, 10.0),
            api_reserve_calls=number("api_reserve_calls", int, None),
            quota_pause_minutes=number("quota_pause_minutes", float, 60.0),
            permission_set=str(pick("permission_set") or "Ascora_Migration"),
            set_audit_fields=audit,
            max_retries=max(0, number("max_retries", int, 5)),
            timeout=timeout,
            bulk_poll_seconds=number("bulk_poll_seconds", float, 10.0),
            describe_objects=tuple(objects),
        )


class QuotaGuard:
    """The org's daily API usage as the last response reported it, and the reserve to keep."""

    def __init__(self, reserve_percent: float, reserve_calls: int | None, pause_minutes: float):
        self.reserve_percent = reserve_percent
        self.reserve_calls = reserve_calls
        self.pause = dt.timedelta(minutes=pause_minutes)
        self.used: int | None = None
        self.max: int | None = None
        self._lock = threading.Lock()

    def observe(self, response, *args, **kwargs):
        """requests response hook: read ``Sforce-Limit-Info`` from every answer."""
        header = response.headers.get("Sforce-Limit-Info")
        match = _USAGE.search(header or "")
        if match:
            with self._lock:
                self.used, self.max = int(match.group(1)), int(match.group(2))
        return response

    @property
    def known(self) -> bool:
        return self.used is not None

    @property
    def reserve(self) -> int:
        if self.reserve_calls is not None:
            return self.reserve_calls
        return int((self.max or 0) * self.reserve_percent / 100)

    def resume_at(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.pause

    def require(self, calls: int, what: str) -> None:
        """Raise ``QuotaExhausted`` when ``calls`` more requests would reach into the reserve."""
        with self._lock:
            if self.used is None or self.max is None:
                return
            left = self.max - self.used
            if left - calls < self.reserve:
                raise QuotaExhausted(
                    f"Salesforce daily API requests: {self.used:,} of {self.max:,} used; {what} needs {calls} more "
                    f"and {self.reserve:,} are kept in reserve (api_reserve_percent / api_reserve_calls). The load "
                    f"pauses and resumes where it stopped", resume_at=self.resume_at())


def build_session(settings: Settings, guard: QuotaGuard, retry: RetryPolicy | None = None,
                  stats: CallStats | None = None):
    """A ``requests.Session`` for SalesforceHook: retries and timeout by ``RetryPolicy``, optional pinned CA,
    quota hook."""
    import requests

    retry = retry or RetryPolicy(max_attempts=settings.max_retries + 1)
    stats = stats if stats is not None else CallStats()
    session = requests.Session()
    mount_policy(session, retry, settings.timeout, stats, "salesforce")
    if settings.ca_bundle:
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override Session.verify, so a pinned CA
        # (the sandbox's self-signed certificate, a corporate TLS proxy) needs trust_env off.
        session.verify = settings.ca_bundle
        session.trust_env = False
    session.hooks["response"].append(guard.observe)
    return session


class SalesforceConnection:
    """``SalesforceHook`` + session + settings for one plugin instance."""

    def __init__(self, conn_id: str | None, options: dict[str, Any]):
        from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

        self.conn_id = conn_id or DEFAULT_CONN_ID
        extras = SalesforceHook.get_connection(self.conn_id).extra_dejson
        self.settings = Settings.from_sources(extras, options)
        self.guard = QuotaGuard(self.settings.api_reserve_percent, self.settings.api_reserve_calls,
                                self.settings.quota_pause_minutes)
        self.retry = RetryPolicy(max_attempts=self.settings.max_retries + 1)
        self.stats = CallStats()
        self.session = build_session(self.settings, self.guard, self.retry, self.stats)
        self.hook = SalesforceHook(salesforce_conn_id=self.conn_id, session_id=self.settings.access_token,
                                   session=self.session)

    @property
    def calls(self) -> int:
        """Requests sent, every retry included (as ``ApiClient`` counts them)."""
        return self.stats.calls

    @property
    def sf(self):
        """The ``simple_salesforce.Salesforce`` the hook built (cached by the hook)."""
        return self.hook.get_conn()

    def spend(self, calls: int, what: str) -> None:
        """Check the quota before ``calls`` requests; learn the usage first when no answer carried it yet."""
        if not self.guard.known:
            self.sf.limits()
        self.guard.require(calls, what)

    def close(self) -> None:
        self.session.close()
