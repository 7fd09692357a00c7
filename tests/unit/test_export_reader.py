"""The export reader: Ascora-style workbooks in, the same canonical records the API gives out.

The sandbox writes exports from the very tenant the API emulator serves, so the strongest check is a
round trip: read every object from the exports and compare key fields against the API-shape JSONL.
The other tests pin the tolerance rules in ``docs/ascora-exports.md`` (odd headings, unknown columns,
CSV == xlsx, by-name references, derived ids) and that reading streams in flat memory.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import Workbook, load_workbook

from airflow_ascora_provider.sandbox.export_writer import LAYOUT, UNKNOWN_COLUMN, csv_name, write_exports
from airflow_ascora_provider.sandbox.generate import generate_tenant
from airflow_ascora_provider.source.coerce import canonical_record, issues_of
from airflow_ascora_provider.source.export_reader import SHEETS, SYNONYMS, ExportReader, norm_heading
from airflow_ascora_provider.source.model import MODEL, SYSTEM_COLUMNS
from airflow_ascora_provider.source.reader import SourceReader


def canon(reader: ExportReader, obj: str) -> list[dict]:
    out = []
    for raw in reader.iter_raw(obj):
        values = dict(raw.values)
        assert set(values) <= set(MODEL[obj].field_names), set(values) - set(MODEL[obj].field_names)
        values["_issues"] = [i.as_dict() for i in raw.issues]
        out.append(canonical_record(MODEL[obj], values, raw.origin))
    return out


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def jsonl(tenant: Path, resource: str) -> list[dict]:
    with (tenant / "api" / f"{resource}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def money(value) -> Decimal:
    return Decimal(repr(value))


@pytest.fixture(scope="module")
def xlsx_tenant(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xlsx")
    generate_tenant(root, size=600, seed=11, formats=("jsonl", "xlsx"))
    return root


@pytest.fixture(scope="module")
def csv_tenant(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv")
    generate_tenant(root, size=600, seed=11, formats=("jsonl", "csv"))
    return root


@pytest.fixture(scope="module")
def dirty_tenant(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dirty")
    generate_tenant(root, size=800, seed=4, dirty=True, formats=("jsonl", "xlsx"))
    return root


@pytest.fixture(scope="module")
def reader(xlsx_tenant) -> ExportReader:
    with ExportReader(xlsx_tenant / "exports") as r:
        yield r


def test_is_a_source_reader_and_finds_every_sheet(reader, xlsx_tenant):
    as_source: SourceReader = reader  # structural: the protocol is not runtime-checkable
    assert callable(as_source.objects) and callable(as_source.iter_raw)
    assert reader.name == "exports"
    assert set(reader.sheets()) == set(SHEETS)
    assert set(reader.objects()) == set(MODEL)  # exports reach every canonical object
    assert ExportReader(xlsx_tenant).sheets() == reader.sheets()  # a tenant dir works too
    assert list(ExportReader(xlsx_tenant / "api").objects()) == []


def test_writer_headings_are_the_templates_and_all_recognised(xlsx_tenant):
    """Jobs A-AD / quotes A-AB as Ascora's import templates, and every heading we write maps to a key."""
    wb = load_workbook(xlsx_tenant / "exports" / "jobs.xlsx", read_only=True)
    header = next(wb["Jobs"].iter_rows(values_only=True))
    assert header[0] == "JOB NUMBER" and header[29] == "ESTIMATED DURATION" and header[30] == "JOB ID"
    wb.close()
    wb = load_workbook(xlsx_tenant / "exports" / "quotes.xlsx", read_only=True)
    header = next(wb["Quotes"].iter_rows(values_only=True))
    assert (
        header[0] == "QUOTE NUMBER" and header[27] == "VARIATION FOR JOB NUMBER" and header[28] == "QUOTE ID"
    )
    wb.close()
    for key, ref in SHEETS.items():
        known = {norm_heading(h) for names in SYNONYMS[ref.kind].values() for h in names}
        extra = {"form_responses"}  # field-code columns are answers by design
        for heading in LAYOUT[ref.workbook][ref.sheet]:
            assert norm_heading(heading) in known or key in extra, (key, heading)


