"""The payload hash is stored in every ledger: the same payload must hash the same in every release.

A change here makes every record of an in-flight migration look changed, so the next delta rewrites
the whole tenant. The expected digest was computed by the release that wrote the first ledgers; a
faster implementation must reproduce it exactly.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from airflow_ascora_provider.engine.context import payload_hash
from airflow_ascora_provider.mapping.values import (
    Address,
    DestRef,
    Emails,
    FileRef,
    FullName,
    Link,
    Money,
    Phones,
    UserRef,
)

PAYLOAD = {
    "amount": Money(Decimal("12.50")), "name": FullName("Zoë", None), "addr": Address("1 St", city="Perth"),
    "emails": Emails("a@b.co", ("c@d.co",)), "phones": Phones("0400"), "link": Link("http://x"),
    "ref": DestRef("company", "abc"), "owner": UserRef("u1", fallback=True),
    "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "day": dt.date(2024, 2, 29), "n": Decimal("1.000"),
    "tags": frozenset(["a"]), "tup": ("x", Decimal("2.0")), "none": None, "f": 1.5,
}


def test_digest_is_the_one_existing_ledgers_hold():
    assert payload_hash(PAYLOAD) == "4d58dbe8e8ebac1e5d42b4845b045512"


def test_a_file_hashes_by_content_not_by_where_it_is_staged():
    a = FileRef("ab" * 32, 10, "photo.jpg", "image/jpeg", uri="/staging/run-1/files/x")
    b = FileRef("ab" * 32, 10, "photo.jpg", "image/jpeg", uri="/staging/run-2/files/x")
    assert payload_hash({"file": a}) == payload_hash({"file": b})
    assert payload_hash({"file": a}) != payload_hash({"file": FileRef("cd" * 32, 10, "photo.jpg", "image/jpeg")})


def test_amounts_equal_in_value_hash_equal():
    assert payload_hash({"n": Decimal("1.0")}) == payload_hash({"n": Decimal("1.000")})


def test_a_value_json_cannot_hold_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot serialise object"):
        payload_hash({"x": object()})
