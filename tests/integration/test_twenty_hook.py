"""TwentyHook against the Twenty emulator over real HTTP: roundtrips, pacing, 429s, batch errors."""

from __future__ import annotations

import json
import time

import pytest

from airflow_ascora_provider.hooks.http_client import ApiError
from airflow_ascora_provider.hooks.twenty import (
    TwentyApiError,
    TwentyBatchError,
    TwentyHook,
    build_filter,
    to_option_value,
)
from airflow_ascora_provider.sandbox.emulator import ServedApp
from airflow_ascora_provider.sandbox.twenty import DEFAULT_API_KEY, create_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served():
    with ServedApp(create_app()) as server:
        yield server


@pytest.fixture
def hook(served):
    # Pacing off for the functional tests: they are about behaviour, not speed limits.
    h = TwentyHook(base_url=served.url, api_key=DEFAULT_API_KEY, requests_per_minute=0)
    yield h
    h.close()


def _person(email: str, **extra) -> dict:
    return {"name": {"firstName": "Pat", "lastName": "Example"}, "emails": {"primaryEmail": email}, **extra}


def test_record_roundtrip(hook):
    company = hook.create_one("companies",
                              {"name": "Acme", "domainName": {"primaryLinkUrl": "https://acme.example"}})
    person = hook.create_one("people", _person("ann@example.com", companyId=company["id"]))
    assert person["companyId"] == company["id"]

    found = list(hook.find_many("people", filter={"emails.primaryEmail": "ann@example.com"}))
    assert [p["id"] for p in found] == [person["id"]]
    assert hook.get("people", person["id"])["emails"]["primaryEmail"] == "ann@example.com"

    updated = hook.update("people", person["id"], {"jobTitle": "Electrician", "city": "Brisbane"})
    assert updated["jobTitle"] == "Electrician"

    hook.delete("people", person["id"], soft=True)
    assert hook.get("people", person["id"]) is None
    assert list(hook.find_many("people")) == []
    deleted = list(hook.find_many("people", filter="deletedAt[is]:NOT_NULL"))
    assert [p["id"] for p in deleted] == [person["id"]]

    restored = hook.restore("people", person["id"])
    assert restored["deletedAt"] is None and restored["jobTitle"] == "Electrician"

    destroyed = hook.delete("people", person["id"])
    assert destroyed["id"] == person["id"]
    assert hook.get("people", person["id"]) is None

    again = hook.create_one("people", _person("ann@example.com"), upsert=True)
    same = hook.create_one("people", _person("ann@example.com", city="Cairns"), upsert=True)
    assert same["id"] == again["id"] and same["city"] == "Cairns"


def test_find_many_follows_cursors(hook):
    rows = [{"name": f"Co {i:03d}"} for i in range(130)]
    for start in range(0, 130, 60):
        created = hook.create_batch("companies", rows[start:start + 60])
        assert len(created) == len(rows[start:start + 60])
    names = [c["name"] for c in hook.find_many("companies", limit=50, fields=["name"])]
    assert names == [r["name"] for r in rows]
    # Three pages of 50/50/30.
    assert len(hook.client.stats.by_path) >= 1 and hook.client.stats.by_path["GET /rest/companies"] == 3

    filtered = list(hook.find_many("companies", filter=build_filter({"name": ["Co 001", "Co 129"]})))
    assert sorted(c["name"] for c in filtered) == ["Co 001", "Co 129"]
    members = hook.workspace_members()
    assert len(members) == 3 and all("userEmail" in m for m in members)


def test_batch_error_names_items_and_writes_nothing(hook):
    batch = [
        _person("ok1@example.com"),
        _person("bad@example.com", shoeSize=44),
        _person("ok2@example.com"),
        _person("not-an-email"),
    ]
    with pytest.raises(TwentyBatchError) as info:
        hook.create_batch("people", batch)
    err = info.value
    assert err.status == 400
    assert err.failed_indexes == [1, 3]
    assert "shoeSize" in err.item_errors[1][0]
    assert "shoeSize" in str(err)
    assert list(hook.find_many("people")) == []

    # The caller's split: resend without the named items.
    good = [r for i, r in enumerate(batch) if i not in err.item_errors]
    assert len(hook.create_batch("people", good)) == 2

    with pytest.raises(ValueError):
        hook.create_batch("people", [_person(f"p{i}@example.com") for i in range(61)])
    assert hook.create_batch("people", []) == []


def test_other_errors_raise_api_error_with_twenty_messages(hook):
    person = hook.create_one("people", _person("err@example.com"))
    with pytest.raises(ApiError) as info:
        hook.update("people", person["id"], {"favouriteTool": "multimeter"})
    assert isinstance(info.value, TwentyApiError)
    assert info.value.status == 400
    assert any("favouriteTool" in m for m in info.value.messages)
    with pytest.raises(TwentyApiError, match="Record already exists"):
        hook.create_one("people", _person("err@example.com"))
    with pytest.raises(TwentyApiError):
        list(hook.find_many("nonsense"))


