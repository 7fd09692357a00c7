"""The column transforms give exactly what their per-record getters give.

``Transform.columns`` computes a field for a whole batch at once (``engine.columnar``); the getter
(``Transform.bind``) is the rule. These tests hold every column transform to its getter over batches
with the edge cases (empty text, none, Decimal places, dates and datetimes, missing parents, values a
value map does not list, answers that are not numbers), and the payload digests joined from column
fragments to ``payload_hash`` of the same payloads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import math
from decimal import Decimal
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from airflow_ascora_provider.engine.columnar import Batch, FieldColumns, payload_digests
from airflow_ascora_provider.engine.context import _encode, payload_hash, value_json
from airflow_ascora_provider.mapping.spec import FieldMap
from airflow_ascora_provider.mapping.transforms import TRANSFORMS, TransformError
from airflow_ascora_provider.mapping.values import (
    Address, AttachTo, DestRef, Emails, FileRef, FullName, Link, Money, Phones, RichText, UserRef)
from tests.unit.test_transform_fast_paths import ANSWERS, Ctx, Pair

CTX = Ctx(refs={("company", "c1"): DestRef("company", "d-c1"), ("person", "c2"): DestRef("person", "d-p2")},
          related={("form_response", "job_id", "j1"): [{"answers": ANSWERS}, {"answers": '{"Signed": "Al"}'}],
                   ("form_response", "job_id", "j2"): [{"answers": ""}, {"answers": None}],
                   ("quote", "id", "q1"): [{"total_ex_tax": Decimal("10.50"), "status": "Sent"}],
                   ("quote", "id", "q2"): [{"total_ex_tax": None, "status": None}]})
RECORDS = [
    {"id": "j1", "name": "Job", "total": Decimal("10.50"), "when": dt.datetime(2026, 2, 3, 4, 5),
     "day": dt.date(2026, 2, 3), "flag": 0, "status": "Open", "answers": ANSWERS, "customer_id": "c1",
     "staff": "Sam", "quote_id": "q1", "text": "12"},
    {"id": "j2", "name": "", "total": None, "when": dt.date(2026, 2, 3), "day": dt.datetime(2026, 2, 3, 4, 5),
     "flag": "yes", "status": "", "answers": "", "customer_id": "c2", "staff": "", "quote_id": "q2",
     "text": ""},
    {"id": "j3", "name": None, "total": "7.000", "when": None, "day": None, "flag": None, "status": None,
     "answers": '{"Pressure": "high"}', "customer_id": "nope", "staff": None, "quote_id": "", "text": None},
    {"id": "j4", "total": 3, "status": "Held", "customer_id": 5, "quote_id": "missing", "text": "1e3"},
]
FIELDS = [
    FieldMap("copy", "copy", ("name",), {}),
    FieldMap("copy_n", "copy", ("total",), {}),
    FieldMap("copy_dates", "copy", ("day",), {}),  # no text at all: the column is taken as it is
    FieldMap("copy_flag", "copy", ("flag",), {}),  # a number, text, empty text, none
    FieldMap("copy_absent", "copy", ("nowhere",), {}),
    FieldMap("currency", "currency", ("total",), {}),
    FieldMap("currency_nzd", "currency", ("total",), {"currency": "NZD"}),
    FieldMap("number", "number", ("text",), {}),
    FieldMap("date", "date", ("when",), {}),
    FieldMap("date_of_date", "date", ("day",), {}),
    FieldMap("datetime", "datetime", ("day",), {}),
    FieldMap("datetime_of_datetime", "datetime", ("when",), {}),
    FieldMap("boolean", "boolean", ("flag",), {}),
    FieldMap("constant", "constant", (), {"value": "X"}),
    FieldMap("value_map", "value_map", ("status",), {"values": {"Open": "OPEN", "Held": "HELD"},
                                                     "default_for_empty": "NONE"}),
    FieldMap("value_map_default", "value_map", ("status",), {"values": {"Open": "OPEN"}}, default="OTHER"),
    FieldMap("value_map_unlisted", "value_map", ("status",), {"values": {"Open": "OPEN"}}),
    FieldMap("json_key", "json_key", ("answers",), {"key": "Signed"}),
    FieldMap("json_key_number", "json_key", ("answers",), {"key": "Pressure", "as": "number"}),
    FieldMap("lookup", "lookup", ("customer_id",), {"map": "company"}),
    FieldMap("lookup_two_maps", "lookup", ("customer_id",), {"map": ["company", "person"]}),
    FieldMap("lookup_required", "lookup", ("customer_id",), {"map": "company"}, required=True),
    FieldMap("owner", "owner", ("staff",), {}),
    FieldMap("related_join", "related", (), {"object": "form_response", "by": "job_id", "field": "answers",
                                             "key": "Signed", "aggregate": "join"}),
    FieldMap("related_number", "related", (), {"object": "form_response", "by": "job_id", "field": "answers",
                                               "key": "Pressure", "as": "number"}),
    FieldMap("related_sum", "related", (), {"object": "quote", "via": "quote_id", "field": "total_ex_tax",
                                            "aggregate": "sum"}),
    FieldMap("related_template", "related", (), {"object": "quote", "via": "quote_id",
                                                 "template": "{status}: {total_ex_tax}"}),
    FieldMap("related_count", "related", (), {"object": "form_response", "by": "job_id", "field": "answers",
                                              "aggregate": "count"}),
]


def _getter_values(fm, records):
    get = TRANSFORMS[fm.transform].bind(fm)
    out = []
    for record in records:
        try:
            out.append(("value", get(record, CTX)))
        except Exception as exc:  # noqa: BLE001 - what the rule does with this record, compared
            out.append(("error", type(exc)))
    return out


@pytest.mark.parametrize("fm", FIELDS, ids=[fm.dest_field for fm in FIELDS])
@pytest.mark.parametrize("rows", [slice(None), slice(0, 2), slice(0, 1), slice(0, 0)], ids=["all", "two", "one", "none"])
def test_a_column_transform_answers_as_its_getter_does(fm, rows):
    records = RECORDS[rows]
    column = TRANSFORMS[fm.transform].columns(fm)
    assert column is not None, "every field here has a column form"
    expected = _getter_values(fm, records)
    try:
        got = column(Batch(records), CTX)
    except Exception:  # noqa: BLE001 - allowed only where the getter raises for some record
        assert any(kind == "error" for kind, _ in expected), fm.dest_field
        return
    assert all(kind == "value" for kind, _ in expected), (fm.dest_field, expected)
    # repr: Decimal('10.50') is not Decimal('10.5') there, a date is not a datetime, True is not 1.
    assert repr(got) == repr([value for _, value in expected])


# People, places and texts: the transforms whose getters read several sources of one record.
PEOPLE = [
    {"id": "p1", "first_name": "Ann", "last_name": "Lee", "full": "Ann Lee", "email": "a@x.au",
     "email2": "b@x.au", "phone": "0400", "mobile": "", "address_line1": "1 Main St", "address_line2": None,
     "suburb": "Carlton", "state": "VIC", "postcode": "3053", "country": "", "latitude": Decimal("-37.8"),
     "longitude": Decimal("144.9"), "job_number": "J-1", "name": "Fix 100% of it", "notes": "**bold**",
     "number": 7},
    {"id": "p2", "first_name": "", "last_name": None, "full": "Jane Q Citizen", "email": "", "email2": "c@x.au",
     "phone": None, "mobile": "0411", "address_line1": "", "address_line2": None, "suburb": None,
     "state": None, "postcode": "", "country": "NZ", "job_number": None, "name": "", "notes": "",
     "number": Decimal("0")},
    {"id": "p3", "first_name": None, "last_name": "Solo", "full": "", "email": None, "email2": None,
     "phone": "", "mobile": None, "address_line1": None, "address_line2": "Unit 2", "suburb": None,
     "state": None, "postcode": None, "country": "AU", "job_number": "J-3", "name": None, "notes": None,
     "number": Decimal("2.50")},
    {"id": "p4", "full": "Mononym", "job_number": "  J-4 ", "name": "  ", "notes": 12, "number": None,
     "postcode": "2000"},
    {"id": "p5", "first_name": 0, "last_name": "", "full": None, "email": 0, "phone": 0, "mobile": "0422",
     "suburb": "Ultimo", "country": None, "job_number": "{x}", "name": "%s", "notes": "x", "number": 0},
]
PEOPLE_FIELDS = [
    FieldMap("full_name", "full_name", ("first_name", "last_name"), {}),
    FieldMap("full_name_fallback", "full_name", ("first_name", "last_name"), {"fallback": "full"}),
    FieldMap("full_name_first_only", "full_name", ("first_name",), {"fallback": "full"}),
    FieldMap("full_name_none", "full_name", (), {"fallback": "full"}),
    FieldMap("email", "email", ("email", "email2"), {}),
    FieldMap("phone", "phone", ("phone", "mobile"), {}),
    FieldMap("phone_one", "phone", ("mobile",), {}),
    FieldMap("address", "address", ("address_line1", "address_line2", "suburb", "state", "postcode", "country",
                                    "latitude", "longitude"), {}),
    FieldMap("address_default_country", "address", ("address_line1", "address_line2", "suburb", "state",
                                                    "postcode", "country"), {"default_country": "AU"}),
    FieldMap("address_short", "address", ("address_line1", "suburb"), {"default_country": "AU"}),
    FieldMap("address_none", "address", (), {}),
    FieldMap("template", "template", (), {"template": "{job_number} {name}"}),
    FieldMap("template_literal", "template", (), {"template": "{{{job_number}}} 100% {job_number}"}),
    FieldMap("template_absent", "template", (), {"template": "{nowhere}"}),
    FieldMap("template_text_only", "template", (), {"template": "  fixed  "}),
    FieldMap("template_number", "template", (), {"template": "{name} x{number}"}),  # not text: the getter
    FieldMap("concat", "concat", ("job_number", "name"), {"sep": " - "}),
    FieldMap("concat_numbers", "concat", ("name", "number"), {}),
    FieldMap("concat_none", "concat", (), {}),
    FieldMap("rich_text", "rich_text", ("notes",), {}),
    FieldMap("rich_text_number", "rich_text", ("number",), {}),
]


@pytest.mark.parametrize("fm", PEOPLE_FIELDS, ids=[fm.dest_field for fm in PEOPLE_FIELDS])
@pytest.mark.parametrize("rows", [slice(None), slice(0, 2), slice(3, 4), slice(0, 0)], ids=["all", "two", "one", "none"])
def test_a_column_of_names_places_or_texts_answers_as_its_getter_does(fm, rows):
    records = PEOPLE[rows]
    column = TRANSFORMS[fm.transform].columns(fm)
    assert column is not None
    expected = [value for _, value in _getter_values(fm, records)]
    try:
        got = column(Batch(records), CTX)
    except TypeError:  # a template over a value that is not text: left to the getter, by design
        assert fm.dest_field == "template_number" and any(type(r.get("number")) is not str for r in records)
        return
    assert repr(got) == repr(expected)


def test_a_template_column_formats_as_the_getter_record_by_record_in_the_batch():
    """Through FieldColumns, as the engine runs them: the same values, including where the column
    form steps aside for the getter."""
    fields = [fm for fm in PEOPLE_FIELDS]
    columns, failed = FieldColumns(fields).compute(Batch(PEOPLE), CTX)
    assert not failed
    for fm, values in zip(fields, columns):
        assert repr(values) == repr([value for _, value in _getter_values(fm, PEOPLE)]), fm.dest_field


def test_transforms_without_a_column_form_are_left_to_the_getter():
    for fm in (FieldMap("x", "copy", ("a", "b"), {}),
               FieldMap("x", "lookup", ("customer_id",), {"map": "company", "through": {"object": "job",
                                                                                    "field": "customer_id"}}),
               FieldMap("x", "lookup", ("customer_id",), {"by_type": {"field": "t", "maps": {}}})):
        assert TRANSFORMS[fm.transform].columns(fm) is None
    for fm in (FieldMap("x", "template", (), {"template": "{site.name}"}),  # attribute placeholder
               FieldMap("x", "template", (), {"template": "{total:.2f}"}),  # format spec
               FieldMap("x", "template", (), {"template": "{name!r}"}),  # conversion
               FieldMap("x", "template", (), {"template": "{0}"}),  # positional
               FieldMap("x", "template", (), {"template": "{name"}),  # not a template
               FieldMap("x", "rich_text", ("a", "b"), {})):
        assert TRANSFORMS[fm.transform].columns(fm) is None, fm
    assert {name for name, t in TRANSFORMS.items() if t.columns is None} >= {
        "refs", "related_rows", "choose", "file", "attach"}


def test_field_columns_report_each_records_first_failing_field_as_the_record_loop_does():
    fields = [
        FieldMap("a", "value_map", ("status",), {"values": {"Open": "OPEN"}}),  # j4 "Held": unlisted
        FieldMap("b", "lookup", ("customer_id",), {"map": "company"}, required=True),  # j2..j4: missing
        FieldMap("c", "copy", ("name",), {}, required=True),  # j2, j3, j4: none
        FieldMap("d", "copy", ("name",), {}, default="D"),
        FieldMap("e", "currency", ("total",), {}),  # j4: Decimal(3) fine
    ]
    columns, failed = FieldColumns(fields).compute(Batch(RECORDS), CTX)
    assert set(failed) == {1, 2, 3}
    assert failed[1][0] == 1 and "parent c2 was not loaded" in failed[1][1].reason
    assert failed[2][0] == 1 and failed[3][0] == 0 and "no value-map entry for 'Held'" in failed[3][1].reason
    assert columns[3] == ["Job", "D", "D", "D"]
    assert repr(columns[4][0]) == repr(Money(Decimal("10.50"), "AUD"))

    only_required = FieldColumns([FieldMap("c", "copy", ("name",), {}, required=True)])
    _, failed = only_required.compute(Batch(RECORDS), CTX)
    assert {row: error.reason for row, (_, error) in failed.items()} == {
        row: "c is required by the mapping but has no value" for row in (1, 2, 3)}


def test_a_refused_field_leaves_no_cycle_that_holds_its_batch():
    """A refused record's TransformError is kept without its traceback, whose frames would hold the
    batch's records and context in a cycle: a chunk is transformed with the cycle collector paused,
    and every chunk with a refusal stayed in memory until the next full collection."""
    lookup = FieldColumns([FieldMap("b", "lookup", ("customer_id",), {"map": "company"}, required=True)])
    gc.collect()
    gc.disable()
    try:
        columns, failed = lookup.compute(Batch([dict(record) for record in RECORDS]), CTX)
        assert set(failed) == {1, 2, 3} and all(error.__traceback__ is None for _, error in failed.values())
        del columns, failed
        assert gc.collect() == 0  # nothing was left for the collector: freed as it was dropped
    finally:
        gc.enable()


def test_an_error_that_is_not_a_transform_error_is_kept_for_its_record():
    bad = FieldColumns([FieldMap("n", "number", ("text",), {})])
    records = [{"text": "1"}, {"text": "not a number"}]
    columns, failed = bad.compute(Batch(records), CTX)
    assert columns[0][0] == Decimal("1") and set(failed) == {1}
    assert not isinstance(failed[1][1], TransformError)


@dataclasses.dataclass(frozen=True)
class Slotted:
    __slots__ = ("code",)
    code: str


@dataclasses.dataclass(frozen=True)
class Upper:
    Zed: str
    alpha: int


class Text(str):
    pass


@dataclasses.dataclass(frozen=True, init=False)
class CodeText(str):
    system: str = "internal"  # a field, yet the value is written as the text it is


VALUES = [
    None, "", "plain", 'quote " and \\ and \n', "ünïcødé ✓", Text("sub"), True, False, 0, -12, 10**20, 1.5, 1e300,
    math.inf, Decimal("10.50"), Decimal("-0"), Decimal("1E+3"), Decimal("0.00"), Decimal("-0.00"), Decimal("100"),
    Decimal("100.00"), Decimal("-12.3400"), Decimal("0.000001"), Decimal("1E-7"), Decimal("1.5E+3"), Decimal("0E-7"),
    Decimal("NaN"), Decimal("-Infinity"), Decimal("12345678901234567890.120"), dt.date(2026, 2, 3),
    dt.datetime(2026, 2, 3, 4, 5, tzinfo=dt.UTC), dt.datetime(2026, 2, 3, 4, 5), Money(Decimal("10.50")),
    Money(Decimal("1"), "NZD"), DestRef("company", "d1"), UserRef("u1", fallback=True), FullName("a", None),
    Address("1 St", city="X", latitude=Decimal("-27.600")), Emails("a@x", ("b@x",)), Phones("1", ()),
    Link("https://x"), RichText("**x**"), AttachTo((DestRef("a", "1"), DestRef("b", "2"))),
    FileRef("abc", 3, "n.pdf", "application/pdf", "/tmp/n"), (1, "a"), ["x", None], {"b": 1, "a": [2]},
    frozenset(), Slotted("s"), Upper("z", 1), (), [], ("only",), ["é \" \n", "b"], [Decimal("1")],
    [[1, "a"], (DestRef("a", "1"),), None], [1.5, None, True, {"z": [], "a": ("x",)}], [Money(Decimal("2.50"))],
    (dt.date(2026, 1, 2), dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)), [frozenset(), Slotted("t")],
    # Timestamps as staging reads them (Arrow's UTC zone) and every other kind isoformat writes differently.
    dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=ZoneInfo("UTC")), dt.datetime(2026, 2, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
    dt.datetime(2026, 2, 3, 4, 5, 6, 7), dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    dt.datetime(2026, 2, 3, tzinfo=ZoneInfo("Australia/Brisbane")),
    dt.datetime(2026, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=-3, seconds=-7))), dt.date(1, 1, 1),
    dt.date(9999, 12, 31), pd.Timestamp("2026-02-03 04:05:06.000000001", tz="UTC"),
]


@pytest.mark.parametrize("value", VALUES, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(VALUES)])
def test_value_json_writes_a_value_as_the_encoder_does(value):
    assert value_json(value) == _encode(value)


def test_payload_digests_are_payload_hash():
    keys = ["b", "a", "Zed", "_x", "ünï", "key with space"]
    shared = DestRef("company", "d1")
    columns = [
        VALUES[: len(VALUES)],  # every class, one per record
        [shared] * len(VALUES),  # one object shared by every record
        [None] * len(VALUES),
        [f"t{i}" for i in range(len(VALUES))],
        [Decimal(i) / 4 if i % 3 else None for i in range(len(VALUES))],
        [dt.date(2026, 1, 1 + i % 28) for i in range(len(VALUES))],
    ]
    digests = payload_digests(keys, columns)
    for row, digest in enumerate(digests):
        assert digest == payload_hash(dict(zip(keys, (column[row] for column in columns))))
    assert payload_digests([], []) == []


SHARED = DestRef("a", "shared")


def ARROW_UTC_TIME(*parts: int) -> dt.datetime:  # noqa: N802 - reads as the constructor it stands for
    """A timestamp in the zone staging's timestamps carry (Arrow's ``ZoneInfo("UTC")``)."""
    return dt.datetime(*parts, tzinfo=ZoneInfo("UTC"))


@pytest.mark.parametrize("column", [
    [Money(Decimal("10.50")), None, Money(Decimal("-0.000"), "NZD"), Money(Decimal("1E+3"))],
    [Address("1 St", city="X", latitude=Decimal("-27.600")), Address(None), None, Address("2 St", country="AU")],
    [AttachTo((DestRef("a", "1"), DestRef("b", "2"))), AttachTo(()), None, AttachTo((DestRef("a", "3"),))],
    [FullName("a", None), FullName(None, "ü \"q\""), FullName("x", "y")],
    [Upper("z", 1), Upper("é", -2)],
    [Pair("x", Decimal("1.0")), None, Pair(None, None)] * 3,
    [CodeText("a"), CodeText("b \"c\"")],  # a dataclass that is a text: written as the text
    # Amounts alone (a column of Decimal): places, integers, signs, zeros, exponents, special values.
    [Decimal("10.50"), Decimal("7"), None, Decimal("-0.00"), Decimal("0"), Decimal("100"), Decimal("-12.340")],
    [Decimal("1E+3"), Decimal("2.50"), Decimal("1.2E-7")],  # an exponent: the column value by value
    [Decimal("NaN"), Decimal("1.10")], [Decimal("Infinity"), Decimal("-Infinity"), None],
    # Lists and tuples: empty, none, texts, shared references, mixed items, nested, none inside.
    [(), None, ("a@x", "b\"q\""), ("ü",)],
    [(SHARED, SHARED), (SHARED,), (), (DestRef("b", "2"), SHARED), None],
    [[1, "x", None, Decimal("2.50")], [], [[1, 2], ("a",)], None, [dt.date(2026, 1, 2), True]],
    [AttachTo((SHARED, DestRef("b", "2"))), AttachTo((SHARED,)), None, AttachTo(())],
    # Timestamps as staging reads them (Arrow's UTC zone): before the epoch, first and last years,
    # midnight and the day's last second; Python's UTC, both zones in one column; then the columns
    # written value by value (a fraction of a second, naive, another zone).
    [ARROW_UTC_TIME(2026, 2, 3, 4, 5, 6), None, ARROW_UTC_TIME(1969, 12, 31, 23, 59, 59), ARROW_UTC_TIME(1, 1, 1),
     ARROW_UTC_TIME(9999, 12, 31, 23, 59, 59), ARROW_UTC_TIME(1970, 1, 1), ARROW_UTC_TIME(2000, 2, 29, 12)],
    [dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.UTC), dt.datetime(1960, 6, 7, tzinfo=dt.UTC)],
    [dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.UTC), ARROW_UTC_TIME(2026, 2, 3, 4, 5, 7), None],
    [ARROW_UTC_TIME(2026, 2, 3, 4, 5, 6), ARROW_UTC_TIME(2026, 2, 3, 4, 5, 6, 7)],
    [dt.datetime(2026, 2, 3, 4, 5, 6), None, dt.datetime(1, 1, 1)],
    [ARROW_UTC_TIME(2026, 2, 3), dt.datetime(2026, 2, 3, tzinfo=ZoneInfo("Australia/Brisbane"))],
    [dt.date(2026, 2, 3), None, dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31), dt.date(1970, 1, 1)],
], ids=["money", "address", "attach", "names", "upper", "pairs", "text-dataclass", "amounts", "amount-exponents",
        "amount-nan", "amount-infinity", "tuples-of-text", "tuples-of-refs", "lists-mixed", "attach-shared",
        "timestamps", "timestamps-python-utc", "timestamps-both-utc", "timestamps-fraction", "timestamps-naive",
        "timestamps-other-zone", "dates"])
def test_a_column_of_one_value_class_is_written_a_field_at_a_time_as_payload_hash_writes_it(column):
    digests = payload_digests(["v", "n"], [column, list(range(len(column)))])
    assert digests == [payload_hash({"v": value, "n": row}) for row, value in enumerate(column)]


def test_a_list_holding_what_no_writer_takes_leaves_that_record_to_the_loader():
    for column in ([("a", "b"), (object(),), (), None], [["c"], [object(), "d"], []]):
        digests = payload_digests(["v"], [column])
        assert digests[1] is None
        with pytest.raises(TypeError):
            payload_hash({"v": column[1]})  # and the loader fails on it, naming the record, as before
        assert [d for row, d in enumerate(digests) if row != 1] == [
            payload_hash({"v": value}) for row, value in enumerate(column) if row != 1]


def test_a_value_class_holding_what_no_writer_takes_leaves_that_record_to_the_loader():
    class Odd:
        pass

    column = [Pair("x", Decimal("1")), Pair("y", Odd()), None]
    digests = payload_digests(["v"], [column])
    assert digests[1] is None
    assert digests[0] == payload_hash({"v": column[0]}) and digests[2] == payload_hash({"v": None})


def test_a_value_the_encoder_refuses_leaves_the_digest_to_the_loader():
    class Odd:
        pass

    digests = payload_digests(["a", "b"], [["x", "y"], [Odd(), "fine"]])
    assert digests[0] is None and digests[1] == payload_hash({"a": "y", "b": "fine"})
    with pytest.raises(TypeError):
        payload_hash({"b": Odd()})


def test_a_value_whose_writer_fails_otherwise_leaves_every_digest_of_the_batch_to_the_loader(monkeypatch):
    """Not a TypeError or ValueError (which leave only that record to the loader): the transform
    still answers, its records without digests, and the loader hashes them as before."""
    from airflow_ascora_provider.engine import transform

    def broken(keys, columns):
        raise RecursionError("deep")

    monkeypatch.setattr(transform, "payload_digests", broken)
    holder = type("Holder", (), {"_digest_keys": ["a"], "map": type("M", (), {"key_field": None, "name": "m"})(),
                                 "dest_fields": ("a",)})()
    from airflow_ascora_provider.destinations.spec import OutgoingRecord

    records = [OutgoingRecord("1", {"a": "x"})]
    transform.BatchTransformer._digests(holder, records, [["x"]], [0], 1)
    assert records[0].digest is None


def test_the_cycle_collector_is_paused_for_a_chunk_and_runs_again_after():
    import gc

    from airflow_ascora_provider.engine.transform import _collector_paused

    assert gc.isenabled()
    with _collector_paused():
        assert not gc.isenabled()
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves it to the outer one
    assert gc.isenabled()
    with pytest.raises(ValueError), _collector_paused():
        raise ValueError("a transform failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_what_a_paused_chunk_still_holds_is_not_walked_by_the_next_young_collection():
    """Leaving the pause sets off no collection (the young counts are reset, the chunk's containers
    are in the oldest generation), and nothing stays frozen: a cycle made during the pause is still
    collected."""
    import gc
    import weakref

    from airflow_ascora_provider.engine.transform import _collector_paused

    class Node:
        pass

    collections: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        with _collector_paused():
            held = [{"row": i} for i in range(50_000)]
            cycle = Node()
            cycle.me = cycle
            gone = weakref.ref(cycle)
            del cycle
            gc.callbacks.append(record)
        after = [{"after": i} for i in range(100)]  # the allocations that set off the walk before
    finally:
        gc.callbacks.remove(record)
    assert collections == []
    assert not any(o is held[0] for o in gc.get_objects(generation=0))
    assert gc.get_freeze_count() == 0
    assert len(held) == 50_000 and held[-1] == {"row": 49_999} and len(after) == 100
    gc.collect()
    assert gone() is None


def test_an_amount_is_written_as_its_normal_form_whatever_its_places_or_exponent():
    """The digest text of an amount is ``format(value.normalize(), "f")`` (what ledgers already hold);
    the shortcut through ``str`` must give the same text for every amount, not just staged ones."""
    from airflow_ascora_provider.engine.context import _decimal_text

    amounts = [value for value in VALUES if isinstance(value, Decimal)]
    for digits in ("0", "1", "10", "105", "1050", "123456789", "100000000000000000000"):
        for exponent in range(-12, 8):
            for sign in (0, 1):
                amounts.append(Decimal((sign, tuple(int(d) for d in digits), exponent)))
    amounts += [Decimal("sNaN"), Decimal("Infinity"), Decimal("-0E+5"), Decimal(".5"), Decimal("5.")]
    for amount in amounts:
        try:
            expected = format(amount.normalize(), "f")
        except ArithmeticError as refused:  # a signalling NaN: refused both ways
            with pytest.raises(type(refused)):
                _decimal_text(amount)
            continue
        assert _decimal_text(amount) == expected, amount


def test_a_column_record_builds_the_payload_the_loop_builds_once_and_only_when_read():
    from airflow_ascora_provider.destinations.spec import OutgoingRecord
    from airflow_ascora_provider.engine.columnar import ColumnRecord, PayloadColumns

    columns = PayloadColumns(("name", "amount"), [["A", "B"], [Decimal("1.50"), None]], "ascoraId")
    records = [ColumnRecord("s1", None, columns, 0), ColumnRecord("s2", "d2", columns, 1)]
    assert all(record._payload is None for record in records)  # nothing built by the transform itself
    assert records[1].payload == {"name": "B", "amount": None, "ascoraId": "s2"}
    assert list(records[1].payload) == ["name", "amount", "ascoraId"]  # the loop's key order
    assert records[1].payload is records[1].payload  # built once: a change to it is kept
    records[1].payload["name"] = "changed"
    assert records[1].payload["name"] == "changed"
    assert records[0]._payload is None  # the other record's payload still not built
    # Equal to the OutgoingRecord the loop makes, from either side; the digest is not compared.
    assert records[0] == OutgoingRecord("s1", {"name": "A", "amount": Decimal("1.50"), "ascoraId": "s1"})
    assert OutgoingRecord("s1", {"name": "A", "amount": Decimal("1.50"), "ascoraId": "s1"}) == records[0]
    assert records[0] != OutgoingRecord("s1", {"name": "A", "amount": Decimal("1.5"), "ascoraId": "s9"})
    records[0].payload = {"name": "set"}
    assert records[0].payload == {"name": "set"}
    assert "payload={'name': 'set'}" in repr(records[0])
    without_key = ColumnRecord("s3", None, PayloadColumns(("name",), [["C"]], None), 0)
    assert without_key.payload == {"name": "C"}
    assert ColumnRecord("s4", None, PayloadColumns((), [], "key"), 0).payload == {"key": "s4"}


def test_staged_timestamps_and_dates_are_written_a_column_at_a_time(monkeypatch):
    """Whole-second UTC timestamps and dates take the column writers' own way (no writer called a
    value) and come out as the value writers write them."""
    from airflow_ascora_provider.engine import context

    times = [ARROW_UTC_TIME(2026, 2, 3, 4, 5, 6), ARROW_UTC_TIME(1969, 12, 31, 23, 59, 59), ARROW_UTC_TIME(1, 1, 1)]
    days = [dt.date(2026, 2, 3), dt.date(1, 1, 1), dt.date(9999, 12, 31)]
    expected = ([context._write_datetime(value) for value in times], [context._write_date(value) for value in days])

    def not_called(value):
        raise AssertionError(f"{value!r} written alone")

    monkeypatch.setattr(context, "_write_datetime", not_called)
    monkeypatch.setattr(context, "_write_date", not_called)
    assert (context.write_datetimes(times), context.write_dates(days)) == expected
    assert context.write_datetimes([]) == []


def test_a_copy_of_a_staged_text_column_knows_it_now_holds_none():
    """A copy empties "" to none: the column it hands on says so, and its digests are payload_hash's."""
    from airflow_ascora_provider.source.columns import KindedColumn

    texts = KindedColumn(["a", "", "b"], frozenset({str}))
    batch = Batch([{"t": value} for value in texts], {"t": texts})
    [column], failed = FieldColumns([FieldMap("t", "copy", ("t",), {})]).compute(batch, None)
    assert column == ["a", None, "b"] and column.kinds == {str, type(None)} and not failed
    assert payload_digests(["t"], [column]) == [payload_hash({"t": value}) for value in column]
