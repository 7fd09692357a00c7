"""Microsoft Dynamics 365 Sales destination: neutral records to Dataverse Web API rows and back.

Dataverse specifics this module owns (and nothing else):

* **Names.** The mapping names standard tables and columns by their logical names (``account``,
  ``telephone1``, ``parentcustomerid``) and our custom tables and columns *without* the publisher
  prefix (``job``, ``ascora_id``); the prefix comes from the connection (``publisher_prefix``), so one
  approved mapping fits every environment of the same publisher. Only the standard tables this
  migration writes are exposed (``quote`` and ``invoice`` therefore mean the Ascora custom tables, not
  Dynamics' own quote and invoice tables).
* **Keys.** Every table we write has an ``ascora_id`` column with an alternate key (index polled until
  Active). New rows are POSTed (the documented place for ``overriddencreatedon``), updates are PATCHes
  by id with ``If-Match: *``; the key makes a second row with the same Ascora id impossible, and after an
  interrupted batch the engine finds rows by it. Notes (``annotation``) cannot get custom columns, so
  their Ascora id is a ``[ascora:<id>]`` tag line in ``notetext``.
* **Lookups** are written as ``<navigation property>@odata.bind`` with the navigation property read
  from the table's ``ManyToOneRelationships`` for the referenced table, never derived from a name.
  Clearing a lookup on update is ``DELETE …/<navigation>/$ref``.
* **Choices** travel as their labels in the mapping and as option values on the wire.
* **Files** go into ``annotation.documentbody`` as base64 when the base64 text fits the organisation's
  ``MaxUploadFileSize``; a larger file is either refused (quarantined) or, when the connection names a
  ``large_file_link`` (a SharePoint folder URL template), recorded as a note that links to it and
  carries the file's name, size and SHA-256.
* **Licence.** On Professional (``licence: professional``) the 15-custom-table limit is checked before a
  table is created and by :meth:`DynamicsDestination.check_plan` for a whole plan.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_ascora_provider.destinations.spec import (
    Capabilities,
    DestField,
    Destination,
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

# Standard tables a mapping may target (anything else standard is not exposed, see the module doc).
STANDARD_TABLES = ("account", "contact", "lead", "opportunity", "opportunityproduct", "task", "annotation",
                   "customeraddress")
# Lookup targets a new lookup column may point at besides exposed tables.
LOOKUP_ONLY_TABLES = {"systemuser"}
PROFESSIONAL_TABLE_LIMIT = 15
KEY_COLUMN_LENGTH = 100  # Ascora ids (GUIDs, or export-derived keys) fit; 900-byte index limit
NOTE_TAG = re.compile(r"\n?\[ascora:([^\]\n]+)\]")
FILE_MARKER = re.compile(r"\n?\[file name=(?P<name>[^\]]*?) size=(?P<size>\d+) sha256=(?P<sha>[0-9a-f]{64})\]")
_FIELD_IN_MESSAGE = re.compile(r"(?:property|attribute|column) '([A-Za-z0-9_]+)'", re.IGNORECASE)
NEUTRAL_TO_KIND = {"text": "String", "long_text": "Memo", "rich_text": "Memo", "number": "Decimal",
                   "currency": "Money", "date": "Date", "datetime": "DateTime", "boolean": "Boolean",
                   "picklist": "Picklist", "multi_picklist": "MultiPicklist", "email": "Email", "phone": "Phone",
                   "url": "Url", "full_name": "String"}


class SchemaLimitExceeded(RuntimeError):
    """The licence does not allow another custom table."""


class EncodeError(ValueError):
    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field = field_name


@dataclass
class TableMeta:
    """What the plugin needs of one table's metadata (read once, refreshed after schema changes)."""

    logical: str
    name: str  # the mapping's name
    set_name: str
    primary_id: str
    custom: bool
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)  # logical -> attribute metadata
    navigation: dict[tuple[str, str], str] = field(default_factory=dict)  # (attribute, target table) -> nav
    unique: set[str] = field(default_factory=set)
    options: dict[str, dict[int, str]] = field(default_factory=dict)


