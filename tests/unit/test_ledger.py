"""Ledger tests against real databases: a SQLite file and the PostgreSQL server (own schema).

No mocks of SQL: the ledger's guarantees (atomic crosswalk+audit, upsert semantics, migrations)
are properties of the database, so they are tested on the database.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, StatementError

from airflow_ascora_provider.hooks import ledger as hook_mod
from airflow_ascora_provider.hooks.ledger import LedgerHook
from airflow_ascora_provider.ledger import (
    LATEST_VERSION,
    AuditEntry,
    CrosswalkEntry,
    Intent,
    Ledger,
    QuarantineEntry,
    Write,
)
from airflow_ascora_provider.ledger import migrations
from airflow_ascora_provider.ledger import schema as ls

PG_URL = os.environ.get("ASCORA_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
DEST = "twenty"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg_engine():
    engine = sa.create_engine(PG_URL, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:  # pragma: no cover - depends on the environment
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_ledger(request, tmp_path):
    """Factory of (unmigrated) Ledgers that all point at the same fresh, private database."""
    if request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        yield lambda: Ledger(engine)
        engine.dispose()
    else:
        engine = request.getfixturevalue("pg_engine")
        schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
        yield lambda: Ledger(engine, schema=schema)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def ledger(make_ledger) -> Ledger:
    led = make_ledger()
    assert led.migrate() == LATEST_VERSION
    return led


def w(source_id, op="create", dest_id=None, *, so="customer", to="company", h=None, before=None) -> Write:
    return Write(so, str(source_id), to, dest_id or f"d-{source_id}", op, h, before)


def it(source_id, op="update", before=None, *, so="customer", to="company") -> Intent:
    return Intent(so, str(source_id), to, op, before)


def table_names(led: Ledger) -> set[str]:
    with led.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names(schema=led.schema))


def column_names(led: Ledger, table: str) -> set[str]:
    with led.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(table, schema=led.schema)}


# --------------------------------------------------------------------------- migrations


def test_migrate_is_idempotent_and_versioned(make_ledger):
    led = make_ledger()
    assert led.version() == 0
    assert led.migrate() == LATEST_VERSION == 3
    assert led.migrate() == 3
    assert make_ledger().migrate() == 3
    assert led.version() == 3
    assert {
        "ascora_ledger_version",
        "ascora_runs",
        "ascora_crosswalk",
        "ascora_audit_log",
        "ascora_quarantine",
        "ascora_watermarks",
        "ascora_mapping_approvals",
        "ascora_reports",
        "ascora_write_intents",
    } <= table_names(led)
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ls.version_table)).scalar_one() == 1


def test_concurrent_migrate_applies_each_step_once(make_ledger):
    results, errors = [], []

    def run():
        try:
            results.append(make_ledger().migrate())
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [LATEST_VERSION] * 5


def seed_old_ledger(led: Ledger, version: int) -> None:
    """Data as code of ``version`` wrote it. Crosswalk, audit log and reports go through that
    version's own tables: today's ``record_writes`` also clears write intents (v3), and
    ``add_report`` writes ``summary`` (v2), neither of which an older database has."""
    old = ls.build_metadata(version).tables
    now = ls.utcnow()
    led.start_run("r1", destination=DEST, kind="full", params={"batch": 100})
    with led.engine.begin() as conn:
        conn.execute(
            old["ascora_crosswalk"].insert(),
            [
                {"destination": DEST, "source_object": "customer", "source_id": sid, "target_object": to,
                 "dest_id": f"d-{sid}", "payload_hash": None, "run_id": "r1", "created_run_id": "r1",
                 "updated_at": now}
                for sid, to in [("1", "company"), ("2", "person")]
            ],
        )
        conn.execute(
            old["ascora_audit_log"].insert(),
            [
                {"run_id": "r1", "destination": DEST, "source_object": "customer", "source_id": sid,
                 "target_object": to, "dest_id": f"d-{sid}", "op": "create", "payload_hash": None,
                 "before_image": None, "at": now}
                for sid, to in [("1", "company"), ("2", "person")]
            ],
        )
        conn.execute(
            old["ascora_reports"].insert().values(run_id="r1", kind="audit", uri="s3://a", created_at=now)
        )
    led.quarantine("r1", DEST, [QuarantineEntry("job", "J1", "bad date", field="start", value="31/02")])
    led.set_watermark(DEST, "customer", "2024-01-01T00:00:00Z")
    led.approve_mapping(DEST, mapping_hash="h1", mapping_text="a: b", approved_by="ann", source="cli")


def assert_seeded_data_intact(led: Ledger) -> None:
    assert led.get_run("r1")["params"] == {"batch": 100}
    assert led.count_crosswalk(DEST) == 2
    assert led.crosswalk_lookup(DEST, "customer", "2").target_object == "person"
    assert led.audit_ops_count("r1") == {"create": 2}
    assert [e.source_id for e in led.iter_audit("r1")] == ["1", "2"]
    assert led.count_quarantine(run_id="r1") == {"job": 1}
    assert led.get_watermark(DEST, "customer") == "2024-01-01T00:00:00Z"
    assert led.approved_mapping(DEST)["mapping_hash"] == "h1"
    assert [(r["uri"], r["summary"]) for r in led.list_reports("r1")][0] == ("s3://a", None)


def test_build_metadata_is_exact_per_version():
    v1, v2, v3 = (ls.build_metadata(v) for v in (1, 2, 3))
    assert set(v2.tables) == set(v1.tables)
    assert set(v3.tables) == set(v2.tables) | {"ascora_write_intents"}
    assert "summary" not in v1.tables["ascora_reports"].c and "summary" in v2.tables["ascora_reports"].c
    assert set(ls.metadata.tables) == set(v3.tables)
    with pytest.raises(ValueError):
        ls.build_metadata(4)


def test_v1_database_upgrades_to_v2_with_data_intact(make_ledger):
    led = make_ledger()
    assert migrations.upgrade(led._read, led._write, led.schema, target=1) == 1
    assert led.version() == 1
    assert "summary" not in column_names(led, "ascora_reports")

    seed_old_ledger(led, 1)

    assert migrations.upgrade(led._read, led._write, led.schema, target=2) == 2
    assert led.version() == 2
    assert "summary" in column_names(led, "ascora_reports")
    assert "ascora_write_intents" not in table_names(led)  # v2 stays exactly v2
    assert_seeded_data_intact(led)
    led.add_report("r1", "reconciliation", "s3://b", {"ok": True})
    assert [r["summary"] for r in led.list_reports("r1")] == [None, {"ok": True}]

    assert make_ledger().migrate() == LATEST_VERSION  # and on to the latest
    assert_seeded_data_intact(led)


def test_v2_database_upgrades_to_v3_with_data_intact(make_ledger):
    led = make_ledger()
    assert migrations.upgrade(led._read, led._write, led.schema, target=2) == 2
    assert "ascora_write_intents" not in table_names(led)
    seed_old_ledger(led, 2)
    led.add_report("r1", "reconciliation", "s3://b", {"ok": True})

    assert make_ledger().migrate() == 3
    assert led.version() == 3
    assert_seeded_data_intact(led)
    assert [r["summary"] for r in led.list_reports("r1")] == [None, {"ok": True}]

    assert column_names(led, "ascora_write_intents") == {
        "id", "run_id", "destination", "source_object", "source_id", "target_object", "op",
        "before_image", "created_at",
    }
    with led.engine.connect() as conn:
        insp = sa.inspect(conn)
        uniques = insp.get_unique_constraints("ascora_write_intents", schema=led.schema)
        indexes = insp.get_indexes("ascora_write_intents", schema=led.schema)
    assert [u["column_names"] for u in uniques] == [
        ["destination", "source_object", "source_id", "target_object"]
    ]
    assert ["destination", "run_id"] in [i["column_names"] for i in indexes]

    # The upgraded ledger works end to end.
    led.save_intents("r2", DEST, [it(1, before={"name": "Old"})])
    led.record_writes("r2", DEST, [w(1, "update", before={"name": "Old"})])
    assert led.pending_intents(DEST) == []
    assert led.audit_ops_count("r2") == {"update": 1}


def test_failed_step_leaves_nothing_behind(make_ledger, monkeypatch):
    """Each step is one transaction (DDL included, on SQLite too): a crash mid-step must not leave
    a half-built schema that the next attempt would trip over."""
    led = make_ledger()
    assert led.migrate() == 3

    def broken_v4(conn, schema):
        conn.execute(sa.text("CREATE TABLE ascora_half_done (id INTEGER)"))
        raise RuntimeError("crash mid-step")

    monkeypatch.setattr(ls, "LATEST_VERSION", 4)
    monkeypatch.setattr(migrations, "STEPS", (*migrations.STEPS, migrations.Step(4, "broken", broken_v4)))
    with pytest.raises(RuntimeError, match="crash mid-step"):
        led.migrate()
    assert led.version() == 3
    assert "ascora_half_done" not in table_names(led)


def test_sqlite_connections_use_wal_and_busy_timeout(tmp_path):
    led = Ledger(f"sqlite:///{tmp_path / 'wal.sqlite'}")
    led.migrate()
    with led.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_schema_rejected_on_sqlite(tmp_path):
    with pytest.raises(ValueError):
        Ledger(f"sqlite:///{tmp_path / 'x.sqlite'}", schema="nope")


# --------------------------------------------------------------------------- runs


def test_start_run_is_idempotent(ledger):
    first = ledger.start_run(
        "r1", destination=DEST, kind="sample", dag_id="d", mapping_hash="m", params={"n": 1}
    )
    assert first["status"] == "running" and first["params"] == {"n": 1} and first["finished_at"] is None
    assert first["started_at"].tzinfo is not None
    ledger.finish_run("r1", status="success", summary={"created": 5})
    again = ledger.start_run("r1", destination="other", kind="full", params={"n": 2})
    assert again["status"] == "success"
    assert (again["destination"], again["kind"], again["params"]) == (DEST, "sample", {"n": 1})
    assert again["summary"] == {"created": 5}
    assert again["finished_at"] >= again["started_at"]
    assert ledger.get_run("r1") == again
    assert ledger.get_run("missing") is None


def test_run_validation_and_listing(ledger):
    with pytest.raises(ValueError):
        ledger.start_run("bad", destination=DEST, kind="nonsense")
    with pytest.raises(ValueError):
        ledger.finish_run("r1", status="done")
    with pytest.raises(KeyError):
        ledger.finish_run("missing", status="failed")
    for i, kind in enumerate(["sample", "full", "delta"]):
        ledger.start_run(f"r{i}", destination=DEST, kind=kind)
        time.sleep(0.01)
    ledger.start_run("other", destination="salesforce", kind="full")
    assert [r["run_id"] for r in ledger.list_runs(DEST)] == ["r2", "r1", "r0"]
    assert [r["run_id"] for r in ledger.list_runs(kind="full")] == ["other", "r1"]
    assert len(ledger.list_runs()) == 4
    ledger.finish_run("r2", status="failed")
    ledger.finish_run("r2", status="running")  # re-open for a retry
    assert ledger.get_run("r2")["finished_at"] is None


# --------------------------------------------------------------------------- crosswalk + audit


def test_record_writes_create_update_delete(ledger):
    ledger.record_writes("r1", DEST, [w(1, h="h1"), w(2, h="h2")])
    e = ledger.crosswalk_lookup(DEST, "customer", "1", "company")
    assert e == CrosswalkEntry(DEST, "customer", "1", "company", "d-1", "h1", "r1", "r1")

    ledger.record_writes("r2", DEST, [w(1, "update", "d-1b", h="h1b", before={"name": "Old"})])
    e = ledger.crosswalk_lookup(DEST, "customer", "1")
    assert (e.dest_id, e.payload_hash, e.run_id, e.created_run_id) == ("d-1b", "h1b", "r2", "r1")

    ledger.record_writes("r3", DEST, [w(1, "delete", "d-1b", before={"name": "New"})])
    assert ledger.crosswalk_lookup(DEST, "customer", "1") is None
    assert ledger.count_crosswalk(DEST) == 1

    ledger.record_writes("r4", DEST, [w(1, "restore", "d-1c")])
    e = ledger.crosswalk_lookup(DEST, "customer", "1")
    assert (e.dest_id, e.run_id, e.created_run_id) == ("d-1c", "r4", "r4")

    assert ledger.audit_ops_count("r1") == {"create": 2}
    assert ledger.audit_ops_count("r2") == {"update": 1}
    assert ledger.audit_ops_count("r3") == {"delete": 1}
    assert ledger.audit_ops_count("nope") == {}
    [created_1, created_2] = ledger.iter_audit("r1")
    assert (created_1.source_id, created_2.source_id) == ("1", "2")
    assert created_1.seq < created_2.seq and created_1.before_image is None
    [upd] = ledger.iter_audit("r2")
    [dele] = ledger.iter_audit("r3")
    assert upd.seq > created_2.seq and dele.seq > upd.seq
    assert isinstance(dele, AuditEntry) and dele.before_image == {"name": "New"}
    assert dele.at.tzinfo is not None and abs((datetime.now(UTC) - dele.at).total_seconds()) < 60


def test_same_key_several_times_in_one_batch(ledger):
    ledger.record_writes("r0", DEST, [w("a"), w("b")])
    ledger.record_writes(
        "r1",
        DEST,
        [
            w("a", "update", "d-a2"),
            w("a", "update", "d-a3"),  # two updates of one key: last one wins
            w("b", "delete"),
            w("b", "create", "d-b2"),  # delete then re-create: a fresh row owned by r1
            w("c", "create"),
            w("c", "delete"),  # created and deleted within the batch: gone
            w("d", "create"),
            w("d", "update", "d-d2"),  # created then updated: created by r1
        ],
    )
    a = ledger.crosswalk_lookup(DEST, "customer", "a")
    b = ledger.crosswalk_lookup(DEST, "customer", "b")
    d = ledger.crosswalk_lookup(DEST, "customer", "d")
    assert (a.dest_id, a.created_run_id) == ("d-a3", "r0")
    assert (b.dest_id, b.created_run_id) == ("d-b2", "r1")
    assert ledger.crosswalk_lookup(DEST, "customer", "c") is None
    assert (d.dest_id, d.created_run_id) == ("d-d2", "r1")
    assert [(e.source_id, e.op) for e in ledger.iter_audit("r1")] == [
        ("a", "update"),
        ("a", "update"),
        ("b", "delete"),
        ("b", "create"),
        ("c", "create"),
        ("c", "delete"),
        ("d", "create"),
        ("d", "update"),
    ]


def test_before_image_round_trip(ledger):
    image = {
        "name": "Ōtautahi Plumbing — Zoë's “best” crew ✓",
        "tags": ["北京", "emoji 🚰", None, True, 1.5],
        "address": {"street": "1 Ngā Rd", "geo": {"lat": -43.53, "lng": 172.63}, "empty": {}},
        "count": 3,
    }
    ledger.record_writes("r1", DEST, [w(1, "update", before=image)])
    [entry] = ledger.iter_audit("r1")
    assert entry.before_image == image


def test_iter_audit_order_and_reverse_across_pages(ledger):
    for batch in range(5):
        ledger.record_writes("r1", DEST, [w(batch * 10 + i) for i in range(10)])
    ledger.record_writes("r2", DEST, [w(999)])
    forward = [e.seq for e in ledger.iter_audit("r1", page_size=7)]
    backward = [e.seq for e in ledger.iter_audit("r1", reverse=True, page_size=7)]
    assert len(forward) == 50 and forward == sorted(forward)
    assert backward == forward[::-1]
    assert [e.source_id for e in ledger.iter_audit("r1")] == [str(i) for i in range(50)]
    assert list(ledger.iter_audit("nope")) == []


def test_crosswalk_get_many_chunks_large_id_lists(ledger):
    ids = [f"C{i:05d}" for i in range(1200)]
    ledger.record_writes("r1", DEST, [w(i) for i in ids])
    ledger.record_writes("r1", DEST, [w(i, to="person") for i in ids[:10]])
    ledger.record_writes("r1", DEST, [w(i, so="job", to="opportunity") for i in ids[:5]])

    wanted = ids + [f"missing{i}" for i in range(50)] + ids[:3]  # duplicates and misses are fine
    got = ledger.crosswalk_get_many(DEST, "customer", wanted)
    assert len(got) == 1210
    assert got[("C00000", "person")].target_object == "person"
    only_company = ledger.crosswalk_get_many(DEST, "customer", wanted, target_object="company")
    assert set(only_company) == {(i, "company") for i in ids}
    assert only_company[("C01199", "company")].dest_id == "d-C01199"
    assert ledger.crosswalk_get_many(DEST, "customer", []) == {}
    assert ledger.crosswalk_get_many("salesforce", "customer", ids) == {}


def test_redigest_changes_only_entries_still_holding_the_digest_named(ledger):
    """A load that found an entry digested by an earlier release's way, for an unchanged payload, gives
    it the new digest: no write, so no audit row, and an entry written meanwhile is left alone."""
    ledger.record_writes("r1", DEST, [w(1, h="old-1"), w(2, h="old-2"), w(3, h="old-3"), w(1, to="person", h="old-1")])
    changed = ledger.crosswalk_redigest(DEST, "customer", "company", [
        ("1", "old-1", "2:new-1"), ("2", "written-since", "2:new-2"), ("3", "old-3", "2:new-3"), ("9", "old-9", "x")])
    assert changed == 2
    held = {(e.source_id, e.target_object): (e.payload_hash, e.run_id) for e in ledger.iter_crosswalk(DEST)}
    assert held == {("1", "company"): ("2:new-1", "r1"), ("2", "company"): ("old-2", "r1"),
                    ("3", "company"): ("2:new-3", "r1"), ("1", "person"): ("old-1", "r1")}
    assert ledger.audit_ops_count("r1") == {"create": 4}
    assert ledger.crosswalk_redigest(DEST, "customer", "company", []) == 0


def test_iter_and_count_crosswalk(ledger):
    ledger.record_writes("r1", DEST, [w(f"{i:03d}") for i in reversed(range(25))])
    ledger.record_writes("r1", DEST, [w(f"{i:03d}", to="person") for i in range(5)])
    ledger.record_writes("r1", DEST, [w(f"{i:03d}", so="job", to="opportunity") for i in range(3)])
    ledger.record_writes("r1", "salesforce", [w("x")])

    customers = list(ledger.iter_crosswalk(DEST, "customer", page_size=4))
    assert len(customers) == 30
    assert [(e.source_id, e.target_object) for e in customers] == sorted(
        (e.source_id, e.target_object) for e in customers
    )
    assert [e.source_id for e in ledger.iter_crosswalk(DEST, "customer", "company", page_size=3)] == [
        f"{i:03d}" for i in range(25)
    ]
    everything = list(ledger.iter_crosswalk(DEST, page_size=5))
    assert len(everything) == 33 and everything[0].source_object == "customer"
    assert len(list(ledger.iter_crosswalk(DEST, target_object="person", page_size=2))) == 5
    assert ledger.count_crosswalk(DEST) == 33
    assert ledger.count_crosswalk(DEST, "customer") == 30
    assert ledger.count_crosswalk(DEST, "customer", "person") == 5
    assert ledger.count_crosswalk(DEST, target_object="opportunity") == 3
    assert ledger.count_crosswalk("nowhere") == 0


def test_crosswalk_lookup_without_target_prefers_latest(ledger):
    ledger.record_writes("r1", DEST, [w(7, to="company")])
    time.sleep(0.01)
    ledger.record_writes("r2", DEST, [w(7, to="person")])
    assert ledger.crosswalk_lookup(DEST, "customer", "7").target_object == "person"
    assert ledger.crosswalk_lookup(DEST, "customer", "7", "company").target_object == "company"
    assert ledger.crosswalk_lookup(DEST, "customer", "8") is None


# --------------------------------------------------------------------------- atomicity


def test_invalid_write_rejected_before_anything_is_written(ledger):
    good = [w(i) for i in range(10)]
    with pytest.raises(ValueError, match="writes\\[5\\].op"):
        ledger.record_writes("r1", DEST, good[:5] + [w(5, "bogus")] + good[5:])
    with pytest.raises(ValueError, match="dest_id"):
        ledger.record_writes("r1", DEST, good + [Write("customer", "x", "company", "", "create")])
    assert ledger.count_crosswalk(DEST) == 0
    assert list(ledger.iter_audit("r1")) == []


def test_database_failure_mid_batch_rolls_back_crosswalk_too(ledger):
    # The crosswalk upsert runs first; the audit insert then fails serialising the before_image.
    # Nothing of the batch may survive, or a retry would believe records exist that it never logged.
    bad = [w(i) for i in range(20)] + [w(20, "update", before={"not_json": object()})]
    with pytest.raises((StatementError, TypeError)):
        ledger.record_writes("r1", DEST, bad)
    assert ledger.count_crosswalk(DEST) == 0
    assert ledger.audit_ops_count("r1") == {}
    ledger.record_writes("r1", DEST, bad[:20])  # and the ledger is still usable
    assert ledger.count_crosswalk(DEST) == 20


# --------------------------------------------------------------------------- write intents


def test_save_intents_twice_keeps_the_first_before_image(ledger):
    ledger.save_intents("r1", DEST, [it(1, before={"name": "Original"}), it(2, "create")])
    # The retry re-reads the CRM, which already holds r1's values: that image must not win.
    ledger.save_intents(
        "r1",
        DEST,
        [it(1, before={"name": "Written by r1"}), it(2, "create"), it(3, before={"name": "C3"})],
    )
    # Another run (a later retry under a new run id) must not replace it either.
    ledger.save_intents("r2", DEST, [it(1, "delete", before={"name": "Later"})])
    # Repeats within one batch: the first wins, and PostgreSQL's ON CONFLICT copes.
    ledger.save_intents("r1", DEST, [it(4, before={"v": 1}), it(4, before={"v": 2})])

    got = ledger.get_intents(DEST, "customer", "company", ["1", "2", "3", "4", "5"])
    assert got == {
        "1": Intent("customer", "1", "company", "update", {"name": "Original"}),
        "2": Intent("customer", "2", "company", "create", None),
        "3": Intent("customer", "3", "company", "update", {"name": "C3"}),
        "4": Intent("customer", "4", "company", "update", {"v": 1}),
    }
    rows = ledger.pending_intents(DEST)
    assert [(r["source_id"], r["run_id"], r["op"]) for r in rows] == [
        ("1", "r1", "update"),
        ("2", "r1", "create"),
        ("3", "r1", "update"),
        ("4", "r1", "update"),
    ]
    with ledger.engine.connect() as conn:  # a create's before_image is SQL NULL, not JSON null
        nulls = conn.execute(
            sa.select(ls.write_intents.c.source_id).where(ls.write_intents.c.before_image.is_(None))
        ).scalars().all()
    assert nulls == ["2"]


def test_save_intents_validates_before_writing(ledger):
    with pytest.raises(ValueError, match=r"intents\[1\].op"):
        ledger.save_intents("r1", DEST, [it(1), it(2, "upsert")])
    with pytest.raises(ValueError, match=r"intents\[0\].*source_id"):
        ledger.save_intents("r1", DEST, [Intent("customer", "", "company", "create")])
    with pytest.raises(ValueError, match="before_image"):
        ledger.save_intents("r1", DEST, [Intent("customer", "1", "company", "update", ["not", "a", "dict"])])
    with pytest.raises(ValueError, match="run_id"):
        ledger.save_intents("", DEST, [it(1)])
    ledger.save_intents("r1", DEST, [])
    assert ledger.pending_intents(DEST) == []


def test_record_writes_clears_only_the_written_keys_intents(ledger):
    ledger.save_intents("r1", DEST, [it(i, before={"i": i}) for i in range(1, 6)])
    ledger.save_intents(
        "r1", DEST, [it(1, "create", to="person"), it(1, "create", so="job", to="opportunity")]
    )
    ledger.save_intents("r1", "salesforce", [it(1), it(2)])

    ledger.record_writes("r1", DEST, [w(1, "update", before={"i": 1}), w(2, "delete", before={"i": 2})])
    left = {(r["source_object"], r["source_id"], r["target_object"]) for r in ledger.pending_intents(DEST)}
    assert left == {
        ("customer", "3", "company"),
        ("customer", "4", "company"),
        ("customer", "5", "company"),
        ("customer", "1", "person"),
        ("job", "1", "opportunity"),
    }
    assert len(ledger.pending_intents("salesforce")) == 2  # other destination untouched

    # Atomic: the audit insert fails after the intent delete and the crosswalk upsert have run;
    # the intents must come back with everything else.
    bad = [w(3, "update"), w(4, "update", before={"not_json": object()})]
    with pytest.raises((StatementError, TypeError)):
        ledger.record_writes("r1", DEST, bad)
    assert set(ledger.get_intents(DEST, "customer", "company", ["3", "4", "5"])) == {"3", "4", "5"}
    assert ledger.get_intents(DEST, "customer", "company", ["3"])["3"].before_image == {"i": 3}
    assert ledger.crosswalk_lookup(DEST, "customer", "3") is None

    # Validation failures do not touch intents either.
    with pytest.raises(ValueError):
        ledger.record_writes("r1", DEST, [w(3), w(4, "bogus")])
    assert len(ledger.pending_intents(DEST)) == 5

    # A key written twice in a batch, and keys without any intent, are fine.
    ledger.record_writes("r1", DEST, [w(3), w(3, "update", "d-3b"), w(99), w(1, to="person")])
    assert {r["source_id"] + "/" + r["target_object"] for r in ledger.pending_intents(DEST)} == {
        "4/company",
        "5/company",
        "1/opportunity",
    }


def test_get_intents_and_clear_intents_chunk_large_id_lists(ledger):
    ids = [f"C{i:05d}" for i in range(1200)]
    ledger.save_intents("r1", DEST, [it(i, before={"id": i}) for i in ids])
    ledger.save_intents("r1", DEST, [it(i, "create", to="person") for i in ids[:10]])
    ledger.save_intents("r1", DEST, [it(i, "create", so="job", to="opportunity") for i in ids[:5]])

    wanted = ids + [f"missing{i}" for i in range(50)] + ids[:3]
    got = ledger.get_intents(DEST, "customer", "company", wanted)
    assert len(got) == 1200 and set(got) == set(ids)
    assert got["C01199"] == Intent("customer", "C01199", "company", "update", {"id": "C01199"})
    assert set(ledger.get_intents(DEST, "customer", "person", wanted)) == set(ids[:10])
    assert ledger.get_intents(DEST, "customer", "company", []) == {}
    assert ledger.get_intents("salesforce", "customer", "company", ids) == {}

    # clear_intents chunks too, counts exactly, and ignores keys that have no intent.
    keys = [("customer", i, "company") for i in ids[:700]] + [("customer", "nope", "company")]
    assert ledger.clear_intents(DEST, keys + keys[:5]) == 700
    assert ledger.clear_intents(DEST, keys) == 0
    assert ledger.clear_intents(DEST, []) == 0
    # record_writes clears a batch bigger than one IN chunk.
    ledger.record_writes("r1", DEST, [w(i, "update") for i in ids[700:]])
    assert ledger.get_intents(DEST, "customer", "company", ids) == {}
    assert len(ledger.pending_intents(DEST)) == 15


def test_pending_intents_filters_by_run(ledger):
    ledger.save_intents("r1", DEST, [it("a", before={"n": "Zoë ✓"}), it("b", "create")])
    ledger.save_intents("r2", DEST, [it("c", "delete", before={"n": "c"}), it("a", before={"n": "ignored"})])
    ledger.save_intents("r1", "salesforce", [it("z")])

    every = ledger.pending_intents(DEST)
    assert [(r["run_id"], r["source_id"]) for r in every] == [("r1", "a"), ("r1", "b"), ("r2", "c")]
    assert [r["source_id"] for r in ledger.pending_intents(DEST, run_id="r1")] == ["a", "b"]
    [c] = ledger.pending_intents(DEST, run_id="r2")
    assert (c["destination"], c["source_object"], c["target_object"], c["op"]) == (
        DEST, "customer", "company", "delete"
    )
    assert c["before_image"] == {"n": "c"} and every[0]["before_image"] == {"n": "Zoë ✓"}
    assert c["created_at"].tzinfo is not None
    assert abs((datetime.now(UTC) - c["created_at"]).total_seconds()) < 60
    assert isinstance(c["id"], int)
    assert ledger.pending_intents(DEST, run_id="nope") == []
    assert [r["source_id"] for r in ledger.pending_intents("salesforce", run_id="r1")] == ["z"]
    assert ledger.pending_intents("nowhere") == []


def test_concurrent_save_intents_keep_one_row_per_key(make_ledger):
    make_ledger().migrate()
    ids = [f"{i:04d}" for i in range(300)]
    errors = []

    def run(n):
        try:
            order = ids if n % 2 else ids[::-1]  # opposite orders: sorting must prevent deadlocks
            led = make_ledger()
            for b in range(0, len(order), 50):
                led.save_intents(f"r{n}", DEST, [it(i, before={"by": n}) for i in order[b : b + 50]])
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = make_ledger().pending_intents(DEST)
    assert sorted(r["source_id"] for r in rows) == ids
    assert all(r["before_image"] == {"by": int(r["run_id"][1:])} for r in rows)


# --------------------------------------------------------------------------- quarantine


def test_quarantine_counts_distinct_records_and_resolves(ledger):
    ledger.quarantine(
        "r1",
        DEST,
        [
            QuarantineEntry("customer", "C1", "bad email", field="email", value="not-an-email"),
            QuarantineEntry("customer", "C1", "bad phone", field="phone", value=12345),
            QuarantineEntry("customer", "C2", "missing name", field="name"),
            QuarantineEntry("job", "J1", "schema drift", stage="schema", value={"x": [1, 2]}),
            QuarantineEntry("job", "J2", "huge", field="notes", value="é" * 5000, stage="transform"),
        ],
    )
    ledger.quarantine("r0", "salesforce", [QuarantineEntry("customer", "C1", "other destination")])
    assert ledger.count_quarantine(run_id="r1") == {"customer": 2, "job": 2}
    assert ledger.count_quarantine(destination=DEST, source_object="job") == {"job": 2}

    rows = ledger.list_quarantine(run_id="r1")
    assert [r["source_id"] for r in rows] == ["C1", "C1", "C2", "J1", "J2"]
    assert rows[1]["value"] == "12345" and rows[2]["value"] is None
    assert rows[3]["value"] == "{'x': [1, 2]}" and rows[3]["stage"] == "schema"
    assert len(rows[4]["value"]) == 2000 and rows[0]["stage"] == "load"
    assert rows[0]["at"].tzinfo is not None and rows[0]["resolved_run_id"] is None

    assert ledger.resolve_quarantine("r2", DEST, "customer", ["C1", "C9"]) == 2
    assert ledger.resolve_quarantine("r3", DEST, "customer", ["C1"]) == 0  # already resolved
    assert ledger.count_quarantine(run_id="r1") == {"customer": 1, "job": 2}
    assert ledger.count_quarantine(run_id="r1", unresolved_only=False) == {"customer": 2, "job": 2}
    assert ledger.count_quarantine(destination="salesforce") == {"customer": 1}
    resolved = [r for r in ledger.list_quarantine(run_id="r1", unresolved_only=False) if r["resolved_run_id"]]
    assert {r["resolved_run_id"] for r in resolved} == {"r2"} and len(resolved) == 2
    many = [f"X{i}" for i in range(1100)]
    ledger.quarantine("r4", DEST, [QuarantineEntry("site", i, "bad") for i in many])
    assert ledger.resolve_quarantine("r5", DEST, "site", many) == 1100


# --------------------------------------------------------------------------- watermarks, approvals, reports


def test_watermarks(ledger):
    assert ledger.get_watermark(DEST, "job") is None
    ledger.set_watermark(DEST, "job", "2024-05-01T00:00:00Z")
    ledger.set_watermark(DEST, "job", "2024-06-01T00:00:00Z")
    ledger.set_watermark("salesforce", "job", "2020-01-01")
    assert ledger.get_watermark(DEST, "job") == "2024-06-01T00:00:00Z"
    assert ledger.get_watermark("salesforce", "job") == "2020-01-01"


def test_mapping_approvals_latest_wins(ledger):
    assert ledger.approved_mapping(DEST) is None
    first = ledger.approve_mapping(
        DEST, mapping_hash="h1", mapping_text="v: 1", approved_by="ann", source="hitl"
    )
    second = ledger.approve_mapping(
        DEST, mapping_hash="h2", mapping_text="v: 2", approved_by="bot", source="auto_approve", note="ok"
    )
    ledger.approve_mapping("salesforce", mapping_hash="s1", mapping_text="x", approved_by="cli", source="cli")
    assert second > first
    latest = ledger.approved_mapping(DEST)
    assert (latest["id"], latest["mapping_hash"], latest["mapping_text"], latest["note"]) == (
        second,
        "h2",
        "v: 2",
        "ok",
    )
    assert latest["approved_at"].tzinfo is not None and latest["source"] == "auto_approve"


def test_reports(ledger):
    ledger.add_report("r1", "audit", "file:///tmp/a.html")
    ledger.add_report("r1", "sample_diff", "s3://b/diff.json", {"changed": 3, "fields": ["a", "ü"]})
    ledger.add_report("r2", "compatibility", "file:///c")
    rows = ledger.list_reports("r1")
    assert [(r["kind"], r["uri"], r["summary"]) for r in rows] == [
        ("audit", "file:///tmp/a.html", None),
        ("sample_diff", "s3://b/diff.json", {"changed": 3, "fields": ["a", "ü"]}),
    ]
    assert rows[0]["created_at"].tzinfo is not None
    assert len(ledger.list_reports()) == 3


# --------------------------------------------------------------------------- performance smoke


def test_bulk_write_rate_smoke(ledger, request):
    total, batch = 20_000, 500
    started = time.perf_counter()
    for b in range(0, total, batch):
        ledger.record_writes("bulk", DEST, [w(f"{i:06d}", h="h") for i in range(b, b + batch)])
    elapsed = time.perf_counter() - started
    print(f"\n[{request.node.callspec.id}] {total} crosswalk+audit writes in {elapsed:.2f}s "
          f"({total / elapsed:,.0f}/s)")
    assert elapsed < 60
    assert ledger.count_crosswalk(DEST) == total
    assert ledger.audit_ops_count("bulk") == {"create": total}


# --------------------------------------------------------------------------- LedgerHook


@pytest.fixture
def clean_hook_env(monkeypatch, tmp_path):
    monkeypatch.delenv(hook_mod.ENV_URL, raising=False)
    monkeypatch.delenv(hook_mod.ENV_SCHEMA, raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_ASCORA_LEDGER_DEFAULT", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    hook_mod.dispose_engines()
    yield monkeypatch
    hook_mod.dispose_engines()


def _not_found(exc):
    def raiser(cls, conn_id):
        raise exc

    return classmethod(raiser)


def test_hook_uses_env_url_when_connection_missing(clean_hook_env, tmp_path):
    from airflow.sdk.exceptions import AirflowNotFoundException

    clean_hook_env.setattr(LedgerHook, "get_connection", _not_found(AirflowNotFoundException("nope")))
    db = tmp_path / "env.sqlite"
    clean_hook_env.setenv(hook_mod.ENV_URL, f"sqlite:///{db}")
    led = LedgerHook().get_ledger()
    assert led.version() == LATEST_VERSION and db.exists()
    led.start_run("r1", destination=DEST, kind="sample")
    assert LedgerHook().get_ledger().get_run("r1")["kind"] == "sample"
    assert hook_mod.get_engine(f"sqlite:///{db}") is led._base_engine  # one cached engine per URL


def test_hook_default_sqlite_in_airflow_home(clean_hook_env, tmp_path):
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    not_found = AirflowRuntimeError(ErrorResponse(error=ErrorType.CONNECTION_NOT_FOUND, detail={}))
    clean_hook_env.setattr(LedgerHook, "get_connection", _not_found(not_found))
    hook = LedgerHook()
    url, schema = hook.resolve()
    expected = tmp_path / "airflow_home" / "ascora_ledger.sqlite"
    assert (url, schema) == (f"sqlite:///{expected}", None)
    assert hook.get_ledger().version() == LATEST_VERSION
    assert expected.exists()


def test_hook_real_lookup_of_undefined_connection_falls_back(clean_hook_env, tmp_path):
    # No monkeypatching: Airflow's own lookup (env/secrets backends) reports "not found".
    assert LedgerHook(ledger_conn_id=f"undefined_{uuid.uuid4().hex}").resolve()[0].endswith(
        "airflow_home/ascora_ledger.sqlite"
    )


def test_hook_other_connection_errors_propagate(clean_hook_env):
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    denied = AirflowRuntimeError(ErrorResponse(error=ErrorType.PERMISSION_DENIED, detail={}))
    clean_hook_env.setattr(LedgerHook, "get_connection", _not_found(denied))
    with pytest.raises(AirflowRuntimeError):
        LedgerHook().resolve()
    clean_hook_env.setattr(LedgerHook, "get_connection", _not_found(ConnectionError("api down")))
    with pytest.raises(ConnectionError):
        LedgerHook().get_ledger()


def test_hook_resolves_airflow_connections(clean_hook_env, tmp_path):
    db = tmp_path / "conn.sqlite"
    clean_hook_env.setenv(
        "AIRFLOW_CONN_LEDGER_URL_CONN",
        json.dumps({"conn_type": "ascora_ledger", "host": f"sqlite:///{db}"}),
    )
    clean_hook_env.setenv("AIRFLOW_CONN_LEDGER_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    clean_hook_env.setenv(
        "AIRFLOW_CONN_LEDGER_PG",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.example",
                "port": 5433,
                "login": "mig",
                "password": "p@ss/word",
                "schema": "crm",
                "extra": {"schema": "ledger"},
            }
        ),
    )
    clean_hook_env.setenv(hook_mod.ENV_URL, "sqlite:////should/not/be/used")
    assert LedgerHook("ledger_url_conn").resolve() == (f"sqlite:///{db}", None)
    assert LedgerHook("ledger_sqlite").resolve() == (f"sqlite:///{db}", None)
    url, schema = LedgerHook("ledger_pg").resolve()
    assert schema == "ledger"
    parsed = sa.engine.make_url(url)
    got = (parsed.drivername, parsed.host, parsed.port, parsed.username, parsed.password, parsed.database)
    assert got == (
        "postgresql+psycopg2",
        "db.example",
        5433,
        "mig",
        "p@ss/word",
        "crm",
    )
    assert LedgerHook("ledger_sqlite").get_ledger().version() == LATEST_VERSION


@pytest.mark.postgres
def test_hook_postgres_schema_from_env(clean_hook_env, pg_engine):
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    clean_hook_env.setenv(hook_mod.ENV_URL, PG_URL)
    clean_hook_env.setenv(hook_mod.ENV_SCHEMA, schema)
    try:
        led = LedgerHook(ledger_conn_id=f"undefined_{uuid.uuid4().hex}").get_ledger()
        assert led.schema == schema and led.version() == LATEST_VERSION
        assert "ascora_crosswalk" in table_names(led)
    finally:
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_hook_ui_field_behaviour():
    behaviour = LedgerHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"host": "SQLAlchemy URL"}
    assert set(behaviour["hidden_fields"]) == {"port", "login", "password", "schema"}
    assert behaviour["placeholders"]["host"] == "postgresql+psycopg2://user:pass@host:5432/db"
    assert (LedgerHook.conn_type, LedgerHook.default_conn_name, LedgerHook.conn_name_attr) == (
        "ascora_ledger",
        "ascora_ledger_default",
        "ledger_conn_id",
    )
