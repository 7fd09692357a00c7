"""An in-memory Twenty CRM (twentyhq/twenty) that is *harder to please* than the real one.

Why it exists: running the real Twenty server needs Postgres 16, Redis, a 1 GB image and minutes of
migrations, far too heavy for unit and integration tests (see the API reference, section 3.7). The
migration engine still has to be proven against Twenty's rules, so this emulator implements the
documented REST contract (core ``/rest/...`` and metadata ``/rest/metadata/...``) and *validates*
every write the way a strict server would: unknown fields, wrong value shapes, dangling relations,
unique values (including ones held by soft-deleted records), the 60-record batch cap, pick-list
values, fields that do not exist yet. Of GraphQL it answers only the file upload (``POST /graphql``
with the multipart ``uploadFile`` mutation); stored files are served at ``GET /files/<path>``.

Where the public material does not say what Twenty does, the emulator picks the **stricter** option
and says so in a comment tagged ``STRICTER:``. Code that passes here should therefore pass against
the real server; the reverse is not promised. ``docs/destinations/twenty-api-notes.md`` lists the
documented vs inferred behaviours.

Use :func:`create_app` and serve it with :class:`~airflow_ascora_provider.sandbox.emulator.ServedApp`.
``app.state.twenty`` is the :class:`TwentyState`; ``app.state.twenty.snapshot()`` gives a deep copy
of every record (soft-deleted ones too), all metadata and every stored file (sha256 and size), so
rollback tests can compare before/after.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airflow_ascora_provider.sandbox.emulator import instrument

DEFAULT_API_KEY = "twenty-sandbox-key"
DEFAULT_PAGE_SIZE = 60
# STRICTER: the REST limit factory enforces no maximum; the ORM layer caps it somewhere. The emulator
# rejects anything above 200 so a client that asks for huge pages is caught here, not in production.
MAX_PAGE_SIZE = 200
# Upload cap of the emulated ``uploadFile`` mutation; configurable with create_app(max_file_bytes=...).
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
# GraphQL enum name -> folder prefix of the stored path (twenty-shared ``FileFolder``; values inferred).
FILE_FOLDERS = {
    "Attachment": "attachment",
    "ProfilePicture": "profile-picture",
    "WorkspaceLogo": "workspace-logo",
    "PersonPicture": "person-picture",
    "File": "file",
}

DEFAULT_MEMBERS = [
    {"email": "owner@sparkys-electrical.example", "firstName": "Olivia", "lastName": "Owner"},
    {"email": "tech1@sparkys-electrical.example", "firstName": "Tom", "lastName": "Tradie"},
    {"email": "office@sparkys-electrical.example", "firstName": "Fiona", "lastName": "Frontdesk"},
]

FIELD_TYPES = frozenset(
    {
        "UUID", "TEXT", "PHONES", "EMAILS", "DATE_TIME", "DATE", "BOOLEAN", "NUMBER", "NUMERIC",
        "LINKS", "CURRENCY", "FULL_NAME", "RATING", "SELECT", "MULTI_SELECT", "RELATION",
        "POSITION", "ADDRESS", "RAW_JSON", "RICH_TEXT", "ACTOR", "ARRAY",
    }
)
# Types a client may not create as custom fields (system-managed or not modelled here).
NON_CREATABLE_TYPES = frozenset(
    {"UUID", "POSITION", "ACTOR", "TS_VECTOR", "RICH_TEXT_DEPRECATED", "MORPH_RELATION"}
)
UNIQUE_CAPABLE_TYPES = frozenset(
    {"TEXT", "NUMBER", "NUMERIC", "EMAILS", "LINKS", "PHONES", "UUID", "DATE", "DATE_TIME"}
)

# Composite field shapes: subfield -> kind. Kinds are checked by _check_sub.
COMPOSITES: dict[str, dict[str, str]] = {
    "FULL_NAME": {"firstName": "text", "lastName": "text"},
    "EMAILS": {"primaryEmail": "email", "additionalEmails": "email_list"},
    "PHONES": {
        "primaryPhoneNumber": "text",
        "primaryPhoneCountryCode": "country",
        "primaryPhoneCallingCode": "calling",
        "additionalPhones": "phone_list",
    },
    "LINKS": {"primaryLinkUrl": "url", "primaryLinkLabel": "text", "secondaryLinks": "link_list"},
    "CURRENCY": {"amountMicros": "int", "currencyCode": "currency"},
    "ADDRESS": {
        "addressStreet1": "text",
        "addressStreet2": "text",
        "addressCity": "text",
        "addressState": "text",
        "addressPostcode": "text",
        "addressCountry": "text",
        "addressLat": "number",
        "addressLng": "number",
    },
    "RICH_TEXT": {"blocknote": "text_or_null", "markdown": "text_or_null"},
    "ACTOR": {"source": "text", "workspaceMemberId": "uuid", "name": "text"},
}
# The subfield a unique composite is keyed on (Twenty's unique indexes sit on these columns).
UNIQUE_SUBFIELD = {"EMAILS": "primaryEmail", "LINKS": "primaryLinkUrl", "PHONES": "primaryPhoneNumber"}

SYSTEM_FIELD_NAMES = ("id", "createdAt", "updatedAt", "deletedAt", "position", "createdBy")
READ_ONLY_FIELDS = frozenset({"updatedAt", "deletedAt", "createdBy"})
# Plural/singular names that would shadow a route or are system words.
RESERVED_NAMES = frozenset(
    {"batch", "restore", "metadata", "graphql", "rest", "object", "objects", "field", "fields",
     "healthz", "open-api", "event", "events", "user", "users", "workspace", "workspaces"}
)
CAMEL_CASE = re.compile(r"^[a-z][a-zA-Z0-9]*$")
UPPER_SNAKE = re.compile(r"^[A-Z0-9]+(_[A-Z0-9]+)*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
API_ACTOR = {"source": "API", "workspaceMemberId": None, "name": "API key"}

_ERROR_NAMES = {
    400: "BadRequestException",
    401: "Unauthorized",
    403: "ForbiddenException",
    404: "NotFoundException",
    405: "MethodNotAllowedException",
}


class TwentyError(Exception):
    """An error answer: ``status`` plus the ``messages`` list Twenty puts in its error body."""

    def __init__(self, messages: str | list[str], status: int = 400, error: str | None = None):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.status = status
        self.error = error or _ERROR_NAMES.get(status, "BadRequestException")
        super().__init__("; ".join(self.messages))

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"statusCode": self.status, "error": self.error, "messages": self.messages},
            status_code=self.status,
        )


def _now() -> str:
    return _fmt_dt(datetime.now(UTC))


def _fmt_dt(value: datetime) -> str:
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _parse_dt(value: str, *, need_tz: bool) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        if need_tz:
            return None
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def _unquote(value: Any) -> Any:
    """Twenty stores string default values SQL-quoted (``"'PLANNING'"``); strip the quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


# --------------------------------------------------------------------------------------------------
# Metadata model: plain dicts (JSON-ready, deep-copyable). Objects carry their fields.
# --------------------------------------------------------------------------------------------------


def _new_field(obj: dict, name: str, ftype: str, label: str | None = None, **extra: Any) -> dict:
    now = _now()
    field = {
        "id": str(uuid.uuid4()),
        "objectMetadataId": obj["id"],
        "name": name,
        "label": label or _label_from_name(name),
        "type": ftype,
        "description": extra.pop("description", None),
        "icon": extra.pop("icon", None),
        "isCustom": extra.pop("isCustom", False),
        "isActive": True,
        "isSystem": extra.pop("isSystem", False),
        "isNullable": extra.pop("isNullable", True),
        "isUnique": extra.pop("isUnique", False),
        "defaultValue": extra.pop("defaultValue", None),
        "options": extra.pop("options", None),
        "settings": extra.pop("settings", None),
        "isLabelSyncedWithName": extra.pop("isLabelSyncedWithName", False),
        # Internal links for RELATION fields; rendered as the public ``relation`` block on output.
        "relationTargetObjectMetadataId": extra.pop("relationTargetObjectMetadataId", None),
        "relationTargetFieldMetadataId": extra.pop("relationTargetFieldMetadataId", None),
        "createdAt": now,
        "updatedAt": now,
    }
    if extra:
        raise TypeError(f"unexpected field attributes {sorted(extra)}")
    obj["fields"].append(field)
    return field


def _label_from_name(name: str) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name).split()
    return " ".join(w.capitalize() if i == 0 else w.lower() for i, w in enumerate(words)) or name


def _options(values: Iterable[str]) -> list[dict]:
    colors = ["green", "turquoise", "sky", "blue", "purple", "pink", "red", "orange", "yellow", "gray"]
    return [
        {"id": str(uuid.uuid4()), "label": v.replace("_", " ").title(), "value": v,
         "color": colors[i % len(colors)], "position": i}
        for i, v in enumerate(values)
    ]


def _join_column(field: dict) -> str | None:
    settings = field.get("settings") or {}
    if field["type"] == "RELATION" and settings.get("relationType") == "MANY_TO_ONE":
        return settings.get("joinColumnName")
    return None


# Standard objects: (singular, plural, labelSingular, labelPlural, label identifier, plain fields,
# MANY_TO_ONE relations as (field name, target singular, inverse ONE_TO_MANY name on target)).
_STANDARD: list[tuple] = [
    ("workspaceMember", "workspaceMembers", "Workspace Member", "Workspace Members", "name",
     [("name", "FULL_NAME", {}), ("userEmail", "TEXT", {})], []),
    ("company", "companies", "Company", "Companies", "name",
     [("name", "TEXT", {}), ("domainName", "LINKS", {"isUnique": True}), ("address", "ADDRESS", {}),
      ("employees", "NUMBER", {})],
     [("accountOwner", "workspaceMember", "accountOwnerForCompanies")]),
    ("person", "people", "Person", "People", "name",
     [("name", "FULL_NAME", {}), ("emails", "EMAILS", {"isUnique": True}), ("phones", "PHONES", {}),
      ("jobTitle", "TEXT", {}), ("city", "TEXT", {})],
     [("company", "company", "people")]),
    ("opportunity", "opportunities", "Opportunity", "Opportunities", "name",
     [("name", "TEXT", {}), ("amount", "CURRENCY", {}), ("closeDate", "DATE_TIME", {}),
      ("stage", "SELECT", {"options": _options(["NEW", "SCREENING", "MEETING", "PROPOSAL", "CUSTOMER"]),
                           "defaultValue": "'NEW'"})],
     [("company", "company", "opportunities"), ("pointOfContact", "person", "pointOfContactForOpportunities"),
      ("owner", "workspaceMember", "ownedOpportunities")]),
    ("note", "notes", "Note", "Notes", "title", [("title", "TEXT", {}), ("bodyV2", "RICH_TEXT", {})], []),
    ("noteTarget", "noteTargets", "Note Target", "Note Targets", None, [],
     [("note", "note", "noteTargets"), ("person", "person", "noteTargets"),
      ("company", "company", "noteTargets"), ("opportunity", "opportunity", "noteTargets")]),
    ("task", "tasks", "Task", "Tasks", "title",
     [("title", "TEXT", {}), ("bodyV2", "RICH_TEXT", {}), ("dueAt", "DATE_TIME", {}),
      ("status", "SELECT", {"options": _options(["TODO", "IN_PROGRESS", "DONE"]), "defaultValue": "'TODO'"})],
     [("assignee", "workspaceMember", "assignedTasks")]),
    ("taskTarget", "taskTargets", "Task Target", "Task Targets", None, [],
     [("task", "task", "taskTargets"), ("person", "person", "taskTargets"),
      ("company", "company", "taskTargets"), ("opportunity", "opportunity", "taskTargets")]),
    ("attachment", "attachments", "Attachment", "Attachments", "name",
     [("name", "TEXT", {}), ("fullPath", "TEXT", {}), ("fileCategory", "TEXT", {})],
     [("note", "note", "attachments"), ("task", "task", "attachments"), ("person", "person", "attachments"),
      ("company", "company", "attachments"), ("opportunity", "opportunity", "attachments")]),
]
# Objects every custom object is wired to (Twenty adds a relation on each when an object is created).
_TARGET_OBJECTS = ("noteTarget", "taskTarget", "attachment")
# When the "one" side is hard-destroyed, these join columns cascade; everything else is SET NULL.
_CASCADE = {("noteTarget", "noteId"), ("taskTarget", "taskId")}


