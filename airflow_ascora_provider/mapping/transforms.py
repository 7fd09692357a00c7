"""Field transforms: the business rules that turn a canonical Ascora record into destination values.

Each transform is small, named in the mapping file, checked when the mapping is loaded (``check``)
and applied per record (``apply``). Transforms never call an API: lookups go through the crosswalk
the engine pre-fetched for the batch, owners through the user resolution stored for the run, related
records through an index of staged data. A value that cannot be transformed raises
:class:`TransformError` naming the field and value, and the engine quarantines that record only.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import string
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache, partial
from itertools import repeat
from dataclasses import dataclass, fields as dataclass_fields
from decimal import Decimal
from typing import Any, Protocol

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
from airflow_ascora_provider.source.columns import KindedColumn, kinds_of, with_kinds_of
from airflow_ascora_provider.source.model import ObjectSchema


class TransformError(ValueError):
    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (value {value!r})")


class TransformContext(Protocol):
    currency: str

    def resolve(self, maps: list[str], source_id: str) -> DestRef | None: ...

    def parents(self, map_name: str) -> Mapping[str, DestRef]:
        """The references ``resolve`` finds in one map, by source id (what a column of one map's
        parents is looked up in)."""
        ...

    def owner(self, staff_name: str | None) -> UserRef | None: ...

    def related(self, object_name: str, key_field: str, key: Any) -> list[dict[str, Any]]: ...

    #: The snapshot's extraction time (or the mapping's pinned reference time): what ``choose``'s
    #: date conditions measure age from, as a map's ``when`` does.
    as_of: dt.datetime | None


#: What a transform bound to one field map computes per record: ``(record, ctx) -> value``.
Getter = Callable[[dict[str, Any], TransformContext], Any]


class Batch(Protocol):
    """The records of a batch as a column transform reads them (``engine.columnar.Batch``)."""

    n: int
    records: list[dict[str, Any]]

    def column(self, name: str) -> list[Any]: ...

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any: ...


#: What a transform bound to one field map computes for a whole batch at once: ``(batch, ctx) ->
#: [value per record]``, the same values its :data:`Getter` gives record by record. It may raise
#: (a value it cannot convert, a value a rule refuses): the engine then asks the getter record by
#: record, which names the record and field. See :attr:`Transform.columns`.
ColumnGetter = Callable[[Batch, TransformContext], list[Any]]


@dataclass(frozen=True)
class Transform:
    """A named transform, given as ``apply`` or as ``bind``; the other is derived from it.

    ``apply(record, fm, ctx)`` reads the field map's options per record. ``bind(fm)`` reads them once
    and returns the :data:`Getter` for that field map: what the engine calls per record, since the
    options read, type parsers chosen and sub-fields built again for every record and field were much
    of a job map's transform. ``apply`` of a bound transform binds per call (tests, one-off callers).
    """

    name: str
    apply: Callable[[dict[str, Any], Any, TransformContext], Any] | None = None  # (record, FieldMap, ctx)
    default_sources: tuple[str, ...] = ()
    check: Callable[[Any, ObjectSchema], list[str]] = lambda fm, schema: []
    description: str = ""
    bind: Callable[[Any], Getter] | None = None  # FieldMap -> Getter
    #: ``FieldMap -> ColumnGetter | None``: the same transform over a whole batch's column (list
    #: comprehensions, no Python call per record and field), for the simple transforms most fields
    #: use; None (or a binder answering None) means the engine calls the getter per record.
    columns: Callable[[Any], ColumnGetter | None] | None = None

    def __post_init__(self) -> None:
        if self.bind is None:
            object.__setattr__(self, "bind", _binding(self.apply))
        elif self.apply is None:
            object.__setattr__(self, "apply", _applying(self.bind))


def _binding(apply: Callable[[dict[str, Any], Any, TransformContext], Any]) -> Callable[[Any], Getter]:
    def bind(fm) -> Getter:
        return lambda record, ctx: apply(record, fm, ctx)

    return bind


def _applying(bind: Callable[[Any], Getter]) -> Callable[[dict[str, Any], Any, TransformContext], Any]:
    def apply(record, fm, ctx):
        return bind(fm)(record, ctx)

    return apply


def _values(record: dict[str, Any], fm) -> list[Any]:
    return [record.get(s) for s in fm.sources]


def _first_in(sources: tuple[str, ...], record: dict[str, Any], ctx: Any = None) -> Any:
    """The first source that has a value, so ``from: [completed_date, expected_date]`` falls back in order."""
    for source in sources:
        value = record.get(source)
        if value is not None and value != "":
            return value
    return None


def _first(record, fm) -> Any:
    return _first_in(fm.sources, record)


def _first_of(sources: tuple[str, ...]) -> Getter:
    """:func:`_first_in` for these sources, as a getter (``ctx`` unused). One source, the usual case,
    is read without the loop: its value, empty text as none."""
    if len(sources) != 1:
        return partial(_first_in, tuple(sources))
    (source,) = sources

    def first(record: dict[str, Any], ctx: Any = None) -> Any:
        value = record.get(source)
        return None if value == "" else value

    return first


def _first_column(sources: tuple[str, ...]) -> Callable[[Batch], list[Any]] | None:
    """:func:`_first_of` over a batch: the one source's column, empty text as none. Several sources
    (rare) are left to the getter."""
    if len(sources) != 1:
        return None
    (source,) = sources

    def first(batch: Batch) -> list[Any]:
        column = batch.column(source)
        # Amounts, dates, flags: no empty text to find, and asking (``amount == ""``) costs a Decimal
        # its abstract-class checks, a quarter of a microsecond a value. Texts: most columns hold no
        # empty one, and looking for it in C costs a third of the comprehension that replaces it.
        kinds = kinds_of(column)
        if str not in kinds or "" not in column:
            return with_kinds_of(column, column)
        emptied = [None if value == "" else value for value in column]
        return KindedColumn(emptied, frozenset(kinds) | {type(None)})

    return first


def _bind_copy(fm) -> Getter:
    return _first_of(fm.sources)


def _columns_copy(fm) -> ColumnGetter | None:
    first = _first_column(fm.sources)
    return None if first is None else (lambda batch, ctx: first(batch))


def _concat(record, fm, ctx):
    parts = [str(v) for v in _values(record, fm) if v not in (None, "")]
    return fm.options.get("sep", " ").join(parts) or None


def _source_columns(batch: Batch, sources: tuple[str, ...]) -> tuple[list[list[Any]], bool]:
    """The batch's column of each source, and whether they hold only texts and none (then a value's
    truth is whether it is a non-empty text, and ``filter(None, row)`` drops exactly the empty ones)."""
    columns = [batch.column(source) for source in sources]
    kinds = set().union(*(map(type, column) for column in columns)) if columns else set()
    return columns, kinds <= _TEXT_OR_NONE


_TEXT_OR_NONE = {str, type(None)}
# What a column transform's values can be (``KindedColumn``), so the digest need not look.
_NONE = frozenset({type(None)})
_AMOUNTS = frozenset({Decimal})
_MONEY = frozenset({Money})
_PARENTS = frozenset({DestRef, type(None)})


def _source_rows(batch: Batch, sources: tuple[str, ...]) -> Iterator[tuple[Any, ...]] | None:
    """Each record's values of ``sources`` (zipped columns), or None when there are no sources."""
    return zip(*[batch.column(source) for source in sources]) if sources else None


