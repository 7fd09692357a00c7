"""AscoraApiReader against the emulator: canonical names, relations, origins and the real-API-only view."""

from __future__ import annotations

import json
import re

import pytest

from airflow_ascora_provider.hooks.ascora import AscoraExtensionDisabled, AscoraHook
from airflow_ascora_provider.hooks.http_client import RetryPolicy
from airflow_ascora_provider.sandbox.ascora import (
    DEFAULT_API_KEY,
    create_app,
    fixture_tenant_records,
    write_tenant,
)
from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.source.api_reader import BASE_OBJECTS, EXTENSION_OBJECTS, AscoraApiReader
from airflow_ascora_provider.source.coerce import canonical_record, issues_of
from airflow_ascora_provider.source.model import ISSUES_COLUMN, get_object

KEY = DEFAULT_API_KEY


def gid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    resources, files = fixture_tenant_records()
    return write_tenant(tmp_path_factory.mktemp("tenant"), resources, files=files)


@pytest.fixture(scope="module")
def server(tenant):
    with ServedApp(create_app(tenant)) as served:
        yield served


@pytest.fixture
def emulator(server):
    server.control.reset_log()
    return server


@pytest.fixture
def make_reader(emulator):
    hooks = []

    def make(*, extensions=True, hook_extensions=True, page_size=3, **kwargs) -> AscoraApiReader:
        hook = AscoraHook(
            base_url=emulator.url,
            api_key=KEY,
            page_size=page_size,
            enable_extensions=hook_extensions,
            retry=RetryPolicy(base_delay=0.01, min_retry_after=0.05),
        )
        hooks.append(hook)
        return AscoraApiReader(hook, extensions=extensions, **kwargs)

    yield make
    for hook in hooks:
        hook.close()


def canonical(reader: AscoraApiReader, name: str) -> list[dict]:
    """What extraction does with each raw record: any unknown field name raises KeyError here."""
    out = []
    for raw in reader.iter_raw(name):
        values = dict(raw.values)
        if raw.issues:
            values[ISSUES_COLUMN] = [i.as_dict() for i in raw.issues]
        record = canonical_record(get_object(name), values, raw.origin)
        record["_raw"] = raw
        out.append(record)
    return out


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


EXPECTED_COUNTS = {
    "customer": 3,
    "site": 4,
    "contact": 4,
    "job_type": 2,
    "quote": 3,
    "quote_section": 2,
    "quote_line_item": 2,
    "job": 5,
    "job_section": 2,
    "supplier": 2,
    "supplier_bill": 2,
    "supplier_bill_line": 2,
    "invoice": 3,
    "invoice_line": 6,
    "staff_user": 2,
    "equipment": 2,
    "note": 3,
    "attachment": 2,
    "enquiry": 2,
    "form_response": 1,
}


def test_every_object_yields_canonical_records(make_reader, emulator):
    reader = make_reader()
    assert set(reader.objects()) == set(BASE_OBJECTS) | set(EXTENSION_OBJECTS) == set(EXPECTED_COUNTS)
    for name in reader.objects():
        records = canonical(reader, name)
        assert len(records) == EXPECTED_COUNTS[name], name
        for record in records:
            assert record["id"], (name, record)
            assert re.match(
                r"^api:/[A-Za-z/]+(\?[A-Za-z=]+)?(#p\d+)?(/[A-Za-z]+(/\d+)?)*$", record["_origin"]
            ), record["_origin"]
            missing = [i for i in issues_of(record) if i["reason"] == "required value is missing"]
            assert missing == [], (name, record["id"], missing)
    assert [r for r in emulator.control.requests if r.method != "GET"] == []


