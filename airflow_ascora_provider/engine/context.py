"""Everything one engine step needs, rebuilt from durable state each time a task runs.

A task never receives records from another task: it gets names (run id, staging path, snapshot,
destination, connection ids) and rebuilds the rest here from staging and the ledger, which is what
lets Airflow retry a task or run it on another worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from json.encoder import encode_basestring as _encode_text
import logging
import operator
import zoneinfo
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import cached_property
from typing import Any

from airflow_ascora_provider.destinations.spec import Destination
from airflow_ascora_provider.ledger import Ledger
from airflow_ascora_provider.mapping.spec import Mapping, load_mapping
from airflow_ascora_provider.source.staging import Snapshot

log = logging.getLogger(__name__)


class MappingNotApproved(RuntimeError):
    """The load refuses to run on a mapping whose hash is not the approved one."""


@dataclass
class MigrationContext:
    run_id: str
    destination_name: str
    ledger: Ledger
    staging_path: str
    snapshot_id: str
    mapping: Mapping
    destination_conn_id: str | None = None
    destination_options: dict[str, Any] = field(default_factory=dict)
    fallback_owner_email: str | None = None
    field_issue_policy: str = "quarantine"  # or "load_empty": load the record with the unreadable field empty
    _destination: Destination | None = None

    @cached_property
    def snapshot(self) -> Snapshot:
        return Snapshot(self.staging_path, self.snapshot_id)

    @cached_property
    def as_of(self) -> dt.datetime:
        """What date conditions in ``when`` measure age from: the snapshot's extraction time (or the
        mapping's pinned ``reference_time``), never the clock, so a retry or re-run sends every
        record to the same map."""
        return self.mapping.condition_time(self.snapshot.manifest()["extracted_at"])

    @property
    def destination(self) -> Destination:
        if self._destination is None:
            from airflow_ascora_provider.destinations.manager import get_destination

            self._destination = get_destination(
                self.destination_name, self.destination_conn_id, **self.destination_options
            )
        return self._destination

    def use_destination(self, destination: Destination) -> None:
        self._destination = destination

    def close(self) -> None:
        if self._destination is not None:
            self._destination.close()

    def require_approved_mapping(self) -> None:
        approved = self.ledger.approved_mapping(self.destination_name)
        if approved is None:
            raise MappingNotApproved(
                f"no approved mapping for {self.destination_name}: run the mapping approval step first"
            )
        if approved["mapping_hash"] != self.mapping.hash:
            raise MappingNotApproved(
                f"the mapping differs from the one approved on {approved['approved_at']} by "
                f"{approved['approved_by']} (approved {approved['mapping_hash'][:12]}, "
                f"now {self.mapping.hash[:12]}); approve the new mapping before loading"
            )


def approved_mapping_or_default(ledger: Ledger, destination: str, default_text: str | None = None) -> Mapping:
    """The mapping that was approved for this destination (exact text), else the given default."""
    approved = ledger.approved_mapping(destination)
    if approved is not None:
        return load_mapping(approved["mapping_text"])
    if default_text is None:
        raise MappingNotApproved(f"no approved mapping for {destination}")
    return load_mapping(default_text)


# A digest says how it was made: ``2:`` and 32 hex digits (:func:`digests_of`). Ledgers written by
# releases before it hold the first way's bare 32 digits (:func:`payload_hash_v1`); a load still
# recognises those (``MapLoader.prepare``), so an upgrade mid-migration rewrites nothing.
DIGEST_PREFIX = "2:"


def payload_hash(payload: dict[str, Any]) -> str:
    """Hash of what we send: an unchanged payload on a re-run or delta means no write at all.

    The payload's values in key order, each as :func:`value_json` writes it, joined by commas, under
    the hash of its keys (:func:`digests_of`). ``engine.columnar.payload_digests`` makes the same
    digest for a batch from its columns.
    """
    keys = sorted(payload)
    return digests_of(keys, [",".join([value_json(payload[key]) for key in keys])])[0]


def digests_of(keys: list[str], texts: Iterable[str]) -> list[str]:
    """The digests of payloads with these ``keys`` (in order) whose values are written as ``texts``
    (each: the values' JSON, joined by commas).

    The first digest hashed each payload's whole JSON text, its keys in every record: most of the
    bytes hashed, and a format of two strings per field (a job has fifty-odd). The keys are the same
    for every record of a map, so they are hashed once, as the hash's personalisation (BLAKE2's
    parameter for telling apart hashes of different kinds, which costs no extra block): payloads
    with other keys hash apart. The values alone, comma-joined JSON, read back one way only.

    Each digest starts from a copy of a hash already set up with the keys' personalisation: setting
    up BLAKE2's parameters anew took a fifth of a digest's time (140 of 720 ns for a 490-byte text).
    """
    start = _KEYED_HASHES.get(tuple(keys))
    if start is None:
        if len(_KEYED_HASHES) > 1000:
            _KEYED_HASHES.clear()
        person = hashlib.blake2b(_encode(list(keys)).encode(), digest_size=16).digest()
        start = _KEYED_HASHES[tuple(keys)] = hashlib.blake2b(digest_size=16, person=person)
    copy, prefix = start.copy, DIGEST_PREFIX
    digests = []
    for data in map(str.encode, texts):
        hashed = copy()
        hashed.update(data)
        digests.append(prefix + hashed.hexdigest())
    return digests


# A payload's keys -> a hash personalised with them that has hashed nothing (copied, never updated).
_KEYED_HASHES: dict[tuple[str, ...], Any] = {}


def payload_hash_v1(payload: dict[str, Any]) -> str:
    """The first digest: the payload's whole canonical JSON (keys in order, no spaces), hashed. What
    ledgers written before :data:`DIGEST_PREFIX` hold; a load compares a payload with such an entry
    by it (see :func:`is_digest_v1`)."""
    return hashlib.blake2b(_encode(payload).encode("utf-8"), digest_size=16).hexdigest()


def is_digest_v1(digest: str | None) -> bool:
    """Whether a ledger's digest was made by :func:`payload_hash_v1` (32 hex digits, no version)."""
    return digest is not None and len(digest) == 32 and ":" not in digest


