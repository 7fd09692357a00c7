"""The Salesforce destination plugin against the emulator, method by method (no engine).

Schema setup (Tooling + field-level security), the insert-then-upsert rule for audit fields, the
per-record error contract, the quota guard, Bulk API 2.0 jobs and Files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal

import pytest

from airflow_ascora_provider.destinations.spec import OutgoingRecord, QuotaExhausted, SchemaChange
from airflow_ascora_provider.mapping.spec import FieldCreate
from airflow_ascora_provider.mapping.values import Address, AttachTo, DestRef, FileRef, FullName, Money, UserRef
from airflow_ascora_provider.sandbox.salesforce import DEFAULT_SESSION_ID, TlsServedApp, create_app

USERS = [{"email": "tess@example.com", "firstName": "Tess", "lastName": "Tech"},
         {"email": "owner@example.com", "firstName": "Fallback", "lastName": "Owner"},
         {"email": "left@example.com", "firstName": "Left", "lastName": "Company", "active": False}]
KEY = "Ascora_Id__c"


def serve_org(tmp_path, monkeypatch, **org_options) -> TlsServedApp:
    """A running emulator and the ``salesforce_default`` connection (direct session, trusted certificate)."""
    options = {"users": USERS, "custom_objects": [{"name": "Invoice__c", "label": "Invoice"},
                                                  {"name": "Quote_Line_Item__c", "label": "Quote Line Item"}],
               **org_options}
    server = TlsServedApp(create_app(**options), cert_dir=tmp_path / "tls").start()
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps({"conn_type": "salesforce", "extra": {
        "instance_url": server.url, "version": "62.0", "access_token": DEFAULT_SESSION_ID,
        "ca_bundle": str(server.ca_file), "max_retries": 3, "bulk_poll_seconds": 0.2}}))
    return server


@pytest.fixture
def org(tmp_path, monkeypatch):
    server = serve_org(tmp_path, monkeypatch)
    yield server
    server.stop()


def _destination(**options):
    from airflow_ascora_provider.destinations.salesforce.plugin import SalesforceDestination

    return SalesforceDestination(**options)


def _key_fields(dest, *objects: str) -> None:
    for sobject in objects:
        dest.apply_schema_change(SchemaChange("custom_field", sobject, KEY, FieldCreate("text", "Ascora ID",
                                                                                        unique=True)))
    dest.finish_schema_changes()  # the grants go out together, as at the end of the schema step


def _records(org, sobject):
    return org.app.state.salesforce.snapshot()["records"][sobject]


def test_schema_changes_create_fields_grant_access_and_flag_what_needs_a_person(org):
    dest = _destination()
    assert dest.custom_field_name("ascora Panel kW (rated)") == "Ascora_Panel_KW_Rated__c"
    _key_fields(dest, "Account", "Task", "Invoice__c")
    dest.apply_schema_change(SchemaChange("custom_field", "Opportunity", "Job_Status__c",
                                          FieldCreate("picklist", "Job Status", ("Booked",))))
    dest.apply_schema_change(SchemaChange("picklist_option", "Opportunity", "Job_Status__c", ("Completed", "Booked")))
    dest.apply_schema_change(SchemaChange("custom_field", "Opportunity", "Site__c",
                                          FieldCreate("lookup", "Site", lookup_target="Account")))
    dest.apply_schema_change(SchemaChange("custom_field", "Opportunity", "Pets__c", FieldCreate("boolean", "Pets")))
    collections = len(org.control.calls("POST", "/services/data/v62.0/composite/sobjects"))
    dest.finish_schema_changes()
    # The grants of the Opportunity fields in one sObject Collections call (none one by one), and
    # each object described once, not once per field.
    assert len(org.control.calls("POST", "/services/data/v62.0/composite/sobjects")) == collections + 1
    assert not org.control.calls("POST", "/services/data/v62.0/sobjects/FieldPermissions")
    assert len(org.control.calls("GET", "/services/data/v62.0/sobjects/Opportunity/describe")) == 1
    schema = dest.describe_schema()
    assert schema["Account"].fields[KEY].unique and schema["Account"].fields[KEY].custom
    assert KEY in schema["Task"].fields and KEY in schema["Invoice__c"].fields  # Activity field, custom object
    assert schema["Opportunity"].fields["Job_Status__c"].options == ("Booked", "Completed")
    assert schema["Opportunity"].fields["Site__c"].lookup_target == "Account"
    assert schema["Opportunity"].fields["Pets__c"].type == "boolean"  # a Yes/No pick-list, empty = no answer
    assert schema["Account"].fields["BillingAddress"].type == "address"
    assert schema["Contact"].fields["Name"].type == "full_name"
    permissions = org.app.state.salesforce.records["FieldPermissions"].values()
    assert {p["Field"] for p in permissions} >= {"Account.Ascora_Id__c", "Task.Ascora_Id__c",
                                                 "Invoice__c.Ascora_Id__c", "Opportunity.Site__c"}
    with pytest.raises(ValueError, match="manual review"):
        dest.apply_schema_change(SchemaChange("custom_field", "Account", "Site_Address__c",
                                              FieldCreate("address", "Site Address")))
    with pytest.raises(RuntimeError, match="admin creates custom objects"):
        dest.apply_schema_change(SchemaChange("custom_field", "Site__c", KEY, FieldCreate("text", "Ascora ID")))
    with pytest.raises(RuntimeError, match="record types"):
        dest.apply_schema_change(SchemaChange("picklist_option", "Opportunity", "RecordTypeId", ("Electrical",)))
    with pytest.raises(RuntimeError, match="standard pick-list"):
        dest.apply_schema_change(SchemaChange("picklist_option", "Opportunity", "StageName", ("Booked",)))
    org.app.state.salesforce.add_record_type("Opportunity", "Electrical")
    assert dest.describe_schema()["Opportunity"].fields["RecordTypeId"].options == ("Electrical",)


def test_first_load_inserts_with_the_ascora_timestamp_later_loads_upsert(org):
    dest = _destination()
    _key_fields(dest, "Account")
    created = dt.datetime(2019, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    payload = {"Name": "Acme Plumbing", KEY: "C-1", "CreatedDate": created, "AnnualRevenue": Money(Decimal("12.50")),
               "BillingAddress": Address("1 Main St", "Unit 2", "Perth", "WA", "6000", "Australia")}
    [result] = dest.write_batch("Account", [OutgoingRecord("C-1", payload)], KEY)
    assert result.ok and result.created
    assert org.control.calls("POST", "/services/data/v62.0/composite/sobjects")
    [row] = _records(org, "Account")
    assert row["CreatedDate"] == "2019-05-06T07:08:09.000+0000" and row["BillingStreet"] == "1 Main St\nUnit 2"
    later = {**payload, "Name": "Acme Plumbing & Gas"}
    [updated] = dest.write_batch("Account", [OutgoingRecord("C-1", later, dest_id=result.dest_id)], KEY)
    assert updated.ok and updated.dest_id == result.dest_id and not updated.created
    upserts = org.control.calls("PATCH", "/services/data/v62.0/composite/sobjects/Account/Ascora_Id__c")
    assert "CreatedDate" not in upserts[-1].body.decode()  # audit fields go on insert only
    read = dest.read_records("Account", [result.dest_id], ["Name", "CreatedDate", "BillingAddress", "AnnualRevenue"])
    assert read[result.dest_id] == {"Name": "Acme Plumbing & Gas", "CreatedDate": created,
                                    "BillingAddress": payload["BillingAddress"], "AnnualRevenue": Decimal("12.5")}


def test_without_the_audit_permission_new_records_are_upserted_and_created_date_is_write_only(
        tmp_path, monkeypatch, caplog):
    server = serve_org(tmp_path, monkeypatch, audit_fields=False)
    try:
        dest = _destination()
        _key_fields(dest, "Account")
        payload = {"Name": "Later Ltd", KEY: "C-9", "CreatedDate": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}
        [result] = dest.write_batch("Account", [OutgoingRecord("C-9", payload)], KEY)
        assert result.ok and result.created
        assert not [c for c in server.control.calls("POST", "/services/data/v62.0/composite/sobjects")
                    if b'"FieldPermissions"' not in c.body]  # only the schema step's grants
        assert "audit fields" in caplog.text
        assert "CreatedDate" not in dest.read_records("Account", [result.dest_id], ["Name", "CreatedDate"])[
            result.dest_id]
    finally:
        server.stop()


def test_an_insert_that_finds_its_ascora_id_already_written_becomes_an_upsert(org):
    dest = _destination()
    _key_fields(dest, "Account")
    [first] = dest.write_batch("Account", [OutgoingRecord("C-2", {"Name": "Once", KEY: "C-2"})], KEY)
    # A retry after a lost reply sends the same record as new again: no second Account appears.
    [again] = dest.write_batch("Account", [OutgoingRecord("C-2", {"Name": "Once more", KEY: "C-2"})], KEY)
    assert again.ok and again.dest_id == first.dest_id
    assert [r["Name"] for r in _records(org, "Account")] == ["Once more"]


def test_refused_records_name_the_mapping_field_and_the_rest_is_written(org):
    dest = _destination()
    _key_fields(dest, "Account", "Contact", "Task")
    owner = next(u.id for u in dest.list_users() if u.email == "tess@example.com")
    assert {u.email for u in dest.list_users()} == {"tess@example.com", "owner@example.com",
                                                    "integration@ascora-migration.example"}
    records = [
        OutgoingRecord("A", {"Name": "Fine", KEY: "A", "OwnerId": UserRef(owner)}),
        OutgoingRecord("B", {"Name": "Bad city", KEY: "B", "ShippingAddress": Address("1 St", city="x" * 41)}),
        OutgoingRecord("C", {"Name": "Bad type", KEY: "C", "NumberOfEmployees": Decimal("2.5")}),
    ]
    results = dest.write_batch("Account", records, KEY)
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error.startswith("STRING_TOO_LONG") and results[1].error_field == "ShippingAddress"
    assert results[2].error_field == "NumberOfEmployees" and "whole numbers" in results[2].error
    [contact] = dest.write_batch("Contact", [OutgoingRecord("P", {
        "Name": FullName("Cher", None), KEY: "P", "AccountId": DestRef("Account", results[0].dest_id)})], KEY)
    assert contact.ok and _records(org, "Contact")[0]["LastName"] == "Cher"  # one name goes to LastName
    [task] = dest.write_batch("Task", [OutgoingRecord("T", {
        "Subject": "Call", KEY: "T", "Status": "Completed",
        "RelatedTo": AttachTo((DestRef("Account", results[0].dest_id), DestRef("Contact", contact.dest_id)))})], KEY)
    row = _records(org, "Task")[0]
    assert task.ok and (row["WhatId"], row["WhoId"]) == (results[0].dest_id, contact.dest_id)
    read = dest.read_records("Task", [task.dest_id], ["RelatedTo"])[task.dest_id]["RelatedTo"]
    assert {r.dest_id for r in read.refs} == {results[0].dest_id, contact.dest_id}


def test_the_quota_guard_stops_before_the_reserve_is_touched(org):
    dest = _destination(api_reserve_percent=15, quota_pause_minutes=30)
    _key_fields(dest, "Account")
    dest.write_batch("Account", [OutgoingRecord("P", {"Name": "P", KEY: "P"})], KEY)
    org.app.state.salesforce.settings(api_max=1000, api_used=850)
    dest.list_users()  # the guard learns the usage from every answer's Sforce-Limit-Info
    posts_before = len(org.control.calls("POST", "/services/data/v62.0/composite"))
    with pytest.raises(QuotaExhausted, match="kept in reserve") as stopped:
        dest.write_batch("Account", [OutgoingRecord("Q", {"Name": "Q", KEY: "Q"})], KEY)
    assert len(org.control.calls("POST", "/services/data/v62.0/composite")) == posts_before  # nothing was sent
    assert stopped.value.resume_at > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=29)


def test_request_limit_exceeded_from_the_org_is_a_resumable_stop(org):
    dest = _destination(api_reserve_calls=0)
    _key_fields(dest, "Account")
    dest.write_batch("Account", [OutgoingRecord("P", {"Name": "P", KEY: "P"})], KEY)
    state = org.app.state.salesforce
    state.settings(api_max=state.api_used)  # another integration spends the rest meanwhile
    dest.conn.guard.used = 0  # the guard's last reading predates that
    with pytest.raises(QuotaExhausted, match="REQUEST_LIMIT_EXCEEDED"):
        dest.write_batch("Account", [OutgoingRecord("R", {"Name": "R", KEY: "R"})], KEY)


def test_bulk_jobs_are_submitted_polled_and_answered_per_record(org):
    dest = _destination(bulk_threshold=2)
    _key_fields(dest, "Account")
    assert dest.bulk_threshold("Account") == 2 and dest.bulk_threshold("ContentVersion") is None
    [existing] = dest.write_batch("Account", [OutgoingRecord("U", {"Name": "Before", KEY: "U"})], KEY)
    records = [OutgoingRecord("N1", {"Name": "New one", KEY: "N1", "CreatedDate": dt.datetime(2018, 1, 2, tzinfo=dt.UTC)}),
               OutgoingRecord("N2", {"Name": None, KEY: "N2"}),
               OutgoingRecord("U", {"Name": "After", KEY: "U", "Phone": None}, dest_id=existing.dest_id),
               OutgoingRecord("N3", {"Name": "Bad", KEY: "N3", "NumberOfEmployees": "many"})]
    job = dest.submit_bulk_job("Account", records, KEY)
    assert json.loads(json.dumps(job)) == job  # the trigger carries it
    assert [j["operation"] for j in job["jobs"]] == ["insert", "upsert"]
    statuses = []
    while not (status := dest.poll_bulk_job(job)).finished:
        statuses.append(status.state)
    assert statuses and status.state == "done"
    results = dest.bulk_job_results(job, records)
    assert [r.source_id for r in results] == ["N1", "N2", "U", "N3"]
    assert results[0].ok and results[0].created and results[2].ok and results[2].dest_id == existing.dest_id
    assert results[1].error.startswith("REQUIRED_FIELD_MISSING") and results[1].error_field == "Name"
    assert results[3].error_field == "NumberOfEmployees"
    rows = {r[KEY]: r for r in _records(org, "Account")}
    assert rows["N1"]["CreatedDate"].startswith("2018-01-02") and rows["U"]["Name"] == "After"


def test_bulk_jobs_wait_when_the_daily_batch_allowance_is_nearly_spent(org):
    org.app.state.salesforce.settings(bulk_batches_max=100, bulk_batches_used=95)
    dest = _destination(bulk_threshold=1)
    _key_fields(dest, "Account")
    with pytest.raises(QuotaExhausted, match="Bulk API batches"):
        dest.submit_bulk_job("Account", [OutgoingRecord("B", {"Name": "B", KEY: "B"})], KEY)


def test_files_upload_once_new_bytes_make_a_new_version_and_rollback_removes_the_document(org, tmp_path):
    dest = _destination()
    _key_fields(dest, "Account", "ContentVersion")
    [account] = dest.write_batch("Account", [OutgoingRecord("A", {"Name": "Files", KEY: "A"})], KEY)

    def file(content: bytes, name="quote.pdf") -> FileRef:
        path = tmp_path / hashlib.sha256(content).hexdigest()
        path.write_bytes(content)
        return FileRef(hashlib.sha256(content).hexdigest(), len(content), name, "application/pdf", str(path))

    def payload(ref):
        return {"Title": "quote", "PathOnClient": "quote.pdf", "VersionData": ref, KEY: "F",
                "FirstPublishLocationId": DestRef("Account", account.dest_id)}

    first = file(b"%PDF first")
    [version] = dest.write_batch("ContentVersion", [OutgoingRecord("F", payload(first))], KEY)
    assert version.ok
    assert dest.read_records("ContentVersion", [version.dest_id], ["VersionData"])[version.dest_id]["VersionData"] \
        == first
    [same] = dest.write_batch("ContentVersion", [OutgoingRecord("F", payload(first), dest_id=version.dest_id)], KEY)
    assert same.dest_id == version.dest_id and len(_records(org, "ContentVersion")) == 1
    [newer] = dest.write_batch("ContentVersion", [OutgoingRecord("F", payload(file(b"%PDF second")),
                                                                 dest_id=version.dest_id)], KEY)
    assert newer.ok and newer.dest_id != version.dest_id
    assert len(_records(org, "ContentDocument")) == 1 and len(_records(org, "ContentVersion")) == 2
    big = FileRef("0" * 64, 26 * 1024 * 1024, "huge.mov", None, None)
    [refused] = dest.write_batch("ContentVersion", [OutgoingRecord("G", {**payload(big), KEY: "G"})], KEY)
    assert refused.error_field == "VersionData" and "at most" in refused.error
    assert dest.delete_records("ContentVersion", [newer.dest_id]) == {newer.dest_id: None}
    assert _records(org, "ContentDocument") == [] and _records(org, "ContentVersion") == []
    assert dest.delete_records("ContentVersion", [newer.dest_id]) == {newer.dest_id: None}  # already gone


def test_delete_is_idempotent_and_restore_puts_the_before_image_back(org):
    dest = _destination()
    _key_fields(dest, "Account")
    [record] = dest.write_batch("Account", [OutgoingRecord("R", {"Name": "Before", KEY: "R", "Phone": "1"})], KEY)
    image = dest.read_records("Account", [record.dest_id], ["Name", "Phone", "ShippingAddress"])[record.dest_id]
    dest.write_batch("Account", [OutgoingRecord("R", {"Name": "After", KEY: "R", "Phone": None,
                                                      "ShippingAddress": Address("2 St", city="Perth")},
                                                dest_id=record.dest_id)], KEY)
    dest.restore_record("Account", record.dest_id, image)
    assert dest.read_records("Account", [record.dest_id], ["Name", "Phone", "ShippingAddress"])[record.dest_id] \
        == image
    assert dest.delete_records("Account", [record.dest_id]) == {record.dest_id: None}
    assert dest.delete_records("Account", [record.dest_id]) == {record.dest_id: None}
    assert dest.find_by_source_ids("Account", KEY, ["R"]) == {}