def test_every_object_reads_and_counts_match_the_api(reader, xlsx_tenant):
    counts = {obj: len(canon(reader, obj)) for obj in reader.objects()}
    api = {
        r: jsonl(xlsx_tenant, r)
        for r in (
            "customers",
            "contacts",
            "jobs",
            "quotes",
            "invoices",
            "users",
            "notes",
            "attachments",
            "form_responses",
            "enquiries",
            "suppliers",
            "supplier_invoices",
            "equipment",
            "job_types",
        )
    }
    assert counts["customer"] + counts["site"] == len(api["customers"])
    assert counts["site"] == sum(1 for c in api["customers"] if c["billingCustomer"])
    assert counts["job"] + counts["job_section"] == len(api["jobs"])
    assert counts["job_section"] == sum(1 for j in api["jobs"] if j["topLevelJobNumber"])
    assert counts["quote"] == len(api["quotes"])
    assert counts["quote_section"] == sum(len(q["childQuotes"]) for q in api["quotes"])
    assert counts["quote_line_item"] == sum(len(q["items"]) for q in api["quotes"])
    assert counts["invoice_line"] == sum(len(i["lines"]) for i in api["invoices"])
    assert counts["supplier_bill_line"] == sum(len(b["lines"]) for b in api["supplier_invoices"])
    for obj, resource in (
        ("contact", "contacts"),
        ("invoice", "invoices"),
        ("staff_user", "users"),
        ("note", "notes"),
        ("attachment", "attachments"),
        ("form_response", "form_responses"),
        ("enquiry", "enquiries"),
        ("supplier", "suppliers"),
        ("supplier_bill", "supplier_invoices"),
        ("equipment", "equipment"),
    ):
        assert counts[obj] == len(api[resource]), obj
    used_types = {j["jobType"]["name"] for j in api["jobs"]} | {q["jobType"]["name"] for q in api["quotes"]}
    assert counts["job_type"] == len(used_types)


def test_clean_export_reads_without_a_single_issue(reader):
    for obj in reader.objects():
        bad = [(r["_origin"], issues_of(r)) for r in canon(reader, obj) if r["_issues"]]
        assert bad == [], (obj, bad[:3])


def test_jobs_match_the_api(reader, xlsx_tenant):
    jobs, sections = by_id(canon(reader, "job")), by_id(canon(reader, "job_section"))
    api_jobs = jsonl(xlsx_tenant, "jobs")
    top_ids = {j["jobNumber"]: j["jobId"] for j in api_jobs if not j["topLevelJobNumber"]}
    quote_ids = {q["quoteNumber"]: q["quoteId"] for q in jsonl(xlsx_tenant, "quotes")}
    synonyms_seen = 0
    for j in api_jobs:
        rec = (sections if j["topLevelJobNumber"] else jobs)[j["jobId"]]
        assert rec["job_number"] == j["jobNumber"]
        # status text in the export is sometimes an Ascora synonym; canonical_record folds it back
        assert rec["status"] == j["jobStatusText"]
        assert rec["total_ex_tax"] == money(j["totalExTax"])
        assert rec["total_inc_tax"] == money(j["totalIncTax"])
        if j["topLevelJobNumber"]:
            assert rec["job_id"] == top_ids[j["topLevelJobNumber"]]
            assert rec["display_order"] == j["displayOrder"]
            continue
        assert rec["customer_id"] == j["billingCustomer"]["id"]
        site = j["siteCustomer"]["id"]
        assert rec["site_id"] == (None if site == j["billingCustomer"]["id"] else site)
        assert json.loads(rec["custom_fields"]) == {
            f["fieldName"]: f["fieldValue"] for f in j["customFields"] or ()
        }
        assert rec["assigned_user_id"] == j["assignedUser"]["id"]
        assert rec["assigned_user_name"] == j["assignedUser"]["name"]
        assert rec["job_type_id"] == "jobtype:" + j["jobType"]["name"].casefold()
        assert rec["quote_id"] == (quote_ids[j["quoteNumber"]] if j["quoteNumber"] else None)
        assert rec["site_contact_id"] == (j["siteContact"] or {}).get("id")
        assert rec["date_created"].replace(microsecond=0).isoformat()[:19] == j["dateCreated"][:19]
    wb = load_workbook(xlsx_tenant / "exports" / "jobs.xlsx", read_only=True)
    statuses = {row[3] for row in wb["Jobs"].iter_rows(min_row=2, values_only=True)}
    wb.close()
    synonyms_seen = statuses - {j["jobStatusText"] for j in api_jobs}
    assert synonyms_seen, "the writer varies ~10% of statuses with Ascora's accepted synonyms"


