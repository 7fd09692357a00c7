"""The data model behind the Zoho CRM emulator: modules, field metadata, records, value checks, credits.

Kept apart from the HTTP layer (:mod:`airflow_ascora_provider.sandbox.zoho`) so the rules read as
rules. Everything is plain dicts in Zoho's own wire shapes, so the HTTP layer returns them as they
are and ``snapshot()`` can deep-copy the whole org for exact before/after comparisons.

Sources: the API fact sheet (``freshsales-zoho-twenty-api.md`` §2) and Zoho's OpenAPI v8 files.
Where neither says what Zoho does, the choice is the stricter one and is marked ``STRICTER:``;
figures that come from third-party pages are marked ``INFERRED:``.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any


class CreditMeter:
    """Credits spent in a rolling window; 429 once the allowance is used up (the real API's rule)."""

    def __init__(self, allowance: int | None, window: float = 86_400.0):
        self.allowance = allowance
        self.window = window
        self._spent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.refused = 0
        self.total = 0  # every credit ever charged (tests: more than one window's worth means a pause)

    def used(self) -> int:
        now = time.monotonic()
        with self._lock:
            while self._spent and now - self._spent[0][0] >= self.window:
                self._spent.popleft()
            return sum(c for _, c in self._spent)

    def charge(self, credits: int) -> bool:
        """Spend ``credits``; False (and nothing spent) when that would exceed the allowance."""
        if self.allowance is None:
            self.total += credits
            return True
        used = self.used()
        with self._lock:
            if used + credits > self.allowance:
                self.refused += 1
                return False
            self._spent.append((time.monotonic(), credits))
            self.total += credits
            return True

    def remaining(self) -> int | None:
        return None if self.allowance is None else max(0, self.allowance - self.used())


# -- errors ------------------------------------------------------------------------------------------
class ZohoError(Exception):
    """A request-level error: ``{"code","details","message","status":"error"}`` with an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details, "message": self.message, "status": "error"}


class RecordError(Exception):
    """One record of a batch is refused; the rest of the batch goes on (HTTP 207 overall)."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}

    def item(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details, "message": self.message, "status": "error"}


# -- field metadata ----------------------------------------------------------------------------------
DATA_TYPES = frozenset({
    "text", "textarea", "integer", "bigint", "double", "currency", "decimal", "percent", "date", "datetime",
    "boolean", "picklist", "multiselectpicklist", "email", "phone", "website", "lookup", "ownerlookup",
    "autonumber", "subform", "fileupload", "multi_module_lookup",
})
CREATABLE_TYPES = frozenset({
    "text", "textarea", "integer", "bigint", "double", "currency", "decimal", "percent", "date", "datetime",
    "boolean", "picklist", "multiselectpicklist", "email", "phone", "website", "lookup",
})
JSON_TYPES = {"integer": "integer", "bigint": "string", "double": "double", "currency": "double",
              "decimal": "double", "percent": "double", "boolean": "boolean", "lookup": "jsonobject",
              "ownerlookup": "jsonobject", "multiselectpicklist": "jsonarray", "subform": "jsonarray",
              "multi_module_lookup": "jsonobject"}
DEFAULT_LENGTH = {"text": 255, "textarea": 32000, "email": 100, "phone": 30, "website": 255, "picklist": 120,
                  "integer": 9, "bigint": 18, "double": 16, "currency": 16, "decimal": 16, "percent": 5}
# Modules whose fields can be created by API (v8 create-custom-field page); Notes is not one of them.
CUSTOMIZABLE = frozenset({"Leads", "Contacts", "Accounts", "Deals", "Tasks", "Products", "Quotes", "Calls",
                          "Events", "Campaigns", "Cases"})
API_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Zoho datetimes carry an offset: 2024-05-01T10:00:00+10:00 (STRICTER: "Z" and no-offset are refused).
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")


_ids = itertools.count(1)


def new_id() -> str:
    """Record/field/module ids are ~19-digit numeric strings."""
    return str(5_725_767_000_000_000_000 + next(_ids) * 1_000 + 157)


def now_text() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def field_meta(api_name: str, data_type: str, label: str | None = None, *, custom: bool = False,
               mandatory: bool = False, read_only: bool = False, options: list[str] | None = None,
               lookup: str | None = None, unique: bool = False, length: int | None = None,
               tooltip: str | None = None, module: str = "") -> dict[str, Any]:
    """A field in GET /settings/fields shape (the properties a client reads; see the contract test)."""
    label = label or api_name.replace("_", " ")
    return {
        "api_name": api_name,
        "field_label": label,
        "display_label": label,
        "data_type": data_type,
        "json_type": JSON_TYPES.get(data_type, "string"),
        "column_name": api_name.upper(),
        "id": new_id(),
        "custom_field": custom,
        "system_mandatory": mandatory,
        "read_only": read_only,
        "field_read_only": read_only,
        "visible": True,
        "length": length if length is not None else DEFAULT_LENGTH.get(data_type, 255),
        "decimal_place": 2 if data_type in ("currency", "double", "decimal") else None,
        "pick_list_values": [{"display_value": v, "actual_value": v, "id": new_id(), "sequence_number": i + 1,
                              "type": "used"} for i, v in enumerate(options or [])],
        "lookup": {"module": {"api_name": lookup, "id": None}, "display_label": label, "api_name": api_name,
                   "id": None, "query_details": {}, "revalidate_filter_during_edit": False,
                   "show_fields": []} if lookup else None,
        "unique": {"casesensitive": "false"} if unique else None,
        "operation_type": {"web_update": not read_only, "api_create": not read_only,
                           "web_create": not read_only, "api_update": not read_only},
        "created_source": "crm" if custom else "default",
        "sequence_number": 0,
        "$module": module,
        **({"tooltip": {"name": "static_text", "value": tooltip}} if tooltip else {}),
    }


# Standard fields per module: (api name, data type, extra). Only what the migration and its checks
# need; a real org has more, which a client must not depend on.
_STANDARD: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "Accounts": [
        ("Account_Name", "text", {"mandatory": True}), ("Account_Number", "text", {}),
        ("Account_Type", "picklist", {"options": ["-None-", "Analyst", "Competitor", "Customer", "Distributor",
                                                  "Integrator", "Investor", "Other", "Partner", "Press",
                                                  "Prospect", "Reseller", "Supplier", "Vendor"]}),
        ("Phone", "phone", {}), ("Fax", "phone", {}), ("Website", "website", {}),
        ("Parent_Account", "lookup", {"lookup": "Accounts"}),
        ("Billing_Street", "text", {}), ("Billing_City", "text", {}), ("Billing_State", "text", {}),
        ("Billing_Code", "text", {}), ("Billing_Country", "text", {}),
        ("Shipping_Street", "text", {}), ("Shipping_City", "text", {}), ("Shipping_State", "text", {}),
        ("Shipping_Code", "text", {}), ("Shipping_Country", "text", {}),
        ("Description", "textarea", {}),
    ],
    "Contacts": [
        ("First_Name", "text", {"length": 40}), ("Last_Name", "text", {"mandatory": True, "length": 80}),
        ("Email", "email", {}), ("Secondary_Email", "email", {}), ("Phone", "phone", {}),
        ("Mobile", "phone", {}), ("Fax", "phone", {}), ("Title", "text", {}),
        ("Account_Name", "lookup", {"lookup": "Accounts"}),
        ("Mailing_Street", "text", {}), ("Mailing_City", "text", {}), ("Mailing_State", "text", {}),
        ("Mailing_Zip", "text", {}), ("Mailing_Country", "text", {}), ("Description", "textarea", {}),
        ("Full_Name", "text", {"read_only": True}),
    ],
    "Leads": [
        ("First_Name", "text", {"length": 40}), ("Last_Name", "text", {"mandatory": True, "length": 80}),
        ("Company", "text", {"mandatory": True}), ("Email", "email", {}), ("Phone", "phone", {}),
        ("Mobile", "phone", {}),
        ("Lead_Source", "picklist", {"options": ["-None-", "Advertisement", "Cold Call", "Employee Referral",
                                                 "External Referral", "Online Store", "Partner", "Public Relations",
                                                 "Sales Email Alias", "Seminar Partner", "Internal Seminar",
                                                 "Trade Show", "Web Download", "Web Research", "Chat"]}),
        ("Lead_Status", "picklist", {"options": ["-None-", "Attempted to Contact", "Contact in Future",
                                                 "Contacted", "Junk Lead", "Lost Lead", "Not Contacted",
                                                 "Pre-Qualified", "Not Qualified"]}),
        ("Street", "text", {}), ("City", "text", {}), ("State", "text", {}), ("Zip_Code", "text", {}),
        ("Country", "text", {}), ("Description", "textarea", {}), ("Full_Name", "text", {"read_only": True}),
    ],
    "Deals": [
        ("Deal_Name", "text", {"mandatory": True, "length": 120}),
        ("Stage", "picklist", {"mandatory": True,
                               "options": ["Qualification", "Needs Analysis", "Value Proposition",
                                           "Identify Decision Makers", "Proposal/Price Quote",
                                           "Negotiation/Review", "Closed Won", "Closed Lost",
                                           "Closed-Lost to Competition"]}),
        # STRICTER: Closing_Date is mandatory in Zoho's standard Deals layout; the API enforces it here.
        ("Closing_Date", "date", {"mandatory": True}), ("Amount", "currency", {}),
        ("Account_Name", "lookup", {"lookup": "Accounts"}), ("Contact_Name", "lookup", {"lookup": "Contacts"}),
        ("Type", "picklist", {"options": ["-None-", "Existing Business", "New Business"]}),
        ("Description", "textarea", {}),
    ],
    "Tasks": [
        ("Subject", "text", {"mandatory": True}), ("Due_Date", "date", {}),
        ("Status", "picklist", {"options": ["Not Started", "Deferred", "In Progress", "Completed",
                                            "Waiting for input"]}),
        ("Priority", "picklist", {"options": ["High", "Highest", "Low", "Lowest", "Normal"]}),
        ("Description", "textarea", {}),
        ("What_Id", "multi_module_lookup", {}), ("Who_Id", "lookup", {"lookup": "Contacts"}),
    ],
    "Notes": [
        ("Note_Title", "text", {}), ("Note_Content", "textarea", {}),
        ("Parent_Id", "multi_module_lookup", {"mandatory": True}),
    ],
    "Products": [
        ("Product_Name", "text", {"mandatory": True}), ("Product_Code", "text", {}),
        ("Unit_Price", "currency", {}), ("Description", "textarea", {}),
    ],
    "Quotes": [
        ("Subject", "text", {"mandatory": True}),
        ("Quote_Stage", "picklist", {"options": ["Draft", "Negotiation", "Delivered", "On Hold", "Confirmed",
                                                 "Closed Won", "Closed Lost"]}),
        ("Valid_Till", "date", {}), ("Deal_Name", "lookup", {"lookup": "Deals"}),
        ("Account_Name", "lookup", {"lookup": "Accounts"}), ("Description", "textarea", {}),
        # Quoted_Items is required on create (a quote needs at least one product line).
        ("Grand_Total", "currency", {"read_only": True}), ("Quoted_Items", "subform", {"mandatory": True}),
    ],
}
# The field a lookup shows as ``name`` (and COQL/search treat as the record name).
NAME_FIELD = {"Accounts": "Account_Name", "Contacts": "Full_Name", "Leads": "Full_Name", "Deals": "Deal_Name",
              "Tasks": "Subject", "Notes": "Note_Title", "Products": "Product_Name", "Quotes": "Subject"}
