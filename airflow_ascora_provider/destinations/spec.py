"""The contract between the migration engine and a destination plugin.

A plugin talks to its CRM's API and nothing else. The engine owns ordering, batching, the ledger,
diff, reconciliation, delta and rollback; a plugin answers a handful of questions ("what objects and
fields exist?", "write these records", "read these back", "delete these", "put this before-image
back") in terms of destination-neutral values (:mod:`airflow_ascora_provider.mapping.values`).

Registration follows simonw/llm: a plugin module implements the single hook
``register_destinations(register)`` and calls ``register(MyDestination)``; built-in destinations use
the same entry-point group (``airflow_ascora_provider.destinations``) as third-party packages.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pluggy

PROJECT = "airflow_ascora_provider"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_destinations(register: Callable[[type[Destination]], None]) -> None:
    """Call ``register(cls)`` for every :class:`Destination` subclass the plugin provides."""


@dataclass(frozen=True)
class RateLimit:
    requests: int
    per_seconds: float

    @property
    def per_minute(self) -> float:
        return self.requests * 60.0 / self.per_seconds


@dataclass(frozen=True)
class Capabilities:
    """What the engine may plan around. Declared, not discovered, so plans can be made offline."""

    batch_size: int
    rate_limit: RateLimit | None = None
    daily_requests: int | None = None
    external_id: str = "crosswalk"  # native_upsert | alternate_key | crosswalk
    creatable: frozenset[str] = frozenset()  # custom_object, custom_field, picklist_option
    manual: frozenset[str] = frozenset()  # what an admin must create by hand
    plan_limits: dict[str, Any] = field(default_factory=dict)
    supports_delete: bool = True
    max_concurrency: int = 4
    custom_object_fields: frozenset[str] = frozenset()  # fields a new custom object is born with
    max_file_bytes: int | None = None  # largest file the destination accepts


@dataclass(frozen=True)
class DestField:
    name: str
    type: str  # neutral type (see mapping.spec.NEUTRAL_TYPES) or "system"
    required: bool = False
    custom: bool = False
    unique: bool = False
    options: tuple[str, ...] = ()
    lookup_target: str | None = None
    read_only: bool = False


@dataclass
class DestObject:
    name: str
    label: str
    custom: bool = False
    fields: dict[str, DestField] = field(default_factory=dict)
    # Records of this object are records of another one (Freshsales without the Leads module keeps
    # leads as contacts at lifecycle stage Lead), so a field that takes the other can take these.
    stored_as: str | None = None


@dataclass(frozen=True)
class DestUser:
    id: str
    email: str
    name: str = ""
    active: bool = True


@dataclass(frozen=True)
class SchemaChange:
    """One thing the schema step must make exist. ``by_api`` is False when an admin must do it."""

    kind: str  # custom_object | custom_field | picklist_option
    object: str
    field: str | None = None
    spec: Any = None
    by_api: bool = True
    reason: str = ""

    def describe(self) -> str:
        where = f"{self.object}.{self.field}" if self.field else self.object
        detail = ""
        if self.kind == "custom_field":
            detail = f" ({self.spec.type})"
        elif self.kind == "picklist_option":
            detail = f": {', '.join(self.spec)}"
        return f"{self.kind} {where}{detail}"


class QuotaExhausted(RuntimeError):
    """The destination's quota (daily calls, hourly plan limit, API credits) is about to run out.

    A plugin raises it *before* the call that would overrun the quota, never half-way through a
    batch. The engine stops the load task cleanly, defers it until ``resume_at`` and then re-runs
    the same unit: what was written is already in the ledger and is skipped by its payload hash, so
    the resumed task writes only what is left and never duplicates.
    """

    def __init__(self, message: str, resume_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resume_at = resume_at


@dataclass(frozen=True)
class BulkJobStatus:
    """What polling a destination's asynchronous bulk job returns."""

    state: str  # running | done | failed
    message: str = ""
    processed: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


@dataclass
class OutgoingRecord:
    """One record ready to write: neutral values keyed by destination field."""

    source_id: str
    payload: dict[str, Any]
    dest_id: str | None = None  # known from the crosswalk: update this record
    # ``payload_hash(payload)`` when the transform worked it out with the batch (cheaper than encoding
    # each payload again); None: not known, hash the payload. Set for the payload as transformed only.
    digest: str | None = field(default=None, compare=False, repr=False)


@dataclass
class WriteResult:
    source_id: str
    dest_id: str | None
    created: bool = False
    error: str | None = None
    error_field: str | None = None
    # A create whose request timed out and had not landed when the plugin looked: the engine calls
    # ``settle()`` for the final result once the rest of the unit went out (``hooks.create_once``).
    settle: Callable[[], WriteResult] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.dest_id is not None

    @property
    def in_doubt(self) -> bool:
        return self.settle is not None

    @classmethod
    def all_in_doubt(cls, source_ids: list[str], settle: Callable[[], list[WriteResult]]) -> list[WriteResult]:
        """In-doubt results for the records of one request that timed out as a whole (a batch of
        notes): ``settle()`` finishes the request once and answers for all of them, in order; each
        record's own ``settle`` takes its result from that one answer."""
        settled = functools.cache(settle)
        return [cls(source_id, None, settle=functools.partial(lambda k: settled()[k], k))
                for k, source_id in enumerate(source_ids)]