class _Converters(dict):
    """Class → the function that turns its values into what ``json`` can write, chosen on first use.

    Every neutral value of every payload (refs, dates, amounts) goes through here, so the class
    checks run once per class per process, not per value, and a value costs one dictionary look-up
    and its converter.
    """

    def __missing__(self, kind: type) -> Callable[[Any], Any]:
        convert = self[kind] = _converter_for(kind)
        return convert


def _converter_for(kind: type) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(kind):
        return _dataclass_converter(kind)
    if issubclass(kind, Decimal):
        return _decimal_text
    if issubclass(kind, (dt.datetime, dt.date)):
        return kind.isoformat  # the class's own method, called directly: no Python frame per value
    if issubclass(kind, (set, frozenset, tuple)):
        return list

    def refuse(value: Any) -> Any:
        raise TypeError(f"cannot serialise {type(value).__name__}")

    return refuse


def _decimal_text(value: Decimal) -> str:
    """An amount as the digest writes it (see :func:`_write_decimal`), without the quotes."""
    return _write_decimal(value)[1:-1]


def _write_decimal(value: Decimal) -> str:
    """An amount as the digest writes it: ``format(value.normalize(), "f")`` in quotes, plain digits
    without trailing zeros (``10.50`` and ``10.5`` are one amount).

    An amount read from staging has a fixed number of places and no exponent, and for those the
    trimmed ``str`` is the same text at a third of the cost (amounts are a tenth of a payload's
    values). Anything else (an exponent, a special value) goes the long way.
    """
    text = str(value)
    if "E" not in text:
        if "." in text:
            return '"' + text.rstrip("0").rstrip(".") + '"'
        if text[-1:].isdigit():
            return '"' + text + '"'
    return '"' + format(value.normalize(), "f") + '"'


def write_decimals(values: list[Decimal]) -> list[str]:
    """:func:`_write_decimal` over a column of amounts (no none), without a Python call an amount:
    a column read from staging has neither exponents nor special values, and when some value has
    one the whole column is written value by value."""
    texts = list(map(str, values))
    joined = "".join(texts)
    if "E" in joined or "N" in joined or "I" in joined:  # 1E+3, NaN, sNaN, Infinity
        return list(map(_write_decimal, values))
    return ['"' + text.rstrip("0").rstrip(".") + '"' if "." in text else '"' + text + '"' for text in texts]


def _dataclass_converter(kind: type) -> Callable[[Any], Any]:
    """``{"__type__": class name, compared field: value ...}``.

    Only compared fields count: a file's staging path changes per snapshot, its bytes do not. When
    every field is compared and an instance holds nothing but its fields, the instance's own
    ``__dict__`` is that mapping already, copied in one step rather than read field by field.
    """
    names = tuple(f.name for f in dataclasses.fields(kind) if f.compare)
    every = frozenset(f.name for f in dataclasses.fields(kind))

    def by_name(value: Any) -> dict[str, Any]:
        return {"__type__": kind.__name__, **{name: getattr(value, name) for name in names}}

    if len(names) < len(every) or hasattr(kind, "__slots__"):
        return by_name

    def whole(value: Any) -> dict[str, Any]:
        attributes = value.__dict__
        return {"__type__": kind.__name__, **attributes} if attributes.keys() == every else by_name(value)

    return whole


_CONVERTERS = _Converters()


