"""Zoho CRM destination: neutral records to Zoho's v8 API and back.

Zoho specifics this module owns (and nothing else):

* Key: a unique text field ``Ascora_ID`` on every module that takes custom fields. New records go
  out as *upserts* with ``duplicate_check_fields: [Ascora_ID]`` (a retry after a crash updates the
  record it already wrote instead of duplicating it); known records as updates by Zoho id. Notes take
  no custom fields, so a note's Ascora id rides in the last line of its body (``[Ascora ID: …]``).
* Per-record results: a batch answers 200/201, 207 (mixed) or 400 (all refused) with one entry per
  record; each refusal names the field (``details.api_name``), which becomes the quarantine field.
* Links: lookups are ``{"id": …}``; Tasks hang off a deal through ``What_Id`` + ``$se_module``; notes
  through ``Parent_Id`` with its module. A lookup given a *name* (a plain string, such as the
  'Ascora Import' holding account of individual customers) names a holding record: the plugin finds
  it by ``Ascora_ID = holding:<name>`` or creates it, and removes it again when a rollback leaves it
  without children.
* Attachments are a virtual ``Attachments`` target: the file is uploaded to its parent record; the
  destination id is ``<module>:<record id>:<attachment id>``.
* API credits: every call is priced before it is sent and a whole batch is reserved up front, so the
  load stops between batches (``QuotaExhausted``) before the budget runs out. ``estimate_credits``
  prices a load before it starts; ``check_plan`` refuses a schema plan the edition cannot hold.
* Bulk Write for big units: a zip with one CSV, an upsert job on ``Ascora_ID``, polled by the
  engine's trigger, and a result CSV turned into one result per record.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import math
import re
import zipfile
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_ascora_provider.destinations.spec import (
    BulkJobStatus,
    Capabilities,
    DestField,
    Destination,
    DestObject,
    DestUser,
    LoadForecast,
    OutgoingRecord,
    SchemaChange,
    WriteResult,
    hookimpl,
)
from airflow_ascora_provider.destinations.zoho.limits import (
    BULK_WRITE_JOB_CREDITS,
    CUSTOM_MODULE_CREDITS,
    RECORDS_PER_CREDIT,
    api_name_for,
    edition_spec,
)
from airflow_ascora_provider.mapping.values import (
    AttachTo,
    DestRef,
    Emails,
    FileRef,
    FullName,
    Link,
    Money,
    Phones,
    RichText,
    UserRef,
)

log = logging.getLogger(__name__)

FROM_ZOHO = {
    "text": "text", "textarea": "long_text", "integer": "number", "bigint": "number", "double": "number",
    "decimal": "number", "percent": "number", "currency": "currency", "date": "date", "datetime": "datetime",
    "boolean": "boolean", "picklist": "picklist", "multiselectpicklist": "multi_picklist", "email": "email",
    "phone": "phone", "website": "url", "lookup": "lookup", "ownerlookup": "lookup",
    "multi_module_lookup": "lookup",
}
TO_ZOHO = {
    "text": "text", "long_text": "textarea", "rich_text": "textarea", "number": "double", "currency": "currency",
    "date": "date", "datetime": "datetime", "boolean": "boolean", "picklist": "picklist",
    "multi_picklist": "multiselectpicklist", "email": "email", "phone": "phone", "url": "website",
    "lookup": "lookup", "full_name": "text", "address": "textarea",
}
DESCRIBED_MODULES = ("Accounts", "Contacts", "Leads", "Deals", "Tasks", "Notes", "Products", "Quotes")
ATTACHMENTS = "Attachments"  # virtual target: files uploaded to their parent record
NOTES = "Notes"
NOTE_KEY = re.compile(r"\n*\[Ascora ID: ([^\]\n]+)\]\s*$")
HOLDING_PREFIX = "holding:"
BULK_MODULES_EXCLUDED = frozenset({NOTES, ATTACHMENTS, "Tasks", "Quotes"})  # $se_module / module / subform
# Columns of the inventory line items (Quoted_Items) the plugin writes, with their Zoho data types.
LINE_ITEM_PRODUCTS = "Products"
LINE_ITEM_COLUMNS = {"Product_Name": "lookup", "Quantity": "double", "List_Price": "currency",
                     "Discount": "currency", "Description": "textarea"}


class ZohoPlanError(RuntimeError):
    """The schema plan needs more custom fields or modules than the org's edition allows."""


