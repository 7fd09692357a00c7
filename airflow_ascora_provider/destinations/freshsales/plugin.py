"""Freshsales destination: neutral records to the Freshsales REST API and back.

Freshsales specifics this module owns (and nothing else):

* **Key.** Accounts, contacts, deals and leads are written with an *upsert* on a unique custom field
  holding the Ascora id (``cf_ascora_id``): a retry, a crash adoption or a bulk job can never make a
  second record. Products and custom-module records have no upsert: they are created, and after an
  interruption found again by the same field (filtered search). Notes and tasks have no custom
  fields: the Ascora id travels as a last line of their text and is found through their parent.
* **Bulk upsert** for accounts, contacts and deals when a load unit has many records pending: chunks
  of 100, an asynchronous job per chunk, polled by the engine's trigger; the ids are then found by
  the key field (one search per 100 records).
* **Dropdowns that take ids** (owner, deal stage, lead source, lifecycle stage, contact status) are
  written as labels by the mapping and resolved here through the selectors; an unknown label fails
  that record, naming the field, and is never sent raw.
* **Plan awareness.** Custom fields cannot be created through the API, so the schema step lists them
  for an admin (:meth:`FreshsalesDestination.admin_steps` says exactly what to create) and
  :meth:`FreshsalesDestination.check_plan` names the fields that will not fit the plan's caps.
  Every write first reserves its calls in the hook's hourly budget and stops with ``QuotaExhausted``
  before the budget is overrun; :meth:`FreshsalesDestination.estimate_load` says how long a load
  takes at the plan's limits.
* **Leads.** Accounts without the classic Leads module get contacts at lifecycle stage "Lead".
* **Quote lines** become deal products: the product is found by code (or name) or created, and the
  deal's product list is written whole (one row per product).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as all_ended
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_ascora_provider.destinations.freshsales.plans import (
    FIELD_TYPE_FOR,
    PLANS,
    LoadEstimate,
    PlannedField,
    check_fit,
    duration_for,
)
from airflow_ascora_provider.destinations.spec import (
    BulkJobStatus,
    Capabilities,
    Destination,
    DestField,
    LoadForecast,
    DestObject,
    DestUser,
    OutgoingRecord,
    QuotaExhausted,
    RateLimit,
    SchemaChange,
    WriteResult,
    hookimpl,
)
from airflow_ascora_provider.mapping.values import AttachTo, DestRef, FileRef, FullName, Money, RichText, UserRef

log = logging.getLogger(__name__)

#: Targets backed by a Freshsales entity with field settings: target → settings name.
RECORD_TARGETS = {"sales_account": "sales_accounts", "contact": "contacts", "deal": "deals", "lead": "leads",
                  "product": "products"}
#: Standard dropdowns that take ids from a selector (a label is a 400).
SELECTOR_FIELDS = {"owner_id": "owners", "deal_stage_id": "deal_stages", "lead_source_id": "lead_sources",
                   "lifecycle_stage_id": "lifecycle_stages", "contact_status_id": "contact_statuses"}
#: Standard lookups: field → target (``contacts_added_list`` takes a list of ids).
STANDARD_LOOKUPS = {"sales_account_id": "sales_account", "contacts_added_list": "contact"}
MANY_LOOKUPS = frozenset({"contacts_added_list"})
FROM_FS_TYPE = {
    "text": "text", "textarea": "long_text", "number": "number", "date": "date", "checkbox": "boolean",
    "dropdown": "picklist", "radio": "picklist", "multi_select_dropdown": "multi_picklist", "lookup": "lookup",
    "email": "email", "phone_number": "phone", "url": "url", "auto_complete": "lookup", "formula": "system",
}
TARGETABLE_TYPE = {"sales_account": "SalesAccount", "contact": "Contact", "deal": "Deal", "lead": "Lead"}
KEY_FIELD = "cf_ascora_id"
KEY_LINE = "Ascora ID: "  # last line of a note's or task's text: where their Ascora id lives
TASK_STATUS = {"Open": 0, "Completed": 1}
LEAD_STAGE = "Lead"  # lifecycle stage of contacts that stand in for leads
PRODUCT_MARK = "Created by the Ascora migration for quote lines."
RESULT_ERRORS = frozenset({400, 404, 409, 413, 422})  # a refusal of this record, not of the call
BULK_TARGETS = frozenset({"sales_account", "contact", "deal"})
ATTACH_FIELD = "targets"
#: New records of a bulk-capable entity in one batch from which a bulk upsert (3 calls) is cheaper
#: in calls than single upserts (one each).
SYNC_BULK_MIN = 4


class _Refused(Exception):
    """A value this plugin cannot put on the wire for one record (the record fails, the batch goes on)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class _Target:
    """How one mapping target is written: its kind, Freshsales entity and field metadata."""

    name: str
    kind: str  # record | module | activity | document | deal_product
    entity: Any  # hooks.freshsales.Entity
    fields: dict[str, dict] = field(default_factory=dict)  # raw Freshsales field metadata by name
    upsert: bool = False
    as_contact_lead: bool = False  # a lead written as a contact at lifecycle stage Lead
    custom_module: bool = False
    settings: str | None = None


