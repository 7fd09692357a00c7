"""Reading Ascora's Excel (or CSV) exports into canonical raw records.

Why a second reader: the REST API exposes only part of a tenant (reference §0.2, §5): equipment,
invoice history, notes, attachments, form answers and quote line items exist only in the UI's
exports. This reader turns a folder of such exports into the same :class:`RawRecord` stream the API
reader produces, so everything downstream is shared. The accepted layout is documented for users in
``docs/ascora-exports.md``; the sandbox's :mod:`~airflow_ascora_provider.sandbox.export_writer` writes
exactly that layout.

What it tolerates, because real exports drift:

* Files are found case-insensitively: ``Jobs.XLSX``, ``jobs.xlsx``, ``jobs__Jobs.csv`` (one CSV per
  sheet), ``jobs.csv`` (the workbook's main sheet), ``contacts.csv`` (a sheet name unique across
  workbooks). A tenant folder with an ``exports/`` sub-folder works too.
* Headings match ignoring case, spaces, underscores and punctuation (``Job  number`` ==
  ``JOB NUMBER`` == ``job_number``) and through a synonyms table per sheet (``STATUS`` -> JOB STATUS,
  ``TECHNICIAN`` -> ASSIGNED TO, ``E-MAIL ADDRESS`` -> EMAIL ...).
* Unknown columns are never dropped: they become ``custom_fields`` (Ascora's custom fields *are*
  extra columns in an export), or, for objects without custom fields, an :class:`Issue` per value.
* References by *name* (SITE CUSTOMER, BILLING CUSTOMER, ASSIGNED TO, SITE CONTACT ...) resolve
  through indexes built from the customers / staff workbooks, preferring ``... ID`` columns when the
  export has them. A name that does not resolve leaves the id empty and adds an Issue naming it.

IDs: the ``... ID`` column when present; otherwise a stable id derived from the object's natural key
(``job:J1042``, ``customer:<casefolded name>`` - Ascora's own import treats the customer name as the
unique identifier), or from the row's position when the key is blank.

Memory: rows stream from openpyxl's read-only mode (or ``csv``) one at a time; only name/number -> id
indexes are kept (customers, staff, and, when needed, job / quote / invoice / bill numbers), which
is a few tens of MB at two million records.
"""

from __future__ import annotations

import codecs
import csv
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Self
from xml.etree import ElementTree

from airflow_ascora_provider.source.coerce import CoercionError, Issue, to_bool, to_decimal
from airflow_ascora_provider.source.model import MODEL, FieldType, dependency_order
from airflow_ascora_provider.source.reader import RawRecord

# ---------------------------------------------------------------------------------------------------
# Heading normalisation and synonyms


def norm_heading(heading: Any) -> str:
    """``"Job  number"``, ``"JOB NUMBER"``, ``"job_number"``, ``"Job #"`` -> ``"jobnumber"``."""
    text = str(heading).replace("#", " number ").casefold()
    return re.sub(r"[\W_]+", "", text)


def _key(value: Any) -> str:
    """Name key for lookups: whitespace collapsed, case folded (Ascora matches names loosely too)."""
    return " ".join(str(value).split()).casefold()


# fmt: off
_ADDRESS = {
    "address_line1": ("ADDRESS LINE 1", "ADDRESS 1", "ADDRESS", "STREET", "STREET ADDRESS", "STREET LINE 1"),
    "address_line2": ("ADDRESS LINE 2", "ADDRESS 2", "STREET LINE 2"),
    "suburb": ("SUBURB", "CITY", "TOWN", "STREET SUBURB"),
    "state": ("STATE", "STREET STATE"),
    "postcode": ("POSTCODE", "POST CODE", "ZIP", "STREET POSTCODE"),
    "country": ("COUNTRY", "STREET COUNTRY"),
}
_PERSON = {
    "first_name": ("FIRST NAME", "GIVEN NAME", "CONTACT FIRST NAME"),
    "last_name": ("LAST NAME", "SURNAME", "FAMILY NAME", "CONTACT LAST NAME"),
    "email": ("EMAIL", "EMAIL ADDRESS", "E-MAIL", "E-MAIL ADDRESS"),
    "phone": ("PHONE", "PHONE NUMBER", "TELEPHONE", "LANDLINE", "WORK PHONE"),
    "mobile": ("MOBILE", "MOBILE NUMBER", "MOBILE PHONE", "CELL"),
}
_CREATED = ("DATE CREATED", "CREATED", "CREATED DATE", "CREATED ON")
_ASSIGNED = ("ASSIGNED TO", "ASSIGNED USER", "TECHNICIAN", "TECH", "ASSIGNEE", "ASSIGNED TECHNICIAN")
_PARTIES = {
    "@site_customer": ("SITE CUSTOMER", "SITE", "SITE NAME"),
    "@site_contact": ("SITE CONTACT",),
    "@billing_customer": ("BILLING CUSTOMER", "CUSTOMER", "CUSTOMER NAME", "BILL TO"),
    "@billing_contact": ("BILLING CONTACT",),
    "@site_customer_id": ("SITE CUSTOMER ID", "SITE ID"),
    "@billing_customer_id": ("BILLING CUSTOMER ID", "CUSTOMER ID"),
    "site_contact_id": ("SITE CONTACT ID",),
    "billing_contact_id": ("BILLING CONTACT ID",),
}
_MONEY = {
    "total_ex_tax": ("TOTAL AMOUNT EX TAX", "TOTAL EX TAX", "AMOUNT EX TAX", "TOTAL EX GST", "SUBTOTAL"),
    "total_tax": ("TOTAL TAX", "TAX", "GST", "TOTAL GST"),
    "total_inc_tax": ("TOTAL AMOUNT INC TAX", "TOTAL INC TAX", "TOTAL INC GST", "TOTAL"),
}

