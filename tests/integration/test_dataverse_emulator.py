"""The Dataverse emulator over real HTTPS: the documented Web API behaviours a client must cope with.

Raw httpx calls (no hook), so each test pins one wire behaviour: status codes and headers of create /
update / conditional upsert, ``$batch`` multipart with atomic change sets, the error codes of the
reference (unknown attribute, undeclared navigation property, duplicate key, length, size), metadata
creation with alternate keys that are Pending before Active, service protection 429s, and the
Entra ID client-credentials token endpoint.
"""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from airflow_ascora_provider.sandbox.dataverse import (
    API_ROOT,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
)
from tests.integration.dataverse_support import serve


@pytest.fixture
def dataverse(request):
    kwargs = getattr(request, "param", {})
    server = serve(**kwargs)
    client = httpx.Client(base_url=server.url + API_ROOT, verify=str(server.ca_file), timeout=30)
    token = _token(server)
    client.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                           "OData-Version": "4.0", "OData-MaxVersion": "4.0"})
    yield server, client
    client.close()
    server.stop()


def _token(server, secret=DEFAULT_CLIENT_SECRET, scope=None):
    with httpx.Client(verify=str(server.ca_file)) as raw:
        response = raw.post(f"{server.url}/{DEFAULT_TENANT}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "client_secret": secret,
            "scope": scope or f"{server.url}/.default"})
    return response.json().get("access_token") if response.status_code == 200 else response


def _batch(client, parts: list[str], *, prefer: str | None = "odata.continue-on-error") -> httpx.Response:
    boundary = "batch_test"
    body = "\r\n".join([*(f"--{boundary}\r\n{p}" for p in parts), f"--{boundary}--", ""])
    headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
    if prefer:
        headers["Prefer"] = prefer
    return client.post("/$batch", content=body.encode(), headers=headers)


def _request(method, url, body=None, content_id=None):
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {API_ROOT}/{url} HTTP/1.1"]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += ["", body or ""]
    return "\r\n".join(lines)


def _changeset(*requests):
    return "\r\n".join(["Content-Type: multipart/mixed; boundary=cs", "", *(f"--cs\r\n{r}" for r in requests),
                        "--cs--"])


def test_token_endpoint_and_bearer_tokens(dataverse):
    server, _ = dataverse
    refused = _token(server, secret="wrong")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    bad_scope = _token(server, scope="https://other.crm.dynamics.com/.default")
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"
    with httpx.Client(verify=str(server.ca_file)) as anonymous:
        response = anonymous.get(f"{server.url}{API_ROOT}/accounts")
    assert response.status_code == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    config = httpx.get(f"{server.url}/{DEFAULT_TENANT}/v2.0/.well-known/openid-configuration",
                       verify=str(server.ca_file)).json()
    assert config["token_endpoint"].endswith(f"/{DEFAULT_TENANT}/oauth2/v2.0/token")


def test_create_update_and_conditional_upsert(dataverse):
    _, client = dataverse
    created = client.post("/accounts", json={"name": "Harbourside Plumbing"})
    assert created.status_code == 204 and not created.content
    account_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    represented = client.post("/accounts", json={"name": "Second"}, headers={"Prefer": "return=representation"})
    assert represented.status_code == 201 and represented.json()["name"] == "Second"
    assert represented.headers["Preference-Applied"] == "return=representation"
    assert client.patch(f"/accounts({account_id})", json={"telephone1": "08 9999 0000"},
                        headers={"If-Match": "*"}).status_code == 204
    missing = str(uuid.uuid4())
    not_found = client.patch(f"/accounts({missing})", json={"name": "x"}, headers={"If-Match": "*"})
    assert not_found.status_code == 404 and "Does Not Exist" in not_found.json()["error"]["message"]
    exists = client.patch(f"/accounts({account_id})", json={"name": "x"}, headers={"If-None-Match": "*"})
    assert exists.status_code == 412 and exists.json()["error"]["code"] == "0x80040237"
    upserted = client.patch(f"/accounts({missing})", json={"name": "Made by upsert"})
    assert upserted.status_code == 204
    assert client.get(f"/accounts({missing})?$select=name").json()["name"] == "Made by upsert"
    assert client.delete(f"/accounts({missing})").status_code == 204
    assert client.delete(f"/accounts({missing})").status_code == 404


