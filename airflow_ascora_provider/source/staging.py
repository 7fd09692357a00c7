"""Staging: one Parquet table per canonical object, chunked, with a manifest, on any ObjectStoragePath.

Every engine step reads its input from here (never from another task's memory), so any task can be
retried or moved to another worker. A *snapshot* is one extraction: re-extracting for a delta writes
a new snapshot beside the old one, and the delta compares the two through the ledger's hashes.

Layout::

    <root>/<snapshot>/manifest.json
    <root>/<snapshot>/<object>/part-00000.parquet ...
    <root>/<snapshot>/_rejected/part-00000.parquet     records quarantined or skipped at extraction
    <root>/<snapshot>/files/<attachment id>/<file name> attachment bytes

The root is an Airflow ``ObjectStoragePath``: a local folder by default, ``s3://`` or ``gs://`` where
the user has those providers installed, with no code change here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import uuid
from itertools import repeat
from decimal import Decimal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_ascora_provider.source.columns import KindedColumn, with_kinds_of
from airflow_ascora_provider.source.model import ObjectSchema, get_object

MANIFEST = "manifest.json"
REJECTED = "_rejected"
FILES = "files"
DERIVED = "_derived"
PART_ROWS = 50_000
RANGE_BATCH_ROWS = 2_000  # rows turned into dicts at a time by iter_range
# Rows of a Parquet row group, the least a reader decodes: a load unit (engine.runner.plan_units, at
# least 2,000 rows) reads the groups its range touches, not its whole 50,000-row part.
ROW_GROUP_ROWS = 2_000

REJECTED_SCHEMA = pa.schema(
    [
        ("object", pa.string()),
        ("source_id", pa.string()),
        ("field", pa.string()),
        ("value", pa.string()),
        ("reason", pa.string()),
        ("disposition", pa.string()),  # "quarantined" or "skipped"
        ("origin", pa.string()),
    ]
)

_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_name(text: str) -> str:
    """Run ids like ``manual__2026-11-21T10:00:00+00:00`` become folder names every store accepts."""
    return _SAFE.sub("_", text).strip("_") or "snapshot"


def as_path(root: Any):
    from airflow.sdk import ObjectStoragePath

    return root if isinstance(root, ObjectStoragePath) else ObjectStoragePath(str(root))


def rows_of(data: pa.RecordBatch | pa.Table) -> StagedRows:
    """``data.to_pylist()``: the same dicts, from the columns' Python values (:func:`python_values`),
    which are kept with them; the dicts are built when first read (:class:`StagedRows`).

    Arrow's own ``to_pylist`` builds each row with a Python comprehension over the column names, a
    tenth of the time of turning staged rows into dicts.
    """
    values = [_kinded(python_values(column), column) for column in data.columns]
    return StagedRows(None, dict(zip(data.schema.names, values)), data.num_rows)


def _kinded(values: list[Any], column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The column's values with the classes :func:`python_values` makes of its Arrow type
    (:class:`~airflow_ascora_provider.source.columns.KindedColumn`); as they are for other types."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        made: type | None = str
    elif pa.types.is_timestamp(kind):
        made = _dt.datetime
    elif pa.types.is_date32(kind):
        made = _dt.date
    elif pa.types.is_decimal(kind):
        made = Decimal
    elif pa.types.is_boolean(kind):
        made = bool
    elif pa.types.is_integer(kind):
        made = int
    elif pa.types.is_floating(kind):
        made = float
    else:
        return values
    nulls = column.null_count
    kinds = frozenset() if not len(values) else frozenset({type(None)}) if nulls == len(values) else \
        frozenset({made, type(None)}) if nulls else frozenset({made})
    return KindedColumn(values, kinds)


class StagedRows(Sequence):
    """Staged rows as dicts, with the columns they are built from: ``columns`` maps each name to its
    Python values in row order (the same objects the dicts hold).

    The transform reads a chunk's fields a column at a time and most maps never read a row whole, so
    the dicts are built only when a row is first read (a fifth of what reading a job's rows cost):
    then all of them at once (:func:`dicts_of`), once. ``rows`` given, they are those dicts. A slice
    or copy of these rows is a plain list; :meth:`chunks` cuts them into pieces that read the same
    dicts (built once for all of them) or their columns alone.
    """

    __slots__ = ("_columns", "_n", "_rows", "_whole", "_at")

    def __init__(self, rows: list[dict[str, Any]] | None, columns: dict[str, list[Any]] | None, n: int = 0):
        self._columns: dict[str, list[Any]] | None = columns
        self._rows = rows
        self._n = len(rows) if rows is not None else n
        self._whole: StagedRows | None = None  # the rows these were cut from (see chunks)
        self._at = 0

    @property
    def columns(self) -> dict[str, list[Any]]:
        columns = self._columns
        if columns is None:  # a piece's share of the rows it was cut from, taken when first asked
            at, end = self._at, self._at + self._n
            columns = self._columns = {name: with_kinds_of(column, column[at:end])
                                       for name, column in self._whole.columns.items()}
        return columns

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows = self._rows
        if rows is None:
            if self._whole is not None:
                rows = self._whole.rows[self._at:self._at + self._n]
            elif self.columns:
                rows = dicts_of(list(self.columns), zip(*self.columns.values()))
            else:
                rows = [{} for _ in range(self._n)]
            self._rows = rows
        return rows

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:  # as the list of its rows
        if isinstance(other, StagedRows):
            other = other.rows
        return self.rows == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StagedRows({self._n} rows, columns {list(self.columns)})"

    def chunks(self, size: int) -> Iterator[StagedRows]:
        """These rows in pieces of ``size`` (the last may be shorter), each with its columns' share (cut
        when first asked: a chunk's write batches mostly never are); a piece's dicts are these rows'
        own (built once, for every piece that reads one)."""
        for at in range(0, self._n, size):
            end = min(at + size, self._n)
            piece = StagedRows(None if self._rows is None else self._rows[at:end], None, end - at)
            piece._whole, piece._at = self, at
            yield piece


class StagedRecords:
    """The rows of one staging read, one dict at a time (an iterator, as a generator of rows was), or
    in chunks of a set number of rows with their columns (:meth:`chunks`, which ``engine.batching.chunked``
    takes when handed these records)."""

    def __init__(self, blocks: Iterator[StagedRows]):
        self._blocks = blocks
        self._rows = self._each_row()
        self._started = False

    def _each_row(self) -> Iterator[dict[str, Any]]:
        self._started = True
        for block in self._blocks:
            yield from block

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._rows

    def __next__(self) -> dict[str, Any]:
        return next(self._rows)

    def chunks(self, size: int) -> Iterator[StagedRows]:
        """The rows in :class:`StagedRows` of ``size`` rows (the last may be shorter), each with its
        columns: a chunk that is a whole read block is that block, others are cut from blocks."""
        if self._started:
            raise RuntimeError("rows were already taken one by one: chunks would miss them")
        self._started = True
        pieces: list[tuple[StagedRows, int, int]] = []
        have = 0
        for block in self._blocks:
            at = 0
            while at < len(block):
                take = min(size - have, len(block) - at)
                pieces.append((block, at, at + take))
                have += take
                at += take
                if have == size:
                    yield _joined(pieces)
                    pieces, have = [], 0
        if pieces:
            yield _joined(pieces)


def _joined(pieces: list[tuple[StagedRows, int, int]]) -> StagedRows:
    """The rows ``lo``..``hi`` of each block in turn, as one :class:`StagedRows` (built from their columns)."""
    if len(pieces) == 1 and pieces[0][1] == 0 and pieces[0][2] == len(pieces[0][0]):
        return pieces[0][0]
    columns: dict[str, list[Any]] = {name: [] for name in pieces[0][0].columns}
    for block, lo, hi in pieces:
        for name, column in block.columns.items():
            columns[name] += column[lo:hi]
    for name in columns:  # the classes of every piece's values, where each piece knows them
        kinds = [getattr(block.columns[name], "kinds", None) for block, _, _ in pieces]
        if None not in kinds:
            columns[name] = KindedColumn(columns[name], frozenset().union(*kinds))
    return StagedRows(None, columns, sum(hi - lo for _, lo, hi in pieces))


def dicts_of(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``[dict(zip(names, row)) for row in rows]``, every row holding a value for every name.

    Each dict is a copy of one already holding the names, then filled: a dict built from pairs grows
    its table four or five times on the way to a record's twenty to fifty fields, a copy is sized
    once (a fifth less per record for staged rows and payloads alike).
    """
    blank = dict.fromkeys(names)
    out: list[dict[str, Any]] = []
    append = out.append
    for row in rows:
        record = blank.copy()
        record.update(zip(names, row))
        append(record)
    return out


def python_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """``column.to_pylist()``, for the staged types Arrow turns into Python slowly.

    A UTC timestamp or a date Arrow turns into Python one value at a time through its time-zone
    machinery (about 3 µs a timestamp: most of the time a job's rows took); here its fields are
    worked out for the whole column at once and each value made from them (:func:`_from_fields`),
    the same values with the same ``tzinfo`` object. An amount Arrow builds as a ``Decimal`` from its
    digits at 550 ns; from the column's text (Arrow's cast, the same digits, places and sign)
    ``Decimal`` takes 300 ns, and amounts are a tenth of what a job's rows hold.
    """
    kind = column.type
    try:
        if pa.types.is_timestamp(kind) and kind.tz in (None, "UTC", "utc") and kind.unit in _MICROS_IN:
            zone = pa.scalar(0, kind).as_py().tzinfo  # Arrow's own tzinfo for the zone (None: naive)
            micros = column.cast(pa.int64())
            if _MICROS_IN[kind.unit] != 1:
                micros = pc.multiply_checked(micros, _MICROS_IN[kind.unit])
            return _from_fields(column, _timestamp_fields(_numbers(micros)), _dt.datetime, zone)
        if pa.types.is_date32(kind):
            return _from_fields(column, _date_fields(_numbers(column.cast(pa.int32())).astype(np.int64)), _dt.date)
        if pa.types.is_decimal(kind) and kind.scale >= 0:  # a negative scale is written with an exponent
            texts = column.cast(pa.string()).to_pylist()
            if not column.null_count:  # most amounts: each made in C
                return list(map(Decimal, texts))
            return [None if text is None else Decimal(text) for text in texts]
    except (OverflowError, ValueError, pa.ArrowException):  # out of Python's range: Arrow's own answer
        pass
    return column.to_pylist()


_MICROS_IN = {"s": 1_000_000, "ms": 1_000, "us": 1}
_MICROS_A_DAY = 86_400_000_000


def _numbers(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer column as NumPy, none read as 0 (:func:`_from_fields` puts none back)."""
    return pc.fill_null(column, 0).to_numpy()


def _date_fields(days: np.ndarray) -> np.ndarray:
    """Per day since the epoch, ``(year's high byte, year's low byte, month, day)``: what
    ``datetime.date`` is made from as pickle makes it. Raises OverflowError outside years 1 to 9999."""
    day64 = days.astype("datetime64[D]")
    months = day64.astype("datetime64[M]")
    years = months.astype("datetime64[Y]").astype(np.int64) + 1970
    if len(years) and (years.min() < 1 or years.max() > 9999):
        raise OverflowError("a date outside Python's years")
    fields = np.empty((len(days), 4), np.uint8)
    fields[:, 0], fields[:, 1] = years >> 8, years & 255
    fields[:, 2] = months.astype(np.int64) % 12 + 1
    fields[:, 3] = (day64 - months.astype("datetime64[D]")).astype(np.int64) + 1
    return fields


def _timestamp_fields(micros: np.ndarray) -> np.ndarray:
    """Per microsecond since the epoch, the ten bytes ``datetime.datetime`` is made from as pickle
    makes it: the day's four (:func:`_date_fields`), hour, minute, second, and the microsecond in three."""
    days = micros // _MICROS_A_DAY  # rounds down: before the epoch, the day before and a positive rest
    rest = micros - days * _MICROS_A_DAY
    fields = np.empty((len(micros), 10), np.uint8)
    fields[:, :4] = _date_fields(days)
    fields[:, 4] = rest // 3_600_000_000
    fields[:, 5] = rest // 60_000_000 % 60
    fields[:, 6] = rest // 1_000_000 % 60
    micro = rest % 1_000_000
    fields[:, 7], fields[:, 8], fields[:, 9] = micro >> 16, (micro >> 8) & 255, micro & 255
    return fields


def _from_fields(column: pa.Array | pa.ChunkedArray, fields: np.ndarray, kind: type, *zone: Any) -> list[Any]:
    """Each row's value made from its packed fields by ``kind(fields[, zone])``, the constructor
    pickle uses (no Python call a value, no argument checked twice: 70 ns a timestamp, where the
    epoch plus a ``timedelta`` took 350); none where the column has none."""
    packed = fields.view(f"V{fields.shape[1]}").ravel().tolist() if len(fields) else []
    values = list(map(kind, packed, repeat(zone[0])) if zone else map(kind, packed))
    if column.null_count:
        for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            values[row] = None
    return values


def _groups_between(metadata: pq.FileMetaData, lo: int, hi: int) -> tuple[list[int], int]:
    """The row groups of a Parquet file that hold its rows ``lo``..``hi``, and the first row of the first."""
    groups, first, row = [], None, 0
    for index in range(metadata.num_row_groups):
        end = row + metadata.row_group(index).num_rows
        if end > lo and row < hi:
            groups.append(index)
            first = row if first is None else first
        row = end
    return groups, first or 0


def _opened(path, *, mapped: bool = False):
    """``path`` open for reading: a local file as Arrow's own file (memory-mapped if ``mapped``),
    read without a Python call per read (a unit's Parquet footer and row groups through the
    object-storage file object cost a third more); any other store through its file object."""
    if path.protocol in ("", "file", "local"):
        local = str(path.path)
        return pa.memory_map(local) if mapped else pa.OSFile(local)
    return path.open("rb")


class PartWriter:
    """Writes rows into part files of at most ``part_rows`` rows: memory stays bounded by one part."""

    def __init__(self, folder, schema: pa.Schema, part_rows: int = PART_ROWS):
        self.folder = folder
        self.schema = schema
        self.part_rows = part_rows
        self._buffer: list[dict[str, Any]] = []
        self.parts: list[str] = []
        self.rows_per_part: list[int] = []  # in the order of parts
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        name = f"part-{len(self.parts):05d}.parquet"
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / name).open("wb") as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        self.parts.append(name)
        self.rows_per_part.append(len(self._buffer))
        self.rows += len(self._buffer)
        self._buffer = []

    def close(self) -> list[str]:
        self.flush()
        return self.parts


class Snapshot:
    """One extraction's staged tables."""

    def __init__(self, root, snapshot_id: str):
        self.root = as_path(root)
        self.id = safe_name(snapshot_id)
        self.path = self.root / self.id

    def __repr__(self) -> str:
        return f"Snapshot({self.path})"

    # -- manifest -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / MANIFEST).exists()

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no staged extraction at {self.path}: run the extract step first"
            ) from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))

    # -- what the load derives from the snapshot once ------------------------------------------
    # Some things a load task needs are worked out from a whole staged object and are the same for
    # every task of every run that loads this snapshot (the first holder of each unique value; the
    # columns of a related object, decoded). The first task to need one keeps it in ``_derived/``
    # and the others read it. ``name`` must say everything the value depends on beyond the snapshot
    # (a mapping's hash, the columns read); the snapshot's own contents are in every file's name
    # (:meth:`_derived_path`), so a folder staged again holds different files.

    def derived(self, name: str, make: Callable[[], Any]) -> Any:
        """The JSON value kept as ``name``; ``make()`` the first time (and kept)."""
        path = self._derived_path(name, ".json")
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            pass
        value = make()
        self._keep(path, lambda handle: handle.write(json.dumps(value, sort_keys=True).encode()))
        return value

    def derived_table(self, name: str, make: Callable[[], pa.Table]) -> pa.Table:
        """The Arrow table kept as ``name``; ``make()`` the first time (and kept).

        Kept as an uncompressed Arrow file, which a local snapshot memory-maps: the invoices, quotes
        and form answers a job unit of a 1,000,000-record tenant reads cost 96 ms of Parquet decoding
        in every unit, and 1.4 ms mapped.
        """
        path = self._derived_path(name, ".arrow")
        try:
            with _opened(path, mapped=True) as handle:
                return pa.ipc.open_file(handle).read_all()
        except (FileNotFoundError, pa.ArrowInvalid):
            pass
        table = make()

        def write(handle) -> None:
            with pa.ipc.new_file(handle, table.schema) as writer:
                writer.write_table(table)

        self._keep(path, write)
        return table

    def _derived_path(self, name: str, suffix: str):
        manifest = (self.path / MANIFEST).read_bytes() if (self.path / MANIFEST).exists() else b""
        contents = hashlib.blake2b(manifest, digest_size=6).hexdigest()
        return self.path / DERIVED / f"{safe_name(name)}-{contents}{suffix}"

    @staticmethod
    def _keep(path, write: Callable[[Any], Any]) -> None:
        """``write(handle)`` into ``path``, whole or not at all: written beside it, then moved over it,
        so a task reading it never sees half a file, and two tasks keeping the same value at once
        leave one whole copy."""
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.parent / f".{path.name}.{uuid.uuid4().hex}"
        with aside.open("wb") as handle:
            write(handle)
        aside.replace(path)

    def objects(self) -> list[str]:
        return [name for name, info in self.manifest()["objects"].items() if info.get("staged", 0) >= 0]

    # -- writing ------------------------------------------------------------------------------
    def object_writer(self, schema: ObjectSchema, part_rows: int = PART_ROWS) -> PartWriter:
        return PartWriter(self.path / schema.name, schema.arrow_schema, part_rows)

    def rejected_writer(self) -> PartWriter:
        return PartWriter(self.path / REJECTED, REJECTED_SCHEMA)

    def file_path(self, attachment_id: str, file_name: str):
        return self.path / FILES / safe_name(attachment_id) / safe_name(file_name)

    # -- reading ------------------------------------------------------------------------------
    def _parts(self, folder_name: str) -> list:
        folder = self.path / folder_name
        if not folder.exists():
            return []
        return sorted((p for p in folder.iterdir() if p.name.endswith(".parquet")), key=lambda p: p.name)

    def iter_batches(
        self, object_name: str, columns: Iterable[str] | None = None, batch_size: int = 10_000
    ) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns is not None else None
        for part in self._parts(object_name):
            with _opened(part) as handle:
                parquet = pq.ParquetFile(handle)
                yield from parquet.iter_batches(batch_size=batch_size, columns=cols)

    def iter_records(
        self, object_name: str, columns: Iterable[str] | None = None, batch_size: int = 10_000
    ) -> StagedRecords:
        return StagedRecords(rows_of(batch) for batch in self.iter_batches(object_name, columns, batch_size))

    def read_table(self, object_name: str, columns: Iterable[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(object_name, columns))
        if not batches:
            schema = get_object(object_name).arrow_schema if object_name != REJECTED else REJECTED_SCHEMA
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.Table.from_batches(batches)

    def iter_range(self, object_name: str, start: int, stop: int,
                   columns: Iterable[str] | None = None) -> StagedRecords:
        """Rows ``start``..``stop`` of an object (``columns`` of them, or all): the unit a mapped load
        task works on.

        Only the row groups the range touches are read (see :data:`ROW_GROUP_ROWS`). A unit of a
        large tenant is 2,000 rows of a 50,000-row part: reading the part whole and slicing it made
        every unit decode twenty-five times the rows it used, a cost that grew with the tenant. A
        part written as one group (a snapshot staged before row groups) is read whole, as before.
        """
        return StagedRecords(self._range_blocks(object_name, start, stop, columns))

    def _counted_parts(self, object_name: str) -> list[tuple[Any, int | None]]:
        """The object's parts in order, each with its rows when the manifest says (None: not known).

        A snapshot's manifest lists each object's parts and their rows (snapshots staged before
        ``part_rows`` was kept list the parts only): a load unit reads the parts its range falls in
        and no other, where it opened every earlier part to learn its length (a third of the parts
        of a large object's units, opened for their footer alone).
        """
        try:
            info = self.manifest()["objects"].get(object_name) or {}
        except FileNotFoundError:  # parts written without an extraction (tests, tools)
            info = {}
        names, rows = info.get("parts"), info.get("part_rows")
        if names is not None and rows is not None and len(names) == len(rows):
            return [(self.path / object_name / name, count) for name, count in zip(names, rows)]
        return [(part, None) for part in self._parts(object_name)]

    def _range_blocks(self, object_name: str, start: int, stop: int,
                      columns: Iterable[str] | None) -> Iterator[StagedRows]:
        cols = list(columns) if columns is not None else None
        offset = 0
        for part, counted in self._counted_parts(object_name):
            if counted is not None and offset + counted <= start:
                offset += counted
                continue
            if offset >= stop:
                return
            with _opened(part) as handle:
                parquet = pq.ParquetFile(handle)
                rows = parquet.metadata.num_rows
                if offset + rows <= start:
                    offset += rows
                    continue
                lo, hi = max(0, start - offset), min(rows, stop - offset)
                groups, first = _groups_between(parquet.metadata, lo, hi)
                table = parquet.read_row_groups(groups, columns=cols)
                # Row dicts a batch at a time: a whole part as dicts is ten times its Arrow size.
                for batch in table.slice(lo - first, hi - lo).to_batches(max_chunksize=RANGE_BATCH_ROWS):
                    yield rows_of(batch)
                offset += rows

    def iter_rejected(self) -> Iterator[dict[str, Any]]:
        yield from self.iter_records(REJECTED)

    def count(self, object_name: str) -> int:
        info = self.manifest()["objects"].get(object_name)
        return int(info["staged"]) if info else 0