def test_customers_and_sites(make_reader):
    reader = make_reader()
    customers = by_id(canonical(reader, "customer"))
    acme, jane, strata = customers[gid(1)], customers[gid(2)], customers[gid(3)]
    assert acme["name"] == "Acme Plumbing Pty Ltd" and acme["company_name"] == "Acme Plumbing Pty Ltd"
    assert acme["is_company"] is True and jane["is_company"] is False
    assert strata["is_company"] is True  # no company name, but a Strata customer type
    assert acme["address_line1"] == "1 Main St" and acme["postal_address_line1"] == "PO Box 1"
    assert acme["customer_type"] == "Commercial" and acme["lead_source"] == "Google"
    assert acme["assigned_user_name"] == "Sam Tech" and acme["accounting_system"] == "Xero"
    assert json.loads(acme["custom_fields"]) == {"Customer text": "note 1"}
    assert str(acme["latitude"]) == "-32.01"
    sites = by_id(canonical(reader, "site"))
    assert {k: v["billing_customer_id"] for k, v in sites.items()} == {
        gid(11): gid(1),
        gid(12): gid(1),
        gid(13): gid(3),
        gid(14): gid(2),
    }
    origins = [r["_origin"] for r in canonical(reader, "site")]
    assert origins == ["api:/Customers/Customers?SiteBillingType=Site#p1"] * 3 + [
        "api:/Customers/Customers?SiteBillingType=Site#p2"
    ]


def test_jobs_relations(make_reader):
    reader = make_reader()
    quotes = by_id(canonical(reader, "quote"))
    jobs = {r["job_number"]: r for r in canonical(reader, "job")}
    assert set(jobs) == {"J1001", "J1002", "J1003", "J1004", "J1005"}
    j1 = jobs["J1001"]
    assert (j1["customer_id"], j1["site_id"]) == (gid(1), gid(11))
    assert j1["quote_id"] == gid(201) and quotes[gid(201)]["quote_number"] == "Q0001"
    assert j1["status"] == "Completed" and j1["site_contact_id"] == gid(102)
    assert j1["assigned_user_name"] == "Sam Tech" and j1["assigned_user_id"] == gid(901)
    assert j1["job_type_id"] == gid(801) and j1["job_type_name"] == "Standard Job"
    assert str(j1["total_tax"]) == "100.0" and j1["_origin"] == "api:/Jobs/Jobs#p1"
    # the "site" is a billing customer: no site
    assert (jobs["J1002"]["customer_id"], jobs["J1002"]["site_id"]) == (gid(2), None)
    # no billing customer: the site's billing customer; status from the numeric code
    j3 = jobs["J1003"]
    assert (j3["customer_id"], j3["site_id"], j3["status"], j3["quote_id"]) == (
        gid(3),
        gid(13),
        "In Progress",
        gid(202),
    )
    # an unknown quote number leaves quote_id empty and says why
    j4 = jobs["J1004"]
    assert j4["quote_id"] is None
    assert {
        "field": "quote_id",
        "value": "Q9999",
        "reason": "quote number not found in /Quotes/Quotes",
    } in issues_of(j4)
    assert jobs["J1005"]["assigned_user_id"] is None
    sections = {r["job_number"]: r for r in canonical(reader, "job_section")}
    assert set(sections) == {"J1001.01", "J1001.02"}
    assert {s["job_id"] for s in sections.values()} == {gid(301)}
    assert sections["J1001.02"]["assigned_user_id"] == gid(902) and sections["J1001.02"]["display_order"] == 2


def test_quote_children(make_reader):
    reader = make_reader()
    quotes = by_id(canonical(reader, "quote"))
    q1, q3 = quotes[gid(201)], quotes[gid(203)]
    assert (q1["customer_id"], q1["site_id"], q1["status"]) == (gid(1), gid(11), "Won")
    assert (q3["customer_id"], q3["site_id"], q3["status"], q3["reason_for_loss"]) == (
        gid(2),
        None,
        "Lost",
        "Price",
    )
    assert str(q1["valid_until_date"]) == "2025-06-01"
    sections = by_id(canonical(reader, "quote_section"))
    assert {s["quote_number"]: s["quote_id"] for s in sections.values()} == {
        "Q0001.01": gid(201),
        "Q0001.02": gid(201),
    }
    assert sections[gid(211)]["_origin"] == "api:/Quotes/Quotes#p1/childQuotes/0"
    items = canonical(reader, "quote_line_item")
    assert [(i["line_number"], i["item_type"], i["section_quote_number"]) for i in items] == [
        (1, "SUPPLY", "Q0001.01"),
        (2, "LABOUR", "Q0001.02"),
    ]
    assert items[1]["labour_role"] == "Plumber" and str(items[1]["hours"]) == "2"