# Per sheet: key -> accepted headings (first = the heading our exports write). Keys are canonical
# field names, or "@name" for columns the reader interprets (references, flags, parent numbers).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "customers": {
        "id": ("CUSTOMER ID", "ID"),
        "customer_number": ("CUSTOMER NUMBER", "CUSTOMER NO", "ACCOUNT NUMBER"),
        "name": ("CUSTOMER NAME", "NAME", "CUSTOMER", "DISPLAY NAME"),
        "company_name": ("COMPANY NAME", "COMPANY", "BUSINESS NAME"),
        "customer_type": ("CUSTOMER TYPE", "TYPE"),
        "@billing_customer": ("BILLING CUSTOMER", "BILLING CUSTOMER NAME", "BILL TO"),
        "@billing_customer_id": ("BILLING CUSTOMER ID",),
        "@is_company": ("IS COMPANY",),
        **_PERSON,
        **_ADDRESS,
        "latitude": ("LATITUDE", "LAT", "STREET LATITUDE"),
        "longitude": ("LONGITUDE", "LNG", "LONG", "STREET LONGITUDE"),
        "postal_address_line1": ("POSTAL ADDRESS LINE 1", "POSTAL LINE 1", "POSTAL ADDRESS"),
        "postal_address_line2": ("POSTAL ADDRESS LINE 2", "POSTAL LINE 2"),
        "postal_suburb": ("POSTAL SUBURB", "POSTAL CITY"),
        "postal_state": ("POSTAL STATE",),
        "postal_postcode": ("POSTAL POSTCODE", "POSTAL POST CODE"),
        "postal_country": ("POSTAL COUNTRY",),
        "lead_source": ("LEAD SOURCE", "SOURCE", "REFERRAL SOURCE"),
        "assigned_user_name": ("ASSIGNED TO", "ASSIGNED USER", "ACCOUNT MANAGER", "SALES PERSON"),
        "on_hold": ("ON HOLD", "CREDIT HOLD", "ON STOP"),
        "accounting_system": ("ACCOUNTING SYSTEM", "ACCOUNTING PACKAGE"),
        "date_created": _CREATED,
    },
    "contacts": {
        "id": ("CONTACT ID", "ID"),
        "@customer": ("CUSTOMER", "CUSTOMER NAME", "COMPANY"),
        "@customer_id": ("CUSTOMER ID",),
        **_PERSON,
        "fax": ("FAX", "FAX NUMBER"),
        "is_default": ("DEFAULT CONTACT", "DEFAULT", "PRIMARY", "PRIMARY CONTACT", "IS DEFAULT"),
        "role": ("ROLE", "CONTACT ROLE", "POSITION", "JOB TITLE", "TITLE"),
    },
    "equipment": {
        "id": ("EQUIPMENT ID", "ID", "ASSET ID"),
        "@customer": ("CUSTOMER", "CUSTOMER NAME"),
        "@customer_id": ("CUSTOMER ID",),
        "@site": ("SITE", "SITE NAME", "SITE CUSTOMER"),
        "@site_id": ("SITE ID", "SITE CUSTOMER ID"),
        "name": ("NAME", "EQUIPMENT", "EQUIPMENT NAME", "ASSET", "DESCRIPTION"),
        "make": ("MAKE", "BRAND", "MANUFACTURER"),
        "model": ("MODEL",),
        "serial_number": ("SERIAL NUMBER", "SERIAL", "SERIAL NO"),
        "location": ("LOCATION",),
        "install_date": ("INSTALL DATE", "INSTALLED", "INSTALLATION DATE", "DATE INSTALLED"),
        "warranty_expiry": ("WARRANTY EXPIRY", "WARRANTY EXPIRY DATE", "WARRANTY"),
        "notes": ("NOTES", "COMMENTS"),
    },
    "jobs": {
        "job_number": ("JOB NUMBER", "JOB NO", "NUMBER", "JOB"),
        "name": ("JOB NAME", "NAME", "TITLE"),
        "@is_section": ("IS SECTION/STAGE", "IS SECTION", "IS STAGE", "SECTION/STAGE"),
        "status": ("JOB STATUS", "STATUS"),
        "date_created": _CREATED,
        "@quote_number": ("QUOTE NUMBER", "QUOTE NO", "QUOTE"),
        **_PARTIES,
        **_ADDRESS,
        "pricing_method": ("PRICING METHOD", "PRICING"),
        **_MONEY,
        "description": ("JOB DESCRIPTION", "DESCRIPTION"),
        "work_undertaken": ("WORK UNDERTAKEN", "WORK DONE", "WORK COMPLETED"),
        "purchase_order_number": ("PURCHASE ORDER", "PURCHASE ORDER NUMBER", "PO", "PO NUMBER"),
        "client_order_number": ("CLIENT ORDER NUMBER", "CLIENT ORDER", "ORDER NUMBER"),
        "@job_type": ("JOB TYPE", "TYPE"),
        "@assigned_to": _ASSIGNED,
        "booking_date": ("BOOKING DATE", "BOOKED FOR", "SCHEDULED DATE"),
        "expected_date": ("EXPECTED DATE",),
        "expected_duration_hours": ("EXPECTED DURATION", "EXPECTED DURATION HOURS"),
        "invoice_number": ("INVOICE NUMBER", "INVOICE NO"),
        "team": ("TEAM",),
        "estimated_duration_hours": ("ESTIMATED DURATION", "ESTIMATED DURATION HOURS", "ESTIMATED HOURS"),
        "id": ("JOB ID", "ID"),
        "@parent_job_number": ("PARENT JOB NUMBER", "PARENT JOB", "TOP LEVEL JOB NUMBER"),
        "completed_date": ("COMPLETED DATE", "DATE COMPLETED", "COMPLETED"),
        "latitude": ("LATITUDE", "LAT"),
        "longitude": ("LONGITUDE", "LNG", "LONG"),
        "@display_order": ("DISPLAY ORDER", "ORDER"),
        "priority": ("PRIORITY",),
        "job_type_id": ("JOB TYPE ID",),
        "@assigned_to_id": ("ASSIGNED TO ID", "ASSIGNED USER ID", "TECHNICIAN ID"),
        "@quote_id": ("QUOTE ID",),
    },
    "quotes": {
        "quote_number": ("QUOTE NUMBER", "QUOTE NO", "NUMBER", "QUOTE"),
        "name": ("QUOTE NAME", "NAME", "TITLE"),
        "@is_section": ("IS SECTION/STAGE", "IS SECTION", "IS STAGE", "SECTION/STAGE"),
        "status": ("QUOTE STATUS", "STATUS"),
        "date_created": _CREATED,
        "quote_date": ("QUOTE DATE", "QUOTATION DATE", "DATE"),
        "due_date": ("DUE DATE",),
        "valid_until_date": ("VALID UNTIL DATE", "VALID UNTIL", "EXPIRY DATE"),
        **_PARTIES,
        **_ADDRESS,
        "pricing_method": ("PRICING METHOD", "PRICING"),
        **_MONEY,
        "description": ("QUOTE DESCRIPTION", "DESCRIPTION"),
        "purchase_order_number": ("PURCHASE ORDER", "PURCHASE ORDER NUMBER", "PO", "PO NUMBER"),
        "client_order_number": ("CLIENT ORDER NUMBER", "CLIENT ORDER", "ORDER NUMBER"),
        "@job_type": ("JOB TYPE", "TYPE"),
        "@assigned_to": _ASSIGNED,
        "@booking_date": ("BOOKING DATE",),
        "team": ("TEAM",),
        "variation_for_job_number": ("VARIATION FOR JOB NUMBER", "VARIATION FOR JOB", "VARIATION OF JOB"),
        "id": ("QUOTE ID", "ID"),
        "@parent_quote_number": ("PARENT QUOTE NUMBER", "PARENT QUOTE", "TOP LEVEL QUOTE NUMBER"),
        "reason_for_loss": ("REASON FOR LOSS", "LOSS REASON", "LOST REASON"),
        "@display_order": ("DISPLAY ORDER", "ORDER"),
        "job_type_id": ("JOB TYPE ID",),
        "@assigned_to_id": ("ASSIGNED TO ID", "ASSIGNED USER ID"),
        "enquiry_id": ("ENQUIRY ID",),
    },
    "quote_items": {
        "@quote_number": ("QUOTE NUMBER", "QUOTE", "QUOTE NO"),
        "@quote_id": ("QUOTE ID",),
        "section_quote_number": ("SECTION NUMBER", "SECTION", "SECTION QUOTE NUMBER", "STAGE"),
        "line_number": ("LINE NUMBER", "LINE", "LINE NO"),
        "item_type": ("ITEM TYPE", "TYPE"),
        "part_number": ("PART NUMBER", "PART NO", "ITEM CODE", "CODE", "SKU"),
        "description": ("DESCRIPTION", "ITEM", "ITEM DESCRIPTION"),
        "quantity": ("QUANTITY", "QTY"),
        "unit_of_measure": ("UNIT OF MEASURE", "UOM", "UNIT"),
        "labour_role": ("LABOUR ROLE", "ROLE"),
        "hours": ("HOURS", "HRS"),
        "unit_cost_ex_tax": ("UNIT COST EX TAX", "UNIT COST", "COST", "COST EX TAX"),
        "unit_sell_ex_tax": ("UNIT SELL EX TAX", "UNIT SELL", "SELL", "RATE", "HOURLY RATE", "UNIT PRICE",
                             "UNIT PRICE EX TAX"),
        "total_ex_tax": ("TOTAL EX TAX", "TOTAL", "LINE TOTAL", "TOTAL AMOUNT EX TAX"),
        "total_inc_tax": ("TOTAL INC TAX", "TOTAL AMOUNT INC TAX"),
        "is_taxable": ("TAXABLE", "IS TAXABLE"),
        "id": ("ITEM ID", "LINE ID", "ID"),
    },
    "invoices": {
        "invoice_number": ("INVOICE NUMBER", "INVOICE NO", "NUMBER", "INVOICE"),
        "invoice_date": ("INVOICE DATE", "DATE"),
        "due_date": ("DUE DATE",),
        "status": ("STATUS", "INVOICE STATUS"),
        "job_number": ("JOB NUMBER", "JOB", "JOB NO"),
        "@billing_customer": ("BILLING CUSTOMER", "CUSTOMER", "CUSTOMER NAME", "BILL TO"),
        "@billing_customer_id": ("BILLING CUSTOMER ID", "CUSTOMER ID"),
        "reference": ("REFERENCE", "REF"),
        "total_ex_tax": ("TOTAL EX TAX", "SUBTOTAL", "TOTAL AMOUNT EX TAX"),
        "total_tax": ("TOTAL TAX", "TAX", "GST"),
        "total_inc_tax": ("TOTAL INC TAX", "TOTAL", "TOTAL AMOUNT INC TAX"),
        "amount_paid": ("AMOUNT PAID", "PAID"),
        "amount_outstanding": ("AMOUNT OUTSTANDING", "OUTSTANDING", "BALANCE", "AMOUNT DUE"),
        "sent_to_accounts": ("SENT TO ACCOUNTS", "SENT TO ACCOUNTING", "EXPORTED TO ACCOUNTS"),
        "accounting_system": ("ACCOUNTING SYSTEM", "ACCOUNTING PACKAGE"),
        "id": ("INVOICE ID", "ID"),
        "job_id": ("JOB ID",),
        "pdf_attachment_id": ("PDF ATTACHMENT ID",),
    },
    "invoice_lines": {
        "@invoice_number": ("INVOICE NUMBER", "INVOICE", "INVOICE NO"),
        "@invoice_id": ("INVOICE ID",),
        "line_number": ("LINE NUMBER", "LINE", "LINE NO"),
        "description": ("DESCRIPTION",),
        "part_number": ("PART NUMBER", "PART NO", "ITEM CODE", "CODE"),
        "quantity": ("QUANTITY", "QTY"),
        "unit_price_ex_tax": ("UNIT PRICE EX TAX", "UNIT PRICE", "PRICE", "RATE"),
        "account_code": ("ACCOUNT CODE", "ACCOUNT"),
        "tax_code": ("TAX CODE", "TAX TYPE"),
        "total_ex_tax": ("TOTAL EX TAX", "LINE TOTAL", "AMOUNT", "TOTAL"),
        "tax": ("TAX", "GST", "TOTAL TAX"),
        "id": ("LINE ID", "ID"),
    },
    "staff": {
        "id": ("USER ID", "STAFF ID", "ID"),
        "full_name": ("FULL NAME", "NAME", "USER", "USER NAME", "STAFF NAME"),
        **_PERSON,
        "is_active": ("ACTIVE", "IS ACTIVE", "ENABLED"),
        "user_type": ("USER TYPE", "TYPE"),
        "labour_role": ("LABOUR ROLE",),
        "team": ("TEAM",),
    },
    "notes": {
        "id": ("NOTE ID", "ID"),
        "entity_type": ("ENTITY TYPE", "RELATED TO", "TYPE"),
        "entity_id": ("ENTITY ID", "RELATED ID"),
        "@entity_number": ("ENTITY NUMBER", "RELATED NUMBER", "ENTITY NAME"),
        "content": ("NOTE", "NOTES", "CONTENT", "NOTE CONTENT", "TEXT", "DETAILS"),
        "activity_type": ("ACTIVITY TYPE", "ACTIVITY", "NOTE TYPE"),
        "created_by_name": ("CREATED BY", "AUTHOR", "USER"),
        "date_created": ("DATE CREATED", "DATE", "CREATED", "CREATED ON"),
    },
    "attachments": {
        "id": ("ATTACHMENT ID", "ID"),
        "entity_type": ("ENTITY TYPE", "RELATED TO"),
        "entity_id": ("ENTITY ID", "RELATED ID"),
        "@entity_number": ("ENTITY NUMBER", "RELATED NUMBER", "ENTITY NAME"),
        "file_name": ("FILE NAME", "FILENAME", "NAME"),
        "content_type": ("CONTENT TYPE", "MIME TYPE", "TYPE"),
        "size_bytes": ("SIZE BYTES", "SIZE", "FILE SIZE"),
        "category": ("CATEGORY",),
        "date_created": _CREATED,
        "created_by_name": ("UPLOADED BY", "CREATED BY", "ADDED BY"),
        "@file_path": ("FILE PATH", "PATH", "FILE"),
        "sha256": ("SHA256", "SHA 256"),
    },
    "form_responses": {
        "id": ("RESPONSE ID", "FORM RESPONSE ID", "ID"),
        "form_name": ("FORM NAME", "FORM"),
        "job_number": ("JOB NUMBER", "JOB", "JOB NO"),
        "job_id": ("JOB ID",),
        "completed_by": ("COMPLETED BY",),
        "date_completed": ("DATE COMPLETED", "COMPLETED DATE", "COMPLETED ON"),
        "attachment_id": ("ATTACHMENT ID",),
    },
    "enquiries": {
        "id": ("ENQUIRY ID", "ID"),
        "enquiry_number": ("ENQUIRY NUMBER", "ENQUIRY NO", "NUMBER"),
        "date_created": _CREATED,
        "status": ("STATUS", "ENQUIRY STATUS"),
        "company_name": ("COMPANY NAME", "COMPANY"),
        **_PERSON,
        **_ADDRESS,
        "description": ("DESCRIPTION", "ENQUIRY DESCRIPTION", "DETAILS"),
        "lead_source": ("LEAD SOURCE", "SOURCE"),
        "converted_to_quote_number": ("CONVERTED TO QUOTE NUMBER", "QUOTE NUMBER"),
        "converted_to_job_number": ("CONVERTED TO JOB NUMBER", "JOB NUMBER"),
    },
    "suppliers": {
        "id": ("SUPPLIER ID", "ID"),
        "supplier_number": ("SUPPLIER NUMBER", "SUPPLIER NO"),
        "name": ("NAME", "SUPPLIER NAME", "SUPPLIER"),
        "business_number": ("ABN", "BUSINESS NUMBER"),
        **_PERSON,
        "fax": ("FAX", "FAX NUMBER"),
        "notes": ("NOTES",),
        "expense_account": ("EXPENSE ACCOUNT",),
        **_ADDRESS,
    },
    "bills": {
        "id": ("BILL ID", "SUPPLIER INVOICE ID", "ID"),
        "@supplier": ("SUPPLIER", "SUPPLIER NAME"),
        "supplier_id": ("SUPPLIER ID",),
        "tracking_number": ("TRACKING NUMBER", "SUPPLIER INVOICE NUMBER", "BILL NUMBER", "INVOICE NUMBER"),
        "reference": ("REFERENCE", "REF"),
        "type": ("TYPE",),
        "invoice_date": ("INVOICE DATE", "BILL DATE", "DATE"),
        "due_date": ("DUE DATE",),
        "created_on": ("CREATED ON", "DATE CREATED", "CREATED"),
        "accepted": ("ACCEPTED",),
        "account_code": ("ACCOUNT CODE",),
        "is_expense": ("IS EXPENSE", "EXPENSE"),
        "sent_to_accounts": ("SENT TO ACCOUNTS", "SENT TO ACCOUNTING"),
        "total_ex_tax": ("TOTAL EX TAX", "TOTAL AMOUNT EX TAX"),
        "total_inc_tax": ("TOTAL INC TAX", "TOTAL AMOUNT INC TAX", "TOTAL"),
        "job_id": ("JOB ID",),
        "@job_number": ("JOB NUMBER",),
    },
    "bill_lines": {
        "@bill_id": ("BILL ID", "SUPPLIER INVOICE ID"),
        "@tracking_number": ("TRACKING NUMBER", "SUPPLIER INVOICE NUMBER", "BILL NUMBER"),
        "line_number": ("LINE NUMBER", "LINE", "LINE NO"),
        "description": ("DESCRIPTION",),
        "part_number": ("PART NUMBER", "PART NO", "CODE"),
        "quantity": ("QUANTITY", "QTY"),
        "unit_cost_ex_tax": ("UNIT COST EX TAX", "UNIT COST", "COST"),
        "total_ex_tax": ("TOTAL EX TAX", "TOTAL AMOUNT EX TAX", "LINE TOTAL"),
        "total_inc_tax": ("TOTAL INC TAX", "TOTAL AMOUNT INC TAX"),
        "account_code": ("ACCOUNT CODE",),
        "reference": ("REFERENCE", "REF"),
        "is_taxable": ("TAXABLE", "IS TAXABLE"),
        "id": ("LINE ID", "ID"),
    },
}


