"""The migration ledger: runs, crosswalk, audit log, write intents, quarantine, watermarks,
approvals, reports.

Everything a migration task needs to survive a retry on another worker lives here; see
:mod:`.repository` for the design and :mod:`.migrations` for how the schema evolves.
"""

from airflow_ascora_provider.ledger.repository import (
    AuditEntry,
    CrosswalkEntry,
    Intent,
    Ledger,
    QuarantineEntry,
    Write,
)
from airflow_ascora_provider.ledger.schema import LATEST_VERSION

__all__ = [
    "LATEST_VERSION",
    "AuditEntry",
    "CrosswalkEntry",
    "Intent",
    "Ledger",
    "QuarantineEntry",
    "Write",
]
