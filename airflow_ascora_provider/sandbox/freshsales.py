"""An in-memory Freshsales (Freshworks CRM) account that is *harder to please* than the real one.

Why it exists: there is no Freshsales server to run locally, and a migration must still be proven
against Freshsales' rules. This emulator implements the API calls the hook makes (paths and bodies
from the API fact sheet, section 1) and validates every write the way a strict server would:

* ``Authorization: Token token=<key>``; both prefixes, ``/crm/sales/api/…`` and the legacy ``/api/…``;
* records wrapped in a singular root key, custom fields under ``custom_field`` as ``cf_*`` keys that
  must exist, dropdown system fields (owner, stage, lead source, lifecycle stage) that take **ids**:
  a label is a 400, as integrators report;
* unique values (contact e-mails, account names, custom fields marked unique), required fields,
  lookups that must point at existing records, deal products listed once per product;
* upsert on a ``unique_identifier``, the asynchronous bulk upsert (202 + job id, at most 100 records,
  ``GET /job_statuses/<id>``), filtered search, selectors, ``include=`` side-loading;
* custom fields can **not** be created through the API (only custom modules can); a test-only admin
  route under ``/__freshsales__/`` plays the admin, and it enforces the plan's custom-field caps;
* the plan's hourly request budget per account, with ``x-ratelimit-limit/-remaining/-reset`` headers
  on every answer and 429 + ``Retry-After`` when it is spent (the per-minute limit is the shared
  :func:`~airflow_ascora_provider.sandbox.emulator.instrument` limiter);
* documents up to 25 MB.

Where the public material does not say what Freshsales does, the emulator picks the **stricter**
option and says so in a comment tagged ``STRICTER:`` or ``INFERRED:``. ``app.state.freshsales`` is
the :class:`FreshsalesState`; its :meth:`~FreshsalesState.snapshot` deep-copies every record, field,
selector and stored file (sha256 and size) for exact before/after comparisons.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from airflow_ascora_provider.destinations.freshsales.plans import CAP_GROUPS, CAP_LABELS, Plan, get_plan
from airflow_ascora_provider.sandbox.emulator import instrument

DEFAULT_API_KEY = "freshsales-sandbox-key"
BULK_CAP = 100  # STRICTER: one 3P comment says 100 per bulk request; nothing larger is accepted
MAX_PER_PAGE = 100  # INFERRED: per_page is clamped to 100
DEFAULT_PER_PAGE = 25  # the default page size integrators report
DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024  # the seed's 25 MB per file
TEXT_MAX, TEXTAREA_MAX = 255, 10_000  # VENDOR-KB: text 256 characters (kept one short), text area 10,000
NUMBER_MAX = 10 ** 11  # VENDOR-KB: 11 digits before the decimal point

#: Parents a note, task or document may hang off: ``targetable_type`` → entity.
TARGETABLE = {"Contact": "contact", "SalesAccount": "sales_account", "Deal": "deal", "Lead": "lead"}
#: Selector name → the system field that takes its ids.
SELECTOR_FIELDS = {"owner_id": "owners", "deal_stage_id": "deal_stages", "lead_source_id": "lead_sources",
                   "lifecycle_stage_id": "lifecycle_stages", "contact_status_id": "contact_statuses"}

DEFAULT_USERS = [
    {"email": "owner@sparkys-electrical.example", "display_name": "Olivia Owner"},
    {"email": "tech1@sparkys-electrical.example", "display_name": "Tom Tradie"},
]
DEFAULT_SELECTORS = {
    # The default sales pipeline of a new account; migration stages are added by the admin.
    "deal_stages": ["New", "Qualification", "Demo", "Negotiation", "Won", "Lost"],
    "lead_sources": ["Web", "Email", "Phone", "Referral", "Advertisement", "Other"],
    "lifecycle_stages": ["Lead", "Sales Qualified Lead", "Customer"],
    "contact_statuses": ["New", "Contacted", "Interested", "Unqualified"],
}

# Standard fields per settings entity: (name, label, type, required, extra). Types are the ones
# ``/settings/<entity>/fields`` reports; ``auto_complete`` fields take ids (owners, accounts).
_STANDARD: dict[str, list[tuple]] = {
    "sales_accounts": [
        ("name", "Name", "text", True, {}), ("address", "Address", "textarea", False, {}),
        ("city", "City", "text", False, {}), ("state", "State", "text", False, {}),
        ("zipcode", "Zipcode", "text", False, {}), ("country", "Country", "text", False, {}),
        ("phone", "Phone", "phone_number", False, {}), ("website", "Website", "url", False, {}),
        ("owner_id", "Sales owner", "auto_complete", False, {"selector": "owners"}),
    ],
    "contacts": [
        ("first_name", "First name", "text", False, {}), ("last_name", "Last name", "text", False, {}),
        ("email", "Email", "email", False, {"unique": True}), ("mobile_number", "Mobile", "phone_number", False, {}),
        ("work_number", "Work", "phone_number", False, {}), ("job_title", "Job title", "text", False, {}),
        ("address", "Address", "textarea", False, {}), ("city", "City", "text", False, {}),
        ("state", "State", "text", False, {}), ("zipcode", "Zipcode", "text", False, {}),
        ("country", "Country", "text", False, {}),
        ("sales_account_id", "Account", "auto_complete", False, {"lookup": "sales_account"}),
        ("owner_id", "Sales owner", "auto_complete", False, {"selector": "owners"}),
        ("lead_source_id", "Source", "dropdown", False, {"selector": "lead_sources"}),
        ("lifecycle_stage_id", "Lifecycle stage", "dropdown", False, {"selector": "lifecycle_stages"}),
        ("contact_status_id", "Status", "dropdown", False, {"selector": "contact_statuses"}),
    ],
    "deals": [
        ("name", "Name", "text", True, {}), ("amount", "Deal value", "number", True, {}),
        ("expected_close", "Expected close date", "date", False, {}),
        ("deal_stage_id", "Deal stage", "dropdown", False, {"selector": "deal_stages"}),
        ("owner_id", "Sales owner", "auto_complete", False, {"selector": "owners"}),
        ("sales_account_id", "Account", "auto_complete", False, {"lookup": "sales_account"}),
        ("contacts_added_list", "Contacts", "auto_complete", False, {"lookup": "contact", "many": True}),
    ],
    "leads": [
        ("first_name", "First name", "text", False, {}), ("last_name", "Last name", "text", False, {}),
        ("email", "Email", "email", False, {"unique": True}), ("mobile_number", "Mobile", "phone_number", False, {}),
        ("work_number", "Work", "phone_number", False, {}), ("job_title", "Job title", "text", False, {}),
        ("address", "Address", "textarea", False, {}), ("city", "City", "text", False, {}),
        ("state", "State", "text", False, {}), ("zipcode", "Zipcode", "text", False, {}),
        ("country", "Country", "text", False, {}),
        ("owner_id", "Sales owner", "auto_complete", False, {"selector": "owners"}),
        ("lead_source_id", "Source", "dropdown", False, {"selector": "lead_sources"}),
    ],
    # INFERRED: CPQ products; the price is one number in the account's currency.
    "products": [
        ("name", "Name", "text", True, {}), ("product_code", "Product code", "text", False, {}),
        ("description", "Description", "textarea", False, {}), ("unit_price", "Unit price", "number", False, {}),
    ],
}
_SETTINGS_OF = {"sales_account": "sales_accounts", "contact": "contacts", "deal": "deals", "lead": "leads",
                "product": "products"}
_PATHS = {"sales_accounts": "sales_account", "contacts": "contact", "deals": "deal", "leads": "lead",
          "tasks": "task", "notes": "note", "documents": "document"}
_PLURAL = {v: k for k, v in _PATHS.items()} | {"product": "products"}
# Fields of the records without settings (INFERRED shapes, see the fact sheet's endpoint table).
_ACTIVITY_FIELDS = {
    "task": {"title", "description", "due_date", "owner_id", "status", "targetable_type", "targetable_id"},
    "note": {"description", "targetable_type", "targetable_id"},
}


class FsError(Exception):
    """An error answer in Freshsales' shape: ``{"errors": {"code": N, "message": [...]}}``."""

    def __init__(self, messages: str | list[str], status: int = 400):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.status = status
        super().__init__("; ".join(self.messages))

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"errors": {"code": self.status, "message": self.messages}}, status_code=self.status,
                            headers=headers)


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "module"


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FreshsalesState:
    """All data behind the emulator, guarded by one lock (tests read it from another thread)."""

    def __init__(self, *, api_key: str, plan: Plan, hourly_limit: int | None, hour_seconds: float,
                 users: list[dict] | None, leads_module: bool, bulk_delay: float, max_file_bytes: int):
        self.api_key = api_key
        self.plan = plan
        self.hourly_limit = hourly_limit
        self.hour_seconds = hour_seconds
        self.bulk_delay = bulk_delay
        self.max_file_bytes = max_file_bytes
        self.lock = threading.RLock()
        self._ids = itertools.count(1001)
        self.fields: dict[str, list[dict]] = {}
        self.records: dict[str, dict[int, dict]] = {e: {} for e in
                                                    ("sales_account", "contact", "deal", "lead", "task", "note",
                                                     "document", "product")}
        self.files: dict[int, bytes] = {}
        self.modules: list[dict] = []
        self.jobs: dict[int, dict] = {}
        self.selectors: dict[str, list[dict]] = {}
        self.quota_started: float | None = None
        self.quota_used = 0
        for settings, rows in _STANDARD.items():
            if settings == "leads" and not leads_module:
                continue
            self.fields[settings] = [self._field_dict(settings, name, label, ftype, required, default=True, **extra)
                                     for name, label, ftype, required, extra in rows]
        for name, labels in DEFAULT_SELECTORS.items():
            self.selectors[name] = [{"id": next(self._ids), "name": label, "position": i + 1}
                                    for i, label in enumerate(labels)]
        self.selectors["owners"] = []
        for user in users or DEFAULT_USERS:
            self.selectors["owners"].append({"id": next(self._ids), "email": user["email"],
                                             "display_name": user.get("display_name") or user["email"],
                                             "is_active": user.get("is_active", True)})

    # -- metadata -----------------------------------------------------------------------------------
    def _field_dict(self, settings: str, name: str, label: str, ftype: str, required: bool, *, default: bool,
                    choices: list[str] | None = None, unique: bool = False, lookup: str | None = None,
                    selector: str | None = None, many: bool = False) -> dict:
        return {"id": next(self._ids), "name": name, "label": label, "type": ftype, "default": default,
                "required": required, "unique": unique, "base_model": settings,
                "choices": [{"id": next(self._ids), "value": c} for c in choices or ()],
                "lookup": lookup, "selector": selector, "many": many}

    def entity_of(self, settings: str) -> str:
        """``contacts`` → ``contact``; a custom module's settings name is its entity name."""
        return _PATHS.get(settings, "product" if settings == "products" else settings)

    def settings_of(self, entity: str) -> str:
        return _SETTINGS_OF.get(entity, entity)

    def field(self, entity: str, name: str) -> dict | None:
        return next((f for f in self.fields.get(self.settings_of(entity), []) if f["name"] == name), None)

    def add_field(self, settings: str, name: str, label: str, ftype: str, *, choices: list[str] | None = None,
                  unique: bool = False, lookup: str | None = None) -> dict:
        """The admin creates a custom field in the UI (no public API does this), within the plan's caps."""
        with self.lock:
            if settings not in self.fields:
                raise FsError(f"Unknown module '{settings}'", 404)
            if not re.fullmatch(r"cf_[a-z0-9_]+", name):
                raise FsError(f"Custom field names start with cf_ and use lower-case letters, digits and _: {name!r}")
            if ftype not in CAP_GROUPS:
                raise FsError(f"Unknown custom field type {ftype!r}; one of {', '.join(CAP_GROUPS)}")
            if self.field(self.entity_of(settings), name):
                raise FsError(f"A field named {name} already exists")
            if ftype == "lookup" and lookup not in self.records:
                raise FsError(f"A lookup field needs a target module, got {lookup!r}")
            custom = [f for f in self.fields[settings] if not f["default"]]
            group = CAP_GROUPS[ftype]
            cap = self.plan.cap_for(group)
            if cap is not None and sum(CAP_GROUPS[f["type"]] == group for f in custom) >= cap:
                raise FsError(f"Custom field limit reached: the {self.plan.label} plan allows {cap} "
                              f"{CAP_LABELS[group]} field(s) on {settings}")
            total = self.plan.total_for(settings.startswith("cm_"))
            if len(custom) >= total:
                raise FsError(f"Custom field limit reached: the {self.plan.label} plan allows {total} custom "
                              f"fields on {settings}")
            field = self._field_dict(settings, name, label, ftype, False, default=False, choices=choices,
                                     unique=unique, lookup=lookup)
            self.fields[settings].append(field)
            return field

    def add_choices(self, settings: str, name: str, values: list[str]) -> dict:
        with self.lock:
            field = self.field(self.entity_of(settings), name)
            if field is None or field["type"] not in ("dropdown", "radio", "multi_select_dropdown") or field["default"]:
                raise FsError(f"{settings}.{name} is not a custom dropdown")
            have = {c["value"] for c in field["choices"]}
            if len(have | set(values)) > 300:  # VENDOR-KB: up to 300 options
                raise FsError("Dropdown fields take at most 300 options")
            field["choices"] += [{"id": next(self._ids), "value": v} for v in values if v not in have]
            return field

    def add_selector_value(self, name: str, label: str) -> dict:
        """The admin adds a deal stage, lead source ... (pipelines are configured in the UI)."""
        with self.lock:
            rows = self.selectors.get(name)
            if rows is None or name == "owners":
                raise FsError(f"Unknown selector {name!r}", 404)
            existing = next((r for r in rows if r["name"] == label), None)
            if existing:
                return existing
            row = {"id": next(self._ids), "name": label, "position": len(rows) + 1}
            rows.append(row)
            return row

    def create_module(self, body: Any) -> dict:
        spec = (body or {}).get("module_customization") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not spec.get("singular_name"):
            raise FsError("module_customization.singular_name is required")
        with self.lock:
            entity = "cm_" + _snake(spec["singular_name"])
            if any(m["entity_name"] == entity for m in self.modules):
                raise FsError(f"A module named {spec['singular_name']} already exists")
            if len(self.modules) >= 10:  # STRICTER: the number of custom modules is capped per account
                raise FsError("Custom module limit reached")
            module = {"id": next(self._ids), "singular_name": spec["singular_name"],
                      "plural_name": spec.get("plural_name") or spec["singular_name"], "entity_name": entity}
            self.modules.append(module)
            self.fields[entity] = [self._field_dict(entity, "name", "Name", "text", True, default=True),
                                   self._field_dict(entity, "owner_id", "Owner", "auto_complete", False,
                                                    default=True, selector="owners")]
            self.records[entity] = {}
            return module

    # -- hourly budget ------------------------------------------------------------------------------
    def charge(self) -> tuple[bool, dict[str, str], float]:
        """Count one request against the hourly budget: (allowed, headers, seconds until reset)."""
        with self.lock:
            if self.hourly_limit is None:
                return True, {}, 0.0
            now = time.time()
            if self.quota_started is None or now - self.quota_started >= self.hour_seconds:
                self.quota_started, self.quota_used = now, 0
            allowed = self.quota_used < self.hourly_limit
            if allowed:
                self.quota_used += 1
            reset = self.quota_started + self.hour_seconds
            headers = {"x-ratelimit-limit": str(self.hourly_limit),
                       "x-ratelimit-remaining": str(max(0, self.hourly_limit - self.quota_used)),
                       "x-ratelimit-reset": str(math.ceil(reset))}
            return allowed, headers, max(0.0, reset - now)

    def apply_admin_steps(self, steps: list[dict]) -> None:
        """Do what the plugin's ``admin_steps()`` lists, the way an admin would in the UI (tests, demo)."""
        for step in steps:
            action = step["action"]
            if action == "create_field":
                self.add_field(step["entity"], step["name"], step["label"], step["type"], choices=step.get("choices"),
                               unique=bool(step.get("unique")), lookup=step.get("lookup"))
            elif action == "add_choices":
                self.add_choices(step["entity"], step["name"], step["values"])
            elif action == "add_selector_value":
                self.add_selector_value(step["selector"], step["value"])
            else:
                raise FsError(f"unknown admin step {action!r}")

    # -- test helpers -------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Deep copy of every record per entity (in id order), fields, selectors, modules and files."""
        with self.lock:
            return {
                "records": {e: copy.deepcopy([rows[i] for i in sorted(rows)]) for e, rows in self.records.items()},
                "fields": copy.deepcopy(self.fields),
                "selectors": copy.deepcopy(self.selectors),
                "modules": copy.deepcopy(self.modules),
                "files": {i: {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c)}
                          for i, c in sorted(self.files.items())},
            }

    def records_of(self, entity: str) -> list[dict]:
        with self.lock:
            rows = self.records.get(entity, {})
            return copy.deepcopy([rows[i] for i in sorted(rows)])


