"""Ascora-style Excel (or CSV) exports written from a generated tenant's API-shape JSONL.

Why: for much of a tenant (invoice history, equipment, notes, attachments, form answers, quote line
items) the UI's Excel exports are the only realistic way out of Ascora (reference §0.5, §5). The
export reader (:mod:`airflow_ascora_provider.source.export_reader`) must therefore be tested against
workbooks that look like Ascora's, built from the *same* tenant the API emulator serves, so the two
ways out can be compared record by record.

Layout (documented for users in ``docs/ascora-exports.md``):

* One workbook per area under ``<tenant>/exports/``: ``customers.xlsx`` (Customers, Contacts,
  Equipment), ``jobs.xlsx`` (Jobs, Supply, Labour), ``quotes.xlsx`` (Quotes, Supply, Labour),
  ``invoices.xlsx`` (Invoices, Invoice Lines), ``staff.xlsx`` (Staff), ``notes.xlsx`` (Notes),
  ``attachments.xlsx`` (Attachments, files copied to ``exports/attachments/<id>/<name>``),
  ``form_responses.xlsx`` (Form Responses), ``enquiries.xlsx`` (Enquiries), ``supplier_bills.xlsx``
  (Suppliers, Bills, Bill Lines).
* Headings are UPPER-CASE like Ascora's import templates (§3). Jobs use columns A-AD and quotes
  A-AB exactly as the templates, then the ID columns our exports add, then one column per custom
  field. References are by *name* (Ascora's import keys customers by name); the ID columns make them
  unambiguous when present.
* Dates are real Excel dates (UTC wall-clock, whole seconds), except the text a dirty tenant stored in
  a date field, which is written as the text it is.
* ``fmt="csv"`` writes one ``<workbook>__<Sheet>.csv`` per sheet (UTF-8 with BOM, same headings,
  dates as ``DD/MM/YYYY[ HH:MM:SS]``).
* Nothing varies between runs except, for a dirty tenant, a few headings renamed the way real
  exports drift (``Job  number``, ``job_status``, ``Site Customer ``...) plus an unknown
  ``Old System Ref`` column, so the reader's tolerant heading matching is exercised.

Everything streams: openpyxl ``write_only`` workbooks, one JSONL line at a time. The only in-memory
state is a customer id -> name index (contacts and equipment carry only the customer's id) and the
small staff / supplies / labour-role lists. Workbooks are reproducible: fixed zip timestamps and
document properties derived from the tenant's ``generated_at``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import re
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from airflow_ascora_provider.sandbox.generate import JOB_STATUS_TEXT, QUOTE_STATUS_TEXT

# ---------------------------------------------------------------------------------------------------
# The layout: workbook -> sheet -> headings (custom-field columns are appended at run time)

# fmt: off
JOB_TEMPLATE_HEADINGS = (  # Ascora "Importing Jobs" template, columns A-AD
    "JOB NUMBER", "JOB NAME", "IS SECTION/STAGE", "JOB STATUS", "DATE CREATED", "QUOTE NUMBER",
    "SITE CUSTOMER", "SITE CONTACT", "BILLING CUSTOMER", "BILLING CONTACT", "ADDRESS LINE 1",
    "ADDRESS LINE 2", "SUBURB", "STATE", "POSTCODE", "PRICING METHOD", "TOTAL AMOUNT EX TAX", "TOTAL TAX",
    "JOB DESCRIPTION", "WORK UNDERTAKEN", "PURCHASE ORDER", "CLIENT ORDER NUMBER", "JOB TYPE", "ASSIGNED TO",
    "BOOKING DATE", "EXPECTED DATE", "EXPECTED DURATION", "INVOICE NUMBER", "TEAM", "ESTIMATED DURATION",
)
JOB_EXTRA_HEADINGS = (  # ours: ids that make references unambiguous, and API fields the template lacks
    "JOB ID", "SITE CUSTOMER ID", "BILLING CUSTOMER ID", "PARENT JOB NUMBER", "SITE CONTACT ID",
    "BILLING CONTACT ID", "COMPLETED DATE", "COUNTRY", "LATITUDE", "LONGITUDE", "DISPLAY ORDER",
)
QUOTE_TEMPLATE_HEADINGS = (  # Ascora "Importing Quotes" template, columns A-AB
    "QUOTE NUMBER", "QUOTE NAME", "IS SECTION/STAGE", "QUOTE STATUS", "DATE CREATED", "QUOTE DATE",
        "DUE DATE",
    "VALID UNTIL DATE", "SITE CUSTOMER", "SITE CONTACT", "BILLING CUSTOMER", "BILLING CONTACT",
        "ADDRESS LINE 1",
    "ADDRESS LINE 2", "SUBURB", "STATE", "POSTCODE", "PRICING METHOD", "TOTAL AMOUNT EX TAX", "TOTAL TAX",
    "QUOTE DESCRIPTION", "PURCHASE ORDER", "CLIENT ORDER NUMBER", "JOB TYPE", "ASSIGNED TO", "BOOKING DATE",
    "TEAM", "VARIATION FOR JOB NUMBER",
)
QUOTE_EXTRA_HEADINGS = ("QUOTE ID", "SITE CUSTOMER ID", "BILLING CUSTOMER ID", "PARENT QUOTE NUMBER",
                        "REASON FOR LOSS", "COUNTRY", "DISPLAY ORDER")

LAYOUT: dict[str, dict[str, tuple[str, ...]]] = {
    "customers": {
        "Customers": (
            "CUSTOMER NUMBER", "CUSTOMER NAME", "COMPANY NAME", "CUSTOMER TYPE", "BILLING CUSTOMER",
                "FIRST NAME",
            "LAST NAME", "EMAIL", "PHONE", "MOBILE", "ADDRESS LINE 1", "ADDRESS LINE 2", "SUBURB", "STATE",
            "POSTCODE", "COUNTRY", "LATITUDE", "LONGITUDE", "POSTAL ADDRESS LINE 1", "POSTAL ADDRESS LINE 2",
            "POSTAL SUBURB", "POSTAL STATE", "POSTAL POSTCODE", "POSTAL COUNTRY", "LEAD SOURCE",
                "ASSIGNED TO",
            "ON HOLD", "ACCOUNTING SYSTEM", "DATE CREATED", "CUSTOMER ID", "BILLING CUSTOMER ID",
        ),
        "Contacts": ("CUSTOMER", "FIRST NAME", "LAST NAME", "EMAIL", "PHONE", "MOBILE", "FAX", "ROLE",
                     "DEFAULT CONTACT", "CONTACT ID", "CUSTOMER ID"),
        "Equipment": ("CUSTOMER", "SITE", "NAME", "MAKE", "MODEL", "SERIAL NUMBER", "LOCATION",
                      "INSTALL DATE",
                      "WARRANTY EXPIRY", "NOTES", "EQUIPMENT ID", "CUSTOMER ID", "SITE ID"),
    },
    "jobs": {
        "Jobs": JOB_TEMPLATE_HEADINGS + JOB_EXTRA_HEADINGS,
        "Supply": ("JOB NUMBER", "PART NUMBER", "DESCRIPTION", "QUANTITY", "UNIT COST EX TAX",
                   "UNIT SELL EX TAX",
                   "TOTAL EX TAX"),
        "Labour": ("JOB NUMBER", "LABOUR ROLE", "USER", "DESCRIPTION", "HOURS", "RATE", "TOTAL EX TAX"),
    },
    "quotes": {
        "Quotes": QUOTE_TEMPLATE_HEADINGS + QUOTE_EXTRA_HEADINGS,
        "Supply": ("QUOTE NUMBER", "SECTION NUMBER", "LINE NUMBER", "ITEM TYPE", "PART NUMBER", "DESCRIPTION",
                   "QUANTITY", "UNIT OF MEASURE", "UNIT COST EX TAX", "UNIT SELL EX TAX", "TOTAL EX TAX",
                   "TOTAL INC TAX", "TAXABLE", "ITEM ID", "QUOTE ID"),
        "Labour": ("QUOTE NUMBER", "SECTION NUMBER", "LINE NUMBER", "ITEM TYPE", "LABOUR ROLE", "DESCRIPTION",
                   "HOURS", "RATE", "UNIT COST EX TAX", "TOTAL EX TAX", "TOTAL INC TAX", "TAXABLE", "ITEM ID",
                   "QUOTE ID"),
    },
    "invoices": {
        "Invoices": ("INVOICE NUMBER", "INVOICE DATE", "DUE DATE", "STATUS", "JOB NUMBER", "BILLING CUSTOMER",
                     "REFERENCE", "TOTAL EX TAX", "TOTAL TAX", "TOTAL INC TAX", "AMOUNT PAID",
                         "AMOUNT OUTSTANDING",
                     "SENT TO ACCOUNTS", "ACCOUNTING SYSTEM", "INVOICE ID", "JOB ID", "BILLING CUSTOMER ID"),
        "Invoice Lines": ("INVOICE NUMBER", "LINE NUMBER", "DESCRIPTION", "PART NUMBER", "QUANTITY",
                          "UNIT PRICE EX TAX", "ACCOUNT CODE", "TAX CODE", "TOTAL EX TAX", "TAX",
                              "INVOICE ID"),
    },
    "staff": {
        "Staff": ("FULL NAME", "FIRST NAME", "LAST NAME", "EMAIL", "MOBILE", "ACTIVE", "USER TYPE",
                  "LABOUR ROLE",
                  "TEAM", "USER ID"),
    },
    "notes": {
        "Notes": ("ENTITY TYPE", "ENTITY ID", "NOTE", "ACTIVITY TYPE", "CREATED BY", "DATE CREATED",
                  "NOTE ID"),
    },
    "attachments": {
        "Attachments": ("ENTITY TYPE", "ENTITY ID", "FILE NAME", "CONTENT TYPE", "SIZE BYTES", "CATEGORY",
                        "DATE CREATED", "FILE PATH", "ATTACHMENT ID", "UPLOADED BY"),
    },
    "form_responses": {
        "Form Responses": ("RESPONSE ID", "FORM NAME", "JOB NUMBER", "COMPLETED BY", "DATE COMPLETED",
                           "JOB ID",
                           "ATTACHMENT ID"),
    },
    "enquiries": {
        "Enquiries": ("ENQUIRY NUMBER", "DATE CREATED", "STATUS", "COMPANY NAME", "FIRST NAME",
                      "LAST NAME", "EMAIL",
                      "MOBILE", "PHONE", "ADDRESS LINE 1", "ADDRESS LINE 2", "SUBURB", "STATE", "POSTCODE",
                      "COUNTRY", "DESCRIPTION", "LEAD SOURCE", "CONVERTED TO QUOTE NUMBER",
                      "CONVERTED TO JOB NUMBER", "ENQUIRY ID"),
    },
    "supplier_bills": {
        "Suppliers": ("SUPPLIER NUMBER", "NAME", "ABN", "CONTACT FIRST NAME", "CONTACT LAST NAME",
                      "EMAIL", "PHONE",
                      "MOBILE", "FAX", "NOTES", "EXPENSE ACCOUNT", "ADDRESS LINE 1", "ADDRESS LINE 2",
                          "SUBURB",
                      "STATE", "POSTCODE", "SUPPLIER ID"),
        "Bills": ("SUPPLIER", "TRACKING NUMBER", "REFERENCE", "TYPE", "INVOICE DATE", "DUE DATE",
                  "CREATED ON",
                  "ACCEPTED", "ACCOUNT CODE", "IS EXPENSE", "SENT TO ACCOUNTS", "TOTAL EX TAX",
                      "TOTAL INC TAX",
                  "BILL ID", "SUPPLIER ID"),
        "Bill Lines": ("TRACKING NUMBER", "LINE NUMBER", "DESCRIPTION", "PART NUMBER", "QUANTITY",
                       "UNIT COST EX TAX", "TOTAL EX TAX", "TOTAL INC TAX", "ACCOUNT CODE", "REFERENCE",
                           "TAXABLE",
                       "BILL ID"),
    },
}

# fmt: on
# Dirty tenants: headings renamed the way hand-edited or older exports drift, and an unknown column.
DIRTY_RENAMES: dict[tuple[str, str], dict[str, str]] = {
    ("jobs", "Jobs"): {
        "JOB NUMBER": "Job  number",
        "JOB STATUS": "job_status",
        "SITE CUSTOMER": "Site Customer ",
        "ASSIGNED TO": "Technician",
    },
    ("customers", "Customers"): {"EMAIL": "E-mail Address", "CUSTOMER NAME": "Customer_Name"},
    ("quotes", "Quotes"): {"QUOTE STATUS": "Status"},
}
UNKNOWN_COLUMN = "Old System Ref"
DIRTY_UNKNOWN_COLUMN_SHEETS = (("jobs", "Jobs"), ("customers", "Contacts"))

# Ascora's accepted import synonyms (Importing Jobs status table), used in ~10% of rows.
JOB_STATUS_VARIANTS = {
    "In Progress": ("Started", "Open"),
    "Completed": ("Finished",),
    "Cancelled": ("Rejected",),
    "Deferred": ("Could Not Complete",),
    "Booked": ("Scheduled", "Assigned", "Dispatched", "Accepted"),
    "Unscheduled": ("Not Scheduled",),
}
QUOTE_STATUS_VARIANTS = {"Won": ("Accepted",), "Sent To Customer": ("Sent",), "Lost": ("Declined",)}

EXCEL_MAX_CHARS = 32767
_ILLEGAL = re.compile(
    r"[\000-\010]|[\013-\014]|[\016-\037]"
)  # what an xlsx cell cannot hold (openpyxl's rule)
_FILE_BATCH = 512


def csv_name(workbook: str, sheet: str) -> str:
    """``jobs``, ``Jobs`` -> ``jobs__Jobs.csv``; sheet names keep spaces (``invoices__Invoice Lines.csv``)."""
    return f"{workbook}__{sheet}.csv"


# ---------------------------------------------------------------------------------------------------
# Value helpers


def _clean_text(text: str) -> str:
    """What both formats store for a text cell: no characters an xlsx cannot hold, Excel's length cap.

    Applied to CSV too so an xlsx export and a CSV export of the same tenant read back identically.
    """
    if _ILLEGAL.search(text):
        text = _ILLEGAL.sub("", text)
    if len(text) > EXCEL_MAX_CHARS:
        text = text[:EXCEL_MAX_CHARS]
    return text


def _when(value: Any, *, date_only: bool = False) -> Any:
    """API timestamp text -> naive UTC datetime (whole seconds) or date; unreadable text stays text."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value  # a dirty tenant's "3rd of March": exported as the text it is
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    if date_only:
        return parsed.date()
    return parsed.replace(microsecond=0)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    text = str(value).replace("$", "").replace(",", "").strip()
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _tax(ex: Any, inc: Any) -> float | None:
    a, b = _decimal(ex), _decimal(inc)
    if a is None or b is None:
        return None
    return float(b - a)


