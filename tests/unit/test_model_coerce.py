"""Canonical model and value coercion."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from airflow_ascora_provider.source.coerce import canonical_record, issues_of, record_hash, to_datetime
from airflow_ascora_provider.source.model import MODEL, dependency_order, get_object


def test_dependency_order_puts_every_relation_target_first():
    order = dependency_order()
    assert set(order) == set(MODEL)
    position = {name: i for i, name in enumerate(order)}
    for obj in MODEL.values():
        for rel in obj.relations:
            for target in rel.targets:
                if target != obj.name:
                    assert position[target] < position[obj.name], (obj.name, rel.field, target)


def test_dependency_order_of_a_subset_is_derived_not_listed():
    assert dependency_order(("job", "customer", "site")) == ("customer", "site", "job")


@pytest.mark.parametrize("raw, expected", [
    ("3/4/2024", dt.datetime(2024, 4, 3, tzinfo=dt.UTC)),  # Australian day/month
    ("2026-02-17T20:50:55.943Z", dt.datetime(2026, 2, 17, 20, 50, 55, 943000, tzinfo=dt.UTC)),
    (45292, dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),  # Excel serial day
    ("17 Feb 2026", dt.datetime(2026, 2, 17, tzinfo=dt.UTC)),
])
def test_dates_read_australian_first(raw, expected):
    assert to_datetime(raw) == expected


def test_bad_values_become_issues_naming_field_and_value():
    job = get_object("job")
    record = canonical_record(job, {"id": "j1", "job_number": "J1", "customer_id": "c1",
                                    "expected_date": "TBC", "total_ex_tax": "$1,200.50",
                                    "status": "Finished"}, "test")
    issues = json.loads(record["_issues"])
    assert issues == [{"field": "expected_date", "value": "TBC", "reason": "not a date (expected date)"}]
    assert record["expected_date"] is None
    assert record["total_ex_tax"] == Decimal("1200.50")
    assert record["status"] == "Completed"  # Ascora's own synonym


def test_required_values_missing_are_reported():
    record = canonical_record(get_object("job"), {"id": "j1"}, "test")
    fields = {i["field"] for i in json.loads(record["_issues"])}
    assert {"job_number", "customer_id"} <= fields


def test_unknown_canonical_field_is_a_reader_bug():
    with pytest.raises(KeyError, match="no canonical field"):
        canonical_record(get_object("job"), {"id": "j1", "jobNumber": "J1"}, "test")


def test_hash_ignores_representation_differences():
    job = get_object("job")
    a = canonical_record(job, {"id": "j", "job_number": "J1", "customer_id": "c", "total_ex_tax": "1200.5"}, "api")
    b = canonical_record(job, {"id": "j", "job_number": "J1", "customer_id": "c", "total_ex_tax": 1200.50}, "xlsx")
    assert a["_hash"] == b["_hash"] == record_hash(job, a)


def test_invalid_email_kept_but_flagged():
    record = canonical_record(get_object("contact"), {"id": "x", "customer_id": "c", "email": "bob@"}, "t")
    assert record["email"] == "bob@"
    assert json.loads(record["_issues"])[0]["reason"] == "invalid e-mail address"


def test_custom_fields_from_api_list_become_json():
    record = canonical_record(get_object("customer"), {"id": "c", "name": "A", "custom_fields": [
        {"fieldName": "Gate Code", "fieldValue": 1234}]}, "t")
    assert json.loads(record["custom_fields"]) == {"Gate Code": "1234"}


# ---- what the API fuzz test (tests/resilience/test_fuzz_api.py) found ----------------------------

@pytest.mark.parametrize("raw", [[1, None], ["text"], [[{"fieldName": "a"}]], "[" * 5000])
def test_custom_fields_of_the_wrong_shape_are_an_issue_not_a_crash(raw):
    record = canonical_record(get_object("customer"), {"id": "c1", "name": "Acme", "custom_fields": raw}, "api")
    assert record["custom_fields"] is None
    (issue,) = [i for i in issues_of(record) if i["field"] == "custom_fields"]
    assert issue["reason"]


def test_blank_custom_field_entries_are_ignored():
    record = canonical_record(get_object("customer"), {
        "id": "c1", "name": "Acme", "custom_fields": [None, {"fieldName": "Gate code", "fieldValue": "1234"}]}, "api")
    assert json.loads(record["custom_fields"]) == {"Gate code": "1234"}
    assert issues_of(record) == []


def test_lone_surrogates_are_replaced_and_named():
    record = canonical_record(get_object("customer"), {"id": "c1", "name": "Caf\ud800 Pty",
                                                       "custom_fields": {"k\udfff": "v"}}, "api")
    assert record["name"] == "Caf\ufffd Pty"
    assert json.loads(record["custom_fields"]) == {"k\ufffd": "v"}
    assert {i["field"] for i in issues_of(record)} == {"name", "custom_fields"}
    assert all("not valid Unicode" in i["reason"] for i in issues_of(record))
    record["_hash"].encode("ascii")  # hashing worked: nothing left that UTF-8 refuses
