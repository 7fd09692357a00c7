"""Turning raw Ascora values into canonical, typed values without losing anything.

Real tenants hold dates typed as text, money with dollar signs, ``Yes``/``No`` flags and e-mails that
are not e-mails. A value that cannot be read is never silently dropped: the field becomes empty and
an :class:`Issue` naming the field, the raw value and the reason travels with the record (staged in
its ``_issues`` column). The audit reports issues; the load decides per mapping whether such a
record is quarantined or loaded with the field left empty.

Dates are read Australian-first (``3/4/2024`` is the 3rd of April), as Ascora tenants are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_ascora_provider.source.model import (
    HASH_COLUMN,
    ISSUES_COLUMN,
    ORIGIN_COLUMN,
    Field,
    FieldType,
    ObjectSchema,
)

EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
PHONE_RE = re.compile(r"^\+?[0-9 ()\-.]{6,20}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
EXCEL_EPOCH = dt.datetime(1899, 12, 30)

# Synonyms Ascora itself accepts on import (Importing Jobs status table), folded to the status name.
JOB_STATUS_SYNONYMS = {
    "started": "In Progress",
    "open": "In Progress",
    "in progress": "In Progress",
    "in-progress": "In Progress",
    "finished": "Completed",
    "complete": "Completed",
    "rejected": "Cancelled",
    "canceled": "Cancelled",
    "could not complete": "Deferred",
    "assigned": "Booked",
    "accepted": "Booked",
    "dispatched": "Booked",
    "scheduled": "Booked",
    "not scheduled": "Unscheduled",
    "new": "Unscheduled",
    "ready-to-invoice": "Ready To Invoice",
}
QUOTE_STATUS_SYNONYMS = {
    "in-progress": "In Progress",
    "sent-to-customer": "Sent To Customer",
    "sent": "Sent To Customer",
    "accepted": "Won",
    "declined": "Lost",
}
SYNONYMS = {
    ("job", "status"): JOB_STATUS_SYNONYMS,
    ("job_section", "status"): JOB_STATUS_SYNONYMS,
    ("quote", "status"): QUOTE_STATUS_SYNONYMS,
}
JOB_STATUS_CODES = {
    0: "In Progress",
    1: "Booked",
    2: "Completed",
    3: "Cancelled",
    4: "Deferred",
    5: "Unscheduled",
    6: "Ready To Invoice",
    7: "Closed",
}
QUOTE_STATUS_CODES = {0: "In Progress", 1: "Sent To Customer", 2: "Won", 3: "Lost"}

TRUE_WORDS = frozenset({"yes", "y", "true", "t", "1", "on"})
FALSE_WORDS = frozenset({"no", "n", "false", "f", "0", "off", ""})


@dataclass(frozen=True)
class Issue:
    field: str
    value: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        value = self.value
        if not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value)
        if isinstance(value, str) and len(value) > 500:
            value = value[:500] + "…"
        return {"field": self.field, "value": value, "reason": self.reason}


class CoercionError(ValueError):
    pass


def _blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "") or (isinstance(raw, float) and raw != raw)


def to_text(raw: Any) -> str:
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # 6107.0 from a spreadsheet postcode cell is "6107"
    text = raw if isinstance(raw, str) else str(raw)
    return _CONTROL.sub("", text).strip()


def to_decimal(raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise CoercionError("a yes/no value is not a number")
    if isinstance(raw, Decimal):
        return raw
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, float):
        return Decimal(repr(raw))
    text = to_text(raw).replace(",", "").replace("$", "").replace("AUD", "").replace(" ", "")
    negative = text.startswith("(") and text.endswith(")")
    if negative:
        text = text[1:-1]
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CoercionError("not a number") from None
    if not value.is_finite():
        raise CoercionError("not a finite number")
    return -value if negative else value


DECIMAL_PLACES = Decimal("0.000001")  # matches the staged decimal128(24, 6)
DECIMAL_LIMIT = Decimal(10) ** 17


def to_staged_decimal(raw: Any) -> Decimal:
    value = to_decimal(raw)
    if abs(value) >= DECIMAL_LIMIT:
        raise CoercionError("number is too large")
    return value.quantize(DECIMAL_PLACES).normalize() if value.as_tuple().exponent < -6 else value


def to_int(raw: Any) -> int:
    value = to_decimal(raw)
    if value != value.to_integral_value():
        raise CoercionError("not a whole number")
    if abs(value) >= 2**63:
        raise CoercionError("number is too large")
    return int(value)


def to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    word = to_text(raw).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise CoercionError("not a yes/no value")


_DATE_FORMATS = ("%d/%m/%Y", "%d/%m/%y", "%d-%m-%Y", "%d.%m.%Y", "%Y/%m/%d", "%d %b %Y", "%d %B %Y", "%b %d %Y")
_DATETIME_FORMATS = tuple(f"{d} {t}" for d in _DATE_FORMATS for t in ("%H:%M", "%H:%M:%S", "%I:%M %p", "%I:%M:%S %p"))


def to_datetime(raw: Any) -> dt.datetime:
    if isinstance(raw, dt.datetime):
        value = raw
    elif isinstance(raw, dt.date):
        value = dt.datetime(raw.year, raw.month, raw.day)
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not 1 <= raw < 2958466:  # Excel's serial day range
            raise CoercionError("number is not an Excel date")
        value = EXCEL_EPOCH + dt.timedelta(days=float(raw))
    else:
        text = to_text(raw)
        value = _parse_date_text(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    if not 1900 <= value.year <= 2200:
        raise CoercionError(f"year {value.year} is out of range")
    return value


def _parse_date_text(text: str) -> dt.datetime:
    iso = text.replace("Z", "+00:00") if text.endswith("Z") else text
    try:
        return dt.datetime.fromisoformat(iso)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS + _DATETIME_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise CoercionError("not a date")


def to_date(raw: Any) -> dt.date:
    return to_datetime(raw).date()


def to_json_text(raw: Any) -> str:
    """Custom fields arrive as ``[{fieldName, fieldValue}]`` (API), a dict (exports) or JSON text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
            raise CoercionError("not JSON") from None
    if isinstance(raw, list):
        entries = [item for item in raw if not _blank(item)]
        strays = [item for item in entries if not isinstance(item, dict)]
        if strays:
            raise CoercionError(f"entry {strays[0]!r:.60} is not a {{fieldName, fieldValue}} pair")
        raw = {str(item.get("fieldName") or item.get("name")): item.get("fieldValue", item.get("value"))
               for item in entries}
    if not isinstance(raw, dict):
        raise CoercionError("not a set of named values")
    clean = {str(k): (None if _blank(v) else to_text(v)) for k, v in raw.items()}
    return json.dumps(clean, ensure_ascii=False, sort_keys=True)


