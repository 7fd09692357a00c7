"""Airflow 3 Task SDK names, imported in one place."""

from __future__ import annotations

try:  # Airflow 3.x
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.bases.hook import BaseHook
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # pragma: no cover - Airflow 3.0 layouts
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models import BaseOperator  # type: ignore[no-redef]
    from airflow.utils.context import Context  # type: ignore[no-redef]

from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = ["AirflowFailException", "BaseHook", "BaseOperator", "BaseTrigger", "Context", "TriggerEvent"]
