"""An in-memory Zoho CRM (API v8) that is harder to please than the real one.

No Zoho org is reachable from tests, so this emulator implements the calls the Zoho hook makes, in
the shapes of Zoho's published OpenAPI v8 files (``tests/integration/test_zoho_contract.py``
validates every request and answer it exchanges with the hook against them):

* OAuth: ``POST /oauth/v2/token`` (refresh-token grant; answers ``api_domain``; like Zoho, a bad
  refresh token is HTTP 200 with ``{"error": "invalid_code"}``; at most 10 tokens per 10 minutes
  per refresh token). Calls need ``Authorization: Zoho-oauthtoken <token>`` (``Bearer`` is refused).
* Records: insert/update/upsert (``duplicate_check_fields``) at most 100 per call, per-record results
  (201/200, 207 mixed, 400 all refused), delete at most 100 ids, get with required ``fields`` (≤ 50),
  ``per_page`` ≤ 200, the 2,000-record ``page`` limit and ``page_token`` beyond it; COQL.
* Notes (``Parent_Id`` with module), Tasks (``What_Id`` + ``$se_module``), attachments (multipart).
* Quotes' ``Quoted_Items`` subform: required, each row a Product lookup and a Quantity; updates
  append rows without an id, replace rows named by id, drop ``_delete`` rows, and ``[]`` clears.
* Metadata: ``/settings/modules`` (GET, POST custom module), ``/settings/fields`` (GET, POST, PATCH
  pick-list values), ``/settings/profiles``, ``/org``, ``/users``.
* Bulk Write: ``/crm/v8/upload`` (zip with one CSV, headers ``feature`` and ``X-CRM-ORG``), job
  creation, status (ADDED → IN PROGRESS → COMPLETED), and a result zip with STATUS/RECORD_ID/ERRORS.
* Limits: API credits per rolling window (429 ``TOO_MANY_REQUESTS``; ``X-API-CREDITS-REMAINING``
  from 50 % use), concurrent calls per edition, custom fields per module and custom modules per
  edition, Quotes only from Professional. ``/__zoho__/credits`` (not part of Zoho's API) reads the
  credit meter or starts a fresh window, as the org's admin sees it in the API dashboard.

Where Zoho's behaviour is not documented the emulator chooses the stricter reading (``STRICTER:``).
``create_app(...).state.zoho`` is the :class:`ZohoState`; ``snapshot()`` deep-copies the org.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_ascora_provider.destinations.zoho.limits import EDITIONS, api_name_for, call_cost, daily_credits
from airflow_ascora_provider.sandbox import zoho_coql as coql
from airflow_ascora_provider.sandbox.emulator import instrument
from airflow_ascora_provider.sandbox.zoho_model import (
    API_NAME_RE,
    CREATABLE_TYPES,
    CUSTOMIZABLE,
    SYSTEM_FIELDS,
    TASK_PARENTS,
    CreditMeter,
    Module,
    RecordError,
    ZohoError,
    check_value,
    custom_module,
    deep,
    field_meta,
    new_id,
    now_text,
    standard_module,
)

DEFAULT_CLIENT = {"client_id": "1000.SANDBOXCLIENT", "client_secret": "sandbox-secret",
                  "refresh_token": "1000.sandbox-refresh-token"}
DEFAULT_USERS = [
    {"email": "owner@sparkys-electrical.example", "first_name": "Olivia", "last_name": "Owner"},
    {"email": "tech1@sparkys-electrical.example", "first_name": "Tom", "last_name": "Tradie"},
]
MAX_RECORDS_PER_CALL = 100
MAX_FIELDS_PARAM = 50
MAX_PER_PAGE = 200
DISCRETE_PAGE_LIMIT = 2000
MAX_ATTACHMENT_BYTES = 100 * 1024 * 1024
MAX_BULK_ZIP_BYTES = 25 * 1024 * 1024
MAX_BULK_ROWS = 25_000
TOKENS_PER_WINDOW = 10  # access tokens one refresh token may mint per 10 minutes
CONTROL = "/__zoho__"  # the admin's view of the org (credits), outside the API: no token, never metered


class ZohoState:
    """One Zoho org: modules with fields and records, users, tokens, files, bulk jobs, credits."""

    def __init__(self, *, edition: str = "enterprise", users: list[dict] | None = None,
                 credits: int | None = None, credit_window: float = 86_400.0,
                 concurrency: int | None = None, max_custom_fields: int | None = None,
                 token_ttl: float = 3600.0, bulk_delay: float = 0.2, client: dict | None = None,
                 record_exchanges: bool = False):
        if edition not in EDITIONS:
            raise ValueError(f"unknown Zoho edition {edition!r}; one of {sorted(EDITIONS)}")
        self.edition = edition
        self.lock = threading.RLock()
        self.client = dict(client or DEFAULT_CLIENT)
        self.org = {"id": new_id(), "zgid": str(uuid.uuid4().int % 10**9), "company_name": "Sparkys Sandbox"}
        self.users: list[dict[str, Any]] = []
        for spec in users or DEFAULT_USERS:
            self.add_user(**spec)
        self.modules: dict[str, Module] = {}
        names = ["Accounts", "Contacts", "Leads", "Deals", "Tasks", "Notes", "Products"]
        if EDITIONS[edition]["quotes"]:
            names.append("Quotes")
        for name in names:
            self.modules[name] = standard_module(name)
        self.profiles = [{"id": new_id(), "name": "Administrator", "default": False},
                         {"id": new_id(), "name": "Standard", "default": True}]
        allowance = credits if credits is not None else daily_credits(edition, max(1, len(self.users)))
        self.meter = CreditMeter(allowance, credit_window)
        self.concurrency = concurrency or EDITIONS[edition]["concurrency"]
        self.in_flight = 0
        self.concurrency_refused = 0
        self.max_custom_fields = max_custom_fields or EDITIONS[edition]["custom_fields"]
        self.token_ttl = token_ttl
        self.tokens: dict[str, float] = {}
        self.minted: dict[str, list[float]] = {}
        self.attachments: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.bulk_jobs: dict[str, dict[str, Any]] = {}
        self.bulk_delay = bulk_delay
        self.record_exchanges = record_exchanges
        self.exchanges: list[dict[str, Any]] = []

    # -- set-up helpers -----------------------------------------------------------------------------
    def add_user(self, email: str, first_name: str = "", last_name: str = "", status: str = "active",
                 **_: Any) -> dict[str, Any]:
        user = {"id": new_id(), "email": email, "first_name": first_name, "last_name": last_name,
                "full_name": " ".join(p for p in (first_name, last_name) if p) or email,
                "status": status, "zuid": new_id()[-9:],
                "role": {"name": "CEO" if not self.users else "Manager", "id": new_id()},
                "profile": {"name": "Administrator" if not self.users else "Standard", "id": new_id()},
                "confirm": status == "active"}
        self.users.append(user)
        return user

    @property
    def api_user(self) -> dict[str, Any]:
        return self.users[0]

    def minified_user(self, user: dict[str, Any] | None = None) -> dict[str, Any]:
        user = user or self.api_user
        return {"name": user["full_name"], "id": user["id"], "email": user["email"]}

    def module(self, name: str) -> Module:
        module = self.modules.get(name)
        if module is None:
            raise ZohoError("INVALID_MODULE", "The module name given seems to be invalid",
                            details={"resource_path_index": 0})
        return module

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every live record per module, every attachment (content hash), every custom field and module."""
        with self.lock:
            return {
                "records": {name: [deep(r) for _, r in sorted(m.records.items())] for name, m in self.modules.items()},
                "attachments": sorted(({k: v for k, v in a.items() if k != "content"} for a in self.attachments.values()),
                                      key=lambda a: a["id"]),
                "custom_fields": {name: sorted(f for f, meta in m.fields.items() if meta["custom_field"])
                                  for name, m in self.modules.items()},
                "custom_modules": sorted(name for name, m in self.modules.items() if m.custom),
            }

    # -- auth ---------------------------------------------------------------------------------------
    def mint_token(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if params.get("grant_type") != "refresh_token":
            return 200, {"error": "unsupported_grant_type"}
        if (params.get("client_id"), params.get("client_secret")) != (self.client["client_id"],
                                                                        self.client["client_secret"]):
            return 200, {"error": "invalid_client"}
        if params.get("refresh_token") != self.client["refresh_token"]:
            return 200, {"error": "invalid_code"}
        now = time.monotonic()
        recent = [t for t in self.minted.get(params["refresh_token"], []) if now - t < 600]
        if len(recent) >= TOKENS_PER_WINDOW:
            return 400, {"error": "Access Denied",
                         "error_description": "You have made too many requests continuously. "
                                              "Please try again after some time."}
        recent.append(now)
        self.minted[params["refresh_token"]] = recent
        token = "1000." + hashlib.sha256(f"{now}-{len(self.tokens)}".encode()).hexdigest()[:40]
        self.tokens[token] = now + self.token_ttl
        return 200, {"access_token": token, "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ "
                     "ZohoCRM.org.READ ZohoCRM.coql.READ ZohoCRM.bulk.ALL ZohoFiles.files.ALL",
                     "token_type": "Bearer", "expires_in": int(self.token_ttl)}

    def check_auth(self, header: str | None) -> None:
        if not header or not header.startswith("Zoho-oauthtoken "):
            raise ZohoError("INVALID_TOKEN", "invalid oauth token", 401)
        expires = self.tokens.get(header.split(" ", 1)[1].strip())
        if expires is None or expires < time.monotonic():
            raise ZohoError("INVALID_TOKEN", "invalid oauth token", 401)

    # -- records: shapes ----------------------------------------------------------------------------
    def _lookup_out(self, module_name: str | None, record_id: str) -> dict[str, Any]:
        module = self.modules.get(module_name or "")
        record = module.records.get(record_id) if module else None
        name = record.get(module.name_field) if record else None
        return {"name": name, "id": record_id}

    def record_out(self, module: Module, record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        """A stored record as GET returns it (only ``fields`` plus ``id``; lookups as {name, id})."""
        wanted = fields or [*module.fields, *SYSTEM_FIELDS]
        out: dict[str, Any] = {"id": record["id"]}
        for name in wanted:
            if name == "id":
                continue
            value = record.get(name)
            meta = module.fields.get(name)
            kind = meta["data_type"] if meta else None
            if name in ("Created_By", "Modified_By", "Owner"):
                out[name] = value
            elif kind == "lookup" and isinstance(value, dict):
                out[name] = self._lookup_out(meta["lookup"]["module"]["api_name"], value["id"])
            elif kind == "multi_module_lookup" and isinstance(value, dict):
                parent = value["module"]
                looked = self._lookup_out(parent, value["id"])
                if name == "Parent_Id":
                    out[name] = {"module": {"api_name": parent, "id": self.modules[parent].id if parent in self.modules
                                            else None}, **looked}
                else:
                    out[name] = looked
                    out["$se_module"] = parent
            elif name == "Full_Name":
                out[name] = " ".join(p for p in (record.get("First_Name"), record.get("Last_Name")) if p) or None
            else:
                out[name] = deep(value)
        return out

    def _success(self, record: dict[str, Any], message: str, **extra: Any) -> dict[str, Any]:
        return {"code": "SUCCESS", **extra,
                "details": {"Modified_Time": record["Modified_Time"], "Modified_By": record["Modified_By"],
                            "Created_Time": record["Created_Time"], "id": record["id"],
                            "Created_By": record["Created_By"]},
                "message": message, "status": "success"}

    # -- records: writes ----------------------------------------------------------------------------
    def _resolve(self, module: Module, name: str, meta: dict[str, Any], value: Any, path: str,
                 item: dict[str, Any]) -> Any:
        kind = meta["data_type"]
        if value is None:
            return None
        if kind == "lookup":
            target = meta["lookup"]["module"]["api_name"]
            if not isinstance(value, dict) or not isinstance(value.get("id"), str):
                raise RecordError("INVALID_DATA", "invalid data",
                                  {"api_name": name, "json_path": path, "expected_data_type": "jsonobject"})
            if value["id"] not in self.modules[target].records:
                raise RecordError("INVALID_DATA", "the id given seems to be invalid",
                                  {"api_name": name, "json_path": f"{path}.id", "id": value["id"]})
            return {"id": value["id"]}
        if kind == "ownerlookup":
            user = next((u for u in self.users if isinstance(value, dict) and u["id"] == value.get("id")), None)
            if user is None or user["status"] != "active":
                raise RecordError("INVALID_DATA", "invalid data",
                                  {"api_name": name, "json_path": path, "expected_data_type": "jsonobject"})
            return self.minified_user(user)
        if kind == "multi_module_lookup":
            if name == "Parent_Id":  # Notes: {"module": {"api_name": ...}, "id": ...}
                parent = ((value or {}).get("module") or {}).get("api_name") if isinstance(value, dict) else None
            else:  # Tasks: What_Id {"id"} plus "$se_module" beside it
                parent = item.get("$se_module")
                if parent not in TASK_PARENTS and parent not in {m for m, mod in self.modules.items() if mod.custom}:
                    raise RecordError("INVALID_DATA", "invalid data",
                                      {"api_name": "$se_module", "json_path": path.rsplit(".", 1)[0] + ".$se_module"})
            if not isinstance(value, dict) or not parent or parent not in self.modules \
                    or value.get("id") not in self.modules[parent].records:
                raise RecordError("INVALID_DATA", "the id given seems to be invalid",
                                  {"api_name": name, "json_path": path})
            return {"module": parent, "id": value["id"]}
        if kind == "subform":
            return self._subform(name, value, path)
        return check_value(meta, value, path)

    def _subform(self, name: str, rows: Any, path: str) -> list[dict[str, Any]]:
        """Quoted_Items: every row names a Product (Product_Name lookup) and a Quantity; a row
        ``{"id": …, "_delete": null}`` removes that row of the record (see :meth:`_merge_rows`)."""
        if not isinstance(rows, list):
            raise RecordError("INVALID_DATA", "invalid data",
                              {"api_name": name, "json_path": path, "expected_data_type": "jsonarray"})
        stored = []
        for i, row in enumerate(rows):
            if isinstance(row, dict) and "_delete" in row:
                stored.append({"id": row.get("id"), "_delete": True, "_path": f"{path}[{i}].id"})
                continue
            product = (row or {}).get("Product_Name") if isinstance(row, dict) else None
            if not isinstance(product, dict) or product.get("id") not in self.modules["Products"].records:
                raise RecordError("MANDATORY_NOT_FOUND", "required field not found",
                                  {"api_name": "Product_Name", "json_path": f"{path}[{i}].Product_Name"})
            quantity = row.get("Quantity")
            if not isinstance(quantity, int | float) or isinstance(quantity, bool):
                raise RecordError("INVALID_DATA", "invalid data",
                                  {"api_name": "Quantity", "json_path": f"{path}[{i}].Quantity",
                                   "expected_data_type": "double"})
            stored.append({"id": row.get("id") or new_id(), "Product_Name": {"id": product["id"]},
                           "Quantity": quantity, "List_Price": row.get("List_Price"),
                           "Discount": row.get("Discount"), "Description": row.get("Description")})
        return stored

    @staticmethod
    def _merge_rows(name: str, current: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Zoho's subform update: rows without an id are appended to the record's rows, a row with an
        existing id replaces that row, ``_delete`` removes it, and an empty list clears them all (Zoho's
        "update subform data" page). A new record has no rows to keep."""
        if not given:
            return []
        rows = {row["id"]: row for row in current}
        for row in given:
            row_id = row.get("id")
            if row.get("_delete"):
                if row_id not in rows:
                    raise RecordError("INVALID_DATA", "the id given seems to be invalid",
                                      {"api_name": name, "json_path": row["_path"], "id": row_id})
                del rows[row_id]
            else:
                rows[row_id] = row
        return list(rows.values())

    def _values(self, module: Module, item: dict[str, Any], index: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in item.items():
            path = f"$.data[{index}].{name}"
            if name in ("id", "$se_module"):
                continue
            meta = module.fields.get(name)
            if meta is None:
                # STRICTER: Zoho ignores some unknown keys; refusing them catches a field that the
                # schema step never created.
                raise RecordError("INVALID_DATA", "invalid data", {"api_name": name, "json_path": path})
            if meta["read_only"]:
                raise RecordError("INVALID_DATA", "Field Edit Permission not given",
                                  {"api_name": name, "json_path": path})
            values[name] = self._resolve(module, name, meta, value, path, item)
        return values

    def _check_mandatory(self, module: Module, merged: dict[str, Any], index: int) -> None:
        if module.api_name == "Notes" and not (merged.get("Note_Title") or merged.get("Note_Content")):
            # A note needs a title or content. Zoho's examples answer EXPECTED_FIELD_MISSING; its
            # OpenAPI file documents only MANDATORY_NOT_FOUND for Notes, which is what this answers.
            raise RecordError("MANDATORY_NOT_FOUND", "required field not found",
                              {"api_name": "Note_Content", "json_path": f"$.data[{index}].Note_Content"})
        for name, meta in module.fields.items():
            if meta["system_mandatory"] and merged.get(name) in (None, "", []):
                raise RecordError("MANDATORY_NOT_FOUND", "required field not found",
                                  {"api_name": name, "json_path": f"$.data[{index}].{name}"})

    def _check_unique(self, module: Module, merged: dict[str, Any], own_id: str | None, index: int) -> None:
        for name, meta in module.fields.items():
            value = merged.get(name)
            if not meta["unique"] or value in (None, ""):
                continue
            for other in module.records.values():
                if other["id"] != own_id and str(other.get(name) or "").lower() == str(value).lower():
                    raise RecordError("DUPLICATE_DATA", "duplicate data", {
                        "api_name": name, "json_path": f"$.data[{index}].{name}", "id": other["id"],
                        "more_records": False,
                        "duplicate_record": {"id": other["id"], "Owner": other.get("Owner"),
                                             "module": {"api_name": module.api_name, "id": module.id}}})

    def write(self, module_name: str, items: Any, mode: str, duplicate_check: list[str] | None = None
              ) -> tuple[int, dict[str, Any]]:
        """Insert, update or upsert up to 100 records; one result per record, in order."""
        module = self.module(module_name)
        if not isinstance(items, list) or not items:
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found",
                            details={"api_name": "data", "json_path": "$.data"})
        if len(items) > MAX_RECORDS_PER_CALL:
            raise ZohoError("LIMIT_EXCEEDED", "Record count exceeded",
                            details={"limit": MAX_RECORDS_PER_CALL, "api_name": "data", "json_path": "$.data"})
        for name in duplicate_check or ():
            meta = module.fields.get(name)
            if meta is None or not (meta["unique"] or name in (module.name_field, "Email")):
                raise ZohoError("INVALID_DATA", "invalid data",
                                details={"api_name": name, "json_path": "$.duplicate_check_fields"})
        results = []
        with self.lock:
            for i, item in enumerate(items):
                try:
                    if not isinstance(item, dict):
                        raise RecordError("INVALID_DATA", "invalid data", {"json_path": f"$.data[{i}]"})
                    results.append(self._write_one(module, item, i, mode, duplicate_check or []))
                except RecordError as exc:
                    results.append(exc.item())
        ok = sum(1 for r in results if r["status"] == "success")
        status = (201 if mode == "insert" else 200) if ok == len(results) else (207 if ok else 400)
        return status, {"data": results}

    def _write_one(self, module: Module, item: dict[str, Any], index: int, mode: str,
                   duplicate_check: list[str]) -> dict[str, Any]:
        values = self._values(module, item, index)
        existing: dict[str, Any] | None = None
        duplicate_field = None
        if mode == "update" or (mode == "upsert" and item.get("id")):
            existing = module.records.get(str(item.get("id")))
            if existing is None:
                raise RecordError("INVALID_DATA", "the id given seems to be invalid",
                                  {"api_name": "id", "json_path": f"$.data[{index}].id"})
        elif mode == "upsert":
            for name in duplicate_check:
                wanted = values.get(name)
                if wanted in (None, ""):
                    continue
                existing = next((r for r in module.records.values()
                                 if str(r.get(name) or "").lower() == str(wanted).lower()), None)
                if existing is not None:
                    duplicate_field = name
                    break
        for name, meta in module.fields.items():
            if meta["data_type"] == "subform" and isinstance(values.get(name), list):
                values[name] = self._merge_rows(name, (existing or {}).get(name) or [], values[name])
        merged = {**(existing or {}), **values}
        self._check_mandatory(module, merged, index)
        self._check_unique(module, merged, existing["id"] if existing else None, index)
        stamp = now_text()
        if existing is not None:
            existing.update(values)
            existing["Modified_Time"] = stamp
            existing["Modified_By"] = self.minified_user()
            extra = {"action": "update", "duplicate_field": duplicate_field} if mode == "upsert" else {}
            if mode == "upsert" and duplicate_field is None:
                extra.pop("duplicate_field")
            return self._success(existing, "record updated", **extra)
        record = {"id": new_id(), "Owner": self.minified_user(), "Created_Time": stamp, "Modified_Time": stamp,
                  "Created_By": self.minified_user(), "Modified_By": self.minified_user(), **values}
        module.records[record["id"]] = record
        extra = {"action": "insert"} if mode == "upsert" else {}
        return self._success(record, "record added", **extra)

    # -- records: delete ----------------------------------------------------------------------------
    def delete(self, module_name: str, ids: list[str]) -> tuple[int, dict[str, Any]]:
        module = self.module(module_name)
        if not ids:
            raise ZohoError("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing",
                            details={"param_name": "ids"})
        if len(ids) > MAX_RECORDS_PER_CALL:
            raise ZohoError("LIMIT_EXCEEDED", "Record count exceeded",
                            details={"limit": MAX_RECORDS_PER_CALL, "param_name": "ids"})
        results = []
        with self.lock:
            for record_id in ids:
                record = module.records.pop(record_id, None)
                if record is None:
                    results.append({"code": "INVALID_DATA", "details": {"id": record_id},
                                    "message": "record not deleted", "status": "error"})
                    continue
                # INFERRED: deleted records go to the recycle bin and no longer hold unique values.
                module.recycle_bin[record_id] = record
                self._cascade(module.api_name, record_id)
                results.append(self._success(record, "record deleted"))
        ok = sum(1 for r in results if r["status"] == "success")
        return (200 if ok == len(results) else 207 if ok else 400), {"data": results}

    def _cascade(self, module_name: str, record_id: str) -> None:
        """Notes, tasks and files of a deleted record go with it; lookups to it are cleared."""
        for att_id in [a for a, v in self.attachments.items() if v["parent_id"] == record_id]:
            del self.attachments[att_id]
        for other in self.modules.values():
            for rid, rec in list(other.records.items()):
                for name, meta in other.fields.items():
                    value = rec.get(name)
                    if not isinstance(value, dict) or value.get("id") != record_id:
                        continue
                    if meta["data_type"] == "multi_module_lookup":
                        other.recycle_bin[rid] = other.records.pop(rid)
                        break
                    if meta["data_type"] == "lookup":
                        rec[name] = None

    # -- records: reads -----------------------------------------------------------------------------
    def _check_fields(self, module: Module, fields_param: str | None) -> list[str]:
        if not fields_param:
            raise ZohoError("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing",
                            details={"param_name": "fields"})
        fields = [f.strip() for f in fields_param.split(",") if f.strip()]
        if len(fields) > MAX_FIELDS_PARAM:
            raise ZohoError("LIMIT_EXCEEDED", "Max field limit exceeded",
                            details={"limit": MAX_FIELDS_PARAM, "param_name": "fields"})
        for name in fields:
            if name != "id" and name not in module.fields and name not in SYSTEM_FIELDS:
                raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": name, "param_name": "fields"})
        return fields

    def get_records(self, module_name: str, params: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        module = self.module(module_name)
        fields = self._check_fields(module, params.get("fields"))
        per_page = int(params.get("per_page") or 200)
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ZohoError("LIMIT_EXCEEDED", "Record count exceeded",
                            details={"limit": MAX_PER_PAGE, "param_name": "per_page"})
        with self.lock:
            if params.get("ids"):
                ids = [i for i in params["ids"].split(",") if i]
                if len(ids) > MAX_RECORDS_PER_CALL:
                    raise ZohoError("LIMIT_EXCEEDED", "Record count exceeded",
                                    details={"limit": MAX_RECORDS_PER_CALL, "param_name": "ids"})
                rows = [module.records[i] for i in ids if i in module.records]
                start, more = 0, False
            else:
                rows = sorted(module.records.values(), key=lambda r: (r["Created_Time"], r["id"]))
                if params.get("page_token"):
                    if params.get("page"):
                        raise ZohoError("INVALID_DATA", "invalid data",
                                        details={"param_name": "page", "reason": "page_token and page together"})
                    start = _decode_token(params["page_token"])
                else:
                    page = int(params.get("page") or 1)
                    if page * per_page > DISCRETE_PAGE_LIMIT:
                        raise ZohoError("LIMIT_EXCEEDED", "Record count exceeded",
                                        details={"limit": DISCRETE_PAGE_LIMIT, "param_name": "page",
                                                 "reason": "DISCRETE_PAGINATION_LIMIT_EXCEEDED: use page_token"})
                    start = (page - 1) * per_page
                more = start + per_page < len(rows)
                rows = rows[start:start + per_page]
            data = [self.record_out(module, r, fields) for r in rows]
        if not data:
            return 204, None
        info: dict[str, Any] = {"per_page": per_page, "count": len(data), "page": start // per_page + 1,
                                "sort_by": "id", "sort_order": "desc", "more_records": more}
        if more:
            info["next_page_token"] = _encode_token(start + per_page)
            info["page_token_expiry"] = now_text()
        return 200, {"data": data, "info": info}

    def coql(self, query_text: Any) -> tuple[int, dict[str, Any] | None]:
        if not isinstance(query_text, str) or not query_text.strip():
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found",
                            details={"api_name": "select_query"})
        query = coql.parse(query_text)
        module = self.module(query.module)
        for name in [*query.fields, *coql.fields_named(query.where)]:
            base = name.partition(".")[0]
            if base != "id" and base not in module.fields and base not in SYSTEM_FIELDS:
                raise ZohoError("INVALID_QUERY", "column given seems to be invalid",
                                details={"column_name": name, "clause": "select"})
        with self.lock:
            rows = [r for r in module.records.values() if coql.matches(query.where, r)]
            for name, direction in reversed(query.order_by or [("id", "asc")]):
                rows.sort(key=lambda r: str(r.get(name) or ""), reverse=direction == "desc")
            page = rows[query.offset:query.offset + query.limit]
            bases = [f.partition(".")[0] for f in query.fields]
            data = []
            for r in page:
                out = self.record_out(module, r, bases)
                data.append({k: v for k, v in out.items() if k in bases or k == "id"})
        if not data:
            return 204, None
        return 200, {"data": data, "info": {"count": len(data),
                                            "more_records": query.offset + query.limit < len(rows)}}

    # -- metadata -----------------------------------------------------------------------------------
    def create_fields(self, module_name: str, body: Any) -> tuple[int, dict[str, Any]]:
        module = self.module(module_name)
        items = (body or {}).get("fields") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "fields"})
        out = []
        with self.lock:
            for i, spec in enumerate(items):
                try:
                    if module.api_name not in CUSTOMIZABLE and not module.custom:
                        raise ZohoError("INVALID_DATA", "invalid data",
                                        details={"api_name": "module", "json_path": f"$.fields[{i}]"})
                    out.append(self._create_field(module, spec, i))
                except ZohoError as exc:
                    out.append(exc.body())
        ok = all(o["status"] == "success" for o in out)
        return (201 if ok else 400), {"fields": out}

    def _create_field(self, module: Module, spec: Any, i: int) -> dict[str, Any]:
        path = f"$.fields[{i}]"
        if not isinstance(spec, dict):
            raise ZohoError("INVALID_DATA", "invalid data", details={"json_path": path})
        label, data_type = spec.get("field_label"), spec.get("data_type")
        for key, value in (("field_label", label), ("data_type", data_type)):
            if not value:
                raise ZohoError("MANDATORY_NOT_FOUND", "required field not found",
                                details={"api_name": key, "json_path": f"{path}.{key}"})
        if data_type not in CREATABLE_TYPES:
            raise ZohoError("INVALID_DATA", "invalid data",
                            details={"api_name": "data_type", "json_path": f"{path}.data_type"})
        # INFERRED: v8 takes an explicit api_name on create; without one it derives it from the label.
        api_name = spec.get("api_name") or api_name_for(label)
        if not isinstance(api_name, str) or not API_NAME_RE.match(api_name) or len(api_name) > 50:
            raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": "api_name",
                                                                     "json_path": f"{path}.api_name"})
        if api_name in module.fields or any(f["field_label"].lower() == label.lower() for f in module.fields.values()):
            raise ZohoError("DUPLICATE_DATA", "duplicate data",
                            details={"api_name": "field_label", "json_path": f"{path}.field_label"})
        if module.custom_field_count() >= self.max_custom_fields:
            raise ZohoError("LIMIT_EXCEEDED", "Max field limit exceeded",
                            details={"limit": self.max_custom_fields, "api_name": "fields",
                                     "reason": f"{self.edition} edition allows {self.max_custom_fields} "
                                               f"custom fields per module"})
        options = None
        if data_type in ("picklist", "multiselectpicklist"):
            values = spec.get("pick_list_values")
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, dict) and v.get("display_value") and v.get("actual_value") for v in values):
                raise ZohoError("MANDATORY_NOT_FOUND", "required field not found",
                                details={"api_name": "pick_list_values", "json_path": f"{path}.pick_list_values"})
            options = [v["actual_value"] for v in values]
        target = None
        if data_type == "lookup":
            target = (((spec.get("lookup") or {}).get("module")) or {}).get("api_name")
            if target not in self.modules:
                raise ZohoError("INVALID_DATA", "invalid data",
                                details={"api_name": "lookup", "json_path": f"{path}.lookup.module"})
        tooltip = (spec.get("tooltip") or {}).get("value") if isinstance(spec.get("tooltip"), dict) else None
        length = spec.get("length")
        meta = field_meta(api_name, data_type, label, custom=True, options=options, lookup=target,
                          unique=bool(spec.get("unique")), length=length if isinstance(length, int) else None,
                          tooltip=tooltip, module=module.api_name)
        module.fields[api_name] = meta
        return {"code": "SUCCESS", "details": {"id": meta["id"]}, "message": "field created", "status": "success"}

    def update_fields(self, module_name: str, body: Any) -> tuple[int, dict[str, Any]]:
        """PATCH pick-list values. STRICTER: the list sent *replaces* the options (ids keep old ones)."""
        module = self.module(module_name)
        items = (body or {}).get("fields") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "fields"})
        if len(items) > 5:
            raise ZohoError("LIMIT_EXCEEDED", "Max field limit exceeded", details={"limit": 5})
        out = []
        with self.lock:
            for i, spec in enumerate(items):
                meta = next((f for f in module.fields.values() if f["id"] == (spec or {}).get("id")), None)
                if meta is None:
                    out.append(ZohoError("INVALID_DATA", "invalid data",
                                         details={"api_name": "id", "json_path": f"$.fields[{i}].id"}).body())
                    continue
                values = spec.get("pick_list_values")
                if not isinstance(values, list) or meta["data_type"] not in ("picklist", "multiselectpicklist"):
                    out.append(ZohoError("INVALID_DATA", "invalid data", details={
                        "api_name": "pick_list_values", "json_path": f"$.fields[{i}].pick_list_values"}).body())
                    continue
                by_id = {p["id"]: p for p in meta["pick_list_values"]}
                new = []
                for v in values:
                    if v.get("id") in by_id:
                        new.append(by_id[v["id"]])
                    elif v.get("actual_value") and v.get("display_value"):
                        new.append({"display_value": v["display_value"], "actual_value": v["actual_value"],
                                    "id": new_id(), "sequence_number": len(new) + 1, "type": "used"})
                meta["pick_list_values"] = new
                out.append({"code": "SUCCESS", "details": {"id": meta["id"]}, "message": "field updated",
                            "status": "success"})
        return (200 if all(o["status"] == "success" for o in out) else 400), {"fields": out}

    def create_modules(self, body: Any) -> tuple[int, dict[str, Any]]:
        items = (body or {}).get("modules") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "modules"})
        cap = EDITIONS[self.edition]["custom_modules"]
        out = []
        with self.lock:
            for i, spec in enumerate(items):
                path = f"$.modules[{i}]"
                try:
                    for key in ("singular_label", "plural_label", "api_name", "profiles"):
                        if not (spec or {}).get(key):
                            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found",
                                            details={"api_name": key, "json_path": f"{path}.{key}"})
                    for key in ("singular_label", "plural_label"):
                        if len(spec[key]) > 25 or not all(c.isalnum() or c == " " for c in spec[key]):
                            raise ZohoError("INVALID_DATA", "invalid data",
                                            details={"api_name": key, "json_path": f"{path}.{key}"})
                    if len(spec["api_name"]) > 50 or not spec["api_name"].replace("_", "").isalnum():
                        raise ZohoError("INVALID_DATA", "invalid data",
                                        details={"api_name": "api_name", "json_path": f"{path}.api_name"})
                    if spec["api_name"] in self.modules:
                        raise ZohoError("DUPLICATE_DATA", "duplicate data",
                                        details={"api_name": "api_name", "json_path": f"{path}.api_name"})
                    known = {p["id"] for p in self.profiles}
                    if not all(isinstance(p, dict) and p.get("id") in known for p in spec["profiles"]):
                        raise ZohoError("INVALID_DATA", "invalid data",
                                        details={"api_name": "profiles", "json_path": f"{path}.profiles"})
                    if sum(1 for m in self.modules.values() if m.custom) >= cap:
                        raise ZohoError("LIMIT_EXCEEDED", "Max field limit exceeded", details={
                            "limit": cap, "reason": f"the {self.edition} edition allows {cap} custom modules"})
                    module = custom_module(spec["api_name"], spec["singular_label"], spec["plural_label"])
                    self.modules[module.api_name] = module
                    out.append({"code": "SUCCESS", "details": {"id": module.id}, "message": "module created",
                                "status": "success"})
                except ZohoError as exc:
                    out.append(exc.body())
        return (200 if all(o["status"] == "success" for o in out) else 400), {"modules": out}

    # -- attachments ----------------------------------------------------------------------------------
    def add_attachment(self, module_name: str, record_id: str, name: str, content: bytes) -> dict[str, Any]:
        module = self.module(module_name)
        if record_id not in module.records:
            raise ZohoError("INVALID_DATA", "the id given seems to be invalid", details={"id": record_id})
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise ZohoError("FILE_SIZE_MORE_THAN_ALLOWED_SIZE", "invalid data", details={"limit": MAX_ATTACHMENT_BYTES})
        if name.lower().endswith(".exe"):
            raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": "file"})
        stamp = now_text()
        attachment = {"id": new_id(), "module": module_name, "parent_id": record_id, "File_Name": name,
                      "Size": str(len(content)), "sha256": hashlib.sha256(content).hexdigest(),
                      "Created_Time": stamp, "Modified_Time": stamp, "content": content}
        with self.lock:
            self.attachments[attachment["id"]] = attachment
        user = self.minified_user()
        return {"code": "SUCCESS", "details": {"Modified_Time": stamp, "Modified_By": user, "Created_Time": stamp,
                                               "id": attachment["id"], "Created_By": user},
                "message": "attachment uploaded successfully", "status": "success"}

    def attachment(self, module_name: str, record_id: str, attachment_id: str) -> dict[str, Any]:
        found = self.attachments.get(attachment_id)
        if found is None or found["parent_id"] != record_id or found["module"] != module_name:
            raise ZohoError("INVALID_DATA", "the id given seems to be invalid", details={"id": attachment_id})
        return found

    def attachment_out(self, a: dict[str, Any]) -> dict[str, Any]:
        user = self.minified_user()
        return {"id": a["id"], "File_Name": a["File_Name"], "Size": a["Size"], "$file_id": a["sha256"][:32],
                "Parent_Id": {"module": {"api_name": a["module"], "id": self.modules[a["module"]].id},
                              **self._lookup_out(a["module"], a["parent_id"])},
                "Created_Time": a["Created_Time"], "Modified_Time": a["Modified_Time"], "Owner": user,
                "Created_By": user, "Modified_By": user, "$editable": True, "$type": "Attachment"}

    # -- bulk write -----------------------------------------------------------------------------------
    def upload(self, content: bytes) -> dict[str, Any]:
        if len(content) > MAX_BULK_ZIP_BYTES:
            raise ZohoError("FILE_TOO_LARGE", "File size too large to process")
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile:
            raise ZohoError("INVALID_FILE_FORMAT", "invalid file format. only zip format is supported") from None
        if len(names) != 1 or not names[0].lower().endswith(".csv"):
            raise ZohoError("FILE_NOT_SUPPORTED", "File not supported for bulk write")
        file_id = int(new_id()[-12:])
        self.uploads[str(file_id)] = content
        return {"status": "success", "code": "FILE_UPLOAD_SUCCESS", "message": "file uploaded.",
                "details": {"file_id": file_id, "created_time": now_text(), "id": str(file_id),
                            "created_by": self.minified_user()}}

    def create_bulk_job(self, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("operation") not in ("insert", "update", "upsert"):
            raise ZohoError("MISSING_REQUIRED_KEY", "required key operation is not found in request body.")
        resources = body.get("resource")
        if not isinstance(resources, list) or len(resources) != 1:
            raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": "resource"})
        resource = resources[0]
        module = self.modules.get(((resource.get("module") or {}).get("api_name")) or "")
        if module is None:
            raise ZohoError("MODULE_NOT_AVAILABLE", f"Requested module '{(resource.get('module') or {}).get('api_name')}' "
                                                    "is not available.")
        if str(resource.get("file_id")) not in self.uploads:
            raise ZohoError("INVALID_FILE_ID", "improper file id")
        mappings = resource.get("field_mappings")
        if not isinstance(mappings, list) or not mappings:
            raise ZohoError("MANDATORY_FIELDS_NOT_MAPPED", "All mandatory fields are not mapped for the layout")
        for m in mappings:
            if m.get("api_name") not in module.fields:
                raise ZohoError("INVALID_FIELD_NAME", f"invalid mapping. invalid api_name {m.get('api_name')}.")
            if not isinstance(m.get("index"), int):
                raise ZohoError("COLUMN_INDEX_NOT_FOUND",
                                f"required key index for field {m.get('api_name')} is not found in request body.")
        find_by = resource.get("find_by")
        if body["operation"] == "update":
            # The emulator runs insert and upsert jobs only (the hook never sends update jobs).
            raise ZohoError("CANNOT_PROCESS", "update jobs are not emulated", details={"api_name": "operation"})
        if body["operation"] == "upsert":
            meta = module.fields.get(find_by or "")
            if meta is None or not meta["unique"]:
                raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": "find_by",
                                                                         "reason": "find_by must be a unique field"})
        job_id = new_id()
        job = {"id": job_id, "operation": body["operation"], "module": module.api_name, "find_by": find_by,
               "file_id": str(resource["file_id"]), "mappings": mappings, "created": time.monotonic(),
               "created_time": now_text(), "status": "ADDED", "result": None,
               "download_url": f"{base_url}/crm/bulk/v8/write/{job_id}/result",
               "ignore_empty": bool(body.get("ignore_empty"))}
        self.bulk_jobs[job_id] = job
        return {"status": "success", "code": "SUCCESS", "message": "success",
                "details": {"id": job_id, "created_by": self.minified_user()}}

    def bulk_job(self, job_id: str) -> dict[str, Any]:
        job = self.bulk_jobs.get(job_id)
        if job is None:
            raise ZohoError("RESOURCE_NOT_FOUND", "The requested resource doesn't exist.")
        age = time.monotonic() - job["created"]
        if job["status"] == "ADDED" and age >= self.bulk_delay / 2:
            job["status"] = "IN PROGRESS"
        if job["status"] == "IN PROGRESS" and age >= self.bulk_delay:
            self._run_bulk(job)
        counts = job.get("counts") or {}
        file_info = {"status": job["status"], "name": f"{job['file_id']}.csv",
                     "added_count": counts.get("added", 0), "skipped_count": counts.get("skipped", 0),
                     "updated_count": counts.get("updated", 0), "total_count": counts.get("total", 0)}
        out = {"status": job["status"], "character_encoding": "UTF-8", "id": job["id"],
               "operation": job["operation"], "created_time": job["created_time"],
               "created_by": self.minified_user(),
               "resource": [{"status": job["status"], "type": "data",
                             "module": {"api_name": job["module"], "id": self.modules[job["module"]].id},
                             "field_mappings": job["mappings"], "file": file_info}]}
        if job["status"] == "COMPLETED":
            out["result"] = {"download_url": job["download_url"]}
        return out

    def _run_bulk(self, job: dict[str, Any]) -> None:
        """Apply every CSV row as one record write; keep STATUS / RECORD_ID / ERRORS per row."""
        module = self.modules[job["module"]]
        with zipfile.ZipFile(io.BytesIO(self.uploads[job["file_id"]])) as archive:
            text = archive.read(archive.namelist()[0]).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
        header, body = rows[0], rows[1:]
        counts = {"added": 0, "updated": 0, "skipped": 0, "total": len(body)}
        out_rows = [header + ["STATUS", "RECORD_ID", "ERRORS"]]
        for row in body[:MAX_BULK_ROWS]:
            item: dict[str, Any] = {}
            error = None
            for m in job["mappings"]:
                raw = row[m["index"]] if m["index"] < len(row) else ""
                if raw == "" and job["ignore_empty"]:
                    continue
                try:
                    item[m["api_name"]] = _from_csv(module.fields[m["api_name"]], raw)
                except ValueError as exc:
                    error = f"INVALID_DATA {m['api_name']}: {exc}"
            if error is None:
                mode = job["operation"]
                dup = [job["find_by"]] if mode == "upsert" else []
                _, result = self.write(module.api_name, [item], mode, dup)
                entry = result["data"][0]
                if entry["status"] == "success":
                    added = entry.get("action", "insert") == "insert" and mode != "update"
                    counts["added" if added else "updated"] += 1
                    out_rows.append(row + ["ADDED" if added else "UPDATED", entry["details"]["id"], ""])
                    continue
                api = (entry.get("details") or {}).get("api_name", "")
                error = f"{entry['code']} {api}".strip()
            counts["skipped"] += 1
            out_rows.append(row + ["SKIPPED", "", error])
        buffer = io.StringIO()
        csv.writer(buffer).writerows(out_rows)
        archive_bytes = io.BytesIO()
        with zipfile.ZipFile(archive_bytes, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{job['file_id']}.csv", buffer.getvalue())
        job.update(status="COMPLETED", counts=counts, result=archive_bytes.getvalue())


def _from_csv(meta: dict[str, Any], raw: str) -> Any:
    """A CSV cell as the JSON value the record API would take (lookups by id, numbers parsed)."""
    if raw == "":
        return None
    kind = meta["data_type"]
    if kind in ("integer", "bigint"):
        return int(raw)
    if kind in ("double", "currency", "decimal", "percent"):
        return float(Decimal(raw))
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"{raw!r} is not true/false")
        return raw.lower() == "true"
    if kind in ("lookup", "ownerlookup"):
        return {"id": raw}
    if kind == "multiselectpicklist":
        return [v for v in raw.split(";") if v]
    return raw


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return int(text.split(":", 1)[1])
    except (ValueError, IndexError):
        raise ZohoError("INVALID_DATA", "invalid data", details={"param_name": "page_token"}) from None


# -- HTTP layer ----------------------------------------------------------------------------------------
def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ZohoError("INVALID_DATA", "body", details={"reason": "body is not JSON"}) from None


def _handler(fn: Callable) -> Callable:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request, request.app.state.zoho)
        except ZohoError as exc:
            return _json(exc.status, exc.body())

    return endpoint


@_handler
async def token(request: Request, state: ZohoState) -> Response:
    params = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        params.update({k: str(v) for k, v in (await request.form()).items()})
    status, body = state.mint_token(params)
    if status == 200 and "access_token" in body:
        body["api_domain"] = str(request.base_url).rstrip("/")
    return _json(status, body)


@_handler
async def records(request: Request, state: ZohoState) -> Response:
    module = request.path_params["module"]
    if request.method == "GET":
        status, body = state.get_records(module, dict(request.query_params))
        return _json(status, body)
    if request.method == "DELETE":
        ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
        status, body = state.delete(module, ids)
        return _json(status, body)
    body = await _body(request)
    items = body.get("data") if isinstance(body, dict) else None
    status, out = state.write(module, items, "insert" if request.method == "POST" else "update")
    return _json(status, out)


@_handler
async def upsert(request: Request, state: ZohoState) -> Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "data"})
    checks = body.get("duplicate_check_fields")
    if checks is not None and not (isinstance(checks, list) and all(isinstance(c, str) for c in checks)):
        raise ZohoError("INVALID_DATA", "invalid data", details={"api_name": "duplicate_check_fields"})
    status, out = state.write(request.path_params["module"], body.get("data"), "upsert", checks)
    return _json(status, out)


@_handler
async def record(request: Request, state: ZohoState) -> Response:
    module = state.module(request.path_params["module"])
    record_id = request.path_params["id"]
    if request.method == "DELETE":
        status, body = state.delete(module.api_name, [record_id])
        return _json(status, body)
    found = module.records.get(record_id)
    if found is None:
        return _json(204, None)
    fields = request.query_params.get("fields")
    return _json(200, {"data": [state.record_out(module, found, fields.split(",") if fields else None)]})


@_handler
async def coql_query(request: Request, state: ZohoState) -> Response:
    body = await _body(request)
    status, out = state.coql((body or {}).get("select_query") if isinstance(body, dict) else None)
    return _json(status, out)


@_handler
async def users(request: Request, state: ZohoState) -> Response:
    kind = request.query_params.get("type", "AllUsers")
    page = int(request.query_params.get("page") or 1)
    per_page = int(request.query_params.get("per_page") or 200)
    if not 1 <= per_page <= 200:
        raise ZohoError("INVALID_DATA", "invalid data", details={"param_name": "per_page"})
    chosen = [u for u in state.users if kind != "ActiveUsers" or u["status"] == "active"]
    part = chosen[(page - 1) * per_page: page * per_page]
    if not part:
        return _json(204, None)
    return _json(200, {"users": deep(part), "info": {"per_page": per_page, "count": len(part), "page": page,
                                                     "more_records": page * per_page < len(chosen)}})


@_handler
async def org(request: Request, state: ZohoState) -> Response:
    return _json(200, {"org": [{**state.org, "license_details": {
        "paid": state.edition != "free", "paid_type": state.edition, "users_license_purchased": len(state.users)}}]})


@_handler
async def profiles(request: Request, state: ZohoState) -> Response:
    return _json(200, {"profiles": deep(state.profiles)})


@_handler
async def modules(request: Request, state: ZohoState) -> Response:
    if request.method == "POST":
        status, out = state.create_modules(await _body(request))
        return _json(status, out)
    return _json(200, {"modules": [m.describe() for m in state.modules.values()]})


@_handler
async def module_detail(request: Request, state: ZohoState) -> Response:
    module = state.module(request.path_params["api_name"])
    return _json(200, {"modules": [module.describe()]})


@_handler
async def fields(request: Request, state: ZohoState) -> Response:
    name = request.query_params.get("module")
    if not name:
        raise ZohoError("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing",
                        details={"param_name": "module"})
    if request.method == "POST":
        status, out = state.create_fields(name, await _body(request))
        return _json(status, out)
    if request.method == "PATCH":
        status, out = state.update_fields(name, await _body(request))
        return _json(status, out)
    module = state.module(name)
    return _json(200, {"fields": [{k: deep(v) for k, v in f.items() if not k.startswith("$")}
                                  for f in module.fields.values()]})


@_handler
async def attachments(request: Request, state: ZohoState) -> Response:
    module, record_id = request.path_params["module"], request.path_params["record_id"]
    if request.method == "POST":
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "file"})
        content = await upload.read()
        return _json(200, {"data": [state.add_attachment(module, record_id, upload.filename or "file", content)]})
    state.module(module)
    found = [a for a in state.attachments.values() if a["parent_id"] == record_id and a["module"] == module]
    if not found:
        return _json(204, None)
    return _json(200, {"data": [state.attachment_out(a) for a in sorted(found, key=lambda a: a["id"])],
                       "info": {"per_page": 200, "count": len(found), "page": 1, "more_records": False}})


@_handler
async def attachment(request: Request, state: ZohoState) -> Response:
    module, record_id, attachment_id = (request.path_params[k] for k in ("module", "record_id", "id"))
    found = state.attachment(module, record_id, attachment_id)
    if request.method == "DELETE":
        with state.lock:
            state.attachments.pop(attachment_id, None)
        return _json(200, {"data": [{"code": "SUCCESS", "details": {"id": attachment_id},
                                     "message": "record deleted", "status": "success"}]})
    return Response(found["content"], media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{found["File_Name"]}"'})


@_handler
async def upload(request: Request, state: ZohoState) -> Response:
    if request.headers.get("feature") != "bulk-write" or request.headers.get("X-CRM-ORG") != state.org["zgid"]:
        return _json(400, {"code": "INVALID_REQUEST", "message": "invalid request", "status": "error",
                           "details": {}, "x-error": "check if headers [feature, X-CRM-ORG] are present and valid"})
    form = await request.form()
    file = form.get("file")
    if file is None or not hasattr(file, "read"):
        raise ZohoError("MANDATORY_NOT_FOUND", "required field not found", details={"api_name": "file"})
    return _json(200, state.upload(await file.read()))


@_handler
async def bulk_write(request: Request, state: ZohoState) -> Response:
    return _json(201, state.create_bulk_job(await _body(request), str(request.base_url).rstrip("/")))


@_handler
async def bulk_job(request: Request, state: ZohoState) -> Response:
    return _json(200, state.bulk_job(request.path_params["job_id"]))


@_handler
async def bulk_result(request: Request, state: ZohoState) -> Response:
    job = state.bulk_jobs.get(request.path_params["job_id"])
    if job is None or job.get("result") is None:
        raise ZohoError("RESOURCE_NOT_FOUND", "The requested resource doesn't exist.", 404)
    return Response(job["result"], media_type="application/zip")


@_handler
async def credit_settings(request: Request, state: ZohoState) -> Response:
    """The org's credit meter as its admin sees it (Setup > Developer Space > APIs > Dashboard): GET
    reads ``{allowance, used, window, refused}``; POST ``{"allowance": n, "window": s}`` starts a fresh
    window of ``n`` credits with nothing used (``null``: unlimited), as at the start of a day."""
    if request.method == "POST":
        body = await _body(request) or {}
        with state.lock:
            state.meter = CreditMeter(body.get("allowance"), float(body.get("window") or state.meter.window))
    meter = state.meter
    return _json(200, {"allowance": meter.allowance, "used": meter.used(), "window": meter.window,
                       "refused": meter.refused})


class _Gate:
    """Auth, API credits, concurrency and (optionally) exchange recording around the routes."""

    def __init__(self, app: Starlette):
        self.app = app
        self.state = app.state  # instrument() hangs its control object here too
        self.zoho: ZohoState = app.state.zoho

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(("/oauth/", CONTROL)):
            return await self.app(scope, receive, send)
        state = self.zoho
        request = Request(scope, receive)
        chunks: list[bytes] = []

        async def replay():
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        exchange = {"method": scope["method"], "path": scope["path"],
                    "query": scope.get("query_string", b"").decode(),
                    "request_type": request.headers.get("content-type", ""), "request": b"".join(chunks)}
        status_box: dict[str, Any] = {"body": []}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                status_box["type"] = dict(message.get("headers") or []).get(b"content-type", b"").decode()
            elif message["type"] == "http.response.body":
                status_box["body"].append(message.get("body", b""))
            await send(message)

        try:
            state.check_auth(request.headers.get("authorization"))
            cost = call_cost(scope["method"], scope["path"], **_cost_hints(exchange))
            if not state.meter.charge(cost):
                raise ZohoError("TOO_MANY_REQUESTS", "Number of API requests for the 24 hour period is "
                                "exceeded or the concurrency limit of the user for the app is exceeded", 429,
                                {"limit": state.meter.allowance, "window": int(state.meter.window)})
            with state.lock:
                if state.in_flight >= state.concurrency:
                    state.concurrency_refused += 1
                    raise ZohoError("TOO_MANY_REQUESTS", "concurrency limit of the user for the app is exceeded",
                                    429, {"limit": state.concurrency})
                state.in_flight += 1
        except ZohoError as exc:
            response = _json(exc.status, exc.body())
            await response(scope, replay, recording_send)
            self._record(exchange, status_box)
            return
        try:
            headers_extra = _credit_headers(state)

            async def send_with_credits(message):
                if message["type"] == "http.response.start" and headers_extra:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      *[(k.encode(), v.encode()) for k, v in headers_extra.items()]]}
                await recording_send(message)

            await self.app(scope, replay, send_with_credits)
        finally:
            with state.lock:
                state.in_flight -= 1
            self._record(exchange, status_box)

    def _record(self, exchange: dict[str, Any], box: dict[str, Any]) -> None:
        if self.zoho.record_exchanges:
            exchange.update(status=box.get("status"), response_type=box.get("type", ""),
                            response=b"".join(box["body"]))
            self.zoho.exchanges.append(exchange)


def _cost_hints(exchange: dict[str, Any]) -> dict[str, Any]:
    """Record counts (writes) and LIMIT (COQL) decide what a call costs."""
    if exchange["method"] not in ("POST", "PUT") or not exchange["request_type"].startswith("application/json"):
        return {}
    try:
        body = json.loads(exchange["request"] or b"null")
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    if isinstance(body.get("data"), list):
        return {"records": len(body["data"])}
    if isinstance(body.get("select_query"), str):
        try:
            return {"coql_limit": coql.parse(body["select_query"]).limit}
        except ZohoError:
            return {}
    return {}


def _credit_headers(state: ZohoState) -> dict[str, str]:
    """``X-API-CREDITS-REMAINING`` appears once half the allowance is used (fact sheet §2.8)."""
    remaining = state.meter.remaining()
    if remaining is None or state.meter.allowance is None or remaining > state.meter.allowance / 2:
        return {}
    return {"X-API-CREDITS-REMAINING": str(remaining)}


def create_app(api_key: str | None = None, rate_limit: int | None = None, *, window: float = 60.0,
               **state_options: Any):
    """A Zoho org emulator. ``api_key`` (if given) becomes the refresh token clients must present.

    ``state_options`` go to :class:`ZohoState`: ``edition``, ``users`` (``[{email, first_name,
    last_name, status}]``), ``credits`` and ``credit_window`` (seconds), ``concurrency``,
    ``max_custom_fields``, ``token_ttl``, ``bulk_delay``, ``client``, ``record_exchanges``.
    """
    if api_key is not None:
        client = dict(state_options.pop("client", None) or DEFAULT_CLIENT)
        client["refresh_token"] = api_key
        state_options["client"] = client
    state = ZohoState(**state_options)
    routes = [
        Route("/oauth/v2/token", token, methods=["POST"]),
        Route(f"{CONTROL}/credits", credit_settings, methods=["GET", "POST"]),
        Route("/crm/v8/org", org, methods=["GET"]),
        Route("/crm/v8/users", users, methods=["GET"]),
        Route("/crm/v8/coql", coql_query, methods=["POST"]),
        Route("/crm/v8/upload", upload, methods=["POST"]),
        Route("/crm/v8/settings/modules", modules, methods=["GET", "POST"]),
        Route("/crm/v8/settings/modules/{api_name}", module_detail, methods=["GET"]),
        Route("/crm/v8/settings/fields", fields, methods=["GET", "POST", "PATCH"]),
        Route("/crm/v8/settings/profiles", profiles, methods=["GET"]),
        Route("/crm/bulk/v8/write", bulk_write, methods=["POST"]),
        Route("/crm/bulk/v8/write/{job_id}", bulk_job, methods=["GET"]),
        Route("/crm/bulk/v8/write/{job_id}/result", bulk_result, methods=["GET"]),
        Route("/crm/v8/{module}/upsert", upsert, methods=["POST"]),
        Route("/crm/v8/{module}/{record_id}/Attachments", attachments, methods=["GET", "POST"]),
        Route("/crm/v8/{module}/{record_id}/Attachments/{id}", attachment, methods=["GET", "DELETE"]),
        Route("/crm/v8/{module}/{id}", record, methods=["GET", "DELETE"]),
        Route("/crm/v8/{module}", records, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    inner = Starlette(routes=routes)
    inner.state.zoho = state
    # instrument() logs, throttles and injects faults; inside it the gate authenticates and meters credits.
    return instrument(_Gate(inner), rate_limit=rate_limit, window=window)


__all__ = ["ZohoState", "create_app"]