def test_validation_errors_carry_dataverse_codes(dataverse):
    server, client = dataverse
    unknown = client.post("/accounts", json={"nmae": "typo"}).json()["error"]
    assert unknown["code"] == "0x80060888" and "'nmae'" in unknown["message"]
    account = client.post("/accounts", json={"name": "A"}).headers["OData-EntityId"].rsplit("(", 1)[1][:-1]
    undeclared = client.post("/contacts", json={"lastname": "B", "parentcustomerid@odata.bind": f"/accounts({account})"})
    assert undeclared.json()["error"]["code"] == "0x80048d19"  # polymorphic: parentcustomerid_account
    ok = client.post("/contacts", json={"lastname": "B", "parentcustomerid_account@odata.bind": f"/accounts({account})"})
    assert ok.status_code == 204
    direct = client.post("/contacts", json={"lastname": "B", "parentcustomerid": account})
    assert direct.status_code == 400 and "Navigation properties" in direct.json()["error"]["message"]
    too_long = client.post("/accounts", json={"name": "x" * 161}).json()["error"]
    assert too_long["code"] == "0x80044331" and "160" in too_long["message"]
    naive = client.post("/opportunities", json={"name": "o", "estimatedclosedate": "2026-01-01T00:00:00Z"})
    assert "Edm.Date" in naive.json()["error"]["message"]
    assert client.get("/opportunitys").status_code == 404  # entity set names come from metadata
    disabled = server.app.state.dataverse._insert("systemuser", {"fullname": "Gone", "isdisabled": True,
                                                                 "internalemailaddress": "gone@x.example"})
    refused = client.post("/accounts", json={"name": "c", "ownerid@odata.bind": f"/systemusers({disabled})"})
    assert refused.status_code == 400 and "disabled" in refused.json()["error"]["message"]


def test_overriddencreatedon_swaps_into_createdon(dataverse):
    _, client = dataverse
    created = client.post("/accounts", json={"name": "Old", "overriddencreatedon": "2019-05-01T10:00:00Z"},
                          headers={"Prefer": "return=representation"}).json()
    assert created["createdon"] == "2019-05-01T10:00:00Z"
    assert created["overriddencreatedon"] != "2019-05-01T10:00:00Z"
    again = client.patch(f"/accounts({created['accountid']})", json={"overriddencreatedon": "2020-01-01T00:00:00Z"})
    assert again.status_code == 400  # create only


def test_batch_change_sets_are_atomic_and_continue_on_error(dataverse):
    server, client = dataverse
    response = _batch(client, [
        _changeset(_request("POST", "accounts", '{"name": "kept"}', "1")),
        _changeset(_request("POST", "accounts", '{"name": "rolled back"}', "2"),
                   _request("POST", "accounts", '{"bogus": 1}', "3")),
        _changeset(_request("POST", "accounts", '{"name": "parent"}', "4"),
                   _request("POST", "contacts", '{"lastname": "child", "parentcustomerid_account@odata.bind": "$4"}',
                            "5")),
        _request("GET", "accounts?$select=name"),
    ])
    assert response.status_code == 200
    text = response.text
    assert text.count("HTTP/1.1 204") == 3 and "0x80060888" in text and "HTTP/1.1 200" in text
    names = {r["name"] for r in server.app.state.dataverse.snapshot()["records"]["account"]}
    assert names == {"kept", "parent"}
    child = server.app.state.dataverse.snapshot()["records"]["contact"][0]
    assert child["parentcustomerid"]["entity"] == "account"
    stopped = _batch(client, [_changeset(_request("POST", "accounts", '{"bogus": 1}', "1")),
                              _changeset(_request("POST", "accounts", '{"name": "never"}', "2"))], prefer=None)
    assert stopped.status_code == 400 and stopped.text.count("HTTP/1.1") == 1
    assert "never" not in {r["name"] for r in server.app.state.dataverse.snapshot()["records"]["account"]}
    get_in_changeset = _batch(client, [_changeset(_request("GET", "accounts", None, "1"))])
    assert get_in_changeset.status_code == 400
    too_many = _batch(client, [_request("GET", "accounts") for _ in range(1001)])
    assert too_many.status_code == 400 and "1000" in too_many.json()["error"]["message"]


