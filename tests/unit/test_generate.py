"""The synthetic tenant generator: deterministic, sized as asked, relationally sound, honestly dirty.

Every other test suite (API reader, export reader, emulator, benchmarks) stands on generated tenants,
so these tests pin the properties they rely on: same inputs give the same bytes, clean data has no
dangling references, every status exists, money adds up, attachments are real files, and each kind
of injected mess is listed in the manifest and really present in the record it points at.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from airflow_ascora_provider.sandbox.generate import DIRTY_KINDS, RESOURCES, generate_tenant
from airflow_ascora_provider.source.coerce import EMAIL_RE

ID_KEYS = {
    "customers": "customerId",
    "contacts": "contactId",
    "jobs": "jobId",
    "quotes": "quoteId",
    "invoices": "invoiceId",
    "payments": "paymentId",
    "suppliers": "supplierId",
    "supplier_invoices": "supplierInvoiceId",
    "supplies": "supplyId",
    "kits": "kitId",
    "categories": "categoryId",
    "labour_roles": "labourRoleId",
    "job_types": "id",
    "users": "userId",
    "equipment": "equipmentId",
    "notes": "noteId",
    "attachments": "attachmentId",
    "enquiries": "enquiryId",
    "form_responses": "formResponseId",
}


def load(tenant: Path, resource: str) -> list[dict]:
    with (tenant / "api" / f"{resource}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def load_all(tenant: Path) -> dict[str, list[dict]]:
    return {r: load(tenant, r) for r in RESOURCES}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    generate_tenant(root, size=1500, seed=42)
    return root


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dirty")
    generate_tenant(root, size=1500, seed=42, dirty=True)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_size_dirty_gives_identical_bytes(tmp_path):
    """Determinism is what makes a failing benchmark or a bug report reproducible from three numbers."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root in (a, b):
        generate_tenant(root, size=700, seed=5, dirty=True, formats=("jsonl", "xlsx", "csv"))
    generate_tenant(c, size=700, seed=6, dirty=True)
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    assert [k for k in files_a if files_a[k] != files_b[k]] == []
    assert any(k.startswith("exports/") and k.endswith(".xlsx") for k in files_a)
    assert (a / "api" / "jobs.jsonl").read_bytes() != (c / "api" / "jobs.jsonl").read_bytes()
    assert (
        json.loads((a / "tenant.json").read_text())["generated_at"]
        != json.loads((c / "tenant.json").read_text())["generated_at"]
    )


def test_dirty_tenant_is_the_clean_tenant_plus_mess(clean, dirty):
    """Dirt draws from its own random stream, so ids and numbers match the clean tenant of the seed."""
    clean_jobs = {j["jobId"]: j["jobNumber"] for j in load(clean, "jobs")}
    dirty_jobs = {j["jobId"]: j["jobNumber"] for j in load(dirty, "jobs")}
    assert clean_jobs == dirty_jobs
    assert {c["customerId"] for c in load(clean, "customers")} < {
        c["customerId"] for c in load(dirty, "customers")
    }


@pytest.mark.parametrize("size", [400, 3000])
def test_total_records_track_size_and_counts_are_true(tmp_path, size):
    counts = generate_tenant(tmp_path, size=size, seed=3)
    meta = json.loads((tmp_path / "tenant.json").read_text())
    assert counts == meta["counts"]
    assert abs(meta["total_records"] - size) <= max(0.05 * size, 150)  # overshoot: at most one household
    for resource in RESOURCES:
        lines = (tmp_path / "api" / f"{resource}.jsonl").read_text(encoding="utf-8").count("\n")
        assert meta["counts"][resource] == lines, resource
    assert meta["api_key"] == "ascora-sandbox-key"
    assert meta["seed"] == 3 and meta["size"] == size and meta["dirty"] is False
    dt.datetime.fromisoformat(meta["generated_at"])
    assert 5 <= meta["counts"]["users"] <= 200 and meta["counts"]["job_types"] == 12
    assert meta["counts"]["suppliers"] >= 5