@dataclass(frozen=True)
class LoadForecast:
    """What a load of the staged records costs at the destination's limits, shown by the schema step
    so the plan tier (or the cutover window) can be questioned before anything is written.

    ``facts`` are the headline figures (calls, hours, credits …), ``per_target`` the same per target
    object; both are destination-specific and rendered as they come.
    """

    facts: dict[str, Any]
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)


class Destination(ABC):
    """Base class of every destination plugin."""

    name: ClassVar[str]
    label: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    default_mapping: ClassVar[Path]
    connection_type: ClassVar[str]

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        self.conn_id = conn_id
        self.options = options

    @property
    def batch_size(self) -> int:
        """Records per write call for this connection (never above the declared cap)."""
        return self.capabilities.batch_size

    # -- schema -------------------------------------------------------------------------------
    @abstractmethod
    def describe_schema(self) -> dict[str, DestObject]:
        """Objects and fields as they exist now, in neutral types."""

    @abstractmethod
    def apply_schema_change(self, change: SchemaChange) -> None:
        """Create one custom object / field / pick-list option through the API (or queue it: see
        :meth:`finish_schema_changes`)."""

    def finish_schema_changes(self) -> None:
        """Send what :meth:`apply_schema_change` queued, raising if any of it failed.

        An API that creates many fields in one call (Dataverse's ``$batch``) may queue changes; the
        schema step calls this after the last one, so a failure shows in that step and nothing is
        reported as applied before it was sent. Destinations that apply each change at once keep
        this default.
        """

    def check_plan(self, changes: Iterable[SchemaChange]) -> list[str]:
        """What the account's plan or edition cannot hold of these planned changes, one line each.

        The schema step adds these lines to the plan's problems, so a plan that does not fit (more
        custom fields of a type than the plan allows, a custom module the edition lacks) stops the
        migration before any change is applied or any record is written. Destinations without tiered
        limits keep this default: nothing is too much.
        """
        return []

    def custom_field_name(self, label: str) -> str:
        """Turn a label ("Switchboard Type") into this CRM's API name for a new custom field."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in label).split() if w]
        if not words:
            return "field"
        head, *rest = words
        return head.lower() + "".join(w[:1].upper() + w[1:].lower() for w in rest)

    # -- users --------------------------------------------------------------------------------
    @abstractmethod
    def list_users(self) -> list[DestUser]:
        """Users records can be owned by (matched to Ascora staff by e-mail)."""

    # -- records ------------------------------------------------------------------------------
    @abstractmethod
    def write_batch(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> list[WriteResult]:
        """Create or update ``records`` (at most ``capabilities.batch_size``), upserting on ``key_field``.

        Must return one result per record, in order. A bad record gets an error naming the field
        when the API says which; the rest of the batch must still be written.
        """

    @abstractmethod
    def read_records(self, target: str, dest_ids: list[str], fields: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Current values of ``fields`` for each id, decoded back to neutral values (absent ids omitted)."""

    def find_by_source_ids(self, target: str, key_field: str, source_ids: list[str]) -> dict[str, str]:
        """Destination ids of records already holding these Ascora ids (adopting writes after a crash)."""
        return {}

    @abstractmethod
    def delete_records(self, target: str, dest_ids: list[str]) -> dict[str, str | None]:
        """Delete records; returns dest_id → error (None when deleted or already gone)."""

    @abstractmethod
    def restore_record(self, target: str, dest_id: str, before_image: dict[str, Any]) -> None:
        """Put a record's fields back to ``before_image`` (as returned by :meth:`read_records`)."""

    # -- asynchronous bulk jobs (optional) -----------------------------------------------------
    def bulk_threshold(self, target: str) -> int | None:
        """Smallest number of pending records of ``target`` worth a bulk job; None = no bulk API.

        Destinations with an asynchronous bulk API (Salesforce Bulk 2.0, Zoho Bulk Write,
        Freshsales bulk upsert) return a threshold, usually from the connection. When a load unit
        has at least that many records to write, the engine submits one job instead of many batch
        calls and the task *defers*: a trigger polls the job so no worker slot is held meanwhile.
        """
        return None

    #: Seconds between status checks of a bulk job (the API's own advice on polling cadence).
    bulk_poll_interval: ClassVar[float] = 10.0

    def submit_bulk_job(self, target: str, records: list[OutgoingRecord], key_field: str | None) -> dict[str, Any]:
        """Start one bulk job for ``records``; return a JSON-serialisable handle for the trigger."""
        raise NotImplementedError(f"{self.name} has no bulk API")

    def poll_bulk_job(self, job: dict[str, Any]) -> BulkJobStatus:
        """One status check of a submitted job (called from the triggerer, in a thread)."""
        raise NotImplementedError(f"{self.name} has no bulk API")

    def bulk_job_results(self, job: dict[str, Any], records: list[OutgoingRecord]) -> list[WriteResult]:
        """One result per record of the finished job, in the order of ``records``.

        ``records`` are the same records that were submitted (rebuilt by the engine); failed rows of
        the job's error report become ``WriteResult(error=..., error_field=...)`` and go to quarantine.
        """
        raise NotImplementedError(f"{self.name} has no bulk API")

    def forecast_load(self, counts: dict[str, int]) -> LoadForecast | None:
        """Calls, time or credits a load of ``counts`` records per target needs; None (the default)
        for a destination whose limits do not make that worth a line in the schema report."""
        return None

    def close(self) -> None:
        """Release connections."""

    def api_stats(self) -> dict[str, Any]:
        """Calls made, retried and throttled (benchmarks report wasted calls)."""
        return {}
