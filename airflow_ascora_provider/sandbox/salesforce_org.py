"""The state of one emulated Salesforce org: records, rules, queries, custom fields and limits.

The HTTP layer (``sandbox/salesforce.py``) and the Bulk API 2.0 jobs (``sandbox/salesforce_bulk.py``)
both write through :class:`Org`, so a record loaded by a bulk job is checked exactly like one sent to
``/sobjects``. Errors are :class:`SfError` (one record refused, with Salesforce's ``statusCode``) or
:class:`RequestError` (the whole request refused: unknown field, bad JSON type, malformed query).

Behaviour worth knowing (each is what Salesforce does, or the stricter choice where the docs are
silent, marked ``[K]``):

* A custom field created through the Tooling API is invisible to the integration user (not in
  describe; ``INVALID_FIELD`` on writes and queries) until a ``FieldPermissions`` row grants Read on a
  permission set assigned to that user.
* Audit fields are accepted on insert only, with the org permission, on the objects that allow them;
  on update or upsert they are refused with ``INVALID_FIELD_FOR_INSERT_UPDATE``.
* Deleted records go to the recycle bin: gone from queries (``queryAll`` still sees them) and they
  no longer hold unique values. Deleting an Account deletes its Contacts, Opportunities, Assets and
  activities; other lookups to a deleted record are cleared.
* Every REST call counts against the daily API limit; past it the answer is ``403
  REQUEST_LIMIT_EXCEEDED`` and nothing is processed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import itertools
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

from airflow_ascora_provider.sandbox import salesforce_soql as soql
from airflow_ascora_provider.sandbox.salesforce_schema import (
    SfField,
    SfObject,
    custom_object,
    standard_objects,
)

DEFAULT_SESSION_ID = "00D5g000004AsCo!AQ8AQsandbox.session.token"
ORG_ID = "00D5g000004AsCoEAK"
MAX_BASE64_CHARS = 37_500_000  # JSON (non-multipart) blob limit: 37.5 MB of base64 per record
MASTER_RECORD_TYPE = "012000000000000AAA"
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_FIELD_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|_(?!_))*(?<!_)__c$")
# An installed managed package's objects carry its namespace: SBQQ__Quote__c (Salesforce CPQ).
_OBJECT_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9]{0,14}__)?[A-Za-z](?:[A-Za-z0-9]|_(?!_))*(?<!_)__c$")
CASCADE = {"Account": ("Contact", "Opportunity", "Asset", "Order"), "Opportunity": ("OpportunityLineItem",)}
ACTIVITY_PARENTS = ("WhatId", "WhoId")
FILE_TYPES = {"pdf": "PDF", "png": "PNG", "jpg": "JPG", "jpeg": "JPG", "gif": "GIF", "txt": "TEXT",
              "doc": "WORD", "docx": "WORD_X", "xls": "EXCEL", "xlsx": "EXCEL_X", "csv": "CSV"}


class SfError(Exception):
    """One record refused. ``code`` is Salesforce's status code (``REQUIRED_FIELD_MISSING`` …)."""

    def __init__(self, code: str, message: str, fields: list[str] | tuple[str, ...] = (), status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.status = status

    def as_rest(self) -> list[dict[str, Any]]:
        """The REST error body: an array of ``{message, errorCode, fields}``."""
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]

    def as_record(self) -> dict[str, Any]:
        """A per-record error inside sObject Collections (``statusCode``, not ``errorCode``)."""
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


class RequestError(SfError):
    """The whole request is refused (nothing in it was processed)."""


def checksum_suffix(id15: str) -> str:
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, c in enumerate(id15[chunk * 5:chunk * 5 + 5]) if "A" <= c <= "Z")
        suffix += _CHECKSUM_CHARS[bits]
    return suffix


def to_18(record_id: str) -> str:
    return record_id if len(record_id) == 18 else record_id + checksum_suffix(record_id)


def now_iso() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