# fmt: on
@dataclass(frozen=True)
class SheetRef:
    """Where a kind of sheet lives: workbook stem and sheet name (matched after normalisation)."""

    kind: str
    workbook: str
    sheet: str


SHEETS: dict[str, SheetRef] = {
    "customers": SheetRef("customers", "customers", "Customers"),
    "contacts": SheetRef("contacts", "customers", "Contacts"),
    "equipment": SheetRef("equipment", "customers", "Equipment"),
    "jobs": SheetRef("jobs", "jobs", "Jobs"),
    "quotes": SheetRef("quotes", "quotes", "Quotes"),
    "quote_supply": SheetRef("quote_items", "quotes", "Supply"),
    "quote_labour": SheetRef("quote_items", "quotes", "Labour"),
    "invoices": SheetRef("invoices", "invoices", "Invoices"),
    "invoice_lines": SheetRef("invoice_lines", "invoices", "Invoice Lines"),
    "staff": SheetRef("staff", "staff", "Staff"),
    "notes": SheetRef("notes", "notes", "Notes"),
    "attachments": SheetRef("attachments", "attachments", "Attachments"),
    "form_responses": SheetRef("form_responses", "form_responses", "Form Responses"),
    "enquiries": SheetRef("enquiries", "enquiries", "Enquiries"),
    "suppliers": SheetRef("suppliers", "supplier_bills", "Suppliers"),
    "bills": SheetRef("bills", "supplier_bills", "Bills"),
    "bill_lines": SheetRef("bill_lines", "supplier_bills", "Bill Lines"),
}
# The sheet a workbook-named CSV (``jobs.csv``) or a single-sheet workbook stands for.
MAIN_SHEET = {
    "customers": "customers",
    "jobs": "jobs",
    "quotes": "quotes",
    "invoices": "invoices",
    "staff": "staff",
    "notes": "notes",
    "attachments": "attachments",
    "form_responses": "form_responses",
    "enquiries": "enquiries",
    "supplier_bills": "suppliers",
}

