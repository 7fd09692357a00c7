"""Applying an object map to a batch of staged records.

Per batch, not per record: every crosswalk lookup the batch needs is fetched in one ledger query per
parent map before any record is transformed, so a 60-record batch costs a handful of queries, not
hundreds. A record that cannot be transformed is quarantined with the field, the value and the
reason; the rest of the batch goes on.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import is_not
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_ascora_provider.destinations.spec import OutgoingRecord
from airflow_ascora_provider.engine.batching import chunked
from airflow_ascora_provider.engine.columnar import (
    Batch, ColumnRecord, FieldColumns, PayloadColumns, payload_digests)
from airflow_ascora_provider.engine.context import MigrationContext
from airflow_ascora_provider.ledger import QuarantineEntry
from airflow_ascora_provider.mapping.spec import FieldMap, ObjectMap
from airflow_ascora_provider.mapping.transforms import (
    TRANSFORMS,
    Getter,
    TransformError,
    _maps_for,
    parent_key,
    refs_related_ids,
    related_row_lookups,
    template_fields,
)
from airflow_ascora_provider.mapping.values import DestRef, FileRef, Link, UserRef
from airflow_ascora_provider.source.columns import with_kinds_of
from airflow_ascora_provider.source.model import ISSUES_COLUMN, get_object
from airflow_ascora_provider.source.staging import rows_of

log = logging.getLogger(__name__)
USERS_WATERMARK = "users"
# Records transformed with one crosswalk query per parent map and one related-object index (see
# BatchTransformer.batches): large enough to amortise the queries and the related objects' scans,
# small enough that what a chunk holds stays bounded whatever the tenant's size.
CHUNK_RECORDS = 2000


@dataclass
class TransformOutcome:
    records: list[OutgoingRecord] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    not_for_this_map: int = 0  # the map's condition does not apply (a sibling map takes the record)


class RelatedIndex:
    """Staged rows of another object keyed by one of its fields, for the records of one chunk.

    ``columns`` names, per object, the fields the map's transforms read: only those (and the key and
    order fields) are kept, so the index costs a few fields per related row rather than whole rows.
    Objects not named are read whole.

    ``keys`` names, per ``(object, key field)``, the fields of the map's own records whose values are
    looked up. :meth:`scope` then turns into Python rows only the related rows a chunk of records can
    ask for; the rest stay in Arrow (:meth:`_table`). An index of every invoice and form answer of a
    large tenant as Python dicts was what made a job load's memory grow with the tenant. A key the
    scope did not foresee (an object or field not named in ``keys``) is answered from an index of the
    whole object, kept for the rest of the task: larger, never wrong.
    """

    def __init__(self, ctx: MigrationContext, columns: dict[str, set[str]] | None = None,
                 keys: dict[tuple[str, str], set[str]] | None = None):
        self.ctx = ctx
        self._columns = columns or {}
        self._keys = keys or {}
        self._scopes: dict[tuple[str, str], set[Any]] = {}
        self._whole: set[tuple[str, str]] = set()  # indexes that fell back to the whole object
        self._cache: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]] = {}
        self._tables: dict[str, pa.Table] = {}

    def scope(self, records: list[dict[str, Any]]) -> None:
        """Hold the related rows of these records only (the previous chunk's are dropped). Records read
        from staging are asked for their key fields' columns, not row by row."""
        columns = getattr(records, "columns", None)
        for which, fields in self._keys.items():
            if which in self._whole:
                continue
            if columns is not None and all(name in columns for name in fields):
                scope = set().union(*(columns[name] for name in fields))
                scope.discard(None)
            else:
                scope = {value for record in records for name in fields if (value := record.get(name)) is not None}
            self._scopes[which] = scope
            self._cache.pop(which, None)

    def rows(self, object_name: str, key_field: str, key: Any) -> list[dict[str, Any]]:
        which = (object_name, key_field)
        scope = self._scopes.get(which)
        if scope is not None and key not in scope:
            self._whole.add(which)
            del self._scopes[which]
            self._cache.pop(which, None)
            scope = None
        index = self._cache.get(which)
        if index is None:
            index = self._cache[which] = self._build(object_name, key_field, scope)
        return index.get(key, [])

    def _build(self, object_name: str, key_field: str, scope: set[Any] | None) -> dict[Any, list[dict[str, Any]]]:
        index: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        if scope is not None and not scope:
            return index
        table = self._table(object_name, key_field)
        if scope is not None:
            table = table.filter(_isin(table.column(key_field), scope))
        rows = rows_of(table)
        if ISSUES_COLUMN in rows.columns:
            for row in rows:
                del row[ISSUES_COLUMN]
        keys = rows.columns[key_field] if key_field in rows.columns else [row.get(key_field) for row in rows]
        for key, row in zip(keys, rows):
            index[key].append(row)
        order_field = _order_field(object_name)
        for found in index.values():
            if len(found) > 1:  # most keys have one related row: nothing to order
                found.sort(key=lambda r: (r.get(order_field) is None, str(r.get(order_field) or "")))
        return index

    def _table(self, object_name: str, key_field: str) -> pa.Table:
        """The related object's read columns, as Arrow, read once per task.

        Arrow holds them in about a tenth of the memory the same rows take as Python dicts (the key
        and amount columns of a million-record tenant's invoices fit in a few MB), and filtering
        them by a chunk's keys needs no second read. Every unit of the map reads the same columns of
        the whole object, so the first one keeps them decoded with the snapshot
        (``Snapshot.derived_table``) and the others map them instead of decoding the Parquet again.
        """
        table = self._tables.get(object_name)
        if table is None or key_field not in table.column_names:
            columns = None
            if object_name in self._columns:
                staged = set(get_object(object_name).arrow_schema.names)
                wanted = self._columns[object_name] | {k for o, k in self._keys if o == object_name}
                columns = sorted((wanted | {key_field, _order_field(object_name)}) & staged)
            read = "all" if columns is None else hashlib.blake2b(",".join(columns).encode(), digest_size=8).hexdigest()
            table = self._tables[object_name] = self.ctx.snapshot.derived_table(
                f"related-{object_name}-{read}", lambda: self.ctx.snapshot.read_table(object_name, columns))
        return table


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector held off while a chunk is read and transformed, and let run after.

    A chunk makes hundreds of thousands of small containers (row dicts, column lists, payload dicts,
    value objects) and keeps them until its batches are written. The collector runs every 700 new
    containers and, every so often, walks everything a task holds (related-row indexes, the chunk's
    payloads): on a 100,000-record tenant that was a sixth of the transform's time, for nothing, as
    a transform makes no reference cycles and reference counting frees what it drops.

    Leaving, what the chunk made and still holds is moved to the oldest generation unwalked
    (``gc.freeze()`` then ``gc.unfreeze()``, which reset the young generations' counts): otherwise the
    first allocation after the pause set off a collection that walked every one of the chunk's live
    containers, 3-4% of the transform on that tenant. Nothing stays frozen, so whatever cyclic garbage
    the chunk does leave is collected by the next full collection. Nested, the outer pause decides; an
    error lets the collector run again as it leaves.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()


def _lookup_source(fm: FieldMap, source_field: str) -> tuple[str, FieldMap, list[str] | None, Any]:
    """``(source field, the field map as a one-source field (what _maps_for takes), its parent maps when
    the same for every record (no ``by_type``) or None, its ``through`` or None)``: what
    :meth:`BatchTransformer._wanted` reads per record, worked out once per task."""
    sub = type(fm)(fm.dest_field, fm.transform, (source_field,), fm.options)
    maps = None if fm.options.get("by_type") else _maps_for({}, sub)
    return source_field, sub, maps, fm.options.get("through")


_NOT_COPIED = object()  # the "source" of a field that is not a plain copy: no record has it
_PRESENT = partial(is_not, None)  # a value that is not none, asked in C


def _applier(fm: FieldMap) -> tuple[str, Getter | None, str | None, Any, tuple[str, None, str] | None]:
    """``(destination field, bound transform or None, the source of a plain one-source copy or None,
    default, the TransformError arguments when a required field has no value or None)``: what
    :meth:`BatchTransformer.transform` applies per record, worked out once per task."""
    copied = fm.sources[0] if fm.transform == "copy" and len(fm.sources) == 1 else None
    get = None if copied is not None else TRANSFORMS[fm.transform].bind(fm)
    required = ((fm.sources[0] if fm.sources else fm.dest_field, None,
                 f"{fm.dest_field} is required by the mapping but has no value") if fm.required else None)
    return fm.dest_field, get, copied, fm.default, required


def _order_field(object_name: str) -> str:
    """What a key's related rows are ordered by (oldest first), so ``last`` means the latest."""
    return "invoice_date" if object_name == "invoice" else "date_created"


def unique_key(value: Any) -> str | None:
    """What a destination compares a unique value by: an e-mail, a phone or a web address without case
    or surrounding spaces (the primary one of a list)."""
    if isinstance(value, Link):
        value = value.url
    elif hasattr(value, "primary"):  # Emails, Phones
        value = value.primary
    if value is None:
        return None
    return str(value).strip().casefold() or None


def _isin(column: pa.ChunkedArray, values: set[Any]) -> pa.Array | pa.ChunkedArray:
    """Which entries of ``column`` are among ``values``: an Arrow mask, computed without Python rows
    unless the values do not fit the column's type (then the row can match no value anyway, and
    Python's ``in`` decides, as the unscoped index would)."""
    try:
        return pc.is_in(column, value_set=pa.array(list(values), type=column.type))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([value in values for value in column.to_pylist()], type=pa.bool_())


def _related_reads(object_map: ObjectMap) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """What this map's transforms read of other objects (see :class:`RelatedIndex`):

    * per related object, the fields read;
    * per ``(related object, key field)``, the fields of this map's records that hold the keys.
    """
    columns: dict[str, set[str]] = {}
    keys: dict[tuple[str, str], set[str]] = {}

    def reads(object_name: str, key_field: str, record_fields, *fields) -> None:
        columns.setdefault(object_name, set()).update(f for f in (key_field, *fields) if f)
        keys.setdefault((object_name, key_field), set()).update(record_fields)

    for fm in object_map.fields:
        opts = fm.options
        if fm.transform == "related":
            read = template_fields(opts["template"]) if "template" in opts else {opts.get("field")}
            if "via" in opts:
                reads(opts["object"], "id", {opts["via"]}, *read)
            else:
                reads(opts["object"], opts.get("by"), {opts.get("match", "id")}, *read)
        elif fm.transform in ("lookup", "attach", "refs") and opts.get("through"):
            reads(opts["through"]["object"], "id", set(fm.sources), opts["through"]["field"])
        if fm.transform == "refs":  # only the rows' ids are resolved
            for part in opts.get("related") or ():
                reads(part["object"], part["by"], {part.get("match", "id")}, "id")
        elif fm.transform == "related_rows":  # column templates may read any field: keep whole rows
            reads(opts["object"], opts["by"], {"id"}, *get_object(opts["object"]).field_names)
    return columns, keys


def staged_reads(object_map: ObjectMap) -> list[str]:
    """The staged columns of the map's source object that loading it reads, in staging order.

    A job is staged with forty-odd columns and its map reads about twenty-five: reading the rest from
    Parquet and turning them into Python values cost a sixth of the transform. Besides the fields the
    map names as sources and its condition reads, every own field an option names (a related row's
    ``match`` or ``via``, a template's placeholders, a name's ``fallback``, a ``by_type`` field ...) is
    read, found by name among the object's columns: a column read for nothing costs a little, one
    left out would read as empty and load a wrong value.
    """
    staged = get_object(object_map.source).arrow_schema.names
    names = set(staged)
    wanted = {"id", ISSUES_COLUMN} | object_map.used_source_fields()
    for fm in object_map.fields:
        wanted |= _fields_named(fm.options, names)
    return [name for name in staged if name in wanted]


def _fields_named(value: Any, names: set[str]) -> set[str]:
    """The ``names`` that ``value`` (an option, or any text, list or mapping inside one) names."""
    if isinstance(value, str):
        found = {value} & names
        if "{" in value:  # a template: its placeholders (``{site.name}`` reads ``site``)
            try:
                found |= {re.split(r"[.\[]", field, maxsplit=1)[0] for field in template_fields(value)} & names
            except ValueError:  # not a template after all
                pass
        return found
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return set().union(*(_fields_named(item, names) for item in value))
    return set()


class UserDirectory:
    """Staff name → destination user, from the user-resolution step's result in the ledger."""

    def __init__(self, ctx: MigrationContext):
        text = ctx.ledger.get_watermark(ctx.destination_name, USERS_WATERMARK)
        self.text = text or ""  # the step's result as stored: what a value derived from the users depends on
        data = json.loads(text) if text else {}
        self.by_name: dict[str, dict[str, Any]] = data.get("by_name", {})
        self.fallback_user_id: str | None = data.get("fallback_user_id")
        self.by_staff_id: dict[str, str] = data.get("by_staff_id") or {
            e["staff_id"]: e["user_id"] for e in self.by_name.values() if e.get("user_id") and e.get("staff_id")}

    def user_for_staff(self, staff_id: str) -> str | None:
        """The destination user matched to this staff member by e-mail; never the fallback owner,
        whose own values are not a staff member's to overwrite."""
        return self.by_staff_id.get(staff_id)

    def owner(self, staff_name: str | None) -> UserRef | None:
        match = self.by_name.get((staff_name or "").strip().casefold())
        if match and match.get("user_id"):
            return UserRef(match["user_id"], fallback=False)
        if self.fallback_user_id:
            return UserRef(self.fallback_user_id, fallback=True)
        return None


#: Per parent map, its records' references by source id: what a chunk's crosswalk reads found.
Parents = dict[str, dict[str, DestRef]]
_NO_PARENTS: dict[str, DestRef] = {}


class _BatchContext:
    """The TransformContext one batch sees: pre-fetched crosswalk, users, related rows."""

    def __init__(self, ctx: MigrationContext, refs: Parents, users: UserDirectory, related: RelatedIndex):
        self.currency = ctx.mapping.currency
        self.as_of = ctx.as_of
        self._refs = refs
        self._users = users
        # The index's own method, not a method calling it: a job's twenty related fields ask per record.
        self.related = related.rows

    def resolve(self, maps: list[str], source_id: str) -> DestRef | None:
        for name in maps:
            ref = self._refs.get(name, _NO_PARENTS).get(source_id)
            if ref is not None:
                return ref
        return None

    def parents(self, map_name: str) -> dict[str, DestRef]:
        return self._refs.get(map_name, _NO_PARENTS)

    def owner(self, staff_name: str | None) -> UserRef | None:
        return self._users.owner(staff_name)


class BatchTransformer:
    def __init__(self, ctx: MigrationContext, object_map: ObjectMap):
        self.ctx = ctx
        self.map = object_map
        self.users = UserDirectory(ctx)
        self.related = RelatedIndex(ctx, *_related_reads(object_map))
        self.lookup_fields = [fm for fm in object_map.fields if fm.transform in ("lookup", "attach")
                              or (fm.transform == "refs" and fm.sources)]
        # Resolved once per task, not per record: each field's transform bound to its options, each
        # lookup source as its own one-source field (what _maps_for takes), the fields that can hold a
        # file. See transform() for the plain copies.
        appliers = [_applier(fm) for fm in object_map.fields]
        self.dest_fields = tuple(dest_field for dest_field, *_ in appliers)
        self.copied_sources = tuple(_NOT_COPIED if copied is None else copied
                                    for _, _, copied, _, _ in appliers)
        self.copies = tuple(dest_field for dest_field, _, copied, _, _ in appliers if copied is not None)
        self.appliers = [(dest_field, get, copied, default, required)
                         for dest_field, get, copied, default, required in appliers
                         if get is not None or default is not None or required is not None]
        self.lookup_sources = [_lookup_source(fm, source_field)
                               for fm in self.lookup_fields for source_field in fm.sources]
        self.file_fields = [fm.dest_field for fm in object_map.fields if fm.transform == "file"]
        self.row_fields = [fm for fm in object_map.fields if fm.transform == "related_rows"]
        self.related_refs = [part for fm in object_map.fields if fm.transform == "refs"
                             for part in fm.options.get("related") or ()]
        # A batch's fields a column at a time (engine.columnar), unless two field maps write the same
        # destination field: then which value wins depends on the record-by-record loop's order.
        dest_names = [fm.dest_field for fm in object_map.fields]
        self.columns = FieldColumns(object_map.fields) if len(set(dest_names)) == len(dest_names) else None
        self._digest_keys = dest_names + ([object_map.key_field] if object_map.key_field
                                          and object_map.key_field not in dest_names else [])
        self.used = object_map.used_source_fields()
        self.unique_fields = [fm for fm in object_map.fields if fm.options.get("unique")]
        self._first_holders: dict[str, dict[str, str]] | None = None  # see first_holders()
        self._warm: Parents = {}  # the current chunk's crosswalk answers
        self._asked: dict[str, set[str]] = {}  # what the chunk asked of other maps
        # The batch batches() handed out last, what its records ask (see _prefetch) and, when its chunk
        # was transformed whole, its outcome.
        self._foreseen: tuple[list[dict[str, Any]], dict[str, set[str]], TransformOutcome | None] | None = None
        # A map whose records look up records of the same map (a parent record): a chunk is then not
        # transformed in one go (see batches), since its earlier batches may only just have written a
        # parent, and the loader settles creates in doubt after every batch.
        self.looks_up_itself = object_map.name in object_map.lookups()

    def batches(self, records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
        """``records`` in batches of ``size``, prepared per chunk of :data:`CHUNK_RECORDS` records:
        the related rows the chunk can ask for are indexed and its parents' crosswalk entries fetched.

        Per batch, a destination's write cap (60 records for Twenty) would cost one ledger query per
        parent map per 60 records: a quarter of the transform's time went to those queries. A chunk
        transformed at once asks once; otherwise what each batch asks is worked out once, for the
        chunk's query and again for the batch's (see :meth:`_prefetch`).
        """
        chunks = chunked(records, max(size, CHUNK_RECORDS))
        while True:
            # Reading the chunk, its crosswalk answers and (see _transform_together) its transform run
            # with the cycle collector paused; the loader's writes between batches do not.
            with _collector_paused():
                chunk = next(chunks, None)
                if chunk is None:
                    break
                self.related.scope(chunk)
                batches = list(chunked(chunk, size))
                whole = self.columns is not None and not self.looks_up_itself
                if whole:  # transformed at once below: what the chunk asks, worked out once
                    asks: list[dict[str, set[str]] | None] = [None] * len(batches)
                    wanted = self._wanted(chunk)
                else:
                    asks = [self._wanted(batch) for batch in batches]
                    wanted = defaultdict(set)
                    for ask in asks:
                        for name, ids in ask.items():
                            wanted[name].update(ids)
                self._warm = self._fetch(wanted)
                self._asked = {name: ids for name, ids in wanted.items() if name != self.map.name}
                outcomes = (self._transform_together(batches, self._warm, chunk)
                            if whole else [None] * len(batches))
            for batch, ask, outcome in zip(batches, asks, outcomes):
                self._foreseen = (batch, ask, outcome)
                yield batch
        self._warm, self._asked, self._foreseen = {}, {}, None

    def _wanted(self, records: list[dict[str, Any]]) -> dict[str, set[str]]:
        """Per parent map, the source ids these records' lookups resolve."""
        wanted: dict[str, set[str]] = defaultdict(set)
        columns = getattr(records, "columns", None)
        for source_field, sub, maps, through in self.lookup_sources:
            if through is None and maps is not None and columns is not None and source_field in columns:
                # The same parent maps for every record: the column's ids, no row read.
                ids = set(map(str, filter(_PRESENT, columns[source_field])))
                for map_name in maps:
                    wanted[map_name].update(ids)
                continue
            for record in records:
                value = record.get(source_field) if through is None else \
                    parent_key(record, sub, source_field, self.related.rows)
                if value is None:
                    continue
                for map_name in _maps_for(record, sub) if maps is None else maps:
                    wanted[map_name].add(str(value))
        for fm in self.row_fields:
            for record in records:
                for map_name, value in related_row_lookups(record, fm, self.related.rows):
                    wanted[map_name].add(value)
        for part in self.related_refs:
            for record in records:
                wanted[part["map"]].update(refs_related_ids(record, part, self.related.rows))
        return wanted

    def _fetch(self, wanted: dict[str, set[str]]) -> Parents:
        """The crosswalk entries of the parents ``wanted`` names (per parent map, source ids): one
        query per parent source object, whatever number of maps read it (a customer's company and
        person are one look-up). Kept per map, so a column of one map's parents is looked up in C
        (see ``TransformContext.parents``)."""
        by_source: dict[str, list[str]] = defaultdict(list)
        for map_name, ids in wanted.items():
            if ids:
                by_source[self.ctx.mapping.maps[map_name].source].append(map_name)
        ledger, destination = self.ctx.ledger, self.ctx.destination_name
        refs: Parents = {}
        for source, map_names in by_source.items():
            parents = [self.ctx.mapping.maps[name] for name in map_names]
            ids = sorted(set().union(*(wanted[name] for name in map_names)))
            if len(parents) == 1:
                found = {parents[0].target: ledger.crosswalk_dest_ids(destination, source, ids, parents[0].target)}
            else:
                found = ledger.crosswalk_dest_ids_by_target(destination, source, ids, {p.target for p in parents})
            for name, parent in zip(map_names, parents):
                asked, entries = wanted[name], found[parent.target]
                if len(asked) < len(ids):  # another map of the source asked for more
                    entries = {source_id: dest_id for source_id, dest_id in entries.items() if source_id in asked}
                refs[name] = dict(zip(entries, map(DestRef, repeat(parent.target), entries.values())))
        return refs

    def _prefetch(self, batch: list[dict[str, Any]], records: list[dict[str, Any]]) -> Parents:
        """The parent references of ``records`` (the records of ``batch`` this map takes): what their
        chunk fetched (see :meth:`batches`), the rest now.

        The chunk's answer stands for the other maps' records, found or not: they were all loaded in
        earlier waves. A reference to this map's own records (a record whose parent is another record
        of the same map) is asked again unless found, since an earlier batch may just have written it.
        What the records ask is the one :meth:`batches` worked out when ``batch`` is the batch it just
        handed out and the map takes all of it.
        """
        foreseen, self._foreseen = self._foreseen, None
        if foreseen is not None and foreseen[0] is batch and foreseen[1] is not None and len(records) == len(batch):
            wanted = foreseen[1]
        else:
            wanted = self._wanted(records)
        refs: Parents = {}
        for map_name, ids in wanted.items():
            warm = self._warm.get(map_name, _NO_PARENTS)
            refs[map_name] = {source_id: warm[source_id] for source_id in ids if source_id in warm}
            wanted[map_name] = ids - refs[map_name].keys() - self._asked.get(map_name, set())
        for map_name, fetched in self._fetch(wanted).items():
            refs[map_name].update(fetched)
        return refs

    def transform(self, records: list[dict[str, Any]]) -> TransformOutcome:
        foreseen = self._foreseen
        if foreseen is not None and foreseen[0] is records and foreseen[2] is not None:
            self._foreseen = None
            return foreseen[2]
        if self.columns is not None:
            return self._transform_together([records], None)[0]
        outcome = TransformOutcome()
        applicable, existing = self._applicable(records)
        outcome.not_for_this_map = len(records) - len(applicable)
        bctx = _BatchContext(self.ctx, self._prefetch(records, applicable), self.users, self.related)
        self._transform_rows(applicable, existing, bctx, outcome)
        return outcome

    def _applicable(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The records this map takes, and for a map of existing users each one's user id."""
        om = self.map
        applicable = records if om.when is None else [r for r in records if om.when.matches(r, self.ctx.as_of)]
        existing: dict[str, str] = {}
        if om.existing == "users":  # only staff with a matched user have a record to update
            existing = {r["id"]: uid for r in applicable if (uid := self.users.user_for_staff(r["id"]))}
            applicable = [r for r in applicable if r["id"] in existing]
        return applicable, existing

    def _transform_together(self, batches: list[list[dict[str, Any]]], refs: Parents | None,
                            chunk: list[dict[str, Any]] | None = None) -> list[TransformOutcome]:
        """Each batch's outcome, the batches' records transformed a column at a time in one go.

        A column step costs the same call overhead for 60 records as for 2,000: a chunk transformed
        whole rather than write batch by write batch spends a fraction of it per record. ``refs`` is
        the chunk's crosswalk answers (None: one batch, whose parents are fetched now). ``chunk`` is
        the records the batches were cut from, in order: read from staging (``StagedRows``), its
        columns are used while the map takes every record, and its rows are not read at all unless a
        field is computed record by record.
        """
        outcomes = [TransformOutcome() for _ in batches]
        staged = getattr(chunk, "columns", None)
        if (staged is not None and self.map.when is None and self.map.existing != "users"
                and len(chunk) == sum(map(len, batches))):
            applicable: list[dict[str, Any]] = chunk  # every record, none read to decide
            existing: dict[str, str] = {}
            owners = [index for index, batch in enumerate(batches) for _ in range(len(batch))]
        else:
            applicable, existing, owners = [], {}, []  # owners: per applicable record, the batch it came in
            for index, batch in enumerate(batches):
                mine, users = self._applicable(batch)
                outcomes[index].not_for_this_map = len(batch) - len(mine)
                applicable.extend(mine)
                existing.update(users)
                owners.extend([index] * len(mine))
            if staged is not None and len(applicable) != sum(map(len, batches)):
                staged = None  # records another map takes were left out: the columns no longer line up
        if refs is None:
            refs = self._prefetch(batches[0], applicable)
        bctx = _BatchContext(self.ctx, refs, self.users, self.related)
        with _collector_paused():
            self._transform_columns(applicable, owners, existing, bctx, outcomes, staged)
        return outcomes

    def _transform_columns(self, applicable: list[dict[str, Any]], owners: list[int], existing: dict[str, str],
                           bctx: _BatchContext, outcomes: list[TransformOutcome],
                           staged: dict[str, list[Any]] | None = None) -> None:
        """:meth:`_transform_rows`'s outcome, the fields computed a column at a time (engine.columnar).

        Records whose extraction issues quarantine them are set aside first (no transform runs on
        them, as in the loop); the rest are transformed together, then taken in staging order: the
        first failing field quarantines a record, the file and unique checks run per record as in the
        loop, and the payload digests of the records that go out are joined from column fragments.
        Each record's outcome goes to ``outcomes[owners[its position]]``.
        """
        om, used = self.map, self.used
        # Position in ``applicable`` -> the entries of a record its extraction issues quarantine.
        set_aside: dict[int, list[QuarantineEntry]] = {}
        live, live_owners = applicable, owners
        issues = staged.get(ISSUES_COLUMN) if staged is not None else None
        if self.ctx.field_issue_policy == "quarantine" and (
                any(issues) if issues is not None else any(r.get(ISSUES_COLUMN) for r in applicable)):
            live, live_owners = [], []
            for position, record in enumerate(applicable):
                problems = self._field_problems(record, used) if record.get(ISSUES_COLUMN) else None
                if problems:
                    set_aside[position] = problems
                else:
                    live.append(record)
                    live_owners.append(owners[position])
        batch = Batch(live, staged if live is applicable else None)
        columns, failed = self.columns.compute(batch, bctx)
        # Payloads are built from the columns when read (ColumnRecord); the loop below only decides
        # each record's fate, reading the few fields the file and unique checks need.
        payloads = PayloadColumns(self.dest_fields, columns, om.key_field)
        file_columns = [columns[self.dest_fields.index(name)] for name in self.file_fields]
        unique_columns = [columns[self.dest_fields.index(fm.dest_field)] for fm in self.unique_fields]
        ids = batch.column("id")
        out_rows: Sequence[int] = range(len(ids))  # every record goes out unless a check below says not
        if set_aside or failed or file_columns or unique_columns:
            out_rows = []
            position = 0
            for row, source_id in enumerate(ids):
                if set_aside:
                    while position in set_aside:
                        outcomes[owners[position]].quarantined.extend(set_aside.pop(position))
                        position += 1
                    position += 1
                outcome = outcomes[live_owners[row]]
                problem = failed.get(row) if failed else None
                if problem is not None:
                    error = problem[1]
                    if not isinstance(error, TransformError):
                        raise error
                    outcome.quarantined.append(QuarantineEntry(
                        source_object=om.source, source_id=source_id, field=error.field, value=error.value,
                        reason=f"[{om.name}] {error.reason}", stage="transform"))
                    continue
                too_big = self._oversized_file([column[row] for column in file_columns]) if file_columns else None
                taken = None if too_big else self._held_by_another(
                    source_id, [column[row] for column in unique_columns]) if unique_columns else None
                if too_big or taken:
                    field_name, value, reason = too_big or taken
                    outcome.quarantined.append(QuarantineEntry(
                        source_object=om.source, source_id=source_id, field=field_name, value=value,
                        reason=f"[{om.name}] {reason}", stage="transform"))
                    continue
                out_rows.append(row)
            for position, entries in set_aside.items():
                outcomes[owners[position]].quarantined.extend(entries)
        # The records that go out, made in one step and handed to their batches' outcomes in order
        # (a batch's rows follow the last batch's).
        sent_ids = ids if len(out_rows) == len(ids) else list(map(ids.__getitem__, out_rows))
        sent = list(map(ColumnRecord, sent_ids, map(existing.get, sent_ids), repeat(payloads), out_rows))
        start = 0
        for owner, count in Counter(map(live_owners.__getitem__, out_rows)).items():
            outcomes[owner].records.extend(sent[start:start + count])
            start += count
        if sent:
            self._digests(sent, columns, out_rows, len(live))

    def _digests(self, records: list[OutgoingRecord], columns: list[list[Any]], rows: Sequence[int], n: int) -> None:
        """Each outgoing record's payload digest, from the batch's columns (see payload_digests)."""
        if len(rows) < n:
            columns = [with_kinds_of(column, map(column.__getitem__, rows)) for column in columns]
        if len(self._digest_keys) > len(columns) or self.map.key_field:
            ids = [record.source_id for record in records]
            columns = list(columns)
            if len(self._digest_keys) > len(columns):
                columns.append(ids)
            else:
                columns[self.dest_fields.index(self.map.key_field)] = ids
        try:
            digests = payload_digests(self._digest_keys, columns)
        except Exception:  # noqa: BLE001 - a value no writer takes: the loader hashes (and fails) as before
            log.debug("payload digests of %s left to the loader", self.map.name, exc_info=True)
            return
        for record, digest in zip(records, digests):
            record.digest = digest

    def _transform_rows(self, applicable: list[dict[str, Any]], existing: dict[str, str],
                        bctx: _BatchContext, outcome: TransformOutcome) -> None:
        """Record by record: the reference the columnar path (:meth:`_transform_columns`) is held to,
        and the way for a map that writes one destination field twice."""
        om = self.map
        used = self.used
        quarantine_issues = self.ctx.field_issue_policy == "quarantine"
        for record in applicable:
            source_id = record["id"]
            if quarantine_issues and record.get(ISSUES_COLUMN):
                problems = self._field_problems(record, used)
                if problems:
                    outcome.quarantined.extend(problems)
                    continue
            # Every destination field in the mapping's order, the plain one-source copies (most fields
            # of every mapping) read in one step rather than a Python step each: ``copy`` is "the value,
            # empty text as none". The appliers then set the other fields in order (and check the
            # copies that have a default or are required).
            payload = dict(zip(self.dest_fields, map(record.get, self.copied_sources)))
            if "" in payload.values():
                for dest_field in self.copies:
                    if payload[dest_field] == "":
                        payload[dest_field] = None
            try:
                for dest_field, get, copied, default, required in self.appliers:
                    if copied is None:
                        value = get(record, bctx)
                    elif (value := record.get(copied)) == "":
                        value = None
                    if value is None:
                        if default is not None:
                            value = default
                        elif required is not None:
                            raise TransformError(*required)
                    payload[dest_field] = value
            except TransformError as exc:
                outcome.quarantined.append(QuarantineEntry(
                    source_object=om.source, source_id=source_id, field=exc.field, value=exc.value,
                    reason=f"[{om.name}] {exc.reason}", stage="transform"))
                continue
            too_big = self._oversized_file([payload.get(name) for name in self.file_fields]) \
                if self.file_fields else None
            if too_big:
                outcome.quarantined.append(QuarantineEntry(
                    source_object=om.source, source_id=source_id, field=too_big[0], value=too_big[1],
                    reason=f"[{om.name}] {too_big[2]}", stage="transform"))
                continue
            taken = self._held_by_another(source_id, [payload.get(fm.dest_field) for fm in self.unique_fields]) \
                if self.unique_fields else None
            if taken:
                outcome.quarantined.append(QuarantineEntry(
                    source_object=om.source, source_id=source_id, field=taken[0], value=taken[1],
                    reason=f"[{om.name}] {taken[2]}", stage="transform"))
                continue
            if om.key_field:
                payload[om.key_field] = source_id
            outcome.records.append(OutgoingRecord(source_id=source_id, payload=payload,
                                                  dest_id=existing.get(source_id)))

    def first_holders(self) -> dict[str, dict[str, str]]:
        """Per ``unique`` field, each value more than one of this map's records holds → the id of the
        first of them in staging order, the one that keeps it.

        The destination holds such a value once (Twenty and Freshsales refuse a second person with an
        e-mail already taken). Left to the destination, the record written first would win, and when
        a map's units run in parallel on several workers, which one that is depends on their timing.
        Deciding by staging order instead gives every run, local or distributed, the same winner, and
        spares the destination a refused batch.

        Finding them is a pass over the map's whole source; every load unit of the map needs the same
        answer, so the first task works it out and keeps it with the snapshot (``Snapshot.derived``;
        :meth:`_first_holders_name` says what it depends on), and the others read it: per unit, the
        pass grew with the tenant (142 ms a unit for the contacts of a 1,000,000-record tenant, 29
        units; 5.5 ms to read).
        """
        if self._first_holders is None:
            self._first_holders = self.ctx.snapshot.derived(self._first_holders_name(), self._find_first_holders)
        return self._first_holders

    def _first_holders_name(self) -> str:
        """The name the first holders of this map are kept under (``Snapshot.derived``): everything they
        depend on beyond the snapshot, hashed. The map as approved (the mapping's hash), the date its
        conditions measure from, the users its fields may resolve."""
        key = json.dumps([self.ctx.mapping.hash, self.map.name, self.ctx.as_of.isoformat(), self.users.text])
        return f"first-holders-{self.map.name}-{hashlib.blake2b(key.encode(), digest_size=12).hexdigest()}"

    def _find_first_holders(self) -> dict[str, dict[str, str]]:
        """:meth:`first_holders`, worked out: one pass over the map's source."""
        om = self.map
        staged = set(get_object(om.source).arrow_schema.names)
        columns = sorted(({"id"} | {s for fm in self.unique_fields for s in fm.sources}
                          | (om.when.fields() if om.when else set())) & staged)
        bctx = _BatchContext(self.ctx, {}, self.users, self.related)
        seen: dict[str, dict[str, str]] = {fm.dest_field: {} for fm in self.unique_fields}
        shared: dict[str, dict[str, str]] = {fm.dest_field: {} for fm in self.unique_fields}
        getters = [(fm, TRANSFORMS[fm.transform].bind(fm)) for fm in self.unique_fields]
        for record in self.ctx.snapshot.iter_records(om.source, columns):
            if om.when is not None and not om.when.matches(record, self.ctx.as_of):
                continue
            for fm, get in getters:
                try:
                    key = unique_key(get(record, bctx))
                except TransformError:
                    continue  # the record is quarantined for that value anyway
                if key is None:
                    continue
                first = seen[fm.dest_field].setdefault(key, record["id"])
                if first != record["id"]:
                    shared[fm.dest_field].setdefault(key, first)
        return shared

    def _held_by_another(self, source_id: str, values: list[Any]) -> tuple[str, Any, str] | None:
        """``(field, value, reason)`` when a unique value of this record (``values``, one a unique field)
        is kept by an earlier record."""
        holders = self.first_holders()
        for fm, value in zip(self.unique_fields, values):
            key = unique_key(value)
            first = holders[fm.dest_field].get(key) if key is not None else None
            if first is not None and first != source_id:
                source = fm.sources[0] if fm.sources else fm.dest_field
                return (source, key, f"{fm.dest_field} {key!r} is also on {self.map.source} {first}, which comes "
                        f"first and keeps it: {self.ctx.destination_name} holds each {fm.dest_field} once "
                        "(unique in the mapping)")
        return None

    def _oversized_file(self, values: list[Any]) -> tuple[str, str, str] | None:
        """``(field, file name, reason)`` when a file of this record (``values``, one a file field) is
        over the destination's limit."""
        limit = self.ctx.destination.capabilities.max_file_bytes
        for name, value in zip(self.file_fields, values):
            if isinstance(value, FileRef) and limit and value.size > limit:
                return (name, value.name, f"file is {value.size / 1e6:.1f} MB; {self.ctx.destination_name} "
                        f"accepts at most {limit / 1e6:.0f} MB (kept in Ascora: move it by hand or link it)")
        return None

    def _field_problems(self, record: dict[str, Any], used: set[str]) -> list[QuarantineEntry]:
        text = record.get(ISSUES_COLUMN)
        if not text:
            return []
        entries = []
        for issue in json.loads(text):
            if issue["field"] in used:
                entries.append(QuarantineEntry(
                    source_object=self.map.source, source_id=record["id"], field=issue["field"],
                    value=issue["value"], reason=f"[{self.map.name}] {issue['reason']}", stage="extract"))
        return entries