class DynamicsDestination(Destination):
    name = "dynamics365"
    label = "Microsoft Dynamics 365 Sales"
    connection_type = "dataverse"
    default_mapping = Path(__file__).with_name("mapping.yaml")
    capabilities = Capabilities(
        batch_size=1000,  # $batch cap; the connection's batch_size (default 100) is what is used
        rate_limit=RateLimit(6000, 300.0),
        external_id="alternate_key",
        creatable=frozenset({"custom_object", "custom_field", "picklist_option"}),
        manual=frozenset(),
        plan_limits={"requests_per_5_minutes": 6000, "execution_ms_per_5_minutes": 1_200_000,
                     "concurrent_requests": 52, "batch_requests": 1000,
                     "custom_tables_professional": PROFESSIONAL_TABLE_LIMIT},
        # A new user-owned table is born with its primary name, owner and the created-on override.
        custom_object_fields=frozenset({"name", "ownerid", "overriddencreatedon"}),
        max_file_bytes=96 * 1024 * 1024,  # 128 MB of base64 at most, whatever the organisation allows
        max_concurrency=4,
    )

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        super().__init__(conn_id, **options)
        from airflow_ascora_provider.hooks.dataverse import DataverseHook

        known = ("base_url", "tenant_id", "client_id", "client_secret", "authority_host", "ca_bundle",
                 "requests_per_window", "window_seconds", "timeout", "request_budget", "key_wait_seconds")
        hook_kwargs = {k: options[k] for k in known if options.get(k) not in (None, "")}
        extra = {k: options[k] for k in ("publisher_prefix", "solution", "licence", "large_file_link", "batch_size")
                 if options.get(k) not in (None, "")}
        if "batch_size" in extra:
            hook_kwargs["batch_size"] = min(int(extra.pop("batch_size")), 1000)
        self.hook = DataverseHook(conn_id or "dataverse_default", extra=extra, **hook_kwargs)
        self._tables: dict[str, TableMeta] | None = None
        self._sets: dict[str, str] = {}
        self._stale: set[str] = set()
        self._to_publish: set[str] = set()
        self._max_upload: int | None = None
        self._publisher: dict[str, Any] | None = None
        # Columns, lookups and keys queued by the schema step: (kind, table, logical name, request).
        self._pending: list[tuple[str, str, str, Any]] = []

    @property
    def prefix(self) -> str:
        return self.hook.settings["publisher_prefix"]

    @property
    def batch_size(self) -> int:
        return max(1, min(self.capabilities.batch_size, self.hook.batch_size))

    # -- names --------------------------------------------------------------------------------
    def custom_field_name(self, label: str) -> str:
        """``"ascora Job Number"`` → ``ascora_job_number``; the publisher prefix is added on creation."""
        words = [w.lower() for w in "".join(c if c.isalnum() else " " for c in label).split() if w]
        return "_".join(words)[:40].rstrip("_") or "field"

    def _logical_table(self, name: str) -> str:
        return name if name in STANDARD_TABLES or name in LOOKUP_ONLY_TABLES else f"{self.prefix}_{name}"

    def _mapping_table(self, logical: str) -> str:
        return logical.removeprefix(f"{self.prefix}_") if logical.startswith(f"{self.prefix}_") else logical

    # -- metadata -----------------------------------------------------------------------------
    def _load_tables(self) -> dict[str, TableMeta]:
        """Metadata of every exposed table; after a schema change only the touched tables are re-read."""
        self._flush_metadata()
        if self._tables is None:
            definitions = self.hook.entity_definitions(select=("LogicalName", "EntitySetName", "IsCustomEntity"))
            self._sets = {d["LogicalName"]: d["EntitySetName"] for d in definitions}
            self._tables = {}
            self._stale = {d["LogicalName"] for d in definitions
                           if d["LogicalName"] in STANDARD_TABLES or d["LogicalName"].startswith(f"{self.prefix}_")}
        if self._stale:
            for meta in self._read_tables(sorted(self._stale)):
                self._tables[meta.name] = meta
                self._sets[meta.logical] = meta.set_name
            self._stale.clear()
        return self._tables

    def _read_tables(self, logicals: list[str]) -> list[TableMeta]:
        """Tables' metadata in one ``$batch`` of GETs (definition and choice columns, three reads a table).

        Every load task reads every table it may write; one read per call made that a dozen round
        trips or more per task before its first write (API-efficiency benchmark).
        """
        from airflow_ascora_provider.hooks.dataverse import (
            choice_options_from,
            choice_paths,
            table_definition_path,
        )

        paths = [path for logical in logicals
                 for path in (table_definition_path(logical), *choice_paths(logical))]
        bodies = self.hook.get_many(paths)
        tables = []
        for n, logical in enumerate(logicals):
            full, *choices = bodies[3 * n:3 * n + 3]
            meta = TableMeta(logical, self._mapping_table(logical), full["EntitySetName"],
                             full["PrimaryIdAttribute"], bool(full.get("IsCustomEntity")))
            meta.attributes = {a["LogicalName"]: a for a in full.get("Attributes") or ()}
            for rel in full.get("ManyToOneRelationships") or ():
                meta.navigation[(rel["ReferencingAttribute"], rel["ReferencedEntity"])] = \
                    rel["ReferencingEntityNavigationPropertyName"]
            meta.unique = {k["KeyAttributes"][0] for k in full.get("Keys") or ()
                           if len(k["KeyAttributes"]) == 1}
            meta.options = choice_options_from(choices)
            tables.append(meta)
        return tables

    def _touched(self, *logical_names: str) -> None:
        """Re-read these tables next time (a new table also changes the task and note relationships)."""
        if self._tables is not None:
            self._stale.update(logical_names)

    def _table(self, name: str) -> TableMeta:
        tables = self._load_tables()
        if name not in tables:
            self._tables = None
            tables = self._load_tables()
        try:
            return tables[name]
        except KeyError:
            raise KeyError(f"Dataverse has no table {self._logical_table(name)!r} (mapping name {name!r}); "
                           "run the schema step first") from None

    def _set_of(self, logical: str) -> str:
        self._load_tables()
        if logical not in self._sets:
            self._tables = None
            self._load_tables()
        try:
            return self._sets[logical]
        except KeyError:
            raise KeyError(f"Dataverse has no table {logical!r}") from None

    def _column(self, meta: TableMeta, name: str) -> str | None:
        """Logical column behind a mapping field name (standard first, then ours with the prefix)."""
        if name in meta.attributes and not meta.attributes[name].get("IsCustomAttribute"):
            return name
        custom = f"{self.prefix}_{name}"
        if custom in meta.attributes:
            return custom
        return name if name in meta.attributes else None

    @staticmethod
    def _address_prefix(meta: TableMeta, name: str) -> str | None:
        if meta.logical == "customeraddress" and name == "address":
            return ""
        if name in ("address1", "address2") and f"{name}_line1" in meta.attributes:
            return f"{name}_"
        return None

    def describe_schema(self) -> dict[str, DestObject]:
        self._flush_publish()  # what the schema step changed reaches forms and views before it is described
        self._tables = None
        out: dict[str, DestObject] = {}
        for name, meta in self._load_tables().items():
            fields: dict[str, DestField] = {}
            for logical, attr in meta.attributes.items():
                custom = bool(attr.get("IsCustomAttribute"))
                key = logical.removeprefix(f"{self.prefix}_") if custom and logical.startswith(f"{self.prefix}_") \
                    else logical
                targets = attr.get("Targets") or []
                fields[key] = DestField(
                    name=key, type=_neutral_type(attr), custom=custom,
                    required=(attr.get("RequiredLevel") or {}).get("Value") == "SystemRequired",
                    unique=logical in meta.unique, options=tuple((meta.options.get(logical) or {}).values()),
                    lookup_target=self._mapping_table(targets[0]) if len(targets) == 1 else None,
                    read_only=not attr.get("IsValidForCreate", True) and not attr.get("IsValidForUpdate", True))
            for prefix_name in ("address1", "address2", "address"):
                if self._address_prefix(meta, prefix_name) is not None:
                    fields[prefix_name] = DestField(prefix_name, "address")
            if meta.logical == "annotation":
                fields["ascora_id"] = DestField("ascora_id", "text", unique=True)
            if meta.logical in ("task", "annotation"):
                parent = "regardingobjectid" if meta.logical == "task" else "objectid"
                fields[parent] = DestField(parent, "lookup")
            out[name] = DestObject(name=name, label=name, custom=meta.custom, fields=fields)
        return out

    def check_plan(self, changes: Iterable[SchemaChange]) -> list[str]:
        """Problems a whole plan would hit before anything is created (the Professional table limit)."""
        if self.hook.settings["licence"] != "professional":
            return []
        new_tables = [c.object for c in changes if c.kind == "custom_object"]
        existing = self._custom_table_count()
        if existing + len(new_tables) <= PROFESSIONAL_TABLE_LIMIT:
            return []
        room = max(0, PROFESSIONAL_TABLE_LIMIT - existing)
        problem = (f"Dynamics 365 Sales Professional allows {PROFESSIONAL_TABLE_LIMIT} custom tables; the environment "
                   f"has {existing} and the mapping needs {len(new_tables)} more ({', '.join(new_tables)}). "
                   f"{room} fit ({', '.join(new_tables[:room]) or 'none'}); map the others "
                   f"({', '.join(new_tables[room:])}) to existing tables or columns, or use an Enterprise licence")
        return [problem]

    def _custom_table_count(self) -> int:
        return len(self.hook.entity_definitions(select=("LogicalName",), filter="IsCustomEntity eq true"))

    def apply_schema_change(self, change: SchemaChange) -> None:
        from airflow_ascora_provider.hooks.dataverse import column_definition

        p = self.prefix
        if change.kind == "custom_object":
            if self.hook.settings["licence"] == "professional" and \
                    self._custom_table_count() >= PROFESSIONAL_TABLE_LIMIT:
                raise SchemaLimitExceeded(f"cannot create table {p}_{change.object}: Dynamics 365 Sales Professional "
                                          f"allows {PROFESSIONAL_TABLE_LIMIT} custom tables and all are used")
            spec = change.spec
            self._ensure_publisher()
            self.hook.create_table(f"{p}_{change.object}", spec.label, spec.label_plural, f"{p}_name",
                                   description=f"Ascora {spec.label_plural} migrated by airflow-provider-ascora")
            self._to_publish.add(f"{p}_{change.object}")
            self._touched(f"{p}_{change.object}", "task", "annotation")
        elif change.kind == "custom_field":
            table = self._logical_table(change.object)  # no metadata read: the name is enough to add a column
            spec = change.spec
            column = f"{p}_{change.field}"
            if spec.type == "lookup":
                target = self._logical_table(spec.lookup_target or "")
                self._pending.append(("lookup", table, column, self.hook.lookup_operation(
                    f"{p}_{table.removeprefix(p + '_')}_{change.field}"[:100], table, target, column, spec.label)))
            elif spec.type == "address":
                raise ValueError(f"{table}.{change.field}: Dataverse has no address column type; map the "
                                 "address parts to text columns (or use address1/address2 on standard tables)")
            else:
                kind = NEUTRAL_TO_KIND[spec.type]
                option_base = self._option_base() if kind in ("Picklist", "MultiPicklist") else 0
                options = [(option_base + i, label) for i, label in enumerate(spec.options)]
                length = KEY_COLUMN_LENGTH if spec.unique and kind == "String" else None
                self._pending.append(("column", table, column, self.hook.column_operation(table, column_definition(
                    kind, column, spec.label, description=spec.help_text or "", max_length=length, options=options))))
                if spec.unique:
                    key = f"{column}_key"
                    self._pending.append(("key", table, key, self.hook.key_operation(
                        table, key, [column], f"{spec.label} (key)")))
            self._to_publish.add(table)
            self._touched(table)
        elif change.kind == "picklist_option":
            meta = self._table(change.object)
            column = self._column(meta, change.field or "")
            for option in change.spec:
                self.hook.insert_option(meta.logical, column, option)
            self._to_publish.add(meta.logical)
            self._touched(meta.logical)
        else:
            raise ValueError(f"Dataverse cannot apply a {change.kind!r} change")

    def finish_schema_changes(self) -> None:
        """The schema step's last call: the queued columns, lookups and keys go out, then publish."""
        self._flush_publish()

    def _flush_metadata(self) -> None:
        """Send the columns, lookups and keys queued by :meth:`apply_schema_change` in ``$batch`` calls.

        The schema step adds a couple of hundred columns, lookups and keys; one call each was most of
        the calls a migration made (and, under faults, most of its retries). They are queued and go
        out together before anything reads metadata, publishes or writes (and at ``close``), in the
        order the engine applied them (a key after its column, lookups after the tables they join).
        An operation that answers an error is checked against the metadata: one that is in place (a
        batch sent again after a lost answer finds its earlier creates done) is fine, any other
        raises with Dataverse's message. Keys are then waited for until their index is Active.
        """
        if not self._pending:
            return
        from airflow_ascora_provider.hooks.dataverse import DataverseApiError, table_definition_path

        pending, self._pending = self._pending, []
        results = self.hook.create_metadata([op for *_, op in pending])
        failed = [(item, result) for item, result in zip(pending, results) if not result.ok]
        if failed:
            tables = sorted({table for (_kind, table, _name, _op), _r in failed})
            definitions = dict(zip(tables, self.hook.get_many([table_definition_path(t) for t in tables])))
            missing = []
            for (kind, table, name, _op), result in failed:
                found = definitions[table] or {}
                names = {a["LogicalName"] for a in found.get("Attributes") or ()} if kind != "key" else \
                    {k["LogicalName"] for k in found.get("Keys") or ()}
                if name.lower() not in names:
                    missing.append(f"{kind} {table}.{name}: HTTP {result.status} {result.error_code} "
                                   f"{result.error_message}")
                else:
                    log.info("dataverse: %s %s.%s answered HTTP %s but is in place (an earlier attempt made it)",
                             kind, table, name, result.status)
            if missing:
                raise DataverseApiError(f"Dataverse refused {len(missing)} schema change(s): " + "; ".join(missing[:10]),
                                        status=failed[0][1].status, code=failed[0][1].error_code,
                                        detail=failed[0][1].error_message)
        for kind, table, name, _op in pending:
            if kind == "key":
                self.hook.wait_for_key(table, name)

    def _ensure_publisher(self) -> dict[str, Any]:
        if self._publisher is not None:
            return self._publisher
        publisher = self.hook.publisher(self.prefix)
        if publisher is None:
            raise ValueError(f"no Dataverse publisher has the customization prefix {self.prefix!r}; create one "
                             "(or set publisher_prefix on the connection to an existing publisher's prefix)")
        self._publisher = publisher  # read once per task: every new table and choice column needs it
        return publisher

    def _option_base(self) -> int:
        return int(self._ensure_publisher().get("customizationoptionvalueprefix") or 10000) * 10000

    def _flush_publish(self) -> None:
        self._flush_metadata()
        if self._to_publish:
            pending, self._to_publish = sorted(self._to_publish), set()
            self.hook.publish(pending)

    # -- users --------------------------------------------------------------------------------
    def list_users(self) -> list[DestUser]:
        self._flush_metadata()
        users = []
        for row in self.hook.users():
            interactive = row.get("accessmode") != 4  # 4 = non-interactive (application users)
            users.append(DestUser(id=row["systemuserid"], email=(row.get("internalemailaddress") or "").strip(),
                                  name=row.get("fullname") or "", active=interactive and not row.get("isdisabled")))
        return users

    # -- encoding -----------------------------------------------------------------------------
    def _upload_limit(self) -> int:
        if self._max_upload is None:
            self._max_upload = self.hook.max_upload_bytes()
        return self._max_upload

    def _bind(self, meta: TableMeta, column: str, target_logical: str, dest_id: str, field_name: str) -> tuple[str, str]:
        nav = meta.navigation.get((column, target_logical))
        if nav is None:
            raise EncodeError(f"{meta.logical}.{column} cannot point at a {target_logical} (no such relationship)",
                              field_name)
        return f"{nav}@odata.bind", f"/{self._set_of(target_logical)}({dest_id})"

    def _encode(self, meta: TableMeta, payload: dict[str, Any], *, creating: bool
                ) -> tuple[dict[str, Any], list[str]]:
        """Wire body, and the navigation properties to clear (``$ref`` deletes) on an update."""
        body: dict[str, Any] = {}
        clear: list[str] = []
        note_tag = None
        for name, value in payload.items():
            if meta.logical == "annotation" and name == "ascora_id":
                note_tag = value
                continue
            prefix = self._address_prefix(meta, name)
            if prefix is not None:
                if value is None and creating:
                    continue
                parts = _address_parts(value)
                for part, part_value in parts.items():
                    column = f"{prefix}{'stateorprovince' if part == 'state' else part}"
                    if column in meta.attributes:
                        body[column] = part_value
                continue
            column = self._column(meta, name)
            if column is None:
                raise EncodeError(f"{meta.logical} has no column for mapping field {name!r}", name)
            attr = meta.attributes[column]
            if column == "overriddencreatedon" and not creating:
                continue  # settable on create only (documented)
            if attr.get("AttributeType") in ("Lookup", "Customer", "Owner"):
                if value is None:
                    if not creating:
                        clear.extend(nav for (col, _), nav in meta.navigation.items() if col == column)
                    continue
                for key, bind in self._lookup_binds(meta, column, value, name):
                    body[key] = bind
                continue
            if isinstance(value, FileRef):
                self._encode_file(meta, value, body, name)
                continue
            body[column] = self._encode_value(meta, column, attr, value, name)
        if meta.logical == "annotation" and note_tag:
            body["notetext"] = ((body.get("notetext") or "") + f"\n[ascora:{note_tag}]").lstrip("\n")
        return body, sorted(set(clear))

    def _lookup_binds(self, meta: TableMeta, column: str, value: Any, name: str) -> list[tuple[str, str]]:
        if isinstance(value, UserRef):
            return [self._bind(meta, column, "systemuser", value.user_id, name)]
        if isinstance(value, DestRef):
            return [self._bind(meta, column, self._logical_table(value.target_object), value.dest_id, name)]
        if isinstance(value, AttachTo):
            if len(value.refs) > 1:
                raise EncodeError(f"{meta.logical}.{column} holds one parent; got {len(value.refs)}", name)
            return [self._bind(meta, column, self._logical_table(r.target_object), r.dest_id, name)
                    for r in value.refs]
        raise EncodeError(f"{meta.logical}.{column} is a lookup; {type(value).__name__} cannot be written to it", name)

    def _encode_file(self, meta: TableMeta, value: FileRef, body: dict[str, Any], name: str) -> None:
        if meta.logical != "annotation":
            raise EncodeError(f"files can be written to notes (annotation.documentbody) only, not {meta.logical}", name)
        encoded_size = 4 * ((value.size + 2) // 3)
        limit = self._upload_limit()
        if encoded_size <= limit:
            content = value.read_bytes()
            if hashlib.sha256(content).hexdigest() != value.sha256:
                raise EncodeError(f"the staged copy of {value.name!r} does not match its recorded SHA-256", name)
            body["documentbody"] = base64.b64encode(content).decode("ascii")
            if value.content_type:
                body.setdefault("mimetype", value.content_type)
            return
        template = self.hook.settings["large_file_link"]
        if not template:
            raise EncodeError(f"{value.name!r} is {value.size / 1e6:.1f} MB ({encoded_size / 1e6:.1f} MB as base64), over "
                              f"the organisation's note limit of {limit / 1e6:.1f} MB; raise MaxUploadFileSize or set "
                              "large_file_link on the connection to record a SharePoint link", name)
        link = template.format(name=value.name, sha256=value.sha256)
        marker = f"[file name={value.name} size={value.size} sha256={value.sha256}]"
        body["notetext"] = f"Stored in SharePoint: {link}\n{marker}"

    def _encode_value(self, meta: TableMeta, column: str, attr: dict[str, Any], value: Any, name: str) -> Any:
        kind = attr.get("AttributeType")
        if value is None:
            return None
        if kind in ("Picklist", "Virtual", "State", "Status"):
            options = meta.options.get(column) or {}
            labels = value if isinstance(value, (list, tuple)) else [value]
            codes = []
            for text in labels:
                code = next((v for v, label in options.items() if label.casefold() == str(text).casefold()), None)
                if code is None:
                    raise EncodeError(f"{text!r} is not an option of {meta.logical}.{column} "
                                      f"({', '.join(options.values())})", name)
                codes.append(code)
            return ",".join(str(c) for c in codes) if kind == "Virtual" else codes[0]
        if isinstance(value, Money):
            return float(value.amount)
        if isinstance(value, Decimal):
            return int(value) if kind in ("Integer", "BigInt") else float(value)
        if isinstance(value, dt.datetime):
            if attr.get("Format") == "DateOnly":
                return value.astimezone(dt.UTC).date().isoformat()
            return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, dt.date):
            return value.isoformat() if attr.get("Format") == "DateOnly" else f"{value.isoformat()}T00:00:00Z"
        if isinstance(value, Emails | Phones):
            return value.primary
        if isinstance(value, RichText):
            return value.markdown
        if isinstance(value, Link):
            return value.url
        if isinstance(value, FullName):
            return value.display()
        if kind in ("String", "Memo") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    # -- records ------------------------------------------------------------------------------
    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        """Creates are POSTs, updates PATCHes by id (``If-Match: *``), one change set per record."""
        from airflow_ascora_provider.hooks.dataverse import BatchOperation

        self._flush_publish()
        meta = self._table(target)
        results: list[WriteResult | None] = [None] * len(records)
        ops: list[BatchOperation] = []
        owners: list[int] = []
        for i, record in enumerate(records):
            try:
                body, clear = self._encode(meta, record.payload, creating=record.dest_id is None)
            except (EncodeError, OSError) as exc:
                results[i] = WriteResult(record.source_id, None, error=str(exc), error_field=getattr(exc, "field", None))
                continue
            if record.dest_id:
                ops.append(BatchOperation("PATCH", f"{meta.set_name}({record.dest_id})", body, {"If-Match": "*"}))
                owners.append(i)
                for nav in clear:
                    ops.append(BatchOperation("DELETE", f"{meta.set_name}({record.dest_id})/{nav}/$ref"))
                    owners.append(i)
            else:
                ops.append(BatchOperation("POST", meta.set_name, body))
                owners.append(i)
        if meta.logical == "annotation" and any(op.method == "POST" for op in ops):
            from airflow_ascora_provider.hooks.create_once import InDoubt

            try:
                answers = self._write_notes_once(target, meta, ops, [records[i].source_id for i in owners])
            except InDoubt as doubt:  # settled by the engine at the end of the unit
                finish, sent, refused = doubt.settle, sorted(set(owners)), list(results)

                def settled() -> list[WriteResult]:
                    answered = finish()
                    out = self._results_of(meta, records, owners, ops, [answered[k] for k in range(len(ops))],
                                           list(refused))
                    return [out[i] for i in sent]

                for i, result in zip(sent, WriteResult.all_in_doubt([records[i].source_id for i in sent], settled)):
                    results[i] = result
                return _answered(records, results)
        else:
            answers = self.hook.execute_batch(ops) if ops else []
        return self._results_of(meta, records, owners, ops, answers, results)

    def _results_of(self, meta: TableMeta, records: list[OutgoingRecord], owners: list[int], ops: list,
                    answers: list, results: list[WriteResult | None]) -> list[WriteResult]:
        """Each record's result from the answers to its change sets (``owners[k]`` sent ``ops[k]``); a
        record refused before anything was sent keeps its refusal."""
        for i, op, answer in zip(owners, ops, answers):
            record = records[i]
            if results[i] is not None and not results[i].ok:
                continue
            if answer.ok:
                if op.method != "DELETE":
                    results[i] = WriteResult(record.source_id, answer.entity_id or record.dest_id,
                                             created=record.dest_id is None)
            else:
                message = f"{answer.error_code} {answer.error_message}".strip()
                results[i] = WriteResult(record.source_id, None, error=message,
                                         error_field=self._field_named(meta, answer.error_message))
        return _answered(records, results)

    def _write_notes_once(self, target: str, meta: TableMeta, ops: list, source_ids: list[str]) -> list:
        """A batch with new notes, sent so each note lands once (``hooks.create_once``): a note has no
        alternate key, so the client's blind retry of a ``$batch`` cut short or whose answer was lost
        wrote notes two and three times. After a failed attempt the notes that landed are found by
        their ``[ascora:<id>]`` tag and only the rest is sent again (updates are idempotent PATCHes)."""
        from airflow_ascora_provider.hooks.create_once import create_once
        from airflow_ascora_provider.hooks.dataverse import BatchResult

        def send(pending: list[int]) -> dict[int, BatchResult]:
            return dict(zip(pending, self.hook.execute_batch([ops[k] for k in pending], once=True)))

        def landed(pending: list[int]) -> dict[int, BatchResult]:
            creates = {source_ids[k]: k for k in pending if ops[k].method == "POST"}
            found = self.find_by_source_ids(target, "ascora_id", list(creates)) if creates else {}
            return {creates[sid]: BatchResult(201, {"odata-entityid": f"{meta.set_name}({dest_id})"})
                    for sid, dest_id in found.items() if sid in creates}

        answers = create_once(list(range(len(ops))), send, landed, what=f"dataverse: writing {len(ops)} notes",
                              client_timeout=float(self.hook.settings["timeout"]), retry=self.hook.client.retry,
                              defer=True)
        return [answers[k] for k in range(len(ops))]

    def _field_named(self, meta: TableMeta, message: str) -> str | None:
        match = _FIELD_IN_MESSAGE.search(message or "")
        if not match:
            return None
        column = match.group(1)
        return column.removeprefix(f"{self.prefix}_")

    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        from airflow_ascora_provider.hooks.dataverse import odata_or

        if not dest_ids:
            return {}
        meta = self._table(target)
        fields = list(fields)
        select = {meta.primary_id}
        for name in fields:
            prefix = self._address_prefix(meta, name)
            if prefix is not None:
                select |= {c for c in meta.attributes if c.startswith(prefix) and c.removeprefix(prefix) in
                           ("line1", "line2", "city", "stateorprovince", "postalcode", "country", "latitude",
                            "longitude")}
                continue
            if meta.logical == "annotation" and name in ("ascora_id", "documentbody", "notetext"):
                select |= {"notetext", "documentbody"}
                continue
            column = self._column(meta, name)
            if column == "overriddencreatedon":
                select.add("createdon")
            elif column is not None:
                kind = meta.attributes[column].get("AttributeType")
                select.add(f"_{column}_value" if kind in ("Lookup", "Customer", "Owner") else column)
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(dest_ids), 50):
            chunk = dest_ids[start:start + 50]
            for row in self.hook.iter_rows(meta.set_name, select=sorted(select),
                                           filter=odata_or(meta.primary_id, chunk)):
                out[row[meta.primary_id]] = {name: self._decode(meta, name, row) for name in fields
                                             if self._readable(meta, name)}
        return out

    def _readable(self, meta: TableMeta, name: str) -> bool:
        return (self._address_prefix(meta, name) is not None or self._column(meta, name) is not None
                or (meta.logical == "annotation" and name == "ascora_id"))

    def _decode(self, meta: TableMeta, name: str, row: dict[str, Any]) -> Any:
        prefix = self._address_prefix(meta, name)
        if prefix is not None:
            def get(part: str) -> Any:
                return row.get(f"{prefix}{part}") or None
            lat, lng = row.get(f"{prefix}latitude"), row.get(f"{prefix}longitude")
            address = Address(get("line1"), get("line2"), get("city"), get("stateorprovince"), get("postalcode"),
                              get("country"), Decimal(str(lat)) if lat is not None else None,
                              Decimal(str(lng)) if lng is not None else None)
            return None if address.is_empty() else address
        if meta.logical == "annotation":
            text = row.get("notetext") or ""
            if name == "ascora_id":
                match = NOTE_TAG.search(text)
                return match.group(1) if match else None
            if name == "notetext":
                return NOTE_TAG.sub("", FILE_MARKER.sub("", text)).strip() or None
            if name == "documentbody":
                if row.get("documentbody"):
                    content = base64.b64decode(row["documentbody"])
                    return FileRef(hashlib.sha256(content).hexdigest(), len(content))
                marker = FILE_MARKER.search(text)
                return FileRef(marker.group("sha"), int(marker.group("size")), marker.group("name")) if marker else None
        column = self._column(meta, name)
        attr = meta.attributes[column]
        kind = attr.get("AttributeType")
        if column == "overriddencreatedon":
            value = row.get("createdon")  # createdon holds the supplied date after the documented swap
            return _parse_datetime(value) if value else None
        if kind in ("Lookup", "Customer", "Owner"):
            dest_id = row.get(f"_{column}_value")
            if not dest_id:
                return None
            table = row.get(f"_{column}_value@Microsoft.Dynamics.CRM.lookuplogicalname") or \
                (attr.get("Targets") or [""])[0]
            if table in ("systemuser", "team"):
                return UserRef(dest_id)
            ref = DestRef(self._mapping_table(table), dest_id)
            return AttachTo((ref,)) if column in ("regardingobjectid", "objectid") else ref
        value = row.get(column)
        if value is None:
            return None
        if kind in ("Picklist", "State", "Status"):
            return (meta.options.get(column) or {}).get(value, value)
        if kind == "Virtual":
            options = meta.options.get(column) or {}
            return tuple(options.get(int(v), v) for v in str(value).split(",") if v)
        if kind in ("Money", "Decimal", "Double"):
            return Decimal(str(value))
        if kind == "DateTime":
            return dt.date.fromisoformat(value[:10]) if attr.get("Format") == "DateOnly" else _parse_datetime(value)
        return value

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        from airflow_ascora_provider.hooks.dataverse import _quote_literal, odata_or

        meta = self._table(target)
        found: dict[str, str] = {}
        if meta.logical == "annotation":
            for start in range(0, len(source_ids), 20):
                chunk = source_ids[start:start + 20]
                condition = " or ".join(f"contains(notetext,{_quote_literal(f'[ascora:{s}]')})" for s in chunk)
                for row in self.hook.iter_rows(meta.set_name, select=[meta.primary_id, "notetext"], filter=condition):
                    match = NOTE_TAG.search(row.get("notetext") or "")
                    if match:
                        found[match.group(1)] = row[meta.primary_id]
            return found
        column = self._column(meta, key_field)
        if column is None:
            return {}
        for start in range(0, len(source_ids), 50):
            chunk = source_ids[start:start + 50]
            for row in self.hook.iter_rows(meta.set_name, select=[meta.primary_id, column],
                                           filter=odata_or(column, chunk)):
                found[row[column]] = row[meta.primary_id]
        return found

    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        from airflow_ascora_provider.hooks.dataverse import BatchOperation

        meta = self._table(target)
        answers = self.hook.execute_batch([BatchOperation("DELETE", f"{meta.set_name}({i})") for i in dest_ids])
        return {dest_id: None if answer.ok or answer.status == 404 else f"{answer.error_code} {answer.error_message}"
                for dest_id, answer in zip(dest_ids, answers)}

    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        from airflow_ascora_provider.hooks.dataverse import BatchOperation, DataverseApiError

        meta = self._table(target)
        image = {k: v for k, v in before_image.items()
                 if not (isinstance(v, FileRef) and not v.uri) and k != "overriddencreatedon"}
        body, clear = self._encode(meta, image, creating=False)
        ops = [BatchOperation("PATCH", f"{meta.set_name}({dest_id})", body, {"If-Match": "*"})]
        ops += [BatchOperation("DELETE", f"{meta.set_name}({dest_id})/{nav}/$ref") for nav in clear]
        failed = [a for a in self.hook.execute_batch(ops) if not a.ok]
        if failed:
            raise DataverseApiError(f"restoring {meta.logical}({dest_id}) failed: {failed[0].error_code} "
                                    f"{failed[0].error_message}", status=failed[0].status)

    def close(self) -> None:
        try:
            self._flush_publish()
        finally:
            self.hook.close()

    def api_stats(self) -> dict[str, Any]:
        return {**self.hook.call_stats(), **self.hook.rate_headers}


