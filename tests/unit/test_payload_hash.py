"""The payload hash is stored in every ledger: the same payload must hash the same in every release.

A change here makes every record of an in-flight migration look changed, so the next delta rewrites
the whole tenant. The expected digests were computed by the releases that wrote them; a faster
implementation must reproduce them exactly, and a new way of hashing is a new version that loads
still compare the earlier one's digests by (tests/integration/test_digest_upgrade.py).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from airflow_ascora_provider.engine.context import is_digest_v1, payload_hash, payload_hash_v1
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
    assert payload_hash(PAYLOAD) == "2:f0e11fe9bb5853b8cbe088ba4606a481"
    # The first way, which ledgers written before the version prefix hold.
    assert payload_hash_v1(PAYLOAD) == "4d58dbe8e8ebac1e5d42b4845b045512"
    assert is_digest_v1(payload_hash_v1(PAYLOAD)) and not is_digest_v1(payload_hash(PAYLOAD))
    assert not is_digest_v1(None)


def test_the_keys_count_as_much_as_the_values():
    """The keys are hashed once a key set, the values joined: neither may stand in for the other."""
    digests = {payload_hash(payload) for payload in (
        {"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": 1, "c": 2}, {"b": 1, "a": 2}, {"a": "1,2"}, {"a": [1, 2]},
        {"a": 1, "b": 2, "c": None}, {"a,b": 1}, {"a": "1", "b": 2}, {}, {"a": None},
    )}
    assert len(digests) == 10  # {"a": 2, "b": 1} and {"b": 1, "a": 2} are one payload; the rest each its own
    assert payload_hash({"b": 2, "a": 1}) == payload_hash({"a": 1, "b": 2})  # the keys' order in the dict


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
