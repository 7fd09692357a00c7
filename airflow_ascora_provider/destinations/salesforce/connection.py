"""The Salesforce client of the plugin: Airflow's ``SalesforceHook`` (simple-salesforce underneath),
a ``requests`` session with transport retries, and a guard on the org's daily API quota.

No second Salesforce client is written here. The hook is built from the ``salesforce`` connection
users already have; this module only adds what a migration needs around it:

* **Settings** the ``salesforce`` connection form does not show, read from the connection's extras
  (or the operators' ``destination_options``): ``access_token`` (a session id for direct-session
  auth with ``instance_url``), ``ca_bundle``, ``bulk_threshold``, ``batch_size``,
  ``api_reserve_percent``/``api_reserve_calls``, ``quota_pause_minutes``, ``permission_set``,
  ``set_audit_fields``, ``max_retries`` and ``bulk_poll_seconds`` (see docs/destinations/salesforce.md).
* **Retries**: simple-salesforce retries nothing, so the session mounts urllib3's ``Retry`` for
  connection errors, 429 and 5xx (honouring ``Retry-After``), and reads every reply in full inside the
  adapter, so a reply cut off after its headers is retried too (urllib3 alone gives up there). Sending
  a write twice cannot duplicate a record: ``Ascora_Id__c`` is unique, so a repeated insert is refused
  and the plugin upserts instead, and upserts, deletes and restores are idempotent.
* **Quota**: every response's ``Sforce-Limit-Info: api-usage=used/max`` is read by a session hook;
  :meth:`QuotaGuard.require` raises ``QuotaExhausted`` *before* a call that would eat into the
  reserve, so a load stops cleanly and resumes later instead of failing half-way.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from airflow_ascora_provider.destinations.spec import QuotaExhausted

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
            max_retries=number("max_retries", int, 5),
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


def _whole_reply_adapter(retry):
    from requests.adapters import HTTPAdapter
    from requests.exceptions import ChunkedEncodingError, ConnectionError

    class WholeReplyAdapter(HTTPAdapter):
        """Reads each reply while a retry is still possible: a connection lost mid-reply is retried."""

        def send(self, request, **kwargs):
            attempt = 0
            while True:
                response = super().send(request, **kwargs)
                try:
                    response.content  # noqa: B018 - read the whole body now
                    return response
                except (ChunkedEncodingError, ConnectionError):
                    attempt += 1
                    if attempt > retry.total:
                        raise
                    log.warning("Salesforce reply to %s %s was cut off; sending it again (%d/%d)",
                                request.method, request.path_url, attempt, retry.total)
                    time.sleep(min(retry.backoff_max, retry.backoff_factor * 2 ** (attempt - 1)))

    return WholeReplyAdapter(max_retries=retry)


def build_session(settings: Settings, guard: QuotaGuard):
    """A ``requests.Session`` for SalesforceHook: transport retries, optional pinned CA, quota hook."""
    import requests
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=settings.max_retries, connect=settings.max_retries, read=settings.max_retries,
                  status=settings.max_retries, backoff_factor=0.5, backoff_max=60,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                  respect_retry_after_header=True, raise_on_status=False)
    session.mount("https://", _whole_reply_adapter(retry))
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
        self.session = build_session(self.settings, self.guard)
        self.hook = SalesforceHook(salesforce_conn_id=self.conn_id, session_id=self.settings.access_token,
                                   session=self.session)
        self.calls = 0
        self.session.hooks["response"].append(self._count)

    def _count(self, response, *args, **kwargs):
        self.calls += 1
        return response

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
