"""An Ascora emulator that serves a generated tenant over the same HTTP contract as api.ascora.com.au.

Why an emulator at all: nobody on the project has an Ascora tenant, and a migration tool that has only
ever met mocks fails on the first real paging edge, the first ``success:false`` answer or the first
429. So the emulator mirrors the *observed* API (``/work/shared/reference/ascora-api.md`` §1, §6)
as closely as public material allows, and everything that is not observed is flagged **ext** here and
in the reference, so a real-Ascora run never depends on it.

What it serves: the tenant directory written by the generator::

    <tenant>/tenant.json            {"seed", "size", "dirty", "api_key", "counts"}
    <tenant>/api/<resource>.jsonl   one record per line, in Ascora's API shape
    <tenant>/files/<attachmentId>/<fileName>

Records are served exactly as stored (a dirty tenant's duplicate ids and odd values included), because
the point is to show the client what a messy real tenant would show it.

Memory: every JSONL file is loaded into memory once (file bytes are not; downloads read the file on
demand). That is deliberate and fine up to roughly 200k records in total (a few hundred MB at
most); beyond that, generate a smaller tenant or shard the benchmark. All state sits behind one
lock, because uvicorn serves from its own thread while tests mutate the store in-process.

Conventions worth knowing (ext unless stated otherwise):

* Every request needs ``Auth: <key>``; a missing or wrong key gets ``401 {"success":false,
  "message":"Unauthorised"}`` (the real body is unknown).
* Query parameter *names* match case-insensitively (ServiceStack binding), values for enums too.
* ``Page`` counts from 1; ``PageSize`` defaults to 250 and is clamped to 1000 (the real maximum is
  undocumented). A page past the end answers ``results: []``.
* Not-found is HTTP 200 with ``success:false`` and Ascora's wording (observed for jobs and quotes;
  the customer/contact/supplier wordings are ext).
* A parameter that cannot be parsed (``Page=abc``, a bad date, an unknown ``JobStatus``) answers
  HTTP 400 ``{"success":false,"message":...}``: ServiceStack would reject it, body shape is ext.
* ``/Quotes/Quote/{n}`` finds sections only in the dash form ``Q1234-01``; the dot form is what
  the data holds but does not work in a real path (ServiceStack reads ``.01`` as a format suffix),
  so it is *not found* here too and a client that forgets the conversion fails in tests.
* ``JobStatus`` and ``QuoteStatus`` default to ``ALL`` when omitted. ``ALL-OPEN`` means In
  Progress, Booked, Deferred and Unscheduled (not Ready To Invoice: the work is done).
* ``/Accounting/GetInvoicesToSend`` answers every matching invoice in one envelope unless ``Page``
  or ``PageSize`` is given. The ``include*CustomFields`` flags default to false and blank the
  custom-field lists, as their names suggest.
* The Mark endpoints really flip ``sentToAccounts``: that is what lets a test prove the provider
  never calls them.
* ``POST /__ascora__/jobs/{jobNumber}`` (sandbox-only, no Ascora equivalent) patches a job, so delta
  runs can be tested; ``POST /Jobs/Job`` with a ``jobId`` is refused, as the real API only creates.
* With ``enable_extensions=False`` the extension endpoints (equipment, users, job types, notes,
  attachments, enquiries, form responses, full invoice history) are simply absent (404), and with
  ``strip_ext_fields=True`` the ext-only *fields* are removed from answers too, which gives the
  closest thing to the real API's shape that we can produce.
"""

from __future__ import annotations

import copy
import datetime as dt
import hmac
import json
import math
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_ascora_provider.sandbox.emulator import instrument
from airflow_ascora_provider.sandbox.generate import NOTE_IMAGES_DIR, NOTE_IMAGES_PATH, RESOURCES, TENANT_URL
from airflow_ascora_provider.source.coerce import JOB_STATUS_CODES, QUOTE_STATUS_CODES

DEFAULT_API_KEY = "ascora-sandbox-key"
DEFAULT_PAGE_SIZE = 250
MAX_PAGE_SIZE = 1000  # ext: the real maximum is undocumented


JOB_STATUS_TEXT = JOB_STATUS_CODES  # code → text, as the canonical coercion reads it
_JOB_TEXT_CODE = {text.lower(): code for code, text in JOB_STATUS_TEXT.items()}
JOB_STATUS_FILTERS: dict[str, frozenset[int] | None] = {
    "IN-PROGRESS": frozenset({0}),
    "BOOKED": frozenset({1}),
    "COMPLETED": frozenset({2}),
    "CANCELLED": frozenset({3}),
    "DEFERRED": frozenset({4}),
    "UNSCHEDULED": frozenset({5}),
    "NEW": frozenset({5}),
    "READY-TO-INVOICE": frozenset({6}),
    "CLOSED": frozenset({7}),
    "ALL-OPEN": frozenset({0, 1, 4, 5}),
    "ALL": None,
}
QUOTE_STATUS_TEXT = QUOTE_STATUS_CODES
_QUOTE_TEXT_CODE = {text.lower(): code for code, text in QUOTE_STATUS_TEXT.items()} | {"accepted": 2}
QUOTE_STATUS_FILTERS: dict[str, frozenset[int] | None] = {
    "IN-PROGRESS": frozenset({0}),
    "SENT-TO-CUSTOMER": frozenset({1}),
    "OPEN": frozenset({0, 1}),
    "WON": frozenset({2}),
    "ACCEPTED": frozenset({2}),
    "LOST": frozenset({3}),  # ext: settable in the real API, not a documented list filter
    "ALL": None,
    "LAST-7-DAYS": None,  # handled on the creation date below
}

# Fields the reference marks as ext, removed when strip_ext_fields=True.
EXT_FIELDS: dict[str, frozenset[str]] = {
    "customers": frozenset({"dateCreated", "lastModified", "accountingSystem"}),
    "contacts": frozenset({"lastModified"}),
    "jobs": frozenset({"quoteNumber", "assignedUser", "team", "lastModified"}),
    "quotes": frozenset({"dueDate", "validUntilDate", "jobNumber", "items", "lastModified", "dateCreated"}),
    "invoices": frozenset({"status", "lastModified"}),
}

_NUMBERED = re.compile(r"^[A-Za-z]*(\d+)$")


