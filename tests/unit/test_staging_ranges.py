"""A load unit's rows read from staging: exactly its range, decoding only the row groups it touches."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from airflow_ascora_provider.source import staging
from airflow_ascora_provider.source.model import get_object
from airflow_ascora_provider.source.staging import Snapshot


@pytest.fixture
def staged_notes(tmp_path, monkeypatch):
    """2,300 staged notes in parts of 1,000 rows and row groups of 150: ranges cross both."""
    monkeypatch.setattr(staging, "ROW_GROUP_ROWS", 150)
    snapshot = Snapshot(tmp_path / "staging", "s1")
    writer = snapshot.object_writer(get_object("note"), part_rows=1000)
    for i in range(2300):
        writer.add({"id": f"N{i:05d}", "content": f"note {i}"})
    writer.close()
    return snapshot


def test_parts_are_written_in_row_groups(staged_notes):
    parts = staged_notes._parts("note")
    assert [pq.ParquetFile(str(p)).metadata.num_row_groups for p in parts] == [7, 7, 2]


@pytest.mark.parametrize(("start", "stop"), [(0, 2300), (0, 150), (149, 151), (900, 1100), (1000, 2000),
                                             (1999, 2300), (2299, 2300), (450, 451)])
def test_a_range_is_exactly_its_rows_and_reads_only_the_groups_it_touches(staged_notes, monkeypatch, start, stop):
    read: list[int] = []
    real = pq.ParquetFile.read_row_groups

    def counting(self, row_groups, *args, **kwargs):
        read.extend(self.metadata.row_group(i).num_rows for i in row_groups)
        return real(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counting)
    rows = list(staged_notes.iter_range("note", start, stop, ["id", "content"]))
    assert [r["id"] for r in rows] == [f"N{i:05d}" for i in range(start, stop)]
    assert rows[0] == {"id": f"N{start:05d}", "content": f"note {start}"}
    # At most one group's worth of rows more than the range at each end of each part it crosses.
    parts_crossed = len({i // 1000 for i in range(start, stop)})
    assert sum(read) < (stop - start) + 2 * 150 * parts_crossed


def test_a_part_written_as_one_group_is_still_read_by_range(tmp_path):
    """A snapshot staged before row groups: its parts are one group each."""
    snapshot = Snapshot(tmp_path / "staging", "old")
    writer = snapshot.object_writer(get_object("note"), part_rows=1000)
    for i in range(1500):
        writer.add({"id": f"N{i:05d}"})
    writer.close()
    for part in snapshot._parts("note"):
        table = pq.read_table(str(part))
        pq.write_table(table, str(part), compression="zstd")  # pyarrow's default: one group
        assert pq.ParquetFile(str(part)).metadata.num_row_groups == 1
    assert [r["id"] for r in snapshot.iter_range("note", 990, 1010, ["id"])] == [f"N{i:05d}" for i in range(990, 1010)]


def test_staged_records_come_in_chunks_of_a_set_size_with_their_columns():
    from itertools import islice

    from airflow_ascora_provider.source.staging import StagedRecords, StagedRows

    def blocks(sizes):
        start = 0
        for size in sizes:
            rows = [{"id": f"r{i}", "n": i} for i in range(start, start + size)]
            yield StagedRows(rows, {"id": [r["id"] for r in rows], "n": [r["n"] for r in rows]})
            start += size

    sizes = [3, 5, 0, 4, 7, 1]
    everything = [row for block in blocks(sizes) for row in block]
    for size in range(1, 22):
        chunks = list(StagedRecords(blocks(sizes)).chunks(size))
        stream = iter(everything)
        assert [list(c) for c in chunks] == [list(islice(stream, size)) for _ in chunks]
        assert sum(map(len, chunks)) == len(everything) and all(len(c) == size for c in chunks[:-1])
        for chunk in chunks:
            assert isinstance(chunk, StagedRows)
            assert chunk.columns == {"id": [r["id"] for r in chunk], "n": [r["n"] for r in chunk]}
    whole = next(iter(blocks([4])))
    assert next(StagedRecords(iter([whole])).chunks(4)) is whole  # a whole block is taken as it is
    records = StagedRecords(blocks(sizes))
    assert next(records) == {"id": "r0", "n": 0} and [r["n"] for r in records] == list(range(1, 20))
    started = StagedRecords(blocks(sizes))
    next(started)
    with pytest.raises(RuntimeError):
        next(started.chunks(2))  # rows already taken one by one would be missed


def test_a_range_read_in_chunks_is_the_range_read_row_by_row(staged_notes):
    from airflow_ascora_provider.engine.batching import chunked

    for start, stop in ((0, 1), (5, 4100), (1999, 2001), (3000, 6000)):
        rows = list(staged_notes.iter_range("note", start, stop, ["id", "content"]))
        chunks = list(chunked(staged_notes.iter_range("note", start, stop, ["id", "content"]), 700))
        assert [row for chunk in chunks for row in chunk] == rows
        assert all(chunk.columns["id"] == [row["id"] for row in chunk] for chunk in chunks)


def test_a_range_opens_only_the_parts_it_falls_in_when_the_manifest_counts_their_rows(staged_notes, monkeypatch):
    """An extraction's manifest lists each part's rows; a range then opens no part before its own.
    Without the counts (a snapshot staged before them) each earlier part is opened for its length."""
    writer_rows = [pq.ParquetFile(str(part)).metadata.num_rows for part in staged_notes._parts("note")]
    opened: list[str] = []
    real = pq.ParquetFile.__init__

    def counting(self, source, *args, **kwargs):
        opened.append(source)
        real(self, source, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", counting)
    expected = [f"N{i:05d}" for i in range(2100, 2200)]
    assert [r["id"] for r in staged_notes.iter_range("note", 2100, 2200, ["id"])] == expected
    assert len(opened) == 3  # no manifest: the two parts before, then its own

    staged_notes.write_manifest({"objects": {"note": {"parts": [p.name for p in staged_notes._parts("note")],
                                                      "part_rows": writer_rows}}})
    for start, stop, parts in [(2100, 2200, 1), (0, 10, 1), (990, 1010, 2), (0, 2300, 3), (1000, 2000, 1)]:
        opened.clear()
        ids = [r["id"] for r in staged_notes.iter_range("note", start, stop, ["id"])]
        assert ids == [f"N{i:05d}" for i in range(start, stop)]
        assert len(opened) == parts, (start, stop, opened)


def test_an_extraction_counts_each_parts_rows_in_its_manifest(tmp_path):
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.reader import RawRecord

    class Customers:
        name = "memory"

        def objects(self):
            return ("customer",)

        def iter_raw(self, object_name):
            for i in range(25):
                yield RawRecord({"id": f"C{i:02d}", "name": f"Customer {i}"}, f"memory:customers#{i}")

    snapshot = Snapshot(tmp_path / "staging", "s1")
    manifest = extract(Customers(), snapshot, part_rows=10)
    info = manifest["objects"]["customer"]
    assert info["part_rows"] == [10, 10, 5] and len(info["parts"]) == 3
    assert snapshot.manifest()["objects"]["customer"]["part_rows"] == [10, 10, 5]
    assert [r["id"] for r in snapshot.iter_range("customer", 18, 22, ["id"])] == ["C18", "C19", "C20", "C21"]


def test_staged_rows_are_made_into_dicts_once_when_first_read_and_pieces_share_them():
    from airflow_ascora_provider.source.staging import StagedRows

    rows = StagedRows(None, {"id": ["a", "b", "c", "d", "e"], "n": [1, 2, None, 4, 5]}, 5)
    assert len(rows) == 5 and rows._rows is None  # counted, not built
    pieces = list(rows.chunks(2))
    assert [len(p) for p in pieces] == [2, 2, 1] and rows._rows is None
    assert [list(p.columns["id"]) for p in pieces] == [["a", "b"], ["c", "d"], ["e"]]
    assert pieces[1][0] == {"id": "c", "n": None}  # a piece read: the whole built, once
    assert rows._rows is not None and pieces[1][0] is rows[2]
    assert pieces[0] == [{"id": "a", "n": 1}, {"id": "b", "n": 2}] and pieces[0][1] is rows[1]
    assert rows == [{"id": i, "n": n} for i, n in zip("abcde", [1, 2, None, 4, 5])]
    assert rows[1:3] == [{"id": "b", "n": 2}, {"id": "c", "n": None}] and isinstance(rows[1:3], list)
    again = list(rows.chunks(3))  # cut from built rows: the same dicts, no building
    assert again[1][0] is rows[3] and again[1]._rows is not None
    assert StagedRows(None, {}, 2) == [{}, {}]
