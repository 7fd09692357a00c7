"""``$batch`` for the Dataverse emulator: multipart/mixed in, multipart/mixed out.

Requests are parsed with the standard library's MIME parser (not with the hook's own encoder, so a
bug on one side is not mirrored on the other). Each part is either one ``application/http`` request
or a change set (a nested ``multipart/mixed`` whose requests succeed or fail together). Responses
come back in request order; a change set that fails answers with the one failing response, and the
emulator's caller rolls the change set back.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import HTTP
from typing import Any

from airflow_ascora_provider.sandbox.dataverse_metadata import DataverseError

MAX_BATCH_REQUESTS = 1000
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           412: "Precondition Failed", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class SubRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise DataverseError(400, "0x80048d19", "Error identified in Payload provided by the user: the body "
                                 "is not valid JSON") from None


@dataclass
class Part:
    """One top-level part: a single request, or a change set of several."""

    requests: list[SubRequest]
    changeset: bool


@dataclass
class SubResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content_id: str | None = None


def parse_batch(content_type: str, body: bytes) -> list[Part]:
    """Split a ``$batch`` body into parts; 400 on anything malformed or over the 1000-request cap."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary" not in content_type.lower():
        raise DataverseError(400, "0x80048d19", "The batch request must have Content-Type multipart/mixed with a "
                             "boundary.")
    message = message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
                                 policy=HTTP)
    if not message.is_multipart():
        raise DataverseError(400, "0x80048d19", "The batch request body is not a multipart message.")
    parts: list[Part] = []
    total = 0
    for part in message.iter_parts():
        if part.get_content_type() == "multipart/mixed":
            requests = [_sub_request(p, in_changeset=True) for p in part.iter_parts()]
            if not requests:
                raise DataverseError(400, "0x80048d19", "A change set must contain at least one request.")
            parts.append(Part(requests, changeset=True))
        else:
            parts.append(Part([_sub_request(part, in_changeset=False)], changeset=False))
        total += len(parts[-1].requests)
    if total > MAX_BATCH_REQUESTS:
        raise DataverseError(400, "0x80048d19", f"The batch holds {total} requests; the maximum is "
                             f"{MAX_BATCH_REQUESTS}.")
    return parts


def _sub_request(part: Message, *, in_changeset: bool) -> SubRequest:
    if part.get_content_type() != "application/http":
        raise DataverseError(400, "0x80048d19", f"Unexpected batch part type {part.get_content_type()!r}; "
                             "each request must be application/http.")
    raw = part.get_payload(decode=True) or b""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8").strip("\n").split("\n")
    try:
        method, url, _version = lines[0].split(" ", 2)
    except ValueError:
        raise DataverseError(400, "0x80048d19", f"Malformed request line in batch part: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if in_changeset and method.upper() == "GET":
        raise DataverseError(400, "0x80048d19", "GET requests are not allowed inside a change set.")
    content_id = part.get("Content-ID")
    if in_changeset and not content_id:
        raise DataverseError(400, "0x80048d19", "Each request in a change set needs a Content-ID header.")
    return SubRequest(method.upper(), url, headers, body.rstrip(b"\n"), content_id)


def render_batch(results: list[list[SubResponse] | SubResponse]) -> tuple[str, bytes]:
    """Encode responses: a list for a change set that succeeded, one response for anything else."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    out: list[str] = []
    for item in results:
        out.append(f"--{boundary}")
        if isinstance(item, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            out.append(f"Content-Type: multipart/mixed; boundary={inner}")
            out.append("")
            for response in item:
                out.append(f"--{inner}")
                out.extend(_http_part(response))
            out.append(f"--{inner}--")
        else:
            out.extend(_http_part(item))
    out.append(f"--{boundary}--")
    out.append("")
    return f"multipart/mixed; boundary={boundary}", "\r\n".join(out).encode("utf-8")


def _http_part(response: SubResponse) -> list[str]:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if response.content_id:
        lines.append(f"Content-ID: {response.content_id}")
    lines += ["", f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}".rstrip()]
    body = b""
    if response.body is not None:
        body = json.dumps(response.body).encode("utf-8")
        lines.append("Content-Type: application/json; odata.metadata=minimal")
    lines.append("OData-Version: 4.0")
    for name, value in response.headers.items():
        lines.append(f"{name}: {value}")
    lines.append("")
    lines.append(body.decode("utf-8"))
    return lines
