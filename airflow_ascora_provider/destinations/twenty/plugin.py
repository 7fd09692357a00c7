"""Twenty CRM destination: translates neutral records to Twenty's REST API and back.

Twenty specifics this module owns (and nothing else):

* Key: every object we write gets a unique TEXT field (``ascoraId``). New records go out as plain
  creates and updates as upserts matched by Twenty id, never as a bare upsert: Twenty's upsert also
  matches on any other unique field (e-mail, domain) and would merge different Ascora records. After
  an interrupted batch the engine finds the records by ``ascoraId`` and adopts them.
* Batches are all-or-nothing in Twenty (the stricter reading): when one is refused, the items the
  error names are answered as failures and the rest is resent; with no item named, the batch is
  bisected until the bad records are isolated.
* Notes and tasks attach through ``noteTargets``/``taskTargets``; attachments carry the parent's join
  column directly. Deleting for rollback *destroys* (hard delete): a soft-deleted record keeps its
  unique values and would block the next run (the seed's gotcha).
* Composite values: CURRENCY in micros, FULL_NAME, EMAILS, PHONES, LINKS, ADDRESS, RICH_TEXT.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_ascora_provider.destinations.spec import (
    Capabilities,
    Destination,
    DestField,
    DestObject,
    DestUser,
    OutgoingRecord,
    RateLimit,
    SchemaChange,
    WriteResult,
    hookimpl,
)
from airflow_ascora_provider.mapping.values import (
    Address,
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

TO_TWENTY = {
    "text": "TEXT", "long_text": "TEXT", "number": "NUMBER", "currency": "CURRENCY", "date": "DATE",
    "datetime": "DATE_TIME", "boolean": "BOOLEAN", "picklist": "SELECT", "multi_picklist": "MULTI_SELECT",
    "email": "EMAILS", "phone": "PHONES", "url": "LINKS", "address": "ADDRESS", "full_name": "FULL_NAME",
    "rich_text": "RICH_TEXT", "lookup": "RELATION",
}
FROM_TWENTY = {v: k for k, v in TO_TWENTY.items() if k not in ("long_text",)}
FROM_TWENTY.update({"NUMERIC": "number", "TEXT": "text", "UUID": "system", "DATE_TIME": "datetime"})
COMPOSITE_TYPES = frozenset({"CURRENCY", "FULL_NAME", "ADDRESS", "EMAILS", "PHONES", "LINKS", "RICH_TEXT", "ACTOR"})
ATTACH_FIELD = "targets"  # virtual field: AttachTo for notes and tasks
LINK_OBJECTS = {"note": ("noteTarget", "noteId"), "task": ("taskTarget", "taskId")}
_FIELD_IN_MESSAGE = re.compile(r"(?:field|column) ['\"`]?([A-Za-z_][A-Za-z0-9_.]*)['\"`]?", re.IGNORECASE)


class TwentyDestination(Destination):
    name = "twenty"
    label = "Twenty CRM"
    connection_type = "twenty"
    default_mapping = Path(__file__).with_name("mapping.yaml")
    capabilities = Capabilities(
        batch_size=60,
        rate_limit=RateLimit(100, 60.0),
        external_id="native_upsert",
        creatable=frozenset({"custom_object", "custom_field", "picklist_option"}),
        manual=frozenset(),
        plan_limits={"records_per_batch": 60, "requests_per_minute": 100},
        custom_object_fields=frozenset({"name"}),
        max_file_bytes=100 * 1024 * 1024,
        max_concurrency=1,
    )

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        super().__init__(conn_id, **options)
        from airflow_ascora_provider.hooks.twenty import TwentyHook

        hook_kwargs = {k: options[k] for k in ("base_url", "api_key", "requests_per_minute", "rate_window_seconds",
                                                "timeout", "request_budget") if options.get(k) is not None}
        self.hook = TwentyHook(twenty_conn_id=conn_id or "twenty_default", **hook_kwargs)
        self._objects: dict[str, dict] | None = None
        self._object_ids: dict[str, str] = {}  # nameSingular -> metadata id; a new field leaves it valid

    @property
    def batch_size(self) -> int:
        return max(1, min(self.capabilities.batch_size, self.hook.max_batch_size))

    # -- metadata -----------------------------------------------------------------------------
    def _metadata(self, refresh: bool = False) -> dict[str, dict]:
        if self._objects is None or refresh:
            self._objects = {o["nameSingular"]: o for o in self.hook.list_objects()}
            self._object_ids = {name: o["id"] for name, o in self._objects.items()}
        return self._objects

    def _object_id(self, name: str) -> str:
        """The metadata id of object ``name``. Read once: the schema step adds fields one call at a time,
        and listing every object's metadata again before each one doubled its calls."""
        if name not in self._object_ids:
            self._metadata(refresh=True)
        try:
            return self._object_ids[name]
        except KeyError:
            raise KeyError(f"Twenty has no object {name!r}; run the schema step first") from None

    def _plural(self, target: str) -> str:
        meta = self._metadata()
        if target not in meta:
            meta = self._metadata(refresh=True)
        try:
            return meta[target]["namePlural"]
        except KeyError:
            raise KeyError(f"Twenty has no object {target!r}; run the schema step first") from None

    def _field_types(self, target: str) -> dict[str, dict]:
        """Wire field name → metadata (relations listed under their join column ``xxxId``)."""
        out = {}
        for f in self._metadata()[target]["fields"]:
            if f["type"] == "RELATION":
                join = (f.get("settings") or {}).get("joinColumnName")
                if join:
                    out[join] = f
            else:
                out[f["name"]] = f
        return out

    def describe_schema(self) -> dict[str, DestObject]:
        schema: dict[str, DestObject] = {}
        for name, obj in self._metadata(refresh=True).items():
            fields: dict[str, DestField] = {}
            for wire, f in self._field_types(name).items():
                target = None
                if f["type"] == "RELATION":
                    relation = f.get("relation") or {}
                    target = (relation.get("targetObjectMetadata") or {}).get("nameSingular")
                fields[wire] = DestField(
                    name=wire,
                    type=FROM_TWENTY.get(f["type"], "system"),
                    required=not f.get("isNullable", True) and not f.get("isSystem", False),
                    custom=bool(f.get("isCustom")),
                    unique=bool(f.get("isUnique")),
                    options=tuple(o["value"] for o in f.get("options") or ()),
                    lookup_target=target,
                    read_only=bool(f.get("isSystem")),
                )
            if name in LINK_OBJECTS or name == "attachment":
                fields[ATTACH_FIELD] = DestField(ATTACH_FIELD, "lookup")
            schema[name] = DestObject(name=name, label=obj.get("labelSingular", name),
                                      custom=bool(obj.get("isCustom")), fields=fields)
        return schema

    def apply_schema_change(self, change: SchemaChange) -> None:
        if change.kind == "custom_object":
            spec = change.spec
            self.hook.create_object(change.object, spec.plural, spec.label, spec.label_plural)
        elif change.kind == "custom_field":
            spec = change.spec
            object_id = self._object_id(change.object)
            if spec.type == "lookup":
                name = change.field[:-2] if change.field.endswith("Id") else change.field
                inverse = f"{change.object}{name[:1].upper()}{name[1:]}s"
                self.hook.create_relation_field(
                    object_id, name=name, label=spec.label,
                    target_object_metadata_id=self._object_id(spec.lookup_target),
                    target_field_name=inverse, target_field_label=f"{change.object.title()} ({spec.label})")
            else:
                self.hook.create_field(
                    object_id, name=change.field, type=TO_TWENTY[spec.type], label=spec.label,
                    description=spec.help_text, is_unique=spec.unique or None,
                    options=[{"label": _label(v), "value": v} for v in spec.options] if spec.options else None)
        elif change.kind == "picklist_option":
            field = self._field_types(change.object)[change.field]
            self.hook.add_select_options(field["id"], [{"label": _label(v), "value": v} for v in change.spec])
        else:
            raise ValueError(f"Twenty cannot apply a {change.kind!r} change")
        self._objects = None

    # -- users --------------------------------------------------------------------------------
    def list_users(self) -> list[DestUser]:
        users = []
        for m in self.hook.workspace_members():
            name = m.get("name") or {}
            users.append(DestUser(id=m["id"], email=(m.get("userEmail") or "").strip(),
                                  name=" ".join(p for p in (name.get("firstName"), name.get("lastName")) if p)))
        return users

    # -- encoding -----------------------------------------------------------------------------
    def _encode(self, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        types = self._field_types(target)
        wire: dict[str, Any] = {}
        for name, value in payload.items():
            if name == ATTACH_FIELD and target in LINK_OBJECTS:
                continue  # notes and tasks attach through noteTargets/taskTargets after the write
            if isinstance(value, AttachTo):  # attachments: set the parent's join column directly
                for ref in value.refs:
                    wire[f"{ref.target_object}Id"] = ref.dest_id
                continue
            kind = types.get(name, {}).get("type")
            if isinstance(value, FileRef):  # re-upload the bytes; the record stores the returned path
                wire[name] = self.hook.upload_file(value.name or "file", value.read_bytes(),
                                                   content_type=value.content_type or "application/octet-stream")
                continue
            if value is None and kind in COMPOSITE_TYPES:
                continue  # Twenty refuses null for a composite; leaving it out keeps it empty
            wire[name] = encode_value(value, kind)
        return wire

    def _decode(self, target: str, wire: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
        types = self._field_types(target)
        return {f: decode_value(wire.get(f), types.get(f, {}).get("type")) for f in fields if f != ATTACH_FIELD}

    # -- records ------------------------------------------------------------------------------
    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        """Creates go out as plain creates, updates as upserts matched by Twenty id.

        Never an upsert without an id: Twenty's upsert also matches on *any* unique field (a person's
        e-mail, a company's domain), which would silently merge two different Ascora records into one
        CRM record. A create that collides on a unique value is refused instead, and that record is
        quarantined with Twenty's message.

        Every create carries an id chosen here (Twenty takes a client's UUID): when an attempt was
        written but its answer lost, or a batch was cut short part-way, the attempt sent again is
        refused for exactly those ids, which proves the records are this call's own (see :meth:`_send`).
        """
        plural = self._plural(target)
        results: dict[int, WriteResult] = {}
        wire = {}
        for i, record in enumerate(records):
            body = self._encode(target, record.payload)
            body["id"] = record.dest_id or str(uuid.uuid4())
            wire[i] = body
        creates = [i for i, r in enumerate(records) if not r.dest_id]
        updates = [i for i, r in enumerate(records) if r.dest_id]
        for group, upsert in ((creates, False), (updates, True)):
            self._send(plural, records, wire, group, upsert, results)
        ordered = [results[i] for i in range(len(records))]
        if target in LINK_OBJECTS:
            self._attach(target, records, ordered)
        return ordered

    def _send(self, plural: str, records: list[OutgoingRecord], wire: dict[int, dict], group: list[int],
              upsert: bool, results: dict[int, WriteResult]) -> None:
        """Send a group; on a refused (all-or-nothing) batch drop the named items or bisect, and resend.

        A create refused because its own id exists was written by an earlier attempt of this call (the
        id was made for it in :meth:`write_batch`): it is taken as created, not refused, and costs no
        look-up by Ascora id and no second write.
        """
        from airflow_ascora_provider.hooks.twenty import TwentyBatchError

        queue = [group]
        while queue:
            part = queue.pop()
            if not part:
                continue
            try:
                written = self.hook.create_batch(plural, [wire[i] for i in part], upsert=upsert)
            except TwentyBatchError as exc:
                named = {part[k]: msgs for k, msgs in exc.item_errors.items() if k < len(part)}
                if not named and len(part) == 1:
                    named = {part[0]: exc.messages or [str(exc)]}
                if named:
                    for i, msgs in named.items():
                        if not upsert and all(_own_id_exists(m, wire[i]["id"]) for m in msgs):
                            results[i] = WriteResult(records[i].source_id, wire[i]["id"], created=True)
                            continue
                        message = "; ".join(msgs)
                        results[i] = WriteResult(records[i].source_id, None, error=message,
                                                 error_field=_field_of(message))
                    queue.append([i for i in part if i not in named])
                else:
                    half = len(part) // 2
                    queue.extend([part[half:], part[:half]])
                continue
            for i, row in zip(part, written):
                results[i] = WriteResult(records[i].source_id, row["id"], created=not upsert)

    def _attach(self, target: str, records: list[OutgoingRecord], results: list[WriteResult]) -> None:
        """Create the missing noteTargets/taskTargets for written notes/tasks (idempotent)."""
        link_object, own_column = LINK_OBJECTS[target]
        link_plural = self._plural(link_object)
        wanted = []
        for record, result in zip(records, results):
            attach = record.payload.get(ATTACH_FIELD)
            if result.ok and isinstance(attach, AttachTo):
                wanted.extend((result.dest_id, ref) for ref in attach.refs)
        if not wanted:
            return
        ids = sorted({dest_id for dest_id, _ in wanted})
        existing = set()
        for row in self.hook.find_many(link_plural, filter={own_column: ids}, limit=200):
            for ref_col, ref_id in row.items():
                if ref_col.endswith("Id") and ref_col != own_column and ref_id:
                    existing.add((row.get(own_column), ref_col, ref_id))
        links = [{"id": _link_id(own_column, dest_id, ref), own_column: dest_id, f"{ref.target_object}Id": ref.dest_id}
                 for dest_id, ref in wanted if (dest_id, f"{ref.target_object}Id", ref.dest_id) not in existing]
        for start in range(0, len(links), self.capabilities.batch_size):
            self._create_links(link_plural, links[start:start + self.capabilities.batch_size])

    def _create_links(self, link_plural: str, links: list[dict[str, Any]]) -> None:
        """Create link rows exactly once, even when the client had to resend the batch.

        A link's id is derived from what it links, so a batch whose first attempt was written (its
        reply lost) is refused as "already exists" on the resend instead of doubling the links; the
        rows still missing then are sent once more.
        """
        from airflow_ascora_provider.hooks.twenty import TwentyBatchError

        try:
            self.hook.create_batch(link_plural, links)
        except TwentyBatchError:
            present = {row["id"] for row in self.hook.find_many(link_plural, filter={"id": [k["id"] for k in links]},
                                                                 fields=["id"], limit=200)}
            missing = [link for link in links if link["id"] not in present]
            if len(missing) == len(links):
                raise
            if missing:
                self.hook.create_batch(link_plural, missing)

    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        if not dest_ids:
            return {}
        plural = self._plural(target)
        fields = list(fields)
        types = self._field_types(target)
        wire_fields = ["id"] + [f for f in fields if f in types and f != "id"]
        join_columns = [c for c, f in types.items() if f["type"] == "RELATION"]
        direct_attach = ATTACH_FIELD in fields and target not in LINK_OBJECTS
        if direct_attach:
            wire_fields += [c for c in join_columns if c not in wire_fields]
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(dest_ids), 50):
            chunk = dest_ids[start:start + 50]
            for row in self.hook.find_many(plural, filter={"id": chunk}, fields=wire_fields, limit=60):
                out[row["id"]] = self._decode(target, row, fields)
                if target == "attachment" and "fullPath" in fields and row.get("fullPath"):
                    out[row["id"]]["fullPath"] = self._stored_file(row["fullPath"])
                if direct_attach:
                    refs = [DestRef(c[:-2], row[c]) for c in join_columns if row.get(c)]
                    out[row["id"]][ATTACH_FIELD] = AttachTo(tuple(sorted(refs, key=lambda r: (r.target_object, r.dest_id))))
        if target in LINK_OBJECTS and ATTACH_FIELD in fields and out:
            link_object, own_column = LINK_OBJECTS[target]
            refs: dict[str, list[DestRef]] = {i: [] for i in out}
            for start in range(0, len(out), 50):
                chunk = list(out)[start:start + 50]
                for row in self.hook.find_many(self._plural(link_object), filter={own_column: chunk}, limit=200):
                    for col, value in row.items():
                        if col.endswith("Id") and col != own_column and value and row.get(own_column) in refs:
                            refs[row[own_column]].append(DestRef(col[:-2], value))
            for dest_id, items in refs.items():
                out[dest_id][ATTACH_FIELD] = AttachTo(tuple(sorted(items, key=lambda r: (r.target_object, r.dest_id))))
        return out

    def _stored_file(self, path: str) -> FileRef | str:
        """What the destination really stores, by content (verifies the re-upload byte for byte)."""
        import hashlib

        from airflow_ascora_provider.hooks.twenty import TwentyApiError

        try:
            content = self.hook.download_file(path)
        except TwentyApiError:
            return path
        return FileRef(sha256=hashlib.sha256(content).hexdigest(), size=len(content), uri=path)

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(source_ids), 50):
            chunk = source_ids[start:start + 50]
            for row in self.hook.find_many(self._plural(target), filter={key_field: chunk},
                                           fields=["id", key_field], limit=60):
                found[row[key_field]] = row["id"]
        return found

    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        from airflow_ascora_provider.hooks.twenty import TwentyApiError

        plural = self._plural(target)
        out: dict[str, str | None] = {}
        for dest_id in dest_ids:
            try:
                self.hook.delete(plural, dest_id, soft=False)
                out[dest_id] = None
            except TwentyApiError as exc:
                gone = exc.status == 404 or any("not found" in m.lower() for m in exc.messages)
                out[dest_id] = None if gone else str(exc)
        return out

    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        data = {k: v for k, v in before_image.items() if k != ATTACH_FIELD}
        self.hook.update(self._plural(target), dest_id, self._encode(target, data))

    def close(self) -> None:
        self.hook.close()

    def api_stats(self) -> dict[str, Any]:
        return self.hook.client.stats.as_dict()


