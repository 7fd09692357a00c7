"""The contract between a way out of Ascora and extraction.

A reader knows one source (the REST API, a folder of Excel/CSV exports) and yields *raw* records
already keyed by canonical field names; extraction does the rest once for every source: coercion,
issues, duplicates, hashing, quarantine and staging. Keeping readers this thin is what makes the
API path and the export path produce the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_ascora_provider.source.coerce import Issue


@dataclass
class RawRecord:
    """One source record in canonical field names, before coercion.

    ``values`` may only use the object's canonical field names; source columns the model does not
    know go into ``values["custom_fields"]`` (a dict) so they are kept, not dropped. ``issues`` are
    problems the reader already found (an unresolvable customer name, say). ``fetch`` is set for
    attachments and returns the file's bytes when extraction stages them.
    """

    values: dict[str, Any]
    origin: str
    issues: list[Issue] = field(default_factory=list)
    fetch: Callable[[], bytes] | None = None


class SourceReader(Protocol):
    name: str

    def objects(self) -> tuple[str, ...]:
        """Canonical objects this source can produce (the API cannot produce equipment, say)."""

    def iter_raw(self, object_name: str) -> Iterator[RawRecord]:
        """Stream the object's records; never hold a whole large table in memory."""
