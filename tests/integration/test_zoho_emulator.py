"""The Zoho hook against the Zoho emulator over real HTTP: auth, per-record results, caps, paging,
COQL, notes, tasks, files, metadata, edition limits, API credits and Bulk Write."""

from __future__ import annotations

import time
from contextlib import contextmanager

import httpx
import pytest

from airflow_ascora_provider.destinations.spec import QuotaExhausted
from airflow_ascora_provider.hooks.zoho import ZohoApiError, ZohoAuthError, ZohoHook

CLIENT = {"client_id": "1000.SANDBOXCLIENT", "client_secret": "sandbox-secret",
          "refresh_token": "1000.sandbox-refresh-token"}


@contextmanager
def served_zoho(**options):
    from airflow_ascora_provider.sandbox.emulator import ServedApp
    from airflow_ascora_provider.sandbox.zoho import create_app

    with ServedApp(create_app(**options)) as served:
        yield served


def client_kwargs(served, **extra):
    return {"accounts_url": served.url, **CLIENT, **extra}


def _hook(served, **extra) -> ZohoHook:
    return ZohoHook(**client_kwargs(served, **extra))


def _key_field(hook: ZohoHook, module: str = "Accounts") -> None:
    hook.create_fields(module, [{"field_label": "Ascora ID", "api_name": "Ascora_ID", "data_type": "text",
                                 "unique": {"casesensitive": "false"}}])


def test_tokens_auth_header_and_api_domain():
    with served_zoho(token_ttl=1.5) as zoho:
        raw = httpx.post(f"{zoho.url}/oauth/v2/token", data={**CLIENT, "grant_type": "refresh_token"}).json()
        assert raw["api_domain"] == zoho.url and raw["token_type"] == "Bearer"
        bearer = httpx.get(f"{zoho.url}/crm/v8/users", headers={"Authorization": f"Bearer {raw['access_token']}"})
        assert bearer.status_code == 401 and bearer.json()["code"] == "INVALID_TOKEN"
        wrong = httpx.post(f"{zoho.url}/oauth/v2/token", data={**CLIENT, "refresh_token": "nope",
                                                               "grant_type": "refresh_token"})
        assert wrong.status_code == 200 and wrong.json() == {"error": "invalid_code"}
        with pytest.raises(ZohoAuthError, match="invalid_code"):
            ZohoHook(accounts_url=zoho.url, **{**CLIENT, "refresh_token": "nope"}).modules()
        hook = _hook(zoho)
        assert hook.users()
        time.sleep(1.6)  # the token expired: the 401 is answered by minting a new one, once
        assert hook.users()


def test_a_refresh_token_mints_at_most_ten_tokens_per_ten_minutes():
    with served_zoho() as zoho:
        for _ in range(10):
            assert "access_token" in httpx.post(f"{zoho.url}/oauth/v2/token",
                                                data={**CLIENT, "grant_type": "refresh_token"}).json()
        refused = httpx.post(f"{zoho.url}/oauth/v2/token", data={**CLIENT, "grant_type": "refresh_token"})
        assert refused.status_code == 400 and "too many requests" in refused.json()["error_description"]
        hook = ZohoHook(accounts_url=zoho.url, **{**CLIENT, "client_id": CLIENT["client_id"]})
        from airflow_ascora_provider.hooks import zoho as zoho_hook

        zoho_hook._TOKENS.clear()
        with pytest.raises(QuotaExhausted, match="10 access tokens"):
            hook.users()


def test_hooks_of_one_process_share_their_access_token():
    with served_zoho() as zoho:
        for _ in range(15):  # more hooks than Zoho would mint tokens for in ten minutes
            assert _hook(zoho).users()