def _link_id(own_column: str, dest_id: str, ref: DestRef) -> str:
    """Stable id of the link row joining a note or task to one parent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ascora-link:{own_column}:{dest_id}:{ref.target_object}:{ref.dest_id}"))


def _label(value: str) -> str:
    return value.replace("_", " ").title()


_DOTTED_FIELD = re.compile(r"\b([a-z][A-Za-z0-9]*)\.[a-z][A-Za-z0-9]*\b")


def _own_id_exists(message: str, record_id: str) -> bool:
    """Whether Twenty refused a create because a record with the id it carried exists already."""
    return message.startswith("Record already exists") and f"id '{record_id}'" in message


def _field_of(message: str) -> str | None:
    """The destination field a Twenty error names (``field 'phones'`` or ``emails.primaryEmail``)."""
    match = _FIELD_IN_MESSAGE.search(message) or _DOTTED_FIELD.search(message)
    return match.group(1).split(".")[0] if match else None


def encode_value(value: Any, kind: str | None) -> Any:
    if value is None:
        return None
    if isinstance(value, Money):
        return {"amountMicros": int((value.amount * 1_000_000).to_integral_value()), "currencyCode": value.currency}
    if isinstance(value, FullName):
        return {"firstName": value.first or "", "lastName": value.last or ""}
    if isinstance(value, Address):
        return {"addressStreet1": value.line1 or "", "addressStreet2": value.line2 or "",
                "addressCity": value.city or "", "addressState": value.state or "",
                "addressPostcode": value.postcode or "", "addressCountry": value.country or "",
                "addressLat": float(value.latitude) if value.latitude is not None else None,
                "addressLng": float(value.longitude) if value.longitude is not None else None}
    if isinstance(value, Emails):
        return {"primaryEmail": value.primary or "", "additionalEmails": list(value.others) or None}
    if isinstance(value, Phones):
        return {"primaryPhoneNumber": value.primary or "", "primaryPhoneCountryCode": value.country_code,
                "primaryPhoneCallingCode": value.calling_code,
                "additionalPhones": [{"number": p, "countryCode": value.country_code,
                                      "callingCode": value.calling_code} for p in value.others] or None}
    if isinstance(value, Link):
        return {"primaryLinkUrl": value.url, "primaryLinkLabel": value.label or "", "secondaryLinks": None}
    if isinstance(value, RichText):
        return {"markdown": value.markdown, "blocknote": None}
    if isinstance(value, (DestRef,)):
        return value.dest_id
    if isinstance(value, UserRef):
        return value.user_id
    if isinstance(value, Decimal):
        if kind == "CURRENCY":
            return {"amountMicros": int((value * 1_000_000).to_integral_value()), "currencyCode": "AUD"}
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat() if kind == "DATE" else f"{value.isoformat()}T00:00:00Z"
    if kind in ("TEXT", None) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind == "MULTI_SELECT" and isinstance(value, str):
        return [value]
    return value


def decode_value(wire: Any, kind: str | None) -> Any:
    if wire is None:
        return None
    match kind:
        case "CURRENCY":
            if wire.get("amountMicros") is None:
                return None
            return Money(Decimal(wire["amountMicros"]) / 1_000_000, wire.get("currencyCode") or "AUD")
        case "FULL_NAME":
            return FullName(wire.get("firstName") or None, wire.get("lastName") or None)
        case "ADDRESS":
            lat, lng = wire.get("addressLat"), wire.get("addressLng")
            address = Address(wire.get("addressStreet1") or None, wire.get("addressStreet2") or None,
                              wire.get("addressCity") or None, wire.get("addressState") or None,
                              wire.get("addressPostcode") or None, wire.get("addressCountry") or None,
                              Decimal(str(lat)) if lat is not None else None,
                              Decimal(str(lng)) if lng is not None else None)
            return None if address.is_empty() else address
        case "EMAILS":
            primary = wire.get("primaryEmail") or None
            return Emails(primary, tuple(wire.get("additionalEmails") or ())) if primary else None
        case "PHONES":
            primary = wire.get("primaryPhoneNumber") or None
            if not primary:
                return None
            others = tuple(p.get("number") if isinstance(p, dict) else p for p in wire.get("additionalPhones") or ())
            return Phones(primary, others,
                          wire.get("primaryPhoneCountryCode") or "AU", wire.get("primaryPhoneCallingCode") or "+61")
        case "LINKS":
            url = wire.get("primaryLinkUrl")
            return Link(url, wire.get("primaryLinkLabel") or None) if url else None
        case "RICH_TEXT":
            return RichText(wire.get("markdown")) if wire.get("markdown") else None
        case "NUMBER" | "NUMERIC":
            return Decimal(str(wire))
        case "DATE_TIME":
            return dt.datetime.fromisoformat(wire.replace("Z", "+00:00"))
        case "DATE":
            return dt.date.fromisoformat(wire[:10])
    return wire


@hookimpl
def register_destinations(register):
    register(TwentyDestination)
