"""The Salesforce emulator, driven only through simple-salesforce's public API and Airflow's SalesforceHook.

Nothing here talks HTTP by hand: if simple-salesforce (unchanged) can do it against the emulator,
the plugin can do it against a real org. The emulator serves TLS on 127.0.0.1 with a self-signed
certificate; the client trusts it through the session it hands to SalesforceHook.
"""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from airflow_ascora_provider.sandbox.emulator import FaultPlan
from airflow_ascora_provider.sandbox.salesforce import DEFAULT_SESSION_ID, TlsServedApp, create_app

USERS = [{"email": "tech@example.com", "firstName": "Tess", "lastName": "Tech"},
         {"email": "gone@example.com", "firstName": "Old", "lastName": "Timer", "active": False}]


@pytest.fixture
def org(monkeypatch, tmp_path):
    server = TlsServedApp(create_app(users=USERS, page_size=200), cert_dir=tmp_path / "tls").start()
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(
        {"conn_type": "salesforce", "extra": {"instance_url": server.url, "version": "62.0"}}))
    yield server
    server.stop()


def _hook(server, token: str = DEFAULT_SESSION_ID):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    session = requests.Session()
    session.verify = str(server.ca_file)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace session.verify
    return SalesforceHook(session_id=token, session=session)


def _make_key_field(sf, sobject: str = "Account", name: str = "Ascora_Id__c") -> None:
    """What the plugin's schema step does: Tooling CustomField, then FLS through a permission set."""
    created = sf.toolingexecute("sobjects/CustomField", method="POST", data={
        "FullName": f"{sobject}.{name}", "Metadata": {"label": "Ascora ID", "type": "Text", "length": 64,
                                                      "unique": True, "externalId": True}})
    assert created["success"] and created["id"].startswith("00N")
    ps = sf.PermissionSet.create({"Name": "Ascora_Migration", "Label": "Ascora Migration"})["id"]
    me = sf.oauth2("userinfo")["user_id"]
    sf.PermissionSetAssignment.create({"AssigneeId": me, "PermissionSetId": ps})
    sf.FieldPermissions.create({"ParentId": ps, "SobjectType": sobject, "Field": f"{sobject}.{name}",
                                "PermissionsRead": True, "PermissionsEdit": True})


def test_hook_connects_describes_and_reports_api_usage(org):
    hook = _hook(org)
    assert hook.test_connection() == (True, "Connection successfully tested")
    fields = hook.get_available_fields("Account")
    assert {"Id", "Name", "BillingStreet", "BillingAddress", "ParentId", "CreatedDate"} <= set(fields)
    sf = hook.get_conn()
    sf.Account.create({"Name": "Acme Plumbing"})
    assert sf.query("SELECT Id FROM Account")["totalSize"] == 1
    assert sf.api_usage["api-usage"].used >= 3 and sf.api_usage["api-usage"].total == 100_000
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert {"Account", "Contact", "Opportunity", "Asset", "Order", "Task", "ContentVersion", "Lead"} <= names


def test_unknown_session_is_refused_with_invalid_session_id(org):
    with pytest.raises(SalesforceExpiredSession) as caught:
        _hook(org, token="00Dnotatoken").get_conn().Account.describe()
    assert caught.value.content[0]["errorCode"] == "INVALID_SESSION_ID"