def test_writes_answer_per_record_and_enforce_caps():
    with served_zoho() as zoho:
        hook = _hook(zoho)
        _key_field(hook)
        results = hook.upsert("Accounts", [
            {"Account_Name": "Acme", "Ascora_ID": "a1"},
            {"Ascora_ID": "a2"},                                    # Account_Name is mandatory
            {"Account_Name": "Typo", "Ascora_ID": "a3", "Acount_Nmber": "1"},   # no such field
            {"Account_Name": "Bad phone", "Ascora_ID": "a4", "Phone": 42},      # wrong type
            {"Account_Name": "Bad parent", "Ascora_ID": "a5", "Parent_Account": {"id": "999"}},
        ], ["Ascora_ID"])
        assert [r["status"] for r in results] == ["success", "error", "error", "error", "error"]
        assert results[1]["code"] == "MANDATORY_NOT_FOUND" and results[1]["details"]["api_name"] == "Account_Name"
        assert results[2]["details"]["api_name"] == "Acount_Nmber"
        assert results[3]["details"]["expected_data_type"] == "string"
        assert results[4]["details"]["api_name"] == "Parent_Account"
        assert zoho.control.calls("POST", "/crm/v8/Accounts/upsert")[-1].status == 207
        # The upsert matches on Ascora_ID: the same id updates the record it wrote.
        again = hook.upsert("Accounts", [{"Account_Name": "Acme Pty Ltd", "Ascora_ID": "A1"}], ["Ascora_ID"])[0]
        assert again["action"] == "update" and again["duplicate_field"] == "Ascora_ID"
        assert again["details"]["id"] == results[0]["details"]["id"]
        duplicate = hook.insert("Accounts", [{"Account_Name": "Copy", "Ascora_ID": "a1"}])[0]
        assert duplicate["code"] == "DUPLICATE_DATA" and duplicate["details"]["id"] == results[0]["details"]["id"]
        assert zoho.control.calls("POST", "/crm/v8/Accounts")[-1].status == 400
        with pytest.raises(ValueError, match="at most 100"):
            hook.insert("Accounts", [{"Account_Name": str(i)} for i in range(101)])
        too_many = hook.client.request("POST", "/crm/v8/Accounts", json={"data": [{"Account_Name": "x"}] * 101},
                                       headers={"Authorization": f"Zoho-oauthtoken {hook.access_token()}"})
        assert too_many.status_code == 400 and too_many.json()["code"] == "LIMIT_EXCEEDED"


def test_reads_need_fields_and_page_with_tokens_past_two_thousand():
    with served_zoho() as zoho:
        hook = _hook(zoho)
        for start in range(0, 2100, 100):
            hook.insert("Accounts", [{"Account_Name": f"A{i:04d}"} for i in range(start, start + 100)])
        headers = {"Authorization": f"Zoho-oauthtoken {hook.access_token()}"}
        missing = hook.client.request("GET", "/crm/v8/Accounts", headers=headers)
        assert missing.status_code == 400 and missing.json()["code"] == "REQUIRED_PARAM_MISSING"
        past = hook.client.request("GET", "/crm/v8/Accounts", params={"fields": "Account_Name", "page": 11,
                                                                      "per_page": 200}, headers=headers)
        assert past.status_code == 400
        names = [r["Account_Name"] for r in hook.get_records("Accounts", ["Account_Name"])]
        assert len(names) == 2100 == len(set(names))
        assert any("page_token=" in r.query for r in zoho.control.calls("GET", "/crm/v8/Accounts"))
        with pytest.raises(ValueError, match="50 fields"):
            list(hook.get_records("Accounts", [f"F{i}" for i in range(51)]))
        empty = hook.client.request("GET", "/crm/v8/Deals", params={"fields": "Deal_Name"}, headers=headers)
        assert empty.status_code == 204


