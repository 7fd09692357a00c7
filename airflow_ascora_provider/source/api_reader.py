"""The REST API as a :class:`~airflow_ascora_provider.source.reader.SourceReader`.

The reader's only job is renaming: Ascora's camelCase API shape becomes the canonical field names of
:mod:`~airflow_ascora_provider.source.model`, and link objects (``siteCustomer{id,name}`` ...) become
the canonical relation ids. Coercion, issues about values, duplicates and hashing happen once, in
extraction, for every source alike.

Relations need a little knowledge the API does not hand over per record: whether a customer id is a
site or a billing customer, which job a child job number belongs to, which quote a job's quote number
names. The reader learns that from small id-only indexes (never full records), filled as a side
effect of reading the parent objects, which extraction reads first (dependency order). Only when an
object is read on its own does the reader walk the parent resource once just for the index.

What the API can and cannot give (see ``ascora-api.md`` §5):

* Real endpoints: customers, sites, contacts, quotes and their sections, jobs and their sections
  (child jobs), job types (*derived* from the ``jobType`` links on jobs and quotes, as the real API
  has no list), suppliers, supplier bills and their lines.
* Invoices: with extensions, the full history (``/Invoices/Invoices``, sandbox-only). Without them
  the only real source is ``GetInvoicesToSend``, which lists invoices **not yet sent to
  accounting**: this is *not* invoice history, and for a tenant synced to Xero/MYOB it is nearly
  empty. The full history then has to come from the Excel export or the accounting package.
* Extensions only (sandbox): quote line items, staff users, equipment, notes, attachments,
  enquiries and form responses. For a real tenant these come from the Excel exports.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from airflow_ascora_provider.hooks import ascora as api
from airflow_ascora_provider.hooks.ascora import AscoraExtensionDisabled, AscoraHook
from airflow_ascora_provider.source.coerce import (
    JOB_STATUS_CODES,
    QUOTE_STATUS_CODES,
    CoercionError,
    Issue,
    to_decimal,
)
from airflow_ascora_provider.source.reader import RawRecord

BASE_OBJECTS = (
    "customer",
    "site",
    "contact",
    "job_type",
    "quote",
    "quote_section",
    "job",
    "job_section",
    "supplier",
    "supplier_bill",
    "supplier_bill_line",
    "invoice",
    "invoice_line",
)
EXTENSION_OBJECTS = (
    "quote_line_item",
    "staff_user",
    "equipment",
    "note",
    "attachment",
    "enquiry",
    "form_response",
)
COMPANY_CUSTOMER_TYPES = frozenset({"commercial", "strata", "government"})
_CHILD_NUMBER = re.compile(r"^(.+)\.\d+$")
_ENTITY_TYPES = {
    "customer": "Customer",
    "site": "Site",
    "job": "Job",
    "quotation": "Quotation",
    "quote": "Quotation",
    "invoice": "Invoice",
    "enquiry": "Enquiry",
}


def _key(value: Any) -> str | None:
    """Ids and numbers compare case- and space-insensitively: GUID case is not data."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip().lower()
    return text or None


def _link_id(link: Any) -> Any:
    if isinstance(link, dict):
        return link.get("id") or link.get("contactId") or link.get("customerId")
    return None


def _name(value: Any) -> Any:
    """Ascora sends ``{id, name}`` links, but exports and some payloads give the bare name."""
    if isinstance(value, dict):
        return value.get("name")
    return value


def _parent_number(number: Any, top_level: Any = None) -> str | None:
    if top_level:
        return str(top_level)
    if isinstance(number, str) and (m := _CHILD_NUMBER.match(number.strip())):
        return m.group(1)
    return None


def _tax(record: dict[str, Any], inc: str = "totalIncTax", ex: str = "totalExTax") -> Any:
    """Ascora gives ex and inc tax totals; the model also wants the tax, which is their difference."""
    if record.get("totalTax") is not None:
        return record["totalTax"]
    total_inc, total_ex = record.get(inc), record.get(ex)
    if total_inc is None or total_ex is None:
        return None
    try:  # money typed as text ("$1,286.99") still gives a tax; coercion flags the text itself
        return to_decimal(total_inc) - to_decimal(total_ex)
    except (CoercionError, InvalidOperation):
        return None


def _status(text: Any, code: Any, codes: dict[int, str], field: str, issues: list[Issue]) -> Any:
    """Prefer the status text; fall back to the numeric code, flagging codes nobody has documented."""
    if isinstance(text, str) and text.strip():
        return text
    if code is None or code == "":
        return None
    try:
        number = int(code)
    except (TypeError, ValueError):
        return code
    if number in codes:
        return codes[number]
    issues.append(Issue(field, code, "unknown Ascora status code"))
    return None


