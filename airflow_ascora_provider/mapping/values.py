"""Destination-neutral values that transforms produce and destination plugins encode.

A transform knows Ascora and the business rule ("job total ex tax is the opportunity amount"); a
plugin knows its API's wire format ("Twenty wants amountMicros"). These small types are the hand-off,
so no transform contains CRM wire formats and no plugin contains Ascora rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str = "AUD"


@dataclass(frozen=True)
class FullName:
    first: str | None
    last: str | None

    def display(self) -> str:
        return " ".join(p for p in (self.first, self.last) if p)


@dataclass(frozen=True)
class Address:
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postcode: str | None = None
    country: str | None = None
    latitude: Decimal | None = None
    longitude: Decimal | None = None

    def is_empty(self) -> bool:
        return not any((self.line1, self.line2, self.city, self.state, self.postcode))


@dataclass(frozen=True)
class Emails:
    primary: str | None
    others: tuple[str, ...] = ()


@dataclass(frozen=True)
class Phones:
    primary: str | None
    others: tuple[str, ...] = ()
    country_code: str = "AU"
    calling_code: str = "+61"


@dataclass(frozen=True)
class Link:
    url: str
    label: str | None = None


@dataclass(frozen=True)
class RichText:
    markdown: str


@dataclass(frozen=True)
class FileRef:
    """A file to (re-)upload. Identity is the content: a re-run with the same bytes writes nothing."""

    sha256: str
    size: int
    name: str = field(default="", compare=False)
    content_type: str | None = field(default=None, compare=False)
    uri: str | None = field(default=None, compare=False)

    def read_bytes(self) -> bytes:
        from airflow_ascora_provider.source.staging import as_path

        if not self.uri:
            raise FileNotFoundError(f"no staged copy of {self.name!r}")
        return as_path(self.uri).read_bytes()


@dataclass(frozen=True)
class DestRef:
    """A reference to a record already written to the destination (resolved through the crosswalk)."""

    target_object: str
    dest_id: str


@dataclass(frozen=True)
class AttachTo:
    """Parents a note/task/file hangs off; each destination attaches in its own way."""

    refs: tuple[DestRef, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class UserRef:
    """A destination user (owner); ``fallback`` says the staff member did not match by e-mail."""

    user_id: str
    fallback: bool = False


_TYPES = {cls.__name__: cls for cls in (Money, FullName, Address, Emails, Phones, Link, RichText, DestRef, AttachTo,
                                          UserRef, FileRef)}


def to_jsonable(value):
    """Neutral values → JSON-safe data that :func:`from_jsonable` turns back (ledger before-images)."""
    import dataclasses
    import datetime as dt

    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__,
                **{f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Decimal):
        return {"__decimal__": format(value, "f")}
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dt.date):
        return {"__date__": value.isoformat()}
    return value


def from_jsonable(data):
    import datetime as dt

    if isinstance(data, list):
        return [from_jsonable(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__decimal__" in data:
        return Decimal(data["__decimal__"])
    if "__datetime__" in data:
        return dt.datetime.fromisoformat(data["__datetime__"])
    if "__date__" in data:
        return dt.date.fromisoformat(data["__date__"])
    if "__type__" in data:
        cls = _TYPES[data["__type__"]]
        kwargs = {k: from_jsonable(v) for k, v in data.items() if k != "__type__"}
        for key, value in kwargs.items():
            if isinstance(value, list):
                kwargs[key] = tuple(value)
        return cls(**kwargs)
    return {k: from_jsonable(v) for k, v in data.items()}