def test_clean_tenant_ids_are_unique_lowercase_guids(clean):
    data = load_all(clean)
    for resource, key in ID_KEYS.items():
        ids = [row[key] for row in data[resource]]
        assert len(ids) == len(set(ids)), resource
        assert all(len(i) == 36 and i == i.lower() and i[14] == "4" for i in ids), resource
    numbers = [j["jobNumber"] for j in data["jobs"]]
    assert len(numbers) == len(set(numbers))
    assert numbers[0] == "J1001" and data["quotes"][0]["quoteNumber"] == "Q5001"
    assert data["invoices"][0]["invoiceNumber"] == "INV-10001"
    assert data["customers"][0]["customerNumber"] == "C00001"


def test_every_relation_resolves_in_clean_data(clean):
    """The emulator and readers are tested *against* this: a dangling id here would be a false alarm there."""
    d = load_all(clean)
    customers = {c["customerId"]: c for c in d["customers"]}
    billing = {i for i, c in customers.items() if c["billingCustomer"] is None}
    sites = {i: c["billingCustomer"]["id"] for i, c in customers.items() if c["billingCustomer"] is not None}
    assert billing and sites and set(sites.values()) <= billing
    for site_id, payer in sites.items():
        assert customers[site_id]["billingCustomer"]["name"] == customers[payer]["customerName"]
    users = {u["userId"]: u["fullName"] for u in d["users"]}
    assert len(set(users.values())) == len(users)  # assignedUser.name identifies a user
    contacts = {c["contactId"]: c for c in d["contacts"]}
    assert all(c["customerId"] in customers for c in contacts.values())
    job_types = {t["id"]: t["name"] for t in d["job_types"]}
    jobs = {j["jobNumber"]: j for j in d["jobs"]}
    quotes = {q["quoteNumber"]: q for q in d["quotes"]}

    def link_ok(link, table):
        return link is not None and link["id"] in table

    for job in d["jobs"]:
        assert job["billingCustomer"]["id"] in billing
        assert job["billingCustomer"]["name"] == customers[job["billingCustomer"]["id"]]["customerName"]
        site = job["siteCustomer"]["id"]
        assert site == job["billingCustomer"]["id"] or sites.get(site) == job["billingCustomer"]["id"]
        assert (
            link_ok(job["assignedUser"], users)
            and users[job["assignedUser"]["id"]] == job["assignedUser"]["name"]
        )
        assert job_types[job["jobType"]["id"]] == job["jobType"]["name"]
        for key in ("siteContact", "billingContact"):
            assert job[key] is None or job[key]["id"] in contacts
        if job["topLevelJobNumber"]:
            assert jobs[job["topLevelJobNumber"]]["topLevelJobNumber"] is None
            assert job["jobNumber"].startswith(job["topLevelJobNumber"] + ".")
        if job["quoteNumber"]:
            assert quotes[job["quoteNumber"]]["jobNumber"] == job["jobNumber"]
        if job["team"] is not None:
            assert set(job["team"]) == {"id", "name"}
    for quote in d["quotes"]:
        assert quote["billingCustomer"]["id"] in billing and quote["siteCustomer"]["id"] in customers
        assert quote["jobNumber"] is None or quote["jobNumber"] in jobs
        assert all(
            i["sectionQuoteNumber"] in {c["quoteNumber"] for c in quote["childQuotes"]} | {None}
            for i in quote["items"]
        )
    job_ids = {j["jobId"] for j in d["jobs"]}
    for inv in d["invoices"]:
        assert inv["jobId"] in job_ids and inv["billingCustomer"]["id"] in billing
    invoice_ids = {i["invoiceId"] for i in d["invoices"]}
    assert all(p["invoiceId"] in invoice_ids for p in d["payments"])
    for eq in d["equipment"]:
        assert eq["customerId"] in billing and (eq["siteCustomerId"] is None or eq["siteCustomerId"] in sites)
    entities = {
        "Job": job_ids,
        "Customer": set(customers),
        "Quotation": {q["quoteId"] for q in d["quotes"]},
        "Invoice": invoice_ids,
        "Enquiry": {e["enquiryId"] for e in d["enquiries"]},
    }
    for row in d["notes"] + d["attachments"]:
        assert row["entityId"] in entities[row["entityType"]], row
    staff_names = set(users.values())
    assert all(n["createdByName"] in staff_names for n in d["notes"])
    attachment_ids = {a["attachmentId"] for a in d["attachments"]}
    for form in d["form_responses"]:
        assert form["jobId"] in job_ids and form["attachmentId"] in attachment_ids
        assert jobs[form["jobNumber"]]["jobId"] == form["jobId"]
    supplier_ids = {s["supplierId"] for s in d["suppliers"]}
    for bill in d["supplier_invoices"]:
        assert bill["supplier"]["id"] in supplier_ids and bill["reference"] in jobs
    for enquiry in d["enquiries"]:
        assert enquiry["convertedToQuoteNumber"] is None or enquiry["convertedToQuoteNumber"] in quotes
        assert enquiry["convertedToJobNumber"] is None or enquiry["convertedToJobNumber"] in jobs