class FreshsalesEmulator:
    """The request handlers' logic, separate from Starlette so it reads as the API contract."""

    def __init__(self, state: FreshsalesState):
        self.state = state

    # -- validation ---------------------------------------------------------------------------------
    def _exists(self, entity: str, record_id: Any) -> bool:
        return isinstance(record_id, int) and not isinstance(record_id, bool) and record_id in self.state.records.get(
            entity, {})

    def _check_value(self, entity: str, field: dict, value: Any, where: str) -> Any:
        if value is None or value == "":
            return None
        ftype = field["type"]
        if field.get("selector"):
            if isinstance(value, str) and not value.isdigit():
                raise FsError(f"Invalid value for {where}: '{value}' is not an id (labels are not accepted)")
            ids = {r["id"] for r in self.state.selectors[field["selector"]]}
            if int(value) not in ids:
                raise FsError(f"Invalid value for {where}: no {field['selector'][:-1].replace('_', ' ')} {value}")
            return int(value)
        if field.get("lookup") or ftype == "lookup":
            target = field.get("lookup")
            values = value if field.get("many") else [value]
            if not isinstance(values, list):
                raise FsError(f"{where} takes a list of ids")
            for v in values:
                if not self._exists(target, v):
                    raise FsError(f"Invalid value for {where}: {target} {v!r} does not exist")
            return values if field.get("many") else values[0]
        if ftype in ("text", "email", "phone_number", "url"):
            if not isinstance(value, str):
                raise FsError(f"{where} must be text, got {type(value).__name__}")
            if len(value) > TEXT_MAX:
                raise FsError(f"{where} is longer than {TEXT_MAX} characters")
            if ftype == "email" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
                raise FsError(f"Invalid email for {where}: {value}")
            return value
        if ftype == "textarea":
            if not isinstance(value, str):
                raise FsError(f"{where} must be text, got {type(value).__name__}")
            if len(value) > TEXTAREA_MAX:
                raise FsError(f"{where} is longer than {TEXTAREA_MAX} characters")
            return value
        if ftype == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise FsError(f"{where} must be a number, got {value!r}")
            if abs(value) >= NUMBER_MAX:
                raise FsError(f"{where} allows 11 digits before the decimal point")
            return value
        if ftype == "checkbox":
            if not isinstance(value, bool):
                raise FsError(f"{where} must be true or false, got {value!r}")
            return value
        if ftype == "date":
            try:
                date.fromisoformat(value)
            except (TypeError, ValueError):
                raise FsError(f"{where} must be a date (YYYY-MM-DD), got {value!r}") from None
            return value
        if ftype in ("dropdown", "radio"):
            # Custom dropdowns take the choice's label (a numeric id is silently ignored by the real
            # API, reports say; STRICTER: refused here).
            if value not in {c["value"] for c in field["choices"]}:
                raise FsError(f"Invalid value for {where}: '{value}' is not one of its choices")
            return value
        if ftype == "multi_select_dropdown":
            values = value.split(";") if isinstance(value, str) else value
            if not isinstance(values, list) or not set(values) <= {c["value"] for c in field["choices"]}:
                raise FsError(f"Invalid value for {where}: {value!r} is not a list of its choices")
            return ";".join(values)
        return value

    def _check_record(self, entity: str, body: Any, current: dict | None) -> dict:
        """A validated copy of ``current`` with ``body`` applied (create when ``current`` is None)."""
        if not isinstance(body, dict):
            raise FsError(f"The request body must hold a '{entity}' object")
        settings = self.state.settings_of(entity)
        fields = {f["name"]: f for f in self.state.fields[settings]}
        record = copy.deepcopy(current) if current else {}
        custom = dict(record.get("custom_field") or {})
        for key, value in body.items():
            if key == "custom_field":
                if not isinstance(value, dict):
                    raise FsError("custom_field must be an object of cf_ fields")
                for name, cf_value in value.items():
                    field = fields.get(name)
                    if field is None or field["default"]:
                        raise FsError(f"Invalid custom field {name}: {settings} has no such custom field")
                    custom[name] = self._check_value(entity, field, cf_value, name)
                continue
            if key == "products" and entity == "deal":
                record["products"] = self._check_products(value)
                continue
            field = fields.get(key)
            if field is None or not field["default"]:
                # STRICTER: unknown attributes are refused rather than ignored.
                raise FsError(f"Unknown attribute {key} for {entity}")
            record[key] = self._check_value(entity, field, value, key)
        if custom:
            record["custom_field"] = custom
        for name, field in fields.items():
            if field["required"] and field["default"] and record.get(name) in (None, ""):
                raise FsError(f"{name} is required for {entity}")
        if entity in ("contact", "lead") and not any(record.get(k) for k in ("first_name", "last_name", "email",
                                                                             "mobile_number")):
            raise FsError(f"A {entity} needs a name, an email or a mobile number")
        self._check_unique(entity, fields, record, current)
        return record

    def _check_products(self, value: Any) -> list[dict]:
        if not isinstance(value, list):
            raise FsError("products must be a list of {id, quantity, unit_price, discount}")
        seen, out = set(), []
        for item in value:
            if not isinstance(item, dict) or not self._exists("product", item.get("id")):
                raise FsError(f"products: product {item.get('id') if isinstance(item, dict) else item!r} does not exist")
            if item["id"] in seen:
                # STRICTER: a deal lists each product once (whether Freshsales allows repeats is unknown).
                raise FsError(f"products: product {item['id']} is listed twice; a deal lists each product once")
            seen.add(item["id"])
            row = {"id": item["id"], "quantity": item.get("quantity", 1), "unit_price": item.get("unit_price"),
                   "discount": item.get("discount", 0)}
            for key in ("quantity", "unit_price", "discount"):
                if row[key] is not None and (isinstance(row[key], bool) or not isinstance(row[key], int | float)):
                    raise FsError(f"products: {key} of product {item['id']} must be a number")
            out.append(row)
        return out

    def _check_unique(self, entity: str, fields: dict[str, dict], record: dict, current: dict | None) -> None:
        own_id = current["id"] if current else None
        uniques = [(f["name"], not f["default"]) for f in fields.values() if f["unique"]]
        if entity == "sales_account":
            uniques.append(("name", False))  # STRICTER: account names are unique (duplicates are refused)
        for name, is_custom in uniques:
            value = (record.get("custom_field") or {}).get(name) if is_custom else record.get(name)
            if value in (None, ""):
                continue
            key = str(value).casefold()
            for other in self.state.records[entity].values():
                got = (other.get("custom_field") or {}).get(name) if is_custom else other.get(name)
                if other["id"] != own_id and got is not None and str(got).casefold() == key:
                    label = "Email" if name == "email" else name
                    raise FsError(f"{label} is not unique: {entity} {other['id']} already has {value!r}")

    def _check_target(self, body: dict) -> None:
        kind, target = body.get("targetable_type"), body.get("targetable_id")
        entity = TARGETABLE.get(kind)
        if entity is None:
            raise FsError(f"targetable_type must be one of {', '.join(TARGETABLE)}, got {kind!r}")
        target = int(target) if isinstance(target, str) and target.isdigit() else target
        if not self._exists(entity, target):
            raise FsError(f"targetable_id: {kind} {target!r} does not exist")
        body["targetable_id"] = target

    # -- records ------------------------------------------------------------------------------------
    def _store(self, entity: str, record: dict) -> dict:
        now = _now_iso()
        if "id" not in record:
            record["id"] = next(self.state._ids)
            record["created_at"] = now
        record["updated_at"] = now
        self.state.records[entity][record["id"]] = record
        return record

    def _render(self, entity: str, record: dict) -> dict:
        out = {k: copy.deepcopy(v) for k, v in record.items() if k != "products"}
        if entity == "deal":
            out["contact_ids"] = list(out.pop("contacts_added_list", None) or [])
        return out

    def _entity_of_path(self, path: str) -> str:
        entity = _PATHS.get(path) or (path if path in self.state.fields else None)
        if entity is None:
            raise FsError(f"Unknown resource {path}", 404)
        return entity

    def _root(self, body: Any, root: str) -> Any:
        if not isinstance(body, dict) or root not in body:
            raise FsError(f"The request body must be {{\"{root}\": {{...}}}}")
        return body[root]

    def create(self, entity: str, body: Any) -> tuple[int, dict]:
        data = self._root(body, entity)
        with self.state.lock:
            if entity in _ACTIVITY_FIELDS:
                record = self._check_activity(entity, data, None)
            else:
                record = self._check_record(entity, data, None)
            return 201, {entity: self._render(entity, self._store(entity, record))}

    def _check_activity(self, entity: str, data: Any, current: dict | None) -> dict:
        if not isinstance(data, dict):
            raise FsError(f"The request body must hold a '{entity}' object")
        unknown = set(data) - _ACTIVITY_FIELDS[entity]
        if unknown:
            raise FsError(f"Unknown attribute {sorted(unknown)[0]} for {entity}")
        record = {**copy.deepcopy(current or {}), **data}
        self._check_target(record)
        if entity == "note" and not str(record.get("description") or "").strip():
            raise FsError("description is required for note")
        if entity == "task":
            for name in ("title", "due_date", "owner_id"):
                if record.get(name) in (None, ""):
                    raise FsError(f"{name} is required for task")
            if record["owner_id"] not in {u["id"] for u in self.state.selectors["owners"]}:
                raise FsError(f"Invalid value for owner_id: no owner {record['owner_id']!r}")
            if record.get("status", 0) not in (0, 1):
                raise FsError("status must be 0 (open) or 1 (completed)")
        for name in ("description", "title"):
            if len(str(record.get(name) or "")) > TEXTAREA_MAX:
                raise FsError(f"{name} is longer than {TEXTAREA_MAX} characters")
        return record

    def upsert(self, entity: str, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict) or not isinstance(body.get("unique_identifier"), dict) \
                or len(body["unique_identifier"]) != 1:
            raise FsError("unique_identifier must hold exactly one field and its value")
        (name, value), = body["unique_identifier"].items()
        data = self._root(body, entity)
        with self.state.lock:
            record, created = self._upsert_one(entity, name, value, data)
            return (201 if created else 200), {entity: self._render(entity, record)}

    def _upsert_one(self, entity: str, name: str, value: Any, data: Any) -> tuple[dict, bool]:
        field = self.state.field(entity, name)
        if field is None or not field["unique"]:
            raise FsError(f"unique_identifier: {name} is not a unique field of {entity}")
        if value in (None, ""):
            raise FsError(f"unique_identifier: {name} has no value")
        if not isinstance(data, dict):
            raise FsError(f"The request body must hold a '{entity}' object")
        is_custom = not field["default"]
        data = copy.deepcopy(data)
        if is_custom:
            data.setdefault("custom_field", {})[name] = value
        else:
            data[name] = value
        key = str(value).casefold()
        match = next((r for r in self.state.records[entity].values()
                      if str(((r.get("custom_field") or {}).get(name) if is_custom else r.get(name)) or "").casefold()
                      == key), None)
        record = self._check_record(entity, data, match)
        return self._store(entity, record), match is None

    def get(self, entity: str, record_id: int, include: list[str]) -> tuple[int, dict]:
        with self.state.lock:
            record = self.state.records[entity].get(record_id)
            if record is None:
                raise FsError(f"{entity} {record_id} not found", 404)
            out: dict[str, Any] = {entity: self._render(entity, record)}
            kind = next((k for k, v in TARGETABLE.items() if v == entity), None)
            for name in include:
                if name == "products" and entity == "deal":
                    catalogue = self.state.records["product"]
                    out["products"] = [{**p, "name": catalogue[p["id"]]["name"],
                                        "product_code": catalogue[p["id"]].get("product_code")}
                                       for p in record.get("products") or []]
                elif name in ("notes", "tasks", "documents") and kind:
                    child = name[:-1]
                    out[name] = [self._render(child, r) for r in self.state.records[child].values()
                                 if r.get("targetable_type") == kind and r.get("targetable_id") == record_id]
                else:
                    raise FsError(f"include={name} is not supported for {entity}")
            return 200, out

    def update(self, entity: str, record_id: int, body: Any) -> tuple[int, dict]:
        data = self._root(body, entity)
        with self.state.lock:
            current = self.state.records[entity].get(record_id)
            if current is None:
                raise FsError(f"{entity} {record_id} not found", 404)
            if entity in _ACTIVITY_FIELDS:
                record = self._check_activity(entity, data, current)
            else:
                record = self._check_record(entity, data, current)
            return 200, {entity: self._render(entity, self._store(entity, record))}

    def delete(self, entity: str, record_id: int) -> tuple[int, None]:
        with self.state.lock:
            records = self.state.records[entity]
            if record_id not in records:
                raise FsError(f"{entity} {record_id} not found", 404)
            if entity == "product" and any(any(p["id"] == record_id for p in d.get("products") or [])
                                           for d in self.state.records["deal"].values()):
                raise FsError(f"product {record_id} is used in deals; remove it from them first")
            del records[record_id]
            self.state.files.pop(record_id, None)
            kind = next((k for k, v in TARGETABLE.items() if v == entity), None)
            if kind:  # notes, tasks and files of a deleted record go with it
                for child in ("note", "task", "document"):
                    for cid in [i for i, r in self.state.records[child].items()
                                if r.get("targetable_type") == kind and r.get("targetable_id") == record_id]:
                        del self.state.records[child][cid]
                        self.state.files.pop(cid, None)
            for other_entity, rows in self.state.records.items():  # lookups to it are emptied
                for row in rows.values():
                    if other_entity in ("contact", "deal") and entity == "sales_account" \
                            and row.get("sales_account_id") == record_id:
                        row["sales_account_id"] = None
                    if other_entity == "deal" and entity == "contact" and record_id in (row.get("contacts_added_list")
                                                                                        or []):
                        row["contacts_added_list"].remove(record_id)
                    for name, value in list((row.get("custom_field") or {}).items()):
                        field = self.state.field(other_entity, name)
                        if field and field.get("lookup") == entity and value == record_id:
                            row["custom_field"][name] = None
            return 204, None

    def search(self, search_name: str, body: Any) -> tuple[int, dict]:
        entity = search_name
        if entity not in self.state.records or entity in ("task", "note", "document"):
            raise FsError(f"Filtered search is not available for {search_name}", 404)
        if not isinstance(body, dict) or not isinstance(body.get("filter_rule"), list):
            raise FsError("filter_rule must be a list of {attribute, operator, value}")
        rules = []
        for rule in body["filter_rule"]:
            attribute, operator, value = rule.get("attribute"), rule.get("operator"), rule.get("value")
            field = self.state.field(entity, attribute)
            if field is None:
                raise FsError(f"filter_rule: unknown attribute {attribute}")
            if operator not in ("is_in", "is"):
                raise FsError(f"filter_rule: operator {operator!r} is not supported (is_in, is)")
            wanted = value if isinstance(value, list) else [value]
            rules.append((attribute, not field["default"], {str(v) for v in wanted}))
        per_page = min(MAX_PER_PAGE, int(body.get("per_page") or DEFAULT_PER_PAGE))
        page = max(1, int(body.get("page") or 1))
        with self.state.lock:
            hits = [r for r in self.state.records[entity].values()
                    if all(str((r.get("custom_field") or {}).get(a) if c else r.get(a)) in w for a, c, w in rules)]
            hits.sort(key=lambda r: r["id"])
            chunk = hits[(page - 1) * per_page: page * per_page]
            key = _PLURAL.get(entity, entity)
            return 200, {key: [self._render(entity, r) for r in chunk],
                         "meta": {"total": len(hits), "total_pages": max(1, math.ceil(len(hits) / per_page))}}

    # -- bulk upsert --------------------------------------------------------------------------------
    def bulk_upsert(self, path: str, body: Any) -> tuple[int, dict]:
        entity = self._entity_of_path(path)
        if entity not in ("contact", "sales_account", "deal"):
            raise FsError(f"bulk_upsert is not available for {path}", 404)
        if not isinstance(body, dict) or not isinstance(body.get("unique_identifier"), str) \
                or not isinstance(body.get(path), list):
            raise FsError(f'The request body must be {{"unique_identifier": "<field>", "{path}": [...]}}')
        items = body[path]
        if not items or len(items) > BULK_CAP:
            raise FsError(f"bulk_upsert takes 1 to {BULK_CAP} records, got {len(items)}")
        field = self.state.field(entity, body["unique_identifier"])
        if field is None or not field["unique"]:
            raise FsError(f"unique_identifier: {body['unique_identifier']} is not a unique field of {entity}")
        with self.state.lock:
            job_id = next(self.state._ids)
            self.state.jobs[job_id] = {"entity": entity, "unique": body["unique_identifier"],
                                       "custom": not field["default"], "items": copy.deepcopy(items),
                                       "submitted": time.monotonic(), "status": "in_progress", "failed": []}
        return 202, {"job_id": job_id}

    def job_status(self, job_id: int) -> tuple[int, dict]:
        with self.state.lock:
            job = self.state.jobs.get(job_id)
            if job is None:
                raise FsError(f"job {job_id} not found", 404)
            if job["status"] == "in_progress" and time.monotonic() - job["submitted"] >= self.state.bulk_delay:
                self._run_job(job)
            done = job["status"] != "in_progress"
            return 200, {"job_status": {"id": job_id, "status": job["status"], "total": len(job["items"]),
                                        "processed": len(job["items"]) if done else 0,
                                        "failed_records": job["failed"] if done else []}}

    def _run_job(self, job: dict) -> None:
        """The server works through the job: each record is an upsert of its own (partial success)."""
        for index, item in enumerate(job["items"]):
            value = ((item or {}).get("custom_field") or {}).get(job["unique"]) if job["custom"] \
                else (item or {}).get(job["unique"])
            try:
                self._upsert_one(job["entity"], job["unique"], value, item)
            except FsError as exc:
                job["failed"].append({"index": index, "errors": {"code": exc.status, "message": exc.messages}})
        job["status"] = "completed"

    # -- documents ----------------------------------------------------------------------------------
    def upload(self, form: dict[str, str], content: bytes | None, filename: str | None, content_type: str,
               size: int) -> tuple[int, dict]:
        if content is None:
            raise FsError("file is required (multipart part 'file')")
        if size > self.state.max_file_bytes:
            raise FsError(f"File size exceeds the limit of {self.state.max_file_bytes // (1024 * 1024)} MB", 413)
        unknown = set(form) - {"file_name", "is_shared", "targetable_type", "targetable_id"}
        if unknown:
            raise FsError(f"Unknown attribute {sorted(unknown)[0]} for document")
        record = {"targetable_type": form.get("targetable_type"), "targetable_id": form.get("targetable_id")}
        with self.state.lock:
            self._check_target(record)
            record.update({"name": form.get("file_name") or filename or "file", "content_type": content_type,
                           "content_file_size": size, "is_shared": form.get("is_shared") == "true"})
            stored = self._store("document", record)
            self.state.files[stored["id"]] = content
            return 201, {"document": self._render("document", stored)}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise FsError("The request body is not valid JSON") from None


