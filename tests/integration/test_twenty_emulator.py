"""The Twenty emulator over real HTTP: the rules a migration must survive before it meets the real API.

Each test gets a fresh emulator served by uvicorn on a free port; requests go through plain httpx so
what is tested is exactly what a client on the wire sees.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.sandbox.twenty import DEFAULT_API_KEY, create_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served():
    with ServedApp(create_app()) as server:
        yield server


@pytest.fixture
def api(served):
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=10) as c:
        yield c


def _messages(response: httpx.Response) -> str:
    body = response.json()
    assert body["statusCode"] == response.status_code
    assert isinstance(body["messages"], list)
    return " | ".join(body["messages"])


def _person(email: str, **extra) -> dict:
    name = {"firstName": "Pat", "lastName": email.split("@")[0]}
    return {"name": name, "emails": {"primaryEmail": email}, **extra}


def _object_id(api: httpx.Client, name: str) -> str:
    objects = api.get("/rest/metadata/objects").json()["data"]["objects"]
    return next(o["id"] for o in objects if o["nameSingular"] == name)


# ---- auth and envelopes ----------------------------------------------------------------------------


def test_auth_required(served):
    with httpx.Client(base_url=served.url) as raw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_API_KEY}):
            r = raw.get("/rest/people", headers=headers)
            assert r.status_code == 401
            assert r.json() == {"statusCode": 401, "error": "Unauthorized", "messages": ["Token invalid."]}
        r = raw.get("/rest/people", headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
        assert r.status_code == 200


def test_envelopes_match_reference(api):
    r = api.post("/rest/people", json=_person("ann@example.com"))
    assert r.status_code == 201
    person = r.json()["data"]["createPerson"]
    assert uuid.UUID(person["id"])
    assert person["deletedAt"] is None and person["createdAt"] and person["updatedAt"]
    assert person["createdBy"] == {"source": "API", "workspaceMemberId": None, "name": "API key"}
    assert isinstance(person["position"], float)
    assert person["companyId"] is None

    r = api.post("/rest/batch/people", json=[_person("bob@example.com"), _person("cat@example.com")])
    assert r.status_code == 201
    assert [p["emails"]["primaryEmail"] for p in r.json()["data"]["createPeople"]] == [
        "bob@example.com", "cat@example.com"]

    r = api.get(f"/rest/people/{person['id']}")
    assert r.json()["data"]["person"]["id"] == person["id"]

    r = api.get("/rest/people")
    body = r.json()
    assert set(body) == {"data", "pageInfo", "totalCount"}
    assert body["totalCount"] == 3 and len(body["data"]["people"]) == 3
    assert set(body["pageInfo"]) == {"hasNextPage", "startCursor", "endCursor"}

    r = api.patch(f"/rest/people/{person['id']}", json={"jobTitle": "Electrician"})
    assert r.json()["data"]["updatePerson"]["jobTitle"] == "Electrician"
    r = api.delete(f"/rest/people/{person['id']}", params={"soft_delete": "true"})
    assert r.json() == {"data": {"deletePerson": {"id": person["id"]}}}
    r = api.delete(f"/rest/people/{person['id']}")
    assert r.json()["data"]["destroyPerson"]["id"] == person["id"]
    assert api.get(f"/rest/people/{person['id']}").status_code == 404


# ---- batch rules ---------------------------------------------------------------------------------


def test_batch_cap_and_body_shape(api):
    too_many = [{"name": f"Co {i}"} for i in range(61)]
    r = api.post("/rest/batch/companies", json=too_many)
    assert r.status_code == 400
    assert "61" in _messages(r) and "60" in _messages(r)
    assert api.get("/rest/companies").json()["totalCount"] == 0

    r = api.post("/rest/batch/companies", json=too_many[:60])
    assert r.status_code == 201 and len(r.json()["data"]["createCompanies"]) == 60

    r = api.post("/rest/batch/companies", json=[])
    assert r.status_code == 400 and _messages(r) == "Input must not be empty"
    r = api.post("/rest/batch/companies", json={"name": "Not a list"})
    assert r.status_code == 400 and _messages(r) == "Body must be an array"
    r = api.post("/rest/batch/companies", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_batch_is_all_or_nothing_and_names_items(api):
    batch = [
        {"name": "Good One"},
        {"name": "Bad", "colour": "red"},
        {"name": "Good Two"},
        {"name": "Bad Domain", "domainName": {"primaryLinkUrl": "acme.com"}},
    ]
    r = api.post("/rest/batch/companies", json=batch)
    assert r.status_code == 400
    messages = r.json()["messages"]
    assert [m.split(":")[0] for m in messages] == ["item 1", "item 3"]
    assert "colour" in messages[0] and "company" in messages[0]
    assert "https://" in messages[1]
    assert api.get("/rest/companies").json()["totalCount"] == 0  # nothing written


# ---- write validation ----------------------------------------------------------------------------


def test_unknown_field_is_rejected_with_its_name(api):
    r = api.post("/rest/people", json=_person("x@example.com", favouriteTool="multimeter"))
    assert r.status_code == 400
    text = _messages(r)
    assert "favouriteTool" in text and "person" in text
    # A relation by name instead of its join column gets a pointed hint.
    r = api.post("/rest/people", json=_person("y@example.com", company=str(uuid.uuid4())))
    assert r.status_code == 400 and "companyId" in _messages(r)
    # Read-only system fields.
    r = api.post("/rest/people", json=_person("z@example.com", createdBy={"source": "IMPORT"}))
    assert r.status_code == 400 and "read-only" in _messages(r)


def test_relation_must_point_at_live_record(api):
    r = api.post("/rest/people", json=_person("orphan@example.com", companyId=str(uuid.uuid4())))
    assert r.status_code == 400
    assert "companyId" in _messages(r) and "does not exist" in _messages(r)

    company = api.post("/rest/companies", json={"name": "Acme"}).json()["data"]["createCompany"]
    r = api.post("/rest/people", json=_person("kid@example.com", companyId=company["id"]))
    assert r.status_code == 201 and r.json()["data"]["createPerson"]["companyId"] == company["id"]

    api.delete(f"/rest/companies/{company['id']}", params={"soft_delete": "true"})
    r = api.post("/rest/people", json=_person("late@example.com", companyId=company["id"]))
    assert r.status_code == 400 and "soft-deleted" in _messages(r)

    # Destroying the parent sets the child's join column to null.
    api.delete(f"/rest/companies/{company['id']}")
    kid = next(iter(api.get("/rest/people").json()["data"]["people"]))
    assert kid["companyId"] is None


def test_value_shapes_are_checked(api):
    r = api.post("/rest/opportunities", json={"name": "Rewire", "stage": "WON"})
    assert r.status_code == 400
    assert "WON" in _messages(r) and "stage" in _messages(r) and "PROPOSAL" in _messages(r)

    cases = [
        ({"name": "A", "amount": {"amountMicros": 12.5, "currencyCode": "AUD"}}, "amountMicros"),
        ({"name": "A", "amount": {"amount": 12, "currencyCode": "AUD"}}, "amount"),
        ({"name": "A", "closeDate": "2024-05-01T09:00:00"}, "timezone"),
        ({"name": "A", "closeDate": "next tuesday"}, "closeDate"),
        ({"name": 42}, "name"),
    ]
    for body, expected in cases:
        r = api.post("/rest/opportunities", json=body)
        assert r.status_code == 400, body
        assert expected in _messages(r), (body, _messages(r))

    r = api.post("/rest/companies", json={"name": "Acme", "employees": "12"})
    assert r.status_code == 400 and "number" in _messages(r)
    r = api.post("/rest/people", json={"name": {"first": "Ann"}})
    assert r.status_code == 400 and "first" in _messages(r) and "firstName" in _messages(r)
    r = api.post("/rest/people", json={"emails": {"primaryEmail": "not-an-email"}})
    assert r.status_code == 400
    phones = {"primaryPhoneNumber": "412345678", "primaryPhoneCountryCode": "Australia"}
    r = api.post("/rest/people", json={"phones": phones})
    assert r.status_code == 400 and "AU" in _messages(r)

    ok = {
        "name": "Switchboard upgrade",
        "amount": {"amountMicros": 1_250_000_000, "currencyCode": "AUD"},
        "closeDate": "2024-05-01T09:00:00+10:00",
        "stage": "PROPOSAL",
    }
    r = api.post("/rest/opportunities", json=ok)
    assert r.status_code == 201
    created = r.json()["data"]["createOpportunity"]
    assert created["closeDate"] == "2024-04-30T23:00:00.000Z"
    assert created["amount"] == {"amountMicros": 1_250_000_000, "currencyCode": "AUD"}
    # Partial composite update only touches the named subfield.
    r = api.patch(f"/rest/opportunities/{created['id']}", json={"amount": {"amountMicros": 5}})
    assert r.json()["data"]["updateOpportunity"]["amount"] == {"amountMicros": 5, "currencyCode": "AUD"}


# ---- uniqueness, soft delete, restore, upsert ----------------------------------------------------


def test_soft_deleted_record_still_holds_unique_value(api):
    person = api.post("/rest/people", json=_person("dup@example.com")).json()["data"]["createPerson"]
    r = api.post("/rest/people", json=_person("DUP@example.com"))
    assert r.status_code == 400 and "Record already exists" in _messages(r)

    api.delete(f"/rest/people/{person['id']}", params={"soft_delete": "true"})
    assert api.get("/rest/people").json()["totalCount"] == 0
    assert api.get(f"/rest/people/{person['id']}").status_code == 404

    r = api.post("/rest/people", json=_person("dup@example.com"))
    assert r.status_code == 400
    text = _messages(r)
    assert "Record already exists" in text and "emails.primaryEmail" in text and "soft-deleted" in text

    r = api.post("/rest/people", json=_person("dup@example.com"), params={"upsert": "true"})
    assert r.status_code == 400 and "soft-deleted" in _messages(r)

    # The soft-deleted row is visible when the filter names deletedAt.
    flt = 'deletedAt[is]:NOT_NULL,emails.primaryEmail[eq]:"dup@example.com"'
    r = api.get("/rest/people", params={"filter": flt})
    assert [p["id"] for p in r.json()["data"]["people"]] == [person["id"]]

    # Destroying frees the value.
    api.delete(f"/rest/people/{person['id']}")
    r = api.post("/rest/people", json=_person("dup@example.com"))
    assert r.status_code == 201


def test_restore(api):
    person = api.post("/rest/people", json=_person("back@example.com")).json()["data"]["createPerson"]
    r = api.patch(f"/rest/restore/people/{person['id']}")
    assert r.status_code == 400  # not deleted: stricter than a silent no-op
    api.delete(f"/rest/people/{person['id']}", params={"soft_delete": "true"})
    assert api.patch(f"/rest/people/{person['id']}", json={"city": "Brisbane"}).status_code == 404
    r = api.patch(f"/rest/restore/people/{person['id']}")
    assert r.status_code == 200
    assert r.json()["data"]["restorePerson"]["deletedAt"] is None
    assert api.get(f"/rest/people/{person['id']}").status_code == 200
    assert api.get("/rest/people").json()["totalCount"] == 1


def test_upsert_by_id_and_by_unique_email(api):
    person = api.post("/rest/people", json=_person("up@example.com")).json()["data"]["createPerson"]

    # Without upsert an existing id is a conflict.
    r = api.post("/rest/people", json={"id": person["id"], "city": "Cairns"})
    assert r.status_code == 400 and "Record already exists" in _messages(r)

    r = api.post("/rest/people", json={"id": person["id"], "city": "Cairns"}, params={"upsert": "true"})
    assert r.status_code == 201
    assert r.json()["data"]["createPerson"]["id"] == person["id"]
    assert r.json()["data"]["createPerson"]["city"] == "Cairns"

    r = api.post("/rest/people", json=_person("UP@example.com", jobTitle="Sparky"), params={"upsert": "true"})
    assert r.json()["data"]["createPerson"]["id"] == person["id"]
    assert r.json()["data"]["createPerson"]["jobTitle"] == "Sparky"
    assert r.json()["data"]["createPerson"]["city"] == "Cairns"

    r = api.post("/rest/people", json=_person("new@example.com"), params={"upsert": "true"})
    assert r.json()["data"]["createPerson"]["id"] != person["id"]
    assert api.get("/rest/people").json()["totalCount"] == 2

    # Batch upsert (an emulator choice) mixes updates and inserts.
    r = api.post("/rest/batch/people", params={"upsert": "true"},
                 json=[_person("up@example.com", city="Darwin"), _person("third@example.com")])
    assert r.status_code == 201
    rows = r.json()["data"]["createPeople"]
    assert rows[0]["id"] == person["id"] and rows[0]["city"] == "Darwin"
    assert api.get("/rest/people").json()["totalCount"] == 3

    # Companies are unique on domainName.primaryLinkUrl.
    a = api.post("/rest/companies", json={"name": "A", "domainName": {"primaryLinkUrl": "https://a.com"}})
    b = api.post("/rest/companies", params={"upsert": "true"},
                 json={"name": "A2", "domainName": {"primaryLinkUrl": "https://a.com"}})
    assert b.json()["data"]["createCompany"]["id"] == a.json()["data"]["createCompany"]["id"]


# ---- reads ---------------------------------------------------------------------------------------


def test_paging_with_cursors_over_150_records(api):
    for start in (0, 50, 100):
        r = api.post("/rest/batch/companies", json=[{"name": f"Co {i:03d}", "employees": i}
                                                    for i in range(start, start + 50)])
        assert r.status_code == 201
    seen, pages, cursor = [], 0, None
    while True:
        params = {"limit": 60}
        if cursor:
            params["starting_after"] = cursor
        body = api.get("/rest/companies", params=params).json()
        pages += 1
        assert body["totalCount"] == 150
        seen.extend(c["name"] for c in body["data"]["companies"])
        if not body["pageInfo"]["hasNextPage"]:
            break
        cursor = body["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == [f"Co {i:03d}" for i in range(150)]

    assert len(api.get("/rest/companies").json()["data"]["companies"]) == 60  # default limit
    assert api.get("/rest/companies", params={"limit": 201}).status_code == 400
    assert api.get("/rest/companies", params={"limit": "ten"}).status_code == 400
    assert api.get("/rest/companies", params={"starting_after": "garbage!"}).status_code == 400

    # order_by with cursors
    body = api.get("/rest/companies", params={"order_by": "employees[DescNullsLast]", "limit": 2}).json()
    assert [c["employees"] for c in body["data"]["companies"]] == [149, 148]
    body = api.get("/rest/companies", params={"order_by": "employees[DescNullsLast]", "limit": 2,
                                              "starting_after": body["pageInfo"]["endCursor"]}).json()
    assert [c["employees"] for c in body["data"]["companies"]] == [147, 146]


def test_filters(api):
    company = api.post("/rest/companies", json={"name": "Acme"}).json()["data"]["createCompany"]
    people = api.post("/rest/batch/people", json=[
        _person("a@example.com", city="Brisbane", companyId=company["id"]),
        _person("b@example.com", city="Sydney"),
        _person("c@example.com", city="Brisbane"),
    ]).json()["data"]["createPeople"]

    def names(flt: str) -> list[str]:
        r = api.get("/rest/people", params={"filter": flt})
        assert r.status_code == 200, r.text
        return sorted(p["emails"]["primaryEmail"] for p in r.json()["data"]["people"])

    assert names("city[eq]:Brisbane") == ["a@example.com", "c@example.com"]
    assert names('emails.primaryEmail[eq]:"b@example.com"') == ["b@example.com"]
    assert names("emails.primaryEmail[in]:[a@example.com,c@example.com]") == [
        "a@example.com", "c@example.com"]
    assert names(f"id[in]:[{people[1]['id']}]") == ["b@example.com"]
    assert names("companyId[is]:NULL") == ["b@example.com", "c@example.com"]
    assert names("companyId[is]:NOT_NULL") == ["a@example.com"]
    assert names("city[eq]:Brisbane,companyId[is]:NULL") == ["c@example.com"]
    assert names("or(city[eq]:Sydney,companyId[is]:NOT_NULL)") == ["a@example.com", "b@example.com"]
    assert names("not(city[eq]:Brisbane)") == ["b@example.com"]
    assert names("emails.primaryEmail[ilike]:%B@EXAMPLE%") == ["b@example.com"]

    for bad in ("nope[eq]:1", "city[near]:x", "emails[eq]:a@example.com", "city:Brisbane", "company[eq]:x"):
        r = api.get("/rest/people", params={"filter": bad})
        assert r.status_code == 400, bad
    r = api.get("/rest/opportunities", params={"filter": "stage[eq]:WON"})
    assert r.status_code == 400 and "WON" in _messages(r)


def test_fields_selection(api):
    api.post("/rest/people", json=_person("f@example.com", city="Perth"))
    body = api.get("/rest/people", params={"fields": "emails,city,company"}).json()
    assert set(body["data"]["people"][0]) == {"id", "emails", "city", "companyId"}
    r = api.get("/rest/people", params={"fields": "emails,shoeSize"})
    assert r.status_code == 400 and "'fields' parameter invalid" in _messages(r)


def test_workspace_members_are_seeded_and_read_only(api):
    members = api.get("/rest/workspaceMembers").json()["data"]["workspaceMembers"]
    assert len(members) == 3 and all(m["userEmail"] for m in members)
    r = api.post("/rest/workspaceMembers", json={"userEmail": "new@example.com"})
    assert r.status_code in (400, 403)
    # Owner relations resolve against members.
    r = api.post("/rest/tasks", json={"title": "Call back", "status": "TODO", "assigneeId": members[0]["id"]})
    assert r.status_code == 201


def test_custom_members():
    app = create_app(members=[{"email": "solo@example.com", "firstName": "Solo", "lastName": "Op"}])
    rows = app.state.twenty.records_of("workspaceMember")
    assert [r["userEmail"] for r in rows] == ["solo@example.com"]


# ---- metadata ------------------------------------------------------------------------------------


def test_custom_site_object_fields_and_records(api):
    r = api.post("/rest/metadata/objects", json={"nameSingular": "site", "namePlural": "sites",
                                                  "labelSingular": "Site", "labelPlural": "Sites",
                                                  "icon": "IconMapPin",
                                                  "description": "Ascora service location"})
    assert r.status_code == 201
    site = r.json()["data"]["createOneObject"]
    assert site["isCustom"] is True
    assert {f["name"] for f in site["fields"]} >= {"id", "name", "createdAt", "updatedAt", "deletedAt"}

    dup = api.post("/rest/metadata/objects", json={"nameSingular": "site", "namePlural": "sitez",
                                                    "labelSingular": "Site", "labelPlural": "Sites"})
    assert dup.status_code == 400
    bad_name = {"nameSingular": "Job_Site", "namePlural": "jobSites",
                "labelSingular": "x", "labelPlural": "y"}
    assert api.post("/rest/metadata/objects", json=bad_name).status_code == 400

    # Routes exist at once; fields must exist before use.
    assert api.get("/rest/sites").json()["totalCount"] == 0
    r = api.post("/rest/sites", json={"name": "Main St", "contactName": "Sam"})
    assert r.status_code == 400 and "contactName" in _messages(r) and "site" in _messages(r)

    def field(body: dict) -> httpx.Response:
        return api.post("/rest/metadata/fields", json={"objectMetadataId": site["id"], **body})

    assert field({"type": "TEXT", "name": "contactName", "label": "Contact name"}).status_code == 201
    assert field({"type": "PHONES", "name": "contactPhone", "label": "Contact phone"}).status_code == 201
    assert field({"type": "ADDRESS", "name": "address", "label": "Address"}).status_code == 201
    unique = {"type": "TEXT", "name": "ascoraSiteId", "label": "Ascora site id", "isUnique": True}
    assert field(unique).status_code == 201
    r = field({"type": "TEXT", "name": "contactName", "label": "Again"})
    assert r.status_code == 400 and "not available" in _messages(r)
    assert field({"type": "TEXT", "name": "Contact_Name", "label": "Bad"}).status_code == 400
    assert field({"type": "TEXT", "name": "req", "label": "Required", "isNullable": False}).status_code == 400

    company_id = _object_id(api, "company")
    r = field({"type": "RELATION", "name": "company", "label": "Company",
               "relationCreationPayload": {"type": "MANY_TO_ONE", "targetObjectMetadataId": company_id,
                                           "targetFieldName": "sites", "targetFieldLabel": "Sites",
                                           "targetFieldIcon": "IconMapPin"}})
    assert r.status_code == 201, r.text
    rel = r.json()["data"]["createOneField"]
    assert rel["relation"]["type"] == "MANY_TO_ONE"
    assert rel["relation"]["targetObjectMetadata"]["nameSingular"] == "company"
    assert rel["settings"]["joinColumnName"] == "companyId"

    # Job status pick-list on Opportunity, plus the Opportunity -> Site lookup.
    opp_id = _object_id(api, "opportunity")
    r = api.post("/rest/metadata/fields", json={
        "objectMetadataId": opp_id, "type": "SELECT", "name": "jobStatus", "label": "Job status",
        "options": [{"label": "Quoted", "value": "QUOTED", "color": "blue", "position": 0},
                    {"label": "In Progress", "value": "IN_PROGRESS", "color": "orange", "position": 1}]})
    assert r.status_code == 201
    job_status = r.json()["data"]["createOneField"]
    bad_option = api.post("/rest/metadata/fields", json={
        "objectMetadataId": opp_id, "type": "SELECT", "name": "quoteStatus", "label": "Quote status",
        "options": [{"label": "Sent", "value": "sent", "color": "blue", "position": 0}]})
    assert bad_option.status_code == 400 and "UPPER_CASE" in _messages(bad_option)
    r = api.post("/rest/metadata/fields", json={
        "objectMetadataId": opp_id, "type": "RELATION", "name": "site", "label": "Site",
        "relationCreationPayload": {"type": "MANY_TO_ONE", "targetObjectMetadataId": site["id"],
                                    "targetFieldName": "opportunities", "targetFieldLabel": "Opportunities",
                                    "targetFieldIcon": "IconTargetArrow"}})
    assert r.status_code == 201

    company = api.post("/rest/companies", json={"name": "Acme"}).json()["data"]["createCompany"]
    r = api.post("/rest/sites", json={
        "name": "12 Main St", "contactName": "Sam", "companyId": company["id"], "ascoraSiteId": "S-1",
        "contactPhone": {"primaryPhoneNumber": "412345678", "primaryPhoneCountryCode": "AU",
                         "primaryPhoneCallingCode": "+61"},
        "address": {"addressStreet1": "12 Main St", "addressCity": "Brisbane", "addressPostcode": "4000"}})
    assert r.status_code == 201, r.text
    site_row = r.json()["data"]["createSite"]
    assert api.post("/rest/batch/sites", json=[{"name": "Other", "ascoraSiteId": "S-1"}]).status_code == 400

    r = api.post("/rest/opportunities",
                 json={"name": "Rewire", "jobStatus": "IN_PROGRESS", "siteId": site_row["id"]})
    assert r.status_code == 201
    assert api.post("/rest/opportunities", json={"name": "X", "jobStatus": "INVOICED"}).status_code == 400

    # Add an option (the API replaces the full list), then the new value is accepted.
    invoiced = {"label": "Invoiced", "value": "INVOICED", "color": "green", "position": 2}
    options = job_status["options"] + [invoiced]
    r = api.patch(f"/rest/metadata/fields/{job_status['id']}", json={"options": options})
    assert r.status_code == 200
    assert api.post("/rest/opportunities", json={"name": "X", "jobStatus": "INVOICED"}).status_code == 201
    # Removing an option still in use is refused.
    r = api.patch(f"/rest/metadata/fields/{job_status['id']}", json={"options": options[:1]})
    assert r.status_code == 400 and "IN_PROGRESS" in _messages(r)

    # Notes can target the custom object.
    note = api.post("/rest/notes", json={"title": "Site visit", "bodyV2": {"markdown": "Checked RCDs"}})
    note_id = note.json()["data"]["createNote"]["id"]
    r = api.post("/rest/noteTargets", json={"noteId": note_id, "siteId": site_row["id"]})
    assert r.status_code == 201

    objects = api.get("/rest/metadata/objects").json()["data"]["objects"]
    site_meta = next(o for o in objects if o["nameSingular"] == "site")
    site_fields = {f["name"] for f in site_meta["fields"]}
    assert {"contactName", "company", "address", "opportunities", "noteTargets"} <= site_fields
    fields = api.get("/rest/metadata/fields").json()["data"]["fields"]
    assert any(f["name"] == "jobStatus" for f in fields)

    # Deleting: standard objects are protected; the custom object goes with its records and relations.
    assert api.delete(f"/rest/metadata/objects/{company_id}").status_code == 400
    assert api.delete(f"/rest/metadata/objects/{site['id']}").status_code == 200
    assert api.get("/rest/sites").status_code == 400
    r = api.post("/rest/opportunities", json={"name": "Y", "siteId": site_row["id"]})
    assert r.status_code == 400 and "siteId" in _messages(r)


def test_delete_custom_field(api):
    person_id = _object_id(api, "person")
    field = api.post("/rest/metadata/fields", json={"objectMetadataId": person_id, "type": "TEXT",
                                                     "name": "ascoraCustomerId", "label": "Ascora id"})
    field_id = field.json()["data"]["createOneField"]["id"]
    assert api.post("/rest/people", json=_person("d@example.com", ascoraCustomerId="C-1")).status_code == 201
    assert api.delete(f"/rest/metadata/fields/{field_id}").status_code == 200
    assert "ascoraCustomerId" not in api.get("/rest/people").json()["data"]["people"][0]
    standard = next(f for f in api.get("/rest/metadata/fields").json()["data"]["fields"]
                    if f["name"] == "jobTitle")
    assert api.delete(f"/rest/metadata/fields/{standard['id']}").status_code == 400


# ---- rate limit and snapshot ---------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after():
    with ServedApp(create_app(rate_limit=5, window=60.0)) as server, httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    ) as api:
        statuses = [api.get("/rest/people").status_code for _ in range(5)]
        assert statuses == [200] * 5
        r = api.get("/rest/people")
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert server.control.counters["429"] == 1


def test_snapshot_is_a_deep_copy_including_soft_deleted(served, api):
    state = served.app.state.twenty
    before = state.snapshot()
    person = api.post("/rest/people", json=_person("snap@example.com")).json()["data"]["createPerson"]
    api.delete(f"/rest/people/{person['id']}", params={"soft_delete": "true"})
    after = state.snapshot()
    assert len(after["records"]["person"]) == len(before["records"]["person"]) + 1
    assert after["records"]["person"][-1]["deletedAt"] is not None
    assert {o["nameSingular"] for o in after["objects"]} >= {"person", "company", "opportunity", "noteTarget"}
    after["records"]["person"][-1]["city"] = "mutated"
    assert state.records_of("person")[-1]["city"] == ""
    api.delete(f"/rest/people/{person['id']}")
    assert state.snapshot()["records"] == before["records"]
