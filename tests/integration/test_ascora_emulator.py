"""The Ascora emulator over real HTTP: the contract every other Ascora test leans on.

Plain httpx on purpose (not the hook), so an emulator bug and a hook bug cannot cancel out.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest

from airflow_ascora_provider.sandbox.ascora import (
    DEFAULT_API_KEY,
    create_app,
    fixture_tenant_records,
    write_tenant,
)
from airflow_ascora_provider.sandbox.emulator import ServedApp

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
def client(server):
    server.control.reset_log()
    with httpx.Client(base_url=server.url, headers={"Auth": KEY}, timeout=10) as c:
        yield c


@pytest.fixture
def fresh(tmp_path):
    """A server of its own, for tests that change state."""
    resources, files = fixture_tenant_records()
    root = write_tenant(tmp_path / "t", resources, files=files)
    with (
        ServedApp(create_app(root)) as served,
        httpx.Client(base_url=served.url, headers={"Auth": KEY}, timeout=10) as c,
    ):
        yield served, c


# -- conventions -------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_with_ascora_body(server):
    for headers in ({}, {"Auth": "wrong"}, {"Authorization": f"Bearer {KEY}"}):
        r = httpx.get(server.url + "/Customers/Customers", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"success": False, "message": "Unauthorised"}
    # unknown paths do not leak their 404 to an unauthenticated caller
    assert httpx.get(server.url + "/Nope").status_code == 401


def test_api_key_defaults_from_tenant_json(tmp_path):
    resources, _ = fixture_tenant_records()
    root = write_tenant(tmp_path / "t", {"customers": resources["customers"]}, api_key="from-tenant-json")
    with ServedApp(create_app(root)) as served:
        assert (
            httpx.get(served.url + "/Customers/Customers", headers={"Auth": "from-tenant-json"}).status_code
            == 200
        )
        assert httpx.get(served.url + "/Customers/Customers", headers={"Auth": KEY}).status_code == 401
    with ServedApp(create_app(root, api_key="explicit")) as served:
        assert httpx.get(served.url + "/Customers/Customers", headers={"Auth": "explicit"}).status_code == 200


def test_unknown_path_and_method_are_json_errors(client):
    r = client.get("/Customers/Nothing")
    assert r.status_code == 404 and r.json()["success"] is False
    r = client.delete("/Jobs/Jobs")
    assert r.status_code == 405 and r.json()["success"] is False


def test_paging_envelope_and_past_the_end(client):
    seen = []
    for page in (1, 2, 3):
        body = client.get("/Customers/Customers", params={"Page": page, "PageSize": 3}).json()
        assert set(body) == {"success", "message", "results", "totalPages", "totalRecords"}
        assert body["success"] is True and body["message"] is None
        assert body["totalPages"] == 3 and body["totalRecords"] == 7
        seen += [c["customerId"] for c in body["results"]]
    assert len(seen) == 7 == len(set(seen))
    past = client.get("/Customers/Customers", params={"Page": 4, "PageSize": 3}).json()
    assert past["results"] == [] and past["totalRecords"] == 7


def test_query_parameter_names_are_case_insensitive(client):
    a = client.get("/Customers/Customers?Page=2&PageSize=3&SiteBillingType=Site").json()
    b = client.get("/Customers/Customers?page=2&pagesize=3&sitebillingtype=site").json()
    c = client.get("/Customers/Customers?PAGE=2&PAGESIZE=3&SITEBILLINGTYPE=SITE").json()
    assert a == b == c
    assert a["totalRecords"] == 4 and len(a["results"]) == 1


def test_default_page_size_and_clamp(tmp_path):
    rows = [{"supplyId": gid(10_000 + i), "partNumber": f"P{i}", "description": "x"} for i in range(1005)]
    root = write_tenant(tmp_path / "big", {"supplies": rows})
    with ServedApp(create_app(root)) as served, httpx.Client(base_url=served.url, headers={"Auth": KEY}) as c:
        default = c.get("/Inventory/Supplies").json()
        assert len(default["results"]) == 250 and default["totalPages"] == math.ceil(1005 / 250)
        clamped = c.get("/Inventory/Supplies", params={"PageSize": 5000}).json()
        assert len(clamped["results"]) == 1000 and clamped["totalPages"] == 2


def test_bad_parameter_values_are_400(client):
    for path in (
        "/Customers/Customers?Page=abc",
        "/Jobs/Jobs?JobStatus=QUOTED",
        "/Jobs/Jobs?StartDate=yesterday",
        "/Customers/Customers?SiteBillingType=Both",
        "/Accounting/GetInvoicesToSend",
    ):
        r = client.get(path)
        assert r.status_code == 400, path
        assert r.json()["success"] is False and r.json()["message"]


# -- customers and contacts --------------------------------------------------------------------------


def test_site_billing_type_filter(client):
    def count(kind):
        return client.get("/Customers/Customers", params={"SiteBillingType": kind}).json()["totalRecords"]

    assert (count("Site"), count("Billing"), count("All")) == (4, 3, 7)
    sites = client.get("/Customers/Customers", params={"SiteBillingType": "Site"}).json()["results"]
    assert all(s["billingCustomer"]["id"] for s in sites)


def test_customer_filters(client):
    def ids(**params):
        return {c["customerId"] for c in client.get("/Customers/Customers", params=params).json()["results"]}

    assert ids(FilterText="acme") == {gid(1), gid(11), gid(12)}
    assert ids(CustomerType="strata") == {gid(3), gid(13)}
    assert ids(FilterText="C00002") == {gid(2)}


def test_single_customer_and_not_found(client):
    body = client.get(f"/Customers/Customer/{gid(11)}").json()
    assert body["success"] is True and body["customer"]["billingCustomer"]["id"] == gid(1)
    missing = client.get(f"/Customers/Customer/{gid(999)}")
    assert missing.status_code == 200
    assert missing.json() == {"success": False, "message": "No Matching Customer Found"}


def test_contacts(client):
    assert client.get("/Customers/Contacts").json()["totalRecords"] == 4
    for_site = client.get(f"/Customers/GetContactsForCustomer/{gid(11)}").json()["results"]
    assert [c["contactId"] for c in for_site] == [gid(102)]
    assert client.get(f"/Customers/Contact/{gid(101)}").json()["contact"]["firstName"] == "First1"
    assert client.get(f"/Customers/Contact/{gid(999)}").json()["success"] is False


def test_customer_and_contact_writes(fresh):
    served, c = fresh
    created = c.post("/Customers/Customer", json={"customerName": "New Co", "companyName": "New Co"}).json()
    assert created["success"] and created["message"] == "Customer Created"
    new_id = created["customer"]["customerId"]
    updated = c.post("/Customers/Customer", json={"customerId": new_id, "emailAddress": "a@b.co"}).json()
    assert updated["message"] == "Customer Updated"
    got = c.get(f"/Customers/Customer/{new_id}").json()["customer"]
    assert got["customerName"] == "New Co" and got["emailAddress"] == "a@b.co"  # omitted fields are kept
    assert c.get("/Customers/Customers").json()["totalRecords"] == 8
    contact = c.post("/Customers/Contact", json={"customerId": new_id, "firstName": "Kai"}).json()
    assert contact["message"] == "Contact Created/Updated"
    assert c.get(f"/Customers/GetContactsForCustomer/{new_id}").json()["totalRecords"] == 1
    assert (
        c.post("/Customers/Contact", json={"customerId": gid(999), "firstName": "X"}).json()["success"]
        is False
    )
    assert [r.method for r in served.control.calls(path_prefix="/Customers/Customer")].count("POST") == 2


# -- jobs --------------------------------------------------------------------------------------------


def _job_numbers(client, **params):
    return sorted(j["jobNumber"] for j in client.get("/Jobs/Jobs", params=params).json()["results"])


def test_job_status_and_child_job_filters(client):
    assert _job_numbers(client) == ["J1001", "J1002", "J1003", "J1004", "J1005"]  # top level by default
    assert _job_numbers(client, JobStatus="ALL", IncludeChildJobs="true") == [
        "J1001",
        "J1001.01",
        "J1001.02",
        "J1002",
        "J1003",
        "J1004",
        "J1005",
    ]
    assert _job_numbers(client, JobStatus="COMPLETED") == ["J1001"]
    assert _job_numbers(client, JobStatus="completed", IncludeChildJobs="TRUE") == ["J1001", "J1001.01"]
    assert _job_numbers(client, JobStatus="NEW") == _job_numbers(client, JobStatus="UNSCHEDULED") == ["J1005"]
    # J1003 has no jobStatusText, only the code: the filter still finds it
    assert _job_numbers(client, JobStatus="ALL-OPEN") == ["J1002", "J1003", "J1005"]
    assert _job_numbers(client, JobStatus="CANCELLED") == ["J1004"]


def test_job_created_date_window_and_other_filters(client):
    assert _job_numbers(client, StartDate="2025-07-01") == ["J1002"]
    assert _job_numbers(client, EndDate="2024-01-10") == ["J1004"]  # a date-only end includes that day
    assert _job_numbers(client, StartDate="2025-01-01", EndDate="2025-06-30T23:59:59") == [
        "J1001",
        "J1003",
        "J1005",
    ]
    assert _job_numbers(client, AssignedUser="sam tech") == ["J1001", "J1002", "J1003", "J1004"]
    assert _job_numbers(client, CustomerName="harbour") == ["J1003"]
    assert _job_numbers(client, JobType="Maintenance") == ["J1003"]
    assert _job_numbers(client, FilterText="J1004") == ["J1004"]


def test_single_job_and_not_found(client):
    body = client.get("/Jobs/Job/J1001").json()
    assert body["success"] is True and body["job"]["jobId"] == gid(301)
    assert client.get("/Jobs/Job/J999").json() == {
        "success": False,
        "message": "No Matching Job Found (J999)",
    }


def test_job_create_and_sandbox_patch(fresh):
    _, c = fresh
    created = c.post("/Jobs/Job", json={"siteCustomer": {"id": gid(12)}, "jobName": "Fix tap"}).json()
    assert created["success"]
    job = created["job"]
    assert job["jobNumber"] == "J1006" and job["billingCustomer"]["id"] == gid(
        1
    )  # defaults to the site's payer
    assert c.post("/Jobs/Job", json={"jobName": "no site"}).json()["success"] is False
    refused = c.post("/Jobs/Job", json={"jobId": gid(301), "jobName": "x"}).json()
    assert refused["success"] is False and "__ascora__" in refused["message"]
    patched = c.post("/__ascora__/jobs/J1002", json={"jobStatus": 2}).json()
    assert patched["job"]["jobStatusText"] == "Completed"
    assert "J1002" in _job_numbers(c, JobStatus="COMPLETED")
    assert c.post("/__ascora__/jobs/J999", json={}).json()["message"] == "No Matching Job Found (J999)"


# -- quotes and bare arrays --------------------------------------------------------------------------


def test_quotes_status_and_sections(client):
    def numbers(**params):
        return sorted(q["quoteNumber"] for q in client.get("/Quotes/Quotes", params=params).json()["results"])

    assert numbers() == numbers(QuoteStatus="ALL") == ["Q0001", "Q0002", "Q0003"]
    assert numbers(QuoteStatus="WON") == numbers(QuoteStatus="ACCEPTED") == ["Q0001"]
    assert numbers(QuoteStatus="OPEN") == ["Q0002"]
    one = client.get("/Quotes/Quote/Q0001").json()
    assert one["success"] and one["quotation"]["childQuotes"][0]["quoteNumber"] == "Q0001.01"
    section = client.get("/Quotes/Quote/Q0001-02").json()
    assert section["quotation"]["quoteNumber"] == "Q0001.02"
    # the dot form is what the data holds, but it does not work in a path
    assert client.get("/Quotes/Quote/Q0001.01").json() == {"success": False, "message": "QUOTE-NOT-FOUND"}
    assert client.get("/Quotes/Quote/Q404").json() == {"success": False, "message": "QUOTE-NOT-FOUND"}


def test_bare_arrays(client):
    for path, count in (
        ("/Quotes/LabourRoles", 2),
        ("/Quotes/StandardSections", 2),
        ("/Quotes/StandardStages", 1),
    ):
        body = client.get(path).json()
        assert isinstance(body, list) and len(body) == count


def test_inventory_and_suppliers(client):
    assert client.get("/Inventory/Supplies").json()["totalRecords"] == 3
    assert client.get("/Inventory/Supplies", params={"FavouriteOnly": "true"}).json()["totalRecords"] == 1
    assert client.get("/Inventory/Kits").json()["totalRecords"] == 1
    assert client.get("/Inventory/Categories", params={"ParentOnly": "true"}).json()["totalRecords"] == 1
    assert client.get("/Suppliers/Suppliers", params={"SupplierName": "reec"}).json()["totalRecords"] == 1
    assert (
        client.get("/Suppliers/Suppliers", params={"BusinessNumber": "12345678901"}).json()["totalRecords"]
        == 1
    )
    assert client.get(f"/Suppliers/Supplier/{gid(501)}").json()["supplier"]["name"] == "Reece"
    bills = client.get("/SupplierInvoices/SupplierInvoices", params={"InvoiceDateStart": "2025-07-01"}).json()
    assert [b["trackingNumber"] for b in bills["results"]] == ["SUP-001"]
    one = client.get(f"/SupplierInvoices/SupplierInvoice/{gid(551)}").json()
    assert one["supplierInvoice"]["lines"][0]["partNumber"] == "CLI123"


# -- accounting --------------------------------------------------------------------------------------


def test_invoices_to_send_filters_unsent_and_prior(client):
    def numbers(prior, **extra):
        body = client.get("/Accounting/GetInvoicesToSend", params={"priorToDate": prior, **extra}).json()
        return [i["invoiceNumber"] for i in body["results"]], body

    assert numbers("2026-01-01")[0] == ["INV-0002"]  # INV-0001 is already sent, INV-0003 is dated 2030
    assert numbers("2031-01-01")[0] == ["INV-0002", "INV-0003"]
    assert numbers("2025-07-20")[0] == []  # strictly before
    _, plain = numbers("2026-01-01")
    _, full = numbers("2026-01-01", includeInvoiceCustomFields="true")
    assert plain["results"][0]["invoiceCustomFields"] == []
    assert full["results"][0]["invoiceCustomFields"][0]["fieldValue"] == "INV-0002"


def test_mark_endpoints_really_change_state(fresh):
    served, c = fresh
    before = c.get("/Accounting/GetInvoicesToSend", params={"priorToDate": "2031-01-01"}).json()[
        "totalRecords"
    ]
    r = c.post("/Accounting/MarkInvoicesAsSent", json={"InvoiceIds": [gid(402)]})
    assert r.json()["success"] is True
    after = c.get("/Accounting/GetInvoicesToSend", params={"priorToDate": "2031-01-01"}).json()[
        "totalRecords"
    ]
    assert (before, after) == (2, 1)
    c.post("/MarkInvoice", json={"invoiceIds": [gid(403)]})
    assert (
        c.get("/Accounting/GetInvoicesToSend", params={"priorToDate": "2031-01-01"}).json()["totalRecords"]
        == 0
    )
    assert len(served.control.calls("POST")) == 2


# -- extensions --------------------------------------------------------------------------------------


def test_extension_endpoints(client):
    expected = {
        "/Equipment/Equipment": 2,
        "/Users/Users": 2,
        "/JobTypes/JobTypes": 2,
        "/Notes/Notes": 3,
        "/Attachments": 2,
        "/Enquiries/Enquiries": 2,
        "/Forms/FormResponses": 1,
        "/Invoices/Invoices": 3,
    }
    for path, count in expected.items():
        assert client.get(path).json()["totalRecords"] == count, path
    assert (
        client.get("/Notes/Notes", params={"EntityType": "Job", "EntityId": gid(301)}).json()["totalRecords"]
        == 1
    )
    assert client.get("/Equipment/Equipment", params={"CustomerId": gid(11)}).json()["totalRecords"] == 1
    assert client.get(f"/Attachments/Quotation/{gid(201)}").json()["results"][0]["fileName"] == "quote.pdf"
    download = client.get(f"/Attachments/Download/{gid(772)}")
    assert download.content == b"%PDF-1.4\n" and download.headers["content-type"] == "application/pdf"
    assert client.get(f"/Attachments/Download/{gid(999)}").status_code == 404
    assert client.get("/Forms/FormResponses", params={"JobNumber": "J1002"}).json()["totalRecords"] == 0


def test_extensions_off_means_absent_and_strip_removes_ext_fields(tenant):
    app = create_app(tenant, enable_extensions=False, strip_ext_fields=True)
    with ServedApp(app) as served, httpx.Client(base_url=served.url, headers={"Auth": KEY}) as c:
        for path in (
            "/Equipment/Equipment",
            "/Users/Users",
            "/Invoices/Invoices",
            f"/Attachments/Download/{gid(771)}",
        ):
            assert c.get(path).status_code == 404, path
        job = c.get("/Jobs/Job/J1001").json()["job"]
        assert "quoteNumber" not in job and "assignedUser" not in job and job["jobNumber"] == "J1001"
        assert "items" not in c.get("/Quotes/Quote/Q0001").json()["quotation"]


# -- dirty data and the request log -------------------------------------------------------------------


def test_dirty_records_are_served_as_they_are(tmp_path):
    resources, _ = fixture_tenant_records()
    customers = resources["customers"]
    customers.append(dict(customers[0]))  # same id twice
    customers[1]["streetLatitude"] = float("nan")
    root = tmp_path / "dirty"
    write_tenant(root, {"customers": customers}, dirty=True)
    assert json.loads((root / "tenant.json").read_text())["dirty"] is True
    with ServedApp(create_app(root)) as served, httpx.Client(base_url=served.url, headers={"Auth": KEY}) as c:
        body = c.get("/Customers/Customers").json()
        ids = [r["customerId"] for r in body["results"]]
        assert body["totalRecords"] == 8 and ids.count(gid(1)) == 2
        assert math.isnan(body["results"][1]["streetLatitude"])


def test_request_log_records_every_call(client, server):
    client.get("/Jobs/Jobs", params={"Page": 2})
    client.get("/Jobs/Job/J1")
    calls = server.control.calls("GET", "/Jobs/")
    assert [(r.path, r.status) for r in calls] == [("/Jobs/Jobs", 200), ("/Jobs/Job/J1", 200)]
    assert "Page=2" in calls[0].query