# Canonical object -> sheets it is read from.
OBJECT_SHEETS: dict[str, tuple[str, ...]] = {
    "customer": ("customers",),
    "site": ("customers",),
    "contact": ("contacts",),
    "equipment": ("equipment",),
    "job": ("jobs",),
    "job_section": ("jobs",),
    "job_type": ("jobs", "quotes"),
    "quote": ("quotes",),
    "quote_section": ("quotes",),
    "quote_line_item": ("quote_supply", "quote_labour"),
    "invoice": ("invoices",),
    "invoice_line": ("invoice_lines",),
    "staff_user": ("staff",),
    "note": ("notes",),
    "attachment": ("attachments",),
    "form_response": ("form_responses",),
    "enquiry": ("enquiries",),
    "supplier": ("suppliers",),
    "supplier_bill": ("bills",),
    "supplier_bill_line": ("bill_lines",),
}
# Job / quote columns a section row repeats from its parent; not kept on the section (documented).
_SECTION_INHERITED = frozenset(
    {
        "pricing_method",
        "purchase_order_number",
        "client_order_number",
        "address_line1",
        "address_line2",
        "suburb",
        "state",
        "postcode",
        "country",
        "latitude",
        "longitude",
        "site_contact_id",
        "billing_contact_id",
        "booking_date",
        "expected_date",
        "expected_duration_hours",
        "estimated_duration_hours",
        "invoice_number",
        "team",
        "priority",
        "job_type_id",
        "work_undertaken",
        "total_tax",
        "quote_date",
        "due_date",
        "valid_until_date",
        "reason_for_loss",
        "variation_for_job_number",
        "enquiry_id",
        "description",
        "status",
        "date_created",
    }
)
_ENTITY_TYPES = {
    "customer": "Customer",
    "site": "Site",
    "job": "Job",
    "quote": "Quotation",
    "quotation": "Quotation",
    "invoice": "Invoice",
    "enquiry": "Enquiry",
    "lead": "Enquiry",
}
_NOT_IN_MODEL = "column not in the canonical model; kept in issues"
_SECTION_NUMBER = re.compile(r"^(.+)\.(\d+)$")

# Some exports carry 20,000-character cells; the csv module's default field limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).split()) if isinstance(value, str) else str(value)


def _false(value: Any) -> bool:
    try:
        return not to_bool(value)
    except CoercionError:
        return False


def _sum(a: Any, b: Any) -> Any:
    """ex + tax, exact, when both read as numbers (else None: canonical_record flags bad inputs anyway)."""
    if _blank(a) or _blank(b):
        return None
    try:
        return to_decimal(a) + to_decimal(b)
    except CoercionError:
        return None


# ---------------------------------------------------------------------------------------------------
# Tables: one sheet of one file, streamed


