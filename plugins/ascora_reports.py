"""Exposes the Ascora migration reports page to an Airflow ``plugins/`` folder.

Installing ``airflow-provider-ascora`` already registers the plugin through the ``airflow.plugins``
entry point; this file is for deployments that load plugins from a folder instead. When the entry
point is present the class is not imported here, so Airflow does not see the plugin twice.
"""

from __future__ import annotations

from importlib.metadata import entry_points

if not any(ep.value.startswith("airflow_ascora_provider.ui.plugin")
           for ep in entry_points(group="airflow.plugins")):
    from airflow_ascora_provider.ui.plugin import AscoraReportsPlugin  # noqa: F401