SYSTEM_FIELDS = ("id", "Owner", "Created_Time", "Modified_Time", "Created_By", "Modified_By")
TASK_PARENTS = frozenset({"Accounts", "Deals", "Leads", "Products", "Quotes"})


@dataclass
class Module:
    api_name: str
    singular_label: str
    plural_label: str
    custom: bool = False
    id: str = field(default_factory=new_id)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    recycle_bin: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name_field(self) -> str:
        return NAME_FIELD.get(self.api_name, "Name")

    def describe(self) -> dict[str, Any]:
        """GET /settings/modules item."""
        return {
            "api_name": self.api_name, "id": self.id, "module_name": self.api_name,
            "singular_label": self.singular_label, "plural_label": self.plural_label,
            "generated_type": "custom" if self.custom else "default", "api_supported": True,
            "creatable": True, "editable": True, "deletable": True, "viewable": True,
            "visibility": 1, "visible": True, "show_as_tab": True, "sequence_number": 1,
            "modified_time": None, "profiles": [], "parent_module": {},
            "business_card_field_limit": 5, "convertable": self.api_name == "Leads",
            "quick_create": True, "feeds_required": False, "presence_sub_menu": False,
            "triggers_supported": True, "status": "visible", "description": None,
        }

    def custom_field_count(self) -> int:
        return sum(1 for f in self.fields.values() if f["custom_field"])


