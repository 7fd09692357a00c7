"""The reports page inside Airflow's real API app (SimpleAuthManager), over a real migration's ledger.

* The plugin is discovered through its ``airflow.plugins`` entry point, its FastAPI app is mounted
  under ``/ascora-migrations`` and its external views reach the UI's plugin list.
* Every route refuses a request without a valid Airflow token (401/403), and a user who may not
  read a DAG's runs gets 403 for that run and does not see it in the list.
* The run page shows the proposed and approved map (who, when, hash), compatibility, data quality,
  the sample diff, the reconciliation with its chart, the quarantine with reasons, delta runs and
  rollback status; CSV downloads neutralise formula-like cells; no secret reaches the page.
"""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import quote

import pytest

from tests.ui_scenario import DELTA_RUN_ID, RUN_ID, run_migration

PASSWORDS = {"priya": "priya-pass-1", "vera": "vera-pass-2"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    return run_migration(tmp_path_factory)


@pytest.fixture(scope="module")
def api(migrated, airflow_db, tmp_path_factory):
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                  "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "priya:admin,vera:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        mp.setenv("ASCORA_LEDGER_URL", migrated["ledger_url"])
        purge_cached_app()
        with TestClient(create_app("core")) as client:
            yield client
        purge_cached_app()


def _token(api, user: str) -> dict[str, str]:
    response = api.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _run_path(run_id: str) -> str:
    return f"/ascora-migrations/runs/{quote(run_id, safe='')}"


def test_the_plugin_is_registered_with_its_app_and_views(api):
    response = api.get("/api/v2/plugins", headers=_token(api, "priya"))
    assert response.status_code == 200, response.text
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "ascora_migration_reports")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/ascora-migrations"
    views = {v["name"]: v for v in plugin["external_views"]}
    assert views["Ascora migrations"]["destination"] == "nav"
    assert views["Migration report"]["href"] == "/ascora-migrations/runs/{RUN_ID}"


@pytest.mark.parametrize("path", ["/ascora-migrations/", _run_path(RUN_ID), _run_path(RUN_ID) + "/csv/quarantine.csv",
                                  "/ascora-migrations/reports/1", "/ascora-migrations/api/runs"])
def test_every_route_requires_an_airflow_user(api, path):
    assert api.get(path).status_code == 401
    assert api.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert api.get(path, cookies={"_token": "forged"}).status_code == 403


def test_runs_of_dags_the_user_may_not_read_are_hidden_and_refused(api, migrated, monkeypatch):
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    allowed = manager.is_authorized_dag

    def only_delta_runs(*, method, user, access_entity=None, details=None):
        return details is not None and details.id == "ascora_twenty_delta" and allowed(
            method=method, user=user, access_entity=access_entity, details=details)

    ledger = migrated["ledger"]
    with ledger.engine.begin() as conn:  # the delta run is the one DAG-owned run in this scenario
        from airflow_ascora_provider.ledger import schema

        conn.execute(schema.runs.update().where(schema.runs.c.run_id == DELTA_RUN_ID).values(
            dag_id="ascora_twenty_delta"))
    monkeypatch.setattr(manager, "is_authorized_dag", only_delta_runs)
    headers = _token(api, "vera")
    listed = api.get("/ascora-migrations/api/runs", headers=headers).json()
    assert [r["run_id"] for r in listed] == [DELTA_RUN_ID]
    assert api.get(_run_path(RUN_ID), headers=headers).status_code == 403
    assert api.get(_run_path(RUN_ID) + "/csv/reconciliation.csv", headers=headers).status_code == 403
    assert api.get(_run_path(DELTA_RUN_ID), headers=headers).status_code == 200


def test_run_page_shows_every_report(api, migrated):
    response = api.get(_run_path(RUN_ID), headers=_token(api, "vera"))
    assert response.status_code == 200, response.text
    page = response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    ledger = migrated["ledger"]
    approval = ledger.approved_mapping("twenty")
    assert approval["approved_by"] == "Priya (ops)" and approval["note"].startswith("proposal ")
    # proposed and approved map: who, when, hash
    assert "Approved</span> by <b>Priya (ops)</b>" in page
    assert approval["mapping_hash"][:12] in page
    assert "Approved exactly as proposed." in page and "Proposed mapping YAML" in page
    assert "Proposer (none): " in page and "new custom fields</summary>" in page and "ascoraPricingMethod" in page
    # compatibility, data quality, sample diff, reconciliation with its chart
    for heading in ("Compatibility", "Data quality (audit)", "Sample: field-level diff", "Reconciliation",
                    "Quarantine", "Delta runs", "Rollback"):
        assert f">{heading}</h2>" in page, heading
    assert "<svg" in page and "Source vs loaded vs quarantined per object" in page
    assert "Every record accounted for." in page
    assert migrated["reconciled"]["ok"]
    # the delta run and its rollback
    assert DELTA_RUN_ID in page
    assert _run_path(DELTA_RUN_ID) in page
    delta_page = api.get(_run_path(DELTA_RUN_ID), headers=_token(api, "vera")).text
    assert "Status: <b>rolled back</b>" in delta_page
    # nothing secret reaches the page
    for secret in ("sandbox-key", migrated["ledger_url"], PASSWORDS["vera"], "password"):
        assert secret not in page


def test_stored_reports_are_served_sandboxed(api, migrated):
    ledger = migrated["ledger"]
    report = next(r for r in ledger.list_reports(RUN_ID) if r["kind"] == "reconciliation")
    response = api.get(f"/ascora-migrations/reports/{report['id']}", headers=_token(api, "vera"))
    assert response.status_code == 200
    assert response.headers["content-security-policy"].startswith("sandbox")
    assert "<h1>Reconciliation</h1>" in response.text
    assert api.get("/ascora-migrations/reports/999999", headers=_token(api, "vera")).status_code == 404


def test_csv_downloads_neutralise_formula_cells(api, migrated):
    from airflow_ascora_provider.ledger.repository import QuarantineEntry

    migrated["ledger"].quarantine(RUN_ID, "twenty", [QuarantineEntry(
        source_object="customer", source_id="evil-1", field="name", value='=HYPERLINK("http://x","click")',
        reason="+cmd|' /C calc'!A0", stage="transform")])
    headers = _token(api, "vera")
    response = api.get(_run_path(RUN_ID) + "/csv/quarantine.csv", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    rows = list(csv.reader(io.StringIO(response.text)))
    evil = next(r for r in rows if r[2] == "evil-1")
    assert evil[4].startswith("'=") and evil[5].startswith("'+")
    for name in ("proposal", "compatibility", "data_quality", "sample_diff", "reconciliation", "deltas"):
        response = api.get(_run_path(RUN_ID) + f"/csv/{name}.csv", headers=headers)
        assert response.status_code == 200, name
        assert len(list(csv.reader(io.StringIO(response.text)))) > 1, name
    assert api.get(_run_path(RUN_ID) + "/csv/secrets.csv", headers=headers).status_code == 404
