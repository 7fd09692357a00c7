"""Transforming by chunks: the same records out as one pass over the whole tenant, with less held.

``BatchTransformer.batches`` indexes, per chunk of records, only the related rows (a job's invoices,
form answers, a bill's job …) that chunk can ask for, and fetches its parents' crosswalk entries
in one query per parent map. Both are what keep a task's memory bounded by the chunk rather than by
the tenant, and both must be invisible in the result: every shipped mapping is transformed here in
tiny chunks and compared, record by record, with a single pass over an index of whole objects.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_ascora_provider.destinations.manager import get_destination_class

DESTINATIONS = ["dynamics365", "freshsales", "salesforce", "twenty", "zoho"]
CHUNK = 7
BATCH = 3


@pytest.fixture(scope="module")
def snapshot(small_tenant, tmp_path_factory):
    from airflow_ascora_provider.hooks.ascora import AscoraHook
    from airflow_ascora_provider.sandbox.ascora import create_app as ascora_app
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.source.api_reader import AscoraApiReader
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    staging = tmp_path_factory.mktemp("chunks-staging")
    with ServedApp(ascora_app(small_tenant)) as ascora:
        extract(AscoraApiReader(AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key",
                                           enable_extensions=True)), Snapshot(staging, "s1"))
    return staging


def _context(staging, tmp_path, destination: str):
    from airflow_ascora_provider.engine.context import MigrationContext
    from airflow_ascora_provider.engine.transform import USERS_WATERMARK
    from airflow_ascora_provider.ledger import Ledger, Write
    from airflow_ascora_provider.mapping.spec import load_mapping

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.migrate()
    mapping = load_mapping(get_destination_class(destination).default_mapping)
    ctx = MigrationContext("run-1", destination, ledger, str(staging), "s1", mapping)
    # The transform asks the destination only for its file size cap (some plugins read it from the
    # org); no CRM is needed to compare two ways of transforming, so no cap here.
    ctx.use_destination(SimpleNamespace(capabilities=SimpleNamespace(max_file_bytes=None)))
    # Every staged record "loaded" by every map and a fallback owner, so lookups and owners resolve
    # and no record stops at its first required field before its related fields are read.
    ledger.set_watermark(destination, USERS_WATERMARK, json.dumps({"fallback_user_id": "fallback-user"}))
    ledger.start_run("run-1", destination=destination, kind="full")
    for om in mapping.maps.values():
        ledger.record_writes("run-1", destination, [
            Write(om.source, r["id"], om.target, f"{om.target}-{r['id']}", "create", "-")
            for r in ctx.snapshot.iter_records(om.source, ["id"])])
    return ctx


def _outcome(outcomes) -> dict[str, object]:
    """Per source id, what left the transform: the payload, or the quarantine reasons."""
    out: dict[str, object] = {}
    for outcome in outcomes:
        out.update({r.source_id: r.payload for r in outcome.records})
        for q in outcome.quarantined:
            out.setdefault(q.source_id, set()).add((q.field, q.reason))
    return out


def _held(transformer) -> int:
    return sum(len(rows) for index in transformer.related._cache.values() for rows in index.values())


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_chunked_transform_equals_one_pass_and_holds_only_the_chunks_related_rows(
        destination, snapshot, tmp_path, monkeypatch):
    from airflow_ascora_provider.engine import transform
    from airflow_ascora_provider.engine.transform import BatchTransformer, _related_reads

    monkeypatch.setattr(transform, "CHUNK_RECORDS", CHUNK)
    ctx = _context(snapshot, tmp_path, destination)
    scoped_maps = 0
    for om in ctx.mapping.maps.values():
        records = list(ctx.snapshot.iter_records(om.source))
        whole = BatchTransformer(ctx, om)
        expected = _outcome([whole.transform(records)])  # no chunk: indexes of whole objects
        whole_held = _held(whole)

        chunked = BatchTransformer(ctx, om)
        outcomes, peak = [], 0
        for batch in chunked.batches(iter(records), BATCH):
            assert len(batch) <= BATCH
            outcomes.append(chunked.transform(batch))
            peak = max(peak, _held(chunked))
        assert _outcome(outcomes) == expected, om.name
        # Every key a shipped mapping looks up was foreseen: no index fell back to a whole object.
        assert chunked.related._whole == set(), (om.name, chunked.related._whole)
        if whole_held > 3 * CHUNK:
            scoped_maps += 1
            assert peak < whole_held, (om.name, peak, whole_held)
    if any(_related_reads(om)[1] for om in ctx.mapping.maps.values()):
        assert scoped_maps > 0, "no map held enough related rows to show the scope: the test proves nothing"


def test_a_key_outside_the_chunk_is_still_answered(snapshot, tmp_path):
    """A transform asked for a record the chunk did not hold (a caller outside ``batches``) gets the
    same related rows as before: the index falls back to the whole object."""
    from airflow_ascora_provider.engine.transform import BatchTransformer

    ctx = _context(snapshot, tmp_path, "twenty")
    om = ctx.mapping.maps["opportunity"]
    jobs = list(ctx.snapshot.iter_records(om.source))
    invoiced = {r["job_id"] for r in ctx.snapshot.iter_records("invoice", ["job_id"])}
    first, other = [j for j in jobs if j["id"] in invoiced][:2]
    transformer = BatchTransformer(ctx, om)
    transformer.related.scope([first])
    assert transformer.related.rows("invoice", "job_id", first["id"])
    rows = transformer.related.rows("invoice", "job_id", other["id"])
    assert rows and all(r["job_id"] == other["id"] for r in rows)
    assert ("invoice", "job_id") in transformer.related._whole


def _everything(outcome) -> tuple:
    """All a transform hands the loader, in order: records (payload values as repr, so Decimal('1.50')
    is not Decimal('1.5')), quarantine entries, records for other maps."""
    return ([(r.source_id, repr(r.payload), r.dest_id) for r in outcome.records],
            [(q.source_object, q.source_id, q.field, repr(q.value), q.reason, q.stage) for q in outcome.quarantined],
            outcome.not_for_this_map)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_the_columnar_transform_equals_the_record_loop(destination, snapshot, tmp_path):
    """Every map of every shipped mapping, a column at a time and record by record: the same records,
    quarantine entries (also for records with extraction issues, set aside first) and digests."""
    from airflow_ascora_provider.engine.context import payload_hash
    from airflow_ascora_provider.engine.transform import BatchTransformer
    from airflow_ascora_provider.source.model import ISSUES_COLUMN

    ctx = _context(snapshot, tmp_path, destination)
    checked = 0
    for om in ctx.mapping.maps.values():
        records = list(ctx.snapshot.iter_records(om.source))
        # Every fifth record with an extraction issue on a field the map reads: those are set aside
        # before the columns are computed, and must come out in the same place of the quarantine.
        used = sorted(om.used_source_fields() - {"id"})
        for i, record in enumerate(records[::5]):
            if used:
                record[ISSUES_COLUMN] = json.dumps([{"field": used[i % len(used)], "value": "?", "reason": "bad"}])
        columnar, rows = BatchTransformer(ctx, om), BatchTransformer(ctx, om)
        assert columnar.columns is not None, om.name
        rows.columns = None
        for batch in columnar.batches(iter(records), 40):
            got, expected = columnar.transform(batch), rows.transform(batch)
            assert _everything(got) == _everything(expected), om.name
            assert [r.digest for r in got.records] == [payload_hash(r.payload) for r in expected.records]
            checked += len(got.records) + len(got.quarantined)
    assert checked


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_a_load_reading_only_the_columns_its_map_reads_transforms_the_same(destination, snapshot, tmp_path):
    """A unit reads only ``staged_reads(map)`` of its object's staged columns. Every map of every
    shipped mapping transformed from those columns alone gives what it gives from whole rows, column
    by column and record by record, with extraction issues on a fifth of the records."""
    from airflow_ascora_provider.engine.transform import BatchTransformer, staged_reads
    from airflow_ascora_provider.source.model import ISSUES_COLUMN, get_object

    ctx = _context(snapshot, tmp_path, destination)
    pruned_any = False
    for om in ctx.mapping.maps.values():
        columns = staged_reads(om)
        assert {"id", ISSUES_COLUMN} <= set(columns) and om.used_source_fields() <= set(columns), om.name
        pruned_any |= len(columns) < len(get_object(om.source).arrow_schema.names)
        whole = list(ctx.snapshot.iter_records(om.source))
        used = sorted(om.used_source_fields() - {"id"})
        for i, record in enumerate(whole[::5]):
            if used:
                record[ISSUES_COLUMN] = json.dumps([{"field": used[i % len(used)], "value": "?", "reason": "bad"}])
        read = [{name: record.get(name) for name in columns} for record in whole]
        for by_columns in (True, False):
            expected, got = BatchTransformer(ctx, om), BatchTransformer(ctx, om)
            if not by_columns:
                expected.columns = got.columns = None
            outcomes = [_everything(expected.transform(batch)) for batch in expected.batches(iter(whole), 40)]
            assert [_everything(got.transform(batch)) for batch in got.batches(iter(read), 40)] == outcomes, om.name
    assert pruned_any


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_a_chunk_read_with_its_columns_transforms_as_rows_alone_do(destination, snapshot, tmp_path, monkeypatch):
    """Staged records handed over as read (``StagedRecords``) carry their columns to the transform,
    which then takes a chunk's fields from them rather than from the row dicts. Read in blocks of 13
    rows (so chunks are cut across blocks), every map of every shipped mapping gives what the same
    rows handed over as plain dicts give, digests included."""
    from airflow_ascora_provider.engine import transform as transform_module
    from airflow_ascora_provider.engine.transform import BatchTransformer, staged_reads

    given: list[bool] = []

    class Spied(transform_module.Batch):
        __slots__ = ()

        def __init__(self, records, staged=None):
            given.append(staged is not None)
            super().__init__(records, staged)

    monkeypatch.setattr(transform_module, "Batch", Spied)
    ctx = _context(snapshot, tmp_path, destination)
    for om in ctx.mapping.maps.values():
        read = ctx.snapshot.iter_records(om.source, staged_reads(om), batch_size=13)
        plain = iter(list(ctx.snapshot.iter_records(om.source, staged_reads(om))))
        with_columns, rows_alone = BatchTransformer(ctx, om), BatchTransformer(ctx, om)
        got = [with_columns.transform(batch) for batch in with_columns.batches(read, 40)]
        expected = [rows_alone.transform(batch) for batch in rows_alone.batches(plain, 40)]
        assert [_everything(o) for o in got] == [_everything(o) for o in expected], om.name
        assert [[r.digest for r in o.records] for o in got] == [[r.digest for r in o.records] for o in expected]
    assert any(given) and not all(given)  # both ways were taken (maps of several targets leave records out)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_a_map_computed_a_column_at_a_time_reads_no_row_whole(destination, snapshot, tmp_path, monkeypatch):
    """Staged rows are made into dicts only when something reads a row: a map that takes every record,
    looks up its parents by plain ids and computes every field of a chunk a column at a time never
    does (their dicts were a fifth of what reading the rows cost). What reads rows still gets them: a
    condition, parents by type, a field asked record by record (no column form, or a column form
    that met a value it does not take); every map's outcome stays that of plain rows (above)."""
    from airflow_ascora_provider.engine import columnar
    from airflow_ascora_provider.engine.transform import BatchTransformer, staged_reads
    from airflow_ascora_provider.source.staging import StagedRows

    read_whole: list[int] = []
    built, per_record = StagedRows.rows, columnar._per_record
    asked: list[int] = []

    def counted(self):
        if self._rows is None:
            read_whole.append(len(self))
        return built.fget(self)

    def record_by_record(get, records, ctx):
        asked.append(len(records))
        return per_record(get, records, ctx)

    monkeypatch.setattr(StagedRows, "rows", property(counted))
    monkeypatch.setattr(columnar, "_per_record", record_by_record)
    ctx = _context(snapshot, tmp_path, destination)
    columnar_maps = 0
    for om in ctx.mapping.maps.values():
        transformer = BatchTransformer(ctx, om)
        plain = (transformer.columns is not None and not transformer.looks_up_itself and om.when is None
                 and om.existing != "users" and not transformer.related._keys and not transformer.row_fields
                 and not transformer.related_refs
                 and all(maps is not None and through is None for _, _, maps, through in transformer.lookup_sources))
        transformer.first_holders()  # a pass of its own over the object (once a snapshot), not the chunks'
        read_whole.clear()
        asked.clear()
        outcomes = [transformer.transform(batch)
                    for batch in transformer.batches(ctx.snapshot.iter_records(om.source, staged_reads(om)), 40)]
        assert outcomes, om.name
        if plain and not asked:
            columnar_maps += 1
            assert not read_whole, (om.name, read_whole)
        elif plain:
            assert read_whole, om.name  # asked record by record: the rows were there to read
    assert columnar_maps  # every shipped mapping has such maps