def _name(link: Any) -> str | None:
    if isinstance(link, dict):
        return link.get("name")
    return link


def _id(link: Any) -> str | None:
    return link.get("id") if isinstance(link, dict) else None


def _yes(value: Any) -> str | None:
    if value is None:
        return None
    return "Yes" if value else "No"


def _fields(items: Any) -> dict[str, Any]:
    """``[{fieldName, fieldValue}]`` -> {name: value} (first wins on a repeated name)."""
    out: dict[str, Any] = {}
    for item in items or ():
        if isinstance(item, dict):
            name = item.get("fieldName") or item.get("fieldCode")
            if name and name not in out:
                out[name] = item.get("fieldValue", item.get("value"))
    return out


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _collect_names(path: Path, key: str, marker: str) -> list[str]:
    """Custom-field names (or form field codes) in first-seen order: one cheap pre-pass.

    Write-only workbooks need every heading before the first row, so the custom-field columns must be
    known up front. Lines without ``marker`` are skipped without parsing, which keeps this fast.
    """
    names: dict[str, None] = {}
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if marker not in line:
                continue
            record = json.loads(line)
            for name in _fields(record.get(key)):
                names.setdefault(name, None)
    return list(names)


# ---------------------------------------------------------------------------------------------------
# Sinks: xlsx (write-only openpyxl) and csv