def test_suppliers_and_bills(make_reader):
    reader = make_reader()
    supplier = by_id(canonical(reader, "supplier"))[gid(501)]
    assert (supplier["name"], supplier["first_name"], supplier["phone"], supplier["suburb"]) == (
        "Reece",
        "Kim",
        "08 9222 2222",
        "Welshpool",
    )
    bills = {b["tracking_number"]: b for b in canonical(reader, "supplier_bill")}
    assert bills["SUP-000"]["supplier_id"] == gid(501) and bills["SUP-000"]["job_id"] == gid(
        301
    )  # reference J1001
    assert bills["SUP-001"]["job_id"] is None  # a PO number, not a job
    lines = canonical(reader, "supplier_bill_line")
    assert {line["supplier_bill_id"] for line in lines} == {gid(551), gid(552)}
    assert lines[0]["id"] == f"{gid(551)}#1"


def test_invoices_full_history_with_extensions(make_reader):
    reader = make_reader()
    invoices = {i["invoice_number"]: i for i in canonical(reader, "invoice")}
    assert set(invoices) == {"INV-0001", "INV-0002", "INV-0003"}
    assert invoices["INV-0001"]["status"] == "Paid" and invoices["INV-0001"]["sent_to_accounts"] is True
    assert invoices["INV-0002"]["customer_id"] == gid(2) and invoices["INV-0002"]["job_id"] == gid(302)
    assert json.loads(invoices["INV-0002"]["custom_fields"]) == {"Invoice text": "INV-0002"}
    lines = canonical(reader, "invoice_line")
    assert len(lines) == 6 and {line["line_number"] for line in lines} == {1, 2}


def test_extension_objects(make_reader):
    reader = make_reader()
    users = by_id(canonical(reader, "staff_user"))
    assert users[gid(901)]["full_name"] == "Sam Tech" and users[gid(901)]["labour_role"] == "Plumber"
    equipment = by_id(canonical(reader, "equipment"))
    assert (equipment[gid(701)]["customer_id"], equipment[gid(701)]["site_id"]) == (gid(1), gid(11))
    # recorded against a site only: the site's payer becomes the customer
    assert (equipment[gid(702)]["customer_id"], equipment[gid(702)]["site_id"]) == (gid(3), gid(13))
    notes = by_id(canonical(reader, "note"))
    assert [notes[gid(n)]["entity_type"] for n in (751, 752, 753)] == ["Job", "Customer", "Site"]
    assert notes[gid(751)]["content"] == "Customer called"
    attachments = canonical(reader, "attachment")
    assert [a["entity_type"] for a in attachments] == ["Job", "Quotation"]
    assert attachments[0]["_raw"].fetch() == b"\xff\xd8JPEG\xff\xd9"
    enquiries = by_id(canonical(reader, "enquiry"))
    assert enquiries[gid(781)]["suburb"] == "Perth" and enquiries[gid(782)]["lead_source"] == "Google"
    assert {"field": "email", "value": "not-an-email", "reason": "invalid e-mail address"} in issues_of(
        enquiries[gid(782)]
    )
    form = canonical(reader, "form_response")[0]
    assert form["job_id"] == gid(301) and json.loads(form["answers"]) == {"PPE": "Yes", "SiteHazards": "Dog"}
    job_types = by_id(canonical(reader, "job_type"))
    assert job_types[gid(801)]["is_default"] is True


def test_real_api_view_without_extensions(make_reader, emulator):
    reader = make_reader(extensions=False)
    assert reader.objects() == BASE_OBJECTS
    with pytest.raises(KeyError):
        reader.iter_raw("equipment")
    job_types = canonical(reader, "job_type")
    assert {(t["id"], t["name"]) for t in job_types} == {
        (gid(801), "Standard Job"),
        (gid(802), "Maintenance"),
    }
    # not full history: only the unsent invoice dated before tomorrow
    invoices = canonical(reader, "invoice")
    assert [i["invoice_number"] for i in invoices] == ["INV-0002"]
    assert invoices[0]["_origin"] == "api:/Accounting/GetInvoicesToSend"
    assert len(canonical(reader, "invoice_line")) == 2
    later = make_reader(extensions=False, invoices_prior_to="2031-01-01")
    assert [i["invoice_number"] for i in canonical(later, "invoice")] == ["INV-0002", "INV-0003"]
    jobs = {j["job_number"]: j for j in canonical(reader, "job")}
    assert jobs["J1001"]["assigned_user_id"] is None and jobs["J1001"]["assigned_user_name"] == "Sam Tech"
    ext_paths = (
        "/Users",
        "/JobTypes",
        "/Invoices",
        "/Equipment",
        "/Notes",
        "/Attachments",
        "/Enquiries",
        "/Forms",
    )
    assert [r.path for r in emulator.control.requests if r.path.startswith(ext_paths)] == []
    assert [r for r in emulator.control.requests if r.method != "GET"] == []


