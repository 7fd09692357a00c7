"""A batch's fields computed a column at a time, and its payload digests from pre-encoded fragments.

Record by record, a batch cost a Python call per record and field (a job has seventy), a dict look-up
per value read, and for the payload hash a walk of every payload by the JSON encoder. Here each field
map's transform runs once per batch over the batch's column of its source (``Transform.columns``:
list comprehensions over Python lists), the payloads are zipped from the columns, and each payload's
digest is taken from its values' JSON, written a column at a time and joined per record.

The per-record getter (``Transform.bind``) stays the rule: a transform without a column form (address,
template, refs, related_rows, choose, file ...) is asked record by record, and so is a column
transform that raises on any record of the batch (a value it cannot convert, a required parent that
is missing): the getter then names the record and field, and the record is quarantined exactly as
the record-by-record loop would. A record's first failing field in mapping order is the one
reported, and an exception that is not a ``TransformError`` is raised when the loop would have
reached it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from json.encoder import encode_basestring
from operator import attrgetter, itemgetter
from typing import Any

from airflow_ascora_provider.destinations.spec import OutgoingRecord
from airflow_ascora_provider.engine.context import (
    dataclass_text, digests_of, json_writer, value_json, write_dates, write_datetimes, write_decimals)
from airflow_ascora_provider.mapping.spec import FieldMap
from airflow_ascora_provider.mapping.transforms import TRANSFORMS, Getter, TransformError
from airflow_ascora_provider.source.columns import kinds_of, with_kinds_of


class Batch:
    """The records of one batch as column transforms read them: each source column built once.

    ``staged``: the records' columns as staging read them (``StagedRows.columns``, the same values in
    the same order), taken instead of reading each value back out of the record dicts.
    """

    __slots__ = ("records", "n", "_columns", "_memo", "_staged")

    def __init__(self, records: list[dict[str, Any]], staged: dict[str, list[Any]] | None = None):
        self.records = records
        self.n = len(records)
        self._columns: dict[str, list[Any]] = {}
        self._memo: dict[Any, Any] = {}
        self._staged = staged

    def column(self, name: str) -> list[Any]:
        column = self._columns.get(name)
        if column is None:
            read = self._staged.get(name) if self._staged is not None else None
            if read is not None and len(read) == self.n:
                column = with_kinds_of(read, read)  # a copy: what a transform does with it stays in the batch
            else:
                try:  # staged records hold every column read: each value taken in C
                    column = list(map(itemgetter(name), self.records))
                except KeyError:  # a field this object does not stage reads as none
                    column = [record.get(name) for record in self.records]
            self._columns[name] = column
        return column

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """What several fields of the batch share (a job's related rows), computed once."""
        if key in self._memo:
            return self._memo[key]
        value = self._memo[key] = compute()
        return value


class _Failed:
    """A record's field that raised: the error, raised or quarantined if the record gets that far.

    A ``TransformError`` is kept without its traceback: the quarantine entry takes its field, value
    and reason, and the traceback's frames hold the whole chunk (its rows, its parents' references)
    in a cycle with the list this error is kept in. The chunk is transformed with the cycle collector
    paused, so each chunk with a refused record stayed in memory until the next full collection: a
    whole map's notes, read in one task, held 58 chunks at once (150 MB). Any other error keeps its
    traceback, to be raised with it.
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error.with_traceback(None) if isinstance(error, TransformError) else error


class FieldColumns:
    """One map's fields, each as its column transform or its bound per-record getter, bound once per task.

    :meth:`compute` gives, per field map in the mapping's order, the batch's values (the default put in
    for none), and per record (by position) the first field that failed: ``(field index, error)``.
    """

    def __init__(self, fields: list[FieldMap]):
        self.fields = []
        for fm in fields:
            transform = TRANSFORMS[fm.transform]
            column = transform.columns(fm) if transform.columns is not None else None
            required = ((fm.sources[0] if fm.sources else fm.dest_field, None,
                         f"{fm.dest_field} is required by the mapping but has no value") if fm.required else None)
            self.fields.append((column, transform.bind(fm), fm.default, required))

    def compute(self, batch: Batch, ctx: Any) -> tuple[list[list[Any]], dict[int, tuple[int, Exception]]]:
        columns: list[list[Any]] = []
        failed: dict[int, tuple[int, Exception]] = {}
        for index, (column, get, default, required) in enumerate(self.fields):
            values = None
            if column is not None:
                try:
                    values = column(batch, ctx)
                except Exception:  # noqa: BLE001 - the getter, record by record, decides what it was
                    values = None
            if values is None:
                values = _per_record(get, batch.records, ctx)
                for row, value in enumerate(values):
                    if type(value) is _Failed and row not in failed:
                        failed[row] = (index, value.error)
            if default is not None:
                values = [default if value is None else value for value in values]
            elif required is not None and None in values:
                for row, value in enumerate(values):
                    if value is None and row not in failed:
                        failed[row] = (index, TransformError(*required))
            columns.append(values)
        return columns, failed


class PayloadColumns:
    """A batch's destination fields as columns: what each :class:`ColumnRecord` builds its payload from."""

    __slots__ = ("names", "columns", "key_field")

    def __init__(self, names: tuple[str, ...], columns: list[list[Any]], key_field: str | None):
        self.names = names
        self.columns = columns
        self.key_field = key_field

    def payload(self, row: int, source_id: str) -> dict[str, Any]:
        payload = dict(zip(self.names, [column[row] for column in self.columns]))
        if self.key_field:
            payload[self.key_field] = source_id
        return payload


class ColumnRecord(OutgoingRecord):
    """An :class:`OutgoingRecord` whose payload is built from its batch's columns when first read.

    The loader decides most records of a re-run unchanged by their digest alone and never reads their
    payload (``MapLoader.prepare``); building every record's payload dict anyway was a twentieth of the
    transform's time. Read (to write it, diff it, or hash it when the digest could not be worked out),
    it is the same dict the record-by-record loop builds, made once; set, it is what was set.
    """

    def __init__(self, source_id: str, dest_id: str | None, columns: PayloadColumns, row: int):
        self.source_id = source_id
        self.dest_id = dest_id
        self.digest = None
        self._columns = columns
        self._row = row
        self._payload: dict[str, Any] | None = None

    @property  # type: ignore[override]
    def payload(self) -> dict[str, Any]:
        payload = self._payload
        if payload is None:
            payload = self._payload = self._columns.payload(self._row, self.source_id)
        return payload

    @payload.setter
    def payload(self, value: dict[str, Any]) -> None:
        self._payload = value

    def __eq__(self, other: object) -> bool:  # as an OutgoingRecord: the same record, however its payload was built
        if not isinstance(other, OutgoingRecord):
            return NotImplemented
        return (self.source_id, self.payload, self.dest_id) == (other.source_id, other.payload, other.dest_id)

    __hash__ = None  # type: ignore[assignment]  # mutable, as OutgoingRecord


def _per_record(get: Getter, records: list[dict[str, Any]], ctx: Any) -> list[Any]:
    """The getter over every record; a record it raises for holds the error (see :class:`_Failed`)."""
    try:
        return [get(record, ctx) for record in records]
    except Exception:  # noqa: BLE001 - asked again one by one, to know which records
        pass
    values = []
    for record in records:
        try:
            values.append(get(record, ctx))
        except Exception as exc:  # noqa: BLE001 - kept for the record, raised or quarantined there
            values.append(_Failed(exc))
    return values


def payload_digests(keys: list[str], columns: list[list[Any]]) -> list[str | None]:
    """Per record, :func:`~airflow_ascora_provider.engine.context.payload_hash` of the payload whose
    ``keys`` (unique) hold the records' values in ``columns``, without writing each payload whole.

    Each value is written by :func:`~airflow_ascora_provider.engine.context.value_json` a column at
    a time (text, none, numbers, timestamps and shared values such as one parent's reference without
    a Python call a value), and each record's written values joined in key order. A record with a
    value that cannot be written gets None: the loader hashes its payload itself (and fails there as
    before).
    """
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if not order:
        return []
    parts: list[list[str | None]] = []
    unwritten: set[int] = set()  # the records with a value no writer takes
    for index in order:
        fragments, missing = _fragments(columns[index])
        parts.append(fragments)
        unwritten.update(missing)
    in_order = [keys[index] for index in order]
    if not unwritten:
        # Each record's values consumed as zip hands them out (zip then reuses its tuple) and joined,
        # encoded and hashed with no Python step between.
        return digests_of(in_order, map(",".join, zip(*parts)))
    rows = [row for row in range(len(parts[0])) if row not in unwritten]
    written = iter(digests_of(in_order, [",".join([part[row] for part in parts]) for row in rows]))
    return [None if row in unwritten else next(written) for row in range(len(parts[0]))]


def _fragments(values: list[Any]) -> tuple[list[str | None], list[int]]:
    """``value_json(value)`` per value, and the positions of the values that cannot be encoded
    (None there).

    A column mostly holds one class of value (and none): its writer is chosen once for the column.
    Values that are one object shared by many records (a parent's reference) are written once.
    Whether a record holds a value no writer takes is told by position, not by looking for None in
    every record's fragments (as long as formatting them).
    """
    kinds = set(kinds_of(values))
    had_none = _NONE in kinds
    kinds.discard(_NONE)
    if len(kinds) == 1:
        kind = kinds.pop()
        write = json_writer(kind)
        try:
            # Only value objects are shared between records (one parent's reference, one owner):
            # texts, amounts and dates are each record's own, and counting their identities cost
            # a fiftieth of the transform.
            shape = dataclass_text(kind) if write is not encode_basestring else None
            if shape is not None and _is_shared(values):
                written: dict[int, str] = {}
                return ["null" if value is None else written[key] if (key := id(value)) in written
                        else written.setdefault(key, write(value)) for value in values], []
            if shape is not None and shape[1]:
                return _dataclass_fragments(values, had_none, *shape), []
            if kind in _COLUMN_WRITERS:  # amounts, timestamps, dates
                return _with_nulls(values, had_none, _COLUMN_WRITERS[kind]), []
            if kind is tuple or kind is list:  # a note's parents, a person's other e-mails
                return _with_nulls(values, had_none, _sequence_fragments), []
            if not had_none:  # no test a value: the writer mapped in C
                return list(map(write, values)), []
            return ["null" if value is None else write(value) for value in values], []
        except (TypeError, ValueError):
            pass
    elif not kinds:
        return ["null"] * len(values), []
    out: list[str | None] = []
    missing: list[int] = []
    for position, value in enumerate(values):
        try:
            out.append(value_json(value))
        except (TypeError, ValueError):
            out.append(None)
            missing.append(position)
    return out, missing


def _dataclass_fragments(values: list[Any], had_none: bool, text: str, fields: tuple[str, ...]) -> list[str]:
    """The fragments of a column of one value class (amounts, names, parents ...) a field at a time:
    each field's values written as a column of their own (:func:`_fragments`), then put into the
    class's text together. A value written alone cost a Python call and a look-up of each field's
    writer (an amount 900 ns). Raises TypeError when a field holds a value no writer takes."""
    def written(present: list[Any]) -> list[str]:
        parts = []
        for name in fields:
            fragments, missing = _fragments(list(map(attrgetter(name), present)))
            if missing:
                raise TypeError(f"a {name} no writer takes")
            parts.append(fragments)
        return list(map(text.__mod__, zip(*parts)))

    return _with_nulls(values, had_none, written)


def _sequence_fragments(values: list[list[Any] | tuple[Any, ...]]) -> list[str]:
    """A column of lists or tuples (no none) written as the writers write each (``[item,...]``, each
    item as it is written alone), their items written together as one column: a note's parents are
    references the chunk's notes share, written once each (:func:`_fragments`), where a list written
    alone cost a writer's call per item (2 µs a note). Raises TypeError when an item is one no writer
    takes."""
    items, missing = _fragments([item for value in values for item in value])
    if missing:
        raise TypeError("an item no writer takes")
    out = []
    start = 0
    for value in values:
        end = start + len(value)
        out.append("[" + ",".join(items[start:end]) + "]")
        start = end
    return out


def _with_nulls(values: list[Any], had_none: bool, write: Callable[[list[Any]], list[str]]) -> list[str]:
    """``write`` over the values that are not none, with ``null`` put back where none was."""
    if not had_none:
        return write(values)
    following = iter(write([value for value in values if value is not None])).__next__
    return ["null" if value is None else following() for value in values]


def _is_shared(values: list[Any]) -> bool:
    """Whether the column's values are objects several records share (parents' references, owners).

    Told from the first values only: the answer picks how the column is written, not what (either
    way writes the same fragments), and counting the identities of a whole chunk's amounts, most of
    them each record's own, cost as much as writing a fifth of them."""
    head = values[:_SHARED_SAMPLE]
    return len(set(map(id, head))) < len(head) // 2


_SHARED_SAMPLE = 200


_NONE = type(None)
# Classes whose columns are written whole, as their writers write each value (see engine.context).
_COLUMN_WRITERS: dict[type, Callable[[list[Any]], list[str]]] = {
    Decimal: write_decimals, dt.datetime: write_datetimes, dt.date: write_dates}