def format_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def parse_datetime(value: str) -> dt.datetime:
    text = value.strip()
    if re.fullmatch(r".*[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


@dataclass
class ToolingField:
    id: str
    object: str  # the sObject the field lives on (Task for Activity fields)
    table: str  # TableEnumOrId as Salesforce reports it (Activity, Account, or a custom object's name)
    name: str
    metadata: dict[str, Any]

    @property
    def full_name(self) -> str:
        return f"{self.table}.{self.name}"

    def row(self) -> dict[str, Any]:
        return {"Id": self.id, "DeveloperName": self.name[:-3], "TableEnumOrId": self.table,
                "NamespacePrefix": None, "FullName": self.full_name}


class Org:
    """One org. Every public method takes the lock: handlers run on uvicorn's loop, tests read from theirs."""

    def __init__(self, *, session_id: str = DEFAULT_SESSION_ID, users: list[dict] | None = None,
                 audit_fields: bool = True, orders: bool = True, daily_api_limit: int = 100_000,
                 daily_bulk_batches: int = 15_000, page_size: int = 2000, version: str = "62.0"):
        self.lock = threading.RLock()
        self.session_id = session_id
        self.audit_fields = audit_fields
        self.version = version
        self.page_size = page_size
        self.api_max = daily_api_limit
        self.api_used = 0
        self.bulk_batches_max = daily_bulk_batches
        self.bulk_batches_used = 0
        self.objects: dict[str, SfObject] = standard_objects(orders=orders)
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self.where: dict[str, str] = {}  # record id -> object name
        self.blobs: dict[str, bytes] = {}  # ContentVersion id -> bytes
        self.tooling: dict[str, ToolingField] = {}
        self.cursors: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._counter = itertools.count(1)
        self._prefixes = itertools.count(1)
        self.user_id = self._seed("User", {"Username": "integration@ascora-migration.example",
                                           "Email": "integration@ascora-migration.example",
                                           "FirstName": "Integration", "LastName": "User", "Alias": "integ",
                                           "IsActive": True, "UserType": "Standard"})
        for user in users or ():
            self._seed("User", {"Username": user.get("username") or user["email"], "Email": user["email"],
                                "FirstName": user.get("firstName"), "LastName": user.get("lastName") or "User",
                                "Alias": (user.get("lastName") or "user")[:8],
                                "IsActive": user.get("active", True), "UserType": "Standard"})
        standard_book = self._seed("Pricebook2", {"Name": "Standard Price Book", "IsActive": True,
                                                  "IsStandard": True})
        product = self._seed("Product2", {"Name": "Ascora line item", "ProductCode": "ASCORA-LINE", "IsActive": True})
        self._seed("PricebookEntry", {"Pricebook2Id": standard_book, "Product2Id": product, "UnitPrice": 0.0,
                                      "IsActive": True, "UseStandardPrice": False})

    # -- ids, limits ----------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        number, digits = next(self._counter), ""
        while number or len(digits) < 7:
            number, rest = divmod(number, 62)
            digits = _BASE62[rest] + digits
        id15 = prefix + "5g" + "00" + digits[-8:].rjust(8, "0")
        return id15 + checksum_suffix(id15)

    def _seed(self, obj: str, values: dict[str, Any]) -> str:
        record_id = self.new_id(self.objects[obj].key_prefix)
        record = self._blank(self.objects[obj], record_id)
        record.update(values)
        if obj == "User":
            record["Name"] = " ".join(p for p in (values.get("FirstName"), values.get("LastName")) if p)
        self.records[obj][record_id] = record
        self.where[record_id] = obj
        return record_id

    def count_call(self) -> None:
        """One API request; refused (403) once the daily limit is used up, before any work is done."""
        with self.lock:
            if self.api_used >= self.api_max:
                raise SfError("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", status=403)
            self.api_used += 1

    def limit_info(self) -> str:
        return f"api-usage={self.api_used}/{self.api_max}"

    def limits(self) -> dict[str, Any]:
        def pair(max_, used):
            return {"Max": max_, "Remaining": max(0, max_ - used)}

        return {"DailyApiRequests": pair(self.api_max, self.api_used),
                "DailyBulkApiBatches": pair(self.bulk_batches_max, self.bulk_batches_used),
                "DailyBulkV2QueryJobs": pair(10_000, 0), "DailyBulkV2QueryFileStorageMB": pair(1_000_000, 0),
                "DataStorageMB": pair(5120, 0), "FileStorageMB": pair(20_480, sum(len(b) for b in self.blobs.values())
                                                                       // 1_000_000)}

    # -- metadata ---------------------------------------------------------------------------------
    def sobject(self, name: str) -> SfObject:
        obj = self.objects.get(name) or next((o for n, o in self.objects.items() if n.lower() == name.lower()), None)
        if obj is None:
            raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
        return obj

    def describe_global(self) -> dict[str, Any]:
        with self.lock:
            return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
                {k: v for k, v in self._object_info(o).items() if k not in ("fields", "recordTypeInfos")}
                for o in self.objects.values()]}

    def _object_info(self, obj: SfObject) -> dict[str, Any]:
        base = f"/services/data/v{self.version}/sobjects/{obj.name}"
        return {"name": obj.name, "label": obj.label, "labelPlural": obj.label_plural, "keyPrefix": obj.key_prefix,
                "custom": obj.custom, "createable": obj.createable, "updateable": True, "deletable": obj.deletable,
                "queryable": True, "searchable": not obj.setup, "retrieveable": True, "layoutable": not obj.setup,
                "activateable": False, "customSetting": False, "feedEnabled": False, "mergeable": False,
                "mruEnabled": not obj.setup, "replicateable": True, "triggerable": True, "undeletable": obj.deletable,
                "hasSubtypes": False, "isSubtype": False, "supportedScopes": [],
                "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}}

    def describe(self, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.sobject(name)
            info = self._object_info(obj)
            info["fields"] = [f.describe(self.audit_fields, obj.audit) for f in obj.fields.values() if f.visible]
            info["childRelationships"] = []
            types = [r for r in self.records["RecordType"].values() if r["SobjectType"] == obj.name and not r["IsDeleted"]]
            info["recordTypeInfos"] = [
                {"name": r["Name"], "developerName": r["DeveloperName"], "recordTypeId": r["Id"],
                 "active": r["IsActive"], "available": r["IsActive"], "defaultRecordTypeMapping": False,
                 "master": False, "urls": {}} for r in types] + [
                {"name": "Master", "developerName": "Master", "recordTypeId": MASTER_RECORD_TYPE, "active": True,
                 "available": True, "defaultRecordTypeMapping": not types, "master": True, "urls": {}}]
            return info

    # -- writes -----------------------------------------------------------------------------------
    def _blank(self, obj: SfObject, record_id: str) -> dict[str, Any]:
        stamp = now_iso()
        record: dict[str, Any] = {}
        for f in obj.fields.values():
            if f.compound_of or f.type == "base64":
                continue
            record[f.name] = False if f.type == "boolean" else f.default
        record.update({"Id": record_id, "IsDeleted": False})
        for name, value in (("CreatedDate", stamp), ("LastModifiedDate", stamp), ("SystemModstamp", stamp),
                            ("CreatedById", getattr(self, "user_id", None)),
                            ("LastModifiedById", getattr(self, "user_id", None))):
            if name in obj.fields:
                record[name] = value
        if "OwnerId" in obj.fields:
            record["OwnerId"] = getattr(self, "user_id", None)
        return record

    def resolve_fields(self, obj: SfObject, body: dict[str, Any]) -> dict[str, Any]:
        """Canonical field names; an unknown (or invisible) field refuses the whole request."""
        out = {}
        for key, value in body.items():
            if key == "attributes":
                continue
            f = obj.field(key)
            if f is None or not f.visible:
                raise RequestError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}", [key])
            out[f.name] = value
        return out

    def precheck(self, obj_name: str, body: dict[str, Any]) -> str:
        """The request-level checks of one record (unknown fields, wrong JSON types); returns the object name.

        sObject Collections refuse the whole request for these, before any record is written.
        """
        with self.lock:
            obj = self.sobject(obj_name)
            for name, value in self.resolve_fields(obj, body).items():
                try:
                    self._coerce(obj, obj.fields[name], value)
                except RequestError:
                    raise
                except SfError:
                    pass  # a record-level problem: reported for that record when it is written
            return obj.name

    def _coerce(self, obj: SfObject, f: SfField, value: Any) -> Any:
        """JSON value → stored value. A wrong JSON type refuses the request, like Salesforce's parser."""
        if value is None:
            return False if f.type == "boolean" else None

        def wrong() -> RequestError:
            return RequestError("JSON_PARSER_ERROR", f"Cannot deserialize instance of {f.type} from value "
                                f"{value!r} (field {f.name})", [f.name])

        kind = f.type
        if kind == "boolean":
            if not isinstance(value, bool):
                raise wrong()
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise wrong()
            return int(value)
        if kind in ("double", "currency", "percent"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise wrong()
            return round(float(value), f.scale) if f.scale else float(value)
        if kind == "date":
            if not isinstance(value, str):
                raise wrong()
            try:
                return dt.date.fromisoformat(value[:10]).isoformat()
            except ValueError:
                raise wrong() from None
        if kind == "datetime":
            if not isinstance(value, str):
                raise wrong()
            try:
                return format_datetime(parse_datetime(value))
            except ValueError:
                raise wrong() from None
        if kind == "base64":
            if not isinstance(value, str):
                raise wrong()
            return value
        if not isinstance(value, str):
            raise wrong()
        if kind == "reference":
            if not _ID.match(value):
                raise SfError("MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", [f.name])
            return to_18(value)
        if f.length and len(value) > f.length:
            raise SfError("STRING_TOO_LONG", f"{f.label}: data value too large: {value[:40]}... "
                          f"(max length={f.length})", [f.name])
        if kind == "email" and value and not _EMAIL.match(value):
            raise SfError("INVALID_EMAIL_ADDRESS", f"{f.label}: invalid email address: {value}", [f.name])
        if kind == "picklist" and f.restricted and value not in f.picklist:
            raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                          f"{f.label}: bad value for restricted picklist field: {value}", [f.name])
        if kind == "multipicklist" and f.restricted:
            bad = [v for v in value.split(";") if v and v not in f.picklist]
            if bad:
                raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{f.label}: bad value for restricted picklist field: {bad[0]}", [f.name])
        return value

    def _check_reference(self, obj: SfObject, f: SfField, value: str) -> None:
        target = self.where.get(value)
        allowed = set(f.reference_to)
        if f.name in ("WhatId", "FirstPublishLocationId", "LinkedEntityId"):
            allowed |= {o.name for o in self.objects.values() if o.custom}
        if target is None or self.records[target][value]["IsDeleted"]:
            raise SfError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", [f.name])
        if target not in allowed:
            raise SfError("FIELD_INTEGRITY_EXCEPTION", f"{f.label}: id value of incorrect type: {value}", [f.name])
        record = self.records[target][value]
        if f.name == "OwnerId" and not record.get("IsActive", True):
            raise SfError("INACTIVE_OWNER_OR_USER", f"operation performed with inactive user [{value}] as owner "
                          f"of {obj.name.lower()}", [f.name])
        if target == "RecordType" and (not record["IsActive"] or record["SobjectType"] != obj.name):
            raise SfError("INVALID_CROSS_REFERENCE_KEY", f"Record Type ID: this ID value isn't valid for the "
                          f"user: {value}", [f.name])

    def _prepare(self, obj: SfObject, body: dict[str, Any], *, mode: str,
                 current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check one record's values for ``mode`` (insert | upsert | update); return what to store."""
        values = self.resolve_fields(obj, body)
        denied = []
        for name in values:
            f = obj.fields[name]
            if f.audit:
                if not (mode == "insert" and self.audit_fields and obj.audit):
                    denied.append(name)
            elif (mode == "update" and not f.updateable) or (mode != "update" and not f.createable):
                denied.append(name)
        if denied:
            raise SfError("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {', '.join(denied)}. "
                          "Please check the security settings of this field and verify that it is read/write for "
                          "your profile or permission set.", denied)
        stored = {name: self._coerce(obj, obj.fields[name], value) for name, value in values.items()}
        for name, value in stored.items():
            f = obj.fields[name]
            if f.type == "reference" and value is not None:  # a set CreatedById must be a real User
                self._check_reference(obj, f, value)
        merged = {**(current or {}), **stored}
        missing = [f.name for f in obj.fields.values() if f.visible and (
            (current is None and f.required_on_create and merged.get(f.name) in (None, ""))
            or (current is not None and f.name in stored and not f.nillable and f.type != "boolean"
                and stored[f.name] in (None, "")))]
        if missing:
            raise SfError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        self._check_unique(obj, merged, current["Id"] if current else None)
        self._object_rules(obj, merged, stored, mode, current)
        return stored

    def _check_unique(self, obj: SfObject, merged: dict[str, Any], own_id: str | None) -> None:
        for f in obj.fields.values():
            if not f.unique or merged.get(f.name) in (None, ""):
                continue
            value = merged[f.name]
            key = value if f.case_sensitive else str(value).lower()
            for other in self.records[obj.name].values():
                if other["Id"] == own_id or other["IsDeleted"] or other.get(f.name) is None:
                    continue
                theirs = other[f.name] if f.case_sensitive else str(other[f.name]).lower()
                if theirs == key:
                    raise SfError("DUPLICATE_VALUE", f"duplicate value found: {f.name} duplicates value on record "
                                  f"with id: {other['Id']}", [])

    def _object_rules(self, obj: SfObject, merged: dict[str, Any], stored: dict[str, Any], mode: str,
                      current: dict[str, Any] | None) -> None:
        name = obj.name
        if name == "Asset" and not merged.get("AccountId") and not merged.get("ContactId"):
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "Every asset needs an account, a contact, or both.",
                          ["AccountId", "ContactId"])
        if name == "Order" and current is None and merged.get("Status") != "Draft":
            # [K] the exact message is not documented; an order must start as a draft.
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "You can't create an activated order; insert it as Draft",
                          ["Status"])
        if name == "Order" and current is not None and stored.get("Status") == "Activated":
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "You can't activate an order that has no products", ["Status"])
        if name == "Task" and merged.get("WhoId") and self.where.get(merged["WhoId"]) not in ("Contact", "Lead"):
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "Name ID: id value of incorrect type", ["WhoId"])
        if name == "OpportunityLineItem":
            if merged.get("UnitPrice") is not None and merged.get("TotalPrice") is not None and (
                    "UnitPrice" in stored and "TotalPrice" in stored):
                raise SfError("FIELD_INTEGRITY_EXCEPTION", "field integrity exception: TotalPrice (Total Price and "
                              "Unit Price can't both be specified)", ["TotalPrice"])
            if merged.get("UnitPrice") is None and merged.get("TotalPrice") is None:
                raise SfError("FIELD_INTEGRITY_EXCEPTION", "field integrity exception: UnitPrice (either Unit Price "
                              "or Total Price must be specified)", ["UnitPrice"])
            if current is None:
                entry = self.records["PricebookEntry"][merged["PricebookEntryId"]]
                opp = self.records["Opportunity"][merged["OpportunityId"]]
                if not entry["IsActive"]:
                    raise SfError("FIELD_INTEGRITY_EXCEPTION", "field integrity exception: PricebookEntryId "
                                  "(inactive price book entry)", ["PricebookEntryId"])
                if opp.get("Pricebook2Id") not in (None, entry["Pricebook2Id"]):
                    raise SfError("FIELD_INTEGRITY_EXCEPTION", "field integrity exception: PricebookEntryId (pricebook "
                                  "entry is in a different pricebook than the one assigned to the opportunity)",
                                  ["PricebookEntryId"])
        if name == "ContentVersion" and current is None:
            data = merged.get("VersionData")
            if len(data) > MAX_BASE64_CHARS:
                # [K] code unconfirmed; the documented cap for a JSON (non-multipart) blob is 37.5 MB base64.
                raise SfError("STRING_TOO_LONG", f"Version Data: data value too large (max {MAX_BASE64_CHARS} "
                              "base64 characters in a JSON request)", ["VersionData"])
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError("JSON_PARSER_ERROR", "VersionData is not valid base64", ["VersionData"]) from None
            if merged.get("ContentDocumentId") and merged.get("FirstPublishLocationId"):
                raise SfError("FIELD_INTEGRITY_EXCEPTION", "A new version of a document cannot set "
                              "FirstPublishLocationId", ["FirstPublishLocationId"])
        if name == "FieldPermissions":
            self._check_field_permission(merged, current)
        if name == "PermissionSetAssignment" and current is None:
            for other in self.records[name].values():
                if (other["AssigneeId"], other["PermissionSetId"]) == (merged["AssigneeId"], merged["PermissionSetId"]):
                    raise SfError("DUPLICATE_VALUE", "Duplicate PermissionSetAssignment", [])

    def _check_field_permission(self, merged: dict[str, Any], current: dict[str, Any] | None) -> None:
        sobject, _, field_name = str(merged.get("Field") or "").partition(".")
        if sobject != merged.get("SobjectType"):
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "Field must be prefixed with its SobjectType", ["Field"])
        target = self.objects.get(sobject)
        f = target.field(field_name) if target else None
        if f is None or not f.custom:
            raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                          f"Field Name: bad value for restricted picklist field: {merged.get('Field')}", ["Field"])
        if merged.get("PermissionsEdit") and not merged.get("PermissionsRead"):
            raise SfError("FIELD_INTEGRITY_EXCEPTION", "Permission Read is required when Edit is granted",
                          ["PermissionsRead"])
        if current is None:
            for other in self.records["FieldPermissions"].values():
                if not other["IsDeleted"] and (other["ParentId"], other["Field"]) == (merged["ParentId"], merged["Field"]):
                    raise SfError("DUPLICATE_VALUE", f"duplicate value found: Field duplicates value on record "
                                  f"with id: {other['Id']}", [])

    def insert(self, obj_name: str, body: dict[str, Any], *, mode: str = "insert") -> str:
        with self.lock:
            obj = self.sobject(obj_name)
            if not obj.createable:
                raise SfError("INVALID_TYPE_FOR_OPERATION", f"entity type {obj.name} does not support create",
                              status=400)
            stored = self._prepare(obj, body, mode=mode)
            record_id = self.new_id(obj.key_prefix)
            record = self._blank(obj, record_id)
            if obj.name == "ContentVersion":
                self._store_version(record, stored)
            else:
                record.update(stored)
            self._derive(obj, record)
            self.records[obj.name][record_id] = record
            self.where[record_id] = obj.name
            self._after_write(obj, record, created=True)
            return record_id

    def update(self, obj_name: str, record_id: str, body: dict[str, Any]) -> None:
        with self.lock:
            obj = self.sobject(obj_name)
            record = self._live(obj, record_id)
            stored = self._prepare(obj, body, mode="update", current=record)
            record.update(stored)
            record["LastModifiedDate"] = record["SystemModstamp"] = now_iso()
            if "LastModifiedById" in record:
                record["LastModifiedById"] = self.user_id
            self._derive(obj, record)
            self._after_write(obj, record, created=False)

    def upsert(self, obj_name: str, ext_field: str, value: str, body: dict[str, Any]) -> tuple[str, bool]:
        """Match on an external id (or Id): create when nothing matches, update one match, 300 for several."""
        with self.lock:
            obj = self.sobject(obj_name)
            f = obj.field(ext_field)
            if f is None or not f.visible or not (f.external_id or f.type == "id"):
                raise SfError("NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                              f"{ext_field}", status=404)
            body = {k: v for k, v in body.items() if k != "attributes"}
            given = next((v for k, v in body.items() if k.lower() == f.name.lower()), None)
            if given is not None and str(given) != str(value):
                raise SfError("INVALID_FIELD", f"The value of the external ID field in the body ({given}) does not "
                              f"match the URL ({value})", [f.name])
            found = self.find_by(obj, f, value)
            if len(found) > 1:
                raise SfError("MULTIPLE_RECORDS", f"{len(found)} records match {f.name} = {value}", status=300)
            if found:
                self.update(obj.name, found[0], {k: v for k, v in body.items() if k.lower() != f.name.lower()})
                return found[0], False
            if f.type == "id":
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            return self.insert(obj.name, {**body, f.name: value}, mode="upsert"), True

    def find_by(self, obj: SfObject, f: SfField, value: str) -> list[str]:
        if f.type == "id":
            record = self.records[obj.name].get(to_18(value)) if _ID.match(value) else None
            return [record["Id"]] if record and not record["IsDeleted"] else []
        key = value if f.case_sensitive else value.lower()
        return [r["Id"] for r in self.records[obj.name].values() if not r["IsDeleted"] and r.get(f.name) is not None
                and (r[f.name] if f.case_sensitive else str(r[f.name]).lower()) == key]

    def _live(self, obj: SfObject, record_id: str) -> dict[str, Any]:
        if not _ID.match(record_id or ""):
            raise SfError("MALFORMED_ID", f"{obj.label} ID: id value of incorrect type: {record_id}", ["Id"])
        record = self.records[obj.name].get(to_18(record_id))
        if record is None:
            raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
        if record["IsDeleted"]:
            raise SfError("ENTITY_IS_DELETED", "entity is deleted", status=404)
        return record

    def _store_version(self, record: dict[str, Any], stored: dict[str, Any]) -> None:
        data = base64.b64decode(stored.pop("VersionData"))
        record.update(stored)
        path = record["PathOnClient"]
        extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
        record.update({"ContentSize": len(data), "Checksum": hashlib.md5(data).hexdigest(),  # noqa: S324 (Salesforce's own)
                       "FileExtension": extension or None, "FileType": FILE_TYPES.get(extension, "UNKNOWN"),
                       "IsLatest": True, "Title": record.get("Title") or (path.rsplit(".", 1)[0] if extension else path)})
        self.blobs[record["Id"]] = data
        document_id = record.get("ContentDocumentId")
        if document_id:
            versions = [v for v in self.records["ContentVersion"].values() if v["ContentDocumentId"] == document_id]
            for version in versions:
                version["IsLatest"] = False
            record["VersionNumber"] = str(len(versions) + 1)
        else:
            document_id = self.new_id(self.objects["ContentDocument"].key_prefix)
            document = self._blank(self.objects["ContentDocument"], document_id)
            self.records["ContentDocument"][document_id] = document
            self.where[document_id] = "ContentDocument"
            record["ContentDocumentId"] = document_id
            record["VersionNumber"] = "1"
            if record.get("FirstPublishLocationId"):
                link_id = self.new_id(self.objects["ContentDocumentLink"].key_prefix)
                self.records["ContentDocumentLink"][link_id] = {
                    "Id": link_id, "IsDeleted": False, "SystemModstamp": now_iso(), "ContentDocumentId": document_id,
                    "LinkedEntityId": record["FirstPublishLocationId"], "ShareType": "V", "Visibility": "AllUsers"}
                self.where[link_id] = "ContentDocumentLink"
        document = self.records["ContentDocument"][document_id]
        document.update({"Title": record["Title"], "LatestPublishedVersionId": record["Id"],
                         "FileType": record["FileType"], "ContentSize": record["ContentSize"],
                         "CreatedDate": document.get("CreatedDate") if record["VersionNumber"] != "1"
                         else record["CreatedDate"]})

    def _derive(self, obj: SfObject, record: dict[str, Any]) -> None:
        if "FirstName" in obj.fields and "Name" in obj.fields and obj.name != "Account":
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        if obj.name == "Opportunity":
            record["IsClosed"] = record.get("StageName") in ("Closed Won", "Closed Lost")
            record["IsWon"] = record.get("StageName") == "Closed Won"
        if obj.name == "Task":
            record["IsClosed"] = record.get("Status") == "Completed"
        if obj.name == "OpportunityLineItem":
            entry = self.records["PricebookEntry"][record["PricebookEntryId"]]
            product = self.records["Product2"][entry["Product2Id"]]
            record["Product2Id"] = product["Id"]
            opp = self.records["Opportunity"][record["OpportunityId"]]
            record["Name"] = f"{opp['Name']} {product['Name']}"[:376]
            quantity = record.get("Quantity") or 0
            if record.get("UnitPrice") is not None:
                record["TotalPrice"] = round(record["UnitPrice"] * quantity, 2)
            elif quantity:
                record["UnitPrice"] = round(record["TotalPrice"] / quantity, 2)
            opp["Pricebook2Id"] = opp.get("Pricebook2Id") or entry["Pricebook2Id"]
        if obj.name == "Order" and record.get("OrderNumber") is None:
            record["OrderNumber"] = f"{len(self.records['Order']) + 100:08d}"

    def _after_write(self, obj: SfObject, record: dict[str, Any], *, created: bool) -> None:
        if obj.name in ("FieldPermissions", "PermissionSetAssignment"):
            self.refresh_field_security()

    def delete(self, record_id: str) -> None:
        with self.lock:
            if not _ID.match(record_id or ""):
                raise SfError("MALFORMED_ID", f"malformed id {record_id}", status=400)
            record_id = to_18(record_id)
            obj_name = self.where.get(record_id)
            if obj_name is None:
                raise SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", status=404)
            obj = self.objects[obj_name]
            record = self.records[obj_name][record_id]
            if record["IsDeleted"]:
                raise SfError("ENTITY_IS_DELETED", "entity is deleted", status=404)
            if not obj.deletable:
                raise SfError("DELETE_FAILED", f"{obj.name} records cannot be deleted"
                              + ("; delete the ContentDocument instead" if obj.name == "ContentVersion" else ""))
            self._remove(obj_name, record_id)
            if obj_name in ("FieldPermissions", "PermissionSetAssignment"):
                self.refresh_field_security()

    def _remove(self, obj_name: str, record_id: str) -> None:
        record = self.records[obj_name][record_id]
        if record["IsDeleted"]:
            return
        record["IsDeleted"] = True
        if obj_name == "ContentDocumentLink":
            del self.records[obj_name][record_id]  # links are not recycled
            return
        if obj_name == "ContentDocument":
            for version in self.records["ContentVersion"].values():
                if version["ContentDocumentId"] == record_id:
                    version["IsDeleted"] = True
        for child_obj in CASCADE.get(obj_name, ()):
            for child in list(self.records.get(child_obj, {}).values()):
                if not child["IsDeleted"] and record_id in (child.get("AccountId"), child.get("OpportunityId")):
                    self._remove(child_obj, child["Id"])
        for task in list(self.records["Task"].values()):
            if not task["IsDeleted"] and record_id in (task.get("WhatId"), task.get("WhoId")):
                self._remove("Task", task["Id"])
        for link in list(self.records["ContentDocumentLink"].values()):
            if record_id in (link["LinkedEntityId"], link["ContentDocumentId"]):
                self._remove("ContentDocumentLink", link["Id"])
        for other_name, other in self.objects.items():  # lookups to the deleted record are cleared
            refs = [f.name for f in other.fields.values() if f.type == "reference" and not f.audit
                    and f.name not in ("OwnerId", "ContentDocumentId")]
            for row in self.records[other_name].values():
                for name in refs:
                    if row.get(name) == record_id and not row["IsDeleted"]:
                        row[name] = None

    # -- reads ------------------------------------------------------------------------------------
    def render(self, obj: SfObject, record: dict[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
        """A record as the REST API returns it (``attributes`` first, compound addresses composed)."""
        out: dict[str, Any] = {"attributes": {"type": obj.name,
                                              "url": f"/services/data/v{self.version}/sobjects/{obj.name}/{record['Id']}"}}
        names = fields or [f.name for f in obj.fields.values() if f.visible]
        for name in names:
            f = obj.field(name)
            if f is None or not f.visible:
                raise RequestError("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'", [name])
            if f.compound_of:
                parts = [record.get(p) for p in f.compound_of]
                out[f.name] = None if not any(p is not None for p in parts) else {
                    "street": parts[0], "city": parts[1], "state": parts[2], "postalCode": parts[3],
                    "country": parts[4], "latitude": parts[5], "longitude": parts[6], "geocodeAccuracy": None}
            elif f.type == "base64":
                out[f.name] = f"/services/data/v{self.version}/sobjects/{obj.name}/{record['Id']}/{f.name}"
            else:
                out[f.name] = record.get(f.name)
        return out

    def get(self, obj_name: str, record_id: str, fields: list[str] | None = None) -> dict[str, Any]:
        with self.lock:
            obj = self.sobject(obj_name)
            return self.render(obj, self._live(obj, record_id), fields)

    def get_by(self, obj_name: str, field_name: str, value: str, fields: list[str] | None = None) -> dict[str, Any]:
        with self.lock:
            obj = self.sobject(obj_name)
            f = obj.field(field_name)
            if f is None or not f.visible or not (f.external_id or f.type == "id"):
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            found = self.find_by(obj, f, value)
            if not found:
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            if len(found) > 1:
                raise SfError("MULTIPLE_RECORDS", f"{len(found)} records match", status=300)
            return self.render(obj, self.records[obj.name][found[0]], fields)

    def blob(self, obj_name: str, record_id: str, field_name: str) -> bytes:
        with self.lock:
            obj = self.sobject(obj_name)
            record = self._live(obj, record_id)
            if obj.name != "ContentVersion" or field_name != "VersionData":
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            return self.blobs[record["Id"]]

    def query(self, text: str, *, include_deleted: bool = False) -> dict[str, Any]:
        with self.lock:
            try:
                parsed = soql.parse(text)
            except soql.SoqlError as exc:
                raise RequestError(exc.code, exc.message) from None
            try:
                obj = self.sobject(parsed.object)
            except SfError:
                raise RequestError("INVALID_TYPE", f"sObject type '{parsed.object}' is not supported.") from None
            for name in [*parsed.fields, *(c.field for c in parsed.where), *filter(None, [parsed.order_by])]:
                f = obj.field(name)
                if f is None or not f.visible:
                    raise RequestError("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'. If you are "
                                       "attempting to use a custom field, be sure to append the '__c' after the "
                                       "custom field name.")
            conditions = [soql.Condition(obj.field(c.field).name, c.op, c.value) for c in parsed.where]
            rows = [r for r in self.records[obj.name].values() if (include_deleted or not r["IsDeleted"])
                    and all(soql.matches(r, c, lambda name, v: self._literal(obj, name, v)) for c in conditions)]
            if parsed.order_by:
                key = obj.field(parsed.order_by).name
                rows.sort(key=lambda r: (r.get(key) is None, r.get(key)), reverse=parsed.descending)
            if parsed.limit is not None:
                rows = rows[:parsed.limit]
            if parsed.count:
                return {"totalSize": len(rows), "done": True, "records": []}
            rendered = [self.render(obj, r, parsed.fields) for r in rows]
            return self._page(rendered, 0, None)

    def _literal(self, obj: SfObject, name: str, value: Any) -> Any:
        f = obj.field(name)
        if f is None or value is None:
            return value
        if f.type in ("id", "reference") and isinstance(value, str) and _ID.match(value):
            return to_18(value)
        if f.type == "datetime" and isinstance(value, str):
            return format_datetime(parse_datetime(value))
        if f.type in ("double", "currency", "percent") and isinstance(value, int):
            return float(value)
        return value

    def _page(self, rows: list[dict[str, Any]], offset: int, cursor: str | None) -> dict[str, Any]:
        page = rows[offset:offset + self.page_size]
        done = offset + self.page_size >= len(rows)
        result: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            cursor = cursor or f"01g5g0000{len(self.cursors):06d}"
            self.cursors[cursor] = ("", rows)
            result["nextRecordsUrl"] = f"/services/data/v{self.version}/query/{cursor}-{offset + self.page_size}"
        return result

    def query_more(self, locator: str) -> dict[str, Any]:
        with self.lock:
            cursor, _, offset = locator.rpartition("-")
            if cursor not in self.cursors or not offset.isdigit():
                raise SfError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
            return self._page(self.cursors[cursor][1], int(offset), cursor)

    # -- field-level security ---------------------------------------------------------------------
    def refresh_field_security(self) -> None:
        """A custom field is visible to the integration user once a permission set assigned to it grants Read."""
        assigned = {a["PermissionSetId"] for a in self.records["PermissionSetAssignment"].values()
                    if a["AssigneeId"] == self.user_id and not a["IsDeleted"]}
        granted = {p["Field"] for p in self.records["FieldPermissions"].values()
                   if not p["IsDeleted"] and p["PermissionsRead"] and p["ParentId"] in assigned}
        for obj in self.objects.values():
            for name, f in list(obj.fields.items()):
                if f.custom and any(t.object == obj.name and t.name == name for t in self.tooling.values()):
                    obj.fields[name] = replace(f, visible=f"{obj.name}.{name}" in granted)

    # -- Tooling API: CustomField -----------------------------------------------------------------
    def create_custom_field(self, payload: dict[str, Any]) -> str:
        with self.lock:
            full_name = str(payload.get("FullName") or "")
            metadata = payload.get("Metadata") or {}
            table, _, name = full_name.partition(".")
            obj_name = "Task" if table == "Activity" else table
            if table in ("Task", "Event"):
                raise RequestError("FIELD_INTEGRITY_EXCEPTION", "Custom fields of tasks and events are created on "
                                   "Activity (FullName 'Activity.<Field>__c')", ["FullName"])
            if obj_name not in self.objects:
                raise RequestError("FIELD_INTEGRITY_EXCEPTION", f"Cannot find object: {table}", ["FullName"])
            obj = self.objects[obj_name]
            if not _FIELD_NAME.match(name) or len(name) > 43:
                raise RequestError("FIELD_INTEGRITY_EXCEPTION", f"The Field Name '{name}' can only contain underscores "
                                   "and alphanumeric characters, must begin with a letter, not end with an underscore "
                                   "or contain two consecutive underscores, be at most 40 characters and end in __c",
                                   ["FullName"])
            if obj.field(name) is not None:
                raise RequestError("DUPLICATE_DEVELOPER_NAME", f"There is already a field named {name[:-3]} on "
                                   f"{obj.name}.", ["FullName"])
            field = self._custom_field(obj, name, metadata)
            obj.fields[name] = field
            tooling_id = self.new_id("00N")
            self.tooling[tooling_id] = ToolingField(tooling_id, obj.name, table, name, copy.deepcopy(metadata))
            for record in self.records[obj.name].values():
                record.setdefault(name, False if field.type == "boolean" else None)
            return tooling_id

    def _custom_field(self, obj: SfObject, name: str, metadata: dict[str, Any]) -> SfField:
        def bad(message: str) -> RequestError:
            return RequestError("FIELD_INTEGRITY_EXCEPTION", f"{obj.name}.{name}: {message}", ["Metadata"])

        label = metadata.get("label")
        if not label:
            raise bad("label is required")
        if len(label) > 40:
            raise bad(f"Field Label: data value too large: {label} (max length=40)")
        kind = metadata.get("type")
        length = metadata.get("length")
        common = {"custom": True, "visible": False, "help_text": metadata.get("inlineHelpText"),
                  "external_id": bool(metadata.get("externalId")), "unique": bool(metadata.get("unique")),
                  "case_sensitive": bool(metadata.get("caseSensitive"))}
        if (common["external_id"] or common["unique"]) and kind not in ("Text", "Number", "Email"):
            raise bad("only Text, Number and Email fields can be External ID or Unique")
        if metadata.get("required"):
            raise bad("the emulator does not create required custom fields (they would need a default on every "
                      "existing record)")
        if kind == "Text":
            if not isinstance(length, int) or not 1 <= length <= 255:
                raise bad("Text fields need a length between 1 and 255")
            return SfField(name, label, "string", length=length, **common)
        if kind in ("LongTextArea", "Html"):
            if not isinstance(length, int) or not 256 <= length <= 131_072 or not metadata.get("visibleLines"):
                raise bad(f"{kind} fields need a length between 256 and 131072 and visibleLines")
            return SfField(name, label, "textarea", length=length, html=kind == "Html", **common)
        if kind == "TextArea":
            return SfField(name, label, "textarea", length=255, **common)
        if kind in ("Number", "Currency", "Percent"):
            precision, scale = metadata.get("precision"), metadata.get("scale")
            if not isinstance(precision, int) or not isinstance(scale, int) or not 0 <= scale <= precision <= 18:
                raise bad(f"{kind} fields need precision (<= 18) and scale (<= precision)")
            return SfField(name, label, {"Number": "double", "Currency": "currency", "Percent": "percent"}[kind],
                           precision=precision, scale=scale, **common)
        if kind in ("Date", "DateTime", "Email", "Phone", "Url"):
            sf_type = {"Date": "date", "DateTime": "datetime", "Email": "email", "Phone": "phone", "Url": "url"}[kind]
            return SfField(name, label, sf_type, length={"email": 80, "phone": 40, "url": 255}.get(sf_type, 0), **common)
        if kind == "Checkbox":
            if str(metadata.get("defaultValue")).lower() not in ("true", "false"):
                raise bad("Checkbox fields need defaultValue 'true' or 'false'")
            return SfField(name, label, "boolean", nillable=False, defaulted=True,
                           default=str(metadata["defaultValue"]).lower() == "true", **common)
        if kind in ("Picklist", "MultiselectPicklist"):
            values = self._value_set(metadata, bad)
            if kind == "MultiselectPicklist" and not metadata.get("visibleLines"):
                raise bad("MultiselectPicklist fields need visibleLines")
            return SfField(name, label, "picklist" if kind == "Picklist" else "multipicklist", length=255,
                           picklist=tuple(values), restricted=bool((metadata.get("valueSet") or {}).get("restricted")),
                           **common)
        if kind == "Lookup":
            target = metadata.get("referenceTo")
            relationship = metadata.get("relationshipName")
            if target not in self.objects:
                raise bad(f"referenceTo {target!r} is not an object of this org")
            if not relationship or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", relationship):
                raise bad("Lookup fields need a relationshipName (letters, digits, underscores)")
            for other in self.objects.values():
                for f in other.fields.values():
                    if f.type == "reference" and target in f.reference_to and f.relationship_name == relationship + "__r":
                        raise bad(f"the relationship name {relationship} is already used on {target}")
            return SfField(name, label, "reference", length=18, reference_to=(target,),
                           relationship_name=relationship + "__r", **common)
        raise bad(f"unsupported field type {kind!r}")

    @staticmethod
    def _value_set(metadata: dict[str, Any], bad) -> list[str]:
        definition = ((metadata.get("valueSet") or {}).get("valueSetDefinition") or {}).get("value") or []
        values = [v.get("fullName") or v.get("valueName") for v in definition]
        if not values or not all(values):
            raise bad("picklists need valueSet.valueSetDefinition.value with at least one value")
        if len({v.lower() for v in values}) != len(values):
            raise bad("picklist values must be unique")
        return values

    def tooling_query(self, text: str) -> dict[str, Any]:
        with self.lock:
            try:
                parsed = soql.parse(text)
            except soql.SoqlError as exc:
                raise RequestError(exc.code, exc.message) from None
            if parsed.object != "CustomField":
                raise RequestError("INVALID_TYPE", f"sObject type '{parsed.object}' is not supported by the emulator's "
                                   "Tooling API.")
            rows = [t.row() for t in self.tooling.values()]
            allowed = {"Id", "DeveloperName", "TableEnumOrId", "NamespacePrefix", "FullName"}
            for name in [*parsed.fields, *(c.field for c in parsed.where)]:
                if name not in allowed:
                    raise RequestError("INVALID_FIELD", f"No such column '{name}' on entity 'CustomField'")
            rows = [r for r in rows if all(soql.matches(r, c) for c in parsed.where)]
            if "FullName" in parsed.fields and len(rows) > 1:
                raise RequestError("MALFORMED_QUERY", "FullName can be selected only when the query returns one row")
            records = [{"attributes": {"type": "CustomField", "url": f"/services/data/v{self.version}/tooling/sobjects/"
                                       f"CustomField/{r['Id']}"}, **{f: r[f] for f in parsed.fields}} for r in rows]
            return {"size": len(records), "totalSize": len(records), "done": True, "queryLocator": None,
                    "entityTypeName": "CustomField", "records": records}

    def get_custom_field(self, tooling_id: str) -> dict[str, Any]:
        with self.lock:
            t = self.tooling.get(to_18(tooling_id)) if _ID.match(tooling_id) else None
            if t is None:
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            return {"attributes": {"type": "CustomField"}, **t.row(), "Metadata": copy.deepcopy(t.metadata)}

    def update_custom_field(self, tooling_id: str, payload: dict[str, Any]) -> None:
        """Label, help text, description and pick-list values may change; the type may not."""
        with self.lock:
            t = self.tooling.get(to_18(tooling_id)) if _ID.match(tooling_id) else None
            if t is None:
                raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
            metadata = payload.get("Metadata") or {}
            if metadata.get("type") not in (None, t.metadata.get("type")):
                raise RequestError("FIELD_INTEGRITY_EXCEPTION", "changing a field's type is not supported", ["Metadata"])
            merged = {**t.metadata, **metadata}
            obj = self.objects[t.object]
            current = obj.fields[t.name]
            rebuilt = self._custom_field(obj, t.name, merged)
            obj.fields[t.name] = replace(rebuilt, visible=current.visible)
            t.metadata = copy.deepcopy(merged)

    # -- admin (what a person does in Setup; reachable through the control routes) -----------------
    def add_custom_object(self, api_name: str, label: str, plural: str) -> None:
        with self.lock:
            if not _OBJECT_NAME.match(api_name):
                raise ValueError(f"{api_name!r} is not a custom object API name (Name__c, or ns__Name__c "
                                 "for an installed package's)")
            if api_name in self.objects:
                return
            prefix = f"a{next(self._prefixes):02d}"
            self.objects[api_name] = custom_object(api_name, label, plural, prefix)
            self.records[api_name] = {}

    def add_record_type(self, sobject: str, developer_name: str, label: str | None = None) -> str:
        with self.lock:
            for r in self.records["RecordType"].values():
                if r["SobjectType"] == sobject and r["DeveloperName"] == developer_name:
                    return r["Id"]
            return self._seed("RecordType", {"Name": label or developer_name.replace("_", " "),
                                             "DeveloperName": developer_name, "SobjectType": sobject,
                                             "IsActive": True})

    def settings(self, **values: Any) -> dict[str, Any]:
        with self.lock:
            for key in ("audit_fields", "api_max", "api_used", "bulk_batches_max", "bulk_batches_used", "page_size"):
                if key in values and values[key] is not None:
                    setattr(self, key, values[key])
            return {k: getattr(self, k) for k in ("audit_fields", "api_max", "api_used", "bulk_batches_max",
                                                   "bulk_batches_used", "page_size")}

    def snapshot(self) -> dict[str, Any]:
        """Every live data record by object (setup objects left out), and the stored files' hashes.

        Shape: ``{"records": {object: [records in insertion order]}, "files": {version id: sha256}}``.
        """
        with self.lock:
            records = {name: [copy.deepcopy(r) for r in self.records[name].values() if not r["IsDeleted"]]
                       for name, obj in self.objects.items() if not obj.setup}
            files = {vid: hashlib.sha256(data).hexdigest() for vid, data in self.blobs.items()
                     if not self.records["ContentVersion"][vid]["IsDeleted"]}
            return {"records": records, "files": files}

    def users(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(u) for u in self.records["User"].values()]
