"""Field-level comparison of what was sent with what the destination holds now.

Used by the sample step (every field of every sample record) and by reconciliation (a sample or all
records). Comparison is on neutral values, so it is the same for every destination: money to the
micro-unit, instants in UTC, lookups by destination id, composite values field by field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

from airflow_ascora_provider.mapping.values import AttachTo, DestRef, Money, UserRef


def _norm(value: Any) -> Any:
    if isinstance(value, (DestRef,)):
        return value.dest_id
    if isinstance(value, UserRef):
        return value.user_id
    if isinstance(value, AttachTo):
        return sorted((r.target_object, r.dest_id) for r in value.refs) or None
    if isinstance(value, (tuple, list)) and value and all(isinstance(r, DestRef) for r in value):
        ids = sorted(r.dest_id for r in value)  # a list of parents: which records, not in which order
        return ids[0] if len(ids) == 1 else ids  # and a list of one parent is that parent
    if isinstance(value, Money):
        return (value.amount.quantize(Decimal("0.000001")), value.currency)
    if isinstance(value, Decimal):
        return value.quantize(Decimal("0.000001")) if value == value else value
    if isinstance(value, float):
        return Decimal(repr(value)).quantize(Decimal("0.000001"))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value).quantize(Decimal("0.000001"))
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(microsecond=0)
    if dataclasses.is_dataclass(value):
        data = {f.name: _norm(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
        data = {k: (None if v in ("", (), []) else v) for k, v in data.items()}
        return (type(value).__name__, tuple(sorted(data.items(), key=lambda kv: kv[0])))
    if value == "":
        return None
    return value


def same(sent: Any, read: Any) -> bool:
    # A plain amount written into a currency field comes back as money in the field's currency.
    if isinstance(sent, Decimal) and isinstance(read, Money):
        read = read.amount
    elif isinstance(read, Decimal) and isinstance(sent, Money):
        sent = sent.amount
    a, b = _norm(sent), _norm(read)
    if isinstance(a, dt.datetime) and isinstance(b, dt.date) and not isinstance(b, dt.datetime):
        return a.date() == b
    if isinstance(b, dt.datetime) and isinstance(a, dt.date) and not isinstance(a, dt.datetime):
        return b.date() == a
    return a == b


def compare_record(sent: dict[str, Any], read: dict[str, Any] | None) -> list[tuple[str, Any, Any, str]]:
    """(field, sent, read back, verdict) for every sent field; verdict match / mismatch / missing."""
    rows = []
    for name, value in sent.items():
        if read is None:
            rows.append((name, value, None, "missing"))
        elif name not in read:
            continue  # the destination does not read this field back (write-only); not a mismatch
        else:
            rows.append((name, value, read[name], "match" if same(value, read[name]) else "mismatch"))
    return rows


def display(value: Any) -> Any:
    """A short, JSON-safe rendering of a neutral value for reports."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Money):
        return f"{value.amount:.2f} {value.currency}"
    if isinstance(value, DestRef):
        return f"{value.target_object}:{value.dest_id}"
    if isinstance(value, UserRef):
        return f"user:{value.user_id}" + (" (fallback)" if value.fallback else "")
    if isinstance(value, AttachTo):
        return ", ".join(f"{r.target_object}:{r.dest_id}" for r in value.refs)
    if isinstance(value, (tuple, list)):
        return [display(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {k: display(v) for k, v in dataclasses.asdict(value).items() if v not in (None, "", ())}
    return str(value)