def _columns_concat(fm) -> ColumnGetter:
    sources, sep = tuple(fm.sources), fm.options.get("sep", " ")

    def concat(batch, ctx):
        columns, texts = _source_columns(batch, sources)
        if not columns:
            return [None] * batch.n
        if texts:
            return [sep.join(filter(None, row)) or None for row in zip(*columns)]
        return [sep.join([str(v) for v in row if v not in (None, "")]) or None for row in zip(*columns)]

    return concat


def _bind_template(fm) -> Getter:
    template = fm.options["template"]

    def fill(record, ctx):
        try:
            text = template.format_map(_Blank(record))
        except (KeyError, ValueError) as exc:
            raise TransformError(fm.dest_field, template, f"template cannot be filled: {exc}") from exc
        return text.strip() or None

    return fill


def _columns_template(fm) -> ColumnGetter | None:
    """A template of plain placeholders (``{job_number} {name}``) over columns of texts: one ``%``
    formatting a record. Attribute or index placeholders, format specs and conversions, and columns
    holding anything but text, are left to the getter (``format`` of a non-text value is its own)."""
    template = fm.options.get("template")
    if not isinstance(template, str):
        return None
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    pattern, fields = [], []
    for literal, name, spec, conversion in parsed:
        pattern.append(literal.replace("%", "%%"))
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            return None
        pattern.append("%s")
        fields.append(name)
    text = "".join(pattern)
    sources = tuple(fields)

    def fill(batch, ctx):
        columns, texts = _source_columns(batch, sources)
        if not texts:
            raise TypeError("a placeholder holds a value that is not text: the getter formats it")
        if not columns:
            return [text.strip() or None] * batch.n
        columns = [["" if v is None else v for v in column] if None in column else column for column in columns]
        return [(text % row).strip() or None for row in zip(*columns)]

    return fill


class _Blank:
    """A record as a template reads it: a missing or empty field is blank text. A view, not a copy:
    copying a job's fifty fields per record to fill one name was most of the template's cost."""

    __slots__ = ("record",)

    def __init__(self, record: dict[str, Any]):
        self.record = record

    def __getitem__(self, key):
        value = self.record.get(key)
        return "" if value is None else value


def split_name(text: str | None) -> FullName | None:
    if not text:
        return None
    parts = text.strip().split()
    if len(parts) == 1:
        return FullName(parts[0], None)
    return FullName(" ".join(parts[:-1]), parts[-1])


def _full_name(record, fm, ctx):
    first, last = (_values(record, fm) + [None, None])[:2]
    if first or last:
        return FullName(first or None, last or None)
    fallback = fm.options.get("fallback")
    return split_name(record.get(fallback)) if fallback else None


def _columns_full_name(fm) -> ColumnGetter:
    first_source, last_source = (tuple(fm.sources) + (None, None))[:2]
    fallback = fm.options.get("fallback")

    def names(batch, ctx):
        none = [None] * batch.n
        firsts = batch.column(first_source) if first_source else none
        lasts = batch.column(last_source) if last_source else none
        if fallback:
            return [FullName(first or None, last or None) if first or last else split_name(whole)
                    for first, last, whole in zip(firsts, lasts, batch.column(fallback))]
        return [FullName(first or None, last or None) if first or last else None
                for first, last in zip(firsts, lasts)]

    return names