class TwentyState:
    """All data behind the emulator, guarded by one lock (tests read it from another thread)."""

    def __init__(self, *, api_key: str, batch_cap: int, members: list[dict] | None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        self.api_key = api_key
        self.batch_cap = batch_cap
        self.max_file_bytes = max_file_bytes
        self.lock = threading.RLock()
        # Uploaded files: stored path (as returned by uploadFile) -> (bytes, content type, filename).
        self.files: dict[str, tuple[bytes, str, str]] = {}
        self.objects: list[dict] = []
        self.records: dict[str, dict[str, dict]] = {}  # object id -> record id -> record
        self._seq: dict[str, int] = {}  # record id -> insertion sequence (cursor order)
        self._counter = 0
        # object id -> unique field name -> key -> record id. Built lazily, kept up to date by
        # committed writes, dropped on destroy and on any metadata change (then rebuilt on demand).
        self._unique_cache: dict[str, dict[str, dict[Any, str]]] = {}
        self._build_standard()
        for member in DEFAULT_MEMBERS if members is None else members:
            self._seed_member(member)

    # ---- metadata helpers ----------------------------------------------------------------------

    def _new_object(self, singular: str, plural: str, label_s: str, label_p: str, *, custom: bool,
                    icon: str | None = None, description: str | None = None) -> dict:
        now = _now()
        obj = {
            "id": str(uuid.uuid4()),
            "nameSingular": singular,
            "namePlural": plural,
            "labelSingular": label_s,
            "labelPlural": label_p,
            "description": description,
            "icon": icon,
            "isCustom": custom,
            "isActive": True,
            "isSystem": False,
            "isRemote": False,
            "labelIdentifierFieldMetadataId": None,
            "createdAt": now,
            "updatedAt": now,
            "fields": [],
        }
        _new_field(obj, "id", "UUID", "Id", isSystem=True, isNullable=False, defaultValue="uuid")
        self.objects.append(obj)
        self.records[obj["id"]] = {}
        return obj

    def _add_system_fields(self, obj: dict) -> None:
        _new_field(obj, "createdAt", "DATE_TIME", "Creation date", isNullable=False, defaultValue="now")
        _new_field(obj, "updatedAt", "DATE_TIME", "Last update", isNullable=False, defaultValue="now")
        _new_field(obj, "deletedAt", "DATE_TIME", "Deleted at")
        _new_field(obj, "position", "POSITION", "Position", isSystem=True)
        _new_field(obj, "createdBy", "ACTOR", "Created by", isNullable=False)

    def _add_relation(self, source: dict, name: str, target: dict, inverse: str, *, custom: bool,
                      label: str | None = None, inverse_label: str | None = None, icon: str | None = None,
                      inverse_icon: str | None = None, description: str | None = None) -> tuple[dict, dict]:
        """MANY_TO_ONE ``source.name`` (join column ``nameId``) + ONE_TO_MANY ``target.inverse``."""
        many = _new_field(
            source, name, "RELATION", label, isCustom=custom, icon=icon, description=description,
            settings={"relationType": "MANY_TO_ONE", "joinColumnName": f"{name}Id", "onDelete": "SET_NULL"},
            relationTargetObjectMetadataId=target["id"],
        )
        one = _new_field(
            target, inverse, "RELATION", inverse_label, isCustom=custom, icon=inverse_icon,
            settings={"relationType": "ONE_TO_MANY"},
            relationTargetObjectMetadataId=source["id"], relationTargetFieldMetadataId=many["id"],
        )
        many["relationTargetFieldMetadataId"] = one["id"]
        return many, one

    def _build_standard(self) -> None:
        by_name: dict[str, dict] = {}
        for singular, plural, label_s, label_p, identifier, fields, _rels in _STANDARD:
            obj = self._new_object(singular, plural, label_s, label_p, custom=False)
            for fname, ftype, extra in fields:
                field = _new_field(obj, fname, ftype, **copy.deepcopy(extra))
                if fname == identifier:
                    obj["labelIdentifierFieldMetadataId"] = field["id"]
            self._add_system_fields(obj)
            by_name[singular] = obj
        for singular, *_rest, rels in _STANDARD:
            for fname, target, inverse in rels:
                self._add_relation(by_name[singular], fname, by_name[target], inverse, custom=False)

    def _seed_member(self, member: dict) -> None:
        obj = self.object_by_singular("workspaceMember")
        record = self._blank_record(obj)
        record.update(
            {
                "name": {"firstName": member.get("firstName", ""), "lastName": member.get("lastName", "")},
                "userEmail": member["email"],
                "createdBy": {"source": "MANUAL", "workspaceMemberId": None, "name": "System"},
            }
        )
        self._insert(obj, record)

    def object_by_singular(self, name: str) -> dict:
        for obj in self.objects:
            if obj["nameSingular"] == name:
                return obj
        raise TwentyError(f"Object metadata not found: no object named '{name}'")

    def object_by_plural(self, plural: str) -> dict:
        for obj in self.objects:
            if obj["namePlural"] == plural and obj["isActive"]:
                return obj
        raise TwentyError(
            f"Object metadata not found: '{plural}' is not the plural name of any active object "
            "(REST routes use namePlural, e.g. /rest/people)"
        )

    def object_by_id(self, object_id: str) -> dict:
        for obj in self.objects:
            if obj["id"] == object_id:
                return obj
        raise TwentyError(f"Object metadata not found: no object with id '{object_id}'", 404)

    def field_by_id(self, field_id: str) -> tuple[dict, dict]:
        for obj in self.objects:
            for field in obj["fields"]:
                if field["id"] == field_id:
                    return obj, field
        raise TwentyError(f"Field does not exist: no field with id '{field_id}'", 404)

    @staticmethod
    def active_fields(obj: dict) -> list[dict]:
        return [f for f in obj["fields"] if f["isActive"]]

    @staticmethod
    def unique_fields(obj: dict) -> list[dict]:
        return [f for f in obj["fields"] if f["isActive"] and f["isUnique"] and _record_key(f)]

    def unique_index(self, obj: dict) -> dict[str, dict[Any, str]]:
        """Unique values over ALL records of ``obj``, soft-deleted ones included: per the migration
        brief a soft-deleted record still holds its unique values."""
        index = self._unique_cache.get(obj["id"])
        if index is None:
            index = {f["name"]: {} for f in self.unique_fields(obj)}
            for field in self.unique_fields(obj):
                column = _record_key(field)
                for record in self.records[obj["id"]].values():
                    key = _unique_key(field, record.get(column))
                    if key is not None:
                        index[field["name"]][key] = record["id"]
            self._unique_cache[obj["id"]] = index
        return index

    def invalidate_unique(self, object_id: str | None = None) -> None:
        if object_id is None:
            self._unique_cache.clear()
        else:
            self._unique_cache.pop(object_id, None)

    def render_field(self, field: dict) -> dict:
        out = {k: v for k, v in field.items() if not k.startswith("relationTarget")}
        if field["type"] == "RELATION":
            source = self.object_by_id(field["objectMetadataId"])
            target = self.object_by_id(field["relationTargetObjectMetadataId"])
            target_field = next(
                (f for f in target["fields"] if f["id"] == field["relationTargetFieldMetadataId"]), None
            )
            out["relation"] = {
                "type": (field.get("settings") or {}).get("relationType"),
                "sourceObjectMetadata": _obj_ref(source),
                "targetObjectMetadata": _obj_ref(target),
                "sourceFieldMetadata": {"id": field["id"], "name": field["name"]},
                "targetFieldMetadata": (
                    {"id": target_field["id"], "name": target_field["name"]} if target_field else None
                ),
            }
        else:
            out["relation"] = None
        return out

    def render_object(self, obj: dict) -> dict:
        out = {k: v for k, v in obj.items() if k != "fields"}
        out["fields"] = [self.render_field(f) for f in obj["fields"]]
        return out

    # ---- records -------------------------------------------------------------------------------

    def _blank_record(self, obj: dict) -> dict:
        """A new record with every active field at its default value."""
        now = _now()
        record: dict[str, Any] = {}
        for field in self.active_fields(obj):
            key, value = _default_for(field)
            if key is not None:
                record[key] = value
        record.update({"id": str(uuid.uuid4()), "createdAt": now, "updatedAt": now, "deletedAt": None,
                       "createdBy": dict(API_ACTOR)})
        return record

    def _insert(self, obj: dict, record: dict) -> None:
        self._counter += 1
        self._seq[record["id"]] = self._counter
        if record.get("position") is None:
            record["position"] = float(self._counter)
        self.records[obj["id"]][record["id"]] = record

    def render_record(self, obj: dict, record: dict, fields: list[str] | None = None) -> dict:
        out: dict[str, Any] = {}
        for field in self.active_fields(obj):
            key = _record_key(field)
            if key is None or key not in record:
                continue
            if fields is not None and key != "id" and key not in fields:
                continue
            out[key] = copy.deepcopy(record[key])
        return out

    def snapshot(self) -> dict:
        """Deep copy of all metadata and every record (soft-deleted too), for before/after checks.

        Shape: ``{"objects": [...rendered objects with fields...],
        "records": {nameSingular: [records in insertion order]},
        "files": {path: {"sha256": hex digest, "size": bytes}}}``.
        """
        with self.lock:
            records = {}
            for obj in self.objects:
                rows = sorted(self.records[obj["id"]].values(), key=lambda r: self._seq[r["id"]])
                records[obj["nameSingular"]] = copy.deepcopy(rows)
            files = {
                path: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
                for path, (content, _type, _name) in sorted(self.files.items())
            }
            return {"objects": [self.render_object(o) for o in self.objects], "records": records,
                    "files": files}

    def store_file(self, folder: str, filename: str, content: bytes, content_type: str) -> str:
        """Keep an uploaded file; return its path ``<folder>/<uuid>-<safe filename>``."""
        safe = re.sub(r"[^\w.-]+", "_", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip("._")
        path = f"{folder}/{uuid.uuid4()}-{safe or 'file'}"
        with self.lock:
            self.files[path] = (content, content_type, filename)
        return path

    def file(self, path: str) -> tuple[bytes, str, str] | None:
        with self.lock:
            return self.files.get(path)

    def records_of(self, name_singular: str, *, include_deleted: bool = True) -> list[dict]:
        """Test helper: deep copies of one object's records in insertion order."""
        with self.lock:
            obj = self.object_by_singular(name_singular)
            rows = sorted(self.records[obj["id"]].values(), key=lambda r: self._seq[r["id"]])
            return copy.deepcopy([r for r in rows if include_deleted or r.get("deletedAt") is None])


UPLOAD_ONLY_MESSAGE = "Only uploadFile is emulated"


class GraphQLError(Exception):
    """A GraphQL error answer: HTTP 200 with ``{"errors": [{"message", "extensions": {"code"}}]}``."""

    def __init__(self, message: str, code: str = "BAD_USER_INPUT"):
        self.message = message
        self.code = code
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"errors": [{"message": self.message, "extensions": {"code": self.code}}]})