def test_quotes_invoices_and_the_rest_match_the_api(reader, xlsx_tenant):
    quotes = by_id(canon(reader, "quote"))
    for q in jsonl(xlsx_tenant, "quotes"):
        rec = quotes[q["quoteId"]]
        assert rec["quote_number"] == q["quoteNumber"] and rec["status"] == q["quoteStatusText"]
        assert rec["total_ex_tax"] == money(q["totalExTax"]) and rec["total_inc_tax"] == money(
            q["totalIncTax"]
        )
        assert rec["customer_id"] == q["billingCustomer"]["id"]
    items = by_id(canon(reader, "quote_line_item"))
    sections = by_id(canon(reader, "quote_section"))
    for q in jsonl(xlsx_tenant, "quotes"):
        for child in q["childQuotes"]:
            assert sections[child["quoteId"]]["quote_id"] == q["quoteId"]
        for item in q["items"]:
            rec = items[item["itemId"]]
            assert rec["quote_id"] == q["quoteId"] and rec["item_type"] == item["itemType"]
            assert rec["total_ex_tax"] == money(item["totalExTax"])
            assert rec["section_quote_number"] == item["sectionQuoteNumber"]
    invoices = by_id(canon(reader, "invoice"))
    lines = canon(reader, "invoice_line")
    for inv in jsonl(xlsx_tenant, "invoices"):
        rec = invoices[inv["invoiceId"]]
        assert rec["invoice_number"] == inv["invoiceNumber"] and rec["status"] == inv["status"]
        assert rec["customer_id"] == inv["billingCustomer"]["id"] and rec["job_id"] == inv["jobId"]
        assert rec["total_inc_tax"] == money(inv["totalIncTax"])
        mine = [line for line in lines if line["invoice_id"] == inv["invoiceId"]]
        assert sum(line["total_ex_tax"] for line in mine) == money(inv["totalExTax"])
    sites = by_id(canon(reader, "site"))
    for c in jsonl(xlsx_tenant, "customers"):
        if c["billingCustomer"]:
            assert sites[c["customerId"]]["billing_customer_id"] == c["billingCustomer"]["id"]
    notes = by_id(canon(reader, "note"))
    site_ids = set(sites)
    for n in jsonl(xlsx_tenant, "notes"):
        expected = "Site" if n["entityType"] == "Customer" and n["entityId"] in site_ids else n["entityType"]
        assert (
            notes[n["noteId"]]["entity_type"] == expected and notes[n["noteId"]]["entity_id"] == n["entityId"]
        )
    forms = by_id(canon(reader, "form_response"))
    for f in jsonl(xlsx_tenant, "form_responses"):
        answered = {x["fieldCode"]: x["value"] for x in f["fields"] if x["value"] not in ("", None)}
        assert json.loads(forms[f["formResponseId"]]["answers"]) == answered  # blank cell = not answered
        assert forms[f["formResponseId"]]["job_id"] == f["jobId"]


def test_attachments_fetch_the_exported_bytes(reader, xlsx_tenant):
    raws = list(reader.iter_raw("attachment"))
    assert raws
    for raw in raws:
        original = xlsx_tenant / "files" / raw.values["id"] / raw.values["file_name"]
        assert raw.fetch is not None and raw.fetch() == original.read_bytes()


def test_csv_export_gives_the_same_records_as_xlsx(reader, csv_tenant):
    with ExportReader(csv_tenant / "exports") as csv_reader:
        assert all(label.endswith(".csv") for label in csv_reader.sheets().values())
        assert csv_reader.objects() == reader.objects()
        raw = (csv_tenant / "exports" / csv_name("jobs", "Jobs")).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbfJOB NUMBER,")  # UTF-8 with BOM, same headings
        for obj in reader.objects():
            a, b = canon(reader, obj), canon(csv_reader, obj)
            assert [r["_hash"] for r in a] == [r["_hash"] for r in b], obj
            strip = [{k: v for k, v in r.items() if k not in SYSTEM_COLUMNS} for r in a]
            assert strip == [{k: v for k, v in r.items() if k not in SYSTEM_COLUMNS} for r in b], obj