def _split_name(record, fm, ctx):
    return split_name(_first(record, fm))


def _address(record, fm, ctx):
    vals = dict(zip(_ADDRESS_PARTS, _values(record, fm)))
    address = Address(**vals)
    if address.is_empty():
        return None
    if not address.country and fm.options.get("default_country"):
        address = Address(**{**vals, "country": fm.options["default_country"]})
    return address


def _columns_address(fm) -> ColumnGetter:
    """:func:`_address` over columns: a record with no street, suburb, state or postcode gets none
    without an Address built first (a third of the records of a tenant's contacts)."""
    sources = tuple(fm.sources)[:len(_ADDRESS_PARTS)]
    default_country = fm.options.get("default_country")
    has_country = len(sources) > _COUNTRY

    def addresses(batch, ctx):
        rows = _source_rows(batch, sources)
        if rows is None:
            return [None] * batch.n
        out = []
        for row in rows:
            if not any(row[:_COUNTRY]):
                out.append(None)
            elif default_country and not (has_country and row[_COUNTRY]):
                out.append(Address(**{**dict(zip(_ADDRESS_PARTS, row)), "country": default_country}))
            else:
                out.append(Address(*row))
        return out

    return addresses


_ADDRESS_PARTS = tuple(part.name for part in dataclass_fields(Address))  # line1 ... longitude, in the class's order
_COUNTRY = _ADDRESS_PARTS.index("country")  # the parts before it decide whether there is an address


def _bind_currency(fm) -> Getter:
    first, currency = _first_of(fm.sources), fm.options.get("currency")

    def money(record, ctx):
        value = first(record)
        if value is None:
            return None
        return Money(Decimal(value), currency or ctx.currency)

    return money


def _columns_currency(fm) -> ColumnGetter | None:
    first, currency = _first_column(fm.sources), fm.options.get("currency")
    if first is None:
        return None

    def money(batch, ctx):
        code = currency or ctx.currency
        values = first(batch)
        kinds = kinds_of(values)
        if kinds == _AMOUNTS:  # staged amounts without none: Decimals already, each wrapped with no step of ours
            return KindedColumn(map(Money, values, repeat(code)), _MONEY)
        # ``Decimal(amount)`` of a Decimal would only copy it.
        return KindedColumn([None if value is None else Money(value if type(value) is Decimal else Decimal(value), code)
                             for value in values], _MONEY | (kinds & _NONE))

    return money


def _converting(convert: Callable[[Any], Any]) -> Callable[[Any], Getter]:
    """A binder: the first source's value through ``convert``; no value stays none."""
    def bind(fm) -> Getter:
        first = _first_of(fm.sources)

        def converted(record, ctx):
            value = first(record)
            return None if value is None else convert(value)

        return converted

    return bind


def _converting_columns(convert: Callable[[Any], Any]) -> Callable[[Any], ColumnGetter | None]:
    """:func:`_converting` over a batch's column."""
    def bind(fm) -> ColumnGetter | None:
        first = _first_column(fm.sources)
        if first is None:
            return None
        return lambda batch, ctx: [None if value is None else convert(value) for value in first(batch)]

    return bind


_bind_number = _converting(Decimal)


def _bind_date(fm) -> Getter:
    first = _first_of(fm.sources)

    def date(record, ctx):
        value = first(record)
        if isinstance(value, dt.datetime):
            return value.date()
        return value

    return date


def _columns_date(fm) -> ColumnGetter | None:
    first, datetime = _first_column(fm.sources), dt.datetime
    if first is None:
        return None
    return lambda batch, ctx: [v.date() if isinstance(v, datetime) else v for v in first(batch)]


def _bind_datetime(fm) -> Getter:
    first = _first_of(fm.sources)

    def datetime(record, ctx):
        value = first(record)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return value

    return datetime


def _columns_datetime(fm) -> ColumnGetter | None:
    first, date, datetime, utc = _first_column(fm.sources), dt.date, dt.datetime, dt.UTC
    if first is None:
        return None
    return lambda batch, ctx: [datetime(v.year, v.month, v.day, tzinfo=utc)
                               if isinstance(v, date) and not isinstance(v, datetime) else v
                               for v in first(batch)]


def _email(record, fm, ctx):
    values = [v for v in _values(record, fm) if v]
    if not values:
        return None
    return Emails(values[0], tuple(values[1:]))


def _phone(record, fm, ctx):
    values = [v for v in _values(record, fm) if v]
    if not values:
        return None
    return Phones(values[0], tuple(values[1:]))


def _listing(kind: type) -> Callable[[Any], ColumnGetter]:
    """:func:`_email` / :func:`_phone` over columns: the non-empty values, the first as the primary."""
    def bind(fm) -> ColumnGetter:
        sources = tuple(fm.sources)

        def listed(batch, ctx):
            rows = _source_rows(batch, sources)
            if rows is None:
                return [None] * batch.n
            return [kind(values[0], tuple(values[1:])) if (values := [v for v in row if v]) else None
                    for row in rows]

        return listed

    return bind


def _link(record, fm, ctx):
    value = _first(record, fm)
    if not value:
        return None
    url = value.strip()
    if "@" in url and "/" not in url:  # an e-mail: its domain is the company's web address
        url = url.split("@", 1)[1]
    if not re.match(r"^https?://", url):
        url = "https://" + url
    return Link(url)