def _human_bytes(size: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


_GRAPHQL_COMMENT = re.compile(r"#[^\n]*")
_ARGUMENT = re.compile(r'\s*(\w+)\s*:\s*(\$\w+|\w+|"[^"]*")\s*,?')


def _upload_file_arguments(query: str) -> dict[str, str] | None:
    """Arguments of the only selection of a ``mutation { uploadFile(...) }`` document, else None.

    Not a GraphQL parser: it accepts exactly one mutation whose only top-level field is
    ``uploadFile(...)`` with no sub-selection (the field returns a String path). Anything else,
    queries, other mutations, extra fields, is answered with "Only uploadFile is emulated".
    """
    text = _GRAPHQL_COMMENT.sub("", query).strip()
    m = re.fullmatch(r"mutation\b[^{]*\{\s*(?:\w+\s*:\s*)?uploadFile\s*\(([^()]*)\)\s*\}", text, re.DOTALL)
    if m is None:
        if re.fullmatch(r"mutation\b[^{]*\{\s*(?:\w+\s*:\s*)?uploadFile\s*\([^()]*\)\s*\{.*\}\s*\}", text,
                        re.DOTALL):
            # STRICTER: the emulated schema returns a String, so a sub-selection is a schema error.
            raise GraphQLError(
                'Field "uploadFile" must not have a selection since type "String!" has no subfields.',
                code="GRAPHQL_VALIDATION_FAILED",
            )
        return None
    args: dict[str, str] = {}
    rest = m.group(1)
    pos = 0
    while pos < len(rest):
        am = _ARGUMENT.match(rest, pos)
        if am is None or am.end() == pos:
            if rest[pos:].strip():
                raise GraphQLError(f"Cannot parse the uploadFile arguments '{rest.strip()}'",
                                   code="GRAPHQL_PARSE_FAILED")
            break
        value = am.group(2)
        args[am.group(1)] = value[1:-1] if value.startswith('"') else value
        pos = am.end()
    unknown = set(args) - {"file", "fileFolder"}
    if unknown:
        raise GraphQLError(f'Unknown argument(s) {sorted(unknown)} on field "Mutation.uploadFile".',
                           code="GRAPHQL_VALIDATION_FAILED")
    return args


def _obj_ref(obj: dict) -> dict:
    return {"id": obj["id"], "nameSingular": obj["nameSingular"], "namePlural": obj["namePlural"]}


def _record_key(field: dict) -> str | None:
    """The key a field occupies in a REST record, or None (ONE_TO_MANY relations are not columns)."""
    if field["type"] == "RELATION":
        return _join_column(field)
    return field["name"]


def _default_for(field: dict) -> tuple[str | None, Any]:
    key = _record_key(field)
    ftype = field["type"]
    if key is None or ftype == "RELATION":
        return key, None
    if ftype in COMPOSITES:
        return key, {sub: _sub_default(kind) for sub, kind in COMPOSITES[ftype].items()}
    default = field.get("defaultValue")
    if ftype in ("SELECT", "RATING"):
        return key, _unquote(default) if default is not None else None
    if ftype == "MULTI_SELECT":
        if isinstance(default, str):
            try:
                return key, [_unquote(v) for v in json.loads(default)]
            except ValueError:
                return key, None
        return key, default
    if ftype == "TEXT":
        # Twenty's TEXT columns default to '' rather than NULL.
        return key, _unquote(default) if isinstance(default, str) else ""
    if ftype in ("NUMBER", "NUMERIC", "BOOLEAN", "RAW_JSON", "ARRAY") and default is not None:
        return key, copy.deepcopy(default)
    return key, None


def _sub_default(kind: str) -> Any:
    if kind in ("text", "email", "url", "country", "calling", "currency"):
        return ""
    return None


# --------------------------------------------------------------------------------------------------
# Value validation
# --------------------------------------------------------------------------------------------------


def _where(field: dict, obj: dict) -> str:
    return f"field '{field['name']}' ({field['type']}) on object '{obj['nameSingular']}'"


def _check_sub(kind: str, value: Any) -> str | None:
    """Return an error text when a composite subfield value does not fit, else None."""
    if value is None:
        return None
    if kind in ("text", "text_or_null"):
        return None if isinstance(value, str) else "must be a string"
    if kind == "email":
        if not isinstance(value, str):
            return "must be a string"
        # STRICTER: recent Twenty versions validate e-mail syntax; the emulator always does.
        return None if value == "" or EMAIL_RE.match(value) else f"'{value}' is not a valid e-mail address"
    if kind == "email_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings or null"
        bad = [v for v in value if not EMAIL_RE.match(v)]
        return f"invalid e-mail address(es) {bad}" if bad else None
    if kind == "url":
        if not isinstance(value, str):
            return "must be a string"
        # STRICTER: Twenty's import docs require "https://domain.com"; the emulator rejects bare domains.
        if value and not re.match(r"^https?://[^\s/$.?#].[^\s]*$", value):
            return f"'{value}' must be an absolute http(s) URL such as https://example.com"
        return None
    if kind == "country":
        if not isinstance(value, str):
            return "must be a string"
        # STRICTER (inferred): country codes are ISO 3166-1 alpha-2 like "AU".
        return None if value == "" or re.match(r"^[A-Z]{2}$", value) else (
            f"'{value}' must be an ISO 3166-1 alpha-2 country code such as AU")
    if kind == "calling":
        if not isinstance(value, str):
            return "must be a string"
        return None if value == "" or re.match(r"^\+\d{1,4}$", value) else (
            f"'{value}' must be a calling code such as +61")
    if kind == "currency":
        if not isinstance(value, str):
            return "must be a string"
        return None if value == "" or re.match(r"^[A-Z]{3}$", value) else (
            f"'{value}' must be an ISO 4217 currency code such as AUD")
    if kind == "int":
        # STRICTER: amountMicros must be an integer (amount x 1,000,000), not a float or a string.
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if kind == "number":
        return None if _is_number(value) else "must be a number"
    if kind == "uuid":
        return None if _is_uuid(value) else "must be a UUID"
    if kind == "phone_list":
        if not isinstance(value, list):
            return "must be a list or null"
        allowed = {"number", "countryCode", "callingCode"}
        for item in value:
            if not isinstance(item, dict) or set(item) - allowed:
                return f"items must be objects with keys {sorted(allowed)}"
        return None
    if kind == "link_list":
        if not isinstance(value, list):
            return "must be a list or null"
        for item in value:
            if not isinstance(item, dict) or set(item) - {"url", "label"}:
                return "items must be objects with keys ['label', 'url']"
        return None
    return None


def _check_value(obj: dict, field: dict, value: Any, current: Any = None) -> Any:
    """Validate one written value against its field's type; return the value to store.

    Composite values are merged over ``current`` (the stored value, or the defaults on create): a
    partial composite only changes the subfields it names.
    """
    ftype = field["type"]
    where = _where(field, obj)
    if value is None:
        if not field["isNullable"] and ftype not in COMPOSITES:
            raise TwentyError(f"Null value in non-nullable {where}")
        if ftype in COMPOSITES:
            raise TwentyError(f"{where} is a composite; send an object of subfields, not null")
        return None
    if ftype in COMPOSITES:
        if not isinstance(value, dict):
            raise TwentyError(
                f"{where} expects an object with subfields {sorted(COMPOSITES[ftype])}, "
                f"got {type(value).__name__}"
            )
        merged = dict(current) if isinstance(current, dict) else {
            sub: _sub_default(kind) for sub, kind in COMPOSITES[ftype].items()}
        for sub, sub_value in value.items():
            kind = COMPOSITES[ftype].get(sub)
            if kind is None:
                raise TwentyError(
                    f"Unknown subfield '{sub}' for {where}; expected one of {sorted(COMPOSITES[ftype])}"
                )
            problem = _check_sub(kind, sub_value)
            if problem:
                raise TwentyError(f"{where}: subfield '{sub}' {problem}")
            merged[sub] = copy.deepcopy(sub_value)
        return merged
    if ftype in ("TEXT",):
        if not isinstance(value, str):
            raise TwentyError(f"{where} expects a string, got {type(value).__name__}")
        return value
    if ftype in ("NUMBER", "NUMERIC", "POSITION"):
        if ftype == "POSITION" and value in ("first", "last"):
            return value
        if not _is_number(value):
            raise TwentyError(f"{where} expects a number, got {json.dumps(value)}")
        return value
    if ftype == "BOOLEAN":
        if not isinstance(value, bool):
            raise TwentyError(f"{where} expects true or false, got {json.dumps(value)}")
        return value
    if ftype == "DATE_TIME":
        # STRICTER: a timestamp without an offset is ambiguous (Ascora is Australian-local); Postgres
        # would silently read it as server time. The emulator demands an explicit offset or "Z".
        parsed = _parse_dt(value, need_tz=True) if isinstance(value, str) and "T" in value else None
        if parsed is None:
            raise TwentyError(
                f"{where} expects an ISO 8601 date-time with a timezone, e.g. 2024-05-01T09:30:00Z; "
                f"got {json.dumps(value)}"
            )
        return _fmt_dt(parsed)
    if ftype == "DATE":
        try:
            if not isinstance(value, str) or len(value) != 10:
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            raise TwentyError(f"{where} expects a date YYYY-MM-DD, got {json.dumps(value)}") from None
        return value
    if ftype == "UUID":
        if not _is_uuid(value):
            raise TwentyError(f"{where} expects a UUID, got {json.dumps(value)}")
        return value
    if ftype in ("SELECT", "RATING"):
        allowed = [o["value"] for o in field.get("options") or []]
        if value not in allowed:
            raise TwentyError(f"Invalid value {json.dumps(value)} for {where}; allowed values: {allowed}")
        return value
    if ftype == "MULTI_SELECT":
        allowed = [o["value"] for o in field.get("options") or []]
        if not isinstance(value, list):
            raise TwentyError(f"{where} expects a list of option values, got {json.dumps(value)}")
        bad = [v for v in value if v not in allowed]
        if bad:
            raise TwentyError(f"Invalid value(s) {bad} for {where}; allowed values: {allowed}")
        return list(dict.fromkeys(value))
    if ftype == "ARRAY":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TwentyError(f"{where} expects a list of strings")
        return list(value)
    if ftype == "RAW_JSON":
        return copy.deepcopy(value)
    return value


def _unique_key(field: dict, value: Any) -> Any:
    """The value a unique index compares, or None when the value does not take part (empty/null)."""
    if field["type"] in UNIQUE_SUBFIELD:
        value = (value or {}).get(UNIQUE_SUBFIELD[field["type"]]) if isinstance(value, dict) else None
    if value is None or value == "":
        return None
    if field["type"] == "EMAILS" and isinstance(value, str):
        # STRICTER: e-mails compare case-insensitively, so "A@x.com" and "a@x.com" collide here.
        return value.lower()
    return value


def _unique_label(field: dict) -> str:
    sub = UNIQUE_SUBFIELD.get(field["type"])
    return f"{field['name']}.{sub}" if sub else field["name"]


# --------------------------------------------------------------------------------------------------
# Writes: a small transaction so a batch is all-or-nothing
# --------------------------------------------------------------------------------------------------


class _WriteTxn:
    """Stages writes to one object so a batch can be validated item by item and committed at once."""

    def __init__(self, state: TwentyState, obj: dict):
        self.state = state
        self.obj = obj
        self.live = state.records[obj["id"]]
        self.staged: dict[str, dict] = {}
        self.unique_fields = state.unique_fields(obj)
        # Staged changes to the shared unique index, applied only on commit (all-or-nothing).
        self.base = state.unique_index(obj)
        self.added: dict[str, dict[Any, str]] = {f["name"]: {} for f in self.unique_fields}
        self.removed: dict[str, set] = {f["name"]: set() for f in self.unique_fields}

    def get(self, record_id: str) -> dict | None:
        return self.staged.get(record_id) or self.live.get(record_id)

    def lookup(self, field_name: str, key: Any) -> str | None:
        if key in self.added[field_name]:
            return self.added[field_name][key]
        if key in self.removed[field_name]:
            return None
        return self.base[field_name].get(key)

    def _index_add(self, record: dict) -> None:
        for field in self.unique_fields:
            key = _unique_key(field, record.get(_record_key(field)))
            if key is not None:
                self.added[field["name"]][key] = record["id"]
                self.removed[field["name"]].discard(key)

    def _index_remove(self, record: dict) -> None:
        for field in self.unique_fields:
            key = _unique_key(field, record.get(_record_key(field)))
            if key is None or self.lookup(field["name"], key) != record["id"]:
                continue
            self.added[field["name"]].pop(key, None)
            self.removed[field["name"]].add(key)

    def matches(self, data: dict) -> dict[str, str]:
        """For each unique field in ``data``: the id of the record already holding that value."""
        found = {}
        for field in self.unique_fields:
            key_name = _record_key(field)
            if key_name in data:
                value = data[key_name]
                key = _unique_key(field, value)
                holder = self.lookup(field["name"], key) if key is not None else None
                if holder is not None:
                    found[_unique_label(field)] = holder
        return found

    def check_unique(self, record: dict) -> None:
        for field in self.unique_fields:
            key = _unique_key(field, record.get(_record_key(field)))
            holder_id = self.lookup(field["name"], key) if key is not None else None
            if holder_id is None or holder_id == record["id"]:
                continue
            holder = self.get(holder_id)
            label = _unique_label(field)
            if holder is not None and holder.get("deletedAt"):
                raise TwentyError(
                    f"Record already exists: {label} {json.dumps(key)} is held by a soft-deleted "
                    f"{self.obj['nameSingular']}. Soft-deleted records keep their unique values; restore "
                    f"it (PATCH /rest/restore/{self.obj['namePlural']}/{{id}}) or destroy it first. Find it "
                    f"with filter=deletedAt[is]:NOT_NULL,{label}[eq]:{json.dumps(key)}"
                )
            raise TwentyError(
                f"Record already exists: another {self.obj['nameSingular']} has {label} {json.dumps(key)} "
                f"(unique field)"
            )

    def stage(self, record: dict, previous: dict | None) -> None:
        if previous is not None:
            self._index_remove(previous)
        self.check_unique(record)
        self._index_add(record)
        self.staged[record["id"]] = record

    def commit(self) -> None:
        positions = [r["position"] for r in self.live.values() if _is_number(r.get("position"))]
        for record_id, record in self.staged.items():
            if record.get("position") == "first":
                record["position"] = min(positions, default=1.0) - 1
                positions.append(record["position"])
            elif record.get("position") == "last":
                record["position"] = max(positions, default=0.0) + 1
                positions.append(record["position"])
            if record_id in self.live:
                self.live[record_id] = record
            else:
                self.state._insert(self.obj, record)
        for name, keys in self.removed.items():
            for key in keys:
                self.base[name].pop(key, None)
        for name, keys in self.added.items():
            self.base[name].update(keys)


class TwentyEmulator:
    """Request handling on top of :class:`TwentyState` (kept apart so the state can be snapshotted)."""

    def __init__(self, state: TwentyState):
        self.state = state

    # ---- write validation ----------------------------------------------------------------------

    def _writable(self, obj: dict) -> tuple[dict[str, dict], dict[str, dict]]:
        """(record key -> field) for writable columns, (name -> field) for relation fields by name."""
        columns: dict[str, dict] = {}
        relations: dict[str, dict] = {}
        for field in self.state.active_fields(obj):
            if field["type"] == "RELATION":
                relations[field["name"]] = field
                join = _join_column(field)
                if join:
                    columns[join] = field
            else:
                columns[field["name"]] = field
        return columns, relations

    def _coerce(self, obj: dict, data: Any, *, base: dict, creating: bool, txn: _WriteTxn) -> dict:
        """Apply ``data`` onto a copy of ``base`` with full validation; return the new record."""
        name = obj["nameSingular"]
        if not isinstance(data, dict):
            raise TwentyError(f"A {name} record must be a JSON object, got {type(data).__name__}")
        columns, relations = self._writable(obj)
        record = copy.deepcopy(base)
        for key, value in data.items():
            if key in READ_ONLY_FIELDS:
                raise TwentyError(f"Field '{key}' on object '{name}' is read-only")
            if key == "id":
                if creating:
                    if not _is_uuid(value):
                        raise TwentyError(
                            f"Field 'id' on object '{name}' must be a UUID, got {json.dumps(value)}"
                        )
                    record["id"] = value
                elif value != base["id"]:
                    raise TwentyError(f"Field 'id' on object '{name}' cannot be changed")
                continue
            if key == "createdAt" and not creating:
                raise TwentyError(
                    f"Field 'createdAt' on object '{name}' can only be set when the record is created"
                )
            field = columns.get(key)
            if field is None:
                if key in relations:
                    rel = relations[key]
                    join = _join_column(rel)
                    if join:
                        raise TwentyError(
                            f"Field '{key}' on object '{name}' is a relation; write its join column '{join}' "
                            "with the target record id"
                        )
                    raise TwentyError(
                        f"Field '{key}' on object '{name}' is a one-to-many relation and cannot be written; "
                        "set the join column on the related records instead"
                    )
                raise TwentyError(
                    f"Object '{name}' doesn't have any field named '{key}'. Create it with "
                    "POST /rest/metadata/fields before writing records that use it"
                )
            if field["type"] == "RELATION":
                record[key] = self._check_relation(obj, field, key, value, txn)
            else:
                record[key] = _check_value(obj, field, value, base.get(key))
        if creating:
            for field in self.state.active_fields(obj):
                key = _record_key(field)
                if field["name"] in SYSTEM_FIELD_NAMES:
                    continue
                if key and not field["isNullable"] and record.get(key) is None:
                    raise TwentyError(f"Missing value for non-nullable {_where(field, obj)}")
        return record

    def _check_relation(self, obj: dict, field: dict, key: str, value: Any, txn: _WriteTxn) -> Any:
        if value is None:
            return None
        target = self.state.object_by_id(field["relationTargetObjectMetadataId"])
        if not _is_uuid(value):
            raise TwentyError(
                f"Relation '{key}' on object '{obj['nameSingular']}' expects a {target['nameSingular']} "
                "id (UUID), "
                f"got {json.dumps(value)}"
            )
        if target["id"] == obj["id"]:
            found = txn.get(value)
        else:
            found = self.state.records[target["id"]].get(value)
        if found is None:
            raise TwentyError(
                f"Relation '{key}' on object '{obj['nameSingular']}' points at {target['nameSingular']} "
                f"'{value}', which does not exist. Create the parent record first"
            )
        if found.get("deletedAt"):
            # STRICTER: Twenty's foreign key would accept a soft-deleted parent; a migration that links
            # to a record the user has binned is almost certainly a mistake, so it is refused.
            raise TwentyError(
                f"Relation '{key}' on object '{obj['nameSingular']}' points at {target['nameSingular']} "
                f"'{value}', which is soft-deleted. Restore it first"
            )
        return value

    def _prepare_create(self, obj: dict, data: Any, *, upsert: bool, txn: _WriteTxn) -> dict:
        """Validate one create (or upsert) and stage it in ``txn``."""
        name, plural = obj["nameSingular"], obj["namePlural"]
        if not isinstance(data, dict):
            raise TwentyError(f"A {name} record must be a JSON object, got {type(data).__name__}")
        target: dict | None = None
        given_id = data.get("id")
        if given_id is not None:
            existing = txn.get(given_id) if isinstance(given_id, str) else None
            if existing is not None:
                if not upsert:
                    raise TwentyError(f"Record already exists: a {name} with id '{given_id}' exists")
                target = existing
        elif upsert:
            matched = txn.matches(data)
            ids = set(matched.values())
            if len(ids) > 1:
                raise TwentyError(
                    f"Upsert is ambiguous: the unique values {sorted(matched)} match {len(ids)} different "
                    f"{plural}"
                )
            if ids:
                target = txn.get(ids.pop())
        if target is not None:
            if target.get("deletedAt"):
                # STRICTER: the real upsert may silently restore a soft-deleted match (the seed reports
                # "soft-deleted records ... trigger restores"). Rejecting makes the caller decide.
                raise TwentyError(
                    f"Record already exists: upsert matched a soft-deleted {name} (id '{target['id']}'). "
                    f"Restore it (PATCH /rest/restore/{plural}/{target['id']}) or destroy it first"
                )
            body = {k: v for k, v in data.items() if k not in ("id", "createdAt")}
            record = self._coerce(obj, body, base=target, creating=False, txn=txn)
            record["updatedAt"] = _now()
            txn.stage(record, target)
            return record
        record = self._coerce(obj, data, base=self.state._blank_record(obj), creating=True, txn=txn)
        txn.stage(record, None)
        return record

    # ---- handlers: core records ----------------------------------------------------------------

    def create_one(self, plural: str, body: Any, upsert: bool) -> tuple[int, dict]:
        with self.state.lock:
            obj = self._writable_object(plural)
            txn = _WriteTxn(self.state, obj)
            record = self._prepare_create(obj, body, upsert=upsert, txn=txn)
            txn.commit()
            key = f"create{_cap(obj['nameSingular'])}"
            return 201, {"data": {key: self.state.render_record(obj, record)}}

    def create_batch(self, plural: str, body: Any, upsert: bool) -> tuple[int, dict]:
        with self.state.lock:
            obj = self._writable_object(plural)
            if not isinstance(body, list):
                raise TwentyError("Body must be an array")
            if not body:
                raise TwentyError("Input must not be empty")
            if len(body) > self.state.batch_cap:
                raise TwentyError(
                    f"Batch of {len(body)} {plural} is over the limit of {self.state.batch_cap} records per "
                    "request; split it into smaller batches"
                )
            txn = _WriteTxn(self.state, obj)
            errors: list[str] = []
            created: list[dict] = []
            for index, item in enumerate(body):
                try:
                    created.append(self._prepare_create(obj, item, upsert=upsert, txn=txn))
                except TwentyError as exc:
                    errors.extend(f"item {index}: {m}" for m in exc.messages)
            if errors:
                # STRICTER: all-or-nothing. Nothing is written and every failing item is named, so the
                # client can drop or fix those and resend the rest.
                raise TwentyError(errors)
            txn.commit()
            return 201, {
                "data": {f"create{_cap(plural)}": [self.state.render_record(obj, r) for r in created]}
            }

    def _writable_object(self, plural: str) -> dict:
        obj = self.state.object_by_plural(plural)
        if obj["nameSingular"] == "workspaceMember":
            raise TwentyError(
                "Workspace members cannot be created, changed or deleted through the API; invite users "
                "from Settings > Members and let them accept",
                403,
            )
        return obj

    def _live_record(self, obj: dict, record_id: str, *, allow_deleted: bool = False) -> dict:
        if not _is_uuid(record_id):
            raise TwentyError(f"Invalid UUID '{record_id}'")
        record = self.state.records[obj["id"]].get(record_id)
        if record is None or (record.get("deletedAt") and not allow_deleted):
            raise TwentyError("Record ID not found", 404)
        return record

    def find_one(self, plural: str, record_id: str, params: dict) -> tuple[int, dict]:
        with self.state.lock:
            obj = self.state.object_by_plural(plural)
            fields = self._parse_fields(obj, params.get("fields"))
            _check_depth(params)
            record = self._live_record(obj, record_id)
            return 200, {"data": {obj["nameSingular"]: self.state.render_record(obj, record, fields)}}

    def update(self, plural: str, record_id: str, body: Any) -> tuple[int, dict]:
        with self.state.lock:
            obj = self._writable_object(plural)
            record = self._live_record(obj, record_id)
            txn = _WriteTxn(self.state, obj)
            updated = self._coerce(obj, body, base=record, creating=False, txn=txn)
            updated["updatedAt"] = _now()
            txn.stage(updated, record)
            txn.commit()
            key = f"update{_cap(obj['nameSingular'])}"
            return 200, {"data": {key: self.state.render_record(obj, updated)}}

    def delete(self, plural: str, record_id: str, soft: bool) -> tuple[int, dict]:
        with self.state.lock:
            obj = self._writable_object(plural)
            singular = _cap(obj["nameSingular"])
            if soft:
                record = self._live_record(obj, record_id)
                record["deletedAt"] = _now()
                record["updatedAt"] = record["deletedAt"]
                return 200, {"data": {f"delete{singular}": {"id": record_id}}}
            # Destroy works on live and soft-deleted records alike (it is how the bin is emptied).
            record = self._live_record(obj, record_id, allow_deleted=True)
            rendered = self.state.render_record(obj, record)
            self._destroy(obj, record_id)
            return 200, {"data": {f"destroy{singular}": rendered}}

    def _destroy(self, obj: dict, record_id: str) -> None:
        record = self.state.records[obj["id"]].pop(record_id)
        if obj["nameSingular"] == "attachment":
            self._drop_attachment_file(obj, record.get("fullPath"))
        self.state.invalidate_unique(obj["id"])
        self.state._seq.pop(record_id, None)
        # Relations pointing at the destroyed record: SET NULL, or CASCADE for note/task targets.
        for other in self.state.objects:
            for field in other["fields"]:
                join = _join_column(field)
                if not join or field["relationTargetObjectMetadataId"] != obj["id"]:
                    continue
                for child in list(self.state.records[other["id"]].values()):
                    if child.get(join) != record_id:
                        continue
                    if (other["nameSingular"], join) in _CASCADE:
                        self._destroy(other, child["id"])
                    else:
                        child[join] = None

    def _drop_attachment_file(self, obj: dict, path: Any) -> None:
        """EMULATOR CHOICE: hard-destroying an attachment deletes the stored file at its ``fullPath``
        (whether real Twenty does is unknown), unless another attachment, live or soft-deleted, still
        names the same path. Soft-deleting keeps the file so a restore finds it again."""
        if not isinstance(path, str) or path not in self.state.files:
            return
        if any(r.get("fullPath") == path for r in self.state.records[obj["id"]].values()):
            return
        del self.state.files[path]

    # ---- handlers: file upload (GraphQL multipart) and download --------------------------------

    def upload_file(self, operations: Any, file_map: Any,
                    parts: dict[str, tuple[bytes, str, str, int]]) -> dict:
        """The ``uploadFile`` mutation from a GraphQL multipart request; raise :class:`GraphQLError`.

        ``parts`` maps a multipart field name to (bytes, content type, filename, size) for every file
        part; the bytes may be cut short once the file is known to be over the limit.
        Returns the GraphQL answer ``{"data": {"uploadFile": "<folder>/<uuid>-<filename>"}}``.
        """
        if not isinstance(operations, dict):
            # Batched operations (a JSON array) are part of the multipart spec but not emulated.
            raise GraphQLError("'operations' must be one JSON object with 'query' and 'variables'")
        query = operations.get("query")
        variables = operations.get("variables") or {}
        if not isinstance(query, str) or not isinstance(variables, dict):
            raise GraphQLError("'operations' needs a string 'query' and an object 'variables'")
        args = _upload_file_arguments(query)
        if args is None:
            raise GraphQLError(UPLOAD_ONLY_MESSAGE)
        folder_arg = args.get("fileFolder")
        if folder_arg is None:
            # STRICTER: the schema has fileFolder nullable; the emulator wants it said explicitly.
            raise GraphQLError("uploadFile needs a fileFolder argument, e.g. fileFolder: $fileFolder")
        folder = variables.get(folder_arg[1:]) if folder_arg.startswith("$") else folder_arg
        if folder not in FILE_FOLDERS:
            raise GraphQLError(
                f'Value {json.dumps(folder)} does not exist in "FileFolder" enum; '
                f"use one of {sorted(FILE_FOLDERS)}"
            )
        file_arg = args.get("file")
        if file_arg is None or not file_arg.startswith("$"):
            raise GraphQLError("uploadFile needs its file passed as a variable, e.g. file: $file")
        if variables.get(file_arg[1:]) is not None:
            raise GraphQLError(f"Variable '{file_arg}' must be null in 'operations'; the file goes in 'map'")
        if not isinstance(file_map, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v)
            for k, v in file_map.items()
        ):
            raise GraphQLError("'map' must be a JSON object of file field name -> list of variable paths")
        wanted = f"variables.{file_arg[1:]}"
        keys = [key for key, paths in file_map.items() if wanted in paths]
        if not keys:
            raise GraphQLError(f'Variable "{file_arg}" of non-null type "Upload!" must not be null.')
        if len(keys) > 1:
            raise GraphQLError(f"'map' points {len(keys)} files at {wanted}; send exactly one")
        missing = [key for key in file_map if key not in parts]
        if missing:
            raise GraphQLError(f"'map' names file field(s) {missing} that the request does not contain")
        content, content_type, filename, size = parts[keys[0]]
        limit = self.state.max_file_bytes
        if size > limit or len(content) > limit:
            raise GraphQLError(
                f"File truncated as it exceeds the {limit} byte size limit ({_human_bytes(limit)}): "
                f"'{filename}' is {max(size, len(content))} bytes",
                code="PAYLOAD_TOO_LARGE",
            )
        path = self.state.store_file(FILE_FOLDERS[folder], filename, content, content_type)
        return {"data": {"uploadFile": path}}

    def restore(self, plural: str, record_id: str) -> tuple[int, dict]:
        with self.state.lock:
            obj = self._writable_object(plural)
            record = self._live_record(obj, record_id, allow_deleted=True)
            if not record.get("deletedAt"):
                # STRICTER: restoring a live record is refused rather than treated as a no-op.
                raise TwentyError(f"Record '{record_id}' is not soft-deleted; nothing to restore")
            record["deletedAt"] = None
            record["updatedAt"] = _now()
            key = f"restore{_cap(obj['nameSingular'])}"
            return 200, {"data": {key: self.state.render_record(obj, record)}}

    def find_many(self, plural: str, params: dict) -> tuple[int, dict]:
        with self.state.lock:
            obj = self.state.object_by_plural(plural)
            limit = _parse_limit(params.get("limit"))
            fields = self._parse_fields(obj, params.get("fields"))
            _check_depth(params)
            flt = params.get("filter")
            predicate, touches_deleted = (None, False)
            if flt:
                predicate, touches_deleted = _FilterParser(self.state, obj, flt).parse()
            rows = [
                r for r in self.state.records[obj["id"]].values()
                if (touches_deleted or not r.get("deletedAt")) and (predicate is None or predicate(r))
            ]
            sort_key = _OrderBy(self.state, obj, params.get("order_by"))
            seq = self.state._seq
            if sort_key.getters:
                rows.sort(key=lambda r: sort_key.key(r, seq[r["id"]]))

                def position(r: dict) -> Any:
                    return sort_key.key(r, seq[r["id"]])
            else:
                # Fast path: records are stored in insertion order, so no sort and plain-int compares.
                def position(r: dict) -> Any:
                    return seq[r["id"]]
            total = len(rows)
            after, before = params.get("starting_after"), params.get("ending_before")
            if after and before:
                raise TwentyError("Use either starting_after or ending_before, not both")
            has_previous = None
            if after:
                cursor = sort_key.cursor_position(_decode_cursor(after))
                rows = [r for r in rows if position(r) > cursor]
                page = rows[:limit]
                has_next = len(rows) > limit
            elif before:
                cursor = sort_key.cursor_position(_decode_cursor(before))
                rows = [r for r in rows if position(r) < cursor]
                page = rows[-limit:] if limit else []
                has_next = True
                has_previous = len(rows) > limit
            else:
                page = rows[:limit]
                has_next = len(rows) > limit

            def cursor_of(r: dict) -> str:
                return _encode_cursor(sort_key.key(r, self.state._seq[r["id"]]))

            page_info: dict[str, Any] = {
                "hasNextPage": has_next,
                "startCursor": cursor_of(page[0]) if page else None,
                "endCursor": cursor_of(page[-1]) if page else None,
            }
            if has_previous is not None:
                page_info["hasPreviousPage"] = has_previous
            return 200, {
                "data": {plural: [self.state.render_record(obj, r, fields) for r in page]},
                "pageInfo": page_info,
                "totalCount": total,
            }

    def _parse_fields(self, obj: dict, raw: str | None) -> list[str] | None:
        if not raw:
            return None
        columns, relations = self._writable(obj)
        out = []
        for name in (n.strip() for n in raw.split(",")):
            if not name:
                continue
            if name in columns or name == "id":
                out.append(name)
            elif name in relations and _join_column(relations[name]):
                out.append(_join_column(relations[name]))
            else:
                raise TwentyError(
                    f"'fields' parameter invalid. Object '{obj['nameSingular']}' doesn't have any "
                    "field named "
                    f"'{name}'"
                )
        return out

    # ---- handlers: metadata --------------------------------------------------------------------

    def list_objects(self) -> tuple[int, dict]:
        with self.state.lock:
            objects = [self.state.render_object(o) for o in self.state.objects]
            return 200, {
                "data": {"objects": objects},
                "pageInfo": {"hasNextPage": False, "startCursor": None, "endCursor": None},
                "totalCount": len(objects),
            }

    def get_object(self, object_id: str) -> tuple[int, dict]:
        with self.state.lock:
            return 200, {"data": {"object": self.state.render_object(self.state.object_by_id(object_id))}}

    def create_object(self, body: Any) -> tuple[int, dict]:
        with self.state.lock:
            allowed = {"nameSingular", "namePlural", "labelSingular", "labelPlural", "icon", "description",
                       "isLabelSyncedWithName", "shortcut"}
            body = _require_object_body(body, allowed, "object")
            for key in ("nameSingular", "namePlural", "labelSingular", "labelPlural"):
                if not isinstance(body.get(key), str) or not body[key].strip():
                    raise TwentyError(f"'{key}' is required and must be a non-empty string")
            singular, plural = body["nameSingular"], body["namePlural"]
            for name in (singular, plural):
                _validate_name(name, "Object name")
            if singular == plural:
                raise TwentyError("The singular and plural names cannot be the same for an object")
            taken = {n for o in self.state.objects for n in (o["nameSingular"], o["namePlural"])}
            for name in (singular, plural):
                if name in taken:
                    raise TwentyError(
                        f"Object already exists: the name '{name}' is already used by another object"
                    )
            for target_name in _TARGET_OBJECTS:
                target_obj = self.state.object_by_singular(target_name)
                self._check_name_free(target_obj, singular)
                self._check_name_free(target_obj, f"{singular}Id")
            obj = self.state._new_object(
                singular, plural, body["labelSingular"], body["labelPlural"],
                custom=True, icon=body.get("icon"), description=body.get("description"),
            )
            label_field = _new_field(obj, "name", "TEXT", "Name", icon="IconAbc")
            obj["labelIdentifierFieldMetadataId"] = label_field["id"]
            self.state._add_system_fields(obj)
            for target_name in _TARGET_OBJECTS:
                inverse = self.state.object_by_singular(target_name)["namePlural"]
                self.state._add_relation(self.state.object_by_singular(target_name), singular, obj, inverse,
                                         custom=False, label=body["labelSingular"])
            return 201, {"data": {"createOneObject": self.state.render_object(obj)}}

    def update_object(self, object_id: str, body: Any) -> tuple[int, dict]:
        with self.state.lock:
            obj = self.state.object_by_id(object_id)
            allowed = {"labelSingular", "labelPlural", "description", "icon", "isActive"}
            body = _require_object_body(body, allowed, "object update")
            if "isActive" in body and not obj["isCustom"]:
                raise TwentyError("Standard objects cannot be deactivated")
            for key, value in body.items():
                obj[key] = value
            obj["updatedAt"] = _now()
            self.state.invalidate_unique()
            return 200, {"data": {"updateOneObject": self.state.render_object(obj)}}

    def delete_object(self, object_id: str) -> tuple[int, dict]:
        with self.state.lock:
            obj = self.state.object_by_id(object_id)
            if not obj["isCustom"]:
                raise TwentyError(f"Standard object '{obj['nameSingular']}' cannot be deleted")
            for other in self.state.objects:
                if other is obj:
                    continue
                for field in list(other["fields"]):
                    if field["type"] == "RELATION" and field["relationTargetObjectMetadataId"] == obj["id"]:
                        self._drop_field(other, field)
            for record_id in self.state.records.pop(obj["id"]):
                self.state._seq.pop(record_id, None)
            self.state.objects.remove(obj)
            self.state.invalidate_unique()
            return 200, {"data": {"deleteOneObject": {"id": obj["id"], "nameSingular": obj["nameSingular"]}}}

    def list_fields(self) -> tuple[int, dict]:
        with self.state.lock:
            fields = [self.state.render_field(f) for o in self.state.objects for f in o["fields"]]
            return 200, {
                "data": {"fields": fields},
                "pageInfo": {"hasNextPage": False, "startCursor": None, "endCursor": None},
                "totalCount": len(fields),
            }

    def get_field(self, field_id: str) -> tuple[int, dict]:
        with self.state.lock:
            _obj, field = self.state.field_by_id(field_id)
            return 200, {"data": {"field": self.state.render_field(field)}}

    def create_field(self, body: Any) -> tuple[int, dict]:
        with self.state.lock:
            allowed = {"objectMetadataId", "type", "name", "label", "description", "icon", "isNullable",
                       "isUnique", "defaultValue", "options", "settings", "isLabelSyncedWithName",
                       "relationCreationPayload"}
            body = _require_object_body(body, allowed, "field")
            if not isinstance(body.get("objectMetadataId"), str):
                raise TwentyError("'objectMetadataId' is required")
            obj = self.state.object_by_id(body["objectMetadataId"])
            ftype = body.get("type")
            if ftype not in FIELD_TYPES or ftype in NON_CREATABLE_TYPES:
                raise TwentyError(
                    f"Field type {json.dumps(ftype)} cannot be created; use one of "
                    f"{sorted(FIELD_TYPES - NON_CREATABLE_TYPES)}"
                )
            name, label = body.get("name"), body.get("label")
            _validate_name(name, "Field name")
            if not isinstance(label, str) or not label.strip():
                raise TwentyError("'label' is required and must be a non-empty string")
            self._check_name_free(obj, name)
            if body.get("isUnique") and ftype not in UNIQUE_CAPABLE_TYPES:
                raise TwentyError(f"Fields of type {ftype} cannot be unique")
            if body.get("isNullable") is False and body.get("defaultValue") is None:
                raise TwentyError("Default value is required for non nullable fields")
            options = None
            if ftype in ("SELECT", "MULTI_SELECT"):
                options = _validate_options(body.get("options"))
                _validate_select_default(ftype, options, body.get("defaultValue"))
            elif ftype == "RATING":
                options = _options([f"RATING_{i}" for i in range(1, 6)])
            elif body.get("options") is not None:
                raise TwentyError(f"'options' only applies to SELECT and MULTI_SELECT fields, not {ftype}")
            if ftype == "RELATION":
                field = self._create_relation_field(obj, body)
            else:
                if body.get("relationCreationPayload") is not None:
                    raise TwentyError("'relationCreationPayload' only applies to RELATION fields")
                field = _new_field(
                    obj, name, ftype, label, description=body.get("description"), icon=body.get("icon"),
                    isCustom=True, isNullable=body.get("isNullable", True),
                    isUnique=bool(body.get("isUnique")),
                    defaultValue=body.get("defaultValue"), options=options, settings=body.get("settings"),
                    isLabelSyncedWithName=bool(body.get("isLabelSyncedWithName")),
                )
                key, default = _default_for(field)
                if field["isUnique"] and default not in (None, "") and len(self.state.records[obj["id"]]) > 1:
                    obj["fields"].remove(field)
                    raise TwentyError(
                        "A unique field with a non-empty default cannot be added to an object with records"
                    )
                for record in self.state.records[obj["id"]].values():
                    record[key] = copy.deepcopy(default)
            obj["updatedAt"] = _now()
            self.state.invalidate_unique()
            return 201, {"data": {"createOneField": self.state.render_field(field)}}

    def _check_name_free(self, obj: dict, name: str) -> None:
        taken = set()
        for field in obj["fields"]:
            taken.add(field["name"])
            join = _join_column(field)
            if join:
                taken.add(join)
        if name in taken:
            raise TwentyError(
                f"Name \"{name}\" is not available on object '{obj['nameSingular']}', check that it is not "
                "duplicating another field's name."
            )

    def _create_relation_field(self, obj: dict, body: dict) -> dict:
        payload = body.get("relationCreationPayload")
        if not isinstance(payload, dict):
            raise TwentyError("'relationCreationPayload' is required for RELATION fields")
        unknown = set(payload) - {"type", "targetObjectMetadataId", "targetFieldName", "targetFieldLabel",
                                  "targetFieldIcon"}
        if unknown:
            raise TwentyError(f"Unknown keys in relationCreationPayload: {sorted(unknown)}")
        rel_type = payload.get("type")
        if rel_type not in ("MANY_TO_ONE", "ONE_TO_MANY"):
            raise TwentyError("relationCreationPayload.type must be MANY_TO_ONE or ONE_TO_MANY")
        target = self.state.object_by_id(str(payload.get("targetObjectMetadataId")))
        target_name, target_label = payload.get("targetFieldName"), payload.get("targetFieldLabel")
        _validate_name(target_name, "Target field name")
        if not isinstance(target_label, str) or not target_label.strip():
            raise TwentyError("relationCreationPayload.targetFieldLabel is required")
        if not payload.get("targetFieldIcon"):
            # Reported by third-party scripts as required by the real API.
            raise TwentyError("relationCreationPayload.targetFieldIcon is required")
        if body.get("isUnique"):
            raise TwentyError("Relation fields cannot be unique")
        name = body["name"]
        if target is obj and target_name == name:
            raise TwentyError("A self-relation needs different names on its two sides")
        self._check_name_free(target, target_name)
        if rel_type == "MANY_TO_ONE":
            self._check_name_free(obj, f"{name}Id")
            self._check_name_free(target, target_name)
            many, _one = self.state._add_relation(
                obj, name, target, target_name, custom=True, label=body["label"], inverse_label=target_label,
                icon=body.get("icon"), inverse_icon=payload["targetFieldIcon"],
                description=body.get("description"))
            for record in self.state.records[obj["id"]].values():
                record[f"{name}Id"] = None
            return many
        self._check_name_free(target, f"{target_name}Id")
        many, one = self.state._add_relation(
            target, target_name, obj, name, custom=True, label=target_label, inverse_label=body["label"],
            icon=payload["targetFieldIcon"], inverse_icon=body.get("icon"))
        for record in self.state.records[target["id"]].values():
            record[f"{target_name}Id"] = None
        return one

    def update_field(self, field_id: str, body: Any) -> tuple[int, dict]:
        with self.state.lock:
            obj, field = self.state.field_by_id(field_id)
            body = _require_object_body(
                body,
                {"label", "description", "icon", "isActive", "options", "defaultValue",
                 "isLabelSyncedWithName"},
                "field update",
            )
            if body.get("isActive") is False and obj["labelIdentifierFieldMetadataId"] == field["id"]:
                raise TwentyError("Cannot deactivate the label identifier field; pick another one first")
            if body.get("isActive") is False and field["name"] in SYSTEM_FIELD_NAMES:
                raise TwentyError(f"System field '{field['name']}' cannot be deactivated")
            if "options" in body:
                if field["type"] not in ("SELECT", "MULTI_SELECT"):
                    raise TwentyError(
                        f"'options' only applies to SELECT and MULTI_SELECT fields, not {field['type']}"
                    )
                options = _validate_options(body["options"])
                values = {o["value"] for o in options}
                key = _record_key(field)
                in_use: dict[str, int] = {}
                for record in self.state.records[obj["id"]].values():
                    current = record.get(key)
                    for value in current if isinstance(current, list) else [current]:
                        if value is not None and value not in values:
                            in_use[value] = in_use.get(value, 0) + 1
                if in_use:
                    # STRICTER: Twenty would null the values out; the emulator refuses to lose data.
                    raise TwentyError(
                        f"Cannot remove option(s) still used by records of '{obj['nameSingular']}': "
                        + ", ".join(f"{v} ({n} records)" for v, n in sorted(in_use.items()))
                    )
                default = body.get("defaultValue", field["defaultValue"])
                _validate_select_default(field["type"], options, default)
                field["options"] = options
            elif "defaultValue" in body and field["type"] in ("SELECT", "MULTI_SELECT"):
                _validate_select_default(field["type"], field["options"] or [], body["defaultValue"])
            for key in ("label", "description", "icon", "isActive", "defaultValue", "isLabelSyncedWithName"):
                if key in body:
                    field[key] = body[key]
            field["updatedAt"] = _now()
            self.state.invalidate_unique()
            return 200, {"data": {"updateOneField": self.state.render_field(field)}}

    def delete_field(self, field_id: str) -> tuple[int, dict]:
        with self.state.lock:
            obj, field = self.state.field_by_id(field_id)
            if not field["isCustom"]:
                raise TwentyError(
                    f"Standard field '{field['name']}' on '{obj['nameSingular']}' cannot be deleted"
                )
            if obj["labelIdentifierFieldMetadataId"] == field["id"]:
                raise TwentyError("Cannot delete, please update the label identifier field first")
            rendered = self.state.render_field(field)
            self._drop_field(obj, field)
            return 200, {"data": {"deleteOneField": rendered}}

    def _drop_field(self, obj: dict, field: dict) -> None:
        """Remove a field (and, for relations, its other side) and its values from every record."""
        self.state.invalidate_unique()
        pairs = [(obj, field)]
        if field["type"] == "RELATION" and field["relationTargetFieldMetadataId"]:
            try:
                pairs.append(self.state.field_by_id(field["relationTargetFieldMetadataId"]))
            except TwentyError:
                pass
        for owner, item in pairs:
            key = _record_key(item)
            if item in owner["fields"]:
                owner["fields"].remove(item)
            if key and owner["id"] in self.state.records:
                for record in self.state.records[owner["id"]].values():
                    record.pop(key, None)