def test_every_status_is_present_and_consistent(tmp_path):
    """Even a tiny tenant has every job, quote and invoice status (the first records cycle through them)."""
    generate_tenant(tmp_path, size=300, seed=1)
    jobs, quotes, invoices = load(tmp_path, "jobs"), load(tmp_path, "quotes"), load(tmp_path, "invoices")
    texts = (
        "In Progress",
        "Booked",
        "Completed",
        "Cancelled",
        "Deferred",
        "Unscheduled",
        "Ready To Invoice",
        "Closed",
    )
    assert {j["jobStatus"] for j in jobs} == set(range(8))
    assert all(texts[j["jobStatus"]] == j["jobStatusText"] for j in jobs)
    assert {q["quoteStatus"] for q in quotes} == {0, 1, 2, 3}
    assert {i["status"] for i in invoices} == {"Unpaid", "Part Paid", "Paid", "Overdue", "Void"}
    now = dt.datetime.fromisoformat(
        json.loads((tmp_path / "tenant.json").read_text())["generated_at"]
    ).replace(tzinfo=None)
    for inv in invoices:
        due = dt.datetime.fromisoformat(inv["dueDate"])
        if inv["status"] == "Overdue":
            assert due < now and inv["amountOutstanding"] > 0
        if inv["status"] == "Paid":
            assert inv["amountOutstanding"] == 0 and inv["amountPaid"] == inv["totalIncTax"]
    for job in jobs:
        assert (job["completedDate"] is not None) == (job["jobStatus"] in (2, 6, 7))


def test_money_adds_up(clean):
    """Totals are built from whole cents, so they must add up exactly (to the cent)."""
    for quote in load(clean, "quotes"):
        assert round(sum(i["totalExTax"] for i in quote["items"]), 2) == quote["totalExTax"]
        assert round(sum(i["totalIncTax"] for i in quote["items"]), 2) == quote["totalIncTax"]
        if quote["childQuotes"]:
            assert round(sum(c["totalExTax"] for c in quote["childQuotes"]), 2) == quote["totalExTax"]
    for inv in load(clean, "invoices"):
        assert round(sum(line["totalExTax"] for line in inv["lines"]), 2) == inv["totalExTax"]
        assert round(inv["totalExTax"] + inv["totalTax"], 2) == inv["totalIncTax"]
        assert round(inv["amountPaid"] + inv["amountOutstanding"], 2) in (inv["totalIncTax"], 0.0)
    jobs = load(clean, "jobs")
    children: dict[str, float] = Counter()
    for job in jobs:
        if job["topLevelJobNumber"]:
            children[job["topLevelJobNumber"]] += round(job["totalExTax"] * 100)
    for job in jobs:
        if job["jobNumber"] in children:
            assert children[job["jobNumber"]] == round(job["totalExTax"] * 100)


def test_realistic_australian_details(clean):
    customers = load(clean, "customers")
    states = {c["streetState"] for c in customers}
    assert states <= {"NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT"}
    assert all(c["mobileNumber"].startswith("04") and len(c["mobileNumber"]) == 12 for c in customers)
    assert all(EMAIL_RE.match(c["emailAddress"]) for c in customers)
    types = {c["customerType"]["name"] for c in customers}
    assert {"Residential", "Commercial"} <= types
    jobs = [j for j in load(clean, "jobs") if not j["topLevelJobNumber"]]
    names = {f["fieldName"] for j in jobs for f in j["customFields"]}
    assert names & {"Switchboard Type", "Roof Access", "Gas Certificate No", "Hot Water Unit Brand"}
    assert {c["accountingSystem"] for c in customers if not c["billingCustomer"]} - {None}