def _rich_text(record, fm, ctx):
    value = _first(record, fm)
    return None if not value else RichText(str(value))


def _columns_rich_text(fm) -> ColumnGetter | None:
    if len(fm.sources) != 1:
        return None
    (source,) = fm.sources
    return lambda batch, ctx: [RichText(v if type(v) is str else str(v)) if v else None
                               for v in batch.column(source)]


def _file(record, fm, ctx):
    name, uri, sha256, size, content_type = (_values(record, fm) + [None] * 5)[:5]
    if not uri or not sha256:
        raise TransformError(fm.sources[1] if len(fm.sources) > 1 else fm.dest_field, name,
                             "the file's bytes were not staged (see the extraction issues for why)")
    return FileRef(sha256=sha256, size=int(size or 0), name=name or "", content_type=content_type, uri=uri)


_bind_boolean = _converting(bool)


def _bind_constant(fm) -> Getter:
    value = fm.options.get("value")
    return lambda record, ctx: value


def _columns_constant(fm) -> ColumnGetter:
    value = fm.options.get("value")
    return lambda batch, ctx: [value] * batch.n


def _bind_value_map(fm) -> Getter:
    first, values = _first_of(fm.sources), fm.options.get("values") or {}
    for_empty, default = fm.options.get("default_for_empty"), fm.default

    def pick(record, ctx):
        value = first(record)
        if value is None:
            return for_empty
        if value in values:
            return values[value]
        if default is not None:  # the mapping's fallback for values it does not list
            return default
        raise TransformError(fm.sources[0], value,
                             f"no value-map entry for {value!r} in {fm.dest_field}; add it to the mapping")

    return pick


def _columns_value_map(fm) -> ColumnGetter | None:
    """:func:`_bind_value_map` over a column: values the map lists (or none) in one comprehension, the
    rest through the getter's own ``pick`` (the default, or the error)."""
    first, values = _first_column(fm.sources), fm.options.get("values") or {}
    if first is None:
        return None
    for_empty, pick = fm.options.get("default_for_empty"), _bind_value_map(fm)

    def picks(batch, ctx):
        return [for_empty if value is None else values[value] if value in values else pick({fm.sources[0]: value}, ctx)
                for value in first(batch)]

    return picks


def _check_value_map(fm, schema) -> list[str]:
    if not isinstance(fm.options.get("values"), dict):
        return ["value_map needs 'values: {ascora value: destination value}'"]
    return []


def _type_reader(fm) -> Callable[[Any], Any] | None:
    """Custom fields and form answers are text in Ascora; ``as`` reads them as the inferred type.

    The reader of a present value, or None when the field map has no (known) ``as``: the value as is.
    """
    kind = fm.options.get("as")
    if not kind:
        return None
    from airflow_ascora_provider.source.coerce import CoercionError, to_bool, to_date, to_datetime, to_decimal

    parse = {"number": to_decimal, "date": to_date, "datetime": to_datetime, "boolean": to_bool}.get(kind)
    if parse is None:
        return None

    def read(value):
        try:
            return parse(value)
        except (CoercionError, ValueError, ArithmeticError) as exc:
            key = fm.options.get("key", fm.dest_field)
            raise TransformError(fm.dest_field, value, f"{key!r} is not a {kind}: {exc}") from None

    return read


@lru_cache(maxsize=1024)
def json_answers(text: str) -> dict[str, Any]:
    """A JSON field (custom fields, form answers) parsed once for all the keys read from it.

    A job's form answers feed a dozen mapped fields; parsing the text once per field was the largest
    single cost of the job map. Callers read the dict and never change it.
    """
    return json.loads(text)


def _bind_json_key(fm) -> Getter:
    first, key, read = _first_of(fm.sources), fm.options["key"], _type_reader(fm)

    def answer(record, ctx):
        text = first(record)
        if not text:
            return None
        value = json_answers(text).get(key)
        return value if value is None or read is None else read(value)

    return answer


def _columns_json_key(fm) -> ColumnGetter | None:
    first, key, read = _first_column(fm.sources), fm.options["key"], _type_reader(fm)
    if first is None:
        return None
    if read is None:
        return lambda batch, ctx: [json_answers(text).get(key) if text else None for text in first(batch)]
    return lambda batch, ctx: [None if not text or (value := json_answers(text).get(key)) is None else read(value)
                               for text in first(batch)]


def _check_json_key(fm, schema) -> list[str]:
    return [] if fm.options.get("key") else ["json_key needs 'key' (the custom field or form field name)"]


def parent_key(record: dict[str, Any], fm, source: str,
               related: Callable[[str, str, Any], list[dict[str, Any]]]) -> Any:
    """The id a ``lookup``/``attach`` source resolves: the field's value, or with ``through: {object,
    field}`` that field of the ``object`` row the value names (a supplier bill names its job; the
    job names the customer whose account the bill's note goes on)."""
    value = record.get(source)
    through = fm.options.get("through")
    if through is None or value is None or value == "":
        return value
    rows = related(through["object"], "id", value)
    return rows[0].get(through["field"]) if rows else None