def test_crud_required_fields_unknown_fields_and_deleted_records(org):
    sf = _hook(org).get_conn()
    account = sf.Account.create({"Name": "Coastal Electrical", "BillingCity": "Perth"})["id"]
    assert len(account) == 18 and account.startswith("001")
    record = sf.Account.get(account)
    assert record["BillingAddress"]["city"] == "Perth" and record["attributes"]["type"] == "Account"
    assert sf.Account.update(account, {"Phone": "08 9000 0000"}) == 204
    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf.Contact.create({"FirstName": "No", "AccountId": account})
    assert missing.value.content == [{"message": "Required fields are missing: [LastName]",
                                      "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.Account.create({"Name": "x", "Ascora_Id__c": "A1"})
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as compound:
        sf.Account.update(account, {"BillingAddress": {"city": "Perth"}})
    assert compound.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as stage:
        sf.Opportunity.create({"Name": "x", "StageName": "Booked", "CloseDate": "2026-01-01"})
    assert stage.value.content[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    contact = sf.Contact.create({"LastName": "Nguyen", "FirstName": "Ann", "AccountId": account})["id"]
    assert sf.Contact.get(contact)["Name"] == "Ann Nguyen"
    assert sf.Account.delete(account) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(contact)  # deleting an Account deletes its contacts
    assert sf.query("SELECT Id FROM Account")["totalSize"] == 0
    assert sf.query_all("SELECT Id FROM Account", include_deleted=True)["totalSize"] == 1


def test_new_custom_field_is_invisible_until_field_permissions_grant_it(org):
    sf = _hook(org).get_conn()
    sf.toolingexecute("sobjects/CustomField", method="POST", data={
        "FullName": "Account.Gate_Code__c", "Metadata": {"label": "Gate Code", "type": "Text", "length": 20}})
    assert "Gate_Code__c" not in {f["name"] for f in sf.Account.describe()["fields"]}
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id, Gate_Code__c FROM Account")
    ps = sf.PermissionSet.create({"Name": "Integration", "Label": "Integration"})["id"]
    sf.PermissionSetAssignment.create({"AssigneeId": sf.oauth2("userinfo")["user_id"], "PermissionSetId": ps})
    sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Account", "Field": "Account.Gate_Code__c",
                                "PermissionsRead": True, "PermissionsEdit": True})
    assert "Gate_Code__c" in {f["name"] for f in sf.Account.describe()["fields"]}
    sf.Account.create({"Name": "Site A", "Gate_Code__c": "1234"})
    assert sf.query("SELECT Gate_Code__c FROM Account")["records"][0]["Gate_Code__c"] == "1234"
    with pytest.raises(SalesforceMalformedRequest) as duplicate:
        sf.toolingexecute("sobjects/CustomField", method="POST", data={
            "FullName": "Account.Gate_Code__c", "Metadata": {"label": "Gate Code", "type": "Text", "length": 20}})
    assert duplicate.value.content[0]["errorCode"] == "DUPLICATE_DEVELOPER_NAME"
    with pytest.raises(SalesforceMalformedRequest, match="Activity"):
        sf.toolingexecute("sobjects/CustomField", method="POST", data={
            "FullName": "Task.Ascora_Id__c", "Metadata": {"label": "Ascora ID", "type": "Text", "length": 20}})


def test_picklist_values_are_added_through_tooling_metadata(org):
    sf = _hook(org).get_conn()
    sf.toolingexecute("sobjects/CustomField", method="POST", data={
        "FullName": "Opportunity.Job_Status__c", "Metadata": {
            "label": "Job Status", "type": "Picklist", "valueSet": {"restricted": True, "valueSetDefinition": {
                "value": [{"fullName": "Booked", "label": "Booked", "default": False}]}}}})
    found = sf.toolingexecute("query/", params={
        "q": "SELECT Id, TableEnumOrId FROM CustomField WHERE DeveloperName = 'Job_Status'"})["records"]
    assert [r["TableEnumOrId"] for r in found] == ["Opportunity"]
    current = sf.toolingexecute(f"sobjects/CustomField/{found[0]['Id']}")
    metadata = current["Metadata"]
    metadata["valueSet"]["valueSetDefinition"]["value"].append({"fullName": "Completed", "label": "Completed"})
    sf.toolingexecute(f"sobjects/CustomField/{found[0]['Id']}", method="PATCH", data={"Metadata": metadata})
    ps = sf.PermissionSet.create({"Name": "P", "Label": "P"})["id"]
    sf.PermissionSetAssignment.create({"AssigneeId": sf.oauth2("userinfo")["user_id"], "PermissionSetId": ps})
    sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Opportunity", "Field": "Opportunity.Job_Status__c",
                                "PermissionsRead": True, "PermissionsEdit": True})
    described = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}
    assert [v["value"] for v in described["Job_Status__c"]["picklistValues"]] == ["Booked", "Completed"]


