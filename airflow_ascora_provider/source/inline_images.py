"""Images pasted into Ascora notes, moved out of the note text into staged files.

Ascora's rich-text notes keep pasted photos inline, either as ``<img src="data:image/png;base64,...">``
or as ``<img src="https://<tenant host>/...">``. No CRM keeps either: note fields are plain text or
strip data URIs, and a tenant URL stops working when the Ascora subscription ends. So extraction
moves each image into an ``attachment`` record of its own (staged exactly like a real attachment, on
the note's parent record) and leaves a readable marker in the note. Doing it here, once, means every
destination's existing attachment map uploads them with no destination code.

The derived attachment id is ``<note id>-img<n>``: the same note extracted again yields the same ids,
so a delta or a re-run never duplicates a file. An image that cannot be moved is never dropped
silently: the note keeps a marker saying so and carries an issue on its ``content`` field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_ascora_provider.source.coerce import Issue

MAX_IMAGE_BYTES = 25 * 1024 * 1024  # larger than any note paste; beyond it the source is suspect
CATEGORY = "Photo"

_IMG_TAG = re.compile(
    r"""<img\b[^>]*?\bsrc\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))[^>]*>""",
    re.IGNORECASE | re.DOTALL,
)
_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.DOTALL)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

# Magic numbers decide the type: a data URI's declared type and a server's header both lie often.
_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"WEBP", 8, "image/webp", "webp"),
    (b"BM", 0, "image/bmp", "bmp"),
)


class ImageNotMoved(Exception):
    """Why one inline image could not become a file; the text ends up in the note's issue."""


@dataclass
class NoteImages:
    """What one note became: its new text, the attachments derived from it and what went wrong."""

    content: str
    attachments: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def image_type(data: bytes) -> tuple[str, str]:
    """(content type, extension) of an image's bytes, or :class:`ImageNotMoved` if they are not one."""
    for magic, offset, content_type, ext in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            if ext == "webp" and not data.startswith(b"RIFF"):
                continue
            return content_type, ext
    raise ImageNotMoved("the bytes are not a PNG, JPEG, GIF, WebP or BMP image")


def decode_data_uri(uri: str) -> bytes:
    match = _DATA_URI.match(uri.strip())
    if match is None:
        raise ImageNotMoved("malformed data: URI")
    mime, params, payload = match.groups()
    if mime and not mime.lower().startswith("image/"):
        raise ImageNotMoved(f"data: URI holds {mime}, not an image")
    if ";base64" not in params.lower():
        return unquote(payload).encode("latin-1", "replace")
    try:
        return base64.b64decode(re.sub(r"\s+", "", unquote(payload)), validate=True)
    except (binascii.Error, ValueError):
        raise ImageNotMoved("the base64 data of the data: URI is broken") from None


def _url_file_name(url: str) -> str | None:
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = _SAFE_NAME.sub("_", last).strip("._")
    return name if "." in name and len(name) <= 120 else None


class InlineImageMover:
    """Rewrites notes' ``content`` and stages their inline images as attachment bytes.

    ``fetch_url`` downloads a URL with the source's own authenticated Ascora client; ``is_tenant_url``
    says which URLs belong to the tenant. Images on other hosts are left in the note as they are:
    they are not Ascora's to move, and sending the tenant's API key to a third party would leak it.
    """

    def __init__(
        self,
        store: Callable[[str, str, bytes], str],
        fetch_url: Callable[[str], bytes] | None = None,
        is_tenant_url: Callable[[str], bool] | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
    ):
        self.store = store
        self.fetch_url = fetch_url
        self.is_tenant_url = is_tenant_url or (lambda _url: False)
        self.max_bytes = max_bytes

    def _movable(self, src: str) -> bool:
        lowered = src.strip().lower()
        if lowered.startswith("data:"):
            return True
        return lowered.startswith(("http://", "https://")) and self.is_tenant_url(src.strip())

    def _bytes(self, src: str) -> bytes:
        src = src.strip()
        if src.lower().startswith("data:"):
            data = decode_data_uri(src)
        else:
            if self.fetch_url is None:
                raise ImageNotMoved("this source has no Ascora connection to download it with")
            try:
                data = self.fetch_url(src)
            except Exception as exc:  # 404, timeout, refused: the reason goes into the note's issue
                raise ImageNotMoved(f"download failed: {exc}") from None
        if not data:
            raise ImageNotMoved("the image is empty")
        if len(data) > self.max_bytes:
            raise ImageNotMoved(f"the image is {len(data)} bytes, over the {self.max_bytes}-byte limit")
        return data

    def process(self, note: dict[str, Any]) -> NoteImages:
        content = note.get("content")
        if not isinstance(content, str) or "<img" not in content.lower():
            return NoteImages(content)
        note_id = str(note["id"])
        result = NoteImages(content)
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            src = html.unescape(next(g for g in match.groups() if g is not None))
            if not self._movable(src):
                return match.group(0)
            count += 1
            try:
                data = self._bytes(src)
                content_type, ext = image_type(data)
            except ImageNotMoved as exc:
                shown = src if not src.lower().startswith("data:") else src[:60] + "…"
                result.issues.append(Issue(
                    "content", shown, f"inline image {count} of note {note_id} could not be moved: {exc}"))
                return f"[image {count} could not be moved: {exc}]"
            ident = f"{note_id}-img{count}"
            name = _url_file_name(src) if not src.lower().startswith("data:") else None
            if name is None or not name.lower().endswith(f".{ext}"):
                name = f"note-{_SAFE_NAME.sub('_', note_id)}-image-{count}.{ext}"
            uri = self.store(ident, name, data)
            result.attachments.append({
                "id": ident,
                "entity_type": note.get("entity_type"),
                "entity_id": note.get("entity_id"),
                "file_name": name,
                "content_type": content_type,
                "size_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "category": CATEGORY,
                "date_created": note.get("date_created"),
                "created_by_name": note.get("created_by_name"),
                "file_uri": uri,
            })
            return f"[image: {name}]"

        result.content = _IMG_TAG.sub(replace, content)
        return result