class TenantStore:
    """The tenant's records in memory, with the few indexes single-record lookups need.

    Lists keep file order and duplicates; an index points at the *first* record with a key, which is
    what a database with a dirty unique key would most plausibly return.
    """

    def __init__(self, tenant_dir: str | Path):
        self.root = Path(tenant_dir)
        self.lock = threading.RLock()
        self.meta: dict[str, Any] = {}
        meta_path = self.root / "tenant.json"
        if meta_path.exists():
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.tables: dict[str, list[dict[str, Any]]] = {name: [] for name in RESOURCES}
        api_dir = self.root / "api"
        if api_dir.is_dir():
            for path in sorted(api_dir.glob("*.jsonl")):
                self.tables[path.stem] = list(_read_jsonl(path))
        self._indexes: dict[tuple[str, str, bool], dict[Any, int]] = {}
        # Filtered lists per (resource, filters): a paged walk asks for the same filter once per page,
        # and re-filtering 100k records for each of 400 pages would make big tenants crawl.
        self._matches: OrderedDict[tuple, list[dict[str, Any]]] = OrderedDict()
        self.version = 0

    def rows(self, resource: str) -> list[dict[str, Any]]:
        return self.tables.get(resource, [])

    def _index(self, resource: str, key: str, fold: bool) -> dict[Any, int]:
        cache_key = (resource, key, fold)
        index = self._indexes.get(cache_key)
        if index is None:
            index = {}
            for pos, row in enumerate(self.rows(resource)):
                value = _fold(row.get(key)) if fold else row.get(key)
                if value is not None and not isinstance(value, (dict, list)):
                    index.setdefault(value, pos)
            self._indexes[cache_key] = index
        return index

    def find(self, resource: str, key: str, value: Any, *, fold: bool = False) -> dict[str, Any] | None:
        with self.lock:
            pos = self._index(resource, key, fold).get(_fold(value) if fold else value)
            return None if pos is None else self.tables[resource][pos]

    def matching(
        self, resource: str, filters: tuple, keep: Callable[[dict], bool] | None
    ) -> list[dict[str, Any]]:
        """The records passing ``keep``, remembered per ``filters`` until the next write."""
        with self.lock:
            rows = self.rows(resource)
            if keep is None:
                return rows
            key = (resource, filters)
            found = self._matches.get(key)
            if found is None:
                found = [r for r in rows if keep(r)]
                self._matches[key] = found
                while len(self._matches) > 64:
                    self._matches.popitem(last=False)
            else:
                self._matches.move_to_end(key)
            return found

    def _changed(self, resource: str) -> None:
        self.version += 1
        self._indexes = {k: v for k, v in self._indexes.items() if k[0] != resource}
        self._matches.clear()

    def append(self, resource: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.tables.setdefault(resource, []).append(row)
            self._changed(resource)

    def replace(self, resource: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Swap in a new dict rather than mutating, so a response being built keeps a consistent record."""
        with self.lock:
            rows = self.tables[resource]
            for pos, row in enumerate(rows):
                if row is old:
                    rows[pos] = new
                    break
            self._changed(resource)


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({exc})") from None
            if not isinstance(row, dict):
                # a bad data file rather than a bad argument, hence ValueError
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004
            yield row


def _fold(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------------
# Request helpers


class BadParam(Exception):
    """A query value the real API would reject with HTTP 400."""


class JsonResponse(Response):
    """JSON that tolerates NaN: a dirty tenant may hold one, and the emulator serves what is there."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in the tenant goes out escaped, as .NET's JSON writer does
            return json.dumps(content, allow_nan=True, separators=(",", ":")).encode("ascii")


def _params(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.query_params.multi_items()}


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name.lower())
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadParam(f"{name} must be a whole number, got {raw!r}") from None


def _bool_param(params: dict[str, str], name: str, default: bool | None = None) -> bool | None:
    raw = params.get(name.lower())
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise BadParam(f"{name} must be true or false, got {raw!r}")


def parse_when(value: Any) -> dt.datetime | None:
    """Read Ascora's ISO dates (with or without ``Z``/ms, or date-only) as aware UTC; None if unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _date_param(
    params: dict[str, str], name: str, *, end: bool = False
) -> Callable[[dt.datetime], bool] | None:
    """A predicate for ``StartDate``-style bounds; a date-only end bound includes that whole day."""
    raw = params.get(name.lower())
    if raw is None or raw.strip() == "":
        return None
    when = parse_when(raw)
    if when is None:
        raise BadParam(f"{name} must be a date (YYYY-MM-DD or YYYY-MM-DDTHH:mm:ss), got {raw!r}")
    if not end:
        return lambda value: value >= when
    if "T" not in raw.strip():
        limit = when + dt.timedelta(days=1)
        return lambda value: value < limit
    return lambda value: value <= when


def _date_window(params: dict[str, str], start: str, end: str, field: Callable[[dict], Any]):
    lower = _date_param(params, start)
    upper = _date_param(params, end, end=True)
    if lower is None and upper is None:
        return None

    def keep(row: dict[str, Any]) -> bool:
        when = parse_when(field(row))
        if when is None:
            return False
        return (lower is None or lower(when)) and (upper is None or upper(when))

    return keep


def _link_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or "")
    return str(value or "")


def _link_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


def _contains(needle: str, *haystacks: Any) -> bool:
    needle = needle.strip().lower()
    return any(isinstance(h, str) and needle in h.lower() for h in haystacks)


def _digits(value: Any) -> str:
    return re.sub(r"\s+", "", value) if isinstance(value, str) else ""


def _job_code(job: dict[str, Any]) -> int | None:
    code = job.get("jobStatus")
    if isinstance(code, int) and not isinstance(code, bool) and code in JOB_STATUS_TEXT:
        return code
    text = job.get("jobStatusText")
    return _JOB_TEXT_CODE.get(text.strip().lower()) if isinstance(text, str) else None


def _quote_code(quote: dict[str, Any]) -> int | None:
    code = quote.get("quoteStatus")
    if isinstance(code, int) and not isinstance(code, bool) and code in QUOTE_STATUS_TEXT:
        return code
    text = quote.get("quoteStatusText")
    return _QUOTE_TEXT_CODE.get(text.strip().lower()) if isinstance(text, str) else None


def _is_top_level_job(job: dict[str, Any]) -> bool:
    return not job.get("topLevelJobNumber")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------------------------
# The app


class _AuthMiddleware:
    """Checks ``Auth`` before routing, so even unknown paths do not reveal anything to a bad key."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.api_key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            supplied = dict(scope.get("headers") or []).get(b"auth", b"")
            if not hmac.compare_digest(supplied, self.api_key):
                response = JsonResponse({"success": False, "message": "Unauthorised"}, status_code=401)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class AscoraEmulator:
    """Route handlers over a :class:`TenantStore`; one instance per app."""

    def __init__(self, store: TenantStore, *, enable_extensions: bool, strip_ext_fields: bool):
        self.store = store
        self.enable_extensions = enable_extensions
        self.strip_ext_fields = strip_ext_fields

    # -- shaping ------------------------------------------------------------------------------------

    def _shape(self, resource: str, row: dict[str, Any], request: Request | None = None) -> dict[str, Any]:
        if resource == "notes" and request is not None and TENANT_URL in (row.get("noteContent") or ""):
            # Pasted images point at the tenant; the tenant is wherever this emulator answers.
            here = str(request.base_url).rstrip("/")
            row = {**row, "noteContent": row["noteContent"].replace(TENANT_URL, here)}
        drop = EXT_FIELDS.get(resource) if self.strip_ext_fields else None
        if not drop:
            return row
        return {k: v for k, v in row.items() if k not in drop}

    def _list(
        self,
        request: Request,
        resource: str,
        keep: Callable[[dict], bool] | None = None,
        rows: list[dict[str, Any]] | None = None,
    ) -> Response:
        params = _params(request)
        page = max(1, _int_param(params, "Page", 1))
        size = _int_param(params, "PageSize", DEFAULT_PAGE_SIZE)
        size = DEFAULT_PAGE_SIZE if size < 1 else min(size, MAX_PAGE_SIZE)
        with self.store.lock:
            if rows is not None:
                matched = rows if keep is None else [r for r in rows if keep(r)]
            else:
                filters = (request.url.path,) + tuple(
                    sorted((k, v) for k, v in params.items() if k not in ("page", "pagesize"))
                )
                if any(k == "quotestatus" and v.strip().upper() == "LAST-7-DAYS" for k, v in filters[1:]):
                    filters += (dt.date.today().isoformat(),)
                matched = self.store.matching(resource, filters, keep)
            total = len(matched)
            chunk = matched[(page - 1) * size : page * size]
        return JsonResponse(
            {
                "success": True,
                "message": None,
                "results": [self._shape(resource, r, request) for r in chunk],
                "totalPages": math.ceil(total / size) if total else 0,
                "totalRecords": total,
            }
        )

    def _single(self, resource: str, entity: str, row: dict[str, Any] | None, missing: str) -> Response:
        if row is None:
            return JsonResponse({"success": False, "message": missing})
        return JsonResponse({"success": True, "message": None, entity: self._shape(resource, row)})

    @staticmethod
    def _all_of(*preds: Callable[[dict], bool] | None) -> Callable[[dict], bool] | None:
        active = [p for p in preds if p is not None]
        if not active:
            return None
        return lambda row: all(p(row) for p in active)

    # -- customers and contacts ---------------------------------------------------------------------

    async def customers(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        kind = params.get("sitebillingtype", "All").strip().lower() or "all"
        if kind == "site":
            preds.append(lambda r: bool(_link_id(r.get("billingCustomer"))))
        elif kind == "billing":
            preds.append(lambda r: not _link_id(r.get("billingCustomer")))
        elif kind != "all":
            raise BadParam(f"SiteBillingType must be Site, Billing or All, got {params['sitebillingtype']!r}")
        if text := params.get("filtertext", "").strip():
            preds.append(
                lambda r: _contains(
                    text,
                    r.get("customerNumber"),
                    r.get("customerName"),
                    r.get("companyName"),
                    r.get("contactFirstName"),
                    r.get("contactLastName"),
                    r.get("emailAddress"),
                    r.get("phoneNumber"),
                    r.get("mobileNumber"),
                )
            )
        for param, field in (
            ("customertype", "customerType"),
            ("leadsource", "leadSource"),
            ("assigneduser", "assignedUser"),
        ):
            if wanted := params.get(param, "").strip().lower():
                preds.append(lambda r, f=field, w=wanted: _link_name(r.get(f)).strip().lower() == w)
        if phone := _digits(params.get("phonenumber")):
            preds.append(lambda r: phone in (_digits(r.get("phoneNumber")), _digits(r.get("mobileNumber"))))
        return self._list(request, "customers", self._all_of(*preds))

    async def customer(self, request: Request) -> Response:
        row = self.store.find("customers", "customerId", request.path_params["customer_id"], fold=True)
        return self._single("customers", "customer", row, "No Matching Customer Found")

    async def save_customer(self, request: Request) -> Response:
        body = await _json_body(request)
        now = _now()
        with self.store.lock:
            self._fill_link_names(body)
            customer_id = body.get("customerId")
            if customer_id:
                old = self.store.find("customers", "customerId", customer_id, fold=True)
                if old is None:
                    return JsonResponse({"success": False, "message": "No Matching Customer Found"})
                # Omitted fields are kept (read-modify-write); the real behaviour is an open question.
                new = {**old, **body, "customerId": old["customerId"], "lastModified": now}
                self.store.replace("customers", old, new)
                return JsonResponse({"success": True, "message": "Customer Updated", "customer": new})
            new = {
                "customerId": str(uuid.uuid4()),
                "customerNumber": "",
                "billingCustomer": None,
                "customFields": [],
                "dateCreated": now,
                **body,
                "lastModified": now,
            }
            new.setdefault(
                "customerName",
                new.get("companyName")
                or " ".join(p for p in (new.get("contactFirstName"), new.get("contactLastName")) if p),
            )
            self.store.append("customers", new)
            return JsonResponse({"success": True, "message": "Customer Created", "customer": new})

    def _fill_link_names(self, body: dict[str, Any]) -> None:
        for key in ("billingCustomer", "siteCustomer"):
            link = body.get(key)
            if isinstance(link, dict) and link.get("id") and not link.get("name"):
                target = self.store.find("customers", "customerId", link["id"], fold=True)
                if target is not None:
                    body[key] = {**link, "name": target.get("customerName")}

    async def contacts(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        if text := params.get("filtertext", "").strip():
            preds.append(
                lambda r: _contains(
                    text,
                    r.get("firstName"),
                    r.get("lastName"),
                    r.get("emailAddress"),
                    r.get("phoneNumber"),
                    r.get("mobileNumber"),
                )
            )
        if phone := _digits(params.get("phonenumber")):
            preds.append(lambda r: phone in (_digits(r.get("phoneNumber")), _digits(r.get("mobileNumber"))))
        return self._list(request, "contacts", self._all_of(*preds))

    async def contacts_for_customer(self, request: Request) -> Response:
        wanted = _fold(request.path_params["customer_id"])
        return self._list(request, "contacts", lambda r: _fold(r.get("customerId")) == wanted)

    async def contact(self, request: Request) -> Response:
        row = self.store.find("contacts", "contactId", request.path_params["contact_id"], fold=True)
        return self._single("contacts", "contact", row, "No Matching Contact Found")

    async def save_contact(self, request: Request) -> Response:
        body = await _json_body(request)
        now = _now()
        with self.store.lock:
            contact_id = body.get("contactId")
            if contact_id:
                old = self.store.find("contacts", "contactId", contact_id, fold=True)
                if old is None:
                    return JsonResponse({"success": False, "message": "No Matching Contact Found"})
                new = {**old, **body, "contactId": old["contactId"], "lastModified": now}
                self.store.replace("contacts", old, new)
                return JsonResponse({"success": True, "message": "Contact Created/Updated", "contact": new})
            if (
                not body.get("customerId")
                or self.store.find("customers", "customerId", body["customerId"], fold=True) is None
            ):
                return JsonResponse({"success": False, "message": "No Matching Customer Found"})
            new = {"contactId": str(uuid.uuid4()), "defaultContact": False, **body, "lastModified": now}
            self.store.append("contacts", new)
            return JsonResponse({"success": True, "message": "Contact Created/Updated", "contact": new})

    # -- jobs ---------------------------------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        status = params.get("jobstatus", "ALL").strip().upper() or "ALL"
        if status not in JOB_STATUS_FILTERS:
            raise BadParam(f"JobStatus {params['jobstatus']!r} is not one of {', '.join(JOB_STATUS_FILTERS)}")
        codes = JOB_STATUS_FILTERS[status]
        if codes is not None:
            preds.append(lambda r: _job_code(r) in codes)
        if not _bool_param(params, "IncludeChildJobs", False):
            preds.append(_is_top_level_job)
        preds.append(_date_window(params, "StartDate", "EndDate", lambda r: r.get("dateCreated")))
        if user := params.get("assigneduser", "").strip().lower():
            preds.append(lambda r: _link_name(r.get("assignedUser")).strip().lower() == user)
        if name := params.get("customername", "").strip():
            preds.append(
                lambda r: _contains(
                    name, _link_name(r.get("siteCustomer")), _link_name(r.get("billingCustomer"))
                )
            )
        if text := params.get("filtertext", "").strip():
            preds.append(
                lambda r: _contains(
                    text,
                    r.get("jobNumber"),
                    r.get("jobName"),
                    r.get("addressLine1"),
                    r.get("addressLine2"),
                    r.get("suburb"),
                    r.get("postcode"),
                )
            )
        if job_type := params.get("jobtype", "").strip().lower():
            preds.append(lambda r: _link_name(r.get("jobType")).strip().lower() == job_type)
        return self._list(request, "jobs", self._all_of(*preds))

    async def job(self, request: Request) -> Response:
        number = request.path_params["job_number"]
        row = self.store.find("jobs", "jobNumber", number, fold=True)
        return self._single("jobs", "job", row, f"No Matching Job Found ({number})")

    async def create_job(self, request: Request) -> Response:
        body = await _json_body(request)
        if body.get("jobId"):
            return JsonResponse(
                {
                    "success": False,
                    "message": (
                        "Updating a job is not supported by the Ascora API. In the sandbox, patch it with "
                        "POST /__ascora__/jobs/{jobNumber}."
                    ),
                }
            )
        now = _now()
        with self.store.lock:
            site_id = _link_id(body.get("siteCustomer"))
            site = self.store.find("customers", "customerId", site_id, fold=True) if site_id else None
            if site is None:
                return JsonResponse({"success": False, "message": "A valid siteCustomer.id is required"})
            self._fill_link_names(body)
            billing = body.get("billingCustomer")
            if not _link_id(billing):
                billing = site.get("billingCustomer") or {
                    "id": site["customerId"],
                    "name": site.get("customerName"),
                }
            status = body.get("jobStatus", 5)
            numbers = [
                int(m.group(1))
                for r in self.store.rows("jobs")
                if isinstance(r.get("jobNumber"), str) and (m := _NUMBERED.match(r["jobNumber"]))
            ]
            new = {
                "jobId": str(uuid.uuid4()),
                "jobNumber": f"J{max(numbers, default=0) + 1}",
                "topLevelJobNumber": None,
                "jobName": "",
                "jobDescription": "",
                "jobStatus": status,
                "jobStatusText": JOB_STATUS_TEXT.get(status, ""),
                "dateCreated": now,
                "pricingMethod": "FIXED-PRICE",
                "totalExTax": 0.0,
                "totalIncTax": 0.0,
                "siteContact": None,
                "billingContact": None,
                "customFields": None,
                **body,
                "siteCustomer": {"id": site["customerId"], "name": site.get("customerName")},
                "billingCustomer": billing,
                "lastModified": now,
            }
            self.store.append("jobs", new)
        return JsonResponse({"success": True, "message": "Job Created", "job": new})

    async def patch_job(self, request: Request) -> Response:
        """Sandbox-only: lets delta tests change a job the way a user would in the UI."""
        body = await _json_body(request)
        number = request.path_params["job_number"]
        with self.store.lock:
            old = self.store.find("jobs", "jobNumber", number, fold=True)
            if old is None:
                return JsonResponse({"success": False, "message": f"No Matching Job Found ({number})"})
            self._fill_link_names(body)
            new = {
                **old,
                **body,
                "jobId": old["jobId"],
                "jobNumber": old["jobNumber"],
                "lastModified": _now(),
            }
            if "jobStatus" in body and "jobStatusText" not in body:
                new["jobStatusText"] = JOB_STATUS_TEXT.get(body["jobStatus"], "")
            self.store.replace("jobs", old, new)
        return JsonResponse({"success": True, "message": "Job Updated", "job": new})

    # -- quotes -------------------------------------------------------------------------------------

    async def quotes(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        status = params.get("quotestatus", "ALL").strip().upper() or "ALL"
        if status not in QUOTE_STATUS_FILTERS:
            raise BadParam(
                f"QuoteStatus {params['quotestatus']!r} is not one of {', '.join(QUOTE_STATUS_FILTERS)}"
            )
        codes = QUOTE_STATUS_FILTERS[status]
        if codes is not None:
            preds.append(lambda r: _quote_code(r) in codes)

        def created(r: dict[str, Any]) -> Any:
            return r.get("dateCreated") or r.get("quotationDate")

        if status == "LAST-7-DAYS":
            since = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
            preds.append(lambda r: (w := parse_when(created(r))) is not None and w >= since)
        preds.append(_date_window(params, "StartDate", "EndDate", created))
        if user := params.get("assigneduser", "").strip().lower():
            preds.append(lambda r: _link_name(r.get("assignedUser")).strip().lower() == user)
        if name := params.get("customername", "").strip():
            preds.append(
                lambda r: _contains(
                    name, _link_name(r.get("siteCustomer")), _link_name(r.get("billingCustomer"))
                )
            )
        if text := params.get("filtertext", "").strip():
            preds.append(
                lambda r: _contains(
                    text, r.get("quoteNumber"), r.get("quoteName"), r.get("addressLine1"), r.get("suburb")
                )
            )
        if job_type := params.get("jobtype", "").strip().lower():
            preds.append(lambda r: _link_name(r.get("jobType")).strip().lower() == job_type)
        return self._list(request, "quotes", self._all_of(*preds))

    async def quote(self, request: Request) -> Response:
        number = request.path_params["quote_number"]
        found = None
        if "." not in number:
            wanted = number.replace("-", ".")
            found = self.store.find("quotes", "quoteNumber", wanted, fold=True)
            if found is None and "." in wanted:
                parent = self.store.find("quotes", "quoteNumber", wanted.split(".", 1)[0], fold=True)
                for child in (parent or {}).get("childQuotes") or ():
                    if isinstance(child, dict) and _fold(child.get("quoteNumber")) == _fold(wanted):
                        found = {**child, "topLevelQuoteNumber": parent.get("quoteNumber")}  # ext
                        break
        return self._single("quotes", "quotation", found, "QUOTE-NOT-FOUND")

    def bare(self, resource: str):
        """LabourRoles, StandardSections and StandardStages answer a bare array (observed), no envelope."""

        async def endpoint(request: Request) -> Response:
            with self.store.lock:
                return JsonResponse(list(self.store.rows(resource)))

        return endpoint

    # -- inventory and suppliers -------------------------------------------------------------------

    def _inventory_preds(self, params: dict[str, str]) -> list[Callable[[dict], bool] | None]:
        preds: list[Callable[[dict], bool] | None] = []
        if text := params.get("filtertext", "").strip():
            preds.append(
                lambda r: _contains(
                    text,
                    r.get("partNumber"),
                    r.get("supplierPartNumber"),
                    r.get("description"),
                    r.get("annotation"),
                    _link_name(r.get("categoryOne")),
                )
            )
        if _bool_param(params, "FavouriteOnly", False):
            preds.append(lambda r: bool(r.get("isFavourite")))
        for param, field in (("categoryoneid", "categoryOne"), ("categorytwoid", "categoryTwo")):
            if wanted := _fold(params.get(param, "")):
                preds.append(lambda r, f=field, w=wanted: _fold(_link_id(r.get(f))) == w)
        return preds

    async def supplies(self, request: Request) -> Response:
        return self._list(request, "supplies", self._all_of(*self._inventory_preds(_params(request))))

    async def kits(self, request: Request) -> Response:
        return self._list(request, "kits", self._all_of(*self._inventory_preds(_params(request))))

    async def categories(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        if text := params.get("filtertext", "").strip():
            preds.append(lambda r: _contains(text, r.get("name")))
        if _bool_param(params, "ParentOnly", False):
            preds.append(lambda r: not r.get("parentCategoryId"))
        if (number := _int_param(params, "CategoryNumber", 0)) in (1, 2):
            preds.append(lambda r: r.get("categoryNumber") == number)
        return self._list(request, "categories", self._all_of(*preds))

    async def suppliers(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = []
        if name := params.get("suppliername", "").strip():
            preds.append(lambda r: _contains(name, r.get("name")))
        if number := params.get("suppliernumber", "").strip():
            preds.append(lambda r: _contains(number, r.get("supplierNumber")))
        if abn := _digits(params.get("businessnumber")):
            preds.append(lambda r: _digits(r.get("businessNumber")) == abn)
        return self._list(request, "suppliers", self._all_of(*preds))

    async def supplier(self, request: Request) -> Response:
        row = self.store.find("suppliers", "supplierId", request.path_params["supplier_id"], fold=True)
        return self._single("suppliers", "supplier", row, "No Matching Supplier Found")

    async def supplier_invoices(self, request: Request) -> Response:
        params = _params(request)
        preds: list[Callable[[dict], bool] | None] = [
            _date_window(params, "InvoiceDateStart", "InvoiceDateEnd", lambda r: r.get("invoiceDate"))
        ]
        if name := params.get("suppliername", "").strip():
            preds.append(lambda r: _contains(name, _link_name(r.get("supplier"))))
        if tracking := params.get("trackingnumber", "").strip():
            preds.append(lambda r: _contains(tracking, r.get("trackingNumber")))
        to_send = _bool_param(params, "ToBeSentToAccounting")
        if to_send is not None:
            preds.append(lambda r: (not r.get("sentToAccounts")) == to_send)
        return self._list(request, "supplier_invoices", self._all_of(*preds))

    async def supplier_invoice(self, request: Request) -> Response:
        row = self.store.find(
            "supplier_invoices", "supplierInvoiceId", request.path_params["invoice_id"], fold=True
        )
        return self._single("supplier_invoices", "supplierInvoice", row, "No Matching Supplier Invoice Found")

    # -- accounting ---------------------------------------------------------------------------------

    def _to_send(self, request: Request, resource: str, date_field: str) -> Response:
        params = _params(request)
        raw = params.get("priortodate", "").strip()
        prior = parse_when(raw)
        if prior is None:
            raise BadParam(f"priorToDate is required and must be a date, got {raw!r}")

        def keep(r: dict[str, Any]) -> bool:
            when = parse_when(r.get(date_field))
            return not r.get("sentToAccounts") and when is not None and when < prior

        if resource == "invoices":
            flags = {
                "invoiceCustomFields": _bool_param(params, "includeInvoiceCustomFields", False),
                "jobCustomFields": _bool_param(params, "includeJobCustomFields", False),
                "customerCustomFields": _bool_param(params, "includeCustomerCustomFields", False),
            }
        else:
            flags = {}
        with self.store.lock:
            rows = [r for r in self.store.rows(resource) if keep(r)]
        rows = [{**r, **{k: [] for k, on in flags.items() if not on and k in r}} for r in rows]
        if "page" in params or "pagesize" in params:
            return self._list(request, resource, rows=rows)
        return JsonResponse(
            {
                "success": True,
                "message": None,
                "results": [self._shape(resource, r) for r in rows],
                "totalPages": 1 if rows else 0,
                "totalRecords": len(rows),
            }
        )

    async def invoices_to_send(self, request: Request) -> Response:
        return self._to_send(request, "invoices", "invoiceDate")

    async def payments_to_send(self, request: Request) -> Response:
        return self._to_send(request, "payments", "paymentDate")

    async def _mark(self, request: Request, resource: str, id_key: str, body_key: str) -> Response:
        """State-changing on purpose: the provider must never get here, and tests prove it by the flag."""
        body = await _json_body(request)
        wanted = {
            _fold(i) for i in next((v for k, v in body.items() if k.lower() == body_key.lower()), []) or []
        }
        marked = 0
        with self.store.lock:
            for row in list(self.store.rows(resource)):
                if _fold(row.get(id_key)) in wanted and not row.get("sentToAccounts"):
                    self.store.replace(resource, row, {**row, "sentToAccounts": True, "lastModified": _now()})
                    marked += 1
        return JsonResponse({"success": True, "message": f"{marked} marked as sent"})

    async def mark_invoices(self, request: Request) -> Response:
        return await self._mark(request, "invoices", "invoiceId", "InvoiceIds")

    async def mark_payments(self, request: Request) -> Response:
        return await self._mark(request, "payments", "paymentId", "PaymentIds")

    # -- extensions ---------------------------------------------------------------------------------

    async def equipment(self, request: Request) -> Response:
        wanted = _fold(_params(request).get("customerid", ""))
        keep = (
            (lambda r: wanted in (_fold(r.get("customerId")), _fold(r.get("siteCustomerId"))))
            if wanted
            else None
        )
        return self._list(request, "equipment", keep)

    async def users(self, request: Request) -> Response:
        return self._list(request, "users")

    async def job_types(self, request: Request) -> Response:
        return self._list(request, "job_types")

    async def notes(self, request: Request) -> Response:
        params = _params(request)
        entity_type = _fold(params.get("entitytype", ""))
        entity_id = _fold(params.get("entityid", ""))
        return self._list(
            request,
            "notes",
            self._all_of(
                (lambda r: _fold(r.get("entityType")) == entity_type) if entity_type else None,
                (lambda r: _fold(r.get("entityId")) == entity_id) if entity_id else None,
            ),
        )

    async def attachments(self, request: Request) -> Response:
        return self._list(request, "attachments")

    async def attachments_for(self, request: Request) -> Response:
        entity_type = _fold(request.path_params["entity_type"])
        entity_id = _fold(request.path_params["entity_id"])
        return self._list(
            request,
            "attachments",
            lambda r: _fold(r.get("entityType")) == entity_type and _fold(r.get("entityId")) == entity_id,
        )

    async def download(self, request: Request) -> Response:
        attachment_id = request.path_params["attachment_id"]
        meta = self.store.find("attachments", "attachmentId", attachment_id, fold=True)
        files = (self.store.root / "files").resolve()
        folder = (files / attachment_id).resolve()
        path = None
        if folder.parent == files and folder.is_dir():
            name = (meta or {}).get("fileName")
            candidate = (folder / name).resolve() if isinstance(name, str) and name else None
            if candidate is not None and candidate.parent == folder and candidate.is_file():
                path = candidate
            else:
                found = [p for p in folder.iterdir() if p.is_file()]
                path = found[0] if len(found) == 1 else None
        if path is None:
            return JsonResponse(
                {"success": False, "message": "No Matching Attachment Found"}, status_code=404
            )
        content_type = (meta or {}).get("contentType") or "application/octet-stream"
        return Response(
            path.read_bytes(),
            media_type=content_type,
            headers={"Content-Disposition": f'attachment; filename="{path.name}"'},
        )

    async def note_image(self, request: Request) -> Response:
        """An image pasted into a note, served from the tenant like the web app serves it."""
        folder = (self.store.root / NOTE_IMAGES_DIR).resolve()
        path = (folder / request.path_params["image_id"] / request.path_params["file_name"]).resolve()
        if path.parent.parent != folder or not path.is_file():
            return JsonResponse({"success": False, "message": "File not found"}, status_code=404)
        kind = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif"}
        return Response(path.read_bytes(), media_type=kind.get(path.suffix.lower().lstrip("."),
                                                                "application/octet-stream"))

    async def enquiries(self, request: Request) -> Response:
        params = _params(request)
        status = _fold(params.get("status", ""))
        return self._list(
            request,
            "enquiries",
            self._all_of(
                _date_window(params, "StartDate", "EndDate", lambda r: r.get("dateCreated")),
                (lambda r: _fold(r.get("status")) == status) if status else None,
            ),
        )

    async def form_responses(self, request: Request) -> Response:
        number = _fold(_params(request).get("jobnumber", ""))
        return self._list(
            request, "form_responses", (lambda r: _fold(r.get("jobNumber")) == number) if number else None
        )

    async def invoices(self, request: Request) -> Response:
        params = _params(request)
        return self._list(
            request,
            "invoices",
            _date_window(params, "InvoiceDateStart", "InvoiceDateEnd", lambda r: r.get("invoiceDate")),
        )

    # -- wiring -------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        def get(path: str, endpoint) -> Route:
            return Route(path, _guarded(endpoint), methods=["GET"])

        def post(path: str, endpoint) -> Route:
            return Route(path, _guarded(endpoint), methods=["POST"])

        routes = [
            get("/Customers/Customers", self.customers),
            get("/Customers/Customer/{customer_id}", self.customer),
            post("/Customers/Customer", self.save_customer),
            get("/Customers/Contacts", self.contacts),
            get("/Customers/GetContactsForCustomer/{customer_id}", self.contacts_for_customer),
            get("/Customers/Contact/{contact_id}", self.contact),
            post("/Customers/Contact", self.save_contact),
            get("/Jobs/Jobs", self.jobs),
            get("/Jobs/Job/{job_number}", self.job),
            post("/Jobs/Job", self.create_job),
            post("/Jobs/Job/", self.create_job),
            post("/__ascora__/jobs/{job_number}", self.patch_job),
            get("/Quotes/Quotes", self.quotes),
            get("/Quotes/Quote/{quote_number}", self.quote),
            get("/Quotes/LabourRoles", self.bare("labour_roles")),
            get("/Quotes/StandardSections", self.bare("standard_sections")),
            get("/Quotes/StandardStages", self.bare("standard_stages")),
            get("/Inventory/Supplies", self.supplies),
            get("/Inventory/Kits", self.kits),
            get("/Inventory/Categories", self.categories),
            get("/Suppliers/Suppliers", self.suppliers),
            get("/Suppliers/Supplier/{supplier_id}", self.supplier),
            get("/SupplierInvoices/SupplierInvoices", self.supplier_invoices),
            get("/SupplierInvoices/SupplierInvoice/{invoice_id}", self.supplier_invoice),
            get("/Accounting/GetInvoicesToSend", self.invoices_to_send),
            get("/Accounting/GetPaymentsToSend", self.payments_to_send),
            post("/Accounting/MarkInvoicesAsSent", self.mark_invoices),
            post("/Accounting/MarkPaymentsAsSent", self.mark_payments),
            post("/MarkInvoice", self.mark_invoices),
            post("/MarkPayment", self.mark_payments),
            post("/acct/api/MarkInvoice", self.mark_invoices),
            post("/acct/api/MarkPayment", self.mark_payments),
        ]
        if self.enable_extensions:
            routes += [
                get("/Equipment/Equipment", self.equipment),
                get("/Users/Users", self.users),
                get("/JobTypes/JobTypes", self.job_types),
                get("/Notes/Notes", self.notes),
                get("/Attachments", self.attachments),
                # Download first: it has the same two-segment shape as {EntityType}/{EntityId}.
                get("/Attachments/Download/{attachment_id}", self.download),
                get("/Attachments/{entity_type}/{entity_id}", self.attachments_for),
                get(NOTE_IMAGES_PATH + "/{image_id}/{file_name}", self.note_image),
                get("/Enquiries/Enquiries", self.enquiries),
                get("/Forms/FormResponses", self.form_responses),
                get("/Invoices/Invoices", self.invoices),
            ]
        return routes


def _guarded(endpoint):
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BadParam as exc:
            return JsonResponse({"success": False, "message": str(exc)}, status_code=400)

    return wrapper


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadParam("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadParam("the request body must be a JSON object")
    return body


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return JsonResponse(
            {"success": False, "message": f"Method {request.method} not allowed on {request.url.path}"},
            status_code=405,
        )
    return JsonResponse(
        {"success": False, "message": f"Not Found: {request.url.path}"}, status_code=exc.status_code
    )


def create_app(
    tenant_dir: str | Path,
    *,
    api_key: str | None = None,
    rate_limit: int | None = None,
    window: float = 60.0,
    enable_extensions: bool = True,
    strip_ext_fields: bool = False,
):
    """Build the instrumented emulator for one tenant directory.

    ``api_key`` defaults to the one in ``tenant.json`` (then :data:`DEFAULT_API_KEY`), so a tenant and
    the key a demo connection uses cannot drift apart. The store is reachable as
    ``app.state.ascora`` for in-process inspection; request log, rate limit and faults are
    ``app.state.sandbox`` (see :mod:`.emulator`).
    """
    store = TenantStore(tenant_dir)
    key = api_key or store.meta.get("api_key") or DEFAULT_API_KEY
    emulator = AscoraEmulator(store, enable_extensions=enable_extensions, strip_ext_fields=strip_ext_fields)
    app = Starlette(
        routes=emulator.routes(),
        middleware=[Middleware(_AuthMiddleware, api_key=key)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.ascora = store
    app.state.api_key = key
    return instrument(app, rate_limit=rate_limit, window=window)


# ---------------------------------------------------------------------------------------------------
# A tiny hand-written tenant


def _json_line(row: dict[str, Any]) -> str:
    """One JSON line; text that UTF-8 cannot hold (a lone surrogate) is written as JSON escapes, as an
    API that let such a string in would send it."""
    try:
        return json.dumps(row, ensure_ascii=False).encode("utf-8").decode("utf-8") + "\n"
    except UnicodeEncodeError:
        return json.dumps(row) + "\n"


def write_tenant(
    tenant_dir: str | Path,
    resources: dict[str, list[dict[str, Any]]],
    *,
    files: dict[str, tuple[str, bytes]] | None = None,
    api_key: str = DEFAULT_API_KEY,
    seed: int = 0,
    size: str = "fixture",
    dirty: bool = False,
) -> Path:
    """Write a tenant directory in the generator's layout (used by tests and quick smoke checks)."""
    root = Path(tenant_dir)
    (root / "api").mkdir(parents=True, exist_ok=True)
    for name, rows in resources.items():
        with (root / "api" / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(_json_line(row))
    for attachment_id, (file_name, data) in (files or {}).items():
        folder = root / "files" / attachment_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(data)
    meta = {
        "seed": seed,
        "size": size,
        "dirty": dirty,
        "api_key": api_key,
        "counts": {name: len(rows) for name, rows in resources.items()},
    }
    (root / "tenant.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def fixture_tenant_records() -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[str, bytes]]]:
    """A few records per resource, hand-picked to hit the relation edge cases the readers must handle.

    Seven customers (three billing, four sites) so paging with PageSize 3 gives 3 pages; a job whose
    site customer is a billing customer; a job with no billing customer (falls back to the site's);
    a job pointing at an unknown quote; a SECTIONS quote with child quotes and items; child jobs.
    Returned fresh on every call so a test can dirty its own copy.
    """

    def gid(n: int) -> str:
        return f"00000000-0000-4000-8000-{n:012d}"

    def link(n: int, name: str) -> dict[str, str]:
        return {"id": gid(n), "name": name}

    sam, alex = link(901, "Sam Tech"), link(902, "Alex Office")
    standard, maintenance = link(801, "Standard Job"), link(802, "Maintenance")

    def customer(n, name, *, company="", ctype="Residential", billing=None, **extra):
        base = {
            "customerId": gid(n),
            "customerNumber": f"C{n:05d}",
            "customerName": name,
            "companyName": company,
            "contactFirstName": "Pat",
            "contactLastName": f"Lee{n}",
            "emailAddress": f"pat{n}@example.com",
            "phoneNumber": "08 9000 0000",
            "mobileNumber": "0400 000 000",
            "onHold": False,
            "billingCustomerOnHold": False,
            "streetLine1": f"{n} Main St",
            "streetLine2": "",
            "streetSuburb": "Cannington",
            "streetState": "WA",
            "streetPostcode": "6107",
            "streetCountry": "Australia",
            "streetLatitude": -32.01,
            "streetLongitude": 115.93,
            "postalLine1": f"PO Box {n}",
            "postalLine2": "",
            "postalSuburb": "Perth",
            "postalState": "WA",
            "postalPostcode": "6000",
            "postalCountry": "Australia",
            "customerType": {"id": gid(700 + len(ctype)), "name": ctype},
            "leadSource": {"id": gid(750), "name": "Google"},
            "billingCustomer": billing,
            "assignedUser": sam,
            "customFields": [{"fieldName": "Customer text", "fieldValue": f"note {n}"}],
            "dateCreated": "2024-03-01T02:11:09.120Z",
            "lastModified": "2025-06-30T05:00:00.000Z",
        }
        return base | extra

    customers = [
        customer(
            1,
            "Acme Plumbing Pty Ltd",
            company="Acme Plumbing Pty Ltd",
            ctype="Commercial",
            accountingSystem="Xero",
        ),
        customer(2, "Jane Citizen"),
        customer(3, "Harbour Strata Plan 123", ctype="Strata"),
        customer(11, "Acme Depot", ctype="Commercial", billing=link(1, "Acme Plumbing Pty Ltd")),
        customer(12, "Acme Shopfront", ctype="Commercial", billing=link(1, "Acme Plumbing Pty Ltd")),
        customer(13, "Harbour Strata Block A", ctype="Strata", billing=link(3, "Harbour Strata Plan 123")),
        customer(14, "Jane's Rental", billing=link(2, "Jane Citizen")),
    ]
    contacts = [
        {
            "contactId": gid(100 + i),
            "customerId": gid(c),
            "firstName": f"First{i}",
            "lastName": f"Last{i}",
            "emailAddress": f"c{i}@example.com",
            "phoneNumber": "08 9111 1111",
            "mobileNumber": "",
            "faxNumber": "",
            "defaultContact": i == 1,
            "contactRole": "Site Manager",
            "lastModified": "2025-01-01T00:00:00.000Z",
        }
        for i, c in ((1, 1), (2, 11), (3, 2), (4, 13))
    ]
    users = [
        {
            "userId": sam["id"],
            "fullName": "Sam Tech",
            "firstName": "Sam",
            "lastName": "Tech",
            "emailAddress": "sam@example.com",
            "mobileNumber": "0400 111 222",
            "isActive": True,
            "userType": "Mobile",
            "labourRole": link(601, "Plumber"),
            "team": link(651, "North"),
        },
        {
            "userId": alex["id"],
            "fullName": "Alex Office",
            "firstName": "Alex",
            "lastName": "Office",
            "emailAddress": "alex@example.com",
            "mobileNumber": "",
            "isActive": True,
            "userType": "Office",
            "labourRole": None,
            "team": None,
        },
    ]
    job_types = [
        {"id": standard["id"], "name": "Standard Job", "isDefault": True},
        {"id": maintenance["id"], "name": "Maintenance", "isDefault": False},
    ]

    def quote(n, number, status, site, billing, **extra):
        base = {
            "quoteId": gid(n),
            "quoteNumber": number,
            "quoteName": f"Quote {number}",
            "quoteDescription": "…",
            "quoteStatus": status,
            "quoteStatusText": QUOTE_STATUS_TEXT[status],
            "reasonForLoss": None,
            "quotationDate": "2025-05-01T00:00:00",
            "dueDate": None,
            "validUntilDate": "2025-06-01T00:00:00",
            "pricingMethod": "FIXED-PRICE",
            "totalExTax": 100.0,
            "totalIncTax": 110.0,
            "purchaseOrderNumber": "",
            "clientOrderNumber": "",
            "addressLine1": "1 Main St",
            "addressLine2": "",
            "suburb": "Cannington",
            "postcode": "6107",
            "country": "Australia",
            "jobType": standard,
            "siteCustomer": site,
            "billingCustomer": billing,
            "childQuotes": [],
            "jobNumber": None,
            "items": [],
            "assignedUser": alex,
            "lastModified": "2025-05-02T00:00:00.000Z",
        }
        return base | extra

    quotes = [
        quote(
            201,
            "Q0001",
            2,
            link(11, "Acme Depot"),
            link(1, "Acme Plumbing Pty Ltd"),
            pricingMethod="SECTIONS",
            jobNumber="J1001",
            childQuotes=[
                {
                    "quoteId": gid(211),
                    "quoteNumber": "Q0001.01",
                    "quoteName": "Stage 1",
                    "displayOrder": 1,
                    "totalExTax": 60.0,
                    "totalIncTax": 66.0,
                },
                {
                    "quoteId": gid(212),
                    "quoteNumber": "Q0001.02",
                    "quoteName": "Stage 2",
                    "displayOrder": 2,
                    "totalExTax": 40.0,
                    "totalIncTax": 44.0,
                },
            ],
            items=[
                {
                    "itemId": gid(221),
                    "itemType": "SUPPLY",
                    "sectionQuoteNumber": "Q0001.01",
                    "partNumber": "CLI123",
                    "description": "PVC fittings",
                    "quantity": 2,
                    "unitOfMeasure": "ea",
                    "labourRole": None,
                    "hours": None,
                    "unitCostExTax": 10.0,
                    "unitSellExTax": 15.0,
                    "totalExTax": 30.0,
                    "totalIncTax": 33.0,
                    "isTaxable": True,
                },
                {
                    "itemId": gid(222),
                    "itemType": "LABOUR",
                    "sectionQuoteNumber": "Q0001.02",
                    "partNumber": "",
                    "description": "Install",
                    "quantity": 1,
                    "unitOfMeasure": "hr",
                    "labourRole": link(601, "Plumber"),
                    "hours": 2,
                    "unitCostExTax": 20.0,
                    "unitSellExTax": 35.0,
                    "totalExTax": 70.0,
                    "totalIncTax": 77.0,
                    "isTaxable": True,
                },
            ],
        ),
        quote(
            202,
            "Q0002",
            1,
            link(13, "Harbour Strata Block A"),
            link(3, "Harbour Strata Plan 123"),
            jobType=maintenance,
        ),
        quote(203, "Q0003", 3, link(2, "Jane Citizen"), link(2, "Jane Citizen"), reasonForLoss="Price"),
    ]

    def job(n, number, status, site, billing, *, parent=None, created="2025-06-01T01:00:00.000Z", **extra):
        base = {
            "jobId": gid(n),
            "jobNumber": number,
            "topLevelJobNumber": parent,
            "jobName": f"Job {number}",
            "jobDescription": "Replace HWS",
            "workUndertaken": "",
            "jobStatus": status,
            "jobStatusText": JOB_STATUS_TEXT[status],
            "dateCreated": created,
            "completedDate": None,
            "pricingMethod": "FIXED-PRICE",
            "totalExTax": 1000.0,
            "totalIncTax": 1100.0,
            "purchaseOrderNumber": "",
            "clientOrderNumber": "",
            "addressLine1": "1 Main St",
            "addressLine2": "",
            "suburb": "Cannington",
            "state": "WA",
            "postcode": "6107",
            "country": "Australia",
            "latitude": -32.0,
            "longitude": 115.9,
            "jobType": standard,
            "siteCustomer": site,
            "siteContact": None,
            "billingCustomer": billing,
            "billingContact": None,
            "displayOrder": None,
            "customFields": None,
            "quoteNumber": None,
            "assignedUser": sam,
            "team": None,
            "lastModified": "2025-06-02T00:00:00.000Z",
        }
        return base | extra

    jobs = [
        job(
            301,
            "J1001",
            2,
            link(11, "Acme Depot"),
            link(1, "Acme Plumbing Pty Ltd"),
            quoteNumber="Q0001",
            pricingMethod="SECTIONS",
            completedDate="2025-06-10T04:00:00Z",
            siteContact={"id": gid(102), "name": "First2 Last2"},
            customFields=[{"fieldName": "Job text", "fieldValue": "x"}],
        ),
        job(
            311,
            "J1001.01",
            2,
            link(11, "Acme Depot"),
            link(1, "Acme Plumbing Pty Ltd"),
            parent="J1001",
            displayOrder=1,
        ),
        job(
            312,
            "J1001.02",
            0,
            link(11, "Acme Depot"),
            link(1, "Acme Plumbing Pty Ltd"),
            parent="J1001",
            displayOrder=2,
            assignedUser=alex,
        ),
        # Site customer is really a billing customer: site_id must stay empty.
        job(
            302,
            "J1002",
            1,
            link(2, "Jane Citizen"),
            link(2, "Jane Citizen"),
            created="2025-07-15T09:00:00.000Z",
        ),
        # No billing customer: falls back to the site's billing customer; no status text: code only.
        job(
            303,
            "J1003",
            0,
            link(13, "Harbour Strata Block A"),
            None,
            jobStatusText=None,
            jobType=maintenance,
            quoteNumber="Q0002",
        ),
        # Quote number that does not exist.
        job(
            304,
            "J1004",
            3,
            link(14, "Jane's Rental"),
            link(2, "Jane Citizen"),
            quoteNumber="Q9999",
            created="2024-01-10T00:00:00.000Z",
        ),
        job(305, "J1005", 5, link(12, "Acme Shopfront"), link(1, "Acme Plumbing Pty Ltd"), assignedUser=None),
    ]

    def invoice(n, number, job_ref, billing, date, sent, status):
        return {
            "invoiceId": gid(n),
            "invoiceNumber": number,
            "invoiceDate": date,
            "dueDate": date,
            "jobId": gid(job_ref[0]),
            "jobNumber": job_ref[1],
            "billingCustomer": {**billing, "customerNumber": "", "emailAddress": ""},
            "billingAddress": {
                "line1": "",
                "line2": "",
                "suburb": "",
                "state": "",
                "postcode": "",
                "country": "",
            },
            "reference": "PO-123",
            "totalExTax": 1000.0,
            "totalTax": 100.0,
            "totalIncTax": 1100.0,
            "amountPaid": 1100.0 if status == "Paid" else 0.0,
            "amountOutstanding": 0.0 if status == "Paid" else 1100.0,
            "sentToAccounts": sent,
            "status": status,
            "lines": [
                {
                    "description": "Labour",
                    "partNumber": "",
                    "quantity": 1,
                    "unitPriceExTax": 600.0,
                    "accountCode": "200",
                    "taxCode": "GST",
                    "totalExTax": 600.0,
                    "tax": 60.0,
                },
                {
                    "description": "Parts",
                    "partNumber": "CLI123",
                    "quantity": 4,
                    "unitPriceExTax": 100.0,
                    "accountCode": "200",
                    "taxCode": "GST",
                    "totalExTax": 400.0,
                    "tax": 40.0,
                },
            ],
            "invoiceCustomFields": [{"fieldName": "Invoice text", "fieldValue": number}],
            "jobCustomFields": [],
            "customerCustomFields": [],
        }

    invoices = [
        invoice(
            401,
            "INV-0001",
            (301, "J1001"),
            link(1, "Acme Plumbing Pty Ltd"),
            "2025-06-11T00:00:00",
            True,
            "Paid",
        ),
        invoice(
            402, "INV-0002", (302, "J1002"), link(2, "Jane Citizen"), "2025-07-20T00:00:00", False, "Unpaid"
        ),
        invoice(
            403,
            "INV-0003",
            (303, "J1003"),
            link(3, "Harbour Strata Plan 123"),
            "2030-01-01T00:00:00",
            False,
            "Unpaid",
        ),
    ]
    suppliers = [
        {
            "supplierId": gid(501 + i),
            "supplierNumber": f"S{i}",
            "name": name,
            "businessNumber": f"12 345 678 90{i}",
            "contactFirstName": "Kim",
            "contactLastName": "Ng",
            "notes": "",
            "phone": "08 9222 2222",
            "fax": "",
            "mobile": "",
            "emailAddress": f"accounts@{name.lower()}.example",
            "expenseAccount": "310",
            "invoiceDueDaysType": 0,
            "streetLine1": "5 Trade Rd",
            "streetLine2": "",
            "streetSuburb": "Welshpool",
            "streetState": "WA",
            "streetPostcode": "6106",
            "postalLine1": "",
            "postalLine2": "",
            "postalSuburb": "",
            "postalState": "",
            "postalPostcode": "",
        }
        for i, name in enumerate(("Reece", "Tradelink"))
    ]
    supplier_invoices = [
        {
            "supplierInvoiceId": gid(551 + i),
            "supplier": link(501 + i, ("Reece", "Tradelink")[i]),
            "createdOn": "2025-06-05T00:00:00.000Z",
            "invoiceDate": date,
            "dueDate": "2025-07-05T00:00:00",
            "trackingNumber": f"SUP-00{i}",
            "reference": ref,
            "accepted": True,
            "type": "INVOICE",
            "accountCode": "310",
            "isExpense": False,
            "sentToAccounts": True,
            "totalAmountExTax": 50.0,
            "totalAmountIncTax": 55.0,
            "lines": [
                {
                    "description": "PVC fittings",
                    "partNumber": "CLI123",
                    "quantity": 1,
                    "unitCostExTax": 50.0,
                    "totalAmountExTax": 50.0,
                    "totalAmountIncTax": 55.0,
                    "accountCode": "310",
                    "reference": ref,
                    "isTaxable": True,
                }
            ],
        }
        for i, (ref, date) in enumerate((("J1001", "2025-06-04T00:00:00"), ("PO-77", "2025-08-01T00:00:00")))
    ]
    categories = [
        {"categoryId": gid(581), "name": "Plumbing", "categoryNumber": 1, "parentCategoryId": None},
        {"categoryId": gid(582), "name": "Fittings", "categoryNumber": 2, "parentCategoryId": gid(581)},
    ]
    supplies = [
        {
            "supplyId": gid(591 + i),
            "partNumber": f"P{i}",
            "description": f"Supply {i}",
            "annotation": "",
            "unitCostExTax": 1.0,
            "unitSellExTax": 2.0,
            "unitSellIncTax": 2.2,
            "averageCost": 1.0,
            "isTaxable": True,
            "isFavourite": i == 0,
            "mustBeOrdered": False,
            "packOrBoxQuantity": 1,
            "location": "",
            "defaultSupplier": link(501, "Reece"),
            "categoryOne": link(581, "Plumbing"),
            "unitOfMeasure": "ea",
        }
        for i in range(3)
    ]
    kits = [
        {
            "kitId": gid(599),
            "partNumber": "K1",
            "description": "HWS kit",
            "annotation": "",
            "markup": 20,
            "unitCostExTax": 100.0,
            "unitSellExTax": 120.0,
            "unitSellIncTax": 132.0,
            "isTaxable": True,
            "isFavourite": False,
            "pricingMethod": "FIXED-PRICE",
            "categoryOne": link(581, "Plumbing"),
            "unitOfMeasure": "ea",
        }
    ]
    labour_roles = [
        {"labourRoleId": gid(601), "name": "Plumber", "hourlyRateExTax": 95.0},
        {"labourRoleId": gid(602), "name": "Apprentice", "hourlyRateExTax": 45.0},
    ]
    standard_sections = [{"name": "Rough-in", "displayOrder": 1}, {"name": "Fit-off", "displayOrder": 2}]
    standard_stages = [{"name": "Stage 1", "displayOrder": 1}]
    equipment = [
        {
            "equipmentId": gid(701),
            "customerId": gid(1),
            "siteCustomerId": gid(11),
            "name": "Hot water system",
            "make": "Rheem",
            "model": "Stellar 360",
            "serialNumber": "RH-1",
            "location": "Roof",
            "installDate": "2020-01-01T00:00:00",
            "warrantyExpiry": "2030-01-01T00:00:00",
            "notes": "",
            "customFields": [],
            "lastModified": "2025-01-01T00:00:00.000Z",
        },
        # Linked to a site only: the reader must find the site's billing customer.
        {
            "equipmentId": gid(702),
            "customerId": gid(13),
            "siteCustomerId": None,
            "name": "Pump",
            "make": "Grundfos",
            "model": "CM5",
            "serialNumber": "GR-2",
            "location": "Basement",
            "installDate": None,
            "warrantyExpiry": None,
            "notes": "noisy",
            "customFields": None,
            "lastModified": "2025-01-01T00:00:00.000Z",
        },
    ]
    notes = [
        {
            "noteId": gid(751),
            "entityType": "Job",
            "entityId": gid(301),
            "noteContent": "Customer called",
            "createdByName": "Alex Office",
            "dateCreated": "2025-06-02T00:00:00.000Z",
        },
        {
            "noteId": gid(752),
            "entityType": "Customer",
            "entityId": gid(1),
            "noteContent": "VIP",
            "createdByName": "Alex Office",
            "dateCreated": "2025-06-02T00:00:00.000Z",
        },
        {
            "noteId": gid(753),
            "entityType": "Customer",
            "entityId": gid(11),
            "noteContent": "Gate code 1234",
            "createdByName": "Sam Tech",
            "dateCreated": "2025-06-03T00:00:00.000Z",
        },
    ]
    attachments = [
        {
            "attachmentId": gid(771),
            "entityType": "Job",
            "entityId": gid(301),
            "fileName": "photo.jpg",
            "contentType": "image/jpeg",
            "sizeBytes": 8,
            "dateCreated": "2025-06-02T00:00:00.000Z",
            "category": "Photo",
        },
        {
            "attachmentId": gid(772),
            "entityType": "Quotation",
            "entityId": gid(201),
            "fileName": "quote.pdf",
            "contentType": "application/pdf",
            "sizeBytes": 9,
            "dateCreated": "2025-05-02T00:00:00.000Z",
            "category": "Document",
        },
    ]
    files = {gid(771): ("photo.jpg", b"\xff\xd8JPEG\xff\xd9"), gid(772): ("quote.pdf", b"%PDF-1.4\n")}
    enquiries = [
        {
            "enquiryId": gid(781),
            "enquiryNumber": "E001",
            "companyName": "",
            "firstName": "Lou",
            "lastName": "Bell",
            "email": "lou@example.com",
            "mobile": "0400 333 444",
            "phone": "",
            "addressLine1": "9 High St",
            "addressLine2": "",
            "addressSuburb": "Perth",
            "addressState": "WA",
            "addressPostcode": "6000",
            "addressCountry": "Australia",
            "enquiryDescription": "Leaking tap",
            "leadSource": "Google",
            "customFields": [],
            "status": "Converted",
            "dateCreated": "2025-04-01T00:00:00.000Z",
            "convertedToQuoteNumber": "Q0003",
            "convertedToJobNumber": None,
        },
        {
            "enquiryId": gid(782),
            "enquiryNumber": "E002",
            "companyName": "Bell Co",
            "firstName": "",
            "lastName": "",
            "email": "not-an-email",
            "mobile": "",
            "phone": "",
            "addressLine1": "",
            "addressLine2": "",
            "addressSuburb": "",
            "addressState": "",
            "addressPostcode": "",
            "addressCountry": "",
            "enquiryDescription": "",
            "leadSource": {"id": gid(750), "name": "Google"},
            "customFields": [],
            "status": "New",
            "dateCreated": "2025-08-01T00:00:00.000Z",
            "convertedToQuoteNumber": None,
            "convertedToJobNumber": None,
        },
    ]
    form_responses = [
        {
            "formResponseId": gid(791),
            "formName": "JSA",
            "jobId": gid(301),
            "jobNumber": "J1001",
            "completedBy": "Sam Tech",
            "dateCompleted": "2025-06-09T03:00:00.000Z",
            "fields": [{"fieldCode": "SiteHazards", "value": "Dog"}, {"fieldCode": "PPE", "value": "Yes"}],
            "attachmentId": gid(771),
        },
    ]
    resources = {
        "customers": customers,
        "contacts": contacts,
        "jobs": jobs,
        "quotes": quotes,
        "invoices": invoices,
        "suppliers": suppliers,
        "supplier_invoices": supplier_invoices,
        "supplies": supplies,
        "kits": kits,
        "categories": categories,
        "labour_roles": labour_roles,
        "standard_sections": standard_sections,
        "standard_stages": standard_stages,
        "job_types": job_types,
        "users": users,
        "equipment": equipment,
        "notes": notes,
        "attachments": attachments,
        "enquiries": enquiries,
        "form_responses": form_responses,
    }
    return copy.deepcopy(resources), dict(files)
