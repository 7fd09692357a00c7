"""The reports page's FastAPI app, mounted by the Airflow API server under ``/ascora-migrations``.

Plugin sub-apps do not inherit Airflow's route-level auth, so every route here depends on
:func:`authorised_user` (Airflow's own ``get_user``: the UI's session cookie or an
``Authorization: Bearer`` token; 401 without one) and checks, per migration run, that the user may
read the runs of the DAG that produced it (``is_authorized_dag(GET, RUN)``); runs of other DAGs are
left out of the list and answer 403. Nothing here writes: the page reads the ledger and the report
files. It never shows connection details or ledger URLs, a failure to reach the ledger is a plain
503, stored HTML reports are served under a sandboxing Content-Security-Policy, and CSV downloads
neutralise formula-like cells (:func:`airflow_ascora_provider.reports.render.to_csv`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response

from airflow_ascora_provider.ui.chart import reconciliation_svg
from airflow_ascora_provider.ui.data import ROW_LIMIT, TABLES, MigrationReports, read_text, table
from airflow_ascora_provider.ui.links import URL_PREFIX

log = logging.getLogger(__name__)

ENV_LEDGER_CONN = "ASCORA_REPORTS_LEDGER_CONN_ID"  # which ledger connection the page reads
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Stored reports are our own escaped HTML, but they hold tenant data: no script may ever run in them.
REPORT_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'"}


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime) else (v or "—")
    env.globals["status_class"] = lambda s: {"success": "ok", "failed": "fail", "running": "warn",
                                             "rolled_back": "warn"}.get(s, "")
    env.globals["prefix"] = URL_PREFIX
    return env


# -- auth ---------------------------------------------------------------------------------------------

async def authorised_user(request: Request) -> Any:
    """The Airflow user behind the request (cookie or bearer token), or 401/403 from Airflow's own check."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
    from fastapi.security import HTTPAuthorizationCredentials

    credentials: HTTPAuthorizationCredentials | None = await bearer_scheme(request)
    return await get_user(request, None, credentials)


def may_read_run(user: Any, run: dict[str, Any]) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    dag_id = run.get("dag_id")
    return get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id) if dag_id else None, user=user)


User = Annotated[Any, Depends(authorised_user)]


def _user_name(user: Any) -> str:
    get_name = getattr(user, "get_name", None)
    return str(get_name()) if callable(get_name) else "?"


# -- the ledger ------------------------------------------------------------------------------------

@contextmanager
def _reports() -> Iterator[MigrationReports]:
    from airflow_ascora_provider.hooks.ledger import LedgerHook

    try:
        ledger = LedgerHook(ledger_conn_id=os.environ.get(ENV_LEDGER_CONN, LedgerHook.default_conn_name)).get_ledger()
    except Exception:
        log.exception("the migration ledger is not reachable")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the migration ledger is not reachable") from None
    yield MigrationReports(ledger)


def _readable_run(reports: MigrationReports, user: Any, run_id: str) -> dict[str, Any]:
    run = reports.get(run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such migration run")
    if not may_read_run(user, run):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return run


def _safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "report"


# -- the app ------------------------------------------------------------------------------------------

def create_app() -> FastAPI:
    templates = _templates()
    app = FastAPI(title="Ascora migration reports", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorised_user)])

    def page(name: str, user: Any, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(user_name=_user_name(user), **context)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @app.get("/", response_class=HTMLResponse)
    async def runs_page(user: User) -> HTMLResponse:
        with _reports() as reports:
            everything = reports.runs()
        visible = [r for r in everything if may_read_run(user, r)]
        return page("runs.html", user, runs=visible, hidden=len(everything) - len(visible))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(run_id: str, user: User) -> HTMLResponse:
        with _reports() as reports:
            _readable_run(reports, user, run_id)
            detail = reports.detail(run_id)
        return page("run.html", user, **_page_context(detail))

    @app.get("/runs/{run_id}/csv/{name}.csv")
    async def run_csv(run_id: str, name: str, user: User) -> Response:
        from airflow_ascora_provider.reports.render import to_csv

        if name not in TABLES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no table {name!r}; known: {', '.join(TABLES)}")
        with _reports() as reports:
            _readable_run(reports, user, run_id)
            columns, rows = table(reports.detail(run_id), name)
        filename = f"{_safe_filename(run_id)}-{name}.csv"
        return Response(to_csv(columns, rows), media_type="text/csv; charset=utf-8",
                        headers={**PAGE_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/reports/{report_id}", response_class=HTMLResponse)
    async def stored_report(report_id: int, user: User) -> HTMLResponse:
        with _reports() as reports:
            report = reports.report(report_id)
            if report is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report")
            from airflow_ascora_provider.ui.data import parent_run_id

            run = reports.get(report["run_id"]) or reports.get(parent_run_id(report["run_id"]))
            if run is None or not may_read_run(user, run):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
        text = read_text(report["uri"])
        if text is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the report file is no longer in staging")
        return HTMLResponse(text, headers=REPORT_HEADERS)

    @app.get("/api/runs")
    async def runs_json(user: User) -> JSONResponse:
        with _reports() as reports:
            runs = [r for r in reports.runs() if may_read_run(user, r)]
        return JSONResponse(json.loads(json.dumps(runs, default=str)), headers={"Cache-Control": "no-store"})

    return app


SHOWN = 50  # rows of a long table shown on the page; the CSV has them all


def _page_context(detail: dict[str, Any]) -> dict[str, Any]:
    """What the run page shows: headline figures and the rows that need a person's eyes."""
    proposal = detail.get("proposal") or {}
    decisions = proposal.get("decisions", [])
    matches = sorted((d for d in decisions if d["action"] == "match"), key=lambda d: d["confidence"] or 0)
    creates = [d for d in decisions if d["action"] == "create"]
    value_maps = [v for v in proposal.get("values", []) if not v.get("new_option")]
    _, compat_rows = table(detail, "compatibility")
    verdicts = Counter(r[6] for r in compat_rows)
    _, sample_rows = table(detail, "sample_diff")
    differing = [r for r in sample_rows if r[7] != "match"]
    _, quality = table(detail, "data_quality")
    quality_rows = [r for r in quality if r[0] not in ("records", "null rate")]
    _, quarantine_rows = table(detail, "quarantine")
    reconciliation = detail.get("reconciliation")
    return {
        **detail,
        "matches": matches,
        "creates": creates[:ROW_LIMIT],
        "creates_total": len(creates),
        "value_maps": value_maps[:ROW_LIMIT],
        "compatibility_rows": [r for r in compat_rows if r[6] in ("clash", "lossy")][:ROW_LIMIT],
        "compatibility_verdicts": dict(verdicts),
        "quality_rows": quality_rows[:SHOWN],
        "quality_total": len(quality_rows),
        "sample_rows": differing[:SHOWN],
        "sample_differing": len(differing),
        "sample_compared": len(sample_rows),
        "reconciliation_table": table(detail, "reconciliation"),
        "chart": reconciliation_svg((reconciliation or {}).get("objects") or {}),
        "quarantine_rows": quarantine_rows[:SHOWN],
        "quarantine_total": len(quarantine_rows),
        "quarantine_reasons": Counter(r[5] for r in quarantine_rows).most_common(8),
        "tables": TABLES,
        "shown": SHOWN,
    }
