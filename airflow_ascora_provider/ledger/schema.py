"""Table definitions of the migration ledger, per schema version.

The tables are built by :func:`build_metadata` for a given version rather than declared once,
because the migration runner must be able to create the database *exactly as it was* at an older
version (version 1 must never silently grow columns added later, or upgrading a real v1 database
would try to add a column a fresh v1 database already has). ``metadata`` / the module-level
tables are the latest shape and are what the repository queries.

Table names carry an ``ascora_`` prefix because the ledger is often pointed at a database that
already holds other things (Airflow's own metadata database, a warehouse); bare names such as
``runs`` or ``reports`` collide too easily.

Tables are declared without a schema. On PostgreSQL the :class:`~.repository.Ledger` maps them
into its schema with ``schema_translate_map``, so one definition serves every schema (tests give
each test its own schema).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

#: The version the newest migration step brings a database to. ``migrations.STEPS`` must end here.
LATEST_VERSION = 3

VERSION_TABLE = "ascora_ledger_version"

RUN_KINDS = frozenset({"extract", "sample", "full", "delta", "rollback"})
RUN_STATUSES = frozenset({"running", "success", "failed", "rolled_back"})
WRITE_OPS = frozenset({"create", "update", "delete", "restore"})

#: ``quarantine.value`` keeps this many characters: enough to see what was wrong, small enough that
#: a run quarantining a million base64 blobs does not bloat the ledger.
QUARANTINE_VALUE_MAX = 2000


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC when it comes back.

    SQLite has no timezone type and returns naive datetimes; PostgreSQL returns them in the
    session time zone. Callers compare ledger timestamps with ``datetime.now(UTC)`` and across
    backends, so normalise both ways here instead of at every call site. Naive input is taken to
    be UTC already (Airflow itself works in UTC).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite stores text; keep it offset-free so lexical order == time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_type() -> JSON:
    """Portable JSON; ``none_as_null`` so a Python ``None`` is SQL NULL, not the JSON text ``null``
    (``WHERE before_image IS NULL`` must find creates)."""
    return JSON(none_as_null=True)


#: Big ids on PostgreSQL (audit_log grows by a million rows per full load and is never pruned);
#: on SQLite only ``INTEGER PRIMARY KEY`` autoincrements, so fall back to Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def reports_summary_column() -> Column:
    """``reports.summary``, added by migration 2. Shared by the table builder and the migration
    step so the two can never disagree about its type."""
    return Column("summary", json_type(), nullable=True)


def write_intents_table(md: MetaData) -> Table:
    """``ascora_write_intents``, added by migration 3.

    One row per record the engine is *about to* write: saved before the destination call, deleted
    by ``record_writes`` in the transaction that records the write. A row that survives therefore
    means "this write may or may not have reached the destination" -- and it carries the
    before-image read before the first attempt, which a retry can no longer read (the destination
    may already hold the new values). Hence one row per key, and the first one is never replaced.
    """
    return Table(
        "ascora_write_intents",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("run_id", String(250), nullable=False),
        Column("destination", String(100), nullable=False),
        Column("source_object", String(100), nullable=False),
        Column("source_id", String(250), nullable=False),
        Column("target_object", String(100), nullable=False),
        Column("op", String(10), nullable=False),
        Column("before_image", json_type(), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        UniqueConstraint(
            "destination",
            "source_object",
            "source_id",
            "target_object",
            name="uq_ascora_write_intents_key",
        ),
        Index("ix_ascora_write_intents_dest_run", "destination", "run_id"),
    )


def build_metadata(version: int = LATEST_VERSION) -> MetaData:
    """Return a fresh :class:`MetaData` holding the ledger tables as they are at ``version``."""
    if not 1 <= version <= LATEST_VERSION:
        raise ValueError(f"unknown ledger schema version {version}")
    md = MetaData()

    Table(
        "ascora_runs",
        md,
        Column("run_id", String(250), primary_key=True),
        Column("destination", String(100), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("dag_id", String(250)),
        Column("mapping_hash", String(128)),
        Column("params", json_type()),
        Column("status", String(20), nullable=False),
        Column("started_at", UTCDateTime(), nullable=False),
        Column("finished_at", UTCDateTime()),
        Column("summary", json_type()),
        Index("ix_ascora_runs_destination_started", "destination", "started_at"),
    )

    # The key includes target_object: one Ascora job becomes an opportunity *and* tasks, and a
    # customer becomes a company or a person, so (source_object, source_id) alone is not unique.
    Table(
        "ascora_crosswalk",
        md,
        Column("destination", String(100), primary_key=True),
        Column("source_object", String(100), primary_key=True),
        Column("source_id", String(250), primary_key=True),
        Column("target_object", String(100), primary_key=True),
        Column("dest_id", String(250), nullable=False),
        Column("payload_hash", String(128)),
        Column("run_id", String(250), nullable=False),
        Column("created_run_id", String(250), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        Index("ix_ascora_crosswalk_dest_src_tgt", "destination", "source_object", "target_object"),
    )

    Table(
        "ascora_audit_log",
        md,
        Column("seq", BigId, primary_key=True, autoincrement=True),
        Column("run_id", String(250), nullable=False),
        Column("destination", String(100), nullable=False),
        Column("source_object", String(100), nullable=False),
        Column("source_id", String(250), nullable=False),
        Column("target_object", String(100), nullable=False),
        Column("dest_id", String(250), nullable=False),
        Column("op", String(10), nullable=False),
        Column("payload_hash", String(128)),
        Column("before_image", json_type()),
        Column("at", UTCDateTime(), nullable=False),
        Index("ix_ascora_audit_log_run_seq", "run_id", "seq"),
    )

    Table(
        "ascora_quarantine",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("run_id", String(250), nullable=False),
        Column("destination", String(100), nullable=False),
        Column("source_object", String(100), nullable=False),
        Column("source_id", String(250), nullable=False),
        Column("field", String(250)),
        Column("value", Text),
        Column("reason", Text, nullable=False),
        Column("stage", String(20), nullable=False),
        Column("at", UTCDateTime(), nullable=False),
        Column("resolved_run_id", String(250)),
        Index("ix_ascora_quarantine_run", "run_id"),
        Index("ix_ascora_quarantine_record", "destination", "source_object", "source_id"),
    )

    Table(
        "ascora_watermarks",
        md,
        Column("destination", String(100), primary_key=True),
        Column("key", String(250), primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
    )

    Table(
        "ascora_mapping_approvals",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("destination", String(100), nullable=False),
        Column("mapping_hash", String(128), nullable=False),
        Column("mapping_text", Text, nullable=False),
        Column("approved_by", String(250), nullable=False),
        Column("approved_at", UTCDateTime(), nullable=False),
        Column("note", Text),
        Column("source", String(50), nullable=False),
        Index("ix_ascora_mapping_approvals_dest", "destination", "approved_at"),
    )

    reports = Table(
        "ascora_reports",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(250), nullable=False),
        Column("kind", String(50), nullable=False),
        Column("uri", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
    )
    if version >= 2:
        reports.append_column(reports_summary_column())
        Index("ix_ascora_reports_run", reports.c.run_id)

    if version >= 3:
        write_intents_table(md)

    return md


def build_version_table(md: MetaData | None = None) -> Table:
    """The single-row table recording which migration is in force. Kept out of
    :func:`build_metadata` because the runner creates it before (and independently of) step 1."""
    return Table(
        VERSION_TABLE,
        md if md is not None else MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("version", Integer, nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        CheckConstraint("id = 1", name="ck_ascora_ledger_version_single_row"),
    )


metadata = build_metadata(LATEST_VERSION)
version_table = build_version_table()

runs = metadata.tables["ascora_runs"]
crosswalk = metadata.tables["ascora_crosswalk"]
audit_log = metadata.tables["ascora_audit_log"]
quarantine = metadata.tables["ascora_quarantine"]
watermarks = metadata.tables["ascora_watermarks"]
mapping_approvals = metadata.tables["ascora_mapping_approvals"]
reports = metadata.tables["ascora_reports"]
write_intents = metadata.tables["ascora_write_intents"]