def test_upsert_by_external_id_creates_updates_and_refuses_duplicates(org):
    sf = _hook(org).get_conn()
    _make_key_field(sf)
    assert sf.Account.upsert("Ascora_Id__c/C-1", {"Name": "First"}) == 201
    assert sf.Account.upsert("Ascora_Id__c/C-1", {"Name": "Renamed"}) == 200
    raw = sf.Account.upsert("Ascora_Id__c/C-1", {"Name": "Again"}, raw_response=True)
    assert raw.json()["created"] is False
    assert sf.Account.get_by_custom_id("Ascora_Id__c", "C-1")["Name"] == "Again"
    with pytest.raises(SalesforceMalformedRequest) as duplicate:
        sf.Account.create({"Name": "Copy", "Ascora_Id__c": "c-1"})  # unique, case-insensitive
    assert duplicate.value.content[0]["errorCode"] == "DUPLICATE_VALUE"
    assert "Ascora_Id__c duplicates value on record with id" in duplicate.value.content[0]["message"]
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.upsert("Name/First", {"Phone": "1"})  # not an external id


def test_upsert_matching_several_records_answers_300(org):
    sf = _hook(org).get_conn()
    sf.toolingexecute("sobjects/CustomField", method="POST", data={
        "FullName": "Account.Legacy__c", "Metadata": {"label": "Legacy", "type": "Text", "length": 20,
                                                      "externalId": True}})
    ps = sf.PermissionSet.create({"Name": "L", "Label": "L"})["id"]
    sf.PermissionSetAssignment.create({"AssigneeId": sf.oauth2("userinfo")["user_id"], "PermissionSetId": ps})
    sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Account", "Field": "Account.Legacy__c",
                                "PermissionsRead": True, "PermissionsEdit": True})
    sf.Account.create({"Name": "a", "Legacy__c": "L"})
    sf.Account.create({"Name": "b", "Legacy__c": "L"})  # external id but not unique
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Account.upsert("Legacy__c/L", {"Phone": "1"})


def test_collections_partial_success_all_or_none_and_caps(org):
    sf = _hook(org).get_conn()
    _make_key_field(sf)
    answers = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Account"}, "Name": "Good", "Ascora_Id__c": "G1"},
        {"attributes": {"type": "Account"}, "Ascora_Id__c": "B1"}]})
    assert answers[0]["success"] and not answers[1]["success"]
    assert answers[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"  # statusCode inside collections
    rolled = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": [
        {"attributes": {"type": "Account"}, "Name": "Would be", "Ascora_Id__c": "G2"},
        {"attributes": {"type": "Account"}, "Name": "Dup", "Ascora_Id__c": "G1"}]})
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled[1]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    assert sf.query("SELECT Id FROM Account WHERE Ascora_Id__c = 'G2'")["totalSize"] == 0
    upserted = sf.restful("composite/sobjects/Account/Ascora_Id__c", method="PATCH", json={
        "allOrNone": False, "records": [{"attributes": {"type": "Account"}, "Ascora_Id__c": "G1", "Name": "Good 2"},
                                        {"attributes": {"type": "Account"}, "Ascora_Id__c": "G3", "Name": "New"}]})
    assert [a["created"] for a in upserted] == [False, True]
    with pytest.raises(SalesforceMalformedRequest) as too_many:
        sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
            {"attributes": {"type": "Account"}, "Name": str(i)} for i in range(201)]})
    assert too_many.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    with pytest.raises(SalesforceMalformedRequest) as bad_field:  # refuses the whole request
        sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
            {"attributes": {"type": "Account"}, "Name": "ok"}, {"attributes": {"type": "Account"}, "Nmae": "x"}]})
    assert bad_field.value.content[0]["errorCode"] == "INVALID_FIELD"
    ids = [a["id"] for a in upserted]
    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": ",".join(ids), "allOrNone": "false"})
    assert all(d["success"] for d in deleted)
    again = sf.restful("composite/sobjects", method="DELETE", params={"ids": ids[0], "allOrNone": "false"})
    assert again[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


def test_query_more_pages_through_results(org):
    sf = _hook(org).get_conn()
    for start in range(0, 450, 150):
        sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": [
            {"attributes": {"type": "Account"}, "Name": f"Acct {i:03d}"} for i in range(start, start + 150)]})
    first = sf.query("SELECT Id, Name FROM Account ORDER BY Name")
    assert first["done"] is False and first["totalSize"] == 450 and len(first["records"]) == 200
    assert first["nextRecordsUrl"].startswith("/services/data/v62.0/query/")
    names = [r["Name"] for r in sf.query_all_iter("SELECT Id, Name FROM Account ORDER BY Name")]
    assert names == [f"Acct {i:03d}" for i in range(450)]
    assert sf.query("SELECT COUNT() FROM Account WHERE Name LIKE 'Acct 1%'")["totalSize"] == 100
    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b'")
    assert malformed.value.content[0]["errorCode"] == "MALFORMED_QUERY"


