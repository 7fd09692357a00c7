"""Read-only access to Ascora's REST API (``https://api.ascora.com.au``, ``Auth: <key>`` header).

Why the hook is this narrow: the extractor's whole promise to a trade business is that migrating
out of Ascora changes nothing inside Ascora. The dangerous endpoints are the accounting "mark as
sent" calls: one stray call silently drops invoices or payments from the customer's Xero/MYOB/QBO
sync. So the hook can only GET, exposes no generic POST, and its single request function refuses any
Mark* path before a byte is sent (:class:`ForbiddenAscoraCall`), even if someone builds the path by
hand.

Other choices that follow from the reference (``ascora-api.md``):

* Ascora reports business errors as HTTP 200 with ``success:false``; they become
  :class:`AscoraApiError` carrying Ascora's own message, so "No Matching Job Found (J999)" reaches
  the log verbatim.
* Retry, backoff (``Retry-After: 0`` still waits), pacing and the request budget come from
  :class:`~airflow_ascora_provider.hooks.http_client.ApiClient`, shared with every CRM hook.
* The ``ext_`` methods read sandbox-only extension endpoints. The real API has nothing for
  equipment, users, notes, attachments, enquiries, form answers or invoice history; for a real
  tenant those come from Ascora's Excel exports, so the methods refuse unless extensions are
  switched on explicitly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self
from urllib.parse import quote, unquote

try:  # Airflow 3
    from airflow.sdk.bases.hook import BaseHook
except ImportError:  # pragma: no cover - Airflow 2.x fallback
    from airflow.hooks.base import BaseHook

from airflow_ascora_provider.hooks.http_client import ApiClient, ApiError, Pacer, RetryPolicy

DEFAULT_BASE_URL = "https://api.ascora.com.au"
DEFAULT_PAGE_SIZE = 250
MAX_PAGE_SIZE = 1000

# Paths, named once so the API reader can cite them in record origins.
CUSTOMERS = "/Customers/Customers"
CONTACTS = "/Customers/Contacts"
JOBS = "/Jobs/Jobs"
QUOTES = "/Quotes/Quotes"
SUPPLIERS = "/Suppliers/Suppliers"
SUPPLIER_INVOICES = "/SupplierInvoices/SupplierInvoices"
SUPPLIES = "/Inventory/Supplies"
KITS = "/Inventory/Kits"
CATEGORIES = "/Inventory/Categories"
INVOICES_TO_SEND = "/Accounting/GetInvoicesToSend"
EXT_EQUIPMENT = "/Equipment/Equipment"
EXT_USERS = "/Users/Users"
EXT_JOB_TYPES = "/JobTypes/JobTypes"
EXT_NOTES = "/Notes/Notes"
EXT_ATTACHMENTS = "/Attachments"
EXT_ENQUIRIES = "/Enquiries/Enquiries"
EXT_FORM_RESPONSES = "/Forms/FormResponses"
EXT_INVOICES = "/Invoices/Invoices"

# The guard. This is the only place the accounting mark endpoints are named in this module; a test
# scans the source to keep it that way. Matched case-insensitively against the percent-decoded path.
_FORBIDDEN_PATH = re.compile(r"MarkInvoicesAsSent|MarkPaymentsAsSent|MarkInvoice|MarkPayment", re.IGNORECASE)

_EXCEL_HINT = (
    "The real Ascora API has no endpoint for this; for a real tenant take it from Ascora's Excel "
    "export (e.g. Customers → Options → Export All Customers for equipment, Jobs/Quotes → "
    "Import/Export) and use the Excel export reader. Extensions exist only in the sandbox emulator: "
    "set enable_extensions=true on the connection (or pass enable_extensions=True) only when "
    "talking to it."
)


class AscoraApiError(ApiError):
    """Ascora refused or failed a request; ``ascora_message`` is Ascora's own wording when it gave one."""

    def __init__(self, message: str, *, ascora_message: str | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.ascora_message = ascora_message


class ForbiddenAscoraCall(PermissionError):
    """A call that would change state in Ascora (or a non-GET) was attempted; nothing was sent."""


class AscoraExtensionDisabled(RuntimeError):
    """An ``ext_`` (sandbox-only) read was attempted with extensions off."""


def _as_int(value: Any, default: int | None) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return int(value)


def _as_float(value: Any, default: float | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return float(value)


def _as_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _date_param(value: dt.date | dt.datetime | str | None) -> str | None:
    """Ascora accepts ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:mm:ss``; aware datetimes are sent as UTC."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    return value.isoformat()


class AscoraHook(BaseHook):
    """Typed, read-only, paged access to one Ascora tenant.

    Connection: ``host`` is the API base URL (empty means ``https://api.ascora.com.au``), ``password``
    the API key from Administration → API Settings. Extras: ``page_size`` (250), ``timeout`` (30 s),
    ``requests_per_minute`` (pace under a known limit), ``request_budget`` (stop before a quota is
    burnt), ``max_attempts``, ``enable_extensions`` (false: the real API has no such endpoints).

    Passing ``base_url``/``api_key`` skips the connection lookup (tests, the demo, scripts).
    ``retry`` and ``transport`` are for tests that need fast backoff or an in-process transport.
    """

    conn_name_attr = "ascora_conn_id"
    default_conn_name = "ascora_default"
    conn_type = "ascora"
    hook_name = "Ascora"

    def __init__(
        self,
        ascora_conn_id: str = default_conn_name,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        enable_extensions: bool | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
        requests_per_minute: float | None = None,
        request_budget: int | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
        transport: Any = None,
    ):
        super().__init__()
        self.ascora_conn_id = ascora_conn_id
        self._explicit = base_url is not None or api_key is not None
        self._overrides = {
            "base_url": base_url,
            "api_key": api_key,
            "enable_extensions": enable_extensions,
            "page_size": page_size,
            "timeout": timeout,
            "requests_per_minute": requests_per_minute,
            "request_budget": request_budget,
            "max_attempts": max_attempts,
        }
        self._retry = retry
        self._transport = transport
        self._settings: dict[str, Any] | None = None
        self._client: ApiClient | None = None
        self._pages: ThreadPoolExecutor | None = None  # the next page's read (see _paged)

    # -- configuration ------------------------------------------------------------------------------

    def _resolve(self) -> dict[str, Any]:
        if self._settings is not None:
            return self._settings
        o = self._overrides
        extra: dict[str, Any] = {}
        host, password = None, None
        if not self._explicit:
            conn = self.get_connection(self.ascora_conn_id)
            host, password, extra = conn.host, conn.password, conn.extra_dejson or {}
        base_url = (o["base_url"] or host or DEFAULT_BASE_URL).strip()
        if "://" not in base_url:
            base_url = "https://" + base_url
        api_key = o["api_key"] if o["api_key"] is not None else password
        if not api_key:
            raise ValueError(
                f"No Ascora API key: set the password of connection {self.ascora_conn_id!r} "
                "(or pass api_key=) "
                "to the key from Administration → API Settings."
            )
        page_size = _as_int(
            o["page_size"] if o["page_size"] is not None else extra.get("page_size"), DEFAULT_PAGE_SIZE
        )
        self._settings = {
            "base_url": base_url.rstrip("/"),
            "api_key": api_key,
            "page_size": max(1, min(MAX_PAGE_SIZE, page_size)),
            "timeout": _as_float(o["timeout"] if o["timeout"] is not None else extra.get("timeout"), 30.0),
            "requests_per_minute": _as_float(
                o["requests_per_minute"]
                if o["requests_per_minute"] is not None
                else extra.get("requests_per_minute"),
                None,
            ),
            "request_budget": _as_int(
                o["request_budget"] if o["request_budget"] is not None else extra.get("request_budget"), None
            ),
            "max_attempts": _as_int(
                o["max_attempts"] if o["max_attempts"] is not None else extra.get("max_attempts"), None
            ),
            "enable_extensions": _as_bool(
                o["enable_extensions"]
                if o["enable_extensions"] is not None
                else extra.get("enable_extensions"),
                False,
            ),
        }
        return self._settings

    @property
    def base_url(self) -> str:
        return self._resolve()["base_url"]

    @property
    def page_size(self) -> int:
        return self._resolve()["page_size"]

    @property
    def enable_extensions(self) -> bool:
        return self._resolve()["enable_extensions"]

    def get_conn(self) -> ApiClient:
        if self._client is None:
            s = self._resolve()
            retry = self._retry or RetryPolicy()
            if s["max_attempts"]:
                retry = dataclasses.replace(retry, max_attempts=s["max_attempts"])
            self._client = ApiClient(
                s["base_url"],
                # A raw key in a header literally named Auth; Ascora has no Bearer scheme.
                headers={"Auth": s["api_key"], "Accept": "application/json"},
                timeout=s["timeout"],
                retry=retry,
                pacer=Pacer(s["requests_per_minute"], 60.0) if s["requests_per_minute"] else None,
                budget=s["request_budget"],
                transport=self._transport,
                name="ascora",
            )
        return self._client

    @property
    def stats(self):
        return self.get_conn().stats

    def close(self) -> None:
        if self._pages is not None:
            self._pages.shutdown(wait=True)  # a page read still out finishes before its client closes
            self._pages = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the one way out ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, params: dict[str, Any] | None = None):
        """Every HTTP call of this hook goes through here, so the read-only rule is enforced once."""
        decoded = path
        for _ in range(5):  # undo nested percent-encoding so an encoded name cannot slip past
            step = unquote(decoded)
            if step == decoded:
                break
            decoded = step
        if _FORBIDDEN_PATH.search(decoded):
            raise ForbiddenAscoraCall(
                f"Refusing {method} {path}: it would mark invoices/payments as sent to accounting in Ascora, "
                "which breaks the customer's accounting sync. This provider only reads."
            )
        if method.upper() != "GET":
            raise ForbiddenAscoraCall(f"Refusing {method} {path}: the Ascora hook is read-only (GET only).")
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self.get_conn().request("GET", path, params=clean)

    def _checked(self, response, path: str):
        status = response.status_code
        if status == 401 or status in (301, 302, 303, 307, 308):
            # Ascora is reported to redirect to a login page instead of a 401 on some bad keys.
            raise AscoraApiError(
                f"Ascora rejected the API key (HTTP {status}) on GET {path}: check the API key "
                "(Administration → API Settings). Ascora allows one active key; generating a new one "
                "revokes the old.",
                status=status,
                body=_body(response),
                url=path,
                ascora_message=_message(response),
            )
        if status >= 400:
            text = _message(response) or response.text[:300]
            raise AscoraApiError(
                f"Ascora answered HTTP {status} on GET {path}: {text}",
                status=status,
                body=_body(response),
                url=path,
                ascora_message=_message(response),
            )
        return response

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self._checked(self._request("GET", path, params), path)
        try:
            body = response.json()
        except ValueError:
            raise AscoraApiError(
                f"Ascora answered GET {path} with non-JSON: {response.text[:300]}",
                status=response.status_code,
                body=response.text,
                url=path,
            ) from None
        if isinstance(body, dict) and body.get("success") is False:
            message = body.get("message") or "success:false with no message"
            raise AscoraApiError(
                f"Ascora: {message} (GET {path})",
                status=response.status_code,
                body=body,
                url=path,
                ascora_message=body.get("message"),
            )
        return body

    def _paged(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Walk Page=1..totalPages, stopping early on an empty page.

        Offset paging over live data can skip or repeat a record that moves during the walk; Ascora
        offers nothing better (no cursor, no modified filter), so callers dedupe by id downstream.
        When the answer says more pages follow, the next one is asked for before this one's records
        are handed on: its wait (the service's time, a back-off) overlaps staging them.
        """
        size = self.page_size
        page = 1
        ahead: Future | None = None
        while True:
            query = {**(params or {}), "Page": page, "PageSize": size}
            body = ahead.result() if ahead is not None else self._get(path, query)
            ahead = None
            if isinstance(body, dict):
                results = body.get("results") or []
            else:  # a bare array: nothing to page
                results, body = body or [], {"totalPages": 1}
            if not results:
                return
            total_pages = body.get("totalPages")
            if isinstance(total_pages, int) and page < total_pages:
                ahead = self._read_ahead().submit(self._get, path, {**query, "Page": page + 1})
            yield from results
            if isinstance(total_pages, int):
                if page >= total_pages:
                    return
            elif len(results) < size:  # no totalPages: a short page is the last one
                return
            page += 1

    def _read_ahead(self) -> ThreadPoolExecutor:
        if self._pages is None:
            self._pages = ThreadPoolExecutor(1, thread_name_prefix="ascora-page")
        return self._pages

    def _single(self, path: str, entity: str) -> dict[str, Any]:
        body = self._get(path)
        if not isinstance(body, dict) or entity not in body:
            raise AscoraApiError(f"Ascora answered GET {path} without {entity!r}", body=body, url=path)
        return body[entity]

    def _bare(self, path: str) -> list[dict[str, Any]]:
        body = self._get(path)
        if isinstance(body, dict):  # tolerate an envelope in case the real API grows one
            return list(body.get("results") or [])
        return list(body or [])

    # -- real API reads -----------------------------------------------------------------------------

    def iter_customers(self, site_billing_type: str = "All") -> Iterator[dict[str, Any]]:
        """Billing customers and sites (``Site`` / ``Billing`` / ``All``); a site has ``billingCustomer``."""
        return self._paged(CUSTOMERS, {"SiteBillingType": site_billing_type})

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        return self._single(f"/Customers/Customer/{quote(str(customer_id), safe='')}", "customer")

    def iter_contacts(self) -> Iterator[dict[str, Any]]:
        return self._paged(CONTACTS)

    def contacts_for_customer(self, customer_id: str) -> list[dict[str, Any]]:
        return list(self._paged(f"/Customers/GetContactsForCustomer/{quote(str(customer_id), safe='')}"))

    def get_contact(self, contact_id: str) -> dict[str, Any]:
        return self._single(f"/Customers/Contact/{quote(str(contact_id), safe='')}", "contact")

    def iter_jobs(
        self,
        status: str = "ALL",
        include_child_jobs: bool = True,
        start_date: dt.date | dt.datetime | str | None = None,
        end_date: dt.date | dt.datetime | str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Jobs, by default every status and the child (section/stage) jobs too.

        ``start_date``/``end_date`` filter on the *creation* date: Ascora has no modified filter, so a
        date window finds new jobs, never edited ones.
        """
        return self._paged(
            JOBS,
            {
                "JobStatus": status,
                "IncludeChildJobs": "true" if include_child_jobs else "false",
                "StartDate": _date_param(start_date),
                "EndDate": _date_param(end_date),
            },
        )

    def get_job(self, job_number: str) -> dict[str, Any]:
        """By job *number* (``J1042``), not GUID: that is what the endpoint takes."""
        return self._single(f"/Jobs/Job/{quote(str(job_number), safe='')}", "job")

    def iter_quotes(self, status: str = "ALL") -> Iterator[dict[str, Any]]:
        return self._paged(QUOTES, {"QuoteStatus": status})

    def get_quote(self, number: str) -> dict[str, Any]:
        """``Q1234`` or a section ``Q1234.01``, sent as ``Q1234-01`` (a dot in the path does not work)."""
        return self._single(f"/Quotes/Quote/{quote(str(number).replace('.', '-'), safe='')}", "quotation")

    def iter_suppliers(self) -> Iterator[dict[str, Any]]:
        return self._paged(SUPPLIERS)

    def get_supplier(self, supplier_id: str) -> dict[str, Any]:
        return self._single(f"/Suppliers/Supplier/{quote(str(supplier_id), safe='')}", "supplier")

    def iter_supplier_invoices(
        self,
        start: dt.date | dt.datetime | str | None = None,
        end: dt.date | dt.datetime | str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Supplier bills with their lines; the window is on the *invoice* date."""
        return self._paged(
            SUPPLIER_INVOICES, {"InvoiceDateStart": _date_param(start), "InvoiceDateEnd": _date_param(end)}
        )

    def get_supplier_invoice(self, supplier_invoice_id: str) -> dict[str, Any]:
        return self._single(
            f"/SupplierInvoices/SupplierInvoice/{quote(str(supplier_invoice_id), safe='')}", "supplierInvoice"
        )

    def iter_supplies(self) -> Iterator[dict[str, Any]]:
        return self._paged(SUPPLIES)

    def iter_kits(self) -> Iterator[dict[str, Any]]:
        return self._paged(KITS)

    def iter_categories(self) -> Iterator[dict[str, Any]]:
        return self._paged(CATEGORIES)

    def labour_roles(self) -> list[dict[str, Any]]:
        return self._bare("/Quotes/LabourRoles")

    def standard_sections(self) -> list[dict[str, Any]]:
        return self._bare("/Quotes/StandardSections")

    def standard_stages(self) -> list[dict[str, Any]]:
        return self._bare("/Quotes/StandardStages")

    def invoices_to_send(self, prior_to: dt.date | dt.datetime | str) -> list[dict[str, Any]]:
        """Invoices dated before ``prior_to`` that Ascora has *not yet* sent to accounting.

        A read-only view, and not invoice history: for a tenant with a Xero/MYOB/QBO link nearly
        every invoice is already sent and will not appear. It is never followed by a mark call.
        """
        body = self._get(
            INVOICES_TO_SEND,
            {
                "priorToDate": _date_param(prior_to),
                "includeCustomerCustomFields": "true",
                "includeInvoiceCustomFields": "true",
                "includeJobCustomFields": "true",
            },
        )
        if isinstance(body, dict):
            return list(body.get("results") or [])
        return list(body or [])

    def test_connection(self) -> tuple[bool, str]:
        try:
            body = self._get(CUSTOMERS, {"Page": 1, "PageSize": 1})
        except Exception as exc:  # noqa: BLE001 - the UI shows the message; any failure is a failed test
            return False, str(exc)
        total = body.get("totalRecords") if isinstance(body, dict) else None
        return (
            True,
            f"Connected to Ascora at {self.base_url} ({total if total is not None else '?'} customers).",
        )

    # -- sandbox-only extension reads ----------------------------------------------------------------

    def _require_extensions(self, what: str) -> None:
        if not self.enable_extensions:
            raise AscoraExtensionDisabled(f"{what}: extensions are disabled. {_EXCEL_HINT}")

    def ext_iter_equipment(self) -> Iterator[dict[str, Any]]:
        self._require_extensions("equipment")
        return self._paged(EXT_EQUIPMENT)

    def ext_iter_users(self) -> Iterator[dict[str, Any]]:
        self._require_extensions("users")
        return self._paged(EXT_USERS)

    def ext_iter_job_types(self) -> Iterator[dict[str, Any]]:
        self._require_extensions("job types")
        return self._paged(EXT_JOB_TYPES)

    def ext_iter_notes(
        self, entity_type: str | None = None, entity_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        self._require_extensions("notes")
        return self._paged(EXT_NOTES, {"EntityType": entity_type, "EntityId": entity_id})

    def ext_iter_attachments(
        self, entity_type: str | None = None, entity_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Attachment metadata: all of it, or one entity's given ``entity_type`` and ``entity_id``."""
        self._require_extensions("attachments")
        if entity_type and entity_id:
            return self._paged(
                f"{EXT_ATTACHMENTS}/{quote(entity_type, safe='')}/{quote(str(entity_id), safe='')}"
            )
        return self._paged(EXT_ATTACHMENTS)

    def ext_download_attachment(self, attachment_id: str) -> bytes:
        self._require_extensions("attachment download")
        path = f"{EXT_ATTACHMENTS}/Download/{quote(str(attachment_id), safe='')}"
        return self._checked(self._request("GET", path), path).content

    def ext_iter_enquiries(self) -> Iterator[dict[str, Any]]:
        self._require_extensions("enquiries")
        return self._paged(EXT_ENQUIRIES)

    def ext_iter_form_responses(self) -> Iterator[dict[str, Any]]:
        self._require_extensions("form responses")
        return self._paged(EXT_FORM_RESPONSES)

    def ext_iter_invoices(self) -> Iterator[dict[str, Any]]:
        """Full invoice history (sent or not); the real API has only the unsent view."""
        self._require_extensions("invoice history")
        return self._paged(EXT_INVOICES)

    # -- Airflow UI ---------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"host": "API base URL", "password": "API key (Auth header)"},
            "placeholders": {
                "host": DEFAULT_BASE_URL,
                "password": "Administration → API Settings → Generate New API Key",
                "extra": '{"page_size": 250, "timeout": 30, "requests_per_minute": null, '
                '"request_budget": null, "enable_extensions": false}',
            },
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields for the legacy FAB connection form; Airflow 3 may lack these libraries."""
        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import BooleanField, IntegerField
            from wtforms.validators import NumberRange, Optional
        except ImportError:
            return {}
        return {
            "page_size": IntegerField(
                lazy_gettext("Page size"),
                validators=[Optional(), NumberRange(1, MAX_PAGE_SIZE)],
                widget=BS3TextFieldWidget(),
                default=DEFAULT_PAGE_SIZE,
            ),
            "timeout": IntegerField(
                lazy_gettext("Timeout (seconds)"),
                validators=[Optional(), NumberRange(1)],
                widget=BS3TextFieldWidget(),
                default=30,
            ),
            "requests_per_minute": IntegerField(
                lazy_gettext("Requests per minute (pacing)"),
                validators=[Optional(), NumberRange(1)],
                widget=BS3TextFieldWidget(),
            ),
            "request_budget": IntegerField(
                lazy_gettext("Request budget per run"),
                validators=[Optional(), NumberRange(1)],
                widget=BS3TextFieldWidget(),
            ),
            "max_attempts": IntegerField(
                lazy_gettext("Max attempts per request"),
                validators=[Optional(), NumberRange(1)],
                widget=BS3TextFieldWidget(),
            ),
            "enable_extensions": BooleanField(
                lazy_gettext("Enable sandbox extension endpoints (not in the real Ascora API)"), default=False
            ),
        }


def _body(response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _message(response) -> str | None:
    body = _body(response)
    if isinstance(body, dict):
        message = body.get("message") or body.get("Message")
        return str(message) if message else None
    return None
