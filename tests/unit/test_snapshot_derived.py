"""What the load works out once from a staged snapshot and every later task reuses (``_derived/``)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_ascora_provider.source.model import get_object
from airflow_ascora_provider.source.staging import Snapshot


@pytest.fixture
def snapshot(tmp_path):
    snap = Snapshot(tmp_path / "staging", "s1")
    writer = snap.object_writer(get_object("note"))
    for i in range(500):
        writer.add({"id": f"N{i:04d}", "content": f"note {i}", "entity_id": f"J{i % 7}"})
    writer.close()
    snap.write_manifest({"objects": {"note": {"staged": 500}}, "extracted_at": "2026-12-05T00:00:00+00:00"})
    return snap


def _counting(make):
    calls = []

    def counted():
        calls.append(1)
        return make()

    return counted, calls


def test_a_value_is_made_by_the_first_task_and_read_by_the_others(snapshot):
    make, calls = _counting(lambda: {"email": {"a@x": "N0001"}})
    assert snapshot.derived("holders", make) == {"email": {"a@x": "N0001"}}
    other_task = Snapshot(snapshot.root, "s1")
    assert other_task.derived("holders", make) == {"email": {"a@x": "N0001"}}
    assert len(calls) == 1
    assert [p.name for p in (snapshot.path / "_derived").iterdir() if p.name.startswith(".")] == []  # nothing left aside

    kept = snapshot._derived_path("holders", ".json")
    kept.write_text('{"email": {"a@')  # damaged: made again, not trusted
    assert other_task.derived("holders", make) == {"email": {"a@x": "N0001"}}
    assert len(calls) == 2


def test_a_folder_staged_again_does_not_read_what_the_earlier_staging_kept(snapshot):
    make, calls = _counting(lambda: len(calls))
    assert snapshot.derived("n", make) == 1
    snapshot.write_manifest({"objects": {"note": {"staged": 499}}, "extracted_at": "2026-12-06T00:00:00+00:00"})
    assert snapshot.derived("n", make) == 2
    assert len(calls) == 2


def test_a_table_is_kept_decoded_and_later_tasks_map_it_instead_of_reading_parquet(snapshot):
    make, calls = _counting(lambda: snapshot.read_table("note", ["id", "entity_id"]))
    first = snapshot.derived_table("related-note", make)
    allocated = pa.total_allocated_bytes()
    again = Snapshot(snapshot.root, "s1").derived_table("related-note", make)
    assert len(calls) == 1
    assert again.equals(first) and again.num_rows == 500
    # Memory-mapped: the file's pages, not a copy Arrow allocated.
    assert pa.total_allocated_bytes() - allocated < 1024

    snapshot._derived_path("related-note", ".arrow").write_bytes(b"ARROW1 but cut short")
    assert snapshot.derived_table("related-note", make).equals(first)
    assert len(calls) == 2