@dataclass
class _Table:
    path: Path
    sheet: str | None  # None for CSV
    label: str  # "jobs.xlsx:Jobs" or "jobs__Jobs.csv"
    opener: Callable[[Path], Any] | None = None  # returns the (cached) read-only workbook
    headings: list[Any] = field(default_factory=list)

    def stream(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """Yield (spreadsheet row number, values) for each non-empty data row; sets ``headings`` first."""
        rows = self._raw_rows()
        try:
            for number, row in rows:
                if any(not _blank(v) for v in row):
                    self.headings = list(row)
                    break
            else:
                self.headings = []
                return
            yield from ((n, r) for n, r in rows if any(not _blank(v) for v in r))
        finally:
            rows.close()

    def _raw_rows(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        if self.sheet is None:
            yield from self._csv_rows()
            return
        assert self.opener is not None
        ws = self.opener(self.path)[self.sheet]
        ws.reset_dimensions()  # other tools write wrong <dimension> tags; read what is really there
        yield from _sheet_rows(ws)

    @cached_property
    def encoding(self) -> str:
        """Decided once per file: a sheet is streamed once per object it holds and for the indexes."""
        return csv_encoding(self.path)

    def _csv_rows(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        with self.path.open(encoding=self.encoding, newline="", errors="replace") as fh:
            lines = (line.replace("\x00", "") for line in fh)  # csv refuses NUL bytes
            for number, row in enumerate(csv.reader(lines), start=1):
                yield number, tuple(None if v == "" else v for v in row)


def csv_encoding(path: Path, chunk: int = 1 << 20) -> str:
    """UTF-8 (with or without a byte-order mark) when the whole file decodes as UTF-8, else Windows-1252.

    A CSV export opened and saved again in Excel on Windows comes back in the ANSI code page, 1252 for
    English-speaking tenants. Read as UTF-8, every accented name (Zoë, Café) would turn into U+FFFD and
    be lost; read as 1252, they survive. The check decodes the file once, incrementally, so memory
    stays at one chunk; UTF-8 text that is not plain ASCII almost never also decodes wrongly as 1252.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8-sig"


class _Columns:
    """Heading -> key mapping of one table, built once from its heading row."""

    def __init__(self, kind: str, headings: list[Any]):
        lookup: dict[str, str] = {}
        for key, names in SYNONYMS[kind].items():
            for name in names:
                lookup.setdefault(norm_heading(name), key)
        self.at: dict[str, int] = {}
        self.unknown: list[tuple[int, str]] = []
        for index, heading in enumerate(headings):
            if _blank(heading):
                continue
            key = lookup.get(norm_heading(heading))
            if key is not None and key not in self.at:
                self.at[key] = index
            else:  # unknown, or a second column claiming a key already taken: kept as extra
                self.unknown.append((index, str(heading).strip()))
        self.headings = {key: str(headings[i]).strip() for key, i in self.at.items()}

    def has(self, key: str) -> bool:
        return key in self.at

    def values(self, row: tuple[Any, ...]) -> dict[str, Any]:
        size = len(row)
        return {key: row[i] for key, i in self.at.items() if i < size}

    def extras(self, row: tuple[Any, ...]) -> list[tuple[str, Any]]:
        size = len(row)
        return [(h, row[i]) for i, h in self.unknown if i < size and not _blank(row[i])]


# ---------------------------------------------------------------------------------------------------
# The reader


class ExportReader:
    """:class:`~airflow_ascora_provider.source.reader.SourceReader` over a folder of Ascora exports."""

    name = "exports"

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        self._workbooks: dict[Path, Any] = {}
        self._tables = self._discover(folder, self._workbook)
        if not self._tables and (folder / "exports").is_dir():  # a tenant directory
            self.folder = folder / "exports"
            self._tables = self._discover(self.folder, self._workbook)
        self._customers: _CustomerIndex | None = None
        self._staff: dict[str, str] | None = None
        self._contacts: dict[tuple[str, str], str] | None = None
        self._numbers: dict[str, dict[str, str]] = {}  # sheet kind -> number -> id (complete)
        self._seen: dict[str, dict[str, str]] = {}  # sheet kind -> number -> id (filled while streaming)

    # -- workbooks ----------------------------------------------------------------------------------------

    def _workbook(self, path: Path) -> Any:
        """One read-only workbook per file for the reader's lifetime.

        ``load_workbook(read_only=True)`` scans every sheet of the file for its ``<dimension>`` tag, and
        when the tag is missing (openpyxl's own write-only files, many other tools) that scan is a
        full parse of every sheet. Loading each file once, instead of once per pass, saves that.
        Rows themselves are never cached: each pass streams the sheet from the zip again.
        """
        wb = self._workbooks.get(path)
        if wb is None:
            wb = _load_read_only(path)
            self._workbooks[path] = wb
        return wb

    def close(self) -> None:
        """Release the open workbook files (also done on ``with ExportReader(...)`` exit)."""
        for wb in self._workbooks.values():
            wb.close()
        self._workbooks.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- discovery ----------------------------------------------------------------------------------------

    @staticmethod
    def _discover(folder: Path, opener: Callable[[Path], Any]) -> dict[str, _Table]:
        """Map sheet kinds to tables. xlsx sheets win over CSVs of the same sheet."""
        if not folder.is_dir():
            return {}
        by_workbook = {norm_heading(ref.workbook): ref.workbook for ref in SHEETS.values()}
        sheet_kinds = {(ref.workbook, norm_heading(ref.sheet)): key for key, ref in SHEETS.items()}
        unique_sheets: dict[str, list[str]] = {}
        for key, ref in SHEETS.items():
            unique_sheets.setdefault(norm_heading(ref.sheet), []).append(key)
        tables: dict[str, _Table] = {}
        csv_tables: dict[str, _Table] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(("~$", ".")):
                continue
            suffix = path.suffix.lower()
            if suffix in (".xlsx", ".xlsm"):
                workbook = by_workbook.get(norm_heading(path.stem))
                if workbook is None:
                    continue
                names = _sheet_names(path)
                for name in names:
                    key = sheet_kinds.get((workbook, norm_heading(name)))
                    if key is not None and key not in tables:
                        tables[key] = _Table(path, name, f"{path.name}:{name}", opener)
                main = MAIN_SHEET[workbook]
                if len(names) == 1 and main not in tables:
                    tables[main] = _Table(path, names[0], f"{path.name}:{names[0]}", opener)
            elif suffix == ".csv":
                stem = path.stem
                key = None
                if "__" in stem:
                    wb_part, _, sheet_part = stem.partition("__")
                    workbook = by_workbook.get(norm_heading(wb_part))
                    if workbook is not None:
                        key = sheet_kinds.get((workbook, norm_heading(sheet_part)))
                else:
                    workbook = by_workbook.get(norm_heading(stem))
                    if workbook is not None:
                        key = MAIN_SHEET[workbook]
                    elif len(unique_sheets.get(norm_heading(stem), ())) == 1:
                        key = unique_sheets[norm_heading(stem)][0]
                if key is not None and key not in csv_tables:
                    csv_tables[key] = _Table(path, None, path.name)
        for key, table in csv_tables.items():
            tables.setdefault(key, table)
        return tables

    def sheets(self) -> dict[str, str]:
        """Which file/sheet each sheet kind was found in (for logs and the audit report)."""
        return {key: table.label for key, table in self._tables.items()}

    def objects(self) -> tuple[str, ...]:
        available = [obj for obj, kinds in OBJECT_SHEETS.items() if any(k in self._tables for k in kinds)]
        return tuple(name for name in dependency_order() if name in available)

    # -- streaming helpers --------------------------------------------------------------------------------

    def _rows(self, sheet_key: str) -> Iterator[tuple[_Columns, int, tuple[Any, ...], str]]:
        table = self._tables.get(sheet_key)
        if table is None:
            return
        columns: _Columns | None = None
        for number, row in table.stream():
            if columns is None:
                columns = _Columns(SHEETS[sheet_key].kind, table.headings)
            yield columns, number, row, f"{table.label}!R{number}"

    @staticmethod
    def derived_id(object_name: str, *parts: Any) -> str:
        """``job:J1042``, ``customer:harbourside plumbing``: names fold case, numbers and ids do not."""
        return object_name + ":" + ":".join(str(p) for p in parts)

    def _natural_id(self, object_name: str, values: dict[str, Any], origin: str) -> str:
        schema = MODEL[object_name]
        parts = []
        for key in schema.natural_key:
            value = values.get(key)
            if _blank(value):
                parts = []
                break
            text = _text(value) or ""
            parts.append(text.casefold() if "name" in key else text)
        if not parts:  # no natural key (or a blank one): the row's place in the export is stable
            return f"{object_name}:@{origin}"
        return self.derived_id(object_name, *parts)

    def _finish(
        self,
        object_name: str,
        values: dict[str, Any],
        origin: str,
        issues: list[Issue],
        spill: list[tuple[str, Any]],
        fetch: Callable[[], bytes] | None = None,
    ) -> RawRecord:
        """Unknown columns -> custom_fields (or an Issue each); fill the id; build the RawRecord."""
        schema = MODEL[object_name]
        if schema.has_field("custom_fields"):
            # always a mapping (empty when the row has none), as the API's ``customFields: []`` gives
            custom = values.get("custom_fields")
            custom = dict(custom) if isinstance(custom, dict) else {}
            for heading, value in spill:
                custom.setdefault(heading, value)
            values["custom_fields"] = custom
        elif spill:
            issues.extend(Issue(heading, value, _NOT_IN_MODEL) for heading, value in spill)
        if _blank(values.get("id")):
            values["id"] = self._natural_id(object_name, values, origin)
        return RawRecord(values=values, origin=origin, issues=issues, fetch=fetch)

    @staticmethod
    def _split(
        object_name: str, columns: _Columns, row_values: dict[str, Any], ignore: frozenset[str] = frozenset()
    ) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
        """Schema fields of the row, and the known-but-not-in-this-schema columns to spill."""
        schema = MODEL[object_name]
        values: dict[str, Any] = {}
        spill: list[tuple[str, Any]] = []
        for key, value in row_values.items():
            if key.startswith("@"):
                continue
            if schema.has_field(key):
                values[key] = value
            elif key not in ignore and not _blank(value) and not (key in _BOOLEAN_KEYS and _false(value)):
                spill.append((columns.headings[key], value))
        return values, spill

    # -- indexes ------------------------------------------------------------------------------------------

    def _customer_index(self) -> _CustomerIndex | None:
        if self._customers is None and "customers" in self._tables:
            index = _CustomerIndex()
            pending: list[tuple[str, str]] = []  # (site id, billing name) to resolve after the pass
            for columns, _number, row, origin in self._rows("customers"):
                v = columns.values(row)
                ident, name, is_site, billing_id, billing_name = self._customer_identity(v, origin)
                index.add(ident, name, billing_id if is_site else None, is_site)
                if is_site and billing_id is None and billing_name:
                    pending.append((ident, billing_name))
            for ident, billing_name in pending:
                index.billing_of[ident] = index.billing_by_name.get(_key(billing_name))
            self._customers = index
        return self._customers

    def _customer_identity(
        self, v: dict[str, Any], origin: str
    ) -> tuple[str, str | None, bool, str | None, str | None]:
        """(id, name, is_site, billing id, billing name) of a Customers row."""
        name = _text(v.get("name"))
        billing_id = _text(v.get("@billing_customer_id"))
        billing_name = _text(v.get("@billing_customer"))
        own_id = _text(v.get("id"))
        is_site = bool(billing_id or billing_name)
        if is_site and (
            (billing_id and billing_id == own_id)
            or (not billing_id and name and billing_name and _key(billing_name) == _key(name))
        ):
            is_site = False  # a billing customer that names itself as its billing customer
        if own_id is None:
            own_id = self._natural_id("site" if is_site else "customer", {"name": name}, origin)
        return own_id, name, is_site, billing_id, billing_name

    def _staff_index(self) -> dict[str, str] | None:
        if self._staff is None and "staff" in self._tables:
            index: dict[str, str] = {}
            for columns, _number, row, origin in self._rows("staff"):
                v = columns.values(row)
                name = self._staff_name(v)
                if name:
                    index.setdefault(
                        _key(name),
                        _text(v.get("id")) or self._natural_id("staff_user", {"full_name": name}, origin),
                    )
            self._staff = index
        return self._staff

    @staticmethod
    def _staff_name(v: dict[str, Any]) -> str | None:
        name = _text(v.get("full_name"))
        if name is None:
            parts = [p for p in (_text(v.get("first_name")), _text(v.get("last_name"))) if p]
            name = " ".join(parts) or None
        return name

    def _contact_index(self) -> dict[tuple[str, str], str]:
        if self._contacts is None:
            index: dict[tuple[str, str], str] = {}
            for record in self.iter_raw("contact"):
                v = record.values
                full = " ".join(p for p in (_text(v.get("first_name")), _text(v.get("last_name"))) if p)
                if v.get("customer_id") and full:
                    index.setdefault((v["customer_id"], _key(full)), v["id"])
            self._contacts = index
        return self._contacts

    def _number_id(self, sheet_key: str, object_name: str, number: str) -> str | None:
        """Id of a job / quote / invoice / bill by its number.

        Without the target sheet the id is derived from the number (what the target's own records
        would get). With it, the ids seen so far while streaming answer first; a miss reads the
        whole sheet once into a complete index.
        """
        number = number.strip()
        if sheet_key not in self._tables:
            return self.derived_id(self._object_for_number(object_name, number), number)
        seen = self._seen.get(sheet_key, {})
        if number in seen:
            return seen[number]
        if sheet_key not in self._numbers:
            self._numbers[sheet_key] = self._build_number_index(sheet_key)
        return self._numbers[sheet_key].get(number)

    @staticmethod
    def _object_for_number(object_name: str, number: str) -> str:
        if object_name in ("job", "quote") and _SECTION_NUMBER.match(number):
            return "job_section" if object_name == "job" else "quote_section"
        return object_name

    def _build_number_index(self, sheet_key: str) -> dict[str, str]:
        number_key, object_name = _NUMBER_KEYS[sheet_key]
        index: dict[str, str] = {}
        if sheet_key == "bills":  # a bill's derived id needs its supplier: take ids from the records
            for record in self._iter_supplier_bill():
                number = _text(record.values.get("tracking_number"))
                if number:
                    index.setdefault(number, record.values["id"])
            return index
        for columns, _number, row, origin in self._rows(sheet_key):
            v = columns.values(row)
            number = _text(v.get(number_key))
            if number is None:
                continue
            ident = _text(v.get("id")) or self.derived_id(
                self._object_for_number(object_name, number), number
            )
            index.setdefault(number, ident)
        return index

    def _remember(self, sheet_key: str, number: str | None, ident: str | None) -> None:
        if number and ident:
            self._seen.setdefault(sheet_key, {}).setdefault(number, ident)

    # -- reference resolution -------------------------------------------------------------------------------

    def _resolve_customer(
        self, name: str | None, ident: str | None, issues: list[Issue], field_name: str, *, prefer_site: bool
    ) -> tuple[str | None, bool, str | None]:
        """(id, is_site, billing id of a site) for a customer named in a row; Issue when unresolvable."""
        index = self._customer_index()
        if ident:
            if index is not None and ident in index.billing_of:
                billing = index.billing_of[ident]
                return ident, index.is_site.get(ident, False), billing
            return ident, prefer_site, None
        if not name:
            return None, False, None
        if index is None:  # no customers export: derive the id the customer's own record would get
            obj = "site" if prefer_site else "customer"
            return self.derived_id(obj, _key(name)), prefer_site, None
        key = _key(name)
        order = (
            (index.site_by_name, index.billing_by_name)
            if prefer_site
            else (index.billing_by_name, index.site_by_name)
        )
        for table in order:
            if key in table:
                found = table[key]
                return found, index.is_site.get(found, False), index.billing_of.get(found)
        issues.append(Issue(field_name, name, f"no customer named {name!r} in customers export"))
        return None, False, None

    def _parties(self, v: dict[str, Any], issues: list[Issue]) -> dict[str, Any]:
        """customer_id (billing) and site_id of a job or quote row.

        Ascora's rule: the site defaults to the billing customer and the billing customer to the site's
        own billing customer. A "site" that is really a billing customer leaves site_id empty.
        """
        site_name = _text(v.get("@site_customer"))
        site_ref = _text(v.get("@site_customer_id"))
        billing_name = _text(v.get("@billing_customer"))
        billing_ref = _text(v.get("@billing_customer_id"))
        site_id, site_is_site, site_billing = self._resolve_customer(
            site_name, site_ref, issues, "site_id", prefer_site=True
        )
        customer_id, customer_is_site, customer_billing = self._resolve_customer(
            billing_name, billing_ref, issues, "customer_id", prefer_site=False
        )
        if customer_id is not None and customer_is_site and customer_billing:
            customer_id = customer_billing  # a site named as the billing customer: bill its payer
        if customer_id is None:
            customer_id = site_billing if site_is_site else site_id
        if site_id is not None and (site_id == customer_id or not site_is_site):
            site_id = None  # the "site" is the billing customer itself (a residential job, say)
        return {"customer_id": customer_id, "site_id": site_id}

    def _staff_ref(
        self, name: Any, ident: Any, issues: list[Issue], field_name: str = "assigned_user_id"
    ) -> str | None:
        ident = _text(ident)
        if ident:
            return ident
        name = _text(name)
        if not name:
            return None
        index = self._staff_index()
        if index is None:
            return self.derived_id("staff_user", _key(name))
        found = index.get(_key(name))
        if found is None:
            issues.append(Issue(field_name, name, f"no staff user named {name!r} in staff export"))
        return found

    def _contact_ref(
        self, name: Any, customer_id: str | None, issues: list[Issue], field_name: str
    ) -> str | None:
        name = _text(name)
        if not name:
            return None
        if "contacts" not in self._tables:
            return (
                None if customer_id is None else self.derived_id("contact", customer_id, *_split_name(name))
            )
        found = self._contact_index().get((customer_id or "", _key(name)))
        if found is None:
            issues.append(
                Issue(field_name, name, f"no contact named {name!r} for this customer in customers export")
            )
        return found

    def _number_ref(
        self, sheet_key: str, object_name: str, number: Any, issues: list[Issue], field_name: str, what: str
    ) -> str | None:
        number = _text(number)
        if not number:
            return None
        found = self._number_id(sheet_key, object_name, number)
        if found is None:
            issues.append(
                Issue(
                    field_name,
                    number,
                    f"no {what} numbered {number!r} in {SHEETS[sheet_key].workbook} export",
                )
            )
        return found

    # -- the SourceReader entry point -------------------------------------------------------------------

    def iter_raw(self, object_name: str) -> Iterator[RawRecord]:
        if object_name not in MODEL:
            raise KeyError(f"unknown Ascora object {object_name!r}")
        method = getattr(self, f"_iter_{object_name}", None)
        if method is None or not any(k in self._tables for k in OBJECT_SHEETS.get(object_name, ())):
            return iter(())
        return method()

    # customers and sites --------------------------------------------------------------------------

    def _iter_customer(self) -> Iterator[RawRecord]:
        yield from self._customer_rows(want_site=False)

    def _iter_site(self) -> Iterator[RawRecord]:
        yield from self._customer_rows(want_site=True)

    def _customer_rows(self, want_site: bool) -> Iterator[RawRecord]:
        obj = "site" if want_site else "customer"
        for columns, _number, row, origin in self._rows("customers"):
            v = columns.values(row)
            ident, _name, is_site, billing_id, billing_name = self._customer_identity(v, origin)
            if is_site != want_site:
                continue
            issues: list[Issue] = []
            values, spill = self._split(obj, columns, v)
            values["id"] = ident
            if want_site:
                if billing_id is None and billing_name:
                    billing_id, _s, _b = self._resolve_customer(
                        billing_name, None, issues, "billing_customer_id", prefer_site=False
                    )
                values["billing_customer_id"] = billing_id
            else:
                flag = v.get("@is_company")
                values["is_company"] = flag if not _blank(flag) else not _blank(values.get("company_name"))
            yield self._finish(obj, values, origin, issues, spill + columns.extras(row))

    # contacts and equipment -----------------------------------------------------------------------

    def _iter_contact(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("contacts"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("contact", columns, v)
            customer_id, _is_site, _billing = self._resolve_customer(
                _text(v.get("@customer")),
                _text(v.get("@customer_id")),
                issues,
                "customer_id",
                prefer_site=False,
            )
            values["customer_id"] = customer_id
            yield self._finish("contact", values, origin, issues, spill + columns.extras(row))

    def _iter_equipment(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("equipment"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("equipment", columns, v)
            customer_id, is_site, billing = self._resolve_customer(
                _text(v.get("@customer")),
                _text(v.get("@customer_id")),
                issues,
                "customer_id",
                prefer_site=False,
            )
            site_id, site_is_site, site_billing = self._resolve_customer(
                _text(v.get("@site")), _text(v.get("@site_id")), issues, "site_id", prefer_site=True
            )
            if customer_id is not None and is_site:  # equipment filed under a site: its payer is the customer
                site_id = site_id or customer_id
                customer_id = billing
            if customer_id is None and site_is_site:
                customer_id = site_billing
            values["customer_id"] = customer_id
            values["site_id"] = site_id if site_id != customer_id else None
            yield self._finish("equipment", values, origin, issues, spill + columns.extras(row))

    # jobs and job sections ------------------------------------------------------------------------

    def _iter_job(self) -> Iterator[RawRecord]:
        yield from self._job_rows(want_section=False)

    def _iter_job_section(self) -> Iterator[RawRecord]:
        yield from self._job_rows(want_section=True)

    @staticmethod
    def _section_parent(v: dict[str, Any], number: str | None, parent_key: str) -> tuple[bool, str | None]:
        """Is this row a section/stage, and its parent's number (PARENT ... NUMBER, or before the dot)."""
        parent = _text(v.get(parent_key))
        flag = v.get("@is_section")
        match = _SECTION_NUMBER.match(number) if number else None
        flagged = False
        if not _blank(flag):
            try:
                flagged = to_bool(flag)
            except CoercionError:  # "J1.01" in the flag column: the number of the section itself
                flagged = bool(_SECTION_NUMBER.match(str(flag).strip()))
        is_section = flagged or bool(parent) or bool(match)
        if is_section and not parent and match:
            parent = match.group(1)
        return is_section, parent

    def _job_rows(self, want_section: bool) -> Iterator[RawRecord]:
        obj = "job_section" if want_section else "job"
        for columns, _number, row, origin in self._rows("jobs"):
            v = columns.values(row)
            number = _text(v.get("job_number"))
            is_section, parent = self._section_parent(v, number, "@parent_job_number")
            if not is_section:
                self._remember(
                    "jobs", number, _text(v.get("id")) or (number and self.derived_id("job", number))
                )
            if is_section != want_section:
                continue
            issues: list[Issue] = []
            if want_section:
                values, spill = self._split(obj, columns, v, ignore=_SECTION_INHERITED)
                values["job_id"] = (
                    self._number_ref("jobs", "job", parent, issues, "job_id", "job") if parent else None
                )
                order = v.get("@display_order")
                if _blank(order) and number and _SECTION_NUMBER.match(number):
                    order = int(_SECTION_NUMBER.match(number).group(2))
                values["display_order"] = order
                values["total_inc_tax"] = (
                    v.get("total_inc_tax")
                    if not _blank(v.get("total_inc_tax"))
                    else _sum(v.get("total_ex_tax"), v.get("total_tax"))
                )
                values["assigned_user_name"] = _text(v.get("@assigned_to"))
                values["assigned_user_id"] = self._staff_ref(
                    v.get("@assigned_to"), v.get("@assigned_to_id"), issues
                )
                yield self._finish(obj, values, origin, issues, spill + columns.extras(row))
                continue
            values, spill = self._split(obj, columns, v)
            values.update(self._parties(v, issues))
            if columns.has("@site_contact") or columns.has("site_contact_id"):
                if _blank(values.get("site_contact_id")):
                    values["site_contact_id"] = self._contact_ref(
                        v.get("@site_contact"),
                        values["site_id"] or values["customer_id"],
                        issues,
                        "site_contact_id",
                    )
                if _blank(values.get("billing_contact_id")):
                    values["billing_contact_id"] = self._contact_ref(
                        v.get("@billing_contact"), values["customer_id"], issues, "billing_contact_id"
                    )
            job_type = _text(v.get("@job_type"))
            values["job_type_name"] = job_type
            if _blank(values.get("job_type_id")) and job_type:
                values["job_type_id"] = job_type_id(job_type)
            values["assigned_user_name"] = _text(v.get("@assigned_to"))
            values["assigned_user_id"] = self._staff_ref(
                v.get("@assigned_to"), v.get("@assigned_to_id"), issues
            )
            quote_id = _text(v.get("@quote_id"))
            if quote_id is None and not _blank(v.get("@quote_number")):
                quote_id = self._number_ref(
                    "quotes", "quote", v.get("@quote_number"), issues, "quote_id", "quote"
                )
            values["quote_id"] = quote_id
            if _blank(values.get("total_inc_tax")):
                values["total_inc_tax"] = _sum(v.get("total_ex_tax"), v.get("total_tax"))
            yield self._finish(obj, values, origin, issues, spill + columns.extras(row))

    def _iter_job_type(self) -> Iterator[RawRecord]:
        """Distinct JOB TYPE names over the Jobs and Quotes sheets (Ascora has no job-type export)."""
        seen: set[str] = set()
        for sheet_key in ("jobs", "quotes"):
            for columns, _number, row, origin in self._rows(sheet_key):
                v = columns.values(row)
                name = _text(v.get("@job_type"))
                if not name:
                    continue
                ident = _text(v.get("job_type_id")) or job_type_id(name)
                if ident in seen:
                    continue
                seen.add(ident)
                yield RawRecord(values={"id": ident, "name": name, "is_default": None}, origin=origin)

    # quotes, sections, line items -----------------------------------------------------------------

    def _iter_quote(self) -> Iterator[RawRecord]:
        yield from self._quote_rows(want_section=False)

    def _iter_quote_section(self) -> Iterator[RawRecord]:
        yield from self._quote_rows(want_section=True)

    def _quote_rows(self, want_section: bool) -> Iterator[RawRecord]:
        obj = "quote_section" if want_section else "quote"
        for columns, _number, row, origin in self._rows("quotes"):
            v = columns.values(row)
            number = _text(v.get("quote_number"))
            is_section, parent = self._section_parent(v, number, "@parent_quote_number")
            if not is_section:
                self._remember(
                    "quotes", number, _text(v.get("id")) or (number and self.derived_id("quote", number))
                )
            if is_section != want_section:
                continue
            issues: list[Issue] = []
            if want_section:
                values, spill = self._split(obj, columns, v, ignore=_SECTION_INHERITED | _QUOTE_ONLY)
                values["quote_id"] = (
                    self._number_ref("quotes", "quote", parent, issues, "quote_id", "quote")
                    if parent
                    else None
                )
                order = v.get("@display_order")
                if _blank(order) and number and _SECTION_NUMBER.match(number):
                    order = int(_SECTION_NUMBER.match(number).group(2))
                values["display_order"] = order
                values["total_inc_tax"] = (
                    v.get("total_inc_tax")
                    if not _blank(v.get("total_inc_tax"))
                    else _sum(v.get("total_ex_tax"), v.get("total_tax"))
                )
                yield self._finish(obj, values, origin, issues, spill + columns.extras(row))
                continue
            values, spill = self._split(obj, columns, v)
            values.update(self._parties(v, issues))
            job_type = _text(v.get("@job_type"))
            values["job_type_name"] = job_type
            if _blank(values.get("job_type_id")) and job_type:
                values["job_type_id"] = job_type_id(job_type)
            values["assigned_user_name"] = _text(v.get("@assigned_to"))
            values["assigned_user_id"] = self._staff_ref(
                v.get("@assigned_to"), v.get("@assigned_to_id"), issues
            )
            if _blank(values.get("total_inc_tax")):
                values["total_inc_tax"] = _sum(v.get("total_ex_tax"), v.get("total_tax"))
            if not _blank(v.get("@booking_date")):  # template column the quote model has no field for
                spill.append((columns.headings["@booking_date"], v["@booking_date"]))
            yield self._finish(obj, values, origin, issues, spill + columns.extras(row))

    def _iter_quote_line_item(self) -> Iterator[RawRecord]:
        for sheet_key, default_type in (("quote_supply", "SUPPLY"), ("quote_labour", "LABOUR")):
            for columns, _number, row, origin in self._rows(sheet_key):
                v = columns.values(row)
                issues: list[Issue] = []
                values, spill = self._split("quote_line_item", columns, v)
                quote_number = _text(v.get("@quote_number"))
                quote_id = _text(v.get("@quote_id"))
                if quote_id is None and quote_number:
                    quote_id = self._number_ref("quotes", "quote", quote_number, issues, "quote_id", "quote")
                values["quote_id"] = quote_id
                section = _text(values.get("section_quote_number"))
                if section and section.isdigit() and quote_number:  # "01" style section numbers
                    section = f"{quote_number}.{int(section):02d}"
                values["section_quote_number"] = section
                if _blank(values.get("item_type")):
                    values["item_type"] = default_type
                if default_type == "LABOUR" and _blank(values.get("quantity")):
                    values["quantity"] = values.get("hours")
                yield self._finish("quote_line_item", values, origin, issues, spill + columns.extras(row))

    # invoices -------------------------------------------------------------------------------------

    def _iter_invoice(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("invoices"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("invoice", columns, v)
            customer_id, is_site, billing = self._resolve_customer(
                _text(v.get("@billing_customer")),
                _text(v.get("@billing_customer_id")),
                issues,
                "customer_id",
                prefer_site=False,
            )
            values["customer_id"] = billing if is_site and billing else customer_id
            if _blank(values.get("job_id")) and not _blank(values.get("job_number")):
                values["job_id"] = self._number_ref(
                    "jobs", "job", values["job_number"], issues, "job_id", "job"
                )
            self._remember("invoices", _text(values.get("invoice_number")), _text(values.get("id")))
            yield self._finish("invoice", values, origin, issues, spill + columns.extras(row))

    def _iter_invoice_line(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("invoice_lines"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("invoice_line", columns, v)
            invoice_id = _text(v.get("@invoice_id"))
            if invoice_id is None:
                invoice_id = self._number_ref(
                    "invoices", "invoice", v.get("@invoice_number"), issues, "invoice_id", "invoice"
                )
            values["invoice_id"] = invoice_id
            yield self._finish("invoice_line", values, origin, issues, spill + columns.extras(row))

    # staff, notes, attachments, forms, enquiries --------------------------------------------------

    def _iter_staff_user(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("staff"):
            v = columns.values(row)
            values, spill = self._split("staff_user", columns, v)
            values["full_name"] = self._staff_name(v)
            yield self._finish("staff_user", values, origin, [], spill + columns.extras(row))

    def _entity(self, v: dict[str, Any], values: dict[str, Any], issues: list[Issue]) -> None:
        """Fold ENTITY TYPE onto the model's names; a Customer note on a site becomes a Site note."""
        kind = _text(values.get("entity_type"))
        if kind:
            kind = _ENTITY_TYPES.get(kind.casefold(), kind)
        ident = _text(values.get("entity_id"))
        number = _text(v.get("@entity_number"))
        if ident is None and number and kind:
            target = {
                "Job": ("jobs", "job"),
                "Quotation": ("quotes", "quote"),
                "Invoice": ("invoices", "invoice"),
                "Enquiry": ("enquiries", "enquiry"),
            }.get(kind)
            if target is not None:
                ident = self._number_ref(target[0], target[1], number, issues, "entity_id", target[1])
            elif kind in ("Customer", "Site"):
                ident, _s, _b = self._resolve_customer(
                    number, None, issues, "entity_id", prefer_site=kind == "Site"
                )
        if kind == "Customer" and ident:
            index = self._customer_index()
            if index is not None and index.is_site.get(ident):
                kind = "Site"
        values["entity_type"] = kind
        values["entity_id"] = ident

    def _iter_note(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("notes"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("note", columns, v)
            self._entity(v, values, issues)
            yield self._finish("note", values, origin, issues, spill + columns.extras(row))

    def _iter_attachment(self) -> Iterator[RawRecord]:
        root = self.folder.resolve()
        for columns, _number, row, origin in self._rows("attachments"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("attachment", columns, v)
            self._entity(v, values, issues)
            ident, name = _text(values.get("id")), _text(values.get("file_name"))
            rel = _text(v.get("@file_path")) or (f"attachments/{ident}/{name}" if ident and name else None)
            path = (root / rel).resolve() if rel else None
            if path is not None and root not in path.parents:
                issues.append(Issue("file_uri", rel, "file path points outside the export folder"))
                path = None
            fetch = None
            if path is not None and path.is_file():
                fetch = _reader_for(path)
            else:
                issues.append(Issue("file_uri", rel, "attachment file not found in the export"))
            yield self._finish("attachment", values, origin, issues, spill + columns.extras(row), fetch)

    def _iter_form_response(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("form_responses"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("form_response", columns, v)
            values["answers"] = dict(columns.extras(row))  # every other column is a form field code
            if _blank(values.get("job_id")) and not _blank(values.get("job_number")):
                values["job_id"] = self._number_ref(
                    "jobs", "job", values["job_number"], issues, "job_id", "job"
                )
            yield self._finish("form_response", values, origin, issues, spill)

    def _iter_enquiry(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("enquiries"):
            v = columns.values(row)
            values, spill = self._split("enquiry", columns, v)
            yield self._finish("enquiry", values, origin, [], spill + columns.extras(row))

    # suppliers and bills --------------------------------------------------------------------------

    def _supplier_index(self) -> dict[str, str]:
        if "suppliers" not in self._numbers:
            index: dict[str, str] = {}
            for columns, _number, row, origin in self._rows("suppliers"):
                v = columns.values(row)
                name = _text(v.get("name"))
                if name:
                    index.setdefault(
                        _key(name), _text(v.get("id")) or self._natural_id("supplier", {"name": name}, origin)
                    )
            self._numbers["suppliers"] = index
        return self._numbers["suppliers"]

    def _iter_supplier(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("suppliers"):
            v = columns.values(row)
            values, spill = self._split("supplier", columns, v)
            yield self._finish("supplier", values, origin, [], spill + columns.extras(row))

    def _iter_supplier_bill(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("bills"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("supplier_bill", columns, v)
            if _blank(values.get("supplier_id")):
                name = _text(v.get("@supplier"))
                if name and "suppliers" in self._tables:
                    values["supplier_id"] = self._supplier_index().get(_key(name))
                    if values["supplier_id"] is None:
                        issues.append(
                            Issue("supplier_id", name, f"no supplier named {name!r} in supplier export")
                        )
                elif name:
                    values["supplier_id"] = self.derived_id("supplier", _key(name))
            if _blank(values.get("job_id")):
                job_number = _text(v.get("@job_number"))
                reference = _text(values.get("reference"))
                if job_number:
                    values["job_id"] = self._number_ref("jobs", "job", job_number, issues, "job_id", "job")
                elif reference and _JOB_NUMBER.match(reference) and "jobs" in self._tables:
                    values["job_id"] = self._number_id("jobs", "job", reference)  # a reference, not a promise
            yield self._finish("supplier_bill", values, origin, issues, spill + columns.extras(row))

    def _iter_supplier_bill_line(self) -> Iterator[RawRecord]:
        for columns, _number, row, origin in self._rows("bill_lines"):
            v = columns.values(row)
            issues: list[Issue] = []
            values, spill = self._split("supplier_bill_line", columns, v)
            bill_id = _text(v.get("@bill_id"))
            if bill_id is None:
                bill_id = self._number_ref(
                    "bills", "supplier_bill", v.get("@tracking_number"), issues, "supplier_bill_id", "bill"
                )
            values["supplier_bill_id"] = bill_id
            yield self._finish("supplier_bill_line", values, origin, issues, spill + columns.extras(row))


_JOB_NUMBER = re.compile(r"^J\d+(\.\d+)?$", re.IGNORECASE)
_QUOTE_ONLY = frozenset({"customer_id", "site_id", "job_type_name", "assigned_user_name", "assigned_user_id"})
_BOOLEAN_KEYS = frozenset(f.name for o in MODEL.values() for f in o.fields if f.type is FieldType.BOOLEAN)
# sheet kind -> (number column key, object the numbers belong to)
_NUMBER_KEYS = {
    "jobs": ("job_number", "job"),
    "quotes": ("quote_number", "quote"),
    "invoices": ("invoice_number", "invoice"),
    "enquiries": ("enquiry_number", "enquiry"),
    "bills": ("tracking_number", "supplier_bill"),
}


def _load_read_only(path: Path) -> Any:
    """``load_workbook(path, read_only=True, data_only=True)``, minus one costly habit.

    openpyxl sizes every read-only sheet at load time by scanning for its ``<dimension>`` tag, and
    when a file has none (openpyxl's own write-only output, many exporters) the scan parses each
    whole sheet, keeping a cleared element per row until it ends. Here sheets are created with a
    size check that reads only the sheet's head; rows are then streamed by :func:`_sheet_rows`.
    Everything else is openpyxl's own loader. Any mismatch with openpyxl internals falls back to
    the plain ``load_workbook``.
    """
    from openpyxl import load_workbook

    try:
        from openpyxl.reader.excel import ExcelReader
        from openpyxl.worksheet._read_only import ReadOnlyWorksheet
        from openpyxl.worksheet._reader import DATA_TAG, DIMENSION_TAG
        from openpyxl.worksheet.dimensions import SheetDimension
        from openpyxl.xml.functions import iterparse
    except ImportError:
        return load_workbook(path, read_only=True, data_only=True)

    class _HeadSizedSheet(ReadOnlyWorksheet):
        def _get_size(self) -> None:
            src = self._get_source()
            try:
                for _event, element in iterparse(src, events=("start",)):
                    if element.tag == DIMENSION_TAG:
                        bounds = SheetDimension.from_tree(element).boundaries
                        self._min_column, self._min_row, self._max_column, self._max_row = bounds
                        return
                    if element.tag == DATA_TAG:
                        return  # no dimension: unsized, which streaming does not need
            finally:
                src.close()

    class _Reader(ExcelReader):
        def read_worksheets(self) -> None:
            for sheet, rel in self.parser.find_sheets():
                if rel.target not in self.valid_files or "chartsheet" in rel.Type:
                    continue
                ws = _HeadSizedSheet(self.wb, sheet.name, rel.target, self.shared_strings)
                ws.sheet_state = sheet.state
                self.wb._sheets.append(ws)

    try:
        reader = _Reader(path, read_only=True, data_only=True, keep_links=False)
        reader.read()
        return reader.wb
    except (AttributeError, TypeError):
        return load_workbook(path, read_only=True, data_only=True)


def _sheet_rows(ws: Any) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(row number, values) of a read-only worksheet, in memory that does not grow with the rows.

    openpyxl's own ``iter_rows`` clears each parsed ``<row>`` element but leaves it attached to
    ``<sheetData>``, so a read-only pass still keeps ~80 bytes per row (150 MB at two million rows).
    This loop drives the same openpyxl cell parser (shared strings, number formats, dates, data_only)
    and detaches every row once parsed. It uses openpyxl internals, so any mismatch falls back to
    ``iter_rows`` (correct, just not flat).
    """
    try:
        from openpyxl.worksheet._reader import WorkSheetParser
        from openpyxl.xml.constants import SHEET_MAIN_NS
        from openpyxl.xml.functions import iterparse

        wb = ws.parent
        src = ws._get_source()
        parser = WorkSheetParser(
            src,
            ws._shared_strings,
            data_only=wb.data_only,
            epoch=wb.epoch,
            date_formats=wb._date_formats,
            timedelta_formats=wb._timedelta_formats,
        )
        row_tag, data_tag = f"{{{SHEET_MAIN_NS}}}row", f"{{{SHEET_MAIN_NS}}}sheetData"
    except (ImportError, AttributeError, TypeError):
        yield from enumerate(ws.iter_rows(values_only=True), start=1)
        return
    try:
        expected = 1
        sheet_data = None
        for event, element in iterparse(src, events=("start", "end")):
            if event == "start":
                if element.tag == data_tag:
                    sheet_data = element
                continue
            if element.tag == row_tag:
                number, cells = parser.parse_row(element)
                element.clear()
                if sheet_data is not None:
                    sheet_data.remove(element)  # the line that keeps memory flat
                parser.row_dimensions.clear()
                while expected < number:  # rows missing from the XML are empty rows
                    yield expected, ()
                    expected += 1
                width = max((c["column"] for c in cells), default=0)
                values: list[Any] = [None] * width
                for cell in cells:
                    values[cell["column"] - 1] = cell["value"]
                yield number, tuple(values)
                expected = number + 1
            elif element.tag == data_tag:
                break
    finally:
        src.close()


def _sheet_names(path: Path) -> list[str]:
    """Sheet names from ``xl/workbook.xml`` without loading the workbook (which would parse every sheet)."""
    try:
        with zipfile.ZipFile(path) as zf:
            root = ElementTree.fromstring(zf.read("xl/workbook.xml"))
        names = [el.get("name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "sheet"]
        if names and all(names):
            return names
    except (KeyError, zipfile.BadZipFile, ElementTree.ParseError):
        pass
    from openpyxl import load_workbook  # unusual package layout: let openpyxl work it out

    wb = load_workbook(path, read_only=True, data_only=True)
    try:
        return list(wb.sheetnames)
    finally:
        wb.close()


def job_type_id(name: str) -> str:
    """Derived job-type id: ``jobtype:<normalised name>`` (Ascora exports carry job types by name only)."""
    return "jobtype:" + _key(name)


def _split_name(full: str) -> tuple[str, str]:
    first, _, last = full.strip().partition(" ")
    return first.casefold(), last.strip().casefold()


def _reader_for(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


class _CustomerIndex:
    """Customers and sites by name and id: enough to resolve every by-name reference in the exports."""

    __slots__ = ("billing_by_name", "billing_of", "is_site", "site_by_name")

    def __init__(self) -> None:
        self.billing_by_name: dict[str, str] = {}
        self.site_by_name: dict[str, str] = {}
        self.billing_of: dict[str, str | None] = {}
        self.is_site: dict[str, bool] = {}

    def add(self, ident: str, name: str | None, billing_id: str | None, is_site: bool) -> None:
        self.billing_of.setdefault(ident, billing_id)
        self.is_site.setdefault(ident, is_site)
        if name:
            (self.site_by_name if is_site else self.billing_by_name).setdefault(_key(name), ident)
