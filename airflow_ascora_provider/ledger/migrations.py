"""A tiny versioned migration runner for the ledger.

Why not an alembic script directory: the ledger ships inside a provider wheel and is migrated by
whichever Airflow task touches it first, on whatever worker. There is no operator to run
``alembic upgrade``, no alembic.ini to find, and several tasks of the same DAG run may start at
once. So the steps are plain functions in an ordered tuple, the applied version lives in a
single-row table, and every step runs in its own transaction under a lock:

* PostgreSQL: ``pg_advisory_xact_lock`` (released automatically at commit/rollback, so a killed
  task can never leave the ledger locked). DDL is transactional there, so a failed step leaves
  nothing behind.
* SQLite: the transaction is opened with ``BEGIN IMMEDIATE`` (the caller's ``begin_write``), which
  takes the database write lock up front; concurrent migrators wait on ``busy_timeout``.

After taking the lock the version is read *again*, so a task that lost the race skips the step
instead of re-applying it. Alembic's ``Operations`` is used only for the DDL it does portably
(``ADD COLUMN``), bound to the caller's connection.

Adding a step: bump ``schema.LATEST_VERSION``, make ``schema.build_metadata`` produce the new
shape for the new version only, append a :class:`Step` here. Never edit a released step.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from airflow_ascora_provider.ledger import schema as s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    apply: Callable[[Connection, str | None], None]


def _v1_initial(conn: Connection, schema: str | None) -> None:
    # build_metadata(1), not the latest metadata: version 1 must stay exactly version 1.
    s.build_metadata(1).create_all(conn)


def _v2_reports_summary(conn: Connection, schema: str | None) -> None:
    ops = Operations(MigrationContext.configure(conn))
    ops.add_column("ascora_reports", s.reports_summary_column(), schema=schema)
    reports_v2 = s.build_metadata(2).tables["ascora_reports"]
    for index in reports_v2.indexes:
        if index.name == "ix_ascora_reports_run":
            index.create(conn, checkfirst=True)


def _v3_write_intents(conn: Connection, schema: str | None) -> None:
    # The table (with its unique constraint and index) exactly as build_metadata(3) has it.
    s.build_metadata(3).tables["ascora_write_intents"].create(conn)


STEPS: tuple[Step, ...] = (
    Step(1, "runs, crosswalk, audit_log, quarantine, watermarks, mapping_approvals, reports", _v1_initial),
    Step(2, "reports.summary column and reports(run_id) index", _v2_reports_summary),
    Step(3, "write_intents table (crash-safe before-images of in-flight writes)", _v3_write_intents),
)

assert [st.version for st in STEPS] == list(range(1, s.LATEST_VERSION + 1)), "STEPS out of order"


def advisory_lock_key(schema: str | None) -> int:
    """Stable per-schema lock id: ledgers in different schemas need not wait for each other."""
    return zlib.crc32(f"ascora_ledger:{schema or 'public'}".encode())


def current_version(conn: Connection, schema: str | None) -> int:
    """The version in force, 0 for an empty database (no version table yet)."""
    if not inspect(conn).has_table(s.VERSION_TABLE, schema=schema):
        return 0
    row = conn.execute(select(s.version_table.c.version).where(s.version_table.c.id == 1)).first()
    return int(row[0]) if row else 0


def _set_version(conn: Connection, version: int) -> None:
    vt = s.version_table
    values = {"version": version, "updated_at": s.utcnow()}
    if conn.execute(vt.update().where(vt.c.id == 1).values(**values)).rowcount == 0:
        conn.execute(vt.insert().values(id=1, **values))


def _lock(conn: Connection, schema: str | None) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_lock_key(schema)})
        if schema:
            # Under the lock: concurrent CREATE SCHEMA IF NOT EXISTS can still race to a
            # unique violation in PostgreSQL.
            quoted = conn.dialect.identifier_preparer.quote(schema)
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))


def upgrade(
    begin_read: Callable[[], AbstractContextManager[Connection]],
    begin_write: Callable[[], AbstractContextManager[Connection]],
    schema: str | None = None,
    target: int | None = None,
) -> int:
    """Apply pending steps up to ``target`` (default: latest); return the version now in force.

    ``begin_write`` must return a context manager yielding a connection inside a transaction
    that commits on success and that, on SQLite, already holds the write lock. ``begin_read`` is
    used for the lock-free "already current?" check that nearly every call ends at, so a hundred
    mapped tasks starting together do not queue behind one another.
    """
    target = s.LATEST_VERSION if target is None else target
    if not 0 <= target <= s.LATEST_VERSION:
        raise ValueError(f"target version must be between 0 and {s.LATEST_VERSION}, got {target}")

    with begin_read() as conn:
        version = current_version(conn, schema)
    if version > s.LATEST_VERSION:
        log.warning(
            "Ledger is at version %s, newer than this code knows (%s); leaving it alone.",
            version,
            s.LATEST_VERSION,
        )
        return version

    for step in STEPS:
        if step.version > target or step.version <= version:
            continue
        with begin_write() as conn:
            _lock(conn, schema)
            s.version_table.create(conn, checkfirst=True)
            version = current_version(conn, schema)
            if version >= step.version:
                continue  # another task applied it while we waited for the lock
            log.info("Migrating ascora ledger to version %s: %s", step.version, step.description)
            step.apply(conn, schema)
            _set_version(conn, step.version)
            version = step.version
    return version