# --------------------------------------------------------------------------------------------------
# Query parameters: limit, depth, cursors, order_by, filter
# --------------------------------------------------------------------------------------------------


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not re.fullmatch(r"\d+", raw):
        raise TwentyError(f"limit '{raw}' is invalid. Should be an integer")
    limit = int(raw)
    if limit > MAX_PAGE_SIZE:
        raise TwentyError(f"limit '{raw}' is invalid. Should be an integer between 0 and {MAX_PAGE_SIZE}")
    return limit


def _check_depth(params: dict) -> None:
    depth = params.get("depth")
    if depth not in (None, "0"):
        # The emulator answers at depth 0 only (relations as join columns such as companyId), so a
        # client cannot come to rely on embedded related records it has not modelled.
        raise TwentyError(
            f"depth '{depth}' is not supported by the emulator; use depth=0 (join columns only)"
        )


def _decode_cursor(raw: str) -> Any:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError):
        raise TwentyError(f"Invalid cursor '{raw}'") from None
    return _Key.from_json(value)


class _Key:
    """A sortable tuple whose parts know their direction; also what a cursor encodes."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[int, Any, bool]]):
        self.parts = parts  # (null rank, value, descending)

    @classmethod
    def from_json(cls, value: Any) -> _Key:
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 3 for p in value):
            raise TwentyError("Invalid cursor")
        return cls([(int(a), b, bool(c)) for a, b, c in value])

    def _cmp(self, other: _Key) -> int:
        if len(self.parts) != len(other.parts):
            raise TwentyError("Cursor does not match the requested order_by")
        for (rank_a, a, desc), (rank_b, b, _desc) in zip(self.parts, other.parts, strict=True):
            if rank_a != rank_b:
                return -1 if rank_a < rank_b else 1
            if a == b or a is None:
                continue
            try:
                less = a < b
            except TypeError:
                less = str(a) < str(b)
            result = -1 if less else 1
            return -result if desc else result
        return 0

    def __lt__(self, other: _Key) -> bool:
        return self._cmp(other) < 0

    def __gt__(self, other: _Key) -> bool:
        return self._cmp(other) > 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._cmp(other) == 0

    __hash__ = None  # type: ignore[assignment]


def _encode_cursor(key: _Key) -> str:
    """Opaque cursor: the row's sort key (order_by values + insertion sequence), base64 JSON."""
    data = json.dumps([list(p) for p in key.parts], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


_DIRECTIONS = {
    "AscNullsFirst": (False, True), "AscNullsLast": (False, False),
    "DescNullsFirst": (True, True), "DescNullsLast": (True, False),
}


class _OrderBy:
    """``order_by=field[AscNullsFirst],other.sub[DescNullsLast]``; insertion order breaks ties."""

    def __init__(self, state: TwentyState, obj: dict, raw: str | None):
        self.getters: list[tuple[Callable[[dict], Any], bool, bool]] = []
        for part in (p.strip() for p in (raw or "").split(",") if p.strip()):
            m = re.fullmatch(r"([A-Za-z0-9_.]+)(?:\[(\w+)\])?", part)
            if not m or (m.group(2) and m.group(2) not in _DIRECTIONS):
                raise TwentyError(
                    f"order_by '{part}' is invalid; use "
                    "field[AscNullsFirst|AscNullsLast|DescNullsFirst|DescNullsLast]"
                )
            getter, _field, _sub = _resolve_path(state, obj, m.group(1), "order_by")
            desc, nulls_first = _DIRECTIONS[m.group(2) or "AscNullsFirst"]
            self.getters.append((getter, desc, nulls_first))

    def cursor_position(self, key: _Key) -> Any:
        """What :meth:`key` (or the plain sequence number, when unordered) is compared against."""
        if len(key.parts) != len(self.getters) + 1:
            raise TwentyError("Cursor does not match the requested order_by")
        return key if self.getters else key.parts[-1][1]

    def key(self, record: dict, seq: int) -> _Key:
        parts = []
        for getter, desc, nulls_first in self.getters:
            value = getter(record)
            if value is None:
                parts.append((0 if nulls_first else 2, None, desc))
            else:
                parts.append((1, value, desc))
        parts.append((1, seq, False))
        return _Key(parts)


def _resolve_path(
    state: TwentyState, obj: dict, path: str, what: str
) -> tuple[Callable[[dict], Any], dict, str | None]:
    """Map ``field``, ``field.subfield`` or a join column to a getter over stored records."""
    head, _, sub = path.partition(".")
    for field in state.active_fields(obj):
        key = _record_key(field)
        if field["type"] == "RELATION":
            if key and head == key and not sub:
                return (lambda r, k=key: r.get(k)), field, None
            if head == field["name"]:
                raise TwentyError(
                    f"{what}: '{head}' on object '{obj['nameSingular']}' is a relation; use its join column "
                    f"'{key or '(none: one-to-many)'}'"
                )
            continue
        if head != field["name"]:
            continue
        if field["type"] in COMPOSITES:
            if not sub or sub not in COMPOSITES[field["type"]]:
                raise TwentyError(
                    f"{what}: composite field '{head}' needs a subfield, one of "
                    f"{sorted(COMPOSITES[field['type']])}"
                )
            return (lambda r, k=key, s=sub: (r.get(k) or {}).get(s)), field, sub
        if sub:
            raise TwentyError(f"{what}: field '{head}' has no subfields")
        return (lambda r, k=key: r.get(k)), field, None
    raise TwentyError(f"{what}: object '{obj['nameSingular']}' doesn't have any field named '{head}'")


_OPS = {"eq", "neq", "in", "is", "gt", "gte", "lt", "lte", "like", "ilike", "startsWith", "containsAny"}


class _FilterParser:
    """Parse Twenty's REST filter grammar into a predicate.

    ``field[op]:value`` joined by commas (AND), plus ``and(...)``, ``or(...)``, ``not(...)``. Values may
    be quoted with ``"`` or ``'``; ``in``/``containsAny`` take ``[a,b]``. Returns (predicate, whether
    the filter mentions deletedAt — soft-deleted rows are only visible when it does).
    """

    def __init__(self, state: TwentyState, obj: dict, text: str):
        self.state, self.obj, self.text, self.pos = state, obj, text, 0
        self.touches_deleted = False

    def error(self, message: str) -> TwentyError:
        return TwentyError(f"Invalid filter '{self.text}': {message} (at position {self.pos})")

    def parse(self) -> tuple[Callable[[dict], bool], bool]:
        predicate = self._list()
        if self.pos != len(self.text):
            raise self.error("unexpected trailing text")
        return predicate, self.touches_deleted

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _list(self) -> Callable[[dict], bool]:
        items = [self._term()]
        while self._peek() == ",":
            self.pos += 1
            items.append(self._term())
        return lambda r: all(p(r) for p in items)

    def _term(self) -> Callable[[dict], bool]:
        for combinator in ("and", "or", "not"):
            if self.text.startswith(combinator + "(", self.pos):
                self.pos += len(combinator) + 1
                items = [self._term()]
                while self._peek() == ",":
                    self.pos += 1
                    items.append(self._term())
                if self._peek() != ")":
                    raise self.error("expected ')'")
                self.pos += 1
                if combinator == "and":
                    return lambda r: all(p(r) for p in items)
                if combinator == "or":
                    return lambda r: any(p(r) for p in items)
                if len(items) != 1:
                    raise self.error("not(...) takes exactly one condition")
                return lambda r: not items[0](r)
        return self._comparison()

    def _comparison(self) -> Callable[[dict], bool]:
        m = re.compile(r"([A-Za-z0-9_.]+)\[(\w+)\]:").match(self.text, self.pos)
        if not m:
            raise self.error("expected field[operator]:value")
        path, op = m.group(1), m.group(2)
        if op not in _OPS:
            raise self.error(f"unknown operator '{op}'; use one of {sorted(_OPS)}")
        self.pos = m.end()
        getter, field, sub = _resolve_path(self.state, self.obj, path, "filter")
        if path == "deletedAt":
            self.touches_deleted = True
        if op in ("in", "containsAny"):
            raw_values = self._array()
            values = [self._coerce(field, sub, v) for v in raw_values]
        else:
            raw = self._scalar()
            if op == "is":
                if raw not in ("NULL", "NOT_NULL"):
                    raise self.error("'is' takes NULL or NOT_NULL")
                want_null = raw == "NULL"
                return lambda r: (getter(r) is None) == want_null
            value = self._coerce(field, sub, raw)
        return _comparator(op, getter, values if op in ("in", "containsAny") else value, field, sub)

    def _scalar(self) -> str:
        if self._peek() in ("'", '"'):
            quote = self._peek()
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",)":
            self.pos += 1
        return self.text[start:self.pos]

    def _array(self) -> list[str]:
        if self._peek() != "[":
            raise self.error("expected '[' to start a list")
        self.pos += 1
        values: list[str] = []
        while True:
            if self._peek() in ("'", '"'):
                values.append(self._scalar())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] not in ",]":
                    self.pos += 1
                token = self.text[start:self.pos].strip()
                if token:
                    values.append(token)
            if self._peek() == ",":
                self.pos += 1
                continue
            if self._peek() == "]":
                self.pos += 1
                return values
            raise self.error("expected ',' or ']' in list")

    def _coerce(self, field: dict, sub: str | None, raw: str) -> Any:
        ftype = field["type"]
        kind = COMPOSITES.get(ftype, {}).get(sub) if sub else None
        if ftype in ("NUMBER", "NUMERIC", "POSITION") or kind in ("int", "number"):
            try:
                return float(raw)
            except ValueError:
                raise self.error(f"'{raw}' is not a number") from None
        if ftype == "BOOLEAN":
            if raw.lower() not in ("true", "false"):
                raise self.error(f"'{raw}' is not a boolean")
            return raw.lower() == "true"
        if ftype in ("SELECT", "MULTI_SELECT", "RATING"):
            allowed = [o["value"] for o in field.get("options") or []]
            if raw not in allowed:
                raise self.error(f"'{raw}' is not an option of '{field['name']}'; allowed values: {allowed}")
            return raw
        if ftype == "DATE_TIME":
            parsed = _parse_dt(raw, need_tz=False)
            if parsed is None:
                raise self.error(f"'{raw}' is not an ISO date-time")
            return parsed
        return raw