def test_metadata_site_object_and_pick_list(hook):
    site = hook.create_object("site", "sites", "Site", "Sites", icon="IconMapPin")
    company = hook.get_object("company")
    assert hook.get_object("site")["id"] == site["id"]
    assert hook.get_object("doesNotExist") is None

    hook.create_field(site["id"], name="contactName", type="TEXT", label="Contact name")
    hook.create_relation_field(site["id"], name="company", label="Company",
                               target_object_metadata_id=company["id"], target_field_name="sites",
                               target_field_label="Sites")
    opportunity = hook.get_object("opportunity")
    status = hook.create_field(opportunity["id"], name="jobStatus", type="SELECT", label="Job status",
                               options=["Quoted", "In Progress"])
    assert [o["value"] for o in status["options"]] == ["QUOTED", "IN_PROGRESS"]

    updated = hook.add_select_options(status["id"], ["In Progress", "Completed", "Invoiced"])
    assert [o["value"] for o in updated["options"]] == ["QUOTED", "IN_PROGRESS", "COMPLETED", "INVOICED"]
    assert len({o["position"] for o in updated["options"]}) == 4
    assert hook.add_select_options(status["id"], ["Invoiced"])["options"] == updated["options"]  # idempotent

    acme = hook.create_one("companies", {"name": "Acme"})
    sites = hook.create_batch("sites", [{"name": "1 Main St", "contactName": "Sam", "companyId": acme["id"]}])
    assert sites[0]["companyId"] == acme["id"]
    job = hook.create_one("opportunities", {"name": "Rewire", "jobStatus": "INVOICED"})
    assert job["jobStatus"] == "INVOICED"

    objects = hook.list_objects()
    assert "site" in {o["nameSingular"] for o in objects}
    field_id = next(f["id"] for f in hook.get_object("site")["fields"] if f["name"] == "contactName")
    hook.delete_field(field_id)
    hook.delete_object(site["id"])
    assert hook.get_object("site") is None


def test_pacing_keeps_every_window_under_the_limit(served):
    """300 a minute counted in 1 s windows: 5 calls in any second. The first five go out at once, the
    sixth waits for the first to leave the window."""
    hook = TwentyHook(base_url=served.url, api_key=DEFAULT_API_KEY, requests_per_minute=300, rate_window_seconds=1.0)
    served.control.reset_log()
    started = time.monotonic()
    for _ in range(8):
        hook.workspace_members()
    elapsed = time.monotonic() - started
    hook.close()
    times = [r.at for r in served.control.calls("GET", "/rest/workspaceMembers")]
    assert len(times) == 8
    assert max(sum(1 for t in times if start <= t < start + 1.0) for start in times) <= 5
    assert times[4] - times[0] < 0.5  # no spacing inside the window's budget
    assert elapsed >= 0.95


def test_429_is_retried_honouring_retry_after():
    with ServedApp(create_app(rate_limit=3, window=2.0)) as server:
        hook = TwentyHook(base_url=server.url, api_key=DEFAULT_API_KEY, requests_per_minute=0)
        results = [hook.workspace_members() for _ in range(6)]
        assert all(len(r) == 3 for r in results)
        assert hook.client.stats.throttled > 0
        assert hook.client.stats.retries >= hook.client.stats.throttled
        assert server.control.counters["429"] > 0
        # Every retry waited at least the server's Retry-After (>= 1 s) after the 429.
        log = server.control.requests
        for i, rec in enumerate(log[:-1]):
            if rec.status == 429:
                assert log[i + 1].at - rec.at >= 0.9
        hook.close()


def test_test_connection(served):
    ok, message = TwentyHook(base_url=served.url, api_key=DEFAULT_API_KEY).test_connection()
    assert ok, message
    assert "objects visible" in message

    ok, message = TwentyHook(base_url=served.url, api_key="wrong-key").test_connection()
    assert not ok
    assert "401" in message and "Token invalid." in message

    # Nothing listens on port 9: test_connection uses its own two-attempt probe and answers fast.
    started = time.monotonic()
    ok, message = TwentyHook(base_url="http://127.0.0.1:9", api_key="k").test_connection()
    assert time.monotonic() - started < 5
    assert not ok and "Could not reach" in message


def test_airflow_connection_and_extras(served, monkeypatch):
    conn = {
        "conn_type": "twenty",
        "host": served.url + "/rest/",
        "password": DEFAULT_API_KEY,
        "extra": {"requests_per_minute": "0", "batch_size": "2", "timeout": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_TWENTY_TEST", json.dumps(conn))
    hook = TwentyHook(twenty_conn_id="twenty_test")
    ok, message = hook.test_connection()
    assert ok, message
    assert hook.client.base_url.rstrip("/") == served.url
    assert hook.max_batch_size == 2
    with pytest.raises(ValueError):
        hook.create_batch("companies", [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    hook.close()


def test_ui_behaviour_and_helpers():
    behaviour = TwentyHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert TwentyHook.conn_type == "twenty" and TwentyHook.default_conn_name == "twenty_default"
    assert to_option_value("In Progress") == "IN_PROGRESS"
    assert to_option_value(" on-hold / waiting ") == "ON_HOLD_WAITING"
    assert build_filter({"a.b": "x,y", "n": 3, "c": None}) == 'a.b[eq]:"x,y",n[eq]:3,c[is]:NULL'