def test_attachment_files_are_real_and_match_metadata(clean):
    attachments = load(clean, "attachments")
    kinds = Counter()
    for a in attachments:
        path = clean / "files" / a["attachmentId"] / a["fileName"]
        data = path.read_bytes()
        assert len(data) == a["sizeBytes"] and 0 < len(data) < 8192
        if a["contentType"] == "image/png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
        elif a["contentType"] == "image/jpeg":
            assert data.startswith(b"\xff\xd8\xff\xe0") and data.endswith(b"\xff\xd9") and b"\xff\xda" in data
        elif a["contentType"] == "application/pdf":
            assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
            xref = int(data.rsplit(b"startxref", 1)[1].split()[0])
            assert data[xref : xref + 4] == b"xref"  # the offsets a PDF reader follows are right
        else:
            assert a["fileName"].endswith(".docx")
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                assert zf.testzip() is None and "word/document.xml" in zf.namelist()
        kinds[a["contentType"]] += 1
    assert len(kinds) == 4, kinds
    assert len(list((clean / "files").iterdir())) == len(attachments)


def test_dirty_manifest_lists_every_kind_and_points_at_the_mess(dirty):
    manifest = json.loads((dirty / "dirty_manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) == set(DIRTY_KINDS)
    assert all(manifest[kind] for kind in DIRTY_KINDS), {k: len(v) for k, v in manifest.items()}
    data = load_all(dirty)
    rows: dict[tuple[str, str], dict] = {}
    occurrences: Counter = Counter()
    for resource, key in ID_KEYS.items():
        for row in data[resource]:
            rows.setdefault((resource, row[key]), row)
            occurrences[(resource, row[key])] += 1
    customer_ids = {c["customerId"] for c in data["customers"]}
    for kind, entries in manifest.items():
        for entry in entries:
            row = rows[(entry["resource"], entry["id"])]  # points at a real record
            value = row.get(entry["field"]) if entry["field"] else None
            if kind == "invalid_email":
                assert not EMAIL_RE.match(value)
            elif kind == "text_date":
                with pytest.raises(ValueError):
                    dt.datetime.fromisoformat(value)
            elif kind == "orphan_site":
                assert value["id"] not in customer_ids
            elif kind == "job_missing_customer":
                assert row["billingCustomer"]["id"] not in customer_ids
                assert row["siteCustomer"]["id"] not in customer_ids
            elif kind == "job_without_technician":
                assert value is None
            elif kind == "long_text":
                assert len(value) >= 20000
            elif kind == "non_ascii_name":
                assert not value.isascii()
            elif kind == "formula_string":
                assert value[0] in "=+-@"
            elif kind == "number_as_text":
                assert isinstance(value, str) and value.startswith("$")
            elif kind == "blank_required_name":
                assert not value.strip()
            elif kind == "control_characters":
                assert any(ord(ch) < 32 for ch in value)
            elif kind == "broken_inline_image":
                assert entry["src"][:60] in value and "<img" in value
            elif kind == "exact_duplicate":
                assert occurrences[(entry["resource"], entry["id"])] == 2
            elif kind == "duplicate_customer":
                original = rows[("customers", entry["duplicate_of"])]
                assert value != original["customerName"]
                assert value.split()[0].strip(",.").casefold() in original["customerName"].casefold()
                assert row["emailAddress"] == original["emailAddress"]  # same business, findable
            elif kind == "unmapped_picklist":
                name = value["name"] if isinstance(value, dict) else value
                assert name not in (
                    "Residential",
                    "Commercial",
                    "Strata",
                    "Government",
                    "In Progress",
                    "Booked",
                    "Completed",
                    "Cancelled",
                    "Deferred",
                    "Unscheduled",
                    "Ready To Invoice",
                    "Closed",
                )


def test_cli_generate_and_serve(tmp_path, monkeypatch, capsys):
    from airflow_ascora_provider.sandbox.__main__ import main

    out = tmp_path / "t"
    assert (
        main(["generate", "--out", str(out), "--size", "300", "--seed", "9", "--dirty", "--format", "csv"])
        == 0
    )
    assert (out / "tenant.json").exists() and (out / "dirty_manifest.json").exists()
    assert (out / "exports" / "jobs__Jobs.csv").exists()
    assert "records in" in capsys.readouterr().out

    served = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert main(["serve", "ascora", "--port", "18081", "--tenant", str(out), "--rate-limit", "5"]) == 0
    assert served["port"] == 18081 and served["app"] is not None
    assert main(["serve", "ascora", "--port", "18081", "--tenant", str(tmp_path / "missing")]) == 2
