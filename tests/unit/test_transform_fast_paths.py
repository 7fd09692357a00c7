"""The transform's fast paths give exactly what the plain ones give.

Each replaced a slower way of computing the same thing (bound transforms instead of options read per
record, Arrow columns zipped into rows, two ledger columns instead of whole crosswalk entries, a
dataclass's ``__dict__`` in the payload hash): these tests hold them to the same answers, including
the edge cases the fast path has to hand back to the plain one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from airflow_ascora_provider.engine.context import payload_hash
from airflow_ascora_provider.ledger import Ledger, Write
from airflow_ascora_provider.mapping.spec import FieldMap
from airflow_ascora_provider.mapping.transforms import TRANSFORMS, Transform, TransformError
from airflow_ascora_provider.mapping.values import DestRef, Money, UserRef
from airflow_ascora_provider.source.staging import rows_of


class Ctx:
    """A TransformContext over fixed answers."""

    currency = "AUD"
    as_of = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __init__(self, refs=None, related=None):
        self.refs = refs or {}
        self.rows = related or {}

    def resolve(self, maps, source_id):
        return next((self.refs[(m, source_id)] for m in maps if (m, source_id) in self.refs), None)

    def parents(self, map_name):
        return {sid: ref for (name, sid), ref in self.refs.items() if name == map_name}

    def owner(self, name):
        return UserRef("u-1") if name else None

    def related(self, object_name, key_field, key):
        return self.rows.get((object_name, key_field, key), [])


ANSWERS = '{"Pressure": "12.5", "Passed": "yes", "Signed": "Jo"}'
CTX = Ctx(refs={("company", "c1"): DestRef("company", "d-c1")},
          related={("form_response", "job_id", "j1"): [{"answers": ANSWERS}, {"answers": '{"Signed": "Al"}'}],
                   ("quote", "id", "q1"): [{"total_ex_tax": Decimal("10.50"), "status": "Sent"}]})
FIELDS = [
    FieldMap("a", "copy", ("name",), {}),
    FieldMap("b", "copy", ("missing", "blank", "name"), {}),
    FieldMap("c", "currency", ("total",), {}),
    FieldMap("d", "currency", ("total",), {"currency": "NZD"}),
    FieldMap("e", "number", ("total",), {}),
    FieldMap("f", "date", ("when",), {}),
    FieldMap("g", "datetime", ("day",), {}),
    FieldMap("h", "boolean", ("flag",), {}),
    FieldMap("i", "constant", (), {"value": "X"}),
    FieldMap("j", "value_map", ("status",), {"values": {"Open": "OPEN"}, "default_for_empty": "NONE"}),
    FieldMap("k", "json_key", ("answers",), {"key": "Pressure", "as": "number"}),
    FieldMap("l", "lookup", ("customer_id",), {"map": "company"}),
    FieldMap("m", "attach", ("customer_id", "blank"), {"map": "company"}),
    FieldMap("n", "owner", ("staff",), {}),
    FieldMap("o", "related", (), {"object": "form_response", "by": "job_id", "field": "answers",
                                  "key": "Signed", "aggregate": "join"}),
    FieldMap("p", "related", (), {"object": "quote", "via": "quote_id", "field": "total_ex_tax",
                                  "aggregate": "sum"}),
    FieldMap("q", "related", (), {"object": "quote", "via": "quote_id",
                                  "template": "{status}: {total_ex_tax}"}),
    FieldMap("r", "template", (), {"template": "{name} {missing}"}),
    FieldMap("s", "refs", ("customer_id",), {"map": "company"}),
]
RECORD = {"id": "j1", "name": "Job", "blank": "", "total": Decimal("10.50"),
          "when": dt.datetime(2026, 2, 3, 4, 5), "day": dt.date(2026, 2, 3), "flag": 0, "status": "Open",
          "answers": ANSWERS, "customer_id": "c1", "staff": "Sam", "quote_id": "q1"}


@pytest.mark.parametrize("fm", FIELDS, ids=[fm.dest_field for fm in FIELDS])
def test_a_bound_transform_answers_as_its_apply_does(fm):
    transform = TRANSFORMS[fm.transform]
    assert transform.bind(fm)(RECORD, CTX) == transform.apply(RECORD, fm, CTX)
    assert transform.bind(fm)({"id": "j9"}, CTX) == transform.apply({"id": "j9"}, fm, CTX)


def test_bound_transforms_give_the_values_the_rules_say():
    got = {fm.dest_field: TRANSFORMS[fm.transform].bind(fm)(RECORD, CTX) for fm in FIELDS}
    assert got["b"] == "Job" and got["c"] == Money(Decimal("10.50"), "AUD")
    assert got["d"].currency == "NZD"
    assert got["f"] == dt.date(2026, 2, 3) and got["g"] == dt.datetime(2026, 2, 3, tzinfo=dt.UTC)
    assert got["h"] is False and got["j"] == "OPEN" and got["k"] == Decimal("12.5")
    assert got["l"] == DestRef("company", "d-c1") and got["m"].refs == (DestRef("company", "d-c1"),)
    assert got["o"] == "Jo, Al" and got["p"] == Decimal("10.50") and got["q"] == "Sent: 10.50"
    assert got["r"] == "Job" and got["s"] == (DestRef("company", "d-c1"),)


def test_a_bound_transform_raises_what_its_rule_raises():
    unlisted = FieldMap("j", "value_map", ("status",), {"values": {"Open": "OPEN"}})
    with pytest.raises(TransformError, match="no value-map entry for 'Held'"):
        TRANSFORMS["value_map"].bind(unlisted)({"status": "Held"}, CTX)
    not_a_number = FieldMap("k", "json_key", ("answers",), {"key": "Signed", "as": "number"})
    with pytest.raises(TransformError, match="'Signed' is not a number"):
        TRANSFORMS["json_key"].bind(not_a_number)(RECORD, CTX)
    parent = FieldMap("l", "lookup", ("customer_id",), {"map": "company"}, required=True)
    with pytest.raises(TransformError, match="parent c2 was not loaded"):
        TRANSFORMS["lookup"].bind(parent)({"customer_id": "c2"}, CTX)
    unknown = FieldMap("p", "related", (), {"object": "quote", "via": "quote_id", "field": "status",
                                            "aggregate": "median"})
    with pytest.raises(TransformError, match="unknown aggregate"):
        TRANSFORMS["related"].bind(unknown)(RECORD, CTX)


def test_a_transform_given_either_way_gets_the_other():
    by_apply = Transform("shout", lambda record, fm, ctx: record[fm.sources[0]].upper())
    by_bind = Transform("shout", bind=lambda fm: lambda record, ctx: record[fm.sources[0]].upper())
    fm = FieldMap("x", "shout", ("name",), {})
    for transform in (by_apply, by_bind):
        assert transform.apply(RECORD, fm, CTX) == transform.bind(fm)(RECORD, CTX) == "JOB"


@pytest.mark.parametrize("data", [
    pa.record_batch({"id": ["a", "b"], "n": [1, None], "at": [dt.datetime(2026, 1, 1), None]}),
    pa.table({"id": ["a", "b", "c"],
              "amount": pa.array([Decimal("1.50"), None, Decimal("2")], pa.decimal128(9, 2))}),
    pa.record_batch({"id": pa.array([], pa.string())}),
    pa.record_batch([pa.array(["a"]), pa.array(["b"])], names=["x", "x"]),  # a repeated name: the last wins
    pa.table({"id": ["a", "b"]}).select([]),  # no columns: one empty row per row
], ids=["batch", "table", "empty", "repeated-name", "no-columns"])
def test_rows_of_is_to_pylist(data):
    rows = rows_of(data)
    assert repr(rows.rows) == repr(data.to_pylist())
    assert rows == data.to_pylist() and list(rows) == data.to_pylist() and len(rows) == data.num_rows


@pytest.mark.parametrize("ledger_url", ["sqlite", "postgres"], indirect=True)
def test_crosswalk_dest_ids_are_what_the_entries_hold(ledger_url):
    """The ids go to the database as one array (PostgreSQL) or one JSON text (SQLite): any number of
    them, ids JSON or SQL would have to escape, duplicates and ids with no entry."""
    url, schema = ledger_url
    ledger = Ledger(url, schema=schema)
    ledger.migrate()
    ids = [f"C{i:04d}" for i in range(1200)] + ['C"q', "C\\b", "C'x", "Cé-ü", "C%s", "C\u2028"]
    ledger.record_writes("r1", "twenty", [Write("customer", i, "company", f"d-{i}", "create", "h", None)
                                          for i in ids])
    ledger.record_writes("r1", "twenty", [Write("customer", i, "person", f"p-{i}", "create", "h", None)
                                          for i in ids[:10] + ids[-6:]])
    wanted = ids + ["missing"] + ids[:3] + ids[-6:]
    for target in ("company", "person"):
        entries = ledger.crosswalk_get_many("twenty", "customer", wanted, target)
        found = ledger.crosswalk_dest_ids("twenty", "customer", wanted, target)
        assert found == {source_id: entry.dest_id for (source_id, _), entry in entries.items()}
        assert len(found) == (len(ids) if target == "company" else 16)
    assert ledger.crosswalk_dest_ids("twenty", "customer", [], "company") == {}
    assert ledger.crosswalk_dest_ids("twenty", "job", ids, "company") == {}
    # Several targets of one source object in one read: what a read per target gives, target by target.
    targets = ("company", "person", "site")
    by_target = ledger.crosswalk_dest_ids_by_target("twenty", "customer", wanted, targets)
    assert by_target == {t: ledger.crosswalk_dest_ids("twenty", "customer", wanted, t) for t in targets}
    assert ledger.crosswalk_dest_ids_by_target("twenty", "customer", ids[:2], ["person"]) == {
        "person": {ids[0]: f"p-{ids[0]}", ids[1]: f"p-{ids[1]}"}}


@dataclasses.dataclass(frozen=True)
class Tagged:
    code: str
    note: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class Pair:
    left: str
    right: Decimal


def test_payload_hash_reads_a_dataclass_by_its_compared_fields_only():
    assert payload_hash({"t": Tagged("a", "one")}) == payload_hash({"t": Tagged("a", "two")})
    assert payload_hash({"t": Tagged("a")}) != payload_hash({"t": Tagged("b")})


def test_payload_hash_of_a_dataclass_ignores_what_its_instance_holds_besides_its_fields():
    plain = Pair("x", Decimal("1.0"))
    extra = Pair("x", Decimal("1.00"))
    object.__setattr__(extra, "cached", "not a field")
    assert payload_hash({"p": plain}) == payload_hash({"p": extra})


_MICROS = [None, 0, -1, 1, 1_700_000_000_123_456, -62_135_596_800_000_000, 253_402_300_799_999_999]


@pytest.mark.parametrize("column", [
    pa.array(_MICROS, pa.timestamp("us", "UTC")),
    pa.array(_MICROS, pa.timestamp("us")),
    pa.array([None if v is None else v // 1000 for v in _MICROS], pa.timestamp("ms", "UTC")),
    pa.array([None if v is None else v // 1_000_000 for v in _MICROS], pa.timestamp("s", "UTC")),
    pa.chunked_array([pa.array(_MICROS[:3], pa.timestamp("us", "UTC")), pa.array(_MICROS[3:], pa.timestamp("us", "UTC"))]),
    pa.array([None, 0, -1, 19_000, -719_162, 2_932_896], pa.date32()),
    pa.array([0, 1], pa.timestamp("us", "Australia/Brisbane")),  # another zone: Arrow's own conversion
    pa.array([None, None], pa.timestamp("us", "UTC")),
    pa.array([None, Decimal("0"), Decimal("-0.000001"), Decimal("123.450000"), Decimal("-99999999999999999.999999"),
              Decimal("1E-6"), Decimal("10")], pa.decimal128(24, 6)),
    pa.array([Decimal("0"), Decimal("-7"), Decimal("10" * 18)], pa.decimal128(38, 0)),
    pa.array([Decimal("-0.01"), None], pa.decimal256(40, 2)),
    pa.array([Decimal("1E+3"), Decimal("-2E+3")], pa.decimal128(5, -3)),  # written with an exponent
], ids=["utc-us", "naive-us", "utc-ms", "utc-s", "chunked", "date32", "other-zone", "all-none", "amounts",
        "whole-amounts", "decimal256", "negative-scale"])
def test_python_values_are_to_pylist(column):
    """Timestamps and dates made from their fields, amounts from their text: the same values
    (to the places and sign), the same tzinfo object."""
    from airflow_ascora_provider.source.staging import python_values

    got, expected = python_values(column), column.to_pylist()
    assert repr(got) == repr(expected)
    assert [getattr(v, "tzinfo", None) for v in got] == [getattr(v, "tzinfo", None) for v in expected]
    assert all(a is None or getattr(a, "tzinfo", None) is getattr(b, "tzinfo", None) for a, b in zip(got, expected))


def test_python_values_of_many_timestamps_and_dates_across_pythons_years_are_to_pylist():
    """Every field packed right (days before the epoch, leap days, the microsecond's three bytes)."""
    import random

    from airflow_ascora_provider.source.staging import python_values

    pick = random.Random(8)
    low, high = -62_135_596_800_000_000, 253_402_300_799_999_999  # 0001-01-01 .. 9999-12-31T23:59:59.999999
    micros = [None if pick.random() < 0.05 else pick.randint(low, high) for _ in range(5000)]
    micros += [low, high, 0, -1, 951_782_400_000_000, 951_868_799_999_999]  # around 2000-02-29
    days = [None if value is None else value // 86_400_000_000 for value in micros]
    for column in (pa.array(micros, pa.timestamp("us", "UTC")), pa.array(micros, pa.timestamp("us")),
                   pa.array(days, pa.date32())):
        got, expected = python_values(column), column.to_pylist()
        assert got == expected
        assert [getattr(v, "tzinfo", None) for v in got] == [getattr(v, "tzinfo", None) for v in expected]
    assert python_values(pa.array([], pa.timestamp("us", "UTC"))) == []


def test_python_values_out_of_pythons_range_raise_as_arrow_does():
    from airflow_ascora_provider.source.staging import python_values

    column = pa.array([2**62], pa.timestamp("us", "UTC"))
    with pytest.raises(Exception) as arrow:
        column.to_pylist()
    with pytest.raises(type(arrow.value)):
        python_values(column)


def test_dicts_of_are_the_rows_zipped_each_its_own_dict():
    from airflow_ascora_provider.source.staging import dicts_of

    names = ("b", "a", "ünï")
    rows = [(1, None, "x"), ("", [], Decimal("1.0")), (None, None, None)]
    made = dicts_of(names, iter(rows))
    assert made == [dict(zip(names, row)) for row in rows]
    assert [list(d) for d in made] == [list(names)] * 3  # the names' order, as dict(zip) keeps it
    made[0]["b"] = "changed"
    assert made[1]["b"] == "" and made[2]["b"] is None
    assert dicts_of(names, []) == [] and dicts_of((), [(), ()]) == [{}, {}]


@pytest.mark.parametrize("values, kind", [
    (["a", "", None], pa.string()), (["a", "b"], pa.string()), ([None, None], pa.string()), ([], pa.string()),
    ([1, None, -2], pa.int64()), ([1.5, None], pa.float64()), ([True, None, False], pa.bool_()),
    ([Decimal("1.50"), None], pa.decimal128(10, 2)), ([Decimal("1E+3")], pa.decimal128(5, -3)),
    ([_MICROS[1], None], pa.timestamp("us", "UTC")), ([0, 1], pa.timestamp("us", "Australia/Brisbane")),
    ([19_000, None], pa.date32()), ([["x"], None], pa.list_(pa.string())),
], ids=["text", "text-no-none", "text-all-none", "text-empty", "int", "float", "bool", "decimal", "decimal-exponent",
        "timestamp", "timestamp-zone", "date", "list"])
def test_staged_columns_know_the_classes_of_their_values(values, kind):
    """The classes a staged column says it holds are exactly those of its values (what the transforms
    and digests then trust instead of looking at each value); a type it cannot tell stays a plain list."""
    from airflow_ascora_provider.source.columns import KindedColumn
    from airflow_ascora_provider.source.staging import rows_of

    column = rows_of(pa.table({"c": pa.array(values, kind)})).columns["c"]
    if kind == pa.list_(pa.string()):
        assert not isinstance(column, KindedColumn)
    else:
        assert column.kinds == set(map(type, column)), column


def test_chunks_cut_across_blocks_keep_the_classes_of_every_piece():
    from airflow_ascora_provider.source.columns import KindedColumn
    from airflow_ascora_provider.source.staging import StagedRecords, StagedRows

    def block(texts):
        return StagedRows([{"t": t} for t in texts], {"t": KindedColumn(texts, frozenset(map(type, texts)))})

    [first, second] = StagedRecords(iter([block(["a", "b", "c"]), block([None, "d", "e"])])).chunks(4)
    assert list(first.columns["t"]) == ["a", "b", "c", None] and first.columns["t"].kinds == {str, type(None)}
    assert list(second.columns["t"]) == ["d", "e"] and second.columns["t"].kinds >= {str}
    plain = StagedRecords(iter([StagedRows([{"t": "a"}], {"t": ["a"]}), block(["b"])])).chunks(2)
    assert not hasattr(next(plain).columns["t"], "kinds")  # a piece that does not know: nobody knows