def _neutral_type(attr: dict[str, Any]) -> str:
    kind = attr.get("AttributeType")
    if kind == "String":
        fmt = (attr.get("FormatName") or {}).get("Value")
        return {"Email": "email", "Phone": "phone", "Url": "url"}.get(fmt, "text")
    if kind == "DateTime":
        return "date" if attr.get("Format") == "DateOnly" else "datetime"
    return {"Memo": "long_text", "Integer": "number", "BigInt": "number", "Decimal": "number", "Double": "number",
            "Money": "currency", "Boolean": "boolean", "Picklist": "picklist", "Virtual": "multi_picklist",
            "Lookup": "lookup", "Customer": "lookup", "Owner": "lookup"}.get(kind, "system")


def _address_parts(value: Address | None) -> dict[str, Any]:
    value = value or Address()
    return {"line1": value.line1, "line2": value.line2, "city": value.city, "state": value.state,
            "postalcode": value.postcode, "country": value.country,
            "latitude": float(value.latitude) if value.latitude is not None else None,
            "longitude": float(value.longitude) if value.longitude is not None else None}


def _parse_datetime(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC)


@hookimpl
def register_destinations(register):
    register(DynamicsDestination)


def _answered(records: list[OutgoingRecord], results: list[WriteResult | None]) -> list[WriteResult]:
    """One result per record: a record nothing answered for is reported as such, never left out."""
    return [r if r is not None else WriteResult(records[i].source_id, None, error="no answer for this record")
            for i, r in enumerate(results)]
