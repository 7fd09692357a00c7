"""Audit a staged snapshot: inventory, custom fields, data quality; JSON + HTML report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_ascora_provider.compat import BaseOperator, Context
from airflow_ascora_provider.settings import default_staging_root, reports_folder


class AscoraAuditOperator(BaseOperator):
    """Write ``audit.json`` and ``audit.html`` into the run's reports folder and return a summary.

    The summary (XCom) is small on purpose; the task log shows it too so an operator scrolling the
    log sees what needs attention without opening the report.
    """

    template_fields: Sequence[str] = ("staging_path", "snapshot_id", "report_run_id")
    ui_color = "#fff4e5"

    def __init__(
        self,
        *,
        staging_path: str | None = None,
        snapshot_id: str = "{{ run_id }}",
        report_run_id: str = "{{ run_id }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.staging_path = staging_path
        self.snapshot_id = snapshot_id
        self.report_run_id = report_run_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.source.audit import audit_snapshot, write_audit_report
        from airflow_ascora_provider.source.staging import Snapshot

        staging = self.staging_path or default_staging_root()
        result = audit_snapshot(Snapshot(staging, self.snapshot_id))
        paths = write_audit_report(result, reports_folder(staging, self.report_run_id))
        summary = result["summary"]
        self.log.info("Audit summary: %s", ", ".join(f"{k}={v}" for k, v in summary.items()))
        self.log.info("Audit report: %s", paths["html"])
        return {"summary": summary, "report": paths}
