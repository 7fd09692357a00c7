"""Images inline in notes: decoded, staged as attachments, replaced by markers, failures named."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import pytest

from airflow_ascora_provider.sandbox.generate import _jpeg, _png
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.inline_images import ImageNotMoved, InlineImageMover, decode_data_uri, image_type
from airflow_ascora_provider.source.reader import RawRecord
from airflow_ascora_provider.source.staging import Snapshot

PNG = _png(9, 9, (200, 10, 10), (10, 10, 200), b"noise")
JPEG = _jpeg([10, 90, 160, 240])
TENANT = "https://acme.ascora.com.au"


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class _Reader:
    """A source offering customers, notes and attachments, with tenant URLs served from a dict."""

    name = "memory"

    def __init__(self, notes: list[dict], attachments: list[dict] | None = None, served: dict | None = None):
        self.notes, self.attachments, self.served = notes, attachments or [], served or {}
        self.fetched: list[str] = []

    def objects(self) -> tuple[str, ...]:
        return ("customer", "note", "attachment")

    def iter_raw(self, object_name: str) -> Iterator[RawRecord]:
        if object_name == "customer":
            yield RawRecord({"id": "C1", "name": "Acme"}, "memory:customers")
        elif object_name == "note":
            for i, n in enumerate(self.notes):
                yield RawRecord(dict(n), f"memory:notes#{i}")
        else:
            for i, a in enumerate(self.attachments):
                yield RawRecord(dict(a), f"memory:attachments#{i}", fetch=lambda data=a["id"].encode(): data)

    def is_tenant_url(self, url: str) -> bool:
        return url.startswith(TENANT + "/")

    def fetch_url(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.served:
            raise RuntimeError(f"HTTP 404 on GET {url}")
        return self.served[url]


def _note(ident: str, content: str) -> dict:
    return {"id": ident, "entity_type": "Customer", "entity_id": "C1", "content": content,
            "created_by_name": "Jo Bloggs", "date_created": "2025-03-04T09:30:00"}


def _run(tmp_path, reader, name="s1"):
    snapshot = Snapshot(tmp_path / "staging", name)
    manifest = extract(reader, snapshot)
    notes = {r["id"]: r for r in snapshot.iter_records("note")}
    files = {r["id"]: r for r in snapshot.iter_records("attachment")}
    return manifest, notes, files


def test_data_uri_and_tenant_url_images_become_attachments_on_the_notes_parent(tmp_path):
    url = f"{TENANT}/Files/NoteImages/abc/gutter%20photo.jpg"
    reader = _Reader(
        [_note("N1", f'Before <img src="{_data_uri(PNG)}" alt="x"> and after <img src=\'{url}\'>'),
         _note("N2", "plain text, no picture")],
        attachments=[{"id": "A1", "entity_type": "Customer", "entity_id": "C1", "file_name": "quote.pdf",
                      "created_by_name": "Sam Lee"}],
        served={url: JPEG},
    )
    manifest, notes, files = _run(tmp_path, reader)

    assert notes["N1"]["content"] == "Before [image: note-N1-image-1.png] and after [image: gutter_photo.jpg]"
    assert notes["N1"]["_issues"] is None
    assert notes["N2"]["content"] == "plain text, no picture"
    assert set(files) == {"A1", "N1-img1", "N1-img2"}
    assert files["A1"]["created_by_name"] == "Sam Lee"
    for ident, data, mime in (("N1-img1", PNG, "image/png"), ("N1-img2", JPEG, "image/jpeg")):
        row = files[ident]
        assert (row["entity_type"], row["entity_id"], row["category"]) == ("Customer", "C1", "Photo")
        assert row["created_by_name"] == "Jo Bloggs"
        assert row["date_created"].isoformat().startswith("2025-03-04T09:30")
        assert (row["content_type"], row["size_bytes"], row["sha256"]) == (mime, len(data),
                                                                            hashlib.sha256(data).hexdigest())
        with open(row["file_uri"], "rb") as fh:
            assert fh.read() == data
    assert reader.fetched == [url]
    stats = manifest["objects"]["attachment"]
    assert (stats["read"], stats["staged"], stats["derived"]) == (3, 3, 2)


def test_images_that_cannot_be_moved_leave_a_marker_and_an_issue_on_content(tmp_path):
    missing = f"{TENANT}/Files/NoteImages/gone/x.png"
    not_image = f"{TENANT}/Files/NoteImages/doc/readme.png"
    broken = "data:image/png;base64,iVBORw0KGgo*#!"
    reader = _Reader(
        [_note("N7", f'<img src="{broken}"><img src="{missing}"><img src="{not_image}">'
                     f'<img src="https://elsewhere.example/cat.png">')],
        served={not_image: b"%PDF-1.4 not a picture"},
    )
    _manifest, notes, files = _run(tmp_path, reader)

    content = notes["N7"]["content"]
    assert content.startswith("[image 1 could not be moved: the base64 data of the data: URI is broken]")
    assert "[image 2 could not be moved: download failed: HTTP 404" in content
    assert "[image 3 could not be moved: the bytes are not a PNG" in content
    assert content.endswith('<img src="https://elsewhere.example/cat.png">')  # not the tenant's: untouched
    issues = json.loads(notes["N7"]["_issues"])
    assert [i["field"] for i in issues] == ["content"] * 3
    assert all("of note N7 could not be moved" in i["reason"] for i in issues)
    assert files == {}


def test_re_extraction_gives_the_same_ids_and_hashes(tmp_path):
    notes = [_note("N1", f'<img src="{_data_uri(JPEG, "image/jpeg")}">')]
    _m1, n1, f1 = _run(tmp_path, _Reader(notes), "s1")
    _m2, n2, f2 = _run(tmp_path, _Reader(notes), "s2")
    assert set(f1) == set(f2) == {"N1-img1"}
    # file_uri names the snapshot's own folder, as for every attachment; everything else is equal.
    drop = {"file_uri", "_hash", "_origin"}
    assert {k: v for k, v in f1["N1-img1"].items() if k not in drop} == \
        {k: v for k, v in f2["N1-img1"].items() if k not in drop}
    assert n1["N1"]["_hash"] == n2["N1"]["_hash"]


def test_a_duplicated_note_does_not_duplicate_its_images(tmp_path):
    note = _note("N1", f'<img src="{_data_uri(PNG)}">')
    manifest, _notes, files = _run(tmp_path, _Reader([note, note]))
    assert manifest["objects"]["note"]["skipped"] == 1
    assert list(files) == ["N1-img1"]


def test_without_the_attachment_object_notes_are_left_as_they_are(tmp_path):
    content = f'<img src="{_data_uri(PNG)}">'
    snapshot = Snapshot(tmp_path / "staging", "s1")
    extract(_Reader([_note("N1", content)]), snapshot, objects=["customer", "note"])
    assert next(snapshot.iter_records("note"))["content"] == content


def test_image_type_and_data_uri_decoding():
    assert image_type(PNG) == ("image/png", "png")
    assert image_type(JPEG) == ("image/jpeg", "jpg")
    with pytest.raises(ImageNotMoved, match="not a PNG"):
        image_type(b"hello")
    with pytest.raises(ImageNotMoved, match="not an image"):
        decode_data_uri("data:text/html;base64,PGI+")
    with pytest.raises(ImageNotMoved, match="malformed"):
        decode_data_uri("data:image/png;base64")
    assert decode_data_uri(_data_uri(PNG).replace("base64,", "base64,\n")) == PNG


def test_an_oversized_image_is_refused():
    mover = InlineImageMover(lambda *_: "unused", max_bytes=10)
    out = mover.process(_note("N9", f'<img src="{_data_uri(PNG)}">'))
    assert out.attachments == [] and out.content.startswith("[image 1 could not be moved: the image is")
    assert "over the 10-byte limit" in out.issues[0].reason