def test_extensions_requested_but_hook_disabled(make_reader):
    reader = make_reader(extensions=True, hook_extensions=False)
    with pytest.raises(AscoraExtensionDisabled, match="Excel export"):
        reader.objects()
    assert make_reader(extensions=None, hook_extensions=False).objects() == BASE_OBJECTS


def test_indexes_are_built_once_and_reused(make_reader, emulator):
    reader = make_reader(page_size=1000)
    canonical(reader, "customer")
    canonical(reader, "site")
    canonical(reader, "quote")
    emulator.control.reset_log()
    canonical(reader, "job")
    canonical(reader, "job_section")
    paths = [r.path for r in emulator.control.requests]
    # customers, quotes and users (met on quotes) were already known: only the two job walks now
    assert paths == ["/Jobs/Jobs", "/Jobs/Jobs"]
    alone = make_reader(page_size=1000)
    emulator.control.reset_log()
    canonical(alone, "job_section")  # parents unknown: one top-level job walk for the index
    assert sorted(r.path for r in emulator.control.requests) == ["/Jobs/Jobs", "/Jobs/Jobs", "/Users/Users"]


def test_dirty_tenant(tmp_path):
    resources, files = fixture_tenant_records()
    resources["customers"].append(dict(resources["customers"][0]))  # same id twice
    jobs = resources["jobs"]
    jobs[0]["totalExTax"] = "lots"
    jobs[3]["jobStatus"], jobs[3]["jobStatusText"] = 42, None
    jobs[4]["billingCustomer"] = {"id": gid(13), "name": "a site"}  # billing customer that is a site
    jobs[5]["siteCustomer"] = {"id": gid(999), "name": "ghost"}
    root = write_tenant(tmp_path / "dirty", resources, files=files, dirty=True)
    with ServedApp(create_app(root)) as served:
        hook = AscoraHook(base_url=served.url, api_key=KEY, page_size=2, enable_extensions=True)
        reader = AscoraApiReader(hook)
        customers = canonical(reader, "customer")
        assert [c["id"] for c in customers].count(gid(1)) == 2  # extraction, not the reader, dedupes
        jobs_out = {j["job_number"]: j for j in canonical(reader, "job")}
        assert jobs_out["J1001"]["total_ex_tax"] is None
        assert any(i["field"] == "total_ex_tax" for i in issues_of(jobs_out["J1001"]))
        assert jobs_out["J1002"]["status"] is None
        assert {"field": "status", "value": 42, "reason": "unknown Ascora status code"} in issues_of(
            jobs_out["J1002"]
        )
        assert jobs_out["J1003"]["customer_id"] == gid(3)
        assert any("refers to a site" in i["reason"] for i in issues_of(jobs_out["J1003"]))
        j4 = jobs_out["J1004"]
        assert j4["site_id"] is None and j4["customer_id"] == gid(2)
        assert any(i["field"] == "site_id" and i["value"] == gid(999) for i in issues_of(j4))
        hook.close()


def test_extraction_end_to_end(make_reader, tmp_path):
    from airflow_ascora_provider.source.extract import extract
    from airflow_ascora_provider.source.staging import Snapshot

    manifest = extract(make_reader(), Snapshot(tmp_path / "staging", "s1"))
    staged = {name: stats["staged"] for name, stats in manifest["objects"].items()}
    assert staged == EXPECTED_COUNTS
    assert manifest["totals"]["quarantined"] == 0
    snapshot = Snapshot(tmp_path / "staging", "s1")
    assert snapshot.count("job") == 5 and snapshot.count("customer") == 3
