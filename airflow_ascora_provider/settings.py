"""Defaults that every step agrees on, in one place: where staging and reports live."""

from __future__ import annotations

import os
from pathlib import Path

from airflow_ascora_provider.source.staging import as_path, safe_name


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))


def default_staging_root() -> str:
    """``ASCORA_STAGING_PATH`` (any ObjectStoragePath URI) or a folder beside the Airflow home."""
    return os.environ.get("ASCORA_STAGING_PATH") or str(airflow_home() / "ascora-staging")


def reports_folder(staging_root: str | None, run_id: str):
    """Reports of one migration run: ``<staging root>/reports/<run id>/``."""
    return as_path(staging_root or default_staging_root()) / "reports" / safe_name(run_id)