def test_coql_notes_tasks_and_attachments():
    with served_zoho() as zoho:
        hook = _hook(zoho)
        _key_field(hook)
        _key_field(hook, "Deals")
        account = hook.insert("Accounts", [{"Account_Name": "Acme", "Ascora_ID": "c'1"}])[0]["details"]["id"]
        deal = hook.insert("Deals", [{"Deal_Name": "J1", "Stage": "Qualification", "Closing_Date": "2024-05-01",
                                      "Account_Name": {"id": account}}])[0]["details"]["id"]
        rows = hook.coql_in("Accounts", ["id", "Ascora_ID"], "Ascora_ID", ["c'1", "other"])
        assert rows == [{"id": account, "Ascora_ID": "c'1"}]
        with pytest.raises(ZohoApiError, match="SYNTAX_ERROR"):  # STRICTER: a WHERE clause is required
            hook.coql("select id from Accounts")
        task = hook.insert("Tasks", [{"Subject": "1. Site visit", "What_Id": {"id": deal}, "$se_module": "Deals"}])[0]
        assert task["status"] == "success"
        no_module = hook.insert("Tasks", [{"Subject": "x", "What_Id": {"id": deal}}])[0]
        assert no_module["details"]["api_name"] == "$se_module"
        note = hook.insert("Notes", [{"Note_Content": "Site left tidy",
                                      "Parent_Id": {"module": {"api_name": "Deals"}, "id": deal}},
                                     {"Parent_Id": {"module": {"api_name": "Deals"}, "id": deal}}])
        assert note[0]["status"] == "success" and note[1]["code"] == "MANDATORY_NOT_FOUND"
        stored = next(hook.get_records("Notes", ["Note_Content", "Parent_Id"]))
        assert stored["Parent_Id"]["module"]["api_name"] == "Deals" and stored["Parent_Id"]["id"] == deal
        attachment = hook.upload_attachment("Deals", deal, "photo.jpg", b"jpeg bytes", "image/jpeg")
        assert [a["File_Name"] for a in hook.list_attachments("Deals", deal)] == ["photo.jpg"]
        assert hook.download_attachment("Deals", deal, attachment) == b"jpeg bytes"
        # Deleting the deal takes its notes, tasks and files with it, and clears lookups to it.
        assert hook.delete("Deals", [deal])[0]["status"] == "success"
        assert not zoho.app.state.zoho.attachments and not zoho.app.state.zoho.modules["Notes"].records
        gone = hook.delete("Deals", [deal])[0]
        assert gone["code"] == "INVALID_DATA" and gone["details"]["id"] == deal


def test_metadata_and_edition_limits():
    with served_zoho(edition="free") as zoho:
        hook = _hook(zoho)
        assert "Quotes" not in {m["api_name"] for m in hook.modules()}  # inventory from Professional
        with pytest.raises(ZohoApiError, match="custom module"):
            hook.create_module("Service_Sites", "Service Site", "Service Sites")
        for i in range(10):
            hook.create_fields("Deals", [{"field_label": f"Extra {i}", "data_type": "text"}])
        with pytest.raises(ZohoApiError, match="LIMIT_EXCEEDED"):
            hook.create_fields("Deals", [{"field_label": "One too many", "data_type": "text"}])
    with served_zoho(edition="professional") as zoho:
        hook = _hook(zoho)
        hook.create_module("Service_Sites", "Service Site", "Service Sites")
        hook.create_fields("Service_Sites", [{"field_label": "Account Name", "data_type": "lookup",
                                              "lookup": {"module": {"api_name": "Accounts"}}}])
        hook.create_fields("Deals", [{"field_label": "Job Status", "data_type": "picklist", "pick_list_values": [
            {"display_value": "Booked", "actual_value": "Booked"}]}])
        field = next(f for f in hook.fields("Deals") if f["api_name"] == "Job_Status")
        hook.set_picklist_values("Deals", field, ["Completed", "Booked"])
        field = next(f for f in hook.fields("Deals") if f["api_name"] == "Job_Status")
        assert [p["actual_value"] for p in field["pick_list_values"]] == ["Booked", "Completed"]
        refused = hook.insert("Deals", [{"Deal_Name": "x", "Stage": "Qualification", "Closing_Date": "2024-01-01",
                                         "Job_Status": "Invoiced"}])[0]
        assert refused["details"]["supported_values"] == ["Booked", "Completed"]


def test_quoted_items_need_products_and_update_like_zoho_subforms():
    """Rows need a product and a quantity; an update appends rows without an id, replaces a row named by
    its id, removes one sent with ``_delete``, refuses an unknown row id, and ``[]`` clears the rows."""
    with served_zoho(edition="professional") as zoho:
        hook = _hook(zoho)
        product = hook.insert("Products", [{"Product_Name": "GPO"}])[0]["details"]["id"]
        answers = hook.insert("Quotes", [
            {"Subject": "ok", "Quoted_Items": [{"Product_Name": {"id": product}, "Quantity": 2}]},
            {"Subject": "no product", "Quoted_Items": [{"Quantity": 2}]},
            {"Subject": "no quantity", "Quoted_Items": [{"Product_Name": {"id": product}}]},
            {"Subject": "no rows"}])
        assert [a["status"] for a in answers] == ["success", "error", "error", "error"]
        assert [a["details"]["api_name"] for a in answers[1:]] == ["Product_Name", "Quantity", "Quoted_Items"]
        quote = answers[0]["details"]["id"]

        def rows():
            return next(hook.get_records("Quotes", ["Quoted_Items"], ids=[quote]))["Quoted_Items"]

        first = rows()[0]["id"]
        hook.update("Quotes", [{"id": quote, "Quoted_Items": [{"Product_Name": {"id": product}, "Quantity": 5}]}])
        assert [r["Quantity"] for r in rows()] == [2, 5]
        hook.update("Quotes", [{"id": quote, "Quoted_Items": [
            {"id": first, "_delete": None},
            {"id": rows()[1]["id"], "Product_Name": {"id": product}, "Quantity": 7}]}])
        assert [r["Quantity"] for r in rows()] == [7]
        refused = hook.update("Quotes", [{"id": quote, "Quoted_Items": [{"id": first, "_delete": None}]}])[0]
        assert refused["status"] == "error" and refused["details"]["id"] == first
        cleared = hook.update("Quotes", [{"id": quote, "Quoted_Items": []}])[0]
        assert cleared["code"] == "MANDATORY_NOT_FOUND"  # a quote keeps at least one line