def test_dirty_headings_unknown_columns_and_mess_are_caught(dirty_tenant):
    wb = load_workbook(dirty_tenant / "exports" / "jobs.xlsx", read_only=True)
    header = next(wb["Jobs"].iter_rows(values_only=True))
    wb.close()
    assert {"Job  number", "job_status", "Site Customer ", "Technician", UNKNOWN_COLUMN} <= set(header)
    manifest = json.loads((dirty_tenant / "dirty_manifest.json").read_text(encoding="utf-8"))
    with ExportReader(dirty_tenant) as reader:
        jobs = by_id(canon(reader, "job") + canon(reader, "job_section"))
        api_jobs = jsonl(dirty_tenant, "jobs")
        for j in api_jobs:
            rec = jobs[j["jobId"]]
            assert rec["job_number"] == j["jobNumber"]  # read through "Job  number"
            assert (rec["assigned_user_name"] or None) == (
                (j["assignedUser"] or {}).get("name")
            )  # "Technician"
            if not j["topLevelJobNumber"]:
                assert UNKNOWN_COLUMN in json.loads(rec["custom_fields"])  # kept, not dropped
                assert rec["site_id"] == (
                    None if j["siteCustomer"]["id"] == j["billingCustomer"]["id"] else j["siteCustomer"]["id"]
                )  # read through "Site Customer "
            else:
                assert any(i["field"] == UNKNOWN_COLUMN for i in issues_of(rec))  # sections: no custom fields
        odd = {e["id"] for e in manifest["unmapped_picklist"] if e["resource"] == "jobs"}
        assert all(jobs[i]["status"] not in MODEL["job"].field("status").choices for i in odd)
        contacts = canon(reader, "contact")
        assert all(any(i["field"] == UNKNOWN_COLUMN for i in issues_of(c)) for c in contacts)
        for entry in manifest["invalid_email"]:
            if entry["resource"] == "contacts":
                rec = next(c for c in contacts if c["id"] == entry["id"])
                assert any(i["reason"] == "invalid e-mail address" for i in issues_of(rec))
        text_dates = {e["id"]: e["field"] for e in manifest["text_date"] if e["resource"] == "jobs"}
        for ident, field in text_dates.items():
            canonical_field = {"dateCreated": "date_created", "completedDate": "completed_date"}[field]
            assert jobs[ident][canonical_field] is None
            assert any(i["field"] == canonical_field for i in issues_of(jobs[ident]))
        formulas = {e["id"] for e in manifest["formula_string"] if e["resource"] == "jobs"}
        assert all(jobs[i]["name"][0] in "=+-@" for i in formulas)  # stored as text, never evaluated


def _write(path: Path, sheets: dict[str, list[list]]) -> None:
    wb = Workbook(write_only=True)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.save(path)


def test_hand_made_export_without_ids(tmp_path):
    """A minimal export as a person might produce it: odd headings, no ID columns, names as references."""
    _write(
        tmp_path / "Customers.XLSX",
        {
            "Customers": [
                ["Customer_Name", "billing customer", "E-mail Address", "Gate Code"],
                ["Acme Pty Ltd", None, "ops@acme.example", "1234#"],
                ["Acme Depot", "acme pty ltd", None, None],
            ],
            "Contacts": [
                ["customer", "First Name", "Surname", "Shoe Size"],
                ["Acme Depot", "Pat", "Lee", "9"],
            ],
        },
    )
    _write(tmp_path / "staff.xlsx", {"Sheet1": [["Name", "Email"], ["Sam Tech", "sam@example.com"]]})
    _write(
        tmp_path / "jobs.xlsx",
        {
            "Jobs": [
                [
                    "Job  number",
                    "job_status",
                    "Site Customer ",
                    "Customer",
                    "Technician",
                    "Site Contact",
                    "JOB TYPE",
                    "Total Ex Tax",
                    "GST",
                    "Roof Access",
                ],
                [
                    "J1",
                    "Finished",
                    "Acme Depot",
                    None,
                    "Sam Tech",
                    "Pat Lee",
                    "Service Call",
                    "$1,000.00",
                    100,
                    "Ladder",
                ],
                [
                    "J1.01",
                    "Scheduled",
                    "Acme Depot",
                    None,
                    "Nobody Known",
                    None,
                    "Service Call",
                    400,
                    40,
                    None,
                ],
                ["J2", "open", "Acme P/L", None, None, None, None, 10, 1, None],
            ]
        },
    )
    with ExportReader(tmp_path) as reader:
        customers = canon(reader, "customer")
        sites = canon(reader, "site")
        assert [c["id"] for c in customers] == ["customer:acme pty ltd"]
        assert json.loads(customers[0]["custom_fields"]) == {"Gate Code": "1234#"}
        assert customers[0]["email"] == "ops@acme.example"
        assert [(s["id"], s["billing_customer_id"]) for s in sites] == [
            ("site:acme depot", "customer:acme pty ltd")
        ]
        contact = canon(reader, "contact")[0]
        assert (
            contact["id"] == "contact:site:acme depot:pat:lee" and contact["customer_id"] == "site:acme depot"
        )
        assert issues_of(contact) == [
            {
                "field": "Shoe Size",
                "value": "9",
                "reason": "column not in the canonical model; kept in issues",
            }
        ]
        staff = canon(reader, "staff_user")
        assert [s["id"] for s in staff] == ["staff_user:sam tech"]
        j1, j2 = canon(reader, "job")
        assert (j1["id"], j1["status"], j1["customer_id"], j1["site_id"]) == (
            "job:J1",
            "Completed",
            "customer:acme pty ltd",
            "site:acme depot",
        )
        assert j1["assigned_user_id"] == "staff_user:sam tech"
        assert j1["site_contact_id"] == contact["id"]
        assert (j1["total_ex_tax"], j1["total_tax"], j1["total_inc_tax"]) == (
            Decimal(1000),
            Decimal(100),
            Decimal(1100),
        )
        assert json.loads(j1["custom_fields"]) == {"Roof Access": "Ladder"}
        assert j1["job_type_id"] == "jobtype:service call"
        # an unknown customer name: id left empty, an issue names the field and the name
        assert j2["customer_id"] is None and j2["status"] == "In Progress"
        assert {
            "field": "site_id",
            "value": "Acme P/L",
            "reason": "no customer named 'Acme P/L' in customers export",
        } in issues_of(j2)
        (section,) = canon(reader, "job_section")
        assert (section["id"], section["job_id"], section["display_order"], section["status"]) == (
            "job_section:J1.01",
            "job:J1",
            1,
            "Booked",
        )
        assert section["assigned_user_id"] is None
        assert any("no staff user named 'Nobody Known'" in i["reason"] for i in issues_of(section))
        assert [t["id"] for t in canon(reader, "job_type")] == ["jobtype:service call"]
        assert set(reader.objects()) == {
            "customer",
            "site",
            "contact",
            "staff_user",
            "job",
            "job_section",
            "job_type",
        }
        assert list(reader.iter_raw("invoice")) == []