def _comparator(
    op: str, getter: Callable[[dict], Any], target: Any, field: dict, sub: str | None
) -> Callable[[dict], bool]:
    is_dt = field["type"] == "DATE_TIME"

    def value_of(record: dict) -> Any:
        value = getter(record)
        if is_dt and isinstance(value, str):
            return _parse_dt(value, need_tz=False)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return value

    def compare(fn: Callable[[Any, Any], bool]) -> Callable[[dict], bool]:
        def run(record: dict) -> bool:
            value = value_of(record)
            if value is None:
                return False
            try:
                return fn(value, target)
            except TypeError:
                return False
        return run

    if op == "eq":
        return lambda r: value_of(r) == target
    if op == "neq":
        return compare(lambda a, b: a != b)  # SQL semantics: NULL != x is not true
    if op == "in":
        return lambda r: value_of(r) in target
    if op == "containsAny":
        return lambda r: isinstance(getter(r), list) and any(v in target for v in getter(r))
    if op == "gt":
        return compare(lambda a, b: a > b)
    if op == "gte":
        return compare(lambda a, b: a >= b)
    if op == "lt":
        return compare(lambda a, b: a < b)
    if op == "lte":
        return compare(lambda a, b: a <= b)
    if op == "startsWith":
        return compare(lambda a, b: isinstance(a, str) and a.startswith(str(b)))
    # like / ilike: SQL patterns with % and _
    pattern = "^" + re.escape(str(target)).replace("%", ".*").replace("_", ".") + "$"
    regex = re.compile(pattern, re.IGNORECASE if op == "ilike" else 0)
    return compare(lambda a, _b: isinstance(a, str) and regex.match(a) is not None)