def _bind_lookup(fm) -> Getter:
    through, first, required = fm.options.get("through"), _first_of(fm.sources), fm.required
    # Without ``by_type`` the parent maps are the same for every record.
    fixed_maps = None if fm.options.get("by_type") else _maps_for({}, fm)

    def lookup(record, ctx):
        source_id = parent_key(record, fm, fm.sources[0], ctx.related) if through else first(record)
        if source_id is None:
            if required:
                raise TransformError(fm.sources[0], None,
                                     f"{fm.dest_field} needs a parent but the record has none")
            return None
        maps = fixed_maps if fixed_maps is not None else _maps_for(record, fm)
        ref = ctx.resolve(maps, str(source_id)) if maps else None
        if ref is None and required:
            raise TransformError(fm.sources[0], source_id, f"parent {source_id} was not loaded "
                                 f"({' / '.join(maps) or 'no map for its type'})")
        return ref

    return lookup


def _columns_lookup(fm) -> ColumnGetter | None:
    """:func:`_bind_lookup` over a column, for the usual lookup: one source read as is (no ``through``),
    the same parent maps for every record (no ``by_type``). A required parent that is missing makes
    the getter name the record."""
    first = _first_column(fm.sources)
    if first is None or fm.options.get("through") or fm.options.get("by_type"):
        return None
    maps, required = _maps_for({}, fm), fm.required

    def lookups(batch, ctx):
        values = first(batch) if maps else None
        if values is None:
            refs = [None] * batch.n
        elif len(maps) == 1 and kinds_of(values) <= _TEXT_OR_NONE:
            refs = list(map(ctx.parents(maps[0]).get, values))  # ids as text, each found in C (none: no key)
        else:
            resolve = ctx.resolve
            refs = [None if value is None else resolve(maps, str(value)) for value in values]
        if required and None in refs:
            raise TransformError(fm.sources[0], None, "a required parent is missing: asked record by record")
        return KindedColumn(refs, _PARENTS)

    return lookups


def _maps_for(record, fm) -> list[str]:
    by_type = fm.options.get("by_type")
    if by_type:
        maps = by_type["maps"].get(record.get(by_type["field"])) or []
        return [maps] if isinstance(maps, str) else list(maps)
    maps = fm.options.get("map")
    return [maps] if isinstance(maps, str) else list(maps or [])


def _check_lookup(fm, schema) -> list[str]:
    from airflow_ascora_provider.source.model import MODEL

    if not fm.options.get("map") and not fm.options.get("by_type"):
        return ["lookup needs 'map' (the map that wrote the parent) or 'by_type'"]
    through = fm.options.get("through")
    if through is not None:
        if not isinstance(through, dict) or through.get("object") not in MODEL:
            return [f"through needs 'object', one of {sorted(MODEL)}, and 'field'"]
        if not MODEL[through["object"]].has_field(through.get("field", "")):
            return [f"through: {through['object']} has no field {through.get('field')!r}"]
    if len(fm.sources) != 1:
        return ["lookup takes exactly one source field"]
    return []


def _bind_attach(fm) -> Getter:
    # Each source as its own optional one-source lookup, built once rather than per record.
    parents = [(name, _bind_lookup(type(fm)(fm.dest_field, "lookup", (name,), fm.options, False)))
               for name in fm.sources]

    def attach(record, ctx):
        refs = []
        for name, lookup in parents:
            source_id = parent_key(record, fm, name, ctx.related)
            if source_id is None:
                continue
            ref = lookup(record, ctx)
            if ref:
                refs.append(ref)
        if not refs and fm.required:
            raise TransformError(fm.sources[0], record.get(fm.sources[0]),
                                 "no parent record to attach to was loaded")
        return AttachTo(tuple(refs))

    return attach


def _bind_owner(fm) -> Getter:
    first = _first_of(fm.sources)

    def owner(record, ctx):
        name = first(record)
        ref = ctx.owner(name)
        if ref is None and fm.required:
            raise TransformError(fm.sources[0] if fm.sources else fm.dest_field, name,
                                 "no destination user matches and no fallback owner is set")
        return ref

    return owner


def _columns_owner(fm) -> ColumnGetter | None:
    """:func:`_bind_owner` over a column: each staff name asked once per batch (the same answer)."""
    first, get = _first_column(fm.sources), _bind_owner(fm)
    if first is None:
        return None
    source = fm.sources[0]

    def owners(batch, ctx):
        known: dict[Any, Any] = {}
        return [known[name] if name in known else known.setdefault(name, get({source: name}, ctx))
                for name in first(batch)]

    return owners


def _related_parts(fm) -> tuple[str, str, str, bool, Callable[[list[dict[str, Any]]], Any]]:
    """What a ``related`` field reads, bound once: ``(own field, related object, its key field, via,
    the value of a record's related rows (never empty))``. The getter and the column transform share it."""
    opts = fm.options
    object_name, template, key, read = opts["object"], opts.get("template"), opts.get("key"), _type_reader(fm)
    field = opts["field"] if "template" not in opts else None
    aggregate = _aggregate(fm)
    # One row's value is the field's value when the aggregate picks a value (not a sum, count or join).
    single = template is None and fm.options.get("aggregate", "last") in ("first", "last")
    # With ``via`` this record points at the related one (by its id); otherwise the related records
    # point at this one (``by``), or with ``match`` share a value with it (same site).
    via = "via" in opts
    own_field, key_field = (opts["via"], "id") if via else (opts.get("match", "id"), opts["by"])

    def of_rows(rows):
        if len(rows) == 1 and single:  # most records have one related row: the steps below, inline
            value = rows[0].get(field)
            if key:
                value = json_answers(value).get(key) if value else None
            return None if value is None else value if read is None else read(value)
        if template is not None:  # one line per related row, from several of its fields
            values = [template.format_map(_Blank(_dated(r))).strip() for r in rows]
        else:
            values = [r.get(field) for r in rows]
        if key:  # a key inside a JSON field (form answers, custom fields)
            values = [json_answers(v).get(key) if v else None for v in values]
        values = [v if read is None else read(v) for v in values if v is not None]
        return aggregate(values) if values else None

    return own_field, object_name, key_field, via, of_rows


