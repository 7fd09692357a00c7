"""Neutral values ↔ Salesforce REST/Bulk wire values, and neutral types ↔ Salesforce field types.

Salesforce specifics kept here:

* Compound fields are written through their parts: an ``Address`` on ``BillingAddress`` becomes
  ``BillingStreet`` (line 1 and 2 on two lines), ``BillingCity`` …; a ``FullName`` on a Contact or
  Lead ``Name`` becomes ``FirstName``/``LastName`` (a single name goes to ``LastName``, which
  Salesforce requires).
* ``RelatedTo`` on a Task is virtual: an ``AttachTo`` whose Lead/Contact parent goes to ``WhoId``
  and whose other parent goes to ``WhatId`` (a Task has one of each).
* ``RecordTypeId`` is written as the record type's DeveloperName and resolved to its id.
* Currency fields read back as plain amounts (the org's currency), which the diff compares with
  the ``Money`` sent.
* A Salesforce checkbox cannot be empty, but an Ascora yes/no answer can. So the boolean fields the
  migration creates are restricted pick-lists with exactly the values ``Yes`` and ``No`` (empty = no
  answer), written and read as ``True``/``False``/``None``. Existing checkboxes stay checkboxes.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from airflow_ascora_provider.destinations.spec import DestField
from airflow_ascora_provider.mapping.values import (
    Address,
    AttachTo,
    DestRef,
    Emails,
    FileRef,
    FullName,
    Link,
    Money,
    Phones,
    RichText,
    UserRef,
)

YES_NO = ("Yes", "No")  # the value set of a created boolean field
RELATED_TO = "RelatedTo"  # virtual Task field: WhatId + WhoId from one AttachTo
PEOPLE = ("Contact", "Lead")
ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country", "Latitude", "Longitude")

#: Salesforce describe type → neutral type (mapping.spec.NEUTRAL_TYPES); "system" = not written.
NEUTRAL_OF = {
    "string": "text", "combobox": "text", "textarea": "long_text", "email": "email", "phone": "phone",
    "url": "url", "picklist": "picklist", "multipicklist": "multi_picklist", "boolean": "boolean",
    "int": "number", "double": "number", "percent": "number", "currency": "currency", "date": "date",
    "datetime": "datetime", "reference": "lookup", "address": "address", "id": "system", "base64": "system",
    "time": "text", "encryptedstring": "text", "location": "system",
}

#: Neutral type → Tooling API CustomField metadata (``None``: Salesforce has no such custom field type).
CUSTOM_FIELD_TYPES: dict[str, dict[str, Any] | None] = {
    "text": {"type": "Text", "length": 255},
    "long_text": {"type": "LongTextArea", "length": 32768, "visibleLines": 3},
    "rich_text": {"type": "Html", "length": 32768, "visibleLines": 10},
    "number": {"type": "Number", "precision": 18, "scale": 4},
    "currency": {"type": "Currency", "precision": 18, "scale": 2},
    "date": {"type": "Date"},
    "datetime": {"type": "DateTime"},
    "boolean": {"type": "Picklist"},  # Yes / No / empty (see YES_NO)
    "picklist": {"type": "Picklist"},
    "multi_picklist": {"type": "MultiselectPicklist", "visibleLines": 4},
    "email": {"type": "Email"},
    "phone": {"type": "Phone"},
    "url": {"type": "Url"},
    "lookup": {"type": "Lookup", "deleteConstraint": "SetNull"},
    "address": None,  # no custom address field type through the Tooling API
    "full_name": None,
}


class EncodeError(ValueError):
    """One record's value cannot be put on the wire; the record is refused, naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def compound_parts(field: dict[str, Any]) -> tuple[str, ...]:
    """``BillingAddress`` → ``BillingStreet`` …; ``Address`` (Lead) → ``Street`` …"""
    prefix = field["name"][: -len("Address")]
    return tuple(prefix + part for part in ADDRESS_PARTS)


def is_yes_no(wire: dict[str, Any]) -> bool:
    """A pick-list whose values are exactly Yes and No holds a tri-state boolean."""
    return wire["type"] == "picklist" and tuple(v["value"] for v in wire.get("picklistValues") or ()) == YES_NO


def dest_field(name: str, wire: dict[str, Any], *, virtual_type: str | None = None,
               options: Iterable[str] = ()) -> DestField:
    kind = virtual_type or ("boolean" if is_yes_no(wire) else NEUTRAL_OF.get(wire["type"], "system"))
    if wire["type"] == "textarea" and wire.get("htmlFormatted"):
        kind = "rich_text"
    references = wire.get("referenceTo") or []
    writable = bool(wire.get("createable") or wire.get("updateable"))
    return DestField(
        name=name, type=kind,
        required=bool(wire.get("createable") and not wire.get("nillable") and not wire.get("defaultedOnCreate")),
        custom=bool(wire.get("custom")), unique=bool(wire.get("unique")),
        options=tuple(options) or tuple(v["value"] for v in wire.get("picklistValues") or () if v.get("active")),
        lookup_target=references[0] if len(references) == 1 else None,
        read_only=not writable and virtual_type is None,
    )