class _FixedTimeZip(zipfile.ZipFile):
    """A ZipFile that stamps every member with one fixed time, so equal content gives equal bytes.

    It also adds the ``<dimension ref="A1:X9"/>`` element openpyxl's write-only sheets lack. Readers
    use it to size a sheet; without it openpyxl's read-only loader parses every whole sheet just to
    find out, which costs a full pass and memory growing with the rows.
    """

    fixed: tuple[int, int, int, int, int, int] = (2026, 1, 1, 0, 0, 0)
    sheets: Sequence[_XlsxSheet] = ()

    def writestr(self, zinfo_or_arcname, data, compress_type=None, compresslevel=None):
        if not isinstance(zinfo_or_arcname, zipfile.ZipInfo):
            zinfo_or_arcname = zipfile.ZipInfo(zinfo_or_arcname, date_time=self.fixed)
            zinfo_or_arcname.compress_type = self.compression
            zinfo_or_arcname.external_attr = 0o600 << 16
        return super().writestr(zinfo_or_arcname, data, compress_type, compresslevel)

    def write(self, filename, arcname=None, compress_type=None, compresslevel=None):
        info = zipfile.ZipInfo.from_file(filename, arcname)
        info.date_time = self.fixed
        info.compress_type = self.compression if compress_type is None else compress_type
        info.external_attr = 0o600 << 16
        # sheet paths are assigned by openpyxl during save, so match them only now
        ref = next((s.dimension for s in self.sheets if s.ws.path.lstrip("/") == info.filename), None)
        with open(filename, "rb") as src, self.open(info, "w", force_zip64=True) as dest:
            if ref:
                head = src.read(1 << 16)
                marker = head.find(b"</sheetPr>")
                cut = (
                    marker + len(b"</sheetPr>")
                    if marker >= 0
                    else head.find(b">", head.find(b"<worksheet")) + 1
                )
                dest.write(head[:cut] + f'<dimension ref="{ref}"/>'.encode("ascii") + head[cut:])
            shutil.copyfileobj(src, dest, 1 << 20)


