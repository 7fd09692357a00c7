"""The migration ledger: the durable memory every task of a migration run reads and writes.

Airflow retries tasks and moves them between workers, so nothing about "what has already been
written to the CRM" may live in task memory or XCom. Before writing, the engine asks the
crosswalk whether a source record already has a destination record (create vs update, no
duplicates after a retry); after writing, it records the write here. Rollback walks the audit log
backwards and uses the before-images to undo a run.

Design choices worth knowing:

* Crosswalk upserts and audit rows for one batch commit in ONE transaction. If they could diverge,
  a crash between them would either lose the record of a create (next retry creates a duplicate)
  or leave an audit row rollback would act on for a write that is not in the crosswalk.
* Write intents close the gap between "written to the CRM" and "recorded here". Before a batch
  the engine saves one intent per record (with the before-image it just read);
  ``record_writes`` deletes the intents of the keys it records in the same transaction. After a
  crash in between, the surviving intents say which writes may have happened, and hold the true
  before-images a retry can no longer read (the CRM may already have the new values). Saving an
  intent for a key that already has one keeps the old row, because it holds the original image.
* Validation happens before the transaction is opened, so a bad batch writes nothing.
* Batches are collapsed to one net action per crosswalk key before hitting the database:
  PostgreSQL refuses an ``INSERT .. ON CONFLICT DO UPDATE`` that touches the same row twice, and
  the rows are sorted so concurrent tasks lock keys in the same order (no deadlocks).
* Iterators page with keyset pagination in short read transactions instead of holding one cursor
  open: a consumer may spend hours making API calls per page, and a long-open transaction would
  pin PostgreSQL's vacuum horizon / SQLite's WAL checkpoint for the whole time.
* SQLite gets WAL (readers never block the writer), a 30 s busy timeout (tasks on the same
  worker wait instead of failing with "database is locked") and ``BEGIN IMMEDIATE`` for writes
  (a deferred transaction that upgrades to a write can fail with SQLITE_BUSY regardless of the
  busy timeout).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, any_, bindparam, create_engine, event, func, literal_column, select, tuple_
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine

from airflow_ascora_provider.ledger import migrations
from airflow_ascora_provider.ledger import schema as s

log = logging.getLogger(__name__)

#: Max bound values in one ``IN (...)``: far below SQLite's and PostgreSQL's limits and small
#: enough that query plans stay index lookups.
IN_CHUNK = 500
PAGE_SIZE = 1000
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WAL_SWITCH_ATTEMPTS = 10
_SQLITE_BEGIN_OPTION = "ascora_sqlite_begin"


@dataclass(frozen=True)
class CrosswalkEntry:
    destination: str
    source_object: str
    source_id: str
    target_object: str
    dest_id: str
    payload_hash: str | None
    run_id: str
    created_run_id: str


@dataclass(frozen=True)
class Write:
    """One destination write the engine has just done."""

    source_object: str
    source_id: str
    target_object: str
    dest_id: str
    op: str  # 'create' | 'update' | 'delete' | 'restore'
    payload_hash: str | None = None
    before_image: dict | None = None


@dataclass(frozen=True)
class Intent:
    """One destination write the engine is about to do (see :meth:`Ledger.save_intents`)."""

    source_object: str
    source_id: str
    target_object: str
    op: str  # 'create' | 'update' | 'delete' | 'restore'
    before_image: dict | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    source_object: str
    source_id: str
    reason: str
    field: str | None = None
    value: object = None
    stage: str = "load"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    run_id: str
    destination: str
    source_object: str
    source_id: str
    target_object: str
    dest_id: str
    op: str
    payload_hash: str | None
    before_image: dict | None
    at: datetime


# --------------------------------------------------------------------------- SQLite engine setup


def _sqlite_on_begin(conn: Connection) -> None:
    """Open every SQLite transaction ourselves.

    pysqlite's own implicit transactions start only before DML, so DDL (migrations) would run in
    autocommit and a failed step would leave half a schema behind. Driver autocommit plus an
    explicit BEGIN fixes that (the recipe from SQLAlchemy's SQLite docs). Pragmas are applied here
    rather than in a ``connect`` listener so connections pooled before the Ledger adopted the
    engine get them too.
    """
    proxied = conn.connection
    dbapi_conn = proxied.dbapi_connection
    if not proxied.info.get("ascora_ledger_ready"):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cur)
        finally:
            cur.close()
        proxied.info["ascora_ledger_ready"] = True
    mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, tried again while another connection holds the file.

    On a new file, connections that open it together (tasks migrating the ledger at once) race to
    switch it to WAL, and SQLite answers the losers "database is locked" at once rather than through
    the busy timeout. Once one has switched it, the others' switch is a no-op that succeeds.
    """
    for attempt in range(_WAL_SWITCH_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_SWITCH_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _adopt_engine(engine: Engine) -> None:
    if engine.dialect.name == "sqlite" and not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


def _chunks(seq: Sequence, n: int = IN_CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _among(column: Any, dialect: str) -> Any:
    """``column`` is one of the ids bound as ``b_ids``: a single parameter, however many ids.

    An expanding ``IN`` is rendered anew for every list length and binds one parameter an id, in
    chunks under the drivers' limits: for the crosswalk reads a transform makes per chunk of 2,000
    records that was 40% of the read's time (2.1 against 1.3 µs an id on SQLite). PostgreSQL takes the ids as
    one array (``= ANY``), SQLite as one JSON text (``json_each``); either way the statement is
    compiled once and the database probes its index once an id, as with ``IN``.
    See :func:`_bound_ids` for the value to bind.
    """
    ids = bindparam("b_ids")
    if dialect == "postgresql":
        return column == any_(sa_cast(ids, ARRAY(String)))
    return column.in_(select(literal_column("value")).select_from(func.json_each(ids)))


def _bound_ids(ids: Sequence[str], dialect: str) -> Any:
    """``ids`` as :func:`_among` binds them."""
    return list(ids) if dialect == "postgresql" else json.dumps(list(ids), ensure_ascii=False)


def _require(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _stringify(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[: s.QUARANTINE_VALUE_MAX]


def _validate_keyed(kind: str, items: Sequence[Any], *, dest_id: bool) -> None:
    """Shared checks for :class:`Write` / :class:`Intent` batches; errors name the bad item."""
    for i, item in enumerate(items):
        if item.op not in s.WRITE_OPS:
            raise ValueError(f"{kind}[{i}].op must be one of {sorted(s.WRITE_OPS)}, got {item.op!r}")
        fields = {
            "source_object": item.source_object,
            "source_id": item.source_id,
            "target_object": item.target_object,
        }
        if dest_id:
            fields["dest_id"] = item.dest_id
        try:
            _require(**fields)
        except ValueError as exc:
            raise ValueError(f"{kind}[{i}]: {exc}") from None
        if item.before_image is not None and not isinstance(item.before_image, dict):
            raise ValueError(f"{kind}[{i}].before_image must be a dict or None")


def _cw_entry(row: Any) -> CrosswalkEntry:
    return CrosswalkEntry(
        destination=row.destination,
        source_object=row.source_object,
        source_id=row.source_id,
        target_object=row.target_object,
        dest_id=row.dest_id,
        payload_hash=row.payload_hash,
        run_id=row.run_id,
        created_run_id=row.created_run_id,
    )


def _audit_entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        run_id=row.run_id,
        destination=row.destination,
        source_object=row.source_object,
        source_id=row.source_id,
        target_object=row.target_object,
        dest_id=row.dest_id,
        op=row.op,
        payload_hash=row.payload_hash,
        before_image=row.before_image,
        at=row.at,
    )


# Statements run once per batch, built once: an expanding IN keeps one cached compiled form each.
_INTENTS_DELETE = s.write_intents.delete().where(
    s.write_intents.c.destination == bindparam("b_destination"),
    s.write_intents.c.source_object == bindparam("b_source_object"),
    s.write_intents.c.target_object == bindparam("b_target_object"),
    s.write_intents.c.source_id.in_(bindparam("b_ids", expanding=True)),
)
_QUARANTINE_RESOLVE = (
    s.quarantine.update()
    .where(
        s.quarantine.c.destination == bindparam("b_destination"),
        s.quarantine.c.source_object == bindparam("b_source_object"),
        s.quarantine.c.source_id.in_(bindparam("b_ids", expanding=True)),
        s.quarantine.c.resolved_run_id.is_(None),
    )
    .values(resolved_run_id=bindparam("b_run_id"))
)


def _delete_intents(conn: Connection, destination: str, keys: Iterable[tuple[str, str, str]]) -> int:
    """Delete the intents of ``keys`` on ``conn`` (inside the caller's transaction).

    Grouped by (source_object, target_object) so each statement is one index range with a chunked
    ``IN`` and an exact rowcount (an executemany's rowcount is not reliable on every driver).
    """
    by_pair: dict[tuple[str, str], list[str]] = {}
    for so, sid, to in sorted({(str(so), str(sid), str(to)) for so, sid, to in keys}):
        by_pair.setdefault((so, to), []).append(sid)
    deleted = 0
    for (so, to), ids in sorted(by_pair.items()):
        for chunk in _chunks(ids):
            result = conn.execute(_INTENTS_DELETE, {"b_destination": destination, "b_source_object": so,
                                                    "b_target_object": to, "b_ids": list(chunk)})
            deleted += result.rowcount
    return deleted


def _resolve_quarantine(conn: Connection, run_id: str, destination: str, source_object: str,
                        ids: Sequence[str]) -> int:
    """Mark the open quarantine rows of ``ids`` as fixed by ``run_id`` (inside the caller's transaction)."""
    updated = 0
    for chunk in _chunks(ids):
        result = conn.execute(_QUARANTINE_RESOLVE, {"b_destination": destination, "b_source_object": source_object,
                                                    "b_ids": list(chunk), "b_run_id": run_id})
        updated += result.rowcount
    return updated


class Ledger:
    """Repository over the ledger tables. Cheap to construct; share the Engine, not the Ledger.

    :param engine_or_url: an SQLAlchemy :class:`Engine` (reused as is, e.g. the hook's cached one)
        or a URL, for which a new engine is created.
    :param schema: PostgreSQL schema holding the tables (created by :meth:`migrate` if missing).
        Not supported on SQLite, where a schema would mean an ATTACHed database.
    """

    def __init__(self, engine_or_url: Engine | str | URL, *, schema: str | None = None):
        if isinstance(engine_or_url, Engine):
            engine = engine_or_url
        elif isinstance(engine_or_url, str | URL):
            engine = create_engine(engine_or_url, pool_pre_ping=True)
        else:
            raise TypeError(f"expected an Engine or a URL, got {type(engine_or_url).__name__}")
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"the ledger supports sqlite and postgresql, not {engine.dialect.name}")
        if schema and engine.dialect.name != "postgresql":
            raise ValueError("schema= is only supported on PostgreSQL")
        _adopt_engine(engine)
        self.schema = schema or None
        self._base_engine = engine
        self._engine = engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        self._insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        self._build_statements()

    def __repr__(self) -> str:
        return f"Ledger({self._base_engine.url!r}, schema={self.schema!r})"

    @property
    def dialect(self) -> str:
        return self._base_engine.dialect.name

    @property
    def engine(self) -> Engine:
        """The engine as the ledger uses it (schema-translated on PostgreSQL)."""
        return self._engine

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    def _build_statements(self) -> None:
        cw = s.crosswalk
        ins = self._insert(cw)
        self._cw_upsert = ins.on_conflict_do_update(
            index_elements=[cw.c.destination, cw.c.source_object, cw.c.source_id, cw.c.target_object],
            set_={
                "dest_id": ins.excluded.dest_id,
                "payload_hash": ins.excluded.payload_hash,
                "run_id": ins.excluded.run_id,
                "updated_at": ins.excluded.updated_at,
            },  # created_run_id deliberately untouched: it records who created the record
        )
        wi = s.write_intents
        self._intent_insert = self._insert(wi).on_conflict_do_nothing(
            index_elements=[wi.c.destination, wi.c.source_object, wi.c.source_id, wi.c.target_object]
        )  # never overwrite: the first intent holds the true before-image
        # Per-batch reads, built once: the ids are one parameter (see _among), so each statement is
        # compiled once, whatever the number of ids.
        self._cw_by_ids = select(cw).where(
            cw.c.destination == bindparam("b_destination"),
            cw.c.source_object == bindparam("b_source_object"),
            _among(cw.c.source_id, self.dialect),
        )
        self._cw_by_ids_target = self._cw_by_ids.where(cw.c.target_object == bindparam("b_target_object"))
        self._cw_dest_ids = select(cw.c.source_id, cw.c.dest_id).where(
            cw.c.destination == bindparam("b_destination"),
            cw.c.source_object == bindparam("b_source_object"),
            cw.c.target_object == bindparam("b_target_object"),
            _among(cw.c.source_id, self.dialect),
        )
        self._cw_dest_ids_any_target = select(cw.c.source_id, cw.c.target_object, cw.c.dest_id).where(
            cw.c.destination == bindparam("b_destination"),
            cw.c.source_object == bindparam("b_source_object"),
            _among(cw.c.source_id, self.dialect),
        )
        self._intents_by_ids = select(
            wi.c.source_object, wi.c.source_id, wi.c.target_object, wi.c.op, wi.c.before_image
        ).where(
            wi.c.destination == bindparam("b_destination"),
            wi.c.source_object == bindparam("b_source_object"),
            wi.c.target_object == bindparam("b_target_object"),
            _among(wi.c.source_id, self.dialect),
        )
        self._cw_redigest = cw.update().where(
            cw.c.destination == bindparam("b_destination"),
            cw.c.source_object == bindparam("b_source_object"),
            cw.c.source_id == bindparam("b_source_id"),
            cw.c.target_object == bindparam("b_target_object"),
            cw.c.payload_hash == bindparam("b_held"),
        ).values(payload_hash=bindparam("b_digest"))
        self._cw_delete = cw.delete().where(
            cw.c.destination == bindparam("b_destination"),
            cw.c.source_object == bindparam("b_source_object"),
            cw.c.source_id == bindparam("b_source_id"),
            cw.c.target_object == bindparam("b_target_object"),
        )

    # ------------------------------------------------------------------ schema

    def migrate(self) -> int:
        """Bring the ledger to the latest version; safe to call from every task. Returns it."""
        return migrations.upgrade(self._read, self._write, self.schema)

    def version(self) -> int:
        with self._read() as conn:
            return migrations.current_version(conn, self.schema)

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        run_id: str,
        *,
        destination: str,
        kind: str,
        dag_id: str | None = None,
        mapping_hash: str | None = None,
        params: dict | None = None,
    ) -> dict:
        """Register a run, or return the existing one unchanged (a retried task calls this again)."""
        _require(run_id=run_id, destination=destination)
        if kind not in s.RUN_KINDS:
            raise ValueError(f"kind must be one of {sorted(s.RUN_KINDS)}, got {kind!r}")
        stmt = self._insert(s.runs).values(
            run_id=run_id,
            destination=destination,
            kind=kind,
            dag_id=dag_id,
            mapping_hash=mapping_hash,
            params=params if params is not None else {},
            status="running",
            started_at=s.utcnow(),
        )
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[s.runs.c.run_id]))
            row = conn.execute(select(s.runs).where(s.runs.c.run_id == run_id)).mappings().one()
        return dict(row)

    def finish_run(self, run_id: str, *, status: str, summary: dict | None = None) -> None:
        """Set the final status. ``summary=None`` keeps any summary already stored; status
        ``'running'`` re-opens a run (clears ``finished_at``)."""
        if status not in s.RUN_STATUSES:
            raise ValueError(f"status must be one of {sorted(s.RUN_STATUSES)}, got {status!r}")
        values: dict[str, Any] = {
            "status": status,
            "finished_at": None if status == "running" else s.utcnow(),
        }
        if summary is not None:
            values["summary"] = summary
        with self._write() as conn:
            result = conn.execute(s.runs.update().where(s.runs.c.run_id == run_id).values(**values))
            if result.rowcount == 0:
                raise KeyError(f"unknown run {run_id!r}")

    def get_run(self, run_id: str) -> dict | None:
        with self._read() as conn:
            row = conn.execute(select(s.runs).where(s.runs.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    def list_runs(self, destination: str | None = None, kind: str | None = None) -> list[dict]:
        """Newest first."""
        q = select(s.runs).order_by(s.runs.c.started_at.desc(), s.runs.c.run_id.desc())
        if destination is not None:
            q = q.where(s.runs.c.destination == destination)
        if kind is not None:
            q = q.where(s.runs.c.kind == kind)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ------------------------------------------------------------------ crosswalk + audit

    def record_writes(self, run_id: str, destination: str, writes: Iterable[Write], *,
                      resolve_quarantine: bool = False) -> None:
        """Record destination writes: crosswalk and audit log change together or not at all.

        create/update/restore upsert the crosswalk row (``created_run_id`` stays that of the run
        that first created it); delete removes it; every write appends one audit row, in order.
        A delete followed by a re-create of the same key within one batch yields a fresh row
        whose ``created_run_id`` is this run. The write intents of every key in the batch are
        deleted in the same transaction (whichever run saved them): the write is now on record.

        ``resolve_quarantine`` also marks open quarantine rows of the created/updated/restored records
        as fixed by this run, in the same transaction (one commit per batch instead of two: on SQLite
        every commit is an fsync).
        """
        writes = list(writes)
        _require(run_id=run_id, destination=destination)
        _validate_keyed("writes", writes, dest_id=True)
        if not writes:
            return

        now = s.utcnow()
        # Net effect per key, in batch order: 'upsert', 'delete', or 'replace' (delete, then insert).
        net: dict[tuple[str, str, str], tuple[str, Write]] = {}
        for w in writes:
            key = (w.source_object, w.source_id, w.target_object)
            if w.op == "delete":
                net[key] = ("delete", w)
            else:
                prev = net.get(key)
                net[key] = ("replace" if prev and prev[0] != "upsert" else "upsert", w)
        keys = sorted(net)
        delete_params = [
            {
                "b_destination": destination,
                "b_source_object": k[0],
                "b_source_id": k[1],
                "b_target_object": k[2],
            }
            for k in keys
            if net[k][0] != "upsert"
        ]
        upsert_rows = [
            {
                "destination": destination,
                "source_object": k[0],
                "source_id": k[1],
                "target_object": k[2],
                "dest_id": net[k][1].dest_id,
                "payload_hash": net[k][1].payload_hash,
                "run_id": run_id,
                "created_run_id": run_id,
                "updated_at": now,
            }
            for k in keys
            if net[k][0] != "delete"
        ]
        audit_rows = [
            {
                "run_id": run_id,
                "destination": destination,
                "source_object": w.source_object,
                "source_id": w.source_id,
                "target_object": w.target_object,
                "dest_id": w.dest_id,
                "op": w.op,
                "payload_hash": w.payload_hash,
                "before_image": w.before_image,
                "at": now,
            }
            for w in writes
        ]
        with self._write() as conn:
            _delete_intents(conn, destination, keys)
            if delete_params:
                conn.execute(self._cw_delete, delete_params)
            if upsert_rows:
                conn.execute(self._cw_upsert, upsert_rows)
            conn.execute(s.audit_log.insert(), audit_rows)
            if resolve_quarantine:
                fixed: dict[str, list[str]] = {}
                for w in writes:
                    if w.op != "delete":
                        fixed.setdefault(w.source_object, []).append(w.source_id)
                for source_object, ids in sorted(fixed.items()):
                    _resolve_quarantine(conn, run_id, destination, source_object, list(dict.fromkeys(ids)))

    def crosswalk_redigest(self, destination: str, source_object: str, target_object: str,
                           digests: Iterable[tuple[str, str, str]]) -> int:
        """Give entries a new digest of the same payload, ``(source_id, digest held, new digest)`` each:
        what a load does when it finds an entry whose digest an earlier release made, for a payload
        that has not changed. Nothing was written, so no audit row; an entry whose digest is no longer
        the one held (written meanwhile) is left as it is. Returns the entries changed."""
        params = [{"b_destination": destination, "b_source_object": source_object, "b_source_id": source_id,
                   "b_target_object": target_object, "b_held": held, "b_digest": digest}
                  for source_id, held, digest in digests]
        if not params:
            return 0
        with self._write() as conn:
            return conn.execute(self._cw_redigest, params).rowcount

    def _rows_for_ids(self, query, destination: str, source_object: str, target_object: str | None,
                      source_ids: Iterable[str], *, raw: bool = False) -> list[Any]:
        """Rows of ``query`` for many source ids, deduplicated and bound as one parameter (see
        :func:`_among`); what every read-many method below shares. ``raw``: the driver's own tuples,
        no Row built per entry (for plain text columns)."""
        ids = list(dict.fromkeys(map(str, source_ids)))
        if not ids:
            return []
        params = {"b_destination": destination, "b_source_object": source_object,
                  "b_target_object": target_object, "b_ids": _bound_ids(ids, self.dialect)}
        with self._read() as conn:
            result = conn.execute(query, params)
            if not raw:
                return result.all()
            rows = result.cursor.fetchall()
            result.close()
            return rows

    def crosswalk_get_many(
        self,
        destination: str,
        source_object: str,
        source_ids: Iterable[str],
        target_object: str | None = None,
    ) -> dict[tuple[str, str], CrosswalkEntry]:
        """Entries for many source ids at once, keyed ``(source_id, target_object)``; ids with no
        entry are simply absent."""
        q = self._cw_by_ids if target_object is None else self._cw_by_ids_target
        return {(row.source_id, row.target_object): _cw_entry(row)
                for row in self._rows_for_ids(q, destination, source_object, target_object, source_ids)}

    def crosswalk_dest_ids(
        self, destination: str, source_object: str, source_ids: Iterable[str], target_object: str
    ) -> dict[str, str]:
        """Source id → destination id for many source ids of one target object; ids with no entry are
        absent.

        What a transform resolves a parent by: the two columns alone, not whole entries, whose
        timestamps and hashes made the query four times as slow to read and build.
        """
        return dict(self._rows_for_ids(self._cw_dest_ids, destination, source_object, target_object, source_ids,
                                       raw=True))

    def crosswalk_dest_ids_by_target(
        self, destination: str, source_object: str, source_ids: Iterable[str], target_objects: Iterable[str]
    ) -> dict[str, dict[str, str]]:
        """Per target object, source id → destination id, for many source ids of one source object read
        in one go: a customer is looked up as a company and as a person, and one search of the key
        per id finds both (the key's order puts an id's targets together), where a query per target
        searched the key once per id and target."""
        wanted = {target: {} for target in target_objects}
        for source_id, target, dest_id in self._rows_for_ids(self._cw_dest_ids_any_target, destination,
                                                             source_object, None, source_ids, raw=True):
            found = wanted.get(target)
            if found is not None:
                found[source_id] = dest_id
        return wanted

    def crosswalk_lookup(
        self, destination: str, source_object: str, source_id: str, target_object: str | None = None
    ) -> CrosswalkEntry | None:
        """One entry. Without ``target_object`` and several matches (a customer that was once a
        company and is now a person), the most recently written one wins: it reflects the
        mapping in force."""
        cw = s.crosswalk
        q = select(cw).where(
            cw.c.destination == destination,
            cw.c.source_object == source_object,
            cw.c.source_id == str(source_id),
        )
        if target_object is not None:
            q = q.where(cw.c.target_object == target_object)
        q = q.order_by(cw.c.updated_at.desc(), cw.c.target_object).limit(1)
        with self._read() as conn:
            row = conn.execute(q).first()
        return _cw_entry(row) if row else None

    def iter_crosswalk(
        self,
        destination: str,
        source_object: str | None = None,
        target_object: str | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[CrosswalkEntry]:
        """Stream entries ordered by ``(source_object, source_id, target_object)`` -- i.e. by
        source_id within a source object -- following the primary key, page by page."""
        cw = s.crosswalk
        order = (cw.c.source_object, cw.c.source_id, cw.c.target_object)
        base = select(cw).where(cw.c.destination == destination)
        if source_object is not None:
            base = base.where(cw.c.source_object == source_object)
        if target_object is not None:
            base = base.where(cw.c.target_object == target_object)
        after: tuple | None = None
        while True:
            q = base if after is None else base.where(tuple_(*order) > tuple_(*after))
            with self._read() as conn:
                rows = conn.execute(q.order_by(*order).limit(page_size)).all()
            for row in rows:
                yield _cw_entry(row)
            if len(rows) < page_size:
                return
            last = rows[-1]
            after = (last.source_object, last.source_id, last.target_object)

    def count_crosswalk(
        self, destination: str, source_object: str | None = None, target_object: str | None = None
    ) -> int:
        cw = s.crosswalk
        q = select(func.count()).select_from(cw).where(cw.c.destination == destination)
        if source_object is not None:
            q = q.where(cw.c.source_object == source_object)
        if target_object is not None:
            q = q.where(cw.c.target_object == target_object)
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    def iter_audit(
        self, run_id: str, *, reverse: bool = False, page_size: int = PAGE_SIZE
    ) -> Iterator[AuditEntry]:
        """A run's audit rows in write order (``reverse=True``: newest first, as rollback needs)."""
        al = s.audit_log
        after: int | None = None
        while True:
            q = select(al).where(al.c.run_id == run_id)
            if after is not None:
                q = q.where(al.c.seq < after if reverse else al.c.seq > after)
            q = q.order_by(al.c.seq.desc() if reverse else al.c.seq).limit(page_size)
            with self._read() as conn:
                rows = conn.execute(q).all()
            for row in rows:
                yield _audit_entry(row)
            if len(rows) < page_size:
                return
            after = rows[-1].seq

    def audit_ops_count(self, run_id: str) -> dict[str, int]:
        """``{op: n}`` for the ops the run performed; an absent op means zero."""
        al = s.audit_log
        q = select(al.c.op, func.count()).where(al.c.run_id == run_id).group_by(al.c.op)
        with self._read() as conn:
            return {op: int(n) for op, n in conn.execute(q)}

    # ------------------------------------------------------------------ write intents

    def save_intents(self, run_id: str, destination: str, intents: Iterable[Intent]) -> None:
        """Note writes about to be made, before making them.

        A key ``(source_object, source_id, target_object)`` that already has an intent keeps it
        unchanged -- run, op, before-image and all: it was saved before the first attempt, so its
        before-image is the record as it was before this run touched it, whereas one read on a
        retry may already show this run's own values. The same goes for repeats within
        ``intents`` (the first wins). Intents leave via :meth:`record_writes` or
        :meth:`clear_intents`.
        """
        intents = list(intents)
        _require(run_id=run_id, destination=destination)
        _validate_keyed("intents", intents, dest_id=False)
        first: dict[tuple[str, str, str], Intent] = {}
        for it in intents:
            first.setdefault((it.source_object, it.source_id, it.target_object), it)
        if not first:
            return
        now = s.utcnow()
        rows = [
            {
                "run_id": run_id,
                "destination": destination,
                "source_object": k[0],
                "source_id": k[1],
                "target_object": k[2],
                "op": first[k].op,
                "before_image": first[k].before_image,
                "created_at": now,
            }
            for k in sorted(first)  # same lock order in every task
        ]
        with self._write() as conn:
            conn.execute(self._intent_insert, rows)

    def get_intents(
        self, destination: str, source_object: str, target_object: str, source_ids: Iterable[str]
    ) -> dict[str, Intent]:
        """Open intents for many source ids at once, keyed by ``source_id``; ids without one are
        absent."""
        return {row.source_id: Intent(row.source_object, row.source_id, row.target_object, row.op, row.before_image)
                for row in self._rows_for_ids(self._intents_by_ids, destination, source_object, target_object,
                                              source_ids)}

    def pending_intents(self, destination: str, run_id: str | None = None) -> list[dict]:
        """Intents never recorded as writes (all columns), oldest first: what was in flight when a
        task died. ``run_id`` narrows to the intents that run saved."""
        wi = s.write_intents
        q = select(wi).where(wi.c.destination == destination).order_by(wi.c.id)
        if run_id is not None:
            q = q.where(wi.c.run_id == run_id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def clear_intents(self, destination: str, keys: Iterable[tuple[str, str, str]]) -> int:
        """Drop intents by ``(source_object, source_id, target_object)`` -- e.g. for records the
        destination rejected, so nothing was written. Returns the number of intents deleted."""
        with self._write() as conn:
            return _delete_intents(conn, destination, keys)

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, run_id: str, destination: str, entries: Iterable[QuarantineEntry]) -> None:
        """Park records that could not be migrated, with why. Values are stored as text (repr for
        non-strings) and truncated: the ledger is a diagnostic record, not a data store."""
        _require(run_id=run_id, destination=destination)
        now = s.utcnow()
        rows = [
            {
                "run_id": run_id,
                "destination": destination,
                "source_object": e.source_object,
                "source_id": str(e.source_id),
                "field": e.field,
                "value": _stringify(e.value),
                "reason": str(e.reason),
                "stage": e.stage,
                "at": now,
                "resolved_run_id": None,
            }
            for e in entries
        ]
        if rows:
            with self._write() as conn:
                conn.execute(s.quarantine.insert(), rows)

    def _quarantine_filter(self, q, run_id, destination, source_object, unresolved_only):
        qt = s.quarantine
        if run_id is not None:
            q = q.where(qt.c.run_id == run_id)
        if destination is not None:
            q = q.where(qt.c.destination == destination)
        if source_object is not None:
            q = q.where(qt.c.source_object == source_object)
        if unresolved_only:
            q = q.where(qt.c.resolved_run_id.is_(None))
        return q

    def list_quarantine(
        self,
        *,
        run_id: str | None = None,
        destination: str | None = None,
        source_object: str | None = None,
        unresolved_only: bool = True,
    ) -> list[dict]:
        q = self._quarantine_filter(
            select(s.quarantine), run_id, destination, source_object, unresolved_only
        ).order_by(s.quarantine.c.id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def count_quarantine(
        self,
        *,
        run_id: str | None = None,
        destination: str | None = None,
        source_object: str | None = None,
        unresolved_only: bool = True,
    ) -> dict[str, int]:
        """Quarantined *records* per source object: a record with three bad fields counts once."""
        qt = s.quarantine
        q = select(qt.c.source_object, func.count(qt.c.source_id.distinct())).group_by(qt.c.source_object)
        q = self._quarantine_filter(q, run_id, destination, source_object, unresolved_only)
        with self._read() as conn:
            return {so: int(n) for so, n in conn.execute(q)}

    def resolve_quarantine(
        self, run_id: str, destination: str, source_object: str, source_ids: Iterable[str]
    ) -> int:
        """Mark open quarantine rows of these records as fixed by ``run_id``; returns rows updated."""
        ids = list(dict.fromkeys(map(str, source_ids)))
        with self._write() as conn:
            return _resolve_quarantine(conn, run_id, destination, source_object, ids)

    # ------------------------------------------------------------------ watermarks

    def set_watermark(self, destination: str, key: str, value: str) -> None:
        wm = s.watermarks
        ins = self._insert(wm).values(destination=destination, key=key, value=value, updated_at=s.utcnow())
        stmt = ins.on_conflict_do_update(
            index_elements=[wm.c.destination, wm.c.key],
            set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
        )
        with self._write() as conn:
            conn.execute(stmt)

    def get_watermark(self, destination: str, key: str) -> str | None:
        wm = s.watermarks
        with self._read() as conn:
            return conn.execute(
                select(wm.c.value).where(wm.c.destination == destination, wm.c.key == key)
            ).scalar_one_or_none()

    # ------------------------------------------------------------------ mapping approvals

    def approve_mapping(
        self,
        destination: str,
        *,
        mapping_hash: str,
        mapping_text: str,
        approved_by: str,
        source: str,
        note: str | None = None,
    ) -> int:
        """Append an approval (history is kept; the latest one is in force). Returns its id."""
        _require(destination=destination, mapping_hash=mapping_hash, approved_by=approved_by, source=source)
        with self._write() as conn:
            result = conn.execute(
                s.mapping_approvals.insert().values(
                    destination=destination,
                    mapping_hash=mapping_hash,
                    mapping_text=mapping_text,
                    approved_by=approved_by,
                    approved_at=s.utcnow(),
                    note=note,
                    source=source,
                )
            )
            return int(result.inserted_primary_key[0])

    def approved_mapping(self, destination: str) -> dict | None:
        ma = s.mapping_approvals
        q = (
            select(ma)
            .where(ma.c.destination == destination)
            .order_by(ma.c.approved_at.desc(), ma.c.id.desc())
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    # ------------------------------------------------------------------ reports

    def add_report(self, run_id: str, kind: str, uri: str, summary: dict | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                s.reports.insert().values(
                    run_id=run_id, kind=kind, uri=uri, created_at=s.utcnow(), summary=summary
                )
            )

    def list_reports(self, run_id: str | None = None) -> list[dict]:
        """Oldest first (the order they were produced in)."""
        q = select(s.reports).order_by(s.reports.c.id)
        if run_id is not None:
            q = q.where(s.reports.c.run_id == run_id)
        with self._read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