# --------------------------------------------------------------------------------------------------
# Metadata input validation
# --------------------------------------------------------------------------------------------------


def _require_object_body(body: Any, allowed: set[str], what: str) -> dict:
    if not isinstance(body, dict):
        raise TwentyError(f"The {what} body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        # STRICTER: unknown keys are rejected (NestJS validation with forbidNonWhitelisted), so typos
        # such as "isUniq" are caught instead of silently ignored.
        raise TwentyError(f"Unknown key(s) {sorted(unknown)} in {what} input; allowed: {sorted(allowed)}")
    return body


def _validate_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise TwentyError(f"{what} is required")
    if len(name) > 63:
        raise TwentyError(f"{what} '{name}' exceeds 63 characters")
    if not CAMEL_CASE.match(name):
        raise TwentyError(f"{what} '{name}' should be in camelCase (letters and digits, starting lower-case)")
    if name in RESERVED_NAMES:
        raise TwentyError(f"{what} '{name}' is a reserved word")


def _validate_options(options: Any) -> list[dict]:
    if not isinstance(options, list) or not options:
        raise TwentyError("Options are required for enum fields")
    out: list[dict] = []
    seen_values, seen_positions = set(), set()
    for index, option in enumerate(options):
        if not isinstance(option, dict):
            raise TwentyError(f"Option {index} must be an object with label, value, color, position")
        unknown = set(option) - {"id", "label", "value", "color", "position"}
        if unknown:
            raise TwentyError(f"Option {index} has unknown key(s) {sorted(unknown)}")
        label, value = option.get("label"), option.get("value")
        if not isinstance(label, str) or not label.strip():
            raise TwentyError("Label must not be empty")
        if "," in label:
            raise TwentyError("Label must not contain a comma")
        if len(label) > 63:
            raise TwentyError(f'Option label "{label}" exceeds 63 characters')
        if not isinstance(value, str) or not UPPER_SNAKE.match(value) or len(value) > 63:
            raise TwentyError(f'Value must be in UPPER_CASE and follow snake_case "{value}"')
        position = option.get("position", index)
        if not _is_number(position):
            raise TwentyError(f"Option {index} position must be a number")
        if value in seen_values:
            raise TwentyError(f'Duplicated option value "{value}"')
        if position in seen_positions:
            raise TwentyError(f'Duplicated option position "{position}"')
        if option.get("id") is not None and not _is_uuid(option["id"]):
            raise TwentyError("Option id is invalid")
        seen_values.add(value)
        seen_positions.add(position)
        out.append({"id": option.get("id") or str(uuid.uuid4()), "label": label, "value": value,
                    "color": option.get("color") or "gray", "position": position})
    return out


def _validate_select_default(ftype: str, options: list[dict], default: Any) -> None:
    if default is None:
        return
    values = {o["value"] for o in options}
    if ftype == "SELECT":
        if _unquote(default) not in values:
            raise TwentyError(f'Default value "{default}" must be one of the option values')
        return
    try:
        parsed = json.loads(default) if isinstance(default, str) else default
    except ValueError:
        raise TwentyError("Default value for multi-select must be an array") from None
    if not isinstance(parsed, list) or not all(_unquote(v) in values for v in parsed):
        raise TwentyError("Default values must be one of the option values")


# --------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------


def _json_field(fields: dict[str, str], name: str) -> Any:
    if name not in fields:
        raise GraphQLError(f"Missing multipart form field '{name}' (graphql-multipart-request-spec)")
    try:
        return json.loads(fields[name])
    except ValueError:
        raise GraphQLError(f"Multipart form field '{name}' is not valid JSON") from None


def create_app(
    *,
    api_key: str = DEFAULT_API_KEY,
    rate_limit: int | None = 100,
    window: float = 60.0,
    batch_cap: int = 60,
    members: list[dict] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
):
    """Build the Twenty emulator, wrapped by :func:`instrument` (request log, 429s, faults).

    ``rate_limit`` requests per ``window`` seconds per API key mirror Twenty's published 100/min;
    ``batch_cap`` is the documented 60 records per batch call; ``members`` seeds workspace members
    (list of ``{"email","firstName","lastName"}``; three defaults when omitted) because members can
    only be invited through the UI, never created through the API. ``max_file_bytes`` caps one
    ``uploadFile`` (``POST /graphql``, multipart); stored files are served at ``GET /files/{path}``.
    """
    state = TwentyState(api_key=api_key, batch_cap=batch_cap, members=members, max_file_bytes=max_file_bytes)
    emulator = TwentyEmulator(state)

    def unauthorized(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") == f"Bearer {state.api_key}":
            return None
        return JSONResponse(
            {"statusCode": 401, "error": "Unauthorized", "messages": ["Token invalid."]}, status_code=401
        )

    async def graphql(request: Request) -> JSONResponse:
        """Only the multipart ``uploadFile`` mutation; any other GraphQL request gets a GraphQL error."""
        denied = unauthorized(request)
        if denied is not None:
            return denied
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return GraphQLError(UPLOAD_ONLY_MESSAGE).response()
        try:
            # Plain fields (operations, map) are capped at 1 MB; file parts spool to disk.
            async with request.form(max_files=10, max_fields=10, max_part_size=1024 * 1024) as form:
                fields: dict[str, str] = {}
                parts: dict[str, tuple[bytes, str, str, int]] = {}
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        fields[key] = value
                    else:
                        # Read one byte past the cap at most: enough to know the file is too big.
                        content = await value.read(state.max_file_bytes + 1)
                        parts[key] = (content, value.content_type or "application/octet-stream",
                                      value.filename or key, value.size or len(content))
                operations, file_map = (_json_field(fields, name) for name in ("operations", "map"))
                payload = emulator.upload_file(operations, file_map, parts)
        except GraphQLError as exc:
            return exc.response()
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            body = GraphQLError(f"Invalid multipart request: {exc.detail}").response().body
            return Response(body, status_code=exc.status_code, media_type="application/json")
        return JSONResponse(payload)

    async def download(request: Request) -> Response:
        # Real Twenty serves /files/<path>?token=<signed file token>; the emulator takes the API key.
        denied = unauthorized(request)
        if denied is not None:
            return denied
        stored = state.file(request.path_params["path"])
        if stored is None:
            return TwentyError("File not found", 404).response()
        content, content_type, filename = stored
        return Response(content, media_type=content_type,
                        headers={"Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}"})

    def endpoint(handler: Callable[..., tuple[int, dict]], *, body: bool = False, auth: bool = True):
        async def run(request: Request) -> JSONResponse:
            if auth and request.headers.get("authorization") != f"Bearer {state.api_key}":
                return JSONResponse(
                    {"statusCode": 401, "error": "Unauthorized", "messages": ["Token invalid."]},
                    status_code=401,
                )
            try:
                args = dict(request.path_params)
                if body:
                    raw = await request.body()
                    try:
                        args["body"] = json.loads(raw) if raw else None
                    except ValueError:
                        raise TwentyError("Invalid JSON body") from None
                status, payload = handler(request, **args)
            except TwentyError as exc:
                return exc.response()
            return JSONResponse(payload, status_code=status)

        return run

    def q(request: Request) -> dict:
        return dict(request.query_params)

    def upsert_flag(request: Request) -> bool:
        return request.query_params.get("upsert") == "true"

    def soft_flag(request: Request) -> bool:
        return request.query_params.get("soft_delete") == "true"

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/graphql", graphql, methods=["POST"]),
        Route("/files/{path:path}", download, methods=["GET"]),
        Route("/rest/metadata/objects", endpoint(lambda r: emulator.list_objects()), methods=["GET"]),
        Route("/rest/metadata/objects", endpoint(lambda r, body: emulator.create_object(body), body=True),
              methods=["POST"]),
        Route("/rest/metadata/objects/{id}", endpoint(lambda r, id: emulator.get_object(id)),
              methods=["GET"]),
        Route("/rest/metadata/objects/{id}",
              endpoint(lambda r, id, body: emulator.update_object(id, body), body=True), methods=["PATCH"]),
        Route("/rest/metadata/objects/{id}", endpoint(lambda r, id: emulator.delete_object(id)),
              methods=["DELETE"]),
        Route("/rest/metadata/fields", endpoint(lambda r: emulator.list_fields()), methods=["GET"]),
        Route("/rest/metadata/fields", endpoint(lambda r, body: emulator.create_field(body), body=True),
              methods=["POST"]),
        Route("/rest/metadata/fields/{id}", endpoint(lambda r, id: emulator.get_field(id)), methods=["GET"]),
        Route("/rest/metadata/fields/{id}",
              endpoint(lambda r, id, body: emulator.update_field(id, body), body=True), methods=["PATCH"]),
        Route("/rest/metadata/fields/{id}", endpoint(lambda r, id: emulator.delete_field(id)),
              methods=["DELETE"]),
        Route("/rest/batch/{plural}",
              endpoint(lambda r, plural, body: emulator.create_batch(plural, body, upsert_flag(r)),
                       body=True),
              methods=["POST"]),
        Route("/rest/restore/{plural}/{id}",
              endpoint(lambda r, plural, id, body: emulator.restore(plural, id), body=True),
              methods=["PATCH"]),
        Route("/rest/{plural}", endpoint(lambda r, plural: emulator.find_many(plural, q(r))),
              methods=["GET"]),
        Route("/rest/{plural}",
              endpoint(lambda r, plural, body: emulator.create_one(plural, body, upsert_flag(r)), body=True),
              methods=["POST"]),
        Route("/rest/{plural}/{id}", endpoint(lambda r, plural, id: emulator.find_one(plural, id, q(r))),
              methods=["GET"]),
        Route("/rest/{plural}/{id}",
              endpoint(lambda r, plural, id, body: emulator.update(plural, id, body), body=True),
              methods=["PATCH", "PUT"]),
        Route("/rest/{plural}/{id}",
              endpoint(lambda r, plural, id: emulator.delete(plural, id, soft_flag(r))),
              methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.twenty = state
    app.state.twenty_emulator = emulator
    return instrument(app, rate_limit=rate_limit, window=window)
