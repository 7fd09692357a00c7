"""The Airflow plugin that puts the migration reports page into Airflow 3's UI.

Registered through the ``airflow.plugins`` entry point of this package (and, for deployments that
prefer a plugins folder, ``plugins/ascora_reports.py``). The FastAPI app is built when the plugin
class is first imported; it imports no Airflow server module until a request arrives, so loading the
plugin in schedulers and workers costs next to nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from airflow_ascora_provider.ui.app import create_app
from airflow_ascora_provider.ui.links import URL_PREFIX

PLUGIN_NAME = "ascora_migration_reports"


class AscoraReportsPlugin(AirflowPlugin):
    name = PLUGIN_NAME
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Ascora migration reports"}]
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