def _related_key(value: Any, via: bool) -> bool:
    """Whether a record's own value can name related rows (``via``: a non-empty id; else any value)."""
    return bool(value) if via else value is not None


def _bind_related(fm) -> Getter:
    """A value from another staged object: the job's quote amount, the job's latest invoice ..."""
    own_field, object_name, key_field, via, of_rows = _related_parts(fm)

    def related(record, ctx):
        value = record.get(own_field)
        if not _related_key(value, via):
            return None
        rows = ctx.related(object_name, key_field, value)
        return of_rows(rows) if rows else None

    return related


def _columns_related(fm) -> ColumnGetter:
    """:func:`_bind_related` over a batch: each record's related rows looked up once per batch for every
    field that reads the same rows (a job's fourteen form answers come from one look-up per job)."""
    own_field, object_name, key_field, via, of_rows = _related_parts(fm)

    def rows_column(batch, ctx):
        related = ctx.related
        return [related(object_name, key_field, value) if _related_key(value, via) else None
                for value in batch.column(own_field)]

    def related(batch, ctx):
        rows_of = batch.memo(("related", own_field, object_name, key_field, via), lambda: rows_column(batch, ctx))
        return [of_rows(rows) if rows else None for rows in rows_of]

    return related


def _aggregate(fm) -> Callable[[list[Any]], Any]:
    """What a ``related`` field makes of its related rows' values (never empty): ``aggregate``."""
    name = fm.options.get("aggregate", "last")
    match name:
        case "first":
            return lambda values: values[0]
        case "last":
            return lambda values: values[-1]
        case "sum":
            return lambda values: sum(values, Decimal(0))
        case "count":
            return len
        case "join":
            sep = fm.options.get("sep", ", ")
            return lambda values: sep.join(str(v) for v in values)

    def unknown(values):
        raise TransformError(fm.dest_field, name, "unknown aggregate")

    return unknown