def _number(value: Any, wire: dict[str, Any], field: str) -> int | float:
    if isinstance(value, Money):
        value = value.amount
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise EncodeError(field, f"{field} is a {wire['type']} field; {value!r} is not a number")
    if wire["type"] == "int":
        if value != int(value):
            raise EncodeError(field, f"{field} holds whole numbers; {value} is not one")
        return int(value)
    return float(value)


def _datetime_text(value: dt.datetime) -> str:
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def encode_value(value: Any, wire: dict[str, Any], field: str) -> Any:
    """One neutral value for a plain (non-compound) field, as JSON."""
    kind = wire["type"]
    if value is None:
        return False if kind == "boolean" else None
    if isinstance(value, (DestRef,)):
        return value.dest_id
    if isinstance(value, UserRef):
        return value.user_id
    if kind in ("int", "double", "percent", "currency"):
        return _number(value, wire, field)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise EncodeError(field, f"{field} is a checkbox; {value!r} is not true or false")
        return value
    if isinstance(value, bool) and is_yes_no(wire):
        return YES_NO[0] if value else YES_NO[1]
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).date().isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        raise EncodeError(field, f"{field} is a date; {value!r} is not one")
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            return _datetime_text(value)
        if isinstance(value, dt.date):
            return f"{value.isoformat()}T00:00:00.000Z"
        raise EncodeError(field, f"{field} is a date/time; {value!r} is not one")
    if kind == "base64":
        if not isinstance(value, FileRef):
            raise EncodeError(field, f"{field} takes a file")
        return base64.b64encode(value.read_bytes()).decode("ascii")
    if kind == "multipicklist" and isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, Emails):
        return value.primary
    if isinstance(value, Phones):
        return value.primary
    if isinstance(value, Link):
        return value.url
    if isinstance(value, RichText):
        return value.markdown
    if isinstance(value, Money):
        return format(value.amount, "f")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dt.datetime,)):
        return _datetime_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (Address, FullName, AttachTo, FileRef)):
        raise EncodeError(field, f"{field} ({kind}) cannot hold a {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def encode_address(value: Address | None, parts: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return dict.fromkeys(parts)
    street = "\n".join(p for p in (value.line1, value.line2) if p) or None
    return dict(zip(parts, (street, value.city, value.state, value.postcode, value.country,
                            float(value.latitude) if value.latitude is not None else None,
                            float(value.longitude) if value.longitude is not None else None)))


def encode_name(value: FullName | None, field: str) -> dict[str, Any]:
    if value is None:
        raise EncodeError(field, f"{field} is required (Salesforce needs a last name)")
    first, last = value.first or None, value.last or None
    if not last:
        first, last = None, first  # one name only: Salesforce requires LastName
    return {"FirstName": first, "LastName": last}


def encode_related(value: AttachTo | DestRef | None) -> dict[str, Any]:
    refs = value.refs if isinstance(value, AttachTo) else ((value,) if value else ())
    who = [r for r in refs if r.target_object in PEOPLE]
    what = [r for r in refs if r.target_object not in PEOPLE]
    return {"WhatId": what[0].dest_id if what else None, "WhoId": who[0].dest_id if who else None}


def decode_value(value: Any, wire: dict[str, Any], object_of_id) -> Any:
    """A wire value read back, as the neutral value the diff and the before-images use."""
    if value is None:
        return None
    kind = wire["type"]
    if kind in ("int", "double", "percent", "currency"):
        return Decimal(str(value))
    if kind == "date":
        return dt.date.fromisoformat(value[:10])
    if kind == "datetime":
        text = value.replace("Z", "+00:00")
        if text[-5] in "+-" and text[-3] != ":":
            text = text[:-2] + ":" + text[-2:]
        return dt.datetime.fromisoformat(text)
    if kind == "reference":
        targets = wire.get("referenceTo") or []
        return DestRef(targets[0] if len(targets) == 1 else object_of_id(value), value)
    if kind == "textarea" and wire.get("htmlFormatted"):
        return RichText(value)
    if kind == "multipicklist":
        return tuple(v for v in value.split(";") if v)
    if is_yes_no(wire):
        return value == YES_NO[0]
    return value


def decode_address(row: dict[str, Any], parts: tuple[str, ...]) -> Address | None:
    street, city, state, postcode, country, lat, lng = (row.get(p) for p in parts)
    lines = (street or "").split("\n", 1)
    address = Address(lines[0] or None, lines[1] if len(lines) > 1 and lines[1] else None, city or None,
                      state or None, postcode or None, country or None,
                      Decimal(str(lat)) if lat is not None else None, Decimal(str(lng)) if lng is not None else None)
    return None if address.is_empty() and lat is None else address


def csv_cell(value: Any, *, clear: bool) -> str:
    """A JSON wire value as a Bulk API 2.0 CSV cell. Empty leaves a field alone; ``#N/A`` clears it."""
    if value is None:
        return "#N/A" if clear else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