def test_csv_variants_are_found(tmp_path):
    (tmp_path / "jobs.csv").write_text("JOB NUMBER,STATUS\nJ7,Closed\n", encoding="utf-8-sig")
    (tmp_path / "Contacts.csv").write_text("CUSTOMER ID,FIRST NAME\nc-1,Kim\n", encoding="utf-8")
    (tmp_path / "quotes__supply.csv").write_text("QUOTE NUMBER,LINE NUMBER,QTY\nQ1,1,2\n", encoding="utf-8")
    reader = ExportReader(tmp_path)
    assert set(reader.sheets()) == {"jobs", "contacts", "quote_supply"}
    (job,) = canon(reader, "job")
    assert (job["id"], job["status"], job["customer_id"]) == ("job:J7", "Closed", None)
    (item,) = canon(reader, "quote_line_item")
    assert (item["id"], item["quote_id"], item["item_type"]) == (
        "quote_line_item:quote:Q1:1",
        "quote:Q1",
        "SUPPLY",
    )


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_csv_saved_by_excel_in_windows_1252_keeps_its_accents(tmp_path, encoding):
    text = "CUSTOMER ID,CUSTOMER NAME,STREET ADDRESS\nc-1,Zoë’s Café Pty Ltd,12 Rue Chénier\n"
    (tmp_path / "customers.csv").write_bytes(text.encode(encoding))
    (customer,) = canon(ExportReader(tmp_path), "customer")
    assert customer["name"] == "Zoë’s Café Pty Ltd"
    assert customer["address_line1"] == "12 Rue Chénier"


def _peak_reading_notes(folder: Path) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        with ExportReader(folder) as reader:
            count = sum(1 for _ in reader.iter_raw("note"))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_streams_in_flat_memory(tmp_path):
    """3x the rows must not cost anywhere near 3x the memory: rows stream, nothing accumulates.

    The workbooks are openpyxl write-only output, which has no ``<dimension>`` tag: the case where
    openpyxl's own read-only loader would parse (and hold) every row just to size the sheet.
    """

    def notes_workbook(folder: Path, rows: int) -> None:
        folder.mkdir()
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Notes")
        ws.append(["NOTE ID", "NOTE"])
        for i in range(
            rows
        ):  # numbers parse ~3x faster than text under tracemalloc; a per-row leak shows either way
            ws.append([i, i * 7])
        wb.save(folder / "notes.xlsx")

    for name, rows in (("warm", 100), ("small", 20_000), ("large", 60_000)):
        notes_workbook(tmp_path / name, rows)
    _peak_reading_notes(tmp_path / "warm")  # imports and caches are not what we measure
    small_count, small_peak = _peak_reading_notes(tmp_path / "small")
    large_count, large_peak = _peak_reading_notes(tmp_path / "large")
    assert (small_count, large_count) == (20_000, 60_000)
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)


def test_write_exports_rejects_unknown_format(xlsx_tenant):
    with pytest.raises(ValueError):
        write_exports(xlsx_tenant, fmt="ods")