class _XlsxSheet:
    def __init__(self, ws: Any):
        self.ws = ws
        from openpyxl.cell import WriteOnlyCell

        self._cell = WriteOnlyCell
        self.rows = 0
        self.width = 0

    @property
    def dimension(self) -> str:
        from openpyxl.utils import get_column_letter

        return f"A1:{get_column_letter(max(1, self.width))}{max(1, self.rows)}"

    def append(self, values: Sequence[Any]) -> None:
        self.rows += 1
        self.width = max(self.width, len(values))
        row = []
        for v in values:
            if isinstance(v, str):
                v = _clean_text(v)
                if v.startswith("="):  # text, never a formula: a real export would not run it either
                    cell = self._cell(self.ws, value=v)
                    cell.data_type = "s"
                    v = cell
            row.append(v)
        self.ws.append(row)


class _XlsxBook:
    def __init__(self, path: Path, stamp: dt.datetime):
        from openpyxl import Workbook

        self.path = path
        self.wb = Workbook(write_only=True)
        self.wb.properties.creator = "ascora-sandbox"
        self.wb.properties.created = stamp
        self.wb.properties.modified = stamp
        self.stamp = stamp
        self.sheets: list[_XlsxSheet] = []

    def sheet(self, name: str, headings: Sequence[str]) -> _XlsxSheet:
        sheet = _XlsxSheet(self.wb.create_sheet(name))
        sheet.append(list(headings))
        self.sheets.append(sheet)
        return sheet

    def close(self) -> None:
        from openpyxl.writer.excel import ExcelWriter

        fixed = (
            self.stamp.year,
            self.stamp.month,
            self.stamp.day,
            self.stamp.hour,
            self.stamp.minute,
            self.stamp.second,
        )
        archive = _FixedTimeZip(self.path, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        archive.fixed = fixed
        archive.sheets = self.sheets
        ExcelWriter(self.wb, archive).save()


class _CsvSheet:
    def __init__(self, path: Path, headings: Sequence[str]):
        self._fh = path.open("w", encoding="utf-8-sig", newline="")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(headings)

    def append(self, values: Sequence[Any]) -> None:
        self._writer.writerow([_csv_value(v) for v in values])

    def close(self) -> None:
        self._fh.close()


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, str):
        return _clean_text(v)
    if isinstance(v, dt.datetime):
        return v.strftime("%d/%m/%Y %H:%M:%S")
    if isinstance(v, dt.date):
        return v.strftime("%d/%m/%Y")
    if isinstance(v, float):
        return repr(v)
    return v


class _CsvBook:
    def __init__(self, folder: Path, workbook: str):
        self.folder = folder
        self.workbook = workbook
        self._sheets: list[_CsvSheet] = []

    def sheet(self, name: str, headings: Sequence[str]) -> _CsvSheet:
        sheet = _CsvSheet(self.folder / csv_name(self.workbook, name), headings)
        self._sheets.append(sheet)
        return sheet

    def close(self) -> None:
        for sheet in self._sheets:
            sheet.close()


# ---------------------------------------------------------------------------------------------------
# The writer


