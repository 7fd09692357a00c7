"""What a field's values say about where they can go: e-mails look like e-mails, money like money.

A name can mislead ("Contact" may hold a phone number); the values rarely do. For every source field
the proposer considers, a small sample of staged values (or, for custom fields, the audit's samples
and distinct values) is checked against each destination type: the share of values that parse as that
type is the *value evidence* of a match. Pick-list values are kept whole when there are few of them,
so a value map can be proposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_ascora_provider.source.coerce import (
    EMAIL_RE,
    PHONE_RE,
    CoercionError,
    to_bool,
    to_datetime,
    to_decimal,
)
from airflow_ascora_provider.source.model import FieldType

SAMPLE_ROWS = 400  # rows read per object; enough to judge a type, cheap on any tenant size
MAX_SAMPLES = 60
MAX_DISTINCT = 30
_URL_RE = re.compile(r"^(https?://)?(www\.)?[a-z0-9-]+(\.[a-z0-9-]+)+(/\S*)?$", re.IGNORECASE)
_MONEY_WORDS = {"amount", "total", "price", "cost", "sell", "tax", "paid", "outstanding", "value", "revenue",
                "discount", "balance", "fee", "charge"}


@dataclass
class ValueProfile:
    """Non-empty values of one source field (as text), and all of them when there are few."""

    samples: list[str] = field(default_factory=list)
    distinct: list[str] | None = None  # every distinct value, when at most MAX_DISTINCT
    counts: dict[str, int] = field(default_factory=dict)  # records per value, when known

    def share(self, test) -> float | None:
        if not self.samples:
            return None
        return sum(1 for v in self.samples if _passes(test, v)) / len(self.samples)


def _passes(test, value: str) -> bool:
    try:
        return bool(test(value))
    except (CoercionError, ValueError, ArithmeticError, OverflowError):
        return False


def looks_like_email(value: str) -> bool:
    return bool(EMAIL_RE.match(value))


def looks_like_phone(value: str) -> bool:
    return bool(PHONE_RE.match(value)) and sum(c.isdigit() for c in value) >= 6


def looks_like_url(value: str) -> bool:
    return bool(_URL_RE.match(value)) and "@" not in value


def looks_like_date(value: str) -> bool:
    return bool(re.search(r"\d", value)) and to_datetime(value) is not None


def looks_like_number(value: str) -> bool:
    return to_decimal(value) is not None


def looks_like_money(value: str) -> bool:
    exponent = to_decimal(value).as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -2


def looks_like_boolean(value: str) -> bool:
    to_bool(value)
    return True


# Which test confirms a value for each neutral destination type (text types accept anything).
TYPE_TESTS = {
    "email": looks_like_email,
    "phone": looks_like_phone,
    "url": looks_like_url,
    "date": looks_like_date,
    "datetime": looks_like_date,
    "number": looks_like_number,
    "currency": looks_like_number,
    "boolean": looks_like_boolean,
}


def type_evidence(values: ValueProfile, dest_type: str) -> float | None:
    """Share of sampled values that fit ``dest_type``; None when there is nothing to judge by."""
    test = TYPE_TESTS.get(dest_type)
    if test is None:
        return 1.0 if values.samples else None
    return values.share(test)


def is_money(name: str, canonical: FieldType | None, values: ValueProfile) -> bool:
    """A decimal field that holds money: named like money, or every value has at most two decimals."""
    if canonical not in (FieldType.DECIMAL, None):
        return False
    words = set(re.split(r"[^a-z]+", name.lower()))
    if words & _MONEY_WORDS:
        return True
    share = values.share(looks_like_money)
    return canonical is None and share is not None and share == 1.0 and bool(values.samples)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value).strip()


def canonical_profiles(snapshot, object_name: str, field_names: Iterable[str],
                       picklists: dict[str, dict[str, Any]] | None = None) -> dict[str, ValueProfile]:
    """Profiles of canonical fields from the first staged rows (plus the audit's pick-list counts)."""
    names = list(field_names)
    profiles = {n: ValueProfile() for n in names}
    if snapshot is not None and names and object_name in snapshot.objects():
        seen: dict[str, dict[str, int]] = {n: {} for n in names}
        for n_rows, record in enumerate(snapshot.iter_records(object_name, names, batch_size=SAMPLE_ROWS)):
            if n_rows >= SAMPLE_ROWS:
                break
            for name in names:
                value = record.get(name)
                if value is None or value == "":
                    continue
                text = _text(value)
                bucket = seen[name]
                bucket[text] = bucket.get(text, 0) + 1
                if len(profiles[name].samples) < MAX_SAMPLES:
                    profiles[name].samples.append(text)
        for name, bucket in seen.items():
            if bucket and len(bucket) <= MAX_DISTINCT:
                profiles[name].distinct = sorted(bucket)
                profiles[name].counts = bucket
    for name, info in (picklists or {}).items():
        if name in profiles and info.get("in_use"):
            in_use = {str(k): int(v) for k, v in info["in_use"].items()}
            profiles[name].distinct = sorted(in_use)
            profiles[name].counts = in_use
            if not profiles[name].samples:
                profiles[name].samples = sorted(in_use)[:MAX_SAMPLES]
    return profiles


def custom_profile(info: dict[str, Any]) -> ValueProfile:
    """Profile of one Ascora custom field from the audit's inventory entry."""
    distinct = info.get("distinct_values")
    samples = [str(s) for s in info.get("samples") or []]
    if distinct:
        samples = list(dict.fromkeys(samples + [str(v) for v in distinct]))[:MAX_SAMPLES]
    return ValueProfile(samples=samples, distinct=[str(v) for v in distinct] if distinct else None)