def test_credit_budget_stops_before_the_org_runs_out():
    with served_zoho(credits=60, credit_window=2.0) as zoho:
        hook = _hook(zoho, credit_budget=50, credit_window_seconds=2)
        hook.reserve(45, "a big batch")
        with pytest.raises(QuotaExhausted) as stopped:
            hook.insert("Accounts", [{"Account_Name": str(i)} for i in range(60)])  # 6 credits
        assert stopped.value.resume_at is not None
        assert not zoho.control.calls("POST", "/crm/v8/Accounts"), "nothing may be sent once the budget is spent"
        time.sleep(max(0.0, stopped.value.resume_at.timestamp() - time.time()) + 0.1)
        assert hook.insert("Accounts", [{"Account_Name": str(i)} for i in range(60)])
    with served_zoho(credits=4, credit_window=60) as zoho:  # the org's own limit: 429 and the header
        hook = _hook(zoho, retry=None)
        raw = httpx.Client(base_url=zoho.url, headers={"Authorization": f"Zoho-oauthtoken {hook.access_token()}"})
        first = raw.get("/crm/v8/users")
        assert "X-API-CREDITS-REMAINING" not in first.headers
        assert raw.get("/crm/v8/users").headers["X-API-CREDITS-REMAINING"] == "2"
        raw.get("/crm/v8/users")
        raw.get("/crm/v8/users")
        refused = raw.get("/crm/v8/users")
        assert refused.status_code == 429 and refused.json()["code"] == "TOO_MANY_REQUESTS"


def test_bulk_write_job_round_trip():
    with served_zoho(bulk_delay=0.2) as zoho:
        hook = _hook(zoho)
        _key_field(hook)
        existing = hook.insert("Accounts", [{"Account_Name": "Old name", "Ascora_ID": "b1"}])[0]["details"]["id"]
        file_id = hook.upload_bulk_file("Accounts.csv", "Ascora_ID,Account_Name,Phone\nb1,New name,1\nb2,Two,\nb3,,\n")
        job = hook.create_bulk_write("Accounts", file_id, [{"api_name": "Ascora_ID", "index": 0},
                                                          {"api_name": "Account_Name", "index": 1},
                                                          {"api_name": "Phone", "index": 2}], find_by="Ascora_ID")
        assert hook.bulk_write_status(job)["status"] in ("ADDED", "IN PROGRESS")
        deadline = time.monotonic() + 10
        while (status := hook.bulk_write_status(job))["status"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["resource"][0]["file"]["added_count"] == 1
        assert status["resource"][0]["file"]["updated_count"] == 1
        assert status["resource"][0]["file"]["skipped_count"] == 1
        import csv
        import io
        import zipfile

        with zipfile.ZipFile(io.BytesIO(hook.download(status["result"]["download_url"]))) as archive:
            rows = list(csv.DictReader(io.StringIO(archive.read(archive.namelist()[0]).decode())))
        assert [(r["Ascora_ID"], r["STATUS"]) for r in rows] == [("b1", "UPDATED"), ("b2", "ADDED"), ("b3", "SKIPPED")]
        assert rows[0]["RECORD_ID"] == existing and "Account_Name" in rows[2]["ERRORS"]
        wrong_header = httpx.post(f"{zoho.url}/crm/v8/upload", files={"file": ("a.zip", b"x")},
                                  headers={"Authorization": f"Zoho-oauthtoken {hook.access_token()}"})
        assert wrong_header.status_code == 400
