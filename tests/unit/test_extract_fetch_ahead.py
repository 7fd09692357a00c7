"""Attachment downloads run a few records ahead of staging, without changing what is staged or when a
failed download is reported."""

from __future__ import annotations

import threading
import time

from airflow_ascora_provider.source.extract import FETCH_AHEAD, _fetching_ahead, _stage_attachment
from airflow_ascora_provider.source.reader import RawRecord
from airflow_ascora_provider.source.staging import Snapshot


class Downloads:
    """Fetch functions that take a moment each and record how many ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.most = 0

    def fetch(self, name: str, fail: bool = False):
        def run() -> bytes:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.05)
            with self.lock:
                self.running -= 1
            if fail:
                raise OSError(f"{name}: connection reset")
            return name.encode()

        return run


def test_records_keep_their_order_and_downloads_overlap():
    downloads = Downloads()
    raws = [RawRecord({"id": str(i)}, "test", fetch=downloads.fetch(f"file-{i}") if i % 3 else None)
            for i in range(12)]
    started = time.monotonic()
    out = list(_fetching_ahead(iter(raws)))
    elapsed = time.monotonic() - started
    assert [r.values["id"] for r in out] == [str(i) for i in range(12)]
    assert [r.fetch() if r.fetch else None for r in out] == [f"file-{i}".encode() if i % 3 else None
                                                              for i in range(12)]
    assert 2 <= downloads.most <= FETCH_AHEAD
    assert elapsed < 8 * 0.05, "eight downloads of 50 ms did not run one after another"


def test_a_failed_download_is_reported_on_its_own_record(tmp_path):
    downloads = Downloads()
    raws = [RawRecord({"id": "a", "file_name": "a.txt"}, "test", fetch=downloads.fetch("a")),
            RawRecord({"id": "b", "file_name": "b.txt"}, "test", fetch=downloads.fetch("b", fail=True)),
            RawRecord({"id": "c", "file_name": "c.txt"}, "test", fetch=downloads.fetch("c"))]
    snapshot = Snapshot(str(tmp_path), "s1")
    problems = {}
    for raw in _fetching_ahead(iter(raws)):
        values = dict(raw.values)
        problems[values["id"]] = _stage_attachment(snapshot, raw, values)
    assert problems["a"] is None and problems["c"] is None
    assert problems["b"].field == "file_uri" and "connection reset" in problems["b"].reason