class _Indexes:
    """Id-only lookups, filled while parents are read. ``done`` says which walks completed."""

    def __init__(self) -> None:
        self.billing: dict[str, str] = {}  # key -> billing customer id as Ascora spells it
        self.sites: dict[str, tuple[str, Any]] = {}  # key -> (site id, its billing customer id)
        self.jobs: dict[str, str] = {}  # top-level job number key -> job id
        self.quotes: dict[str, str] = {}  # top-level quote number key -> quote id
        self.users: dict[str, str] = {}  # full name key -> user id
        self.done: set[str] = set()


class AscoraApiReader:
    """Canonical raw records from the Ascora REST API, streamed page by page.

    ``extensions``: None follows the hook's ``enable_extensions``; False reads only what the real
    API has even when talking to the emulator (the honest "real tenant" view). ``invoices_prior_to``
    bounds the not-yet-sent invoice view when extensions are off (default: tomorrow, i.e. all).
    """

    name = "api"

    def __init__(
        self,
        hook: AscoraHook,
        *,
        extensions: bool | None = None,
        invoices_prior_to: dt.date | dt.datetime | str | None = None,
    ):
        self.hook = hook
        self._extensions = extensions
        self.invoices_prior_to = invoices_prior_to
        self._idx = _Indexes()

    @property
    def extensions(self) -> bool:
        if self._extensions is None:
            return self.hook.enable_extensions
        if self._extensions and not self.hook.enable_extensions:
            raise AscoraExtensionDisabled(
                "The API reader was asked for extension objects but the hook has extensions disabled; "
                "for a real tenant read those objects from the Excel export instead."
            )
        return self._extensions

    def objects(self) -> tuple[str, ...]:
        return BASE_OBJECTS + EXTENSION_OBJECTS if self.extensions else BASE_OBJECTS

    # -- images inline in notes (extraction moves them into attachments) ---------------------------

    def is_tenant_url(self, url: str) -> bool:
        """Only URLs on the tenant's own host are fetched: the hook sends the API key with every call."""
        mine, theirs = urlsplit(self.hook.base_url), urlsplit(url)
        return theirs.scheme in ("http", "https") and theirs.netloc.lower() == mine.netloc.lower()

    def fetch_url(self, url: str) -> bytes:
        """An image's bytes through the hook, so its retries, pacing, budget and read-only rule apply."""
        if not self.is_tenant_url(url):
            raise ValueError(f"{url} is not on the Ascora tenant's host {self.hook.base_url}")
        return self.hook._checked(self.hook._request("GET", url), url).content

    def iter_raw(self, object_name: str) -> Iterator[RawRecord]:
        if object_name not in self.objects():
            raise KeyError(
                f"the Ascora API reader cannot produce {object_name!r}; it offers {self.objects()}"
            )
        return getattr(self, f"_read_{object_name}")()

    # -- walking with origins and indexes -----------------------------------------------------------

    def _walk(
        self,
        records: Iterable[dict[str, Any]],
        origin: str,
        note: Callable[[dict[str, Any]], None] | None = None,
        done: str | None = None,
    ) -> Iterator[tuple[dict[str, Any], str]]:
        """Pair each record with ``api:<path>#p<page>``; mark ``done`` only when the walk really finished.

        The page is derived from the position, which is exact because every page but the last is full.
        """
        size = self.hook.page_size
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                continue
            if note is not None:
                note(record)
            yield record, f"{origin}#p{i // size + 1}"
        if done:
            self._idx.done.add(done)

    def _note_customer(self, record: dict[str, Any]) -> None:
        cid = record.get("customerId")
        key = _key(cid)
        if key is None:
            return
        billing = _link_id(record.get("billingCustomer"))
        if billing:
            self._idx.sites.setdefault(key, (cid, billing))
        else:
            self._idx.billing.setdefault(key, cid)

    def _customers(self, kind: str) -> Iterator[tuple[dict[str, Any], str]]:
        return self._walk(
            self.hook.iter_customers(kind),
            f"api:{api.CUSTOMERS}?SiteBillingType={kind}",
            self._note_customer,
            f"customers:{kind}",
        )

    def _ensure_customers(self) -> _Indexes:
        missing = [k for k in ("Billing", "Site") if f"customers:{k}" not in self._idx.done]
        if len(missing) == 2:
            for _ in self._customers("All"):
                pass
            self._idx.done.update({"customers:Billing", "customers:Site"})
        elif missing:
            for _ in self._customers(missing[0]):
                pass
        return self._idx

    def _note_job(self, record: dict[str, Any]) -> None:
        number = record.get("jobNumber")
        if (
            not _parent_number(number, record.get("topLevelJobNumber"))
            and _key(number)
            and record.get("jobId")
        ):
            self._idx.jobs.setdefault(_key(number), record["jobId"])

    def _ensure_jobs(self) -> _Indexes:
        if "jobs" not in self._idx.done:
            for _ in self._walk(
                self.hook.iter_jobs(include_child_jobs=False), f"api:{api.JOBS}", self._note_job, "jobs"
            ):
                pass
        return self._idx

    def _note_quote(self, record: dict[str, Any]) -> None:
        number = record.get("quoteNumber")
        if not _parent_number(number) and _key(number) and record.get("quoteId"):
            self._idx.quotes.setdefault(_key(number), record["quoteId"])

    def _ensure_quotes(self) -> _Indexes:
        if "quotes" not in self._idx.done:
            for _ in self._walk(self.hook.iter_quotes(), f"api:{api.QUOTES}", self._note_quote, "quotes"):
                pass
        return self._idx

    def _ensure_users(self) -> _Indexes:
        if self.extensions and "users" not in self._idx.done:
            for _ in self._walk(self.hook.ext_iter_users(), f"api:{api.EXT_USERS}", self._note_user, "users"):
                pass
        return self._idx

    def _note_user(self, record: dict[str, Any]) -> None:
        if _key(record.get("fullName")) and record.get("userId"):
            self._idx.users.setdefault(_key(record["fullName"]), record["userId"])

    # -- resolution ---------------------------------------------------------------------------------

    def _billing_of(self, ref: Any, field: str, issues: list[Issue]) -> Any:
        """The billing customer for a reference that should be one but may be a site (dirty data)."""
        idx = self._ensure_customers()
        key = _key(ref)
        if key is None:
            return None
        if key in idx.billing:
            return idx.billing[key]
        if key in idx.sites:
            _site_id, billing = idx.sites[key]
            issues.append(Issue(field, ref, "refers to a site; using that site's billing customer"))
            return idx.billing.get(_key(billing), billing)
        return ref  # unknown: kept so the audit reports the orphan rather than a silent blank

    def _parties(self, record: dict[str, Any], issues: list[Issue]) -> tuple[Any, Any]:
        """(customer_id, site_id) for a job or quote, following Ascora's own defaulting rules."""
        idx = self._ensure_customers()
        site_ref = _link_id(record.get("siteCustomer"))
        bill_ref = _link_id(record.get("billingCustomer"))
        site_key = _key(site_ref)
        site_id = None
        if site_key is not None:
            if site_key in idx.sites:
                site_id = idx.sites[site_key][0]
            elif site_key not in idx.billing:
                issues.append(
                    Issue("site_id", site_ref, "site customer not found among Ascora customers or sites")
                )
            # a site customer that is a billing customer: the job is at the customer's own address
        customer_id = self._billing_of(bill_ref, "customer_id", issues) if bill_ref else None
        if customer_id is None and site_key is not None:
            if site_key in idx.sites:
                billing = idx.sites[site_key][1]
                customer_id = idx.billing.get(_key(billing), billing)
            elif site_key in idx.billing:
                customer_id = idx.billing[site_key]
        return customer_id, site_id

    def _job_id(self, number: Any, issues: list[Issue] | None = None, field: str = "job_id") -> Any:
        key = _key(_parent_number(number) or number)
        if key is None:
            return None
        found = self._ensure_jobs().jobs.get(key)
        if found is None and issues is not None:
            issues.append(Issue(field, number, "job number not found in /Jobs/Jobs"))
        return found

    def _quote_id(self, number: Any, issues: list[Issue]) -> Any:
        key = _key(_parent_number(number) or number)
        if key is None:
            return None
        found = self._ensure_quotes().quotes.get(key)
        if found is None:
            issues.append(Issue("quote_id", number, "quote number not found in /Quotes/Quotes"))
        return found

    def _user_id(self, link: Any) -> Any:
        """Users are only listable through the extension; the name is what jobs reliably carry."""
        if not self.extensions or link is None:
            return None
        found = self._ensure_users().users.get(_key(_name(link)) or "")
        return found or _link_id(link)

    @staticmethod
    def _job_type_id(link: Any) -> Any:
        """A job type's id, or a key derived from its name when Ascora sends only the name."""
        if isinstance(link, dict) and link.get("id"):
            return link["id"]
        name = _key(_name(link))
        return f"name:{name}" if name else None

    def _entity(self, entity_type: Any, entity_id: Any) -> Any:
        """Ascora calls a site a Customer; the model separates them, so look the id up."""
        folded = _key(entity_type)
        canonical = _ENTITY_TYPES.get(folded or "", entity_type)
        if canonical == "Customer" and _key(entity_id) in self._ensure_customers().sites:
            return "Site"
        return canonical

    # -- customers, sites, contacts -----------------------------------------------------------------

    @staticmethod
    def _person(
        record: dict[str, Any],
        first: str = "contactFirstName",
        last: str = "contactLastName",
        email: str = "emailAddress",
        phone: str = "phoneNumber",
        mobile: str = "mobileNumber",
    ) -> dict:
        return {
            "first_name": record.get(first),
            "last_name": record.get(last),
            "email": record.get(email),
            "phone": record.get(phone),
            "mobile": record.get(mobile),
        }

    @staticmethod
    def _street(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "address_line1": record.get("streetLine1"),
            "address_line2": record.get("streetLine2"),
            "suburb": record.get("streetSuburb"),
            "state": record.get("streetState"),
            "postcode": record.get("streetPostcode"),
            "country": record.get("streetCountry"),
        }

    def _read_customer(self) -> Iterator[RawRecord]:
        for r, origin in self._customers("Billing"):
            customer_type = _name(r.get("customerType"))
            company = r.get("companyName")
            is_company = bool(company and str(company).strip()) or (
                _key(customer_type) in COMPANY_CUSTOMER_TYPES
            )
            yield RawRecord(
                {
                    "id": r.get("customerId"),
                    "customer_number": r.get("customerNumber"),
                    "name": r.get("customerName"),
                    "company_name": company,
                    "is_company": is_company,
                    **self._person(r),
                    "on_hold": r.get("onHold"),
                    **self._street(r),
                    "latitude": r.get("streetLatitude"),
                    "longitude": r.get("streetLongitude"),
                    "postal_address_line1": r.get("postalLine1"),
                    "postal_address_line2": r.get("postalLine2"),
                    "postal_suburb": r.get("postalSuburb"),
                    "postal_state": r.get("postalState"),
                    "postal_postcode": r.get("postalPostcode"),
                    "postal_country": r.get("postalCountry"),
                    "customer_type": customer_type,
                    "lead_source": _name(r.get("leadSource")),
                    "assigned_user_name": _name(r.get("assignedUser")),
                    "accounting_system": r.get("accountingSystem"),
                    "date_created": r.get("dateCreated"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
            )

    def _read_site(self) -> Iterator[RawRecord]:
        for r, origin in self._customers("Site"):
            yield RawRecord(
                {
                    "id": r.get("customerId"),
                    "customer_number": r.get("customerNumber"),
                    "name": r.get("customerName"),
                    "billing_customer_id": _link_id(r.get("billingCustomer")),
                    **self._person(r),
                    **self._street(r),
                    "latitude": r.get("streetLatitude"),
                    "longitude": r.get("streetLongitude"),
                    "customer_type": _name(r.get("customerType")),
                    "assigned_user_name": _name(r.get("assignedUser")),
                    "date_created": r.get("dateCreated"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
            )

    def _read_contact(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_contacts(), f"api:{api.CONTACTS}"):
            yield RawRecord(
                {
                    "id": r.get("contactId"),
                    "customer_id": r.get("customerId"),
                    **self._person(r, "firstName", "lastName"),
                    "fax": r.get("faxNumber"),
                    "is_default": r.get("defaultContact"),
                    "role": r.get("contactRole"),
                },
                origin,
            )

    # -- job types, quotes, jobs --------------------------------------------------------------------

    def _read_job_type(self) -> Iterator[RawRecord]:
        if self.extensions:
            for r, origin in self._walk(self.hook.ext_iter_job_types(), f"api:{api.EXT_JOB_TYPES}"):
                yield RawRecord(
                    {
                        "id": r.get("id") or r.get("jobTypeId"),
                        "name": r.get("name"),
                        "is_default": r.get("isDefault"),
                    },
                    origin,
                )
            return
        # The real API has no job type list: collect the distinct links on quotes and jobs, and fill the
        # quote and job indexes on the way, since the same walks are needed for those later anyway.
        seen: set[str] = set()
        walks = (
            self._walk(self.hook.iter_quotes(), f"api:{api.QUOTES}", self._note_quote, "quotes"),
            self._walk(
                self.hook.iter_jobs(include_child_jobs=True),
                f"api:{api.JOBS}?IncludeChildJobs=true",
                self._note_job,
                "jobs",
            ),
        )
        for walk in walks:
            for r, origin in walk:
                link = r.get("jobType")
                type_id = self._job_type_id(link)
                if type_id is None or _key(type_id) in seen:
                    continue
                seen.add(_key(type_id))
                yield RawRecord({"id": type_id, "name": _name(link)}, f"{origin}/jobType")

    def _read_quote(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_quotes(), f"api:{api.QUOTES}", self._note_quote, "quotes"):
            if _parent_number(r.get("quoteNumber")):
                continue  # a section listed on its own: it is read as a quote_section
            issues: list[Issue] = []
            customer_id, site_id = self._parties(r, issues)
            user = r.get("assignedUser")
            yield RawRecord(
                {
                    "id": r.get("quoteId"),
                    "quote_number": r.get("quoteNumber"),
                    "name": r.get("quoteName"),
                    "description": r.get("quoteDescription"),
                    "status": _status(
                        r.get("quoteStatusText"), r.get("quoteStatus"), QUOTE_STATUS_CODES, "status", issues
                    ),
                    "reason_for_loss": r.get("reasonForLoss"),
                    "date_created": r.get("dateCreated"),
                    "quote_date": r.get("quotationDate"),
                    "due_date": r.get("dueDate"),
                    "valid_until_date": r.get("validUntilDate"),
                    "pricing_method": r.get("pricingMethod"),
                    "total_ex_tax": r.get("totalExTax"),
                    "total_tax": _tax(r),
                    "total_inc_tax": r.get("totalIncTax"),
                    "purchase_order_number": r.get("purchaseOrderNumber"),
                    "client_order_number": r.get("clientOrderNumber"),
                    "address_line1": r.get("addressLine1"),
                    "address_line2": r.get("addressLine2"),
                    "suburb": r.get("suburb"),
                    "state": r.get("state"),
                    "postcode": r.get("postcode"),
                    "country": r.get("country"),
                    "job_type_id": self._job_type_id(r.get("jobType")),
                    "job_type_name": _name(r.get("jobType")),
                    "customer_id": customer_id,
                    "site_id": site_id,
                    "assigned_user_name": _name(user),
                    "assigned_user_id": self._user_id(user),
                    "team": _name(r.get("team")),
                    "variation_for_job_number": r.get("variationForJobNumber"),
                    "enquiry_id": r.get("enquiryId"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
                issues,
            )

    def _read_quote_section(self) -> Iterator[RawRecord]:
        seen: set[str] = set()
        for r, origin in self._walk(self.hook.iter_quotes(), f"api:{api.QUOTES}", self._note_quote, "quotes"):
            number = r.get("quoteNumber")
            parent = _parent_number(number)
            if parent:  # listed on its own: its parent comes from the number
                children = [(r, origin)]
                issues: list[Issue] = []
                parent_id = self._quote_id(parent, issues)
            else:
                children = [
                    (c, f"{origin}/childQuotes/{i}")
                    for i, c in enumerate(r.get("childQuotes") or ())
                    if isinstance(c, dict)
                ]
                issues, parent_id = [], r.get("quoteId")
            for order, (child, child_origin) in enumerate(children, 1):
                child_id = child.get("quoteId") or (
                    f"{parent_id}#{child.get('quoteNumber')}" if parent_id else None
                )
                if _key(child_id) in seen:
                    continue
                seen.add(_key(child_id) or "")
                yield RawRecord(
                    {
                        "id": child_id,
                        "quote_id": parent_id,
                        "quote_number": child.get("quoteNumber"),
                        "name": child.get("quoteName"),
                        "display_order": child.get("displayOrder")
                        if child.get("displayOrder") is not None
                        else (None if parent else order),
                        "total_ex_tax": child.get("totalExTax"),
                        "total_inc_tax": child.get("totalIncTax"),
                    },
                    child_origin,
                    list(issues),
                )

    def _read_quote_line_item(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_quotes(), f"api:{api.QUOTES}", self._note_quote, "quotes"):
            quote_id = r.get("quoteId")
            for n, item in enumerate((i for i in (r.get("items") or ()) if isinstance(i, dict)), 1):
                role = item.get("labourRole")
                yield RawRecord(
                    {
                        "id": item.get("itemId") or (f"{quote_id}#{n}" if quote_id else None),
                        "quote_id": quote_id,
                        "section_quote_number": item.get("sectionQuoteNumber"),
                        "line_number": n,
                        "item_type": item.get("itemType"),
                        "part_number": item.get("partNumber"),
                        "description": item.get("description"),
                        "quantity": item.get("quantity"),
                        "unit_of_measure": item.get("unitOfMeasure"),
                        "labour_role": _name(role),
                        "hours": item.get("hours"),
                        "unit_cost_ex_tax": item.get("unitCostExTax"),
                        "unit_sell_ex_tax": item.get("unitSellExTax"),
                        "total_ex_tax": item.get("totalExTax"),
                        "total_inc_tax": item.get("totalIncTax"),
                        "is_taxable": item.get("isTaxable"),
                    },
                    f"{origin}/items/{n - 1}",
                )

    def _read_job(self) -> Iterator[RawRecord]:
        walk = self._walk(
            self.hook.iter_jobs(include_child_jobs=False), f"api:{api.JOBS}", self._note_job, "jobs"
        )
        for r, origin in walk:
            if _parent_number(r.get("jobNumber"), r.get("topLevelJobNumber")):
                continue  # defensive: the server already left child jobs out
            issues: list[Issue] = []
            customer_id, site_id = self._parties(r, issues)
            user = r.get("assignedUser")
            quote_number = r.get("quoteNumber")
            yield RawRecord(
                {
                    "id": r.get("jobId"),
                    "job_number": r.get("jobNumber"),
                    "name": r.get("jobName"),
                    "description": r.get("jobDescription"),
                    "work_undertaken": r.get("workUndertaken"),
                    "status": _status(
                        r.get("jobStatusText"), r.get("jobStatus"), JOB_STATUS_CODES, "status", issues
                    ),
                    "date_created": r.get("dateCreated"),
                    "completed_date": r.get("completedDate"),
                    "booking_date": r.get("bookingDate"),
                    "expected_date": r.get("expectedDate"),
                    "pricing_method": r.get("pricingMethod"),
                    "total_ex_tax": r.get("totalExTax"),
                    "total_tax": _tax(r),
                    "total_inc_tax": r.get("totalIncTax"),
                    "purchase_order_number": r.get("purchaseOrderNumber"),
                    "client_order_number": r.get("clientOrderNumber"),
                    "address_line1": r.get("addressLine1"),
                    "address_line2": r.get("addressLine2"),
                    "suburb": r.get("suburb"),
                    "state": r.get("state"),
                    "postcode": r.get("postcode"),
                    "country": r.get("country"),
                    "latitude": r.get("latitude"),
                    "longitude": r.get("longitude"),
                    "job_type_id": self._job_type_id(r.get("jobType")),
                    "job_type_name": _name(r.get("jobType")),
                    "customer_id": customer_id,
                    "site_id": site_id,
                    "site_contact_id": _link_id(r.get("siteContact")),
                    "billing_contact_id": _link_id(r.get("billingContact")),
                    "quote_id": self._quote_id(quote_number, issues) if quote_number else None,
                    "assigned_user_name": _name(user),
                    "assigned_user_id": self._user_id(user),
                    "team": _name(r.get("team")),
                    "priority": _name(r.get("priority")),
                    "estimated_duration_hours": r.get("estimatedDuration"),
                    "expected_duration_hours": r.get("expectedDuration"),
                    "invoice_number": r.get("invoiceNumber"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
                issues,
            )

    def _read_job_section(self) -> Iterator[RawRecord]:
        walk = self._walk(
            self.hook.iter_jobs(include_child_jobs=True), f"api:{api.JOBS}?IncludeChildJobs=true"
        )
        for r, origin in walk:
            parent = _parent_number(r.get("jobNumber"), r.get("topLevelJobNumber"))
            if not parent:
                continue
            issues: list[Issue] = []
            user = r.get("assignedUser")
            display_order = r.get("displayOrder")
            if display_order is None and isinstance(r.get("jobNumber"), str) and "." in r["jobNumber"]:
                display_order = r["jobNumber"].rsplit(".", 1)[1]  # J1042.03 is the third section
            yield RawRecord(
                {
                    "id": r.get("jobId"),
                    "job_id": self._job_id(parent, issues),
                    "job_number": r.get("jobNumber"),
                    "name": r.get("jobName"),
                    "description": r.get("jobDescription"),
                    "status": _status(
                        r.get("jobStatusText"), r.get("jobStatus"), JOB_STATUS_CODES, "status", issues
                    ),
                    "display_order": display_order,
                    "date_created": r.get("dateCreated"),
                    "completed_date": r.get("completedDate"),
                    "total_ex_tax": r.get("totalExTax"),
                    "total_inc_tax": r.get("totalIncTax"),
                    "assigned_user_name": _name(user),
                    "assigned_user_id": self._user_id(user),
                },
                origin,
                issues,
            )

    # -- suppliers and bills ------------------------------------------------------------------------

    def _read_supplier(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_suppliers(), f"api:{api.SUPPLIERS}"):
            yield RawRecord(
                {
                    "id": r.get("supplierId"),
                    "supplier_number": r.get("supplierNumber"),
                    "name": r.get("name"),
                    "business_number": r.get("businessNumber"),
                    **self._person(r, phone="phone", mobile="mobile"),
                    "fax": r.get("fax"),
                    "notes": r.get("notes"),
                    "expense_account": r.get("expenseAccount"),
                    **self._street(r),
                },
                origin,
            )

    def _read_supplier_bill(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_supplier_invoices(), f"api:{api.SUPPLIER_INVOICES}"):
            reference = r.get("reference")
            yield RawRecord(
                {
                    "id": r.get("supplierInvoiceId"),
                    "supplier_id": _link_id(r.get("supplier")),
                    "tracking_number": r.get("trackingNumber"),
                    "reference": reference,
                    "type": r.get("type"),
                    "invoice_date": r.get("invoiceDate"),
                    "due_date": r.get("dueDate"),
                    "created_on": r.get("createdOn"),
                    "accepted": r.get("accepted"),
                    "account_code": r.get("accountCode"),
                    "is_expense": r.get("isExpense"),
                    "sent_to_accounts": r.get("sentToAccounts"),
                    "total_ex_tax": r.get("totalAmountExTax"),
                    "total_inc_tax": r.get("totalAmountIncTax"),
                    # The reference is "PO or job number": link it only when it names a job we know.
                    "job_id": self._job_id(reference) if isinstance(reference, str) else None,
                },
                origin,
            )

    def _read_supplier_bill_line(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.iter_supplier_invoices(), f"api:{api.SUPPLIER_INVOICES}"):
            bill_id = r.get("supplierInvoiceId")
            for n, line in enumerate((x for x in (r.get("lines") or ()) if isinstance(x, dict)), 1):
                yield RawRecord(
                    {
                        "id": line.get("supplierInvoiceLineId")
                        or line.get("lineId")
                        or (f"{bill_id}#{n}" if bill_id else None),
                        "supplier_bill_id": bill_id,
                        "line_number": n,
                        "description": line.get("description"),
                        "part_number": line.get("partNumber"),
                        "quantity": line.get("quantity"),
                        "unit_cost_ex_tax": line.get("unitCostExTax"),
                        "total_ex_tax": line.get("totalAmountExTax"),
                        "total_inc_tax": line.get("totalAmountIncTax"),
                        "account_code": line.get("accountCode"),
                        "reference": line.get("reference"),
                        "is_taxable": line.get("isTaxable"),
                    },
                    f"{origin}/lines/{n - 1}",
                )

    # -- invoices -----------------------------------------------------------------------------------

    def _invoices(self) -> Iterator[tuple[dict[str, Any], str]]:
        if self.extensions:
            return self._walk(self.hook.ext_iter_invoices(), f"api:{api.EXT_INVOICES}")
        prior_to = self.invoices_prior_to or (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1))
        # One unpaged answer: every record is on "page 1".
        return (
            (r, f"api:{api.INVOICES_TO_SEND}")
            for r in self.hook.invoices_to_send(prior_to)
            if isinstance(r, dict)
        )

    def _read_invoice(self) -> Iterator[RawRecord]:
        for r, origin in self._invoices():
            issues: list[Issue] = []
            job_id = r.get("jobId")
            if not job_id and r.get("jobNumber"):
                job_id = self._job_id(r["jobNumber"], issues)
            yield RawRecord(
                {
                    "id": r.get("invoiceId"),
                    "invoice_number": r.get("invoiceNumber"),
                    "invoice_date": r.get("invoiceDate"),
                    "due_date": r.get("dueDate"),
                    "status": r.get("status"),
                    "job_id": job_id,
                    "job_number": r.get("jobNumber"),
                    "customer_id": self._billing_of(
                        _link_id(r.get("billingCustomer")), "customer_id", issues
                    ),
                    "reference": r.get("reference"),
                    "total_ex_tax": r.get("totalExTax"),
                    "total_tax": r.get("totalTax") if r.get("totalTax") is not None else _tax(r),
                    "total_inc_tax": r.get("totalIncTax"),
                    "amount_paid": r.get("amountPaid"),
                    "amount_outstanding": r.get("amountOutstanding"),
                    "sent_to_accounts": r.get("sentToAccounts"),
                    "accounting_system": r.get("accountingSystem"),
                    "pdf_attachment_id": r.get("pdfAttachmentId"),
                    "custom_fields": r.get("invoiceCustomFields") or r.get("customFields"),
                },
                origin,
                issues,
            )

    def _read_invoice_line(self) -> Iterator[RawRecord]:
        for r, origin in self._invoices():
            invoice_id = r.get("invoiceId")
            for n, line in enumerate((x for x in (r.get("lines") or ()) if isinstance(x, dict)), 1):
                yield RawRecord(
                    {
                        "id": line.get("invoiceLineId")
                        or line.get("lineId")
                        or (f"{invoice_id}#{n}" if invoice_id else None),
                        "invoice_id": invoice_id,
                        "line_number": n,
                        "description": line.get("description"),
                        "part_number": line.get("partNumber"),
                        "quantity": line.get("quantity"),
                        "unit_price_ex_tax": line.get("unitPriceExTax"),
                        "account_code": line.get("accountCode"),
                        "tax_code": line.get("taxCode"),
                        "total_ex_tax": line.get("totalExTax"),
                        "tax": line.get("tax"),
                    },
                    f"{origin}/lines/{n - 1}",
                )

    # -- extension objects --------------------------------------------------------------------------

    def _read_staff_user(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(
            self.hook.ext_iter_users(), f"api:{api.EXT_USERS}", self._note_user, "users"
        ):
            yield RawRecord(
                {
                    "id": r.get("userId"),
                    "full_name": r.get("fullName"),
                    **self._person(r, "firstName", "lastName"),
                    "is_active": r.get("isActive"),
                    "user_type": r.get("userType"),
                    "labour_role": _name(r.get("labourRole")),
                    "team": _name(r.get("team")),
                },
                origin,
            )

    def _read_equipment(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.ext_iter_equipment(), f"api:{api.EXT_EQUIPMENT}"):
            issues: list[Issue] = []
            owner = r.get("customerId")
            site_id = r.get("siteCustomerId")
            if not site_id and _key(owner) in self._ensure_customers().sites:
                site_id = owner  # equipment recorded against a site: the site is where it is
            customer_id = self._billing_of(owner, "customer_id", []) if owner else None
            yield RawRecord(
                {
                    "id": r.get("equipmentId"),
                    "customer_id": customer_id,
                    "site_id": site_id,
                    "name": r.get("name"),
                    "make": r.get("make"),
                    "model": r.get("model"),
                    "serial_number": r.get("serialNumber"),
                    "location": r.get("location"),
                    "install_date": r.get("installDate"),
                    "warranty_expiry": r.get("warrantyExpiry"),
                    "notes": r.get("notes"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
                issues,
            )

    def _read_note(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.ext_iter_notes(), f"api:{api.EXT_NOTES}"):
            yield RawRecord(
                {
                    "id": r.get("noteId"),
                    "entity_type": self._entity(r.get("entityType"), r.get("entityId")),
                    "entity_id": r.get("entityId"),
                    "content": r.get("noteContent"),
                    "activity_type": r.get("activityType") or r.get("noteType"),
                    "created_by_name": r.get("createdByName"),
                    "date_created": r.get("dateCreated"),
                },
                origin,
            )

    def _read_attachment(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.ext_iter_attachments(), f"api:{api.EXT_ATTACHMENTS}"):
            attachment_id = r.get("attachmentId")
            fetch = (
                functools.partial(self.hook.ext_download_attachment, attachment_id) if attachment_id else None
            )
            yield RawRecord(
                {
                    "id": attachment_id,
                    "entity_type": self._entity(r.get("entityType"), r.get("entityId")),
                    "entity_id": r.get("entityId"),
                    "file_name": r.get("fileName"),
                    "content_type": r.get("contentType"),
                    "size_bytes": r.get("sizeBytes"),
                    "category": r.get("category"),
                    "date_created": r.get("dateCreated"),
                    "created_by_name": r.get("createdByName"),
                },
                origin,
                fetch=fetch,
            )

    def _read_enquiry(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.ext_iter_enquiries(), f"api:{api.EXT_ENQUIRIES}"):
            yield RawRecord(
                {
                    "id": r.get("enquiryId"),
                    "enquiry_number": r.get("enquiryNumber"),
                    "company_name": r.get("companyName"),
                    **self._person(r, "firstName", "lastName", "email", "phone", "mobile"),
                    "address_line1": r.get("addressLine1"),
                    "address_line2": r.get("addressLine2"),
                    "suburb": r.get("addressSuburb"),
                    "state": r.get("addressState"),
                    "postcode": r.get("addressPostcode"),
                    "country": r.get("addressCountry"),
                    "description": r.get("enquiryDescription"),
                    "lead_source": _name(r.get("leadSource")),
                    "status": r.get("status"),
                    "date_created": r.get("dateCreated"),
                    "converted_to_quote_number": r.get("convertedToQuoteNumber"),
                    "converted_to_job_number": r.get("convertedToJobNumber"),
                    "custom_fields": r.get("customFields"),
                },
                origin,
            )

    def _read_form_response(self) -> Iterator[RawRecord]:
        for r, origin in self._walk(self.hook.ext_iter_form_responses(), f"api:{api.EXT_FORM_RESPONSES}"):
            issues: list[Issue] = []
            fields = r.get("fields")
            answers = fields
            if isinstance(fields, list):  # [{fieldCode, value}] -> {fieldCode: value}; coerce makes it JSON
                answers = {
                    str(f.get("fieldCode") or f.get("fieldName")): f.get("value", f.get("fieldValue"))
                    for f in fields
                    if isinstance(f, dict)
                }
            job_id = r.get("jobId") or (
                self._job_id(r.get("jobNumber"), issues) if r.get("jobNumber") else None
            )
            yield RawRecord(
                {
                    "id": r.get("formResponseId"),
                    "form_name": r.get("formName"),
                    "job_id": job_id,
                    "job_number": r.get("jobNumber"),
                    "completed_by": r.get("completedBy"),
                    "date_completed": r.get("dateCompleted"),
                    "answers": answers,
                    "attachment_id": r.get("attachmentId"),
                },
                origin,
                issues,
            )
