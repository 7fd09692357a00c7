"""The Airflow plugin that puts the migration reports page into Airflow 3's UI.

Registered through the ``airflow.plugins`` entry point of this package (and, for deployments that
prefer a plugins folder, ``plugins/ascora_reports.py``). Airflow loads every plugin in every process
that runs a task (for listeners and lineage), so importing this module builds nothing: the FastAPI
app is made when the API server first reads ``fastapi_apps`` (see :class:`_AppsOnFirstRead`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from airflow_ascora_provider.ui.links import URL_PREFIX

PLUGIN_NAME = "ascora_migration_reports"


class _AppsOnFirstRead:
    """``fastapi_apps``, the reports app built on the first read and kept.

    The app's module imports FastAPI, the ledger and its Alembic migrations: built with the class, it
    cost every task process about half a second (measured without bytecode caches, as this machine
    runs) for a page only the API server serves.
    """

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_ascora_provider.ui.app import create_app

            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Ascora migration reports"}]
        return self._apps


class AscoraReportsPlugin(AirflowPlugin):
    name = PLUGIN_NAME
    fastapi_apps = _AppsOnFirstRead()
    external_views: ClassVar[list[dict[str, Any]]] = [
        {   # Browse → Ascora migrations: every run, embedded in the UI
            "name": "Ascora migrations",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "ascora-migrations",
        },
        {   # a tab on each DAG run: that run's reports (runs of other DAGs answer 404)
            "name": "Migration report",
            "href": URL_PREFIX + "/runs/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "ascora-migration-report",
        },
    ]