def test_metadata_tables_lookups_and_keys(dataverse):
    server, client = dataverse
    label = {"LocalizedLabels": [{"Label": "Property", "LanguageCode": 1033}]}
    table = {"@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata", "SchemaName": "asc_property",
             "DisplayName": label, "OwnershipType": "UserOwned", "HasNotes": True, "HasActivities": True,
             "Attributes": [{"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                             "AttributeType": "String", "SchemaName": "asc_name", "IsPrimaryName": True,
                             "MaxLength": 200, "DisplayName": label}]}
    assert client.post("/EntityDefinitions", json=table).status_code == 204
    no_prefix = client.post("/EntityDefinitions", json={**table, "SchemaName": "property"})
    assert no_prefix.status_code == 400
    entity = client.get("/EntityDefinitions(LogicalName='asc_property')").json()
    assert entity["EntitySetName"] == "asc_properties"
    column = {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "AttributeType": "String",
              "SchemaName": "asc_ascora_id", "MaxLength": 100, "DisplayName": label}
    assert client.post("/EntityDefinitions(LogicalName='asc_property')/Attributes", json=column).status_code == 204
    lookup = {"@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata", "SchemaName": "asc_account_property",
              "ReferencedEntity": "account", "ReferencingEntity": "asc_property",
              "Lookup": {"@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata", "SchemaName": "asc_AccountId",
                         "DisplayName": label}}
    assert client.post("/RelationshipDefinitions", json=lookup).status_code == 204
    navs = {r["ReferencingEntityNavigationPropertyName"] for r in
            client.get("/EntityDefinitions(LogicalName='asc_property')/ManyToOneRelationships").json()["value"]}
    assert "asc_AccountId" in navs
    tasks = {r["ReferencingEntityNavigationPropertyName"] for r in
             client.get("/EntityDefinitions(LogicalName='task')/ManyToOneRelationships").json()["value"]}
    assert "regardingobjectid_asc_property_task" in tasks
    key = {"SchemaName": "asc_ascora_id_key", "DisplayName": label, "KeyAttributes": ["asc_ascora_id"]}
    assert client.post("/EntityDefinitions(LogicalName='asc_property')/Keys", json=key).status_code == 204
    server.app.state.dataverse.entities["asc_property"].keys["asc_ascora_id_key"].activation_seconds = 0.5
    status = client.get("/EntityDefinitions(LogicalName='asc_property')/Keys(LogicalName='asc_ascora_id_key')").json()
    assert status["EntityKeyIndexStatus"] == "Pending"
    early = client.patch("/asc_properties(asc_ascora_id='A-1')", json={"asc_name": "p"})
    assert early.status_code == 400 and "not active" in early.json()["error"]["message"]
    time.sleep(0.6)
    assert client.patch("/asc_properties(asc_ascora_id='A-1')", json={"asc_name": "p"}).status_code == 204
    duplicate = client.post("/asc_properties", json={"asc_name": "q", "asc_ascora_id": "a-1"})
    assert duplicate.status_code == 412 and duplicate.json()["error"]["code"] == "0x80040237"
    not_customizable = client.post("/EntityDefinitions(LogicalName='annotation')/Attributes", json=column)
    assert not_customizable.status_code == 400
    assert "asc_property" in server.app.state.dataverse.snapshot()["unpublished"]
    xml = "<importexportxml><entities><entity>asc_property</entity></entities></importexportxml>"
    assert client.post("/PublishXml", json={"ParameterXml": xml}).status_code == 204
    assert server.app.state.dataverse.snapshot()["unpublished"] == []


@pytest.mark.parametrize("dataverse", [{"rate_limit": 6, "window": 300.0}], indirect=True)
def test_service_protection_answers_429_with_retry_after(dataverse):
    _, client = dataverse
    first = client.get("/accounts")
    assert int(first.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) == 5
    big = _batch(client, [_request("GET", "accounts") for _ in range(10)])  # 11 requests: over the limit
    assert big.status_code == 429 and big.json()["error"]["code"] == "0x80072322"
    for _ in range(5):
        client.get("/accounts")
    throttled = client.get("/accounts")
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert "6 over time window of 300 seconds" in throttled.json()["error"]["message"]


@pytest.mark.parametrize("dataverse", [{"max_upload_bytes": 1000}], indirect=True)
def test_note_files_are_limited_on_their_base64_size(dataverse):
    _, client = dataverse
    account = client.post("/accounts", json={"name": "A"}).headers["OData-EntityId"].rsplit("(", 1)[1][:-1]
    small = base64.b64encode(b"x" * 600).decode()
    note = {"subject": "s", "filename": "a.bin", "documentbody": small, "objectid_account@odata.bind":
            f"/accounts({account})"}
    stored = client.post("/annotations", json=note, headers={"Prefer": "return=representation"}).json()
    assert stored["filesize"] == 600 and stored["isdocument"] is True
    big = client.post("/annotations", json={**note, "documentbody": base64.b64encode(b"x" * 800).decode()})
    assert big.status_code == 400 and big.json()["error"]["code"] == "0x80043e09"


@pytest.mark.parametrize("dataverse", [{"professional": True}], indirect=True)
def test_professional_licence_refuses_a_sixteenth_custom_table(dataverse):
    _, client = dataverse
    label = {"LocalizedLabels": [{"Label": "T", "LanguageCode": 1033}]}
    for n in range(16):
        response = client.post("/EntityDefinitions", json={
            "SchemaName": f"asc_t{n}", "DisplayName": label,
            "Attributes": [{"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "AttributeType": "String",
                            "SchemaName": "asc_name", "IsPrimaryName": True, "DisplayName": label}]})
        assert response.status_code == (204 if n < 15 else 403), (n, response.text)