class ZohoDestination(Destination):
    name = "zoho"
    label = "Zoho CRM"
    connection_type = "zoho"
    default_mapping = Path(__file__).with_name("mapping.yaml")
    max_batch_size = 100  # records per insert/update/upsert call, every edition (capabilities need the connection)

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        super().__init__(conn_id, **options)
        from airflow_ascora_provider.hooks.zoho import ZohoHook

        hook_keys = ("accounts_url", "client_id", "client_secret", "refresh_token", "data_centre", "edition",
                     "users", "add_on_credits", "credits_per_day", "credit_budget", "credit_window_seconds",
                     "credit_state_path",
                     "bulk_threshold", "upload_url", "max_custom_fields", "max_custom_modules", "timeout",
                     "batch_size")
        self.hook = ZohoHook(conn_id or "zoho_default", **{k: options[k] for k in hook_keys if k in options})
        self.currency = str(options.get("currency") or "AUD")
        self._fields: dict[str, dict[str, dict[str, Any]]] = {}
        self._stale: set[str] = set()  # modules whose fields this plugin changed since it read them
        self._created: dict[str, int] = {}  # custom fields created per module since they were read
        self._modules: dict[str, dict[str, Any]] | None = None
        self._holdings: dict[str, dict[str, str]] = {}  # module -> name -> id

    # -- capabilities (per edition, so they need the connection) ----------------------------------
    @property
    def edition(self) -> str:
        return self.hook.edition

    @property
    def limits(self) -> dict[str, Any]:
        s = self.hook.settings()
        spec = edition_spec(s["edition"])
        return {
            "edition": s["edition"],
            "custom_fields_per_module": s["max_custom_fields"] or spec["custom_fields"],
            "custom_modules": s["max_custom_modules"] if s["max_custom_modules"] is not None else spec["custom_modules"],
            "credits_per_day": s["allowance"], "credit_budget": s["credit_budget"],
            "credit_window_seconds": s["credit_window"], "concurrency": spec["concurrency"],
            "quotes_module": spec["quotes"], "records_per_call": 100,
        }

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        limits = self.limits
        creatable = {"custom_field", "picklist_option"}
        if limits["custom_modules"] > 0:
            creatable.add("custom_object")
        return Capabilities(
            batch_size=self.hook.settings()["batch_size"],
            daily_requests=limits["credits_per_day"],
            external_id="native_upsert",
            creatable=frozenset(creatable),
            manual=frozenset({"custom_object"} - creatable),
            plan_limits=limits,
            max_concurrency=limits["concurrency"],
            custom_object_fields=frozenset({"Name", "Owner"}),
            max_file_bytes=100 * 1024 * 1024,
        )

    @property
    def batch_size(self) -> int:
        return self.hook.settings()["batch_size"]

    # -- metadata -----------------------------------------------------------------------------
    def _module_list(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        if self._modules is None or refresh:
            self._modules = {m["api_name"]: m for m in self.hook.modules()}
        return self._modules

    def _meta(self, module: str, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """A module's fields by API name, read again only after this plugin changed them (or on ``refresh``)."""
        if module not in self._fields or refresh or module in self._stale:
            self._fields[module] = {f["api_name"]: f for f in self.hook.fields(module)}
            self._stale.discard(module)
            self._created.pop(module, None)
        return self._fields[module]

    def _changed(self, module: str, created: int = 0) -> None:
        """A module's fields were changed: read them again when next needed, not after every change.
        A schema step creates a module's fields one after another, and a field list is a large answer:
        read after each one, it was most of the step's calls (116 of them for a 5,000-record tenant)."""
        self._stale.add(module)
        self._created[module] = self._created.get(module, 0) + created

    def _custom_field_count(self, module: str) -> int:
        """Custom fields a module has: as last read, plus those created since, without reading again."""
        fields = self._fields.get(module)
        if fields is None:
            fields = self._meta(module)
        return sum(1 for f in fields.values() if f.get("custom_field")) + self._created.get(module, 0)

    def describe_schema(self) -> dict[str, DestObject]:
        modules = self._module_list(refresh=True)
        self._fields.clear()
        self._stale.clear()
        self._created.clear()
        wanted = [m for m in modules if m in DESCRIBED_MODULES or modules[m].get("generated_type") == "custom"]
        schema: dict[str, DestObject] = {}
        for name in wanted:
            fields: dict[str, DestField] = {}
            for api_name, meta in self._meta(name).items():
                lookup = ((meta.get("lookup") or {}).get("module") or {}).get("api_name")
                fields[api_name] = DestField(
                    name=api_name, type=FROM_ZOHO.get(meta["data_type"], "system"),
                    required=bool(meta.get("system_mandatory")), custom=bool(meta.get("custom_field")),
                    unique=bool(meta.get("unique")),
                    options=tuple(p["actual_value"] for p in meta.get("pick_list_values") or ()),
                    lookup_target=lookup, read_only=bool(meta.get("read_only")))
            if name == NOTES:  # Notes take no custom fields: the key lives in the body
                fields["Ascora_ID"] = DestField("Ascora_ID", "text", unique=True)
            schema[name] = DestObject(name=name, label=modules[name].get("plural_label", name),
                                      custom=modules[name].get("generated_type") == "custom", fields=fields)
        schema[ATTACHMENTS] = DestObject(ATTACHMENTS, "Attachments", fields={
            "File_Name": DestField("File_Name", "text", required=True),
            "File": DestField("File", "system", required=True),
            "Parent_Id": DestField("Parent_Id", "lookup", required=True)})
        return schema

    def custom_field_name(self, label: str) -> str:
        return api_name_for(label)

    def check_plan(self, changes: Iterable[SchemaChange]) -> list[str]:
        """What in a schema plan will not fit the edition, one line per module (empty = it fits).

        Checked before any change is applied, so a plan that cannot be completed stops with a clear
        message instead of half-created fields.
        """
        changes = list(changes)
        limits = self.limits
        problems = []
        new_modules = [c.object for c in changes if c.kind == "custom_object"]
        existing_modules = [n for n, m in self._module_list().items() if m.get("generated_type") == "custom"]
        if new_modules and len(existing_modules) + len(new_modules) > limits["custom_modules"]:
            problems.append(
                f"Zoho CRM {limits['edition']} edition allows {limits['custom_modules']} custom module(s); "
                f"{len(existing_modules)} exist and the plan adds {len(new_modules)} ({', '.join(new_modules)}). "
                "Upgrade the edition or map these objects to standard modules")
        per_module: dict[str, list[str]] = {}
        for change in changes:
            if change.kind == "custom_field" and change.object != NOTES:
                per_module.setdefault(change.object, []).append(change.field or "")
        cap = limits["custom_fields_per_module"]
        for module, names in per_module.items():
            have = 0 if module in new_modules else self._custom_field_count(module)
            if have + len(names) > cap:
                problems.append(
                    f"Zoho CRM {limits['edition']} edition allows {cap} custom fields per module; {module} has "
                    f"{have} and the plan adds {len(names)} ({', '.join(sorted(names))}): "
                    f"{have + len(names) - cap} too many. Remove fields from the mapping (skip or drop "
                    "'expand'/'unmapped: custom_field'), or raise max_custom_fields if the org allows more")
        return problems

    def require_plan_fits(self, changes: Iterable[SchemaChange]) -> None:
        problems = self.check_plan(changes)
        if problems:
            raise ZohoPlanError("the schema plan does not fit the Zoho CRM edition:\n  - " + "\n  - ".join(problems))

    def apply_schema_change(self, change: SchemaChange) -> None:
        if change.kind == "custom_object":
            self.require_plan_fits([change])
            spec = change.spec
            self.hook.create_module(change.object, spec.label, spec.label_plural)
            self._module_list(refresh=True)
        elif change.kind == "custom_field":
            if change.object == NOTES:
                raise ZohoPlanError(f"Zoho CRM Notes take no custom fields; {change.field} cannot be created")
            self.require_plan_fits([change])
            self.hook.create_fields(change.object, [self._field_spec(change)])
            self._changed(change.object, created=1)
        elif change.kind == "picklist_option":
            meta = self._meta(change.object)[change.field]
            self.hook.set_picklist_values(change.object, meta, list(change.spec))
            self._changed(change.object)
        else:
            raise ValueError(f"Zoho CRM cannot apply a {change.kind!r} change")

    def _field_spec(self, change: SchemaChange) -> dict[str, Any]:
        spec = change.spec
        data_type = TO_ZOHO[spec.type]
        body: dict[str, Any] = {"field_label": spec.label or change.field, "api_name": change.field,
                                "data_type": data_type}
        if data_type == "text":
            body["length"] = 255
        if data_type in ("picklist", "multiselectpicklist"):
            body["pick_list_values"] = [{"display_value": v, "actual_value": v} for v in spec.options]
        if spec.unique:
            body["unique"] = {"casesensitive": "false"}
        if spec.help_text:
            body["tooltip"] = {"name": "static_text", "value": spec.help_text[:255]}
        if data_type == "lookup":
            body["lookup"] = {"module": {"api_name": spec.lookup_target}}
        return body

    # -- users --------------------------------------------------------------------------------
    def list_users(self) -> list[DestUser]:
        return [DestUser(id=u["id"], email=(u.get("email") or "").strip(), name=u.get("full_name") or "",
                         active=u.get("status") == "active") for u in self.hook.users("AllUsers")]

    # -- encoding -----------------------------------------------------------------------------
    def _wire_record(self, module: str, payload: dict[str, Any]) -> dict[str, Any]:
        meta = self._meta(module) if module != ATTACHMENTS else {}
        wire: dict[str, Any] = {}
        for name, value in payload.items():
            if module == NOTES and name == "Ascora_ID":
                continue  # folded into Note_Content below
            field = meta.get(name)
            if field is None:
                raise KeyError(f"Zoho CRM module {module} has no field {name!r}; run the schema step first")
            kind = field["data_type"]
            if name == "What_Id":
                ref = _first_ref(value)
                wire["What_Id"] = {"id": ref.dest_id} if ref else None
                if ref:
                    wire["$se_module"] = ref.target_object
                continue
            if name == "Parent_Id":
                ref = _first_ref(value)
                wire["Parent_Id"] = {"module": {"api_name": ref.target_object}, "id": ref.dest_id} if ref else None
                continue
            if kind == "lookup" and isinstance(value, str):
                target = field["lookup"]["module"]["api_name"]
                wire[name] = {"id": self._holding(target, value)} if value else None
                continue
            if kind == "subform":
                wire[name] = encode_line_items(name, value)
                continue
            wire[name] = encode_value(value, kind)
        if module == NOTES and payload.get("Ascora_ID"):
            body = wire.get("Note_Content") or ""
            wire["Note_Content"] = f"{body}\n\n[Ascora ID: {payload['Ascora_ID']}]".lstrip("\n")
        return wire

    def _decode(self, module: str, row: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
        meta = self._meta(module)
        out: dict[str, Any] = {}
        for name in fields:
            if module == NOTES and name in ("Ascora_ID", "Note_Content"):
                content, key = split_note_key(row.get("Note_Content"))
                out[name] = key if name == "Ascora_ID" else content
                continue
            if name == "What_Id":
                value = row.get("What_Id")
                out[name] = DestRef(row.get("$se_module") or "", value["id"]) if isinstance(value, dict) else None
                continue
            if name == "Parent_Id":
                value = row.get("Parent_Id")
                out[name] = AttachTo((DestRef(value["module"]["api_name"], value["id"]),)) \
                    if isinstance(value, dict) and value.get("id") else AttachTo(())
                continue
            field = meta.get(name)
            if field is None:
                continue
            value = row.get(name)
            if field["data_type"] == "lookup" and isinstance(value, dict):
                target = field["lookup"]["module"]["api_name"]
                holding = {v: k for k, v in self._holding_ids(target).items()}.get(value.get("id"))
                out[name] = holding if holding else DestRef(target, value["id"])
                continue
            if field["data_type"] == "subform":
                out[name] = decode_line_items(value)
                continue
            out[name] = decode_value(value, field["data_type"], self.currency)
        return out

    # -- holding records ----------------------------------------------------------------------
    def _holding_ids(self, module: str) -> dict[str, str]:
        """Holding records of a module (name -> id), found by their ``holding:`` Ascora_ID."""
        if module not in self._holdings:
            if "Ascora_ID" not in self._meta(module):
                self._holdings[module] = {}
            else:
                rows, _ = self.hook.coql(f"select id, Ascora_ID from {module} where Ascora_ID like "
                                         f"'{HOLDING_PREFIX}%' limit 200")
                self._holdings[module] = {r["Ascora_ID"][len(HOLDING_PREFIX):]: r["id"] for r in rows}
        return self._holdings[module]

    def _holding(self, module: str, name: str) -> str:
        """The id of the holding record called ``name`` (created on first use, by upsert)."""
        found = self._holding_ids(module).get(name)
        if found:
            return found
        if "Ascora_ID" not in self._meta(module):
            raise KeyError(f"{module} has no Ascora_ID field to mark the holding record {name!r}")
        name_field = {"Accounts": "Account_Name", "Deals": "Deal_Name", "Contacts": "Last_Name",
                      "Leads": "Last_Name"}.get(module, "Name")
        result = self.hook.upsert(module, [{name_field: name, "Ascora_ID": f"{HOLDING_PREFIX}{name}"}],
                                  ["Ascora_ID"])[0]
        if result.get("status") != "success":
            raise RuntimeError(f"Zoho CRM refused the holding record {module} {name!r}: {result}")
        log.info("created the holding record %s %r", module, name)
        self._holdings[module][name] = result["details"]["id"]
        return result["details"]["id"]

    def _drop_empty_holdings(self, module: str) -> None:
        """After a rollback, a holding record with no child left goes too (it was created for them)."""
        self._holdings.pop(module, None)
        fields = [n for n, f in self._meta(module).items()
                  if f["data_type"] == "lookup" and (f.get("lookup") or {}).get("module", {}).get("api_name") == module]
        for name, holding_id in list(self._holding_ids(module).items()):
            children = any(self.hook.coql(f"select id from {module} where {f} = '{holding_id}' limit 1")[0]
                           for f in fields)
            if not children:
                self.hook.delete(module, [holding_id])
                log.info("removed the holding record %s %r: nothing is under it any more", module, name)
        self._holdings.pop(module, None)

    # -- records ------------------------------------------------------------------------------
    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        if target == ATTACHMENTS:
            return [self._write_attachment(r) for r in records]
        results: dict[int, WriteResult] = {}
        wire: dict[int, dict[str, Any]] = {}
        for i, record in enumerate(records):
            try:
                wire[i] = self._wire_record(target, record.payload)
            except (KeyError, ValueError, TypeError) as exc:
                results[i] = WriteResult(record.source_id, None, error=str(exc), error_field=_field_in(str(exc)))
        creates = [i for i in wire if not records[i].dest_id]
        updates = [i for i in wire if records[i].dest_id]
        upsertable = bool(key_field) and key_field in self._meta(target)
        cost = sum(math.ceil(len(group) / RECORDS_PER_CREDIT) for group in (creates, updates) if group)
        if cost:
            self.hook.reserve(cost, f"write {len(creates) + len(updates)} {target} records")
        if creates:
            items = [wire[i] for i in creates]
            keys = [records[i].payload.get("Ascora_ID") for i in creates]
            if upsertable:
                answers = self.hook.upsert(target, items, [key_field], reserved=True)
                answers = self._replace_appended_rows(target, items, answers)
            elif target == NOTES and all(keys):
                from airflow_ascora_provider.hooks.create_once import InDoubt

                try:
                    answers = self._insert_notes_once(items, [str(k) for k in keys])
                except InDoubt as doubt:  # settled by the engine at the end of the unit
                    finish, answers = doubt.settle, []

                    def settled() -> list[WriteResult]:
                        answered = finish()
                        return [_result(records[i].source_id, answered[k], created=True)
                                for k, i in enumerate(creates)]

                    results.update(zip(creates, WriteResult.all_in_doubt(
                        [records[i].source_id for i in creates], settled)))
            else:
                answers = self.hook.insert(target, items, reserved=True)
            for i, answer in zip(creates, answers):
                results[i] = _result(records[i].source_id, answer, created=True)
        if updates:
            items = self._replacing_rows(target, [{"id": records[i].dest_id, **wire[i]} for i in updates])
            answers = self.hook.update(target, items, reserved=True)
            for i, answer in zip(updates, answers):
                results[i] = _result(records[i].source_id, answer, created=False)
        return [results[i] for i in range(len(records))]

    def _replace_appended_rows(self, target: str, items: list[dict[str, Any]],
                               answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upserts that matched a record already there (a retry after a lost answer or a batch cut short,
        or a crash's re-run) *appended* their subform rows (a quote's ``Quoted_Items``) to the rows the
        first attempt wrote, since rows sent without an id are added. Those records are updated once
        more with exactly their rows (the existing ones sent as ``_delete``)."""
        subforms = [n for n, f in self._meta(target).items() if f["data_type"] == "subform"]
        again = [i for i, (item, answer) in enumerate(zip(items, answers))
                 if answer.get("status") == "success" and answer.get("action") == "update"
                 and any(isinstance(item.get(n), list) and item[n] for n in subforms)]
        if not again:
            return answers
        self.hook.reserve(math.ceil(len(again) / RECORDS_PER_CREDIT), f"replace the rows of {len(again)} {target}")
        rows = self._replacing_rows(target, [{**items[i], "id": answers[i]["details"]["id"]} for i in again])
        answers = list(answers)
        for i, fixed in zip(again, self.hook.update(target, rows, reserved=True)):
            if fixed.get("status") != "success":
                answers[i] = fixed
        return answers

    def _insert_notes_once(self, items: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
        """Insert notes exactly once (``hooks.create_once``): they have no upsert, so after a failed
        attempt the notes that landed are found by the key line of their body and only the others are
        sent again, their credits reserved again. A batch that timed out and had not landed at the
        first look raises ``InDoubt`` (its ``settle()`` answers for every note of the batch)."""
        from airflow_ascora_provider.hooks.create_once import create_once

        def send(pending: list[int]) -> dict[int, dict[str, Any]]:
            return dict(zip(pending, self.hook.insert(NOTES, [items[i] for i in pending], reserved=True, once=True)))

        def landed(pending: list[int]) -> dict[int, dict[str, Any]]:
            found = self.find_by_source_ids(NOTES, "Ascora_ID", [keys[i] for i in pending])
            return {i: {"status": "success", "code": "SUCCESS", "details": {"id": found[keys[i]]}}
                    for i in pending if keys[i] in found}

        def reserve(pending: list[int]) -> None:
            self.hook.reserve(math.ceil(len(pending) / RECORDS_PER_CREDIT), f"write {len(pending)} Notes again")

        answers = create_once(list(range(len(items))), send, landed, what=f"Zoho CRM: inserting {len(items)} notes",
                              client_timeout=float(self.hook.settings()["timeout"]),
                              retry=self.hook.client.retry, before_resend=reserve, defer=True)
        return [answers[i] for i in range(len(items))]

    def _replacing_rows(self, target: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Updates whose subform rows replace the record's rows rather than add to them.

        Zoho appends subform rows sent without an id to the ones the record has; a changed quote
        must end with exactly its current lines, so each existing row is sent as ``_delete`` beside
        the new rows (one read of the records' rows, priced like any read).
        """
        subforms = [n for n, f in self._meta(target).items() if f["data_type"] == "subform"]
        wanted = [n for n in subforms if any(isinstance(item.get(n), list) and item[n] for item in items)]
        if not wanted:
            return items
        current = {row["id"]: row for row in self.hook.get_records(target, wanted, ids=[i["id"] for i in items])}
        out = []
        for item in items:
            item = dict(item)
            for name in wanted:
                if isinstance(item.get(name), list) and item[name]:
                    old = (current.get(item["id"]) or {}).get(name) or []
                    item[name] = [{"id": row["id"], "_delete": None} for row in old] + item[name]
            out.append(item)
        return out

    def _write_attachment(self, record: OutgoingRecord) -> WriteResult:
        from airflow_ascora_provider.hooks.zoho import ZohoApiError

        file, parent = record.payload.get("File"), _first_ref(record.payload.get("Parent_Id"))
        if not isinstance(file, FileRef) or parent is None:
            return WriteResult(record.source_id, None, error="an attachment needs a file and a parent record",
                               error_field="File" if not isinstance(file, FileRef) else "Parent_Id")
        name = record.payload.get("File_Name") or file.name or "file"
        try:
            if record.dest_id:  # Zoho cannot replace a file: the old one goes, the new one is uploaded
                self.delete_records(ATTACHMENTS, [record.dest_id])
            attachment_id = self._upload_once(parent.target_object, parent.dest_id, name, file.read_bytes(),
                                              file.content_type or "application/octet-stream")
        except ZohoApiError as exc:
            return WriteResult(record.source_id, None, error=str(exc), error_field="File")
        return WriteResult(record.source_id, f"{parent.target_object}:{parent.dest_id}:{attachment_id}",
                           created=not record.dest_id)

    def _upload_once(self, module: str, record_id: str, name: str, content: bytes, content_type: str) -> str:
        """Upload a file exactly once (``hooks.create_once``): an upload has no key, so after a failed
        attempt the record's attachments are listed, and a file of the same name and size not seen
        after an earlier failed attempt counts as landed (so a file already on the record under the
        same name and size before the first attempt would be taken for it)."""
        from airflow_ascora_provider.hooks.create_once import create_once

        seen: set[str] = set()  # matching files known to be there before an attempt

        def landed(_: list[int]) -> dict[int, str]:
            listed = self.hook.list_attachments(module, record_id)
            new = [a["id"] for a in listed if a.get("File_Name") == name and str(a.get("Size")) == str(len(content))
                   and a["id"] not in seen]
            seen.update(a["id"] for a in listed)
            return {0: new[0]} if new else {}

        def send(_: list[int]) -> dict[int, str]:
            return {0: self.hook.upload_attachment(module, record_id, name, content, content_type, once=True)}

        return create_once([0], send, landed, what=f"Zoho CRM: uploading {name} to {module} {record_id}",
                           client_timeout=float(self.hook.settings()["timeout"]),
                           retry=self.hook.client.retry)[0]

    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        fields = list(fields)
        if not dest_ids:
            return {}
        if target == ATTACHMENTS:
            return self._read_attachments(dest_ids, fields)
        meta = self._meta(target)
        wire = set()
        for name in fields:
            if target == NOTES and name == "Ascora_ID":
                wire.add("Note_Content")
            elif name == "What_Id":
                wire.add("What_Id")
            elif name in meta:
                wire.add(name)
        wire_fields = sorted(wire) or ["id"]
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wire_fields), 49):  # at most 50 fields per call, id included
            chunk = wire_fields[start:start + 49]
            for row in self.hook.get_records(target, chunk, ids=dest_ids):
                out.setdefault(row["id"], {}).update(row)
        return {i: self._decode(target, row, fields) for i, row in out.items()}

    def _read_attachments(self, dest_ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        from airflow_ascora_provider.hooks.zoho import ZohoApiError

        out: dict[str, dict[str, Any]] = {}
        listed: dict[tuple[str, str], dict[str, dict]] = {}
        for dest_id in dest_ids:
            module, record_id, attachment_id = dest_id.split(":", 2)
            if (module, record_id) not in listed:
                try:
                    listed[(module, record_id)] = {a["id"]: a for a in self.hook.list_attachments(module, record_id)}
                except ZohoApiError:
                    listed[(module, record_id)] = {}
            found = listed[(module, record_id)].get(attachment_id)
            if found is None:
                continue
            row: dict[str, Any] = {}
            if "File_Name" in fields:
                row["File_Name"] = found.get("File_Name")
            if "Parent_Id" in fields:
                row["Parent_Id"] = AttachTo((DestRef(module, record_id),))
            if "File" in fields:
                content = self.hook.download_attachment(module, record_id, attachment_id)
                row["File"] = FileRef(sha256=hashlib.sha256(content).hexdigest(), size=len(content),
                                      name=found.get("File_Name"))
            out[dest_id] = row
        return out

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        if target == ATTACHMENTS or not source_ids:
            return {}
        wanted = set(source_ids)
        if target == NOTES:  # no custom field to query: read the key line of every note's body
            found = {}
            for row in self.hook.get_records(NOTES, ["Note_Content"]):
                _, key = split_note_key(row.get("Note_Content"))
                if key in wanted:
                    found[key] = row["id"]
            return found
        rows = self.hook.coql_in(target, ["id", key_field], key_field, sorted(wanted))
        return {r[key_field]: r["id"] for r in rows if r.get(key_field) in wanted}

    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        from airflow_ascora_provider.hooks.zoho import ZohoApiError

        out: dict[str, str | None] = {}
        if target == ATTACHMENTS:
            for dest_id in dest_ids:
                module, record_id, attachment_id = dest_id.split(":", 2)
                try:
                    self.hook.delete_attachment(module, record_id, attachment_id)
                    out[dest_id] = None
                except ZohoApiError as exc:  # a file that is gone (or whose record is gone) is deleted
                    out[dest_id] = None if exc.code in ("INVALID_DATA", "INVALID_URL_PATTERN") else str(exc)
            return out
        for start in range(0, len(dest_ids), 100):
            chunk = dest_ids[start:start + 100]
            for dest_id, answer in zip(chunk, self.hook.delete(target, chunk)):
                gone = answer.get("status") == "success" or (
                    answer.get("code") == "INVALID_DATA" and (answer.get("details") or {}).get("id") == dest_id)
                out[dest_id] = None if gone else f"{answer.get('code')}: {answer.get('message')}"
        if any(v is None for v in out.values()) and self._holding_ids(target):
            self._drop_empty_holdings(target)
        return out

    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        if target == ATTACHMENTS:
            raise ValueError("attachments are never updated in place; nothing to restore")
        wire = self._wire_record(target, before_image)
        answer = self.hook.update(target, self._replacing_rows(target, [{"id": dest_id, **wire}]))[0]
        if answer.get("status") != "success":
            raise RuntimeError(f"Zoho CRM refused to restore {target} {dest_id}: {answer}")

    # -- bulk write ---------------------------------------------------------------------------
    def bulk_threshold(self, target: str) -> int | None:
        threshold = self.hook.settings()["bulk_threshold"]
        if threshold is None or target in BULK_MODULES_EXCLUDED:
            return None
        return threshold

    def submit_bulk_job(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> dict[str, Any]:
        """One upsert job on ``key_field`` for every record: zip CSV uploaded, job created (500 credits)."""
        if not key_field or key_field not in self._meta(target):
            raise ValueError(f"a Zoho bulk upsert needs the key field on {target}; got {key_field!r}")
        meta = self._meta(target)
        rows = [self._wire_record(target, r.payload) for r in records]
        columns = sorted({c for row in rows for c in row}, key=lambda c: (c != key_field, c))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])
        self.hook.reserve(BULK_WRITE_JOB_CREDITS + 1, f"bulk write of {len(records)} {target} records")
        file_id = self.hook.upload_bulk_file(f"{target}.csv", buffer.getvalue())
        mappings = []
        for index, column in enumerate(columns):
            mapping: dict[str, Any] = {"api_name": column, "index": index}
            if meta[column]["data_type"] in ("lookup", "ownerlookup"):
                mapping["find_by"] = "id"
            mappings.append(mapping)
        job_id = self.hook.create_bulk_write(target, file_id, mappings, operation="upsert", find_by=key_field)
        log.info("Zoho bulk write job %s: %d %s records", job_id, len(records), target)
        return {"id": job_id, "target": target, "key_field": key_field, "records": len(records)}

    def poll_bulk_job(self, job: dict[str, Any]) -> BulkJobStatus:
        status = self.hook.bulk_write_status(job["id"])
        state = str(status.get("status") or "").upper()
        file = ((status.get("resource") or [{}])[0].get("file") or {})
        processed = file.get("total_count")
        if state == "COMPLETED":
            return BulkJobStatus("done", f"{file.get('added_count', 0)} added, {file.get('updated_count', 0)} "
                                         f"updated, {file.get('skipped_count', 0)} skipped", processed)
        if state == "FAILED":
            return BulkJobStatus("failed", f"Zoho bulk write job {job['id']} failed", processed)
        return BulkJobStatus("running", state.lower(), processed)

    def bulk_job_results(self, job: dict[str, Any], records: list[OutgoingRecord]) -> list[WriteResult]:
        status = self.hook.bulk_write_status(job["id"])
        url = (status.get("result") or {}).get("download_url")
        if not url:
            raise RuntimeError(f"Zoho bulk write job {job['id']} has no result to download (status "
                               f"{status.get('status')})")
        with zipfile.ZipFile(io.BytesIO(self.hook.download(url))) as archive:
            text = archive.read(archive.namelist()[0]).decode("utf-8-sig")
        key_field = job["key_field"]
        by_key = {row.get(key_field): row for row in csv.DictReader(io.StringIO(text))}
        results = []
        for record in records:
            row = by_key.get(str(record.payload.get(key_field)))
            if row is None:
                results.append(WriteResult(record.source_id, None, error="not in the bulk job's result file"))
            elif row.get("STATUS") in ("ADDED", "UPDATED") and row.get("RECORD_ID"):
                results.append(WriteResult(record.source_id, row["RECORD_ID"], created=row["STATUS"] == "ADDED"))
            else:
                error = row.get("ERRORS") or row.get("STATUS") or "skipped by Zoho"
                parts = error.split()
                results.append(WriteResult(record.source_id, None, error=error,
                                           error_field=parts[1] if len(parts) > 1 else None))
        return results

    # -- planning helpers -----------------------------------------------------------------------
    def estimate_credits(self, counts: dict[str, int]) -> dict[str, Any]:
        """Calls and credits a load of ``counts`` (records per target) needs, against the budget.

        Batch writes cost 1 credit per 10 records (100 per call); a target at or above the bulk
        threshold goes as Bulk Write jobs (25,000 rows each: upload, job of 500 credits, polls,
        result download); attachments cost one upload each. Reads for before-images, lookups and
        the reconciliation are extra and not counted here.
        """
        limits = self.limits
        per_target: dict[str, dict[str, Any]] = {}
        total_calls = total_credits = 0
        for target, count in counts.items():
            if count <= 0:
                continue
            threshold = self.bulk_threshold(target)
            if target == ATTACHMENTS:
                calls, credits, method = count, count, "upload per file"
            elif threshold is not None and count >= threshold:
                jobs = math.ceil(count / 25_000)
                calls, credits, method = jobs * 4, jobs * (BULK_WRITE_JOB_CREDITS + 3), "bulk write"
            else:
                calls = math.ceil(count / 100)
                credits, method = math.ceil(count / RECORDS_PER_CREDIT), "batch upsert"
            per_target[target] = {"records": count, "calls": calls, "credits": credits, "method": method}
            total_calls += calls
            total_credits += credits
        budget = limits["credit_budget"]
        return {"edition": limits["edition"], "targets": per_target, "calls": total_calls, "credits": total_credits,
                "credits_per_day": limits["credits_per_day"], "credit_budget": budget,
                "windows_needed": math.ceil(total_credits / budget) if budget else 1,
                "custom_module_credits": CUSTOM_MODULE_CREDITS}

    def forecast_load(self, counts: dict[str, int]) -> LoadForecast:
        """Zoho meters API credits per day, so the schema report shows the credits and day windows."""
        estimate = self.estimate_credits(counts)
        return LoadForecast(
            facts={"edition": estimate["edition"], "API calls": estimate["calls"], "credits": estimate["credits"],
                   "credit budget": estimate["credit_budget"], "windows needed": estimate["windows_needed"]},
            per_target=estimate["targets"])

    def close(self) -> None:
        self.hook.close()

    def api_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.hook.call_stats())
        if self.hook._credits is not None:
            stats["credits_used_in_window"] = self.hook.credits.used()
        stats["api_reserve"] = self.hook.credit_reserve()
        return stats


# -- helpers -------------------------------------------------------------------------------------------
def split_note_key(content: str | None) -> tuple[str | None, str | None]:
    """Note body → (text without the key line, Ascora id from ``[Ascora ID: …]``)."""
    if not content:
        return None, None
    match = NOTE_KEY.search(content)
    if not match:
        return content, None
    return content[:match.start()] or None, match.group(1)


def encode_line_items(field: str, rows: Any) -> list[dict[str, Any]] | None:
    """Neutral line-item rows (``related_rows``) as a Zoho subform such as ``Quoted_Items``.

    Each row's product is a lookup ``{"id": …}`` to Products; only the columns Zoho's line items
    take are accepted, so a mapping naming another column fails on the record, naming the field.
    """
    if rows is None:
        return None
    wire = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {}
        for column, value in row.items():
            kind = LINE_ITEM_COLUMNS.get(column)
            if kind is None:
                raise KeyError(f"Zoho CRM line items ({field}) have no column {column!r} (row {i + 1}); "
                               f"known: {', '.join(LINE_ITEM_COLUMNS)}")
            item[column] = encode_value(value, kind)
        wire.append(item)
    return wire


def decode_line_items(rows: Any) -> tuple[dict[str, Any], ...] | None:
    """A subform read back as neutral rows: only the columns the plugin writes, empty cells left out
    (as ``related_rows`` leaves them out), so an unchanged quote compares equal."""
    if not rows:
        return None
    out = []
    for row in rows:
        values: dict[str, Any] = {}
        for column, kind in LINE_ITEM_COLUMNS.items():
            value = row.get(column)
            if kind == "lookup":
                value = DestRef(LINE_ITEM_PRODUCTS, value["id"]) if isinstance(value, dict) and value.get("id") else None
            else:  # amounts as plain numbers, as the row transforms give them
                value = decode_value(value, "double" if kind == "currency" else kind)
            if value is not None:
                values[column] = value
        out.append(values)
    return tuple(out)


def _first_ref(value: Any) -> DestRef | None:
    if isinstance(value, AttachTo):
        return value.refs[0] if value.refs else None
    return value if isinstance(value, DestRef) else None


def _result(source_id: str, answer: dict[str, Any], *, created: bool) -> WriteResult:
    if answer.get("status") == "success":
        # An upsert that matched an existing Ascora_ID (a retry after a crash) updated that record.
        return WriteResult(source_id, answer["details"]["id"], created=created and answer.get("action") != "update")
    details = answer.get("details") or {}
    field = details.get("api_name")
    if field == "$se_module":
        field = "What_Id"
    extra = f" (expected {details['expected_data_type']})" if details.get("expected_data_type") else ""
    if details.get("supported_values"):
        extra = f" (allowed: {', '.join(map(str, details['supported_values'][:20]))})"
    if details.get("maximum_length"):
        extra = f" (at most {details['maximum_length']} characters)"
    where = f" in {field}" if field else ""
    return WriteResult(source_id, None, error=f"{answer.get('code')}: {answer.get('message')}{where}{extra}",
                       error_field=field)


def _field_in(message: str) -> str | None:
    match = re.search(r"field '([^']+)'", message)
    return match.group(1) if match else None


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(map(str, value))
    return str(value)


def encode_value(value: Any, kind: str) -> Any:
    """A neutral value in a Zoho field of ``kind`` (its ``data_type``)."""
    if value is None:
        return None
    if isinstance(value, UserRef):
        return {"id": value.user_id}
    if isinstance(value, DestRef):
        return {"id": value.dest_id}
    if isinstance(value, Money):
        value = value.amount
    if isinstance(value, Emails | Phones):
        return value.primary
    if isinstance(value, Link):
        return value.url
    if isinstance(value, RichText):
        return value.markdown
    if isinstance(value, FullName):
        return value.display() or None
    if isinstance(value, bool):
        return value if kind == "boolean" else ("true" if value else "false")
    if isinstance(value, Decimal | int | float):
        if kind in ("integer", "bigint"):
            return int(value)
        if kind in ("text", "textarea", "phone"):
            return str(value)
        number = Decimal(str(value))
        return int(number) if number == number.to_integral_value() and abs(number) < 2**53 else float(number)
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if kind == "date":
            return value.date().isoformat()
        return value.replace(microsecond=0).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat() if kind != "datetime" else f"{value.isoformat()}T00:00:00+00:00"
    if kind == "multiselectpicklist" and isinstance(value, str):
        return [value]
    return value


def decode_value(wire: Any, kind: str, currency: str = "AUD") -> Any:
    """A Zoho value back to a neutral one (the inverse of :func:`encode_value` for what the diff compares)."""
    if wire is None or wire == "":
        return None
    match kind:
        case "currency":
            return Money(Decimal(str(wire)), currency)
        case "integer" | "bigint" | "double" | "decimal" | "percent":
            return Decimal(str(wire))
        case "date":
            return dt.date.fromisoformat(str(wire)[:10])
        case "datetime":
            return dt.datetime.fromisoformat(str(wire)).astimezone(dt.UTC)
        case "ownerlookup":
            return UserRef(wire["id"]) if isinstance(wire, dict) else None
    return wire


@hookimpl
def register_destinations(register):
    register(ZohoDestination)