def _plain(value: Any) -> Any:
    """JSON form of a value ``json`` cannot write (see :class:`_Converters`)."""
    return _CONVERTERS[type(value)](value)


# One encoder for every payload: ``json.dumps`` with options builds a new JSONEncoder per call, which
# cost about a fifth of the hash. The text (and so the digest existing ledgers hold) is the same.
# No circular-reference check: a payload is a tree of fresh values a transform built (it cannot hold
# itself), and keeping a table of every container it holds cost a twelfth of the hash.
_encode = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_plain,
                           check_circular=False).encode


def value_json(value: Any) -> str:
    """The JSON text :func:`payload_hash` writes for ``value`` as one value of a payload: the text the
    encoder writes for it (and, inside a payload, the first digest wrote), made without the encoder
    where that is simple. ``engine.columnar.payload_digests`` writes a batch's values with the same
    writers, a column at a time, and so gives the same digests.
    """
    return _WRITERS[type(value)](value)


def json_writer(kind: type) -> Callable[[Any], str]:
    """:func:`value_json` for values of exactly this class, chosen once per class."""
    return _WRITERS[kind]


class _Writers(dict):
    """Class → the function that writes its values as the encoder does, without it where that is simple.

    Text, none, booleans and integers are written directly; a value ``json`` cannot write goes through
    its converter (:class:`_Converters`, the one the encoder's ``default`` calls): a converted value
    that is text (a date, an amount) is written directly, a dataclass as its converter's dict (keys
    in order, each value written by its own class's writer); anything else is the encoder's.
    """

    def __missing__(self, kind: type) -> Callable[[Any], str]:
        writer = self[kind] = _writer_for(kind)
        return writer


def _writer_for(kind: type) -> Callable[[Any], str]:
    if kind is str:
        return _encode_text
    if kind is type(None):
        return lambda value: "null"
    if kind is bool:
        return {True: "true", False: "false"}.__getitem__  # no Python frame a value
    if kind is int:
        return int.__repr__
    if kind in (list, tuple):  # most are a value's other e-mails or phones: texts, often none
        return _write_sequence
    if issubclass(kind, (str, int, float, list, tuple, dict)):  # what the encoder writes itself
        return _encode
    if issubclass(kind, Decimal):  # digits, sign and point: nothing to escape
        return _write_decimal
    if kind is dt.datetime:
        return _write_datetime
    if kind is dt.date:
        return _write_date
    if issubclass(kind, dt.date):  # an ISO date or timestamp: nothing to escape either
        iso = kind.isoformat
        return lambda value: '"' + iso(value) + '"'
    if dataclass_text(kind) is not None:
        return _dataclass_writer(kind)
    return _encode


# Classes written as their base class is, never field by field, even when declared as dataclasses.
_WRITTEN_AS_WHAT_THEY_ARE = (str, int, float, list, tuple, dict, Decimal, dt.date)


class _DayTexts(dict):
    """The texts of the days written so far (``"2026-12-05``, by ordinal), made on first use and
    looked up in C (a column's timestamps and dates are written without a Python call each). A
    tenant's timestamps fall on a few thousand days, and ``isoformat`` (1.1 µs a UTC timestamp, its
    offset worked out through the zone each time) was the dearest value a payload's digest writes.
    Cleared when it holds a century."""

    def __missing__(self, ordinal: int) -> str:
        if len(self) > 36_600:
            self.clear()
        text = self[ordinal] = '"' + dt.date.fromordinal(ordinal).isoformat()
        return text


_DAY_TEXTS = _DayTexts()
_day_text = _DAY_TEXTS.__getitem__
_ARROW_UTC, _PYTHON_UTC = zoneinfo.ZoneInfo("UTC"), dt.timezone.utc  # staging's timestamps hold Arrow's
_UTC_ZONES = frozenset({_ARROW_UTC, _PYTHON_UTC})


def _write_datetime(value: dt.datetime) -> str:
    """``'"' + value.isoformat() + '"'``: a UTC or naive timestamp of whole seconds (staging's) from its
    day's text and its time; any other (a fraction of a second, another zone) by ``isoformat``."""
    zone = value.tzinfo
    if value.microsecond or (zone is not None and zone is not _ARROW_UTC and zone is not _PYTHON_UTC):
        return '"' + value.isoformat() + '"'
    return ('%sT%02d:%02d:%02d+00:00"' if zone is not None else '%sT%02d:%02d:%02d"') % (
        _day_text(value.toordinal()), value.hour, value.minute, value.second)