def normalize_choice(schema: ObjectSchema, field: Field, text: str) -> str:
    """Fold case and Ascora's own synonyms onto the field's pick-list; unknown values are kept as-is.

    Unknown pick-list values are *not* an error at extraction: the audit lists them and the mapping's
    value map decides what they become.
    """
    if not field.choices:
        return text
    lowered = text.lower()
    for choice in field.choices:
        if choice.lower() == lowered:
            return choice
    synonym = SYNONYMS.get((schema.name, field.name), {}).get(lowered)
    return synonym or text


def coerce_value(schema: ObjectSchema, field: Field, raw: Any) -> tuple[Any, Issue | None]:
    if _blank(raw):
        return None, None
    try:
        match field.type:
            case FieldType.STRING | FieldType.TEXT:
                return normalize_choice(schema, field, to_text(raw)), None
            case FieldType.EMAIL:
                text = to_text(raw)
                if not EMAIL_RE.match(text):
                    return text, Issue(field.name, text, "invalid e-mail address")
                return text, None
            case FieldType.PHONE:
                text = to_text(raw)
                if not PHONE_RE.match(text):
                    return text, Issue(field.name, text, "invalid phone number")
                return text, None
            case FieldType.INTEGER:
                return to_int(raw), None
            case FieldType.DECIMAL:
                return to_staged_decimal(raw), None
            case FieldType.BOOLEAN:
                return to_bool(raw), None
            case FieldType.DATE:
                return to_date(raw), None
            case FieldType.DATETIME:
                return to_datetime(raw), None
            case FieldType.JSON:
                return to_json_text(raw), None
    except CoercionError as exc:
        return None, Issue(field.name, raw, f"{exc} (expected {field.type.value})")
    raise AssertionError(f"unhandled field type {field.type}")  # pragma: no cover


def canonical_record(schema: ObjectSchema, raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Coerce a record already keyed by canonical field names; adds ``_issues``, ``_hash``, ``_origin``.

    Keys in ``raw`` that the schema does not know are a bug in the caller's name mapping, not data:
    unknown *source columns* must already have been folded into ``custom_fields``.
    """
    by_name = schema.fields_by_name
    record: dict[str, Any] = dict.fromkeys(schema.field_names)
    issues: list[dict[str, Any]] = list(raw.get(ISSUES_COLUMN) or ())
    for name, raw_value in raw.items():
        field = by_name.get(name)
        if field is None:
            if name == ISSUES_COLUMN:
                continue
            raise KeyError(f"{schema.name}: no canonical field {name!r}")
        if raw_value is None:
            continue
        repaired = _valid_unicode(raw_value)
        if repaired is not raw_value:
            issues.append(Issue(name, repaired, "text holds characters that are not valid Unicode (a lone surrogate "
                                "from a broken encoding upstream); they read as \ufffd").as_dict())
            raw_value = repaired
        value, issue = coerce_value(schema, field, raw_value)
        if issue is not None:
            issues.append(issue.as_dict())
        record[name] = value
    for name in schema.required_fields:
        if record[name] is None and not any(i["field"] == name for i in issues):
            issues.append(Issue(name, None, "required value is missing").as_dict())
    record[ISSUES_COLUMN] = json.dumps(issues, ensure_ascii=False) if issues else None
    record[ORIGIN_COLUMN] = origin
    record[HASH_COLUMN] = record_hash(schema, record)
    return record


def _valid_unicode(raw: Any) -> Any:
    """``raw`` itself when UTF-8 can hold it, else a copy with lone surrogates replaced by U+FFFD.

    JSON may carry ``"\\ud800"``; Python decodes it into a str that no file, database or hash can
    encode, so it is repaired once here rather than failing the whole extraction later.
    """
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in raw)
        return raw
    if isinstance(raw, list):
        items = [_valid_unicode(item) for item in raw]
        return items if any(new is not old for new, old in zip(items, raw)) else raw
    if isinstance(raw, dict):
        pairs = [(_valid_unicode(k), _valid_unicode(v)) for k, v in raw.items()]
        if any(nk is not k or nv is not v for (nk, nv), (k, v) in zip(pairs, raw.items())):
            return dict(pairs)
    return raw


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"cannot hash {type(value).__name__}")


def record_hash(schema: ObjectSchema, record: dict[str, Any]) -> str:
    """Content hash of the canonical fields only: equal data from the API or an export hashes equal."""
    payload = json.dumps([record.get(name) for name in schema.field_names], ensure_ascii=False,
                         separators=(",", ":"), default=_json_default)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def issues_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    text = record.get(ISSUES_COLUMN)
    return json.loads(text) if text else []