def standard_module(api_name: str) -> Module:
    singular = {"Accounts": "Account", "Contacts": "Contact", "Leads": "Lead", "Deals": "Deal",
                "Tasks": "Task", "Notes": "Note", "Products": "Product", "Quotes": "Quote"}[api_name]
    module = Module(api_name, singular, api_name)
    for name, data_type, extra in _STANDARD[api_name]:
        module.fields[name] = field_meta(name, data_type, module=api_name, **extra)
    module.fields["Owner"] = field_meta("Owner", "ownerlookup", "Owner", module=api_name)
    return module


def custom_module(api_name: str, singular: str, plural: str) -> Module:
    module = Module(api_name, singular, plural, custom=True)
    module.fields["Name"] = field_meta("Name", "text", f"{singular} Name", mandatory=True, module=api_name)
    module.fields["Owner"] = field_meta("Owner", "ownerlookup", "Owner", module=api_name)
    return module


# -- value checks ------------------------------------------------------------------------------------
def _invalid(name: str, path: str, expected: str | None = None, **more: Any) -> RecordError:
    details: dict[str, Any] = {"api_name": name, "json_path": path}
    if expected:
        details["expected_data_type"] = expected
    details.update(more)
    return RecordError("INVALID_DATA", "invalid data", details)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_value(meta: dict[str, Any], value: Any, path: str) -> Any:
    """Validate one incoming value against its field; return the value as stored."""
    name, kind = meta["api_name"], meta["data_type"]
    if value is None:
        return None
    if kind in ("text", "textarea", "phone", "website", "email"):
        if not isinstance(value, str):
            raise _invalid(name, path, "string")
        if len(value) > meta["length"]:
            raise _invalid(name, path, maximum_length=meta["length"])
        if kind == "email" and value and not EMAIL_RE.match(value):
            raise _invalid(name, path, "email")
        return value
    if kind in ("integer", "bigint"):
        if not _number(value) or int(value) != value:
            raise _invalid(name, path, "integer")
        return int(value)
    if kind in ("double", "currency", "decimal", "percent"):
        if not _number(value):
            raise _invalid(name, path, "double")
        try:
            Decimal(str(value))
        except InvalidOperation:
            raise _invalid(name, path, "double") from None
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _invalid(name, path, "boolean")
        return value
    if kind == "date":
        if not isinstance(value, str) or not DATE_RE.match(value):
            raise _invalid(name, path, "date")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise _invalid(name, path, "date") from None
        return value
    if kind == "datetime":
        if not isinstance(value, str) or not DATETIME_RE.match(value):
            raise _invalid(name, path, "datetime")
        return value
    if kind == "picklist":
        allowed = [p["actual_value"] for p in meta["pick_list_values"]]
        if not isinstance(value, str) or value not in allowed:
            # STRICTER: Zoho keeps unknown values on unrestricted pick-lists; refusing them catches a
            # mapping that forgot to add an option before loading.
            raise _invalid(name, path, supported_values=allowed)
        return value
    if kind == "multiselectpicklist":
        allowed = [p["actual_value"] for p in meta["pick_list_values"]]
        if not isinstance(value, list) or any(v not in allowed for v in value):
            raise _invalid(name, path, supported_values=allowed)
        return value
    raise _invalid(name, path)


def deep(value: Any) -> Any:
    return copy.deepcopy(value)