class ExportWriter:
    """Writes every workbook of one tenant; see :func:`write_exports`."""

    def __init__(self, tenant_dir: Path, fmt: str):
        if fmt not in ("xlsx", "csv"):
            raise ValueError(f"unknown export format {fmt!r}; use xlsx or csv")
        self.root = tenant_dir
        self.api = tenant_dir / "api"
        self.out = tenant_dir / "exports"
        self.fmt = fmt
        meta_path = tenant_dir / "tenant.json"
        self.meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        self.dirty = bool(self.meta.get("dirty"))
        stamp = self.meta.get("generated_at") or "2026-01-01T00:00:00Z"
        self.stamp = _when(stamp) if isinstance(_when(stamp), dt.datetime) else dt.datetime(2026, 1, 1)
        # Status synonyms and job line items come from their own generator, so exports are reproducible
        # and independent of how the tenant itself was generated.
        self.rng = random.Random(f"exports:{self.meta.get('seed', 0)}")
        self.customer_names: dict[str, str] = {}
        self.rows: dict[str, int] = {}

    # -- plumbing ---------------------------------------------------------------------------------------

    def book(self, workbook: str) -> _XlsxBook | _CsvBook:
        if self.fmt == "xlsx":
            return _XlsxBook(self.out / f"{workbook}.xlsx", self.stamp)
        return _CsvBook(self.out, workbook)

    def headings(self, workbook: str, sheet: str, extra: Sequence[str] = ()) -> tuple[list[str], bool]:
        """Final headings for a sheet, and whether an unknown column is appended (dirty tenants)."""
        headings = list(LAYOUT[workbook][sheet]) + list(extra)
        if self.dirty:
            renames = DIRTY_RENAMES.get((workbook, sheet), {})
            headings = [renames.get(h, h) for h in headings]
        unknown = self.dirty and (workbook, sheet) in DIRTY_UNKNOWN_COLUMN_SHEETS
        if unknown:
            headings.append(UNKNOWN_COLUMN)
        return headings, unknown

    def open(self, book: Any, workbook: str, sheet: str, extra: Sequence[str] = ()) -> tuple[Any, bool]:
        headings, unknown = self.headings(workbook, sheet, extra)
        self.rows[csv_name(workbook, sheet)[:-4]] = 0
        return book.sheet(sheet, headings), unknown

    def put(self, sheet: Any, workbook: str, name: str, values: list[Any], unknown: bool = False) -> None:
        if unknown:
            values.append(f"LEGACY-{self.rng.randrange(100000, 999999)}")
        sheet.append(values)
        self.rows[f"{workbook}__{name}"] += 1

    def status_text(self, text: str | None, variants: dict[str, tuple[str, ...]]) -> str | None:
        if text in variants and self.rng.random() < 0.1:
            return self.rng.choice(variants[text])
        return text

    # -- workbooks --------------------------------------------------------------------------------------

    def customers(self) -> None:
        path = self.api / "customers.jsonl"
        custom = _collect_names(path, "customFields", '"fieldName"')
        book = self.book("customers")
        try:
            sheet, unknown = self.open(book, "customers", "Customers", custom)
            for c in _iter_jsonl(path):
                self.customer_names[c["customerId"]] = c.get("customerName") or ""
                cf = _fields(c.get("customFields"))
                self.put(
                    sheet,
                    "customers",
                    "Customers",
                    [
                        c.get("customerNumber"),
                        c.get("customerName"),
                        c.get("companyName"),
                        _name(c.get("customerType")),
                        _name(c.get("billingCustomer")),
                        c.get("contactFirstName"),
                        c.get("contactLastName"),
                        c.get("emailAddress"),
                        c.get("phoneNumber"),
                        c.get("mobileNumber"),
                        c.get("streetLine1"),
                        c.get("streetLine2"),
                        c.get("streetSuburb"),
                        c.get("streetState"),
                        c.get("streetPostcode"),
                        c.get("streetCountry"),
                        c.get("streetLatitude"),
                        c.get("streetLongitude"),
                        c.get("postalLine1"),
                        c.get("postalLine2"),
                        c.get("postalSuburb"),
                        c.get("postalState"),
                        c.get("postalPostcode"),
                        c.get("postalCountry") if c.get("postalLine1") else None,
                        _name(c.get("leadSource")),
                        _name(c.get("assignedUser")),
                        _yes(c.get("onHold")) if not c.get("billingCustomer") or c.get("onHold") else None,
                        c.get("accountingSystem"),
                        _when(c.get("dateCreated")),
                        c.get("customerId"),
                        _id(c.get("billingCustomer")),
                        *(cf.get(n) for n in custom),
                    ],
                    unknown,
                )
            sheet, unknown = self.open(book, "customers", "Contacts")
            for p in _iter_jsonl(self.api / "contacts.jsonl"):
                self.put(
                    sheet,
                    "customers",
                    "Contacts",
                    [
                        self.customer_names.get(p.get("customerId"), ""),
                        p.get("firstName"),
                        p.get("lastName"),
                        p.get("emailAddress"),
                        p.get("phoneNumber"),
                        p.get("mobileNumber"),
                        p.get("faxNumber"),
                        p.get("contactRole"),
                        _yes(p.get("defaultContact")),
                        p.get("contactId"),
                        p.get("customerId"),
                    ],
                    unknown,
                )
            path = self.api / "equipment.jsonl"
            custom = _collect_names(path, "customFields", '"fieldName"')
            sheet, unknown = self.open(book, "customers", "Equipment", custom)
            for e in _iter_jsonl(path):
                cf = _fields(e.get("customFields"))
                site = e.get("siteCustomerId")
                self.put(
                    sheet,
                    "customers",
                    "Equipment",
                    [
                        self.customer_names.get(e.get("customerId"), ""),
                        self.customer_names.get(site) if site else None,
                        e.get("name"),
                        e.get("make"),
                        e.get("model"),
                        e.get("serialNumber"),
                        e.get("location"),
                        _when(e.get("installDate"), date_only=True),
                        _when(e.get("warrantyExpiry"), date_only=True),
                        e.get("notes"),
                        e.get("equipmentId"),
                        e.get("customerId"),
                        site,
                        *(cf.get(n) for n in custom),
                    ],
                    unknown,
                )
        finally:
            book.close()

    def jobs(self) -> None:
        path = self.api / "jobs.jsonl"
        custom = _collect_names(path, "customFields", '"fieldName"')
        supplies = [
            (s.get("partNumber"), s.get("description"), s.get("unitCostExTax"), s.get("unitSellExTax"))
            for s in _iter_jsonl(self.api / "supplies.jsonl")
        ][:2000]
        roles = [
            (r.get("name"), r.get("hourlyRateExTax")) for r in _iter_jsonl(self.api / "labour_roles.jsonl")
        ]
        book = self.book("jobs")
        try:
            jobs, unknown = self.open(book, "jobs", "Jobs", custom)
            supply, _ = self.open(book, "jobs", "Supply")
            labour, _ = self.open(book, "jobs", "Labour")
            for j in _iter_jsonl(path):
                cf = _fields(j.get("customFields"))
                status = j.get("jobStatusText")
                if status is None and isinstance(j.get("jobStatus"), int) and 0 <= j["jobStatus"] < 8:
                    status = JOB_STATUS_TEXT[j["jobStatus"]]
                parent = j.get("topLevelJobNumber")
                self.put(
                    jobs,
                    "jobs",
                    "Jobs",
                    [
                        j.get("jobNumber"),
                        j.get("jobName"),
                        "Yes" if parent else "No",
                        self.status_text(status, JOB_STATUS_VARIANTS),
                        _when(j.get("dateCreated")),
                        j.get("quoteNumber"),
                        _name(j.get("siteCustomer")),
                        _name(j.get("siteContact")),
                        _name(j.get("billingCustomer")),
                        _name(j.get("billingContact")),
                        j.get("addressLine1"),
                        j.get("addressLine2"),
                        j.get("suburb"),
                        j.get("state"),
                        j.get("postcode"),
                        j.get("pricingMethod"),
                        j.get("totalExTax"),
                        _tax(j.get("totalExTax"), j.get("totalIncTax")),
                        j.get("jobDescription"),
                        j.get("workUndertaken"),
                        j.get("purchaseOrderNumber"),
                        j.get("clientOrderNumber"),
                        _name(j.get("jobType")),
                        _name(j.get("assignedUser")),
                        _when(j.get("bookingDate")),
                        _when(j.get("expectedDate"), date_only=True),
                        j.get("expectedDuration"),
                        j.get("invoiceNumber"),
                        _name(j.get("team")),
                        j.get("estimatedDuration"),
                        j.get("jobId"),
                        _id(j.get("siteCustomer")),
                        _id(j.get("billingCustomer")),
                        parent,
                        _id(j.get("siteContact")),
                        _id(j.get("billingContact")),
                        _when(j.get("completedDate")),
                        j.get("country"),
                        j.get("latitude"),
                        j.get("longitude"),
                        j.get("displayOrder"),
                        *(cf.get(n) for n in custom),
                    ],
                    unknown,
                )
                self.job_lines(j, supply, labour, supplies, roles)
        finally:
            book.close()

    def job_lines(self, job: dict[str, Any], supply: Any, labour: Any, supplies: list, roles: list) -> None:
        """Supply/Labour tabs of the Jobs export. The API has no job line items (reference §5), so these
        are synthesised here, reproducibly, for jobs where work happened. Not part of the canonical
        model: the reader skips these sheets."""
        if job.get("jobStatus") not in (0, 2, 6, 7) or not supplies or self.rng.random() < 0.3:
            return
        number = job.get("jobNumber")
        for _ in range(1 + self.rng.randrange(3)):
            part, desc, cost, sell = self.rng.choice(supplies)
            qty = 1 + self.rng.randrange(4)
            self.put(
                supply, "jobs", "Supply", [number, part, desc, qty, cost, sell, round(qty * (sell or 0), 2)]
            )
        if roles:
            role, rate = self.rng.choice(roles)
            hours = (1 + self.rng.randrange(12)) / 2
            self.put(
                labour,
                "jobs",
                "Labour",
                [
                    number,
                    role,
                    _name(job.get("assignedUser")),
                    f"Labour - {role}",
                    hours,
                    rate,
                    round(hours * (rate or 0), 2),
                ],
            )

    def quotes(self) -> None:
        book = self.book("quotes")
        try:
            quotes, unknown = self.open(book, "quotes", "Quotes")
            supply, _ = self.open(book, "quotes", "Supply")
            labour, _ = self.open(book, "quotes", "Labour")
            for q in _iter_jsonl(self.api / "quotes.jsonl"):
                status = q.get("quoteStatusText")
                if status is None and isinstance(q.get("quoteStatus"), int) and 0 <= q["quoteStatus"] < 4:
                    status = QUOTE_STATUS_TEXT[q["quoteStatus"]]
                status = self.status_text(status, QUOTE_STATUS_VARIANTS)
                number = q.get("quoteNumber")
                self.put(
                    quotes,
                    "quotes",
                    "Quotes",
                    [
                        number,
                        q.get("quoteName"),
                        "No",
                        status,
                        _when(q.get("dateCreated") or q.get("quotationDate")),
                        _when(q.get("quotationDate"), date_only=True),
                        _when(q.get("dueDate"), date_only=True),
                        _when(q.get("validUntilDate"), date_only=True),
                        _name(q.get("siteCustomer")),
                        _name(q.get("siteContact")),
                        _name(q.get("billingCustomer")),
                        _name(q.get("billingContact")),
                        q.get("addressLine1"),
                        q.get("addressLine2"),
                        q.get("suburb"),
                        q.get("state"),
                        q.get("postcode"),
                        q.get("pricingMethod"),
                        q.get("totalExTax"),
                        _tax(q.get("totalExTax"), q.get("totalIncTax")),
                        q.get("quoteDescription"),
                        q.get("purchaseOrderNumber"),
                        q.get("clientOrderNumber"),
                        _name(q.get("jobType")),
                        _name(q.get("assignedUser")),
                        _when(q.get("bookingDate")),
                        _name(q.get("team")),
                        q.get("variationForJobNumber"),
                        q.get("quoteId"),
                        _id(q.get("siteCustomer")),
                        _id(q.get("billingCustomer")),
                        None,
                        q.get("reasonForLoss"),
                        q.get("country"),
                        None,
                    ],
                    unknown,
                )
                for child in q.get("childQuotes") or ():
                    self.put(
                        quotes,
                        "quotes",
                        "Quotes",
                        [
                            child.get("quoteNumber"),
                            child.get("quoteName"),
                            "Yes",
                            status,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            child.get("totalExTax"),
                            _tax(child.get("totalExTax"), child.get("totalIncTax")),
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            child.get("quoteId"),
                            None,
                            None,
                            number,
                            None,
                            None,
                            child.get("displayOrder"),
                        ],
                        unknown,
                    )
                for line, item in enumerate(q.get("items") or (), start=1):
                    kind = item.get("itemType")
                    if kind == "LABOUR":
                        self.put(
                            labour,
                            "quotes",
                            "Labour",
                            [
                                number,
                                item.get("sectionQuoteNumber"),
                                line,
                                kind,
                                _name(item.get("labourRole")),
                                item.get("description"),
                                item.get("hours"),
                                item.get("unitSellExTax"),
                                item.get("unitCostExTax"),
                                item.get("totalExTax"),
                                item.get("totalIncTax"),
                                _yes(item.get("isTaxable")),
                                item.get("itemId"),
                                q.get("quoteId"),
                            ],
                        )
                    else:  # SUPPLY, KIT and WRITE-IN share the Supply tab, told apart by ITEM TYPE
                        self.put(
                            supply,
                            "quotes",
                            "Supply",
                            [
                                number,
                                item.get("sectionQuoteNumber"),
                                line,
                                kind,
                                item.get("partNumber"),
                                item.get("description"),
                                item.get("quantity"),
                                item.get("unitOfMeasure"),
                                item.get("unitCostExTax"),
                                item.get("unitSellExTax"),
                                item.get("totalExTax"),
                                item.get("totalIncTax"),
                                _yes(item.get("isTaxable")),
                                item.get("itemId"),
                                q.get("quoteId"),
                            ],
                        )
        finally:
            book.close()

    def invoices(self) -> None:
        path = self.api / "invoices.jsonl"
        custom = _collect_names(path, "invoiceCustomFields", '"invoiceCustomFields":[{')
        book = self.book("invoices")
        try:
            invoices, unknown = self.open(book, "invoices", "Invoices", custom)
            lines, _ = self.open(book, "invoices", "Invoice Lines")
            for i in _iter_jsonl(path):
                cf = _fields(i.get("invoiceCustomFields"))
                self.put(
                    invoices,
                    "invoices",
                    "Invoices",
                    [
                        i.get("invoiceNumber"),
                        _when(i.get("invoiceDate"), date_only=True),
                        _when(i.get("dueDate"), date_only=True),
                        i.get("status"),
                        i.get("jobNumber"),
                        _name(i.get("billingCustomer")),
                        i.get("reference"),
                        i.get("totalExTax"),
                        i.get("totalTax"),
                        i.get("totalIncTax"),
                        i.get("amountPaid"),
                        i.get("amountOutstanding"),
                        _yes(i.get("sentToAccounts")),
                        i.get("accountingSystem"),
                        i.get("invoiceId"),
                        i.get("jobId"),
                        _id(i.get("billingCustomer")),
                        *(cf.get(n) for n in custom),
                    ],
                    unknown,
                )
                for n, line in enumerate(i.get("lines") or (), start=1):
                    self.put(
                        lines,
                        "invoices",
                        "Invoice Lines",
                        [
                            i.get("invoiceNumber"),
                            n,
                            line.get("description"),
                            line.get("partNumber"),
                            line.get("quantity"),
                            line.get("unitPriceExTax"),
                            line.get("accountCode"),
                            line.get("taxCode"),
                            line.get("totalExTax"),
                            line.get("tax"),
                            i.get("invoiceId"),
                        ],
                    )
        finally:
            book.close()

    def staff(self) -> None:
        book = self.book("staff")
        try:
            sheet, unknown = self.open(book, "staff", "Staff")
            for u in _iter_jsonl(self.api / "users.jsonl"):
                self.put(
                    sheet,
                    "staff",
                    "Staff",
                    [
                        u.get("fullName"),
                        u.get("firstName"),
                        u.get("lastName"),
                        u.get("emailAddress"),
                        u.get("mobileNumber"),
                        _yes(u.get("isActive")),
                        u.get("userType"),
                        _name(u.get("labourRole")),
                        _name(u.get("team")),
                        u.get("userId"),
                    ],
                    unknown,
                )
        finally:
            book.close()

    def notes(self) -> None:
        book = self.book("notes")
        try:
            sheet, unknown = self.open(book, "notes", "Notes")
            for n in _iter_jsonl(self.api / "notes.jsonl"):
                self.put(
                    sheet,
                    "notes",
                    "Notes",
                    [
                        n.get("entityType"),
                        n.get("entityId"),
                        n.get("noteContent"),
                        n.get("activityType"),
                        n.get("createdByName"),
                        _when(n.get("dateCreated")),
                        n.get("noteId"),
                    ],
                    unknown,
                )
        finally:
            book.close()

    def attachments(self) -> None:
        files = self.root / "files"
        target = self.out / "attachments"
        if target.exists():  # shared by the xlsx and csv exports; rebuilt from the tenant's files
            shutil.rmtree(target)
        pending: list[tuple[Path, Path]] = []
        book = self.book("attachments")
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="export-files") as pool:
            try:
                sheet, unknown = self.open(book, "attachments", "Attachments")
                for a in _iter_jsonl(self.api / "attachments.jsonl"):
                    ident, name = a.get("attachmentId"), a.get("fileName")
                    rel = f"attachments/{ident}/{name}"
                    source = files / str(ident) / str(name)
                    if source.exists() or not files.exists():
                        pending.append((source, target / str(ident) / str(name)))
                    self.put(
                        sheet,
                        "attachments",
                        "Attachments",
                        [
                            a.get("entityType"),
                            a.get("entityId"),
                            name,
                            a.get("contentType"),
                            a.get("sizeBytes"),
                            a.get("category"),
                            _when(a.get("dateCreated")),
                            rel,
                            ident,
                            a.get("createdByName"),
                        ],
                        unknown,
                    )
                    if len(pending) >= _FILE_BATCH:
                        for _ in pool.map(_copy_file, *zip(*pending, strict=True)):
                            pass
                        pending = []
                if pending:
                    for _ in pool.map(_copy_file, *zip(*pending, strict=True)):
                        pass
            finally:
                book.close()

    def form_responses(self) -> None:
        path = self.api / "form_responses.jsonl"
        codes = _collect_names(path, "fields", '"fieldCode"')
        book = self.book("form_responses")
        try:
            sheet, unknown = self.open(book, "form_responses", "Form Responses", codes)
            for f in _iter_jsonl(path):
                answers = _fields(f.get("fields"))
                self.put(
                    sheet,
                    "form_responses",
                    "Form Responses",
                    [
                        f.get("formResponseId"),
                        f.get("formName"),
                        f.get("jobNumber"),
                        f.get("completedBy"),
                        _when(f.get("dateCompleted")),
                        f.get("jobId"),
                        f.get("attachmentId"),
                        *(answers.get(c) for c in codes),
                    ],
                    unknown,
                )
        finally:
            book.close()

    def enquiries(self) -> None:
        path = self.api / "enquiries.jsonl"
        custom = _collect_names(path, "customFields", '"fieldName"')
        book = self.book("enquiries")
        try:
            sheet, unknown = self.open(book, "enquiries", "Enquiries", custom)
            for e in _iter_jsonl(path):
                cf = _fields(e.get("customFields"))
                self.put(
                    sheet,
                    "enquiries",
                    "Enquiries",
                    [
                        e.get("enquiryNumber"),
                        _when(e.get("dateCreated")),
                        e.get("status"),
                        e.get("companyName"),
                        e.get("firstName"),
                        e.get("lastName"),
                        e.get("email"),
                        e.get("mobile"),
                        e.get("phone"),
                        e.get("addressLine1"),
                        e.get("addressLine2"),
                        e.get("addressSuburb"),
                        e.get("addressState"),
                        e.get("addressPostcode"),
                        e.get("addressCountry"),
                        e.get("enquiryDescription"),
                        _name(e.get("leadSource")),
                        e.get("convertedToQuoteNumber"),
                        e.get("convertedToJobNumber"),
                        e.get("enquiryId"),
                        *(cf.get(n) for n in custom),
                    ],
                    unknown,
                )
        finally:
            book.close()

    def supplier_bills(self) -> None:
        book = self.book("supplier_bills")
        try:
            sheet, unknown = self.open(book, "supplier_bills", "Suppliers")
            for s in _iter_jsonl(self.api / "suppliers.jsonl"):
                self.put(
                    sheet,
                    "supplier_bills",
                    "Suppliers",
                    [
                        s.get("supplierNumber"),
                        s.get("name"),
                        s.get("businessNumber"),
                        s.get("contactFirstName"),
                        s.get("contactLastName"),
                        s.get("emailAddress"),
                        s.get("phone"),
                        s.get("mobile"),
                        s.get("fax"),
                        s.get("notes"),
                        s.get("expenseAccount"),
                        s.get("streetLine1"),
                        s.get("streetLine2"),
                        s.get("streetSuburb"),
                        s.get("streetState"),
                        s.get("streetPostcode"),
                        s.get("supplierId"),
                    ],
                    unknown,
                )
            bills, unknown = self.open(book, "supplier_bills", "Bills")
            lines, _ = self.open(book, "supplier_bills", "Bill Lines")
            for b in _iter_jsonl(self.api / "supplier_invoices.jsonl"):
                self.put(
                    bills,
                    "supplier_bills",
                    "Bills",
                    [
                        _name(b.get("supplier")),
                        b.get("trackingNumber"),
                        b.get("reference"),
                        b.get("type"),
                        _when(b.get("invoiceDate"), date_only=True),
                        _when(b.get("dueDate"), date_only=True),
                        _when(b.get("createdOn")),
                        _yes(b.get("accepted")),
                        b.get("accountCode"),
                        _yes(b.get("isExpense")),
                        _yes(b.get("sentToAccounts")),
                        b.get("totalAmountExTax"),
                        b.get("totalAmountIncTax"),
                        b.get("supplierInvoiceId"),
                        _id(b.get("supplier")),
                    ],
                    unknown,
                )
                for n, line in enumerate(b.get("lines") or (), start=1):
                    self.put(
                        lines,
                        "supplier_bills",
                        "Bill Lines",
                        [
                            b.get("trackingNumber"),
                            n,
                            line.get("description"),
                            line.get("partNumber"),
                            line.get("quantity"),
                            line.get("unitCostExTax"),
                            line.get("totalAmountExTax"),
                            line.get("totalAmountIncTax"),
                            line.get("accountCode"),
                            line.get("reference"),
                            _yes(line.get("isTaxable")),
                            b.get("supplierInvoiceId"),
                        ],
                    )
        finally:
            book.close()

    def run(self) -> dict[str, int]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.customers()  # first: builds the customer id -> name index the others use
        self.jobs()
        self.quotes()
        self.invoices()
        self.staff()
        self.notes()
        self.attachments()
        self.form_responses()
        self.enquiries()
        self.supplier_bills()
        return dict(self.rows)


def _copy_file(source: Path, dest: Path) -> None:
    """Hard-link when possible (instant, no extra space), copy otherwise. Missing sources are skipped."""
    if not source.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def write_exports(tenant_dir: str | os.PathLike[str], fmt: str = "xlsx") -> dict[str, int]:
    """Write Ascora-style exports of a generated tenant under ``<tenant_dir>/exports/``.

    Returns the number of data rows per ``<workbook>__<sheet>``. ``fmt`` is ``"xlsx"`` (one
    workbook per area) or ``"csv"`` (one ``<workbook>__<Sheet>.csv`` per sheet, UTF-8 with BOM).
    """
    return ExportWriter(Path(tenant_dir), fmt).run()