def test_audit_fields_on_insert_only(org):
    sf = _hook(org).get_conn()
    created = sf.Account.create({"Name": "Old customer", "CreatedDate": "2019-03-04T05:06:07.000Z"})["id"]
    assert sf.Account.get(created)["CreatedDate"] == "2019-03-04T05:06:07.000+0000"
    with pytest.raises(SalesforceMalformedRequest) as update:
        sf.Account.update(created, {"CreatedDate": "2018-01-01T00:00:00Z"})
    assert update.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest):
        sf.Asset.create({"Name": "HWS", "AccountId": created, "CreatedDate": "2019-01-01T00:00:00Z"})
    org.app.state.salesforce.settings(audit_fields=False)
    assert not {f["name"]: f for f in sf.Account.describe()["fields"]}["CreatedDate"]["createable"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.Account.create({"Name": "New", "CreatedDate": "2019-03-04T05:06:07Z"})


def test_created_by_is_insert_only_and_must_name_a_user(org):
    sf = _hook(org).get_conn()
    user = sf.query("SELECT Id FROM User WHERE IsActive = true LIMIT 1")["records"][0]["Id"]
    created = sf.Account.create({"Name": "Uploaded by staff", "CreatedById": user})["id"]
    assert sf.Account.get(created)["CreatedById"] == user
    with pytest.raises(SalesforceMalformedRequest) as not_a_user:
        sf.Account.create({"Name": "Nobody", "CreatedById": created})
    assert not_a_user.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest) as update:
        sf.Account.update(created, {"CreatedById": user})
    assert update.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_owner_and_reference_rules(org):
    sf = _hook(org).get_conn()
    users = {u["Email"]: u for u in sf.query_all("SELECT Id, Email, IsActive FROM User")["records"]}
    with pytest.raises(SalesforceMalformedRequest) as inactive:
        sf.Account.create({"Name": "x", "OwnerId": users["gone@example.com"]["Id"]})
    assert inactive.value.content[0]["errorCode"] == "INACTIVE_OWNER_OR_USER"
    account = sf.Account.create({"Name": "x", "OwnerId": users["tech@example.com"]["Id"]})["id"]
    with pytest.raises(SalesforceMalformedRequest) as wrong:
        sf.Asset.create({"Name": "Unit", "AccountId": users["tech@example.com"]["Id"]})
    assert wrong.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest, match="Every asset needs"):
        sf.Asset.create({"Name": "Unit"})
    task = sf.Task.create({"Subject": "Call", "WhatId": account, "Status": "Completed"})["id"]
    assert sf.Task.get(task)["IsClosed"] is True


