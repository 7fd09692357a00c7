"""Images pasted into notes, through the Ascora emulator: data URIs and tenant URLs become attachments.

Expectations come from the generated tenant itself (its notes, its image files and its dirty
manifest), so the test holds for any seed or size.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from airflow_ascora_provider.hooks.ascora import AscoraHook
from airflow_ascora_provider.sandbox.ascora import create_app
from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.sandbox.generate import NOTE_IMAGES_DIR, NOTE_IMAGES_PATH, TENANT_URL
from airflow_ascora_provider.source.api_reader import AscoraApiReader
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.staging import Snapshot

_SRC = re.compile(r'<img src="([^"]+)"')


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def extracted(dirty_tenant, tmp_path_factory):
    with ServedApp(create_app(dirty_tenant)) as ascora:
        hook = AscoraHook(base_url=ascora.url, api_key="ascora-sandbox-key", enable_extensions=True)
        snapshot = Snapshot(tmp_path_factory.mktemp("staging"), "s1")
        manifest = extract(AscoraApiReader(hook), snapshot)
        downloads = sum(n for route, n in hook.stats.by_path.items() if NOTE_IMAGES_PATH in route)
    return snapshot, manifest, downloads


def _expected_bytes(tenant, src: str) -> bytes:
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    image_id, name = src.removeprefix(TENANT_URL + NOTE_IMAGES_PATH + "/").split("/")
    return (tenant / NOTE_IMAGES_DIR / image_id / name).read_bytes()


def test_every_pasted_image_is_staged_on_the_notes_parent_or_named_as_a_problem(dirty_tenant, extracted):
    snapshot, manifest, downloads = extracted
    broken = {(e["id"], e["src"]) for e in json.loads((dirty_tenant / "dirty_manifest.json").read_text())
              ["broken_inline_image"]}
    assert len(broken) == 2
    source_notes = {n["noteId"]: n for n in _jsonl(dirty_tenant / "api" / "notes.jsonl")}
    staged_notes = {r["id"]: r for r in snapshot.iter_records("note")}
    files = {r["id"]: r for r in snapshot.iter_records("attachment")}
    moved = failed = url_images = 0
    for note_id, note in source_notes.items():
        sources = _SRC.findall(note["noteContent"] or "")
        staged = staged_notes[note_id]
        for n, src in enumerate(sources, 1):
            url_images += src.startswith("http")
            if (note_id, src[:120]) in broken:
                failed += 1
                assert f"[image {n} could not be moved:" in staged["content"]
                reasons = [i["reason"] for i in json.loads(staged["_issues"]) if i["field"] == "content"]
                assert any(f"inline image {n} of note {note_id}" in r for r in reasons)
                assert f"{note_id}-img{n}" not in files
                continue
            moved += 1
            row = files[f"{note_id}-img{n}"]
            data = _expected_bytes(dirty_tenant, src)
            assert (row["entity_type"], row["entity_id"]) == (staged["entity_type"], staged["entity_id"])
            assert (row["sha256"], row["size_bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
            assert row["created_by_name"] == note["createdByName"] and row["category"] == "Photo"
            assert f"[image: {row['file_name']}]" in staged["content"]
        assert "<img" not in (staged["content"] or "")
    assert moved >= 5 and url_images >= 2 and failed == len(broken)
    assert downloads == url_images  # each URL image fetched once, through the authenticated hook
    source_attachments = _jsonl(dirty_tenant / "api" / "attachments.jsonl")
    stats = manifest["objects"]["attachment"]
    assert stats["derived"] == moved
    assert stats["read"] == len(source_attachments) + moved
    uploaders = {a["attachmentId"]: a["createdByName"] for a in source_attachments}
    assert all(files[i]["created_by_name"] == name for i, name in uploaders.items() if i in files)


def test_moved_images_load_through_a_destinations_own_attachment_map(dirty_tenant, tmp_path):
    """No destination code knows about inline images: Twenty's attachment map uploads them as files."""
    from airflow_ascora_provider.engine.reconcile import reconcile
    from airflow_ascora_provider.engine.runner import load_everything
    from tests.integration.test_engine_twenty import _setup

    ctx, ascora, twenty, _manifest, _audit = _setup(dirty_tenant, tmp_path)
    try:
        snapshot = Snapshot(tmp_path / "staging", "s1")
        derived = {r["id"]: r for r in snapshot.iter_records("attachment") if "-img" in r["id"]}
        assert derived
        load_everything(ctx)
        assert reconcile(ctx, verify="none")["totals"]["missing"] == 0
        quarantined = {e["source_id"] for e in ctx.ledger.list_quarantine(destination="twenty")
                       if e["source_object"] == "attachment"}
        loaded = [i for i in derived if ctx.ledger.crosswalk_lookup("twenty", "attachment", i)]
        assert loaded and set(loaded) | quarantined >= set(derived)
    finally:
        ctx.close()
        ascora.stop()
        twenty.stop()
