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