def _write_date(value: dt.date) -> str:
    """``'"' + value.isoformat() + '"'``, from the day's text."""
    return _day_text(value.toordinal()) + '"'


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
# The epoch in each UTC zone: a difference of two timestamps of one zone object is taken without
# asking the zone for either offset (a third of the cost).
_UTC_EPOCHS = {zone: dt.datetime(1970, 1, 1, tzinfo=zone) for zone in _UTC_ZONES}
# A UTC time's text in two parts, every value made once: the minute of the day and the second of it.
_UTC_MINUTES = tuple("T%02d:%02d:" % divmod(minute, 60) for minute in range(1440))
_UTC_SECONDS = tuple('%02d+00:00"' % second for second in range(60))
_tzinfo_of, _microseconds_of = operator.attrgetter("tzinfo"), operator.attrgetter("microseconds")


def write_datetimes(values: list[dt.datetime]) -> list[str]:
    """:func:`_write_datetime` over a column of timestamps (no none), without a Python call a value.

    A staged timestamp is a whole second of UTC: its text is its day's, its minute's and its
    second's, found from its distance to the epoch (a subtraction in C, where ``isoformat`` asks the
    zone for the offset of every value). A column holding any other (naive, another zone, a fraction
    of a second) is written value by value.
    """
    zones = set(map(_tzinfo_of, values))
    if not zones or not zones <= _UTC_ZONES:
        return list(map(_write_datetime, values))
    epoch = _UTC_EPOCHS[zones.pop()]  # either, when both are there
    since = [value - epoch for value in values]
    if any(map(_microseconds_of, since)):
        return list(map(_write_datetime, values))
    days, minutes, seconds, epoch_day = _DAY_TEXTS, _UTC_MINUTES, _UTC_SECONDS, _EPOCH_ORDINAL
    return [days[delta.days + epoch_day] + minutes[(second := delta.seconds) // 60] + seconds[second % 60]
            for delta in since]


def write_dates(values: list[dt.date]) -> list[str]:
    """:func:`_write_date` over a column of dates (no none)."""
    days = _DAY_TEXTS
    return [days[ordinal] + '"' for ordinal in map(dt.date.toordinal, values)]


def _write_sequence(value: list | tuple) -> str:
    """A list or tuple as the encoder writes it: each item by its own class's writer, as the encoder
    writes an item inside a list as it writes it alone. A note's parents (``AttachTo.refs``, a tuple
    of references) went through the encoder's ``default`` and cost three times as much."""
    if not value:
        return "[]"
    if all(type(item) is str for item in value):
        return "[" + ",".join(map(_encode_text, value)) + "]"
    writers = _WRITERS
    return "[" + ",".join([writers[type(item)](item) for item in value]) + "]"


def dataclass_text(kind: type) -> tuple[str, tuple[str, ...]] | None:
    """How the writers write a value class as a dataclass (see :func:`_dataclass_writer`): its text with
    a ``%s`` for each compared field, and those fields in that order; None for any other class."""
    if (not (dataclasses.is_dataclass(kind) and isinstance(kind, type)) or hasattr(kind, "__slots__")
            or issubclass(kind, _WRITTEN_AS_WHAT_THEY_ARE)):
        return None
    shape = _DATACLASS_TEXTS.get(kind)
    if shape is None:
        fields = [f.name for f in dataclasses.fields(kind) if f.compare]
        escaped = {name: _encode_text(name).replace("%", "%%") for name in fields}
        type_text = _encode_text("__type__") + ":" + _encode_text(kind.__name__).replace("%", "%%")
        # Keys in order; a field's value is the next ``%s``, in the order of the fields given.
        names = sorted(["__type__", *fields])
        text = "{" + ",".join(type_text if name == "__type__" else escaped[name] + ":%s" for name in names) + "}"
        shape = _DATACLASS_TEXTS[kind] = (text, tuple(name for name in names if name != "__type__"))
    return shape


_DATACLASS_TEXTS: dict[type, tuple[str, tuple[str, ...]]] = {}


def _dataclass_writer(kind: type) -> Callable[[Any], str]:
    """``{"__type__":"Name","field":value ...}`` with the keys in order, as the encoder writes the
    converter's dict (:func:`_dataclass_converter`): only compared fields. The text around the values
    is made once per class; per value, its fields are read in one step and each written by its class's writer."""
    text, fields_in_order = dataclass_text(kind)
    if not fields_in_order:
        return lambda value: text
    writers = _WRITERS
    if len(fields_in_order) == 1:
        (only,) = fields_in_order
        return lambda value: text % (value_json(getattr(value, only)),)
    if len(fields_in_order) == 2:  # most value objects (an amount, a reference, a name, a link)
        first_name, second_name = fields_in_order

        def write_two(value: Any) -> str:
            first, second = getattr(value, first_name), getattr(value, second_name)
            return text % (writers[type(first)](first), writers[type(second)](second))

        return write_two
    read = operator.attrgetter(*fields_in_order)

    def write(value: Any) -> str:
        return text % tuple([writers[type(field)](field) for field in read(value)])

    return write


_WRITERS = _Writers()
