"""Destination plugins: one per CRM, discovered through pluggy entry points."""

from airflow_ascora_provider.destinations.spec import (
    Capabilities,
    Destination,
    DestField,
    DestObject,
    DestUser,
    OutgoingRecord,
    RateLimit,
    SchemaChange,
    WriteResult,
    hookimpl,
)

__all__ = [
    "Capabilities",
    "DestField",
    "DestObject",
    "DestUser",
    "Destination",
    "OutgoingRecord",
    "RateLimit",
    "SchemaChange",
    "WriteResult",
    "hookimpl",
]
