"""Extraction: any :class:`SourceReader` → staged Parquet snapshot, with every record accounted for.

The invariant extraction guarantees, per object and written into the manifest::

    read == staged + quarantined + skipped

* *staged* records are coerced to the canonical types; values that could not be read are empty and
  described in the record's ``_issues`` column (the audit reports them, the load decides).
* *quarantined* records cannot be staged at all: no id, or an id seen before with different content.
* *skipped* records are exact duplicates (same id, same content) — dropped by a rule the manifest
  and the audit both show, never silently.

Memory stays bounded by one Parquet part plus an id index of 16 bytes of digest per record of the
object being extracted (cleared between objects), whatever the tenant's size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_ascora_provider.source.coerce import Issue, canonical_record
from airflow_ascora_provider.source.inline_images import InlineImageMover
from airflow_ascora_provider.source.model import (
    HASH_COLUMN,
    ISSUES_COLUMN,
    SCHEMA_VERSION,
    dependency_order,
    get_object,
)
from airflow_ascora_provider.source.reader import RawRecord, SourceReader
from airflow_ascora_provider.source.staging import Snapshot

log = logging.getLogger(__name__)
#: Attachment downloads in flight ahead of the record being staged (see _fetching_ahead).
FETCH_AHEAD = 4


@dataclass
class ObjectStats:
    read: int = 0
    staged: int = 0
    quarantined: int = 0
    skipped: int = 0
    derived: int = 0  # attachments made from images inline in notes (counted in read as well)
    records_with_issues: int = 0
    content_hash: int = 0  # order-independent sum of record hashes: equal data, equal hash
    parts: list[str] = field(default_factory=list)
    part_rows: list[int] = field(default_factory=list)  # rows of each part: a range is read without opening the others
    seconds: float = 0.0

    def as_manifest(self) -> dict[str, Any]:
        out = asdict(self)
        out["content_hash"] = f"{self.content_hash:032x}"
        return out


class Progress:
    """Logs done / rate every few seconds so a long extraction is never silent."""

    def __init__(self, label: str, total: int | None = None, every: float = 10.0):
        self.label = label
        self.total = total
        self.every = every
        self.start = self.last = time.monotonic()
        self.done = 0

    def tick(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            if self.total:
                eta = (self.total - self.done) / rate if rate else float("inf")
                log.info("%s: %d/%d (%.0f/s, ETA %.0fs)", self.label, self.done, self.total, rate, eta)
            else:
                log.info("%s: %d (%.0f/s)", self.label, self.done, rate)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class _Rejects:
    def __init__(self, snapshot: Snapshot):
        self.writer = snapshot.rejected_writer()

    def add(self, obj: str, source_id: Any, reason: str, disposition: str, origin: str,
            field_name: str | None = None, value: Any = None) -> None:
        text = None if value is None else (value if isinstance(value, str) else repr(value))
        self.writer.add(
            {
                "object": obj,
                "source_id": None if source_id is None else str(source_id),
                "field": field_name,
                "value": text[:2000] if text else text,
                "reason": reason,
                "disposition": disposition,
                "origin": origin,
            }
        )


def _store_file(snapshot: Snapshot, attachment_id: str, file_name: str, content: bytes) -> str:
    target = snapshot.file_path(attachment_id, file_name or "file")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        handle.write(content)
    return str(target)


def _stage_attachment(snapshot: Snapshot, raw: RawRecord, values: dict[str, Any]) -> Issue | None:
    try:
        content = raw.fetch()
    except Exception as exc:  # the file is missing or the download failed: keep the record, say why
        return Issue("file_uri", values.get("file_name"), f"attachment bytes could not be read: {exc}")
    values["file_uri"] = _store_file(snapshot, str(values["id"]), str(values.get("file_name") or "file"), content)
    values["size_bytes"] = len(content)
    values["sha256"] = hashlib.sha256(content).hexdigest()
    return None


def _image_mover(reader: SourceReader, snapshot: Snapshot) -> InlineImageMover:
    """Readers that hold an Ascora connection lend it (``fetch_url``/``is_tenant_url``) for URL images."""
    return InlineImageMover(
        lambda ident, name, data: _store_file(snapshot, ident, name, data),
        fetch_url=getattr(reader, "fetch_url", None),
        is_tenant_url=getattr(reader, "is_tenant_url", None),
    )


def _fetching_ahead(raws: Iterable[RawRecord], ahead: int = FETCH_AHEAD) -> Iterator[RawRecord]:
    """The records of ``raws`` in their order, each attachment's download started ``ahead`` records early.

    Staging a file is a download each, one after another, and most of a tenant's extraction calls:
    fetched ahead on a few threads, a download that waits (a back-off, a slow answer) overlaps the
    ones behind it. A download that failed fails when its record is staged, as it would have then.
    """
    with ThreadPoolExecutor(ahead, thread_name_prefix="extract-fetch") as pool:
        window: deque[RawRecord] = deque()
        for raw in raws:
            if raw.fetch is not None:
                raw = dataclasses.replace(raw, fetch=pool.submit(raw.fetch).result)
            window.append(raw)
            if len(window) > ahead:
                yield window.popleft()
        yield from window


def _with_derived(raws: Iterable[RawRecord], derived: list[RawRecord], stats: ObjectStats) -> Iterable[RawRecord]:
    yield from raws
    stats.derived = len(derived)
    yield from derived


def extract_object(reader: SourceReader, snapshot: Snapshot, object_name: str, rejects: _Rejects,
                   part_rows: int, inline_images: list[RawRecord] | None = None) -> ObjectStats:
    """Stage one object.

    ``inline_images`` switches on moving images out of notes: for ``note`` the list is filled with
    the attachment records derived from staged notes, for ``attachment`` those are staged after the
    reader's own records.
    """
    schema = get_object(object_name)
    stats = ObjectStats()
    writer = snapshot.object_writer(schema, part_rows)
    seen: dict[bytes, str] = {}
    progress = Progress(f"extract {object_name}")
    started = time.monotonic()
    mover = _image_mover(reader, snapshot) if object_name == "note" and inline_images is not None else None
    raws: Iterable[RawRecord] = reader.iter_raw(object_name)
    if object_name == "attachment" and inline_images:
        raws = _with_derived(raws, inline_images, stats)
    if object_name == "attachment":
        raws = _fetching_ahead(raws)
    for raw in raws:
        stats.read += 1
        progress.tick()
        values = dict(raw.values)
        issues = [i.as_dict() for i in raw.issues]
        source_id = values.get("id")
        if source_id is None or str(source_id).strip() == "":
            stats.quarantined += 1
            rejects.add(object_name, None, "record has no id", "quarantined", raw.origin, "id", None)
            continue
        values["id"] = str(source_id).strip()
        if raw.fetch is not None:
            problem = _stage_attachment(snapshot, raw, values)
            if problem:
                issues.append(problem.as_dict())
        images = mover.process(values) if mover is not None else None
        if images is not None:
            values["content"] = images.content
            issues.extend(i.as_dict() for i in images.issues)
        if issues:
            values[ISSUES_COLUMN] = issues
        record = canonical_record(schema, values, raw.origin)
        key = _digest(record["id"])
        first = seen.get(key)
        if first is not None:
            if first == record[HASH_COLUMN]:
                stats.skipped += 1
                rejects.add(object_name, record["id"], "exact duplicate of an earlier record with the same id",
                            "skipped", raw.origin)
            else:
                stats.quarantined += 1
                rejects.add(object_name, record["id"], "duplicate id with different content; the first "
                            "occurrence was staged", "quarantined", raw.origin, "id", record["id"])
            continue
        seen[key] = record[HASH_COLUMN]
        if images is not None:
            inline_images.extend(RawRecord(a, f"{raw.origin} (inline image of note {record['id']})")
                                 for a in images.attachments)
        if record[ISSUES_COLUMN]:
            stats.records_with_issues += 1
        stats.content_hash = (stats.content_hash + int(record[HASH_COLUMN], 16)) % (1 << 128)
        writer.add(record)
        stats.staged += 1
    stats.parts = writer.close()
    stats.part_rows = writer.rows_per_part
    stats.seconds = round(time.monotonic() - started, 3)
    assert stats.read == stats.staged + stats.quarantined + stats.skipped
    return stats


def extract(
    reader: SourceReader,
    snapshot: Snapshot,
    *,
    objects: Iterable[str] | None = None,
    part_rows: int = 50_000,
    source_label: str | None = None,
) -> dict[str, Any]:
    """Extract every object the reader offers (parents first) into ``snapshot``; returns the manifest."""
    available = set(reader.objects())
    wanted = available if objects is None else set(objects)
    unknown = wanted - available
    if unknown:
        raise ValueError(
            f"source {reader.name!r} cannot produce {sorted(unknown)}; it offers {sorted(available)}"
        )
    started = time.monotonic()
    rejects = _Rejects(snapshot)
    per_object: dict[str, ObjectStats] = {}
    # Images inline in notes become attachments, so notes go first when both are extracted.
    inline_images: list[RawRecord] | None = [] if {"note", "attachment"} <= wanted else None
    order = list(dependency_order(tuple(sorted(wanted))))
    if inline_images is not None and order.index("note") > order.index("attachment"):
        order.remove("note")
        order.insert(order.index("attachment"), "note")
    for name in order:
        per_object[name] = extract_object(reader, snapshot, name, rejects, part_rows, inline_images)
        s = per_object[name]
        log.info("extracted %s: read %d, staged %d, quarantined %d, skipped %d (%.1fs)",
                 name, s.read, s.staged, s.quarantined, s.skipped, s.seconds)
    rejects.writer.close()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "snapshot": snapshot.id,
        "source": source_label or reader.name,
        "extracted_at": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(time.monotonic() - started, 3),
        "objects": {name: stats.as_manifest() for name, stats in per_object.items()},
        "totals": {
            key: sum(getattr(s, key) for s in per_object.values())
            for key in ("read", "staged", "quarantined", "skipped", "records_with_issues")
        },
    }
    snapshot.write_manifest(manifest)
    return manifest