def test_files_upload_download_and_delete_with_the_document(org):
    sf = _hook(org).get_conn()
    account = sf.Account.create({"Name": "With files"})["id"]
    data = b"%PDF-1.4 invoice 1001"
    version = sf.ContentVersion.create({"Title": "INV-1001", "PathOnClient": "INV-1001.pdf",
                                        "VersionData": base64.b64encode(data).decode(),
                                        "FirstPublishLocationId": account})["id"]
    assert sf.ContentVersion.get_base64(version, base64_field="VersionData") == data
    row = sf.query(f"SELECT Id, ContentDocumentId, Checksum, FileType, ContentSize FROM ContentVersion "
                   f"WHERE Id = '{version}'")["records"][0]
    assert row["FileType"] == "PDF" and row["ContentSize"] == len(data)
    links = sf.query(f"SELECT LinkedEntityId FROM ContentDocumentLink WHERE ContentDocumentId = "
                     f"'{row['ContentDocumentId']}'")["records"]
    assert [link["LinkedEntityId"] for link in links] == [account]
    with pytest.raises(SalesforceMalformedRequest):
        sf.ContentVersion.delete(version)  # versions go with their document
    sf.ContentDocument.delete(row["ContentDocumentId"])
    assert sf.query("SELECT Id FROM ContentVersion")["totalSize"] == 0


def test_bulk_2_ingest_lifecycle_with_result_files(org):
    sf = _hook(org).get_conn()
    _make_key_field(sf)
    results = sf.bulk2.Account.insert(records=[{"Name": "Bulk A", "Ascora_Id__c": "BA"},
                                               {"Name": "", "Ascora_Id__c": "BB"}], wait=0.1)
    assert results[0]["numberRecordsProcessed"] == 2 and results[0]["numberRecordsFailed"] == 1
    job = results[0]["job_id"]
    failed = list(csv.DictReader(io.StringIO(sf.bulk2.Account.get_failed_records(job))))
    assert failed[0]["Ascora_Id__c"] == "BB"
    assert failed[0]["sf__Error"].startswith("REQUIRED_FIELD_MISSING:Required fields are missing: [Name]")
    ok = list(csv.DictReader(io.StringIO(sf.bulk2.Account.get_successful_records(job))))
    assert ok[0]["sf__Created"] == "true" and ok[0]["sf__Id"].startswith("001")
    upserted = sf.bulk2.Account.upsert(records=[{"Ascora_Id__c": "BA", "Name": "Bulk A2"},
                                                {"Ascora_Id__c": "BC", "Name": "Bulk C"}],
                                       external_id_field="Ascora_Id__c", wait=0.1)
    created = {r["Ascora_Id__c"]: r["sf__Created"] for r in csv.DictReader(io.StringIO(
        sf.bulk2.Account.get_successful_records(upserted[0]["job_id"])))}
    assert created == {"BA": "false", "BC": "true"}
    assert sf.Account.get_by_custom_id("Ascora_Id__c", "BA")["Name"] == "Bulk A2"
    with pytest.raises(Exception, match="Field name not found"):
        sf.bulk2.Account.insert(records=[{"Name": "x", "Nope__c": "y"}], wait=0.1)


def test_daily_limit_answers_403_request_limit_exceeded(org):
    org.app.state.salesforce.settings(api_max=5, api_used=3)
    sf = _hook(org).get_conn()
    sf.query("SELECT Id FROM Account")
    assert sf.api_usage["api-usage"].used == 4
    sf.Account.create({"Name": "two"})
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.Account.create({"Name": "three"})
    assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert org.app.state.salesforce.limits()["DailyApiRequests"] == {"Max": 5, "Remaining": 0}


def test_faults_are_injected_like_the_other_emulators(org):
    org.control.set_faults(FaultPlan(rate_5xx=1.0, seed=1, paths=["/services/data/v62.0/sobjects/Account"]))
    sf = _hook(org).get_conn()
    with pytest.raises(Exception, match="503|Unavailable"):
        sf.Account.create({"Name": "x"})
    org.control.set_faults(FaultPlan())
    sf.Account.create({"Name": "y"})
    assert [r.status for r in org.control.calls("POST", "/services/data/v62.0/sobjects/Account")] == [503, 201]
