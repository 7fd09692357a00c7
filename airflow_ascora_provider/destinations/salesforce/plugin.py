"""Salesforce Sales Cloud destination: neutral records in and out of an org through SalesforceHook.

Salesforce specifics this module owns (and nothing else):

* **Key**: every object we write carries ``Ascora_Id__c`` (Unique + External ID, made by the schema
  step), so updates are upserts on it and a re-run can never duplicate a record.
* **First load keeps the Ascora timestamps**: when the org lets the integration user set audit
  fields ("Set Audit Fields upon Record Creation"; seen as ``CreatedDate`` being createable), new
  records are *inserted* with ``CreatedDate``; Salesforce accepts audit fields on insert only, so
  later loads upsert without them. Without the permission, new records are upserted too and take the
  load time (a warning says so once per object).
* **Writes**: sObject Collections, 200 records per call, ``allOrNone: false``, one result per record;
  Bulk API 2.0 jobs above ``bulk_threshold`` records (``bulk.py``); Files one by one
  (``ContentVersion`` with base64 data, at most 25 MB).
* **Limits**: the quota guard (``connection.py``) raises ``QuotaExhausted`` before a call would eat
  into the daily reserve, and ``REQUEST_LIMIT_EXCEEDED`` becomes the same resumable stop.
* **Rollback** deletes through Collections (Files through their ``ContentDocument``); records already
  in the recycle bin count as deleted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from airflow_ascora_provider.destinations.salesforce import bulk
from airflow_ascora_provider.destinations.salesforce.encoding import (
    PEOPLE,
    RELATED_TO,
    EncodeError,
    compound_parts,
    csv_cell,
    decode_address,
    decode_value,
    dest_field,
    encode_address,
    encode_name,
    encode_related,
    encode_value,
)
from airflow_ascora_provider.destinations.spec import (
    BulkJobStatus,
    Capabilities,
    Destination,
    DestField,
    DestObject,
    DestUser,
    OutgoingRecord,
    QuotaExhausted,
    SchemaChange,
    WriteResult,
    hookimpl,
)
from airflow_ascora_provider.mapping.values import AttachTo, DestRef, FileRef, FullName

log = logging.getLogger(__name__)

#: Standard objects a mapping may target; custom objects (…__c) are added from the org's describe.
STANDARD_OBJECTS = ("Account", "Contact", "Lead", "Opportunity", "OpportunityLineItem", "Order", "Asset", "Task",
                    "ContentVersion", "Product2", "Pricebook2", "PricebookEntry", "User")
AUDIT_FIELDS = frozenset({"CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById"})
PERSON_OBJECTS = ("Contact", "Lead")
FILE_OBJECT = "ContentVersion"
MAX_FILE_BYTES = 25 * 1024 * 1024  # Salesforce Files' default per-file limit (the seed's 25 MB)
GONE = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND"})
IDS_PER_QUERY = 200


class SalesforceDestination(Destination):
    name = "salesforce"
    label = "Salesforce Sales Cloud"
    connection_type = "salesforce"
    default_mapping = Path(__file__).with_name("mapping.yaml")
    capabilities = Capabilities(
        batch_size=200,
        external_id="native_upsert",
        creatable=frozenset({"custom_field", "picklist_option"}),
        manual=frozenset({"custom_object", "record_type", "standard_picklist_value"}),
        plan_limits={"records_per_collection_call": 200, "bulk_records_per_batch": 10_000,
                     "bulk_batches_per_24h": 15_000, "file_bytes": MAX_FILE_BYTES},
        custom_object_fields=frozenset({"Name", "OwnerId", "CreatedDate"}),
        max_file_bytes=MAX_FILE_BYTES,
        max_concurrency=4,
    )

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        super().__init__(conn_id, **options)
        from airflow_ascora_provider.destinations.salesforce.connection import SalesforceConnection

        self.conn = SalesforceConnection(conn_id, options)
        self.settings = self.conn.settings
        self.bulk_poll_interval = self.settings.bulk_poll_seconds
        self._described: dict[str, dict[str, Any] | None] = {}
        self._global: dict[str, Any] | None = None
        self._record_types: dict[tuple[str, str], str] | None = None
        self._security = None
        self._existing: set[str] = set()  # objects the schema step has seen in the org
        self._warned: set[str] = set()

    @property
    def sf(self):
        return self.conn.sf

    @property
    def batch_size(self) -> int:
        return max(1, min(self.capabilities.batch_size, self.settings.batch_size))

    # -- describe ---------------------------------------------------------------------------------
    def _global_describe(self, refresh: bool = False) -> dict[str, Any]:
        if self._global is None or refresh:
            self.conn.spend(1, "describing the org")
            self._global = {o["name"]: o for o in self.sf.describe()["sobjects"]}
        return self._global

    def _describe(self, sobject: str, refresh: bool = False) -> dict[str, Any] | None:
        from simple_salesforce.exceptions import SalesforceResourceNotFound

        if sobject not in self._described or refresh:
            self.conn.spend(1, f"describing {sobject}")
            try:
                self._described[sobject] = getattr(self.sf, sobject).describe()
            except SalesforceResourceNotFound:
                self._described[sobject] = None
        return self._described[sobject]

    def _fields(self, sobject: str) -> dict[str, dict[str, Any]]:
        described = self._describe(sobject)
        if described is None:
            raise KeyError(f"Salesforce has no object {sobject!r} (or the integration user cannot see it)")
        return {f["name"]: f for f in described["fields"]}

    def _object_of_id(self, record_id: str) -> str:
        prefixes = {o.get("keyPrefix"): name for name, o in self._global_describe().items()}
        return prefixes.get(record_id[:3], "")

    def _audit_allowed(self, sobject: str) -> bool:
        if self.settings.set_audit_fields != "auto":
            return self.settings.set_audit_fields == "true"
        created = self._fields(sobject).get("CreatedDate")
        return bool(created and created.get("createable"))

    def _record_type_ids(self) -> dict[tuple[str, str], str]:
        if self._record_types is None:
            self.conn.spend(1, "reading record types")
            rows = self.sf.query_all("SELECT Id, DeveloperName, SobjectType FROM RecordType WHERE IsActive = true")
            self._record_types = {(r["SobjectType"], r["DeveloperName"]): r["Id"] for r in rows["records"]}
        return self._record_types

    def describe_schema(self) -> dict[str, DestObject]:
        available = self._global_describe(refresh=True)
        names = [n for n in STANDARD_OBJECTS if n in available]
        names += [n for n, o in available.items() if o.get("custom") and n not in names]
        names += [n for n in self.settings.describe_objects if n in available and n not in names]
        self._record_types = None
        schema: dict[str, DestObject] = {}
        for sobject in names:
            described = self._describe(sobject, refresh=True)
            if described is None:
                continue
            fields: dict[str, DestField] = {}
            # Street, city … of an address are written through the address itself; listed read-only so
            # nothing proposes them as a home for other data (an explicit mapping may still use them).
            parts = {p for w in described["fields"] if w["type"] == "address" for p in compound_parts(w)}
            for wire in described["fields"]:
                name = wire["name"]
                if name in parts:
                    fields[name] = replace(dest_field(name, wire), read_only=True)
                elif wire["type"] == "address":
                    fields[name] = dest_field(name, wire, virtual_type="address")
                elif name == "Name" and sobject in PERSON_OBJECTS:
                    fields[name] = DestField(name, "full_name", required=True)
                elif name == "RecordTypeId":
                    types = sorted(dev for (obj, dev) in self._record_type_ids() if obj == sobject)
                    fields[name] = DestField(name, "picklist", options=tuple(types))
                else:
                    fields[name] = dest_field(name, wire)
            if sobject == "Task":
                fields[RELATED_TO] = DestField(RELATED_TO, "lookup")
            schema[sobject] = DestObject(sobject, described.get("label", sobject), custom=bool(described.get("custom")),
                                         fields=fields)
        return schema

    def custom_field_name(self, label: str) -> str:
        from airflow_ascora_provider.destinations.salesforce.schema import field_api_name

        return field_api_name(label)

    def apply_schema_change(self, change: SchemaChange) -> None:
        from airflow_ascora_provider.destinations.salesforce import schema as sf_schema

        if change.kind == "custom_field":
            if not self._exists(change.object):
                raise RuntimeError(f"{change.object} does not exist in the org yet: a Salesforce admin creates custom "
                                   f"objects (Setup → Object Manager); run the schema step again afterwards")
            self.conn.spend(6, f"creating {change.object}.{change.field}")
            sf_schema.create_custom_field(self.sf, change.object, change.field, change.spec)
            if self._security is None:
                self._security = sf_schema.FieldSecurity(self.sf, self.settings.permission_set)
            self._security.grant(change.object, change.field)
        elif change.kind == "picklist_option":
            if change.field == "RecordTypeId":
                raise RuntimeError(f"record types {', '.join(change.spec)} do not exist on {change.object}: a "
                                   "Salesforce admin creates them (Setup → Object Manager → Record Types) with "
                                   "their sales process and page layouts")
            if not change.field.endswith("__c"):
                raise RuntimeError(f"{change.object}.{change.field} is a standard pick-list: an admin adds "
                                   f"{', '.join(change.spec)} in Setup (its values are not editable through the API)")
            self.conn.spend(3, f"adding values to {change.object}.{change.field}")
            sf_schema.add_picklist_values(self.sf, change.object, change.field, tuple(change.spec))
        else:
            raise ValueError(f"Salesforce cannot apply a {change.kind!r} change through the API; an admin must")
        self._described.pop(change.object, None)

    def finish_schema_changes(self) -> None:
        """Grant access to the fields the step created, in collections of 200 (see ``FieldSecurity``)."""
        if self._security is not None:
            self._security.flush()

    def _exists(self, sobject: str) -> bool:
        """Whether the org has ``sobject``: described afresh until it is found once (an admin may
        have just created it), then known for the rest of the step, not described again per field."""
        if sobject not in self._existing and self._describe(sobject, refresh=True) is not None:
            self._existing.add(sobject)
        return sobject in self._existing

    # -- users ------------------------------------------------------------------------------------
    def list_users(self) -> list[DestUser]:
        self.conn.spend(2, "listing users")
        rows = self.sf.query_all_iter("SELECT Id, Email, Name, IsActive FROM User WHERE IsActive = true "
                                      "AND UserType = 'Standard'")
        return [DestUser(id=r["Id"], email=(r.get("Email") or "").strip(), name=r.get("Name") or "",
                         active=bool(r.get("IsActive"))) for r in rows]

    # -- encoding ---------------------------------------------------------------------------------
    def _wire(self, sobject: str, payload: dict[str, Any], mode: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Payload → JSON body for ``mode`` (insert | create | update) and wire field → payload field.

        ``insert`` may carry audit fields (when the org allows them); ``create`` is an upsert of a new
        record (no audit fields); ``update`` leaves out what Salesforce does not let change after
        insert (audit fields, ``FirstPublishLocationId``, ``TaskSubtype`` …).
        """
        fields = self._fields(sobject)
        wire: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name, value in payload.items():
            if name == RELATED_TO and sobject == "Task":
                parts = encode_related(value)
            elif name in fields and fields[name]["type"] == "address":
                parts = encode_address(value, compound_parts(fields[name]))
            elif name == "Name" and sobject in PERSON_OBJECTS:
                parts = encode_name(value, name)
            elif name == "RecordTypeId" and isinstance(value, str):
                types = self._record_type_ids()
                if (sobject, value) not in types:
                    raise EncodeError(name, f"{sobject} has no active record type {value!r} (an admin creates it)")
                parts = {name: types[(sobject, value)]}
            elif name not in fields:
                raise EncodeError(name, f"{sobject} has no field {name} visible to the integration user "
                                        "(run the schema step)")
            else:
                parts = {name: encode_value(value, fields[name], name)}
            for wire_name, wire_value in parts.items():
                described = fields.get(wire_name) or {}
                if wire_name in AUDIT_FIELDS:
                    if mode != "insert" or not self._audit_allowed(sobject):
                        if mode != "update":
                            self._warn_audit(sobject)
                        continue  # Salesforce takes audit fields on insert only
                elif mode == "update" and not described.get("updateable"):
                    continue  # set once on insert (FirstPublishLocationId, TaskSubtype …)
                elif mode != "update" and not described.get("createable"):
                    raise EncodeError(name, f"{sobject}.{wire_name} cannot be set on a new record "
                                            "(read-only for the integration user)")
                wire[wire_name] = wire_value
                origin[wire_name] = name
        return wire, origin

    def _warn_audit(self, sobject: str) -> None:
        if sobject not in self._warned:
            self._warned.add(sobject)
            log.warning("%s: the org does not let the integration user set audit fields (Setup → User Interface → "
                        "'Enable Set Audit Fields upon Record Creation', then the user permission): new records "
                        "get the load time as CreatedDate instead of Ascora's", sobject)

    # -- records ----------------------------------------------------------------------------------
    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        if target == FILE_OBJECT:
            return [self._write_file(record, key_field) for record in records]
        results: list[WriteResult | None] = [None] * len(records)
        inserts = self._audit_allowed(target) or not key_field
        groups: dict[str, list[int]] = {"insert": [], "create": [], "update": []}
        for i, record in enumerate(records):
            groups["update" if record.dest_id else "insert" if inserts else "create"].append(i)
        for mode, indexes in groups.items():
            if indexes:
                self._send(target, records, indexes, mode, key_field, results)
        return [r for r in results if r is not None]

    def _send(self, target: str, records: list[OutgoingRecord], indexes: list[int], mode: str,
              key_field: str | None, results: list[WriteResult | None]) -> None:
        rows, origins, sent = [], [], []
        for i in indexes:
            record = records[i]
            try:
                wire, origin = self._wire(target, record.payload, mode)
            except EncodeError as exc:
                results[i] = WriteResult(record.source_id, None, error=str(exc), error_field=exc.field)
                continue
            if mode == "update" and not key_field:
                wire["Id"] = record.dest_id
            rows.append({"attributes": {"type": target}, **wire})
            origins.append(origin)
            sent.append(i)
        if not rows:
            return
        if mode == "insert":
            path, method = "composite/sobjects", "POST"
        elif key_field:
            path, method = f"composite/sobjects/{target}/{key_field}", "PATCH"
        else:
            path, method = "composite/sobjects", "PATCH"
        answers = self._collection(method, path, rows, f"{mode} of {len(rows)} {target}")
        duplicates = []
        for i, origin, answer in zip(sent, origins, answers):
            record = records[i]
            if answer.get("success"):
                results[i] = WriteResult(record.source_id, answer["id"], created=bool(answer.get("created", mode != "update")))
                continue
            error = (answer.get("errors") or [{}])[0]
            code, message = error.get("statusCode") or error.get("errorCode"), error.get("message", "")
            if mode == "insert" and key_field and code == "DUPLICATE_VALUE" and key_field in message:
                duplicates.append(i)  # written by an earlier, interrupted attempt: upsert it instead
                continue
            fields = error.get("fields") or []
            results[i] = WriteResult(record.source_id, None, error=f"{code}: {message}",
                                     error_field=origin.get(fields[0], fields[0]) if fields else None)
        if duplicates:
            self._send(target, records, duplicates, "update", key_field, results)

    def _collection(self, method: str, path: str, rows: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        """One Collections call; a request refused as a whole answers every record with its error."""
        from simple_salesforce.exceptions import SalesforceMalformedRequest

        self.conn.spend(1, what)
        try:
            with self._quota_errors():
                return self.sf.restful(path, method=method, json={"allOrNone": False, "records": rows})
        except SalesforceMalformedRequest as exc:
            errors = [e for e in exc.content or () if isinstance(e, dict)] or [{"errorCode": "BAD_REQUEST",
                                                                                  "message": str(exc)}]
            return [{"success": False, "errors": errors} for _ in rows]

    def _quota_errors(self):
        """``403 REQUEST_LIMIT_EXCEEDED`` (the quota ran out under us) → the engine's resumable stop."""
        import contextlib

        from simple_salesforce.exceptions import SalesforceRefusedRequest

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except SalesforceRefusedRequest as exc:
                codes = {e.get("errorCode") for e in exc.content or () if isinstance(e, dict)}
                if "REQUEST_LIMIT_EXCEEDED" in codes:
                    raise QuotaExhausted(f"Salesforce refused the call: {exc.content}",
                                         resume_at=self.conn.guard.resume_at()) from exc
                raise

        return guard()

    def _write_file(self, record: OutgoingRecord, key_field: str | None) -> WriteResult:
        """Files go one by one (base64 in JSON): a new ContentVersion, or a new version of its document."""
        from simple_salesforce.exceptions import SalesforceMalformedRequest

        file = next((v for v in record.payload.values() if isinstance(v, FileRef)), None)
        if file is not None and file.size > MAX_FILE_BYTES:
            return WriteResult(record.source_id, None, error=f"{file.name} is {file.size:,} bytes; Salesforce Files "
                               f"take at most {MAX_FILE_BYTES:,} here", error_field="VersionData")
        try:
            if record.dest_id:
                return self._update_file(record, key_field, file)
            wire, origin = self._wire(FILE_OBJECT, record.payload, "insert")
            self.conn.spend(1, f"uploading {file.name if file else 'a file'}")
            with self._quota_errors():
                created = self.sf.ContentVersion.create(wire)
            return WriteResult(record.source_id, created["id"], created=True)
        except EncodeError as exc:
            return WriteResult(record.source_id, None, error=str(exc), error_field=exc.field)
        except (SalesforceMalformedRequest, OSError) as exc:
            error = _first_error(exc)
            if key_field and error[0] == "DUPLICATE_VALUE" and file is not None:
                adopted = self._adopt_file(key_field, record.payload.get(key_field), file)
                if adopted:
                    return WriteResult(record.source_id, adopted, created=True)
            field = error[2][0] if error[2] else None
            return WriteResult(record.source_id, None, error=f"{error[0]}: {error[1]}", error_field=field)

    def _adopt_file(self, key_field: str, key: Any, file: FileRef) -> str | None:
        """An earlier attempt uploaded this file already: take it when the stored bytes are the same."""
        rows = self._query(f"SELECT Id, Checksum FROM {FILE_OBJECT} WHERE {key_field} = {_quote(key)}")
        digest = hashlib.md5(file.read_bytes()).hexdigest()  # noqa: S324 - Salesforce's Checksum is MD5
        return next((r["Id"] for r in rows if r.get("Checksum") == digest), None)

    def _update_file(self, record: OutgoingRecord, key_field: str | None, file: FileRef | None) -> WriteResult:
        current = self._query(f"SELECT Id, Checksum, ContentDocumentId FROM {FILE_OBJECT} "
                              f"WHERE Id = {_quote(record.dest_id)}")
        if not current:
            return WriteResult(record.source_id, None, error=f"ContentVersion {record.dest_id} no longer exists")
        digest = hashlib.md5(file.read_bytes()).hexdigest() if file else None  # noqa: S324
        if file is None or digest == current[0]["Checksum"]:
            wire, _ = self._wire(FILE_OBJECT, record.payload, "update")
            if wire:
                self.conn.spend(1, "updating a file's details")
                with self._quota_errors():
                    self.sf.ContentVersion.update(record.dest_id, wire)
            return WriteResult(record.source_id, record.dest_id)
        # New bytes: a new version of the same document. The key moves to the new version.
        wire, _ = self._wire(FILE_OBJECT, record.payload, "create")
        wire.pop("FirstPublishLocationId", None)
        wire["ContentDocumentId"] = current[0]["ContentDocumentId"]
        self.conn.spend(2, "uploading a new file version")
        with self._quota_errors():
            if key_field:
                self.sf.ContentVersion.update(record.dest_id, {key_field: None})
            created = self.sf.ContentVersion.create(wire)
        return WriteResult(record.source_id, created["id"])

    def _query(self, soql: str) -> list[dict[str, Any]]:
        self.conn.spend(1, "a query")
        with self._quota_errors():
            return list(self.sf.query_all_iter(soql))

    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        if not dest_ids:
            return {}
        wanted = list(fields)
        described = self._fields(target)
        audit_ok = self._audit_allowed(target)
        select: dict[str, None] = {"Id": None}
        for name in wanted:
            if name == RELATED_TO and target == "Task":
                select.update({"WhatId": None, "WhoId": None})
            elif name == "Name" and target in PERSON_OBJECTS:
                select.update({"FirstName": None, "LastName": None})
            elif name in described and described[name]["type"] == "address":
                select.update(dict.fromkeys(compound_parts(described[name])))
            elif name in described and described[name]["type"] == "base64":
                select["Checksum"] = None
            elif name in AUDIT_FIELDS and not audit_ok:
                continue  # not settable in this org: write-only, so the diff skips it
            elif name in described:
                select[name] = None
        out: dict[str, dict[str, Any]] = {}
        types = {(o, i): d for (o, d), i in self._record_type_ids().items()} if "RecordTypeId" in wanted else {}
        for start in range(0, len(dest_ids), IDS_PER_QUERY):
            chunk = dest_ids[start:start + IDS_PER_QUERY]
            soql = f"SELECT {', '.join(select)} FROM {target} WHERE Id IN ({', '.join(_quote(i) for i in chunk)})"
            for row in self._query(soql):
                out[row["Id"]] = self._decode(target, row, wanted, described, audit_ok, types)
        return out

    def _decode(self, target: str, row: dict[str, Any], wanted: list[str], described: dict[str, dict[str, Any]],
                audit_ok: bool, types: dict[tuple[str, str], str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in wanted:
            if name == RELATED_TO and target == "Task":
                refs = [DestRef(self._object_of_id(row[f]), row[f]) for f in ("WhatId", "WhoId") if row.get(f)]
                values[name] = AttachTo(tuple(refs))
            elif name == "Name" and target in PERSON_OBJECTS:
                values[name] = FullName(row.get("FirstName") or None, row.get("LastName") or None)
            elif name not in described or (name in AUDIT_FIELDS and not audit_ok):
                continue
            elif described[name]["type"] == "address":
                values[name] = decode_address(row, compound_parts(described[name]))
            elif described[name]["type"] == "base64":
                values[name] = self._stored_file(row["Id"])
            elif name == "RecordTypeId":
                values[name] = types.get((target, row.get(name))) if row.get(name) else None
            else:
                values[name] = decode_value(row.get(name), described[name], self._object_of_id)
        return values

    def _stored_file(self, version_id: str) -> FileRef:
        """What Salesforce really stores, by content, so the sample diff verifies the upload byte for byte."""
        self.conn.spend(1, "downloading a file to verify it")
        content = self.sf.ContentVersion.get_base64(version_id, base64_field="VersionData")
        return FileRef(sha256=hashlib.sha256(content).hexdigest(), size=len(content))

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(source_ids), IDS_PER_QUERY):
            chunk = source_ids[start:start + IDS_PER_QUERY]
            soql = f"SELECT Id, {key_field} FROM {target} WHERE {key_field} IN ({', '.join(map(_quote, chunk))})"
            for row in self._query(soql):
                found[row[key_field]] = row["Id"]
        return found

    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        ids = list(dest_ids)
        documents: dict[str, str] = {}
        if target == FILE_OBJECT:  # a version is deleted with its document
            for start in range(0, len(ids), IDS_PER_QUERY):
                chunk = ids[start:start + IDS_PER_QUERY]
                for row in self._query(f"SELECT Id, ContentDocumentId FROM {FILE_OBJECT} WHERE Id IN "
                                       f"({', '.join(map(_quote, chunk))})"):
                    documents[row["ContentDocumentId"]] = row["Id"]
            out.update({i: None for i in ids if i not in documents.values()})  # already gone
            ids = list(documents)
        for start in range(0, len(ids), self.capabilities.batch_size):
            chunk = ids[start:start + self.capabilities.batch_size]
            self.conn.spend(1, f"deleting {len(chunk)} {target}")
            with self._quota_errors():
                answers = self.sf.restful("composite/sobjects", method="DELETE",
                                          params={"ids": ",".join(chunk), "allOrNone": "false"})
            for record_id, answer in zip(chunk, answers):
                error = (answer.get("errors") or [{}])[0]
                code = error.get("statusCode")
                key = documents.get(record_id, record_id)
                out[key] = None if answer.get("success") or code in GONE else f"{code}: {error.get('message')}"
        return out

    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        image = {k: v for k, v in before_image.items() if not isinstance(v, FileRef)}  # bytes are not kept
        wire, _ = self._wire(target, image, "update")
        if wire:
            self.conn.spend(1, f"restoring {target} {dest_id}")
            with self._quota_errors():
                getattr(self.sf, target).update(dest_id, wire)

    # -- Bulk API 2.0 -----------------------------------------------------------------------------
    def bulk_threshold(self, target: str) -> int | None:
        if target == FILE_OBJECT:
            return None  # binary data does not go through Bulk API 2.0 CSV
        return self.settings.bulk_threshold

    def submit_bulk_job(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> dict[str, Any]:
        if not key_field:
            raise ValueError(f"a bulk job for {target} needs a key field (Ascora_Id__c) to match its results")
        inserts = self._audit_allowed(target)
        plans: dict[str, list[bulk.JobRow]] = {"insert": [], "upsert": []}
        refused: dict[str, list[str | None]] = {}
        for record in records:
            mode = "update" if record.dest_id else "insert" if inserts else "create"
            try:
                wire, origin = self._wire(target, record.payload, mode)
            except EncodeError as exc:
                refused[record.source_id] = [str(exc), exc.field]
                continue
            cells = {name: csv_cell(value, clear=mode == "update") for name, value in wire.items()}
            cells[key_field] = record.source_id
            plans["insert" if mode == "insert" else "upsert"].append(bulk.JobRow(record.source_id, cells))
        batches = sum(-(-len(rows) // 10_000) for rows in plans.values() if rows)
        self._require_bulk_batches(batches, target)
        self.conn.spend(4 * len(plans), f"a bulk job of {len(records)} {target}")
        jobs = []
        for operation, rows in plans.items():
            if rows:
                job_id = bulk.submit(self.sf, target, operation, key_field, rows)
                jobs.append({"id": job_id, "operation": operation, "records": len(rows)})
        return {"id": jobs[0]["id"] if jobs else None, "target": target, "key_field": key_field, "jobs": jobs,
                "refused": refused}

    def _require_bulk_batches(self, batches: int, target: str) -> None:
        """Stop before the daily Bulk API batch allowance (shared by Bulk 1.0 and 2.0) runs out."""
        if not batches:
            return
        self.conn.spend(1, "reading the org's limits")
        limits = self.sf.limits().get("DailyBulkApiBatches") or {}
        remaining, maximum = limits.get("Remaining"), limits.get("Max")
        if remaining is None or maximum is None:
            return
        reserve = int(maximum * self.settings.api_reserve_percent / 100)
        if remaining - batches < reserve:
            raise QuotaExhausted(f"Salesforce daily Bulk API batches: {remaining:,} of {maximum:,} left; a {target} "
                                 f"job needs {batches} and {reserve:,} are kept in reserve",
                                 resume_at=self.conn.guard.resume_at())

    def poll_bulk_job(self, job: dict[str, Any]) -> BulkJobStatus:
        states, processed, messages = [], 0, []
        for sub in job["jobs"]:
            self.conn.spend(1, "checking a bulk job")
            info = bulk.job_info(self.sf, sub["id"])
            states.append(info["state"])
            processed += int(info.get("numberRecordsProcessed") or 0)
            if info["state"] in ("Failed", "Aborted"):
                messages.append(f"job {sub['id']} ({sub['operation']}) {info['state']}: {info.get('errorMessage')}")
        if messages:
            return BulkJobStatus("failed", "; ".join(messages), processed)
        if all(state == "JobComplete" for state in states):
            return BulkJobStatus("done", f"{processed} records processed", processed)
        return BulkJobStatus("running", ", ".join(states), processed)

    def bulk_job_results(self, job: dict[str, Any], records: list[OutgoingRecord]) -> list[WriteResult]:
        target, key_field = job["target"], job["key_field"]
        outcome: dict[str, WriteResult] = {}
        retry_as_upsert: list[OutgoingRecord] = []
        by_id = {r.source_id: r for r in records}
        for sub in job["jobs"]:
            self.conn.spend(2, "reading bulk job results")
            ok, failed = bulk.results(self.sf, target, sub["id"])
            for row in ok:
                outcome[row[key_field]] = WriteResult(row[key_field], row["sf__Id"],
                                                      created=row.get("sf__Created", "").lower() == "true")
            for row in failed:
                code, message, fields = bulk.parse_error(row.get("sf__Error", ""))
                source_id = row[key_field]
                if sub["operation"] == "insert" and code == "DUPLICATE_VALUE" and key_field in message \
                        and source_id in by_id:
                    retry_as_upsert.append(by_id[source_id])
                    continue
                outcome[source_id] = WriteResult(source_id, None, error=f"{code}: {message}",
                                                 error_field=self._payload_field(target, by_id.get(source_id),
                                                                                 fields[0] if fields else None))
        for start in range(0, len(retry_as_upsert), self.batch_size):
            chunk = retry_as_upsert[start:start + self.batch_size]
            results: list[WriteResult | None] = [None] * len(chunk)
            self._send(target, chunk, list(range(len(chunk))), "update", key_field, results)
            outcome.update({r.source_id: r for r in results if r is not None})
        answers = []
        for record in records:
            if record.source_id in job.get("refused", {}):
                error, field = job["refused"][record.source_id]
                answers.append(WriteResult(record.source_id, None, error=error, error_field=field))
            else:
                answers.append(outcome.get(record.source_id) or WriteResult(
                    record.source_id, None, error=f"not processed by bulk job {job.get('id')} (unprocessed record)"))
        return answers

    def _payload_field(self, target: str, record: OutgoingRecord | None, wire_field: str | None) -> str | None:
        if record is None or wire_field is None:
            return wire_field
        try:
            _, origin = self._wire(target, record.payload, "update" if record.dest_id else "insert")
        except EncodeError:
            return wire_field
        return origin.get(wire_field, wire_field)

    def close(self) -> None:
        self.conn.close()

    def api_stats(self) -> dict[str, Any]:
        return {**self.conn.stats.as_dict(), "api_usage": self.conn.guard.used, "api_max": self.conn.guard.max,
                "api_reserve": self.conn.guard.reserve}


def _quote(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _first_error(exc: Exception) -> tuple[str, str, list[str]]:
    content = getattr(exc, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        return first.get("errorCode") or first.get("statusCode") or "ERROR", first.get("message", ""), \
            list(first.get("fields") or [])
    return type(exc).__name__, str(exc), []


@hookimpl
def register_destinations(register):
    register(SalesforceDestination)