class FreshsalesDestination(Destination):
    name = "freshsales"
    label = "Freshsales"
    connection_type = "freshsales"
    default_mapping = Path(__file__).with_name("mapping.yaml")
    capabilities = Capabilities(
        batch_size=100,
        rate_limit=RateLimit(400, 60.0),
        external_id="native_upsert",
        creatable=frozenset({"custom_object"}),  # custom modules only; fields and options are made by an admin
        manual=frozenset({"custom_field", "picklist_option"}),
        plan_limits={p.name: {"requests_per_hour": p.requests_per_hour, "requests_per_minute": p.requests_per_minute,
                              "custom_fields_per_entity": p.total} for p in PLANS.values()},
        custom_object_fields=frozenset({"name"}),
        max_file_bytes=25 * 1024 * 1024,
        max_concurrency=2,
    )
    bulk_poll_interval = 5.0
    #: A bulk upsert inside a batch write: the first look at the job after this many seconds, then
    #: twice as long each time (at most 8 s), for at most ``bulk_wait_limit`` seconds in all.
    bulk_first_wait = 0.5
    bulk_wait_limit = 600.0
    #: Records of a batch written one call each (notes, tasks, files, updates) are sent this many at a
    #: time, inside the same pace and hourly budget: a record that waits (a back-off, a call that
    #: stalled) holds up only itself, not the records behind it.
    concurrent_writes = 4

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        super().__init__(conn_id, **options)
        from airflow_ascora_provider.hooks.freshsales import FreshsalesHook

        keys = ("base_url", "api_key", "plan", "requests_per_hour", "requests_per_minute", "hourly_reserve",
                "quota_window_seconds", "batch_size", "bulk_threshold", "timeout", "request_budget")
        self.hook = FreshsalesHook(freshsales_conn_id=conn_id or "freshsales_default",
                                   **{k: options[k] for k in keys if options.get(k) is not None})
        self._targets: dict[str, _Target] | None = None
        self._selectors: dict[str, list[dict]] = {}
        self._suspects: dict[str, set[str]] = defaultdict(set)  # creates that may have landed before a crash
        self._products: dict[str, dict] = {}
        self._not_found: dict[str, bool] = {}  # products the last batch search did not find
        self._lead_contacts: dict[str, bool] = {}
        self._writers: ThreadPoolExecutor | None = None

    @property
    def batch_size(self) -> int:
        """The connection's batch size, and never more than a quarter of the hourly budget, so one
        batch (and the calls around it) always fits into a fresh hour."""
        per_window = self.hook.quota.per_window
        cap = min(self.capabilities.batch_size, self.hook.settings()["batch_size"])
        return max(1, min(cap, per_window // 4) if per_window else cap)

    # -- metadata -----------------------------------------------------------------------------
    def _metadata(self, refresh: bool = False) -> dict[str, _Target]:
        if self._targets is not None and not refresh:
            return self._targets
        from airflow_ascora_provider.hooks.freshsales import ENTITIES, custom_module_entity

        targets: dict[str, _Target] = {}
        contact_fields = None
        for name, settings in RECORD_TARGETS.items():
            raw = self.hook.fields(settings)
            if name == "contact":
                contact_fields = raw
            if raw is None and name == "lead":  # no Leads module: contacts at lifecycle stage Lead
                targets[name] = _Target(name, "record", ENTITIES["contact"], _by_name(contact_fields or []),
                                        upsert=True, as_contact_lead=True, settings="contacts")
                continue
            if raw is None:
                continue
            entity = ENTITIES[name]
            targets[name] = _Target(name, "record" if entity.upsert else "module", entity, _by_name(raw),
                                    upsert=entity.upsert, settings=settings)
        for module in self.hook.module_customizations():
            entity_name = module["entity_name"]
            target = entity_name[3:] if entity_name.startswith("cm_") else entity_name
            targets[target] = _Target(target, "module", custom_module_entity(entity_name),
                                      _by_name(self.hook.fields(entity_name) or []), custom_module=True,
                                      settings=entity_name)
        targets["task"] = _Target("task", "activity", ENTITIES["task"])
        targets["note"] = _Target("note", "activity", ENTITIES["note"])
        targets["document"] = _Target("document", "document", ENTITIES["document"])
        targets["deal_product"] = _Target("deal_product", "deal_product", ENTITIES["deal"])
        self._targets = targets
        return targets

    def _target(self, name: str) -> _Target:
        targets = self._metadata()
        if name not in targets:
            targets = self._metadata(refresh=True)
        try:
            return targets[name]
        except KeyError:
            raise KeyError(f"Freshsales has no {name!r} (run the schema step, or create the custom module)") from None

    def _selector(self, name: str, refresh: bool = False) -> list[dict]:
        if name not in self._selectors or refresh:
            self._selectors[name] = self.hook.selector(name)
        return self._selectors[name]

    def _selector_id(self, selector: str, label: Any, field_name: str) -> int:
        wanted = str(label).strip().casefold()
        for refresh in (False, True):
            for row in self._selector(selector, refresh=refresh):
                if str(row.get("name", "")).strip().casefold() == wanted:
                    return int(row["id"])
        known = ", ".join(str(r.get("name")) for r in self._selector(selector))
        raise _Refused(f"{field_name}: no {selector[:-1].replace('_', ' ')} named {label!r} in Freshsales "
                       f"(known: {known}); add it in Freshsales or change the mapping", field_name)

    def _selector_label(self, selector: str, value: Any) -> str | None:
        if value is None:
            return None
        for row in self._selector(selector):
            if row.get("id") == value or str(row.get("id")) == str(value):
                return row.get("name")
        return str(value)

    def describe_schema(self) -> dict[str, DestObject]:
        schema: dict[str, DestObject] = {}
        self._selectors.clear()  # stages and sources an admin added since are part of the schema
        for name, target in self._metadata(refresh=True).items():
            fields: dict[str, DestField] = {}
            for fname, raw in target.fields.items():
                if target.as_contact_lead and fname in ("sales_account_id", "lifecycle_stage_id"):
                    continue  # set by the plugin for contacts standing in for leads
                selector = SELECTOR_FIELDS.get(fname)
                options: tuple[str, ...] = ()
                if selector and selector != "owners":
                    options = tuple(r["name"] for r in self._selector(selector))
                elif raw.get("choices"):
                    options = tuple(c["value"] for c in raw["choices"])
                lookup = STANDARD_LOOKUPS.get(fname) or _lookup_target(raw)
                fields[fname] = DestField(
                    name=fname, type="lookup" if fname == "owner_id" else FROM_FS_TYPE.get(raw.get("type"), "system"),
                    required=bool(raw.get("required")), custom=not raw.get("default", True),
                    unique=bool(raw.get("unique")), options=options, lookup_target=lookup)
            fields.update(_virtual_fields(target))
            label = target.name.replace("_", " ").title()
            schema[name] = DestObject(name=name, label=label, custom=target.custom_module, fields=fields,
                                      stored_as="contact" if target.as_contact_lead else None)
        return schema

    def apply_schema_change(self, change: SchemaChange) -> None:
        """Only custom modules can be created through the API (``settings/module_customizations``)."""
        if change.kind != "custom_object":
            raise ValueError(f"Freshsales cannot create a {change.kind} through its API; an admin must "
                             f"({change.describe()}); see admin_steps()")
        spec = change.spec
        module = self.hook.create_module(spec.label, spec.label_plural)
        if module.get("entity_name") != f"cm_{change.object}":
            raise ValueError(f"Freshsales named the new module {module.get('entity_name')!r}, not "
                             f"'cm_{change.object}': give the custom object a label that spells its name")
        self._targets = None

    def custom_field_name(self, label: str) -> str:
        """``"ascora Switchboard Type"`` → ``cf_ascora_switchboard_type`` (Freshsales' own rule for API names)."""
        spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", label)  # GasPressureKpa → Gas Pressure Kpa
        words = re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")
        return f"cf_{words or 'field'}"[:64]

    # -- plan -----------------------------------------------------------------------------------
    def check_plan(self, changes: Iterable[SchemaChange]) -> list[str]:
        """Problems with the custom fields the schema plan needs on this account's plan.

        Existing custom fields take their slots first; the new fields past a cap are named. Meant to
        run with the schema plan, before anything is written (an admin could not create them anyway).
        """
        targets = self._metadata(refresh=True)
        planned: list[PlannedField] = []
        seen: set[tuple[str, str]] = set()
        for target in targets.values():
            entity = target.settings or target.name
            for fname, raw in target.fields.items():
                if not raw.get("default", True) and (entity, fname) not in seen:
                    seen.add((entity, fname))
                    planned.append(PlannedField(entity, fname, raw.get("type", "text"), True, target.custom_module))
        for change in changes:
            if change.kind != "custom_field":
                continue
            target = targets.get(change.object)
            entity = (target.settings if target else None) or f"cm_{change.object}"
            if (entity, change.field) in seen:
                continue
            seen.add((entity, change.field))
            module = target.custom_module if target else True
            planned.append(PlannedField(entity, change.field, FIELD_TYPE_FOR.get(change.spec.type, "text"), False, module))
        plan = self.hook.plan
        problems = check_fit(plan, planned).problems
        if plan.total == 0 and any(not f.exists for f in planned):
            problems.insert(0, f"the {plan.label} plan has no custom fields; the mapping needs "
                               f"{sum(not f.exists for f in planned)}")
        return problems

    def admin_steps(self, changes: Iterable[SchemaChange]) -> list[dict[str, Any]]:
        """What an admin creates in Freshsales (Admin Settings → Module customisation) for the manual changes.

        One entry per field (module, API name, label, Freshsales type, choices, unique, lookup target)
        and per missing dropdown value (a deal stage, lead source ...), in the order to create them.
        """
        targets = self._metadata()
        steps: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()  # leads kept as contacts share the contacts' fields
        for change in changes:
            if change.by_api:
                continue
            target = targets.get(change.object)
            entity = (target.settings if target else None) or f"cm_{change.object}"
            if (entity, f"{change.kind}:{change.field}") in seen:
                continue
            seen.add((entity, f"{change.kind}:{change.field}"))
            if change.kind == "custom_field":
                spec = change.spec
                fs_type = FIELD_TYPE_FOR.get(spec.type, "text")
                step = {"action": "create_field", "entity": entity, "name": change.field, "label": spec.label,
                        "type": fs_type, "unique": spec.unique}
                if spec.options:
                    step["choices"] = list(spec.options)
                if fs_type == "lookup":
                    lookup = targets.get(spec.lookup_target)
                    step["lookup"] = lookup.entity.root if lookup else spec.lookup_target
                steps.append(step)
            elif change.kind == "picklist_option":
                selector = SELECTOR_FIELDS.get(change.field)
                if selector:
                    steps += [{"action": "add_selector_value", "selector": selector, "value": v} for v in change.spec]
                else:
                    steps.append({"action": "add_choices", "entity": entity, "name": change.field,
                                  "values": list(change.spec)})
        return steps

    def estimate_load(self, counts: Mapping[str, int], *, bulk: bool = True) -> LoadEstimate:
        """API calls and wall-clock time to write ``counts`` records per target at the plan's limits.

        Upper bounds: one call per record (an upsert or create), one per 100 with the bulk upsert (job,
        two polls, one search for the ids), quote lines one product lookup and two deal calls each.
        """
        settings = self.hook.settings()
        threshold = settings["bulk_threshold"]
        calls: dict[str, int] = {}
        for target, n in counts.items():
            if n <= 0:
                continue
            if bulk and target in BULK_TARGETS and threshold and n >= threshold:
                calls[target] = math.ceil(n / 100) * 4
            elif target == "deal_product":
                calls[target] = n * 3
            else:
                calls[target] = n
        total = sum(calls.values())
        per_hour = max(0, (settings["requests_per_hour"] or 0) - settings["hourly_reserve"])
        per_minute = int(settings["requests_per_minute"] or self.hook.plan.requests_per_minute)
        return LoadEstimate(plan=self.hook.plan.name, calls=total, calls_per_target=calls,
                            requests_per_hour=per_hour, requests_per_minute=per_minute,
                            seconds=duration_for(total, per_hour, per_minute))

    def forecast_load(self, counts: dict[str, int]) -> LoadForecast:
        """The hourly budget, not the schema, is what makes a Freshsales load slow: say so up front."""
        estimate = self.estimate_load(counts)
        return LoadForecast(
            facts={"plan": estimate.plan, "API calls": estimate.calls, "hours": round(estimate.hours, 2),
                   "calls per hour": estimate.requests_per_hour, "calls per minute": estimate.requests_per_minute},
            per_target={target: {"records": counts[target], "calls": calls}
                        for target, calls in estimate.calls_per_target.items()})

    # -- users ----------------------------------------------------------------------------------
    def list_users(self) -> list[DestUser]:
        return [DestUser(id=str(u["id"]), email=(u.get("email") or "").strip(), name=u.get("display_name") or "",
                         active=bool(u.get("is_active", True))) for u in self._selector("owners", refresh=True)]

    # -- encoding -------------------------------------------------------------------------------
    def _encode(self, target: _Target, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Neutral payload → Freshsales body (custom fields under ``custom_field``). Raises _Refused."""
        body: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        key = None
        for name, value in payload.items():
            if name == "full_name":
                body["first_name"] = value.first if isinstance(value, FullName) else None
                body["last_name"] = value.last if isinstance(value, FullName) else None
            elif name == ATTACH_FIELD:
                body.update(self._targetable(value))
            elif name == KEY_FIELD and target.kind in ("activity", "document"):
                key = value  # notes and tasks keep it as a line of text; documents cannot hold it
            elif name == "status" and target.name == "task":
                if value not in TASK_STATUS:
                    raise _Refused(f"status: {value!r} is not a task status ({', '.join(TASK_STATUS)})", name)
                body[name] = TASK_STATUS[value]
            elif name in SELECTOR_FIELDS and not isinstance(value, UserRef):
                body[name] = None if value is None else self._selector_id(SELECTOR_FIELDS[name], value, name)
            elif name.startswith("cf_"):
                custom[name] = _wire(target.fields.get(name, {}), value, name)
            elif name in MANY_LOOKUPS:
                body[name] = self._contact_ids(value)
            else:
                wire = _wire(target.fields.get(name, {}), value, name)
                body[name] = ([wire] if wire is not None else []) if name in MANY_LOOKUPS else wire
        if target.kind == "activity":
            text_field = "description"
            body[text_field] = _with_key(body.get(text_field), key)
        if custom:
            body["custom_field"] = custom
        if target.as_contact_lead:
            body["lifecycle_stage_id"] = self._selector_id("lifecycle_stages", LEAD_STAGE, "lifecycle_stage_id")
        return body

    def _contact_ids(self, value: Any) -> list[int]:
        """A deal's contacts: contact references, and leads where leads are contacts (accounts without
        the Leads module). A real lead cannot be on a deal: completion leaves such references out of
        the mapping (``dropped_links``), so one arriving here is a mapping error, refused by name."""
        refs = [value] if isinstance(value, DestRef) else list(value or ())
        ids: list[int] = []
        for ref in refs:
            if ref.target_object == "lead" and not self._target("lead").as_contact_lead:
                raise _Refused("contacts_added_list: a deal lists contacts, and this account's leads are not "
                               "contacts (it has the Leads module); complete the mapping again", "contacts_added_list")
            if int(ref.dest_id) not in ids:
                ids.append(int(ref.dest_id))
        return ids

    def _targetable(self, value: Any) -> dict[str, Any]:
        refs = value.refs if isinstance(value, AttachTo) else ()
        if not refs:
            raise _Refused("the record has no parent to attach to", ATTACH_FIELD)
        ref = refs[0]
        kind = TARGETABLE_TYPE.get(ref.target_object)
        if ref.target_object == "lead" and self._target("lead").as_contact_lead:
            kind = "Contact"
        if kind is None:
            raise _Refused(f"Freshsales cannot attach to a {ref.target_object}", ATTACH_FIELD)
        return {"targetable_type": kind, "targetable_id": int(ref.dest_id)}

    def _decode(self, target: _Target, record: dict[str, Any], fields: Iterable[str],
                side: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        custom = record.get("custom_field") or {}
        for name in fields:
            if name == "full_name":
                first, last = record.get("first_name") or None, record.get("last_name") or None
                out[name] = FullName(first, last) if first or last else None
            elif name == ATTACH_FIELD:
                out[name] = self._attach_ref(record)
            elif name == KEY_FIELD and target.kind == "activity":
                out[name] = _split_key(record.get("description"))[1]
            elif name == KEY_FIELD and target.kind == "document":
                continue  # not stored: write-only
            elif name == "description" and target.kind == "activity":
                out[name] = _split_key(record.get("description"))[0]
            elif name == "status" and target.name == "task":
                out[name] = next((k for k, v in TASK_STATUS.items() if v == record.get("status")), None)
            elif name == "owner_id":
                out[name] = UserRef(str(record[name])) if record.get(name) is not None else None
            elif name in SELECTOR_FIELDS:
                out[name] = self._selector_label(SELECTOR_FIELDS[name], record.get(name))
            elif name == "contacts_added_list":
                ids = [str(i) for i in record.get("contact_ids") or []]
                refs = tuple(DestRef("contact", i) for i in ids)
                out[name] = refs[0] if len(refs) == 1 else refs or None
            elif name.startswith("cf_"):
                out[name] = _unwire(target.fields.get(name, {}), custom.get(name), name)
            elif name in record or name in target.fields:
                out[name] = _unwire(target.fields.get(name, {}), record.get(name), name)
        return out

    def _attach_ref(self, record: dict[str, Any]) -> AttachTo | None:
        kind, target_id = record.get("targetable_type"), record.get("targetable_id")
        if not kind or target_id is None:
            return None
        target = next((t for t, k in TARGETABLE_TYPE.items() if k == kind), kind)
        if target == "contact" and self._target("lead").as_contact_lead and self._is_lead_contact(str(target_id)):
            target = "lead"
        return AttachTo((DestRef(target, str(target_id)),))

    def _is_lead_contact(self, contact_id: str) -> bool:
        if contact_id not in self._lead_contacts:
            from airflow_ascora_provider.hooks.freshsales import ENTITIES

            got = self.hook.get(ENTITIES["contact"], contact_id) or {}
            stage = (got.get("contact") or {}).get("lifecycle_stage_id")
            self._lead_contacts[contact_id] = self._selector_label("lifecycle_stages", stage) == LEAD_STAGE
        return self._lead_contacts[contact_id]

    # -- writing ----------------------------------------------------------------------------------
    def _cold_calls(self) -> int:
        """Calls the metadata and selector caches still need (an upper bound), reserved with a write."""
        metadata = 0 if self._targets is not None else len(RECORD_TARGETS) + 3
        return metadata + sum(1 for s in set(SELECTOR_FIELDS.values()) if s not in self._selectors)

    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        """Encode every record, reserve the batch's calls in the hourly budget, then send.

        The reservation happens before anything is sent: a batch never stops half-way because the
        budget ran out (``QuotaExhausted`` is raised with nothing written).
        """
        self.hook.reserve(self._cold_calls(), f"reading Freshsales metadata before writing {target}")
        t = self._target(target)
        if t.kind == "deal_product":
            return self._write_deal_products(records)
        results: dict[int, WriteResult] = {}
        bodies: dict[int, dict[str, Any]] = {}
        for i, record in enumerate(records):
            try:
                bodies[i] = self._encode(t, record.payload)
            except _Refused as exc:
                results[i] = WriteResult(record.source_id, None, error=str(exc), error_field=exc.field)
        bulk = self._bulk_in_batch(t, records, bodies, key_field)
        if bulk:
            results.update(self._write_bulk(t, records, {i: bodies.pop(i) for i in bulk}, key_field))
        suspects = [i for i in bodies if not records[i].dest_id and records[i].source_id in self._suspects[target]]
        replaced = sum(1 for i in bodies if t.kind == "document" and records[i].dest_id)  # old file deleted
        self.hook.reserve(len(bodies) + len(suspects) + replaced, f"a batch of {len(bodies)} {target} records")
        results.update(self._write_each(t, records, bodies, key_field, set(suspects)))
        for i in suspects:
            self._suspects[target].discard(records[i].source_id)
        return [results[i] for i in range(len(records))]

    def _write_each(self, t: _Target, records: list[OutgoingRecord], bodies: dict[int, dict[str, Any]],
                    key_field: str | None, suspects: set[int]) -> dict[int, WriteResult]:
        """Write ``bodies`` one call each, ``concurrent_writes`` at a time; an error other than a record's
        refusal is raised once every call in flight has ended (the ledger then sees none of the batch,
        as after a crash, and the retry adopts what was written)."""
        def write(i: int) -> WriteResult:
            try:
                return self._write_one(t, records[i], bodies[i], key_field, suspect=i in suspects)
            except _Refused as exc:
                return WriteResult(records[i].source_id, None, error=str(exc), error_field=exc.field)

        if len(bodies) < 2 or self.concurrent_writes < 2:
            return {i: write(i) for i in bodies}
        if self._writers is None:
            self._writers = ThreadPoolExecutor(self.concurrent_writes, thread_name_prefix="freshsales-write")
        futures = {i: self._writers.submit(write, i) for i in bodies}
        all_ended(futures.values())
        return {i: future.result() for i, future in futures.items()}

    def _bulk_in_batch(self, t: _Target, records: list[OutgoingRecord], bodies: Mapping[int, dict[str, Any]],
                       key_field: str | None) -> list[int]:
        """The records of this batch that go out in a bulk upsert rather than one upsert each.

        New records (no Freshsales id yet) of an entity with a bulk upsert, keyed by a unique field,
        when there are at least :data:`SYNC_BULK_MIN` of them: a bulk upsert of up to 100 records costs
        three calls (the job, its status, one search for the ids) where single upserts cost one a
        record, and it is the account's hourly call budget that bounds a Freshsales load. Records
        with an id are updated one by one (a record deleted in Freshsales is then reported, not
        re-created). ``bulk_threshold`` 0 on the connection turns bulk upserts off here too.
        """
        enabled = bool(self.hook.settings()["bulk_threshold"])
        if not (enabled and t.kind == "record" and t.upsert and t.entity.bulk and key_field):
            return []
        new = [i for i in bodies if not records[i].dest_id]
        return new if len(new) >= SYNC_BULK_MIN else []

    def _write_bulk(self, t: _Target, records: list[OutgoingRecord], bodies: dict[int, dict[str, Any]],
                    key_field: str) -> dict[int, WriteResult]:
        """Bulk upsert ``bodies`` (100 a job), wait for the jobs, then read the ids by the key field.

        An upsert on the Ascora id is idempotent, so a job sent twice (a lost answer retried) or a
        batch sent again after a crash writes nothing twice. Records a job refused come back with the
        job's message; the rest are found by one filtered search per 100 records.
        """
        from airflow_ascora_provider.hooks.freshsales import BULK_CAP, messages_of
        from airflow_ascora_provider.hooks.http_client import ApiError

        order = list(bodies)
        chunks = [order[s:s + BULK_CAP] for s in range(0, len(order), BULK_CAP)]
        # The job, its status read (a second read in reserve) and the search for the ids, per job.
        self.hook.reserve(4 * len(chunks), f"a bulk upsert of {len(order)} {t.name} records")
        jobs = {self.hook.bulk_upsert(t.entity, key_field, [bodies[i] for i in chunk]): chunk
                for chunk in chunks}
        errors: dict[int, str] = {}
        waiting, wait, deadline = dict(jobs), self.bulk_first_wait, time.monotonic() + self.bulk_wait_limit
        while waiting:
            self.hook.client.retry.sleep(wait)  # every wait on the service through the policy's clock
            for job_id in list(waiting):
                status = self.hook.job_status(job_id)
                state = str(status.get("status") or "").lower()
                if state in ("failed", "error"):
                    raise ApiError(f"Freshsales bulk upsert job {job_id} of {t.name} {state}: {status}")
                if state not in ("completed", "complete", "done", "success"):
                    continue
                for failure in status.get("failed_records") or []:
                    index = waiting[job_id][int(failure["index"])]
                    errors[index] = "; ".join(messages_of(failure)) or "refused by the bulk upsert"
                del waiting[job_id]
            if waiting and time.monotonic() > deadline:
                raise ApiError(f"Freshsales bulk upsert jobs {sorted(waiting)} of {t.name} still running "
                               f"after {self.bulk_wait_limit:.0f}s")
            wait = min(2 * wait, 8.0)
        wanted = [records[i].source_id for i in order if i not in errors]
        found = self.find_by_source_ids(t.name, key_field, wanted) if wanted else {}
        out: dict[int, WriteResult] = {}
        for i in order:
            record = records[i]
            if i in errors:
                out[i] = WriteResult(record.source_id, None, error=errors[i],
                                     error_field=_field_of(errors[i], record.payload))
            elif record.source_id in found:
                out[i] = WriteResult(record.source_id, found[record.source_id], created=True)
            else:
                out[i] = WriteResult(record.source_id, None, error=(
                    "the bulk upsert reported no error, but no record holds this Ascora id"))
            self._suspects[t.name].discard(record.source_id)
        return out

    def _write_one(self, t: _Target, record: OutgoingRecord, body: dict[str, Any], key_field: str | None,
                   *, suspect: bool) -> WriteResult:
        """Write one record; a create that timed out and has not landed yet comes back in doubt, and its
        ``settle`` (called by the engine once the unit's other records went out) finishes it."""
        from airflow_ascora_provider.hooks.create_once import InDoubt

        try:
            return self._answer(t, record, lambda: self._send_one(t, record, body, key_field, suspect=suspect))
        except InDoubt as doubt:
            finish = doubt.settle  # ``doubt`` itself is unbound when the except block ends
            return WriteResult(record.source_id, None, settle=lambda: self._answer(t, record, lambda: WriteResult(
                record.source_id, str(finish()[0]["id"]), created=True)))

    def _answer(self, t: _Target, record: OutgoingRecord, write: Callable[[], WriteResult]) -> WriteResult:
        """``write()``'s result, or the record's refusal when Freshsales refused it."""
        from airflow_ascora_provider.hooks.freshsales import FreshsalesApiError

        try:
            return write()
        except FreshsalesApiError as exc:
            if exc.status not in RESULT_ERRORS:
                raise
            message = "; ".join(exc.messages) or str(exc)
            if exc.status == 404 and record.dest_id:
                message = f"{t.name} {record.dest_id} no longer exists in Freshsales ({message})"
            return WriteResult(record.source_id, None, error=message, error_field=_field_of(message, record.payload))

    def _send_one(self, t: _Target, record: OutgoingRecord, body: dict[str, Any], key_field: str | None,
                  *, suspect: bool) -> WriteResult:
        if t.kind == "document":
            return self._write_document(t, record, body, suspect)
        dest_id = record.dest_id
        if dest_id is None and suspect:
            dest_id = self._find_landed(t, record, body, key_field)
        if dest_id is not None:
            row = self.hook.update(t.entity, dest_id, body)
            return WriteResult(record.source_id, str(row["id"]))
        if t.upsert and key_field:
            row = self.hook.upsert(t.entity, {key_field: record.source_id}, body)
        else:
            row = self._send_once(t.name, lambda: self.hook.create(t.entity, body, retry=False),
                                  lambda: self._find_landed(t, record, body, key_field), defer=True)
        return WriteResult(record.source_id, str(row["id"]), created=True)

    def _send_once(self, what: str, send: Callable[[], dict[str, Any]], find: Callable[[], str | None], *,
                   defer: bool = False) -> dict[str, Any]:
        """Create something that has no upsert (a product, a module record, a note, a file) exactly once
        (``hooks.create_once``): ``find`` tells whether an attempt that failed landed. A wait longer
        than the client's limit for one (the hourly budget is spent) pauses the load instead.
        ``defer``: a create that timed out raises ``InDoubt`` rather than wait for it to land."""
        from airflow_ascora_provider.hooks.create_once import backoff, create_once
        from airflow_ascora_provider.hooks.freshsales import LONG_WAIT, FreshsalesApiError

        def wait(exc: Exception, attempt: int) -> float:
            asked = exc.retry_after if isinstance(exc, FreshsalesApiError) else None
            seconds = asked if asked is not None and asked > LONG_WAIT else backoff(exc, attempt, self.hook.client.retry)
            if seconds > LONG_WAIT:
                raise QuotaExhausted(f"Freshsales asked to wait {seconds:.0f}s before the next call: the hourly "
                                     "API budget is spent", resume_at=dt.datetime.now(dt.UTC)
                                     + dt.timedelta(seconds=seconds)) from exc
            return seconds

        def landed(_: list[int]) -> dict[int, dict[str, Any]]:
            found = find()
            return {} if found is None else {0: {"id": found}}

        return create_once([0], lambda _: {0: send()}, landed, what=f"freshsales: creating a {what}",
                           client_timeout=float(self.hook.settings()["timeout"]),
                           retry=self.hook.client.retry, wait=wait, defer=defer)[0]

    def _find_landed(self, t: _Target, record: OutgoingRecord, body: dict[str, Any],
                     key_field: str | None) -> str | None:
        """The id of this record if an earlier attempt already wrote it, else None."""
        if t.kind in ("record", "module") and key_field:
            found = self.find_by_source_ids(t.name, key_field, [record.source_id])
            return found.get(record.source_id)
        if t.kind == "activity":
            key = record.payload.get(KEY_FIELD)
            for row in self._children(body, t.entity.path):
                if key and _split_key(row.get("description"))[1] == key:
                    return str(row["id"])
        return None

    def _children(self, body: dict[str, Any], kind: str) -> list[dict]:
        """The notes/tasks/documents already on the record ``body`` attaches to."""
        from airflow_ascora_provider.hooks.freshsales import ENTITIES

        parent = next((t for t, k in TARGETABLE_TYPE.items() if k == body.get("targetable_type")), None)
        if parent is None:
            return []
        got = self.hook.get(ENTITIES[parent], str(body["targetable_id"]), include=[kind]) or {}
        return list(got.get(kind) or [])

    def _write_document(self, t: _Target, record: OutgoingRecord, body: dict[str, Any], suspect: bool) -> WriteResult:
        """Upload the file to its record. Documents cannot be changed: an update uploads the new file
        and deletes the old one. A possibly landed upload is matched by name and size on the parent."""
        file = next((v for v in record.payload.values() if isinstance(v, FileRef)), None)
        if file is None:
            raise _Refused("the record has no file to upload", "file")

        def landed() -> str | None:
            for row in self._children(body, "documents"):
                if row.get("name") == (file.name or "file") and row.get("content_file_size") == file.size:
                    return str(row["id"])
            return None

        if record.dest_id is None and suspect:
            found = landed()
            if found:
                return WriteResult(record.source_id, found, created=True)
        content = file.read_bytes()
        row = self._send_once("document", lambda: self.hook.upload_document(
            file.name or "file", content, targetable_type=body["targetable_type"],
            targetable_id=str(body["targetable_id"]), content_type=file.content_type or "application/octet-stream"),
            landed, defer=record.dest_id is None)  # a replacement deletes the old file once the new one is in
        if record.dest_id and str(row["id"]) != record.dest_id:
            from airflow_ascora_provider.hooks.freshsales import ENTITIES

            self.hook.delete(ENTITIES["document"], record.dest_id)
        return WriteResult(record.source_id, str(row["id"]), created=record.dest_id is None)

    # -- deal products ------------------------------------------------------------------------------
    def _write_deal_products(self, records: list[OutgoingRecord]) -> list[WriteResult]:
        """Set one row per quote line on its deal: the product is found by code (or name) or created,
        then each deal's product list is written whole (Freshsales replaces the list)."""
        from airflow_ascora_provider.hooks.freshsales import ENTITIES, FreshsalesApiError

        results: dict[int, WriteResult] = {}
        by_deal: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(records):
            deal = record.payload.get("deal_id")
            if not isinstance(deal, DestRef):
                results[i] = WriteResult(record.source_id, None, error="the line has no deal", error_field="deal_id")
                continue
            by_deal[deal.dest_id].append(i)
        new_products = {_product_key(records[i].payload) for ids in by_deal.values() for i in ids} - set(self._products)

        def adoptable(record: OutgoingRecord) -> bool:
            """A row equal to this line's is its own only after an interrupted write of this line."""
            return record.source_id in self._suspects["deal_product"]

        self.hook.reserve(2 * len(by_deal) + 2 * len(new_products), "a batch of deal products")
        self._find_products([records[i].payload for ids in by_deal.values() for i in ids])
        for deal_id, indexes in by_deal.items():
            got = self.hook.get(ENTITIES["deal"], deal_id, include=["products"])
            if got is None:
                for i in indexes:
                    results[i] = WriteResult(records[i].source_id, None, error=f"deal {deal_id} does not exist",
                                             error_field="deal_id")
                continue
            rows = {str(r["id"]): _row_of(r) for r in got.get("products") or []}
            planned: dict[int, str] = {}
            for i in indexes:
                record = records[i]
                try:
                    product_id = str(self._product_for(record.payload)["id"])
                except _Refused as exc:
                    results[i] = WriteResult(record.source_id, None, error=str(exc), error_field=exc.field)
                    continue
                wanted = _row_of({"id": product_id, **{k: _number(record.payload.get(k)) for k in
                                                       ("quantity", "unit_price")}})
                previous = record.dest_id.split(":", 1)[1] if record.dest_id else None
                if previous and previous != product_id:
                    rows.pop(previous, None)
                elif not previous and product_id in rows and (rows[product_id] != wanted or not adoptable(record)):
                    results[i] = WriteResult(record.source_id, None, error=(
                        f"deal {deal_id} already lists product {product_id} for another line; a Freshsales deal "
                        "lists each product once"), error_field="product_code")
                    continue
                if product_id in planned.values() and previous != product_id:
                    results[i] = WriteResult(record.source_id, None, error=(
                        f"product {product_id} appears on two lines of deal {deal_id}; a Freshsales deal lists "
                        "each product once"), error_field="product_code")
                    continue
                rows[product_id] = wanted
                planned[i] = product_id
            if not planned:
                continue
            try:
                self.hook.update(ENTITIES["deal"], deal_id, {"products": list(rows.values())})
            except FreshsalesApiError as exc:
                if exc.status not in RESULT_ERRORS:
                    raise
                for i in planned:
                    results[i] = WriteResult(records[i].source_id, None, error="; ".join(exc.messages) or str(exc))
                continue
            for i, product_id in planned.items():
                results[i] = WriteResult(records[i].source_id, f"{deal_id}:{product_id}", created=not records[i].dest_id)
        return [results[i] for i in range(len(records))]

    def _find_products(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        """Look up the batch's products not known yet in one search per 100 codes (and names), instead
        of one per product; those found are remembered, the rest are created by :meth:`_product_for`."""
        from airflow_ascora_provider.hooks.freshsales import ENTITIES

        wanted: dict[str, dict[str, str]] = {"product_code": {}, "name": {}}
        for payload in payloads:
            key = _product_key(payload)
            if key in self._products:
                continue
            code = str(payload.get("product_code") or "").strip()
            name = str(payload.get("product_name") or "").strip()
            if code:
                wanted["product_code"][code] = key
            elif name:
                wanted["name"][name] = key
        for attribute, keys in wanted.items():
            if not keys:
                continue
            for row in self.hook.search(ENTITIES["product"], attribute, list(keys)):
                key = keys.get(str(row.get(attribute) or "").strip())
                if key is not None and key not in self._products:
                    self._products[key] = {"id": str(row["id"])}
            self._not_found.update((k, True) for k in keys.values() if k not in self._products)

    def _product_for(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The catalogue product of a quote line: found by code (or name), else created (marked as ours)."""
        from airflow_ascora_provider.hooks.freshsales import ENTITIES

        key = _product_key(payload)
        if key in self._products:
            return self._products[key]
        name = str(payload.get("product_name") or "").strip()
        if not name:
            raise _Refused("product_name: a product needs a name", "product_name")
        code = str(payload.get("product_code") or "").strip()
        attribute, value = ("product_code", code) if code else ("name", name)

        def find() -> str | None:
            rows = list(self.hook.search(ENTITIES["product"], attribute, [value]))
            return str(rows[0]["id"]) if rows else None

        found = None if self._not_found.pop(key, None) else find()  # just looked for by the batch's search
        if found is not None:
            product = {"id": found}
        else:
            body = {"name": name[:255], "description": PRODUCT_MARK, "unit_price": _number(payload.get("unit_price"))}
            if code:
                body["product_code"] = code
            product_entity = self._target("product").entity
            product = self._send_once("product", lambda: self.hook.create(product_entity, body, retry=False), find)
        self._products[key] = product
        return product

    # -- bulk upsert ------------------------------------------------------------------------------
    def bulk_threshold(self, target: str) -> int | None:
        threshold = self.hook.settings()["bulk_threshold"]
        if not threshold or target not in BULK_TARGETS:
            return None
        return int(threshold)

    def submit_bulk_job(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> dict[str, Any]:
        """One bulk upsert per 100 records; the handle remembers which record went into which job."""
        from airflow_ascora_provider.hooks.freshsales import BULK_CAP

        if not key_field:
            raise ValueError(f"a bulk upsert of {target} needs the map's key field (the unique identifier)")
        t = self._target(target)
        refused: dict[str, list] = {}
        encoded: list[tuple[int, dict[str, Any]]] = []
        for i, record in enumerate(records):
            try:
                encoded.append((i, self._encode(t, record.payload)))
            except _Refused as exc:
                refused[str(i)] = [str(exc), exc.field]
        chunks = [encoded[s:s + BULK_CAP] for s in range(0, len(encoded), BULK_CAP)]
        self.hook.reserve(len(chunks), f"a bulk upsert of {len(encoded)} {target} records")
        jobs = []
        for chunk in chunks:
            job_id = self.hook.bulk_upsert(t.entity, key_field, [body for _, body in chunk])
            jobs.append({"id": job_id, "records": [i for i, _ in chunk]})
        return {"id": jobs[0]["id"] if jobs else None, "target": target, "key_field": key_field,
                "size": len(records), "jobs": jobs, "refused": refused, "done": []}

    def poll_bulk_job(self, job: dict[str, Any]) -> BulkJobStatus:
        processed, running, failed = 0, False, []
        for sub in job["jobs"]:
            status = self.hook.job_status(sub["id"])
            state = str(status.get("status") or "").lower()
            processed += int(status.get("processed") or 0)
            if state in ("failed", "error"):
                failed.append(f"job {sub['id']}: {status.get('message') or state}")
            elif state not in ("completed", "complete", "done", "success"):
                running = True
        if failed:
            return BulkJobStatus("failed", "; ".join(failed), processed)
        return BulkJobStatus("running" if running else "done", processed=processed)

    def bulk_job_results(self, job: dict[str, Any], records: list[OutgoingRecord]) -> list[WriteResult]:
        """Failed rows from each job's status; the written records' ids by their key field."""
        from airflow_ascora_provider.hooks.freshsales import messages_of

        if len(records) != job["size"]:
            raise RuntimeError(f"the bulk job carried {job['size']} records, the engine rebuilt {len(records)}")
        errors: dict[int, tuple[str, str | None]] = {int(i): (m, f) for i, (m, f) in job["refused"].items()}
        for sub in job["jobs"]:
            status = self.hook.job_status(sub["id"])
            for failure in status.get("failed_records") or []:
                index = sub["records"][int(failure["index"])]
                message = "; ".join(messages_of(failure)) or "refused by the bulk upsert"
                errors[index] = (message, _field_of(message, records[index].payload))
        wanted = [r.source_id for i, r in enumerate(records) if i not in errors]
        found = self.find_by_source_ids(job["target"], job["key_field"], wanted) if wanted else {}
        results = []
        for i, record in enumerate(records):
            if i in errors:
                results.append(WriteResult(record.source_id, None, error=errors[i][0], error_field=errors[i][1]))
            elif record.source_id in found:
                results.append(WriteResult(record.source_id, found[record.source_id], created=not record.dest_id))
            else:
                results.append(WriteResult(record.source_id, None, error=(
                    "the bulk upsert reported no error, but no record holds this Ascora id")))
        return results

    # -- reading ------------------------------------------------------------------------------------
    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        t = self._target(target)
        fields = list(fields)
        if t.kind == "deal_product":
            return self._read_deal_products(dest_ids, fields)
        out: dict[str, dict[str, Any]] = {}
        for dest_id in dest_ids:
            got = self.hook.get(t.entity, dest_id)
            if got is None:
                continue
            record = got.get(t.entity.root) or {}
            out[dest_id] = self._decode(t, record, [f for f in fields if f != "file"])
            if t.kind == "document" and "file" in fields:
                out[dest_id]["file"] = self._stored_file(dest_id, record)
        return out

    def _stored_file(self, dest_id: str, record: dict[str, Any]) -> FileRef | None:
        """What Freshsales holds, by content: the re-upload is verified byte for byte."""
        import hashlib

        from airflow_ascora_provider.hooks.freshsales import FreshsalesApiError

        try:
            content = self.hook.download_document(dest_id)
        except FreshsalesApiError:
            return None
        return FileRef(sha256=hashlib.sha256(content).hexdigest(), size=len(content), name=record.get("name") or "")

    def _read_deal_products(self, dest_ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        from airflow_ascora_provider.hooks.freshsales import ENTITIES

        out: dict[str, dict[str, Any]] = {}
        by_deal: dict[str, list[str]] = defaultdict(list)
        for dest_id in dest_ids:
            by_deal[dest_id.split(":", 1)[0]].append(dest_id)
        for deal_id, ids in by_deal.items():
            got = self.hook.get(ENTITIES["deal"], deal_id, include=["products"])
            rows = {str(r["id"]): r for r in (got or {}).get("products") or []}
            for dest_id in ids:
                row = rows.get(dest_id.split(":", 1)[1])
                if row is None:
                    continue
                values = {"deal_id": DestRef("deal", deal_id), "product_name": row.get("name"),
                          "product_code": row.get("product_code") or None,
                          "quantity": _decimal(row.get("quantity")), "unit_price": _decimal(row.get("unit_price"))}
                out[dest_id] = {f: values.get(f) for f in fields if f in values}
        return out

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        """Records already holding these Ascora ids (filtered search on the key field, 100 per call).

        Notes, tasks and documents cannot be searched: the ids are remembered, and :meth:`write_batch`
        looks for them on their parent record before creating them again.
        """
        t = self._target(target)
        if t.kind in ("activity", "document", "deal_product"):
            self._suspects[target].update(source_ids)
            return {}
        if not t.entity.search_name:
            return {}
        found: dict[str, str] = {}
        for row in self.hook.search(t.entity, key_field, list(source_ids)):
            value = (row.get("custom_field") or {}).get(key_field) if key_field.startswith("cf_") else row.get(key_field)
            if value is not None:
                found[str(value)] = str(row["id"])
        return found

    # -- deleting and restoring ---------------------------------------------------------------------
    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        from airflow_ascora_provider.hooks.freshsales import FreshsalesApiError

        t = self._target(target)
        if t.kind == "deal_product":
            return self._delete_deal_products(dest_ids)
        out: dict[str, str | None] = {}
        for dest_id in dest_ids:
            try:
                self.hook.delete(t.entity, dest_id)  # False (404) = already gone: fine for rollback
                out[dest_id] = None
            except FreshsalesApiError as exc:
                out[dest_id] = "; ".join(exc.messages) or str(exc)
        return out

    def _delete_deal_products(self, dest_ids: list[str]) -> dict[str, str | None]:
        """Remove the rows; a product this migration created for quote lines goes when no deal lists it."""
        from airflow_ascora_provider.hooks.freshsales import ENTITIES, FreshsalesApiError

        out: dict[str, str | None] = {}
        by_deal: dict[str, list[str]] = defaultdict(list)
        for dest_id in dest_ids:
            by_deal[dest_id.split(":", 1)[0]].append(dest_id)
        for deal_id, ids in by_deal.items():
            got = self.hook.get(ENTITIES["deal"], deal_id, include=["products"])
            removed = {i.split(":", 1)[1] for i in ids}
            try:
                if got is not None:
                    rows = [_row_of(r) for r in got.get("products") or [] if str(r["id"]) not in removed]
                    if len(rows) != len(got.get("products") or []):
                        self.hook.update(ENTITIES["deal"], deal_id, {"products": rows})
                for product_id in removed:
                    product = (self.hook.get(ENTITIES["product"], product_id) or {}).get("product") or {}
                    if product.get("description") == PRODUCT_MARK:
                        try:
                            self.hook.delete(ENTITIES["product"], product_id)
                        except FreshsalesApiError as exc:
                            if exc.status != 400:  # 400: still listed on another deal; it stays
                                raise
                out.update(dict.fromkeys(ids))
            except FreshsalesApiError as exc:
                out.update(dict.fromkeys(ids, "; ".join(exc.messages) or str(exc)))
        return out

    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        t = self._target(target)
        if t.kind == "deal_product":
            deal = before_image.get("deal_id")
            record = OutgoingRecord(source_id=dest_id, payload={**before_image, "deal_id": deal}, dest_id=dest_id)
            result = self._write_deal_products([record])[0]
            if not result.ok:
                raise RuntimeError(f"could not restore deal product {dest_id}: {result.error}")
            return
        if t.kind == "document":
            raise RuntimeError(f"document {dest_id}: Freshsales cannot change a stored file, and the earlier file "
                               "is not kept; upload it again by hand if it matters")
        body = self._encode(t, {k: v for k, v in before_image.items()})
        self.hook.update(t.entity, dest_id, body)

    def close(self) -> None:
        if self._writers is not None:
            self._writers.shutdown()
        self.hook.close()

    def api_stats(self) -> dict[str, Any]:
        return self.hook.stats()


# -- helpers ------------------------------------------------------------------------------------------

def _by_name(fields: Iterable[dict]) -> dict[str, dict]:
    return {f["name"]: f for f in fields}


def _lookup_target(raw: Mapping[str, Any]) -> str | None:
    target = raw.get("lookup")
    if not target:
        return None
    return target[3:] if isinstance(target, str) and target.startswith("cm_") else target


def _virtual_fields(target: _Target) -> dict[str, DestField]:
    """Fields the mapping writes that Freshsales spells differently (or holds elsewhere)."""
    out: dict[str, DestField] = {}
    if target.name in ("contact", "lead"):
        out["full_name"] = DestField("full_name", "full_name")
    if target.kind == "activity":
        out[ATTACH_FIELD] = DestField(ATTACH_FIELD, "lookup", required=True)
        out["description"] = DestField("description", "long_text")
        out[KEY_FIELD] = DestField(KEY_FIELD, "text", unique=True)
        if target.name == "task":
            out.update({"title": DestField("title", "text", required=True),
                        "due_date": DestField("due_date", "datetime", required=True),
                        "owner_id": DestField("owner_id", "lookup", required=True),
                        "status": DestField("status", "picklist", options=tuple(TASK_STATUS))})
    if target.kind == "document":
        out.update({"file": DestField("file", "text", required=True),
                    ATTACH_FIELD: DestField(ATTACH_FIELD, "lookup", required=True),
                    KEY_FIELD: DestField(KEY_FIELD, "text")})
    if target.kind == "deal_product":
        out.update({KEY_FIELD: DestField(KEY_FIELD, "text"),
                    "deal_id": DestField("deal_id", "lookup", required=True, lookup_target="deal"),
                    "product_name": DestField("product_name", "text", required=True),
                    "product_code": DestField("product_code", "text"),
                    "quantity": DestField("quantity", "number"), "unit_price": DestField("unit_price", "number")})
    return out


def _number(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, Money):
        value = value.amount
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2 ** 53 else float(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _wire(raw: Mapping[str, Any], value: Any, name: str) -> Any:
    """One neutral value as the Freshsales field ``raw`` takes it."""
    if value is None:
        return None
    kind = raw.get("type")
    if isinstance(value, (DestRef,)):
        return int(value.dest_id)
    if isinstance(value, UserRef):
        return int(value.user_id)
    if isinstance(value, RichText):
        value = value.markdown
    if isinstance(value, Money):
        value = value.amount
    if kind == "number" or (kind is None and isinstance(value, Decimal)):
        if isinstance(value, str):
            try:
                value = Decimal(value)
            except ArithmeticError:
                raise _Refused(f"{name}: {value!r} is not a number", name) from None
        return _number(value)
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).date().isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        raise _Refused(f"{name}: {value!r} is not a date", name)
    if kind == "checkbox":
        return bool(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if kind in ("text", "textarea") else _number(value)
    if kind in ("text", "textarea", "email", "phone_number", "url") and not isinstance(value, str):
        return str(value)
    return value


def _unwire(raw: Mapping[str, Any], value: Any, name: str) -> Any:
    if value is None or value == "":
        return None
    kind = raw.get("type")
    if kind == "number":
        return Decimal(str(value))
    if kind == "date":
        return dt.date.fromisoformat(str(value)[:10])
    if kind == "lookup" or name in STANDARD_LOOKUPS:
        target = STANDARD_LOOKUPS.get(name) or _lookup_target(raw) or name
        return DestRef(target, str(value))
    if kind is None and name == "due_date":
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return value


def _with_key(text: Any, key: Any) -> str | None:
    text = "" if text is None else str(text)
    if key is None:
        return text or None
    return f"{text}\n\n{KEY_LINE}{key}" if text else f"{KEY_LINE}{key}"


def _split_key(text: Any) -> tuple[str | None, str | None]:
    """A note's or task's text without its Ascora id line, and the id."""
    if not text:
        return None, None
    body, sep, key = str(text).rpartition(KEY_LINE)
    if not sep or "\n" in key:
        return str(text), None
    return (body.rstrip("\n") or None), key.strip()


def _product_key(payload: Mapping[str, Any]) -> str:
    code = str(payload.get("product_code") or "").strip()
    return f"code:{code}" if code else f"name:{str(payload.get('product_name') or '').strip()}"


def _row_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A deal product row as it is written back: product id, quantity, unit price, discount."""
    return {"id": int(row["id"]), "quantity": row.get("quantity"), "unit_price": row.get("unit_price"),
            "discount": row.get("discount") or 0}


def _field_of(message: str, payload: Mapping[str, Any]) -> str | None:
    """The mapping field a Freshsales error names (``Invalid value for deal_stage_id``, ``Email is not unique``)."""
    lowered = message.casefold()
    for name in sorted(payload, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name.casefold())}\b", lowered):
            return name
    if "email" in lowered and "email" in payload:
        return "email"
    if "targetable" in lowered:
        return ATTACH_FIELD
    return None


@hookimpl
def register_destinations(register):
    register(FreshsalesDestination)