def _dated(row: dict[str, Any]) -> dict[str, Any]:
    """A related row for a one-line template: timestamps read as their day (a history line, not a log)."""
    return {k: v.date().isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


def template_fields(template: str) -> set[str]:
    """The field names a ``str.format`` template reads."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_related(fm, schema) -> list[str]:
    from airflow_ascora_provider.source.model import MODEL

    opts = fm.options
    problems = []
    if opts.get("object") not in MODEL:
        return [f"related needs 'object', one of {sorted(MODEL)}"]
    other = MODEL[opts["object"]]
    if "template" in opts:
        missing = sorted(n for n in template_fields(opts["template"]) if not other.has_field(n))
        if missing:
            problems.append(f"related: {other.name} has no field {missing[0]!r} (in the template)")
    elif not other.has_field(opts.get("field", "")):
        problems.append(f"related: {other.name} has no field {opts.get('field')!r}")
    if "match" in opts and not schema.has_field(opts["match"]):
        problems.append(f"related: {schema.name} has no field {opts['match']!r} (match)")
    if "via" in opts and not schema.has_field(opts["via"]):
        problems.append(f"related: {schema.name} has no field {opts['via']!r}")
    if "via" not in opts and not other.has_field(opts.get("by", "")):
        problems.append(f"related needs 'via' (a field here) or 'by' (the field on {other.name} holding this id)")
    return problems


def _row_columns(fm) -> list[Any]:
    """The ``columns`` of a ``related_rows`` field as field maps over the related object (parsed once)."""
    cached = _ROW_COLUMNS.get(id(fm))
    if cached is not None and cached[0] is fm:
        return cached[1]
    from airflow_ascora_provider.mapping.spec import MappingError, _parse_field
    from airflow_ascora_provider.source.model import MODEL

    problems: list[str] = []
    columns = [_parse_field(name, raw, f"{fm.dest_field}.columns.{name}", MODEL[fm.options["object"]], problems)
               for name, raw in (fm.options.get("columns") or {}).items()]
    if problems:
        raise MappingError(problems)
    _ROW_COLUMNS[id(fm)] = (fm, columns)
    return columns


_ROW_COLUMNS: dict[int, tuple[Any, list[Any]]] = {}


def _rows_of(record, fm, ctx) -> list[dict[str, Any]]:
    rows = ctx.related(fm.options["object"], fm.options["by"], record.get("id"))
    order = fm.options.get("order_by")
    if order:
        rows = sorted(rows, key=lambda r: (r.get(order) is None, r.get(order) if r.get(order) is not None else 0))
    return rows


def related_row_lookups(record: dict[str, Any], fm, related: Callable[[str, str, Any], list[dict[str, Any]]]
                        ) -> list[tuple[str, str]]:
    """(map, source id) pairs the ``lookup`` columns of a ``related_rows`` field will resolve, so the
    engine can fetch them from the crosswalk with the rest of the batch's lookups."""
    lookups = [c for c in _row_columns(fm) if c.transform == "lookup"]
    if not lookups:
        return []
    wanted = []
    for row in related(fm.options["object"], fm.options["by"], record.get("id")):
        for column in lookups:
            value = row.get(column.sources[0])
            if value is not None:
                wanted.extend((name, str(value)) for name in _maps_for(row, column))
    return wanted


def _bind_related_rows(fm) -> Getter:
    """Rows of another staged object that point at this record, each turned into several fields by its
    own column transforms: a quote's line items as the rows of a line-item table on the quote.

    A column transform that fails names the row and the column, and the whole record is quarantined
    (a quote without one of its lines would misstate its total). Columns without a value are left out
    of the row, so a destination that reads rows back without empty cells compares equal.
    """
    label = fm.options.get("label_by", "id")
    columns = [(column, TRANSFORMS[column.transform].bind(column)) for column in _row_columns(fm)]

    def related_rows(record, ctx):
        return tuple(_row_values(fm, label, columns, row, ctx) for row in _rows_of(record, fm, ctx)) or None

    return related_rows


def _row_values(fm, label: str, columns: list[tuple[Any, Getter]], row: dict[str, Any],
                ctx) -> dict[str, Any]:
    """One related row through the columns of a ``related_rows`` field (see :func:`_bind_related_rows`)."""
    values: dict[str, Any] = {}
    for column, get in columns:
        try:
            value = get(row, ctx)
        except TransformError as exc:
            raise TransformError(f"{fm.dest_field}[{row.get(label)}].{column.dest_field}", exc.value,
                                 f"{fm.options['object']} {row.get('id')}: {exc.reason}") from None
        if value is None:
            value = column.default
        if value is None and column.required:
            raise TransformError(f"{fm.dest_field}[{row.get(label)}].{column.dest_field}", None,
                                 f"{fm.options['object']} {row.get('id')}: the row has no "
                                 f"{column.dest_field}")
        if value is not None:
            values[column.dest_field] = value
    return values


def _check_related_rows(fm, schema) -> list[str]:
    from airflow_ascora_provider.mapping.spec import _parse_field
    from airflow_ascora_provider.source.model import MODEL

    opts = fm.options
    if opts.get("object") not in MODEL:
        return [f"related_rows needs 'object', one of {sorted(MODEL)}"]
    other = MODEL[opts["object"]]
    problems = []
    if not other.has_field(opts.get("by", "")):
        problems.append(f"related_rows needs 'by' (the field on {other.name} holding this record's id)")
    for key in ("order_by", "label_by"):
        if opts.get(key) and not other.has_field(opts[key]):
            problems.append(f"related_rows: {other.name} has no field {opts[key]!r} ({key})")
    columns = opts.get("columns")
    if not isinstance(columns, dict) or not columns:
        return problems + ["related_rows needs 'columns' (destination column: field map over the related rows)"]
    for name, raw in columns.items():
        if isinstance(raw, dict) and raw.get("transform") in ("related_rows", "attach"):
            problems.append(f"related_rows: column {name} cannot use {raw['transform']}")
            continue
        _parse_field(name, raw, f"columns.{name}", other, problems)
    return problems


def _bind_refs(fm) -> Getter:
    """Several parents in one field that takes a list: a deal's contacts are the customer's person and
    the enquiry contact the job came from.

    ``from`` + ``map`` resolve like ``lookup``; each entry of ``related`` finds rows of another object
    that name this record (``by`` their field, ``match`` this record's value, ``id`` by default) and
    resolves each row through its ``map``. Parents that were not loaded are left out; ``required``
    wants at least one.
    """
    lookup = (_bind_lookup(type(fm)(fm.dest_field, "lookup", fm.sources, fm.options, False))
              if fm.sources else None)
    parts = fm.options.get("related") or ()

    def refs_of(record, ctx):
        refs: list[DestRef] = []
        if lookup is not None:
            ref = lookup(record, ctx)
            if ref is not None:
                refs.append(ref)
        for part in parts:
            for row_id in refs_related_ids(record, part, ctx.related):
                ref = ctx.resolve([part["map"]], row_id)
                if ref is not None and ref not in refs:
                    refs.append(ref)
        if not refs and fm.required:
            raise TransformError(fm.sources[0] if fm.sources else fm.dest_field,
                                 record.get(fm.sources[0]) if fm.sources else None,
                                 f"{fm.dest_field} needs a parent but none was loaded")
        return tuple(refs) or None

    return refs_of


def refs_related_ids(record: dict[str, Any], part: dict[str, Any],
                     related: Callable[[str, str, Any], list[dict[str, Any]]]) -> list[str]:
    """Ids of the rows one ``related`` entry of a ``refs`` field points at (also what the engine
    fetches from the crosswalk before the batch is transformed)."""
    key = record.get(part.get("match", "id"))
    if key is None or key == "":
        return []
    return [str(row["id"]) for row in related(part["object"], part["by"], key)]


def _check_refs(fm, schema) -> list[str]:
    from airflow_ascora_provider.source.model import MODEL

    problems = []
    if fm.sources and not fm.options.get("map"):
        problems.append("refs: 'from' needs 'map' (the map that wrote the parent)")
    parts = fm.options.get("related") or []
    if not fm.sources and not parts:
        problems.append("refs needs 'from' + 'map', or 'related' entries")
    for i, part in enumerate(parts):
        where = f"refs: related[{i}]"
        if not isinstance(part, dict) or part.get("object") not in MODEL:
            problems.append(f"{where} needs 'object', one of {sorted(MODEL)}")
            continue
        if not MODEL[part["object"]].has_field(part.get("by", "")):
            problems.append(f"{where}: {part['object']} has no field {part.get('by')!r} (by)")
        if not schema.has_field(part.get("match", "id")):
            problems.append(f"{where}: {schema.name} has no field {part.get('match')!r} (match)")
        if not isinstance(part.get("map"), str):
            problems.append(f"{where} needs 'map' (the map that wrote the {part['object']} records)")
    return problems


def choose_cases(fm) -> list[tuple[Any, Any]]:
    """The ``cases`` of a ``choose`` field as (condition, value) pairs, parsed by :func:`_check_choose`
    when the mapping was loaded (against the map's source object, which the field map does not hold)."""
    cached = _CASES.get(id(fm))
    if cached is None or cached[0] is not fm:
        raise TransformError(fm.dest_field, None, "choose: the field map was not loaded through a mapping file")
    return cached[1]


_CASES: dict[int, tuple[Any, list[tuple[Any, Any]]]] = {}


def _choose(record, fm, ctx):
    """The value of the first case whose condition holds (``default`` otherwise): a status worked out
    from dates, such as equipment under warranty or not on the day of extraction."""
    for condition, value in choose_cases(fm):
        if condition.matches(record, ctx.as_of):
            return value
    return None


def _check_choose(fm, schema) -> list[str]:
    from airflow_ascora_provider.mapping.spec import _parse_condition

    cases = fm.options.get("cases")
    if not isinstance(cases, list) or not cases:
        return ["choose needs 'cases': a list of {when: <condition>, value: <value>}"]
    problems: list[str] = []
    parsed = []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or "when" not in case or "value" not in case:
            problems.append(f"choose: cases[{i}] needs 'when' and 'value'")
            continue
        condition = _parse_condition(case["when"], f"choose: cases[{i}].when", schema, problems)
        missing = sorted(condition.fields() - set(fm.sources)) if condition else []
        if missing:
            problems.append(f"choose: cases[{i}] reads {', '.join(missing)}; list it in 'from' (what the value "
                            "depends on)")
        parsed.append((condition, case["value"]))
    if not problems:
        _CASES[id(fm)] = (fm, parsed)
    return problems


_ADDRESS_FIELDS = ("address_line1", "address_line2", "suburb", "state", "postcode", "country", "latitude", "longitude")

TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("copy", bind=_bind_copy, columns=_columns_copy, description="the source value unchanged"),
        Transform("concat", _concat, columns=_columns_concat, description="non-empty sources joined with 'sep'"),
        Transform("template", bind=_bind_template, columns=_columns_template, check=lambda fm, s: [] if fm.options.get("template") else
                  ["template needs 'template'"], description="'{job_number}: {name}' style"),
        Transform("full_name", _full_name, ("first_name", "last_name"), columns=_columns_full_name, description="first/last, or split 'fallback'"),
        Transform("split_name", _split_name, ("name",), description="'Jane Q Citizen' → first 'Jane Q', last 'Citizen'"),
        Transform("address", _address, _ADDRESS_FIELDS, columns=_columns_address, description="street, suburb, state, postcode, country"),
        Transform("currency", bind=_bind_currency, columns=_columns_currency, description="money in the mapping's currency"),
        Transform("number", bind=_bind_number, columns=_converting_columns(Decimal)),
        Transform("date", bind=_bind_date, columns=_columns_date),
        Transform("datetime", bind=_bind_datetime, columns=_columns_datetime),
        Transform("boolean", bind=_bind_boolean, columns=_converting_columns(bool)),
        Transform("email", _email, ("email",), columns=_listing(Emails)),
        Transform("phone", _phone, ("phone", "mobile"), columns=_listing(Phones)),
        Transform("link", _link, description="a URL, or the domain of an e-mail address"),
        Transform("rich_text", _rich_text, columns=_columns_rich_text),
        Transform("file", _file, ("file_name", "file_uri", "sha256", "size_bytes", "content_type"),
                  description="a staged file to upload (compared by content)"),
        Transform("constant", bind=_bind_constant, columns=_columns_constant),
        Transform("value_map", bind=_bind_value_map, columns=_columns_value_map, check=_check_value_map,
                  description="pick-list values one by one"),
        Transform("json_key", bind=_bind_json_key, columns=_columns_json_key, check=_check_json_key,
                  description="one custom field or form answer"),
        Transform("lookup", bind=_bind_lookup, columns=_columns_lookup, check=_check_lookup,
                  description="destination id of a parent via the crosswalk"),
        Transform("attach", bind=_bind_attach, check=_check_lookup,
                  description="parents a note/task/file hangs off"),
        Transform("owner", bind=_bind_owner, columns=_columns_owner, default_sources=("assigned_user_name",),
                  description="staff member → destination user"),
        Transform("related", bind=_bind_related, columns=_columns_related, check=_check_related,
                  description="a value from another staged object"),
        Transform("refs", bind=_bind_refs, check=_check_refs,
                  description="several parents for a field that takes a list (a deal's contacts)"),
        Transform("choose", _choose, check=_check_choose, description="the value of the first case whose 'when' holds"),
        Transform("related_rows", bind=_bind_related_rows, check=_check_related_rows,
                  description="rows of another staged object pointing here, each with its own column transforms"),
    )
}
