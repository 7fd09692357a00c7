"""Bad input, fuzzed, through the REST API and on into the engine's transform.

The export fuzz test (``test_fuzz_exports``) covers files. This one covers the other source and the
next stage. Hypothesis builds Ascora API records the way a long-lived tenant and a sloppy integration
leave them: JSON of the wrong type in any field (numbers as text, text as numbers, objects and lists
where a string belongs), dates that do not exist, ids that repeat or are missing, contacts whose
customer is gone, very long text, control characters, formula-like strings and text that went
through the wrong encoding once (mojibake, lone surrogates). The Ascora emulator serves them over
HTTP and extraction reads them with the real hook and reader.

Then every staged record goes through every shipped destination's customer and contact maps, as the
load would run them. Nothing may crash: each record either becomes a payload or is quarantined with
a reason that names the map, the field and the value.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ascora_provider.destinations.manager import destinations
from airflow_ascora_provider.engine.context import MigrationContext, payload_hash
from airflow_ascora_provider.engine.transform import BatchTransformer
from airflow_ascora_provider.hooks.ascora import AscoraHook
from airflow_ascora_provider.hooks.http_client import RetryPolicy
from airflow_ascora_provider.ledger import Ledger
from airflow_ascora_provider.mapping.spec import load_mapping
from airflow_ascora_provider.sandbox.ascora import DEFAULT_API_KEY, create_app, fixture_tenant_records, write_tenant
from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.source.api_reader import AscoraApiReader
from airflow_ascora_provider.source.extract import extract
from airflow_ascora_provider.source.model import ISSUES_COLUMN
from airflow_ascora_provider.source.staging import Snapshot

_counter = itertools.count()

# API field → the canonical field it lands in, for the fields whose value must survive or be named.
CHECKED = {"emailAddress": "email", "streetLatitude": "latitude", "onHold": "on_hold",
           "dateCreated": "date_created"}
OTHER_FUZZED = ("companyName", "phoneNumber", "streetLine1", "customerType", "customFields",
                "leadSource", "assignedUser")

nasty_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["=HYPERLINK(\"http://x\")", "+61 400", "@SUM(A1)", "\t=cmd|' /C calc'!A0",
                     "2020-02-30", "31/31/2020", "yesterday", "2024-13-01T25:61:00Z", "1e309", "NaN", "-",
                     "CafÃ© Pty Ltd", "\ud800broken", "O'Brien\r\n& Sons", "a@b", "someone@example.com",
                     "-33.8688", "true", "maybe", "\x00\x1b[31m"]),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(min_value=1000, max_value=40_000)),
)
nasty_value = st.one_of(
    nasty_scalar,
    st.lists(nasty_scalar, max_size=3),
    st.dictionaries(st.sampled_from(["id", "name", "value", "x"]), nasty_scalar, max_size=3),
)
ids = st.one_of(st.sampled_from(["c1", "c2", " c1 ", "", None, 7]), st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True))


def _templates() -> tuple[dict[str, Any], dict[str, Any]]:
    resources, _files = fixture_tenant_records()
    return resources["customers"][0], resources["contacts"][0]


CUSTOMER, CONTACT = _templates()


@st.composite
def tenants(draw) -> dict[str, list[dict[str, Any]]]:
    customers = []
    for n in range(draw(st.integers(min_value=1, max_value=12))):
        record = json.loads(json.dumps(CUSTOMER))
        record["customerId"] = draw(ids)
        record["customerName"] = f"Row {n} " + draw(st.text(max_size=10))
        record["billingCustomer"] = None
        for field in draw(st.lists(st.sampled_from((*CHECKED, *OTHER_FUZZED)), max_size=6, unique=True)):
            record[field] = draw(nasty_value)
        customers.append(record)
    contacts = []
    known = [c["customerId"] for c in customers]
    for n in range(draw(st.integers(min_value=0, max_value=6))):
        record = json.loads(json.dumps(CONTACT))
        record["contactId"] = f"k{n}"
        parent = draw(st.one_of(st.sampled_from(known), st.just("no-such-customer"), st.none()))
        record["customer"] = {"id": parent, "name": "?"} if parent is not None else None
        for field in draw(st.lists(st.sampled_from(["firstName", "emailAddress", "mobileNumber", "position"]),
                                   max_size=3, unique=True)):
            record[field] = draw(nasty_value)
        contacts.append(record)
    return {"customers": customers, "contacts": contacts}


def _names_the_problem(entry, map_name: str) -> bool:
    return bool(entry.reason) and entry.reason.startswith(f"[{map_name}]") and bool(entry.field)


@pytest.fixture(scope="module")
def shipped_mappings():
    return {name: load_mapping(cls.default_mapping) for name, cls in sorted(destinations().items())}


class _Offline:
    """What the transform asks of a destination: its file size limit. The transform never calls an API."""

    class capabilities:  # noqa: N801 - mirrors Destination.capabilities
        max_file_bytes = 25 * 1024 * 1024


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(resources=tenants())
def test_malformed_api_records_extract_and_transform_without_loss(tmp_path_factory, shipped_mappings, resources):
    folder = tmp_path_factory.mktemp(f"fuzz-api-{next(_counter)}")
    tenant = write_tenant(folder / "tenant", resources)
    snapshot = Snapshot(folder / "staging", "fuzz")
    with ServedApp(create_app(tenant)) as served:
        hook = AscoraHook(base_url=served.url, api_key=DEFAULT_API_KEY, page_size=5, enable_extensions=True,
                          retry=RetryPolicy(base_delay=0.01, min_retry_after=0.05))
        try:
            manifest = extract(AscoraApiReader(hook, extensions=True), snapshot, objects=["customer", "contact"])
        finally:
            hook.close()

    # Extraction: every record served is read once and ends staged, quarantined or skipped, with a reason.
    for name, stats in manifest["objects"].items():
        assert stats["read"] == stats["staged"] + stats["quarantined"] + stats["skipped"], name
    served_customers = resources["customers"]
    assert manifest["objects"]["customer"]["read"] == len(served_customers)
    rejected = list(snapshot.iter_rejected())
    assert len(rejected) == manifest["totals"]["quarantined"] + manifest["totals"]["skipped"]
    for row in rejected:
        assert row["object"] and row["reason"] and row["disposition"] in ("quarantined", "skipped"), row

    # A value that did not survive is named in the record's issues, never silently emptied.
    staged = list(snapshot.iter_records("customer"))
    by_name = {r["name"]: r for r in staged}
    for raw in served_customers:
        record = by_name.get(raw["customerName"].strip())
        if record is None:  # quarantined (no id, a repeated id): the rejects above carry its reason
            continue
        issues = {i["field"] for i in json.loads(record[ISSUES_COLUMN] or "[]")}
        for api_field, field in CHECKED.items():
            value = raw.get(api_field)
            if value not in (None, "", [], {}) and not (isinstance(value, str) and not value.strip()) \
                    and record.get(field) is None:
                assert field in issues, (record["id"], field, repr(value)[:80])

    # Transform: every staged customer and contact through every shipped map that reads them.
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}")
    ledger.migrate()
    contacts = list(snapshot.iter_records("contact"))
    for destination, mapping in shipped_mappings.items():
        ctx = MigrationContext("fuzz", destination, ledger, str(folder / "staging"), "fuzz", mapping)
        ctx.use_destination(_Offline())
        for om in mapping.maps.values():
            records = {"customer": staged, "contact": contacts}.get(om.source)
            if not records:
                continue
            outcome = BatchTransformer(ctx, om).transform([dict(r) for r in records])
            accounted = {r.source_id for r in outcome.records} | {q.source_id for q in outcome.quarantined}
            applicable = [r for r in records if om.when is None or om.when.matches(r)]
            assert accounted == {r["id"] for r in applicable}, (destination, om.name)
            for entry in outcome.quarantined:
                assert _names_the_problem(entry, om.name), (destination, om.name, entry)
            for record in outcome.records:
                payload_hash(record.payload)  # what the load computes next: must not choke on any value