def create_app(api_key: str | None = None, rate_limit: int | None = None, *, plan: str = "growth",
               hourly_limit: int | None = None, hour_seconds: float = 3600.0, users: list[dict] | None = None,
               leads_module: bool = False, bulk_delay: float = 0.3, window: float = 60.0,
               max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
    """A Freshsales account on the given ``plan`` (its hourly budget unless ``hourly_limit`` is given).

    ``rate_limit``/``window``: the per-minute limit (the plan's 400 unless given; ``0`` disables it).
    ``hour_seconds`` shortens the hourly window for tests. ``leads_module``: the account still has the
    classic Leads module (new Freshworks CRM accounts do not). ``bulk_delay``: how long a bulk job runs.
    """
    plan_info = get_plan(plan)
    state = FreshsalesState(api_key=api_key or DEFAULT_API_KEY, plan=plan_info,
                            hourly_limit=hourly_limit if hourly_limit is not None else plan_info.requests_per_hour,
                            hour_seconds=hour_seconds, users=users, leads_module=leads_module,
                            bulk_delay=bulk_delay, max_file_bytes=max_file_bytes)
    emulator = FreshsalesEmulator(state)

    def endpoint(handler: Callable[..., Any], *, body: str | None = "json"):
        async def run(request: Request) -> Response:
            if request.headers.get("authorization") != f"Token token={state.api_key}":
                return FsError("Invalid API key. Use Authorization: Token token=<API key>", 401).response()
            allowed, headers, wait = state.charge()
            if not allowed:
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return JSONResponse({"errors": {"code": 429, "message": ["Too many requests"]}}, status_code=429,
                                    headers=headers)
            try:
                args = dict(request.path_params)
                for key in ("id", "job_id"):
                    if key in args:
                        if not str(args[key]).isdigit():
                            raise FsError(f"{key} must be a number", 404)
                        args[key] = int(args[key])
                if body == "json":
                    args["body"] = _json(await request.body())
                elif body == "form":
                    args["form"] = await request.form(max_files=1, max_fields=10)
                status, payload = await handler(request, **args) if body == "form" else handler(request, **args)
            except FsError as exc:
                return exc.response(headers)
            if payload is None:
                return Response(status_code=status, headers=headers)
            if isinstance(payload, Response):
                payload.headers.update(headers)
                return payload
            return JSONResponse(payload, status_code=status, headers=headers)

        return run

    def includes(request: Request) -> list[str]:
        raw = request.query_params.get("include") or ""
        return [p.strip() for p in raw.split(",") if p.strip()]

    def record_routes(path: str) -> list[Route]:
        entity = _PATHS.get(path) or ("product" if path == "cpq/products" else None)
        routes = [
            Route(f"/{path}", endpoint(lambda r, body: emulator.create(entity, body)), methods=["POST"]),
            Route(f"/{path}/{{id}}", endpoint(lambda r, id: emulator.get(entity, id, includes(r)), body=None),
                  methods=["GET"]),
            Route(f"/{path}/{{id}}", endpoint(lambda r, id, body: emulator.update(entity, id, body)),
                  methods=["PUT"]),
            Route(f"/{path}/{{id}}", endpoint(lambda r, id: emulator.delete(entity, id), body=None),
                  methods=["DELETE"]),
        ]
        if entity in ("sales_account", "contact", "deal", "lead"):
            routes.insert(0, Route(f"/{path}/upsert", endpoint(lambda r, body: emulator.upsert(entity, body)),
                                   methods=["POST"]))
        if entity in ("sales_account", "contact", "deal"):
            routes.insert(0, Route(f"/{path}/bulk_upsert",
                                   endpoint(lambda r, body: emulator.bulk_upsert(path, body)), methods=["POST"]))
        return routes

    def fields(request: Request, settings: str):
        if settings not in state.fields:
            raise FsError(f"Unknown module '{settings}'", 404)
        with state.lock:
            out = [{k: v for k, v in f.items() if k not in ("selector", "many")} for f in state.fields[settings]]
        return 200, {"fields": copy.deepcopy(out)}

    def selector(request: Request, name: str):
        if name not in state.selectors:
            raise FsError(f"Unknown selector {name}", 404)
        return 200, {("users" if name == "owners" else name): copy.deepcopy(state.selectors[name])}

    async def upload(request: Request, form):
        try:
            part = form.get("file")
            plain = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            if part is None or isinstance(part, str):
                return emulator.upload(plain, None, None, "", 0)
            # Read one byte past the cap at most: enough to know the file is too big.
            content = await part.read(state.max_file_bytes + 1)
            return emulator.upload(plain, content, part.filename, part.content_type or "application/octet-stream",
                                   part.size or len(content))
        finally:
            await form.close()

    def download(request: Request, id: int):
        with state.lock:
            record = state.records["document"].get(id)
            if record is None:
                raise FsError(f"document {id} not found", 404)
            return 200, Response(state.files[id], media_type=record["content_type"])

    def modules(request: Request, body: Any = None):
        if request.method == "POST":
            return 201, {"module_customization": state.create_module(body)}
        return 200, {"module_customizations": copy.deepcopy(state.modules)}

    def custom_module(handler: str):
        def run(request: Request, entity: str, **kwargs: Any):
            if entity not in state.fields or not entity.startswith("cm_"):
                raise FsError(f"Unknown custom module {entity}", 404)
            if handler == "create":
                return emulator.create(entity, kwargs["body"])
            if handler == "get":
                return emulator.get(entity, kwargs["id"], [])
            if handler == "update":
                return emulator.update(entity, kwargs["id"], kwargs["body"])
            return emulator.delete(entity, kwargs["id"])

        return run

    api_routes: list[Route] = []
    for path in ("sales_accounts", "contacts", "deals", "leads", "tasks", "notes", "cpq/products"):
        api_routes += record_routes(path)
    api_routes += [
        Route("/documents", endpoint(upload, body="form"), methods=["POST"]),
        Route("/documents/{id}", endpoint(lambda r, id: emulator.get("document", id, []), body=None), methods=["GET"]),
        Route("/documents/{id}", endpoint(lambda r, id: emulator.delete("document", id), body=None),
              methods=["DELETE"]),
        Route("/documents/{id}/download", endpoint(download, body=None), methods=["GET"]),
        Route("/filtered_search/{entity}", endpoint(lambda r, entity, body: emulator.search(entity, body)),
              methods=["POST"]),
        Route("/job_statuses/{job_id}", endpoint(lambda r, job_id: emulator.job_status(job_id), body=None),
              methods=["GET"]),
        Route("/selector/{name}", endpoint(selector, body=None), methods=["GET"]),
        Route("/settings/module_customizations", endpoint(modules, body=None), methods=["GET"]),
        Route("/settings/module_customizations", endpoint(modules), methods=["POST"]),
        Route("/settings/{settings}/fields", endpoint(fields, body=None), methods=["GET"]),
        Route("/custom_module/{entity}", endpoint(custom_module("create")), methods=["POST"]),
        Route("/custom_module/{entity}/{id}", endpoint(custom_module("get"), body=None), methods=["GET"]),
        Route("/custom_module/{entity}/{id}", endpoint(custom_module("update")), methods=["PUT"]),
        Route("/custom_module/{entity}/{id}", endpoint(custom_module("delete"), body=None), methods=["DELETE"]),
    ]

    async def admin(request: Request) -> JSONResponse:
        """Test-only: what an admin does in the Freshsales UI (fields, dropdown choices, stages)."""
        try:
            body = _json(await request.body()) or {}
            kind = request.path_params["kind"]
            if kind == "steps":
                state.apply_admin_steps(body["steps"])
                result = {"applied": len(body["steps"])}
            elif kind == "fields":
                result = state.add_field(body["entity"], body["name"], body.get("label") or body["name"], body["type"],
                                         choices=body.get("choices"), unique=bool(body.get("unique")),
                                         lookup=body.get("lookup"))
            elif kind == "choices":
                result = state.add_choices(body["entity"], body["name"], list(body["values"]))
            elif kind == "selector":
                result = state.add_selector_value(body["selector"], body["value"])
            else:
                raise FsError(f"unknown admin action {kind}", 404)
        except FsError as exc:
            return exc.response()
        except KeyError as exc:
            return FsError(f"missing {exc.args[0]}").response()
        return JSONResponse(result, status_code=201)

    routes = [
        Mount("/crm/sales/api", routes=api_routes),
        Mount("/api", routes=api_routes),  # the legacy *.freshsales.io prefix
        Route("/__freshsales__/{kind}", admin, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.freshsales = state
    app.state.freshsales_emulator = emulator
    per_minute = plan_info.requests_per_minute if rate_limit is None else (rate_limit or None)
    instrumented = instrument(app, rate_limit=per_minute, window=window)
    instrumented.control.batch_cutter = cut_bulk_upsert
    return instrumented


def cut_bulk_upsert(body: bytes, content_type: str, draw_prefix) -> bytes | None:
    """A ``bulk_upsert`` body with only the first ``draw_prefix(n)`` of its records, for a ``partial``
    fault: the job is made with the leading records and the client gets a 500, as when a server fails
    part way through reading a request. The batch is the list under the entity's plural name
    (``{"unique_identifier": ..., "contacts": [...]}``); None for any other body."""
    try:
        document = json.loads(body) if body and "json" in (content_type or "").lower() else None
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("unique_identifier"), str):
        return None
    key = next((k for k in ("sales_accounts", "contacts", "deals") if isinstance(document.get(k), list)), None)
    if key is None or len(document[key]) < 2:
        return None
    document[key] = document[key][:draw_prefix(len(document[key]))]
    return json.dumps(document).encode("utf-8")
