"""Extract Ascora (REST API or a folder of Excel/CSV exports) into a staged snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_ascora_provider.compat import BaseOperator, Context
from airflow_ascora_provider.settings import default_staging_root


def make_reader(source: str, ascora_conn_id: str = "ascora_default"):
    """``api`` reads through the Ascora connection; anything else is a folder of exports."""
    if source == "api":
        from airflow_ascora_provider.hooks.ascora import AscoraHook
        from airflow_ascora_provider.source.api_reader import AscoraApiReader

        return AscoraApiReader(AscoraHook(ascora_conn_id=ascora_conn_id)), "api"
    from airflow_ascora_provider.source.export_reader import ExportReader

    return ExportReader(source), f"exports:{source}"


class AscoraExtractOperator(BaseOperator):
    """Stage every canonical object as Parquet under ``staging_path/<snapshot_id>/`` with a manifest.

    :param source: ``"api"`` or the path of a folder holding Ascora's Excel/CSV exports.
    :param staging_path: ObjectStoragePath URI of the staging root (local folder, s3://, gs://).
    :param snapshot_id: name of this extraction; defaults to the DAG run id so a retry rewrites the
        same snapshot instead of creating a second one.
    :param objects: restrict to these canonical objects (default: all the source offers).

    Returns (XCom) the snapshot id, the staging path and the per-object counts: small by design.
    """

    template_fields: Sequence[str] = ("source", "staging_path", "snapshot_id")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        source: str = "api",
        staging_path: str | None = None,
        snapshot_id: str = "{{ run_id }}",
        objects: Sequence[str] | None = None,
        ascora_conn_id: str = "ascora_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.staging_path = staging_path
        self.snapshot_id = snapshot_id
        self.objects = objects
        self.ascora_conn_id = ascora_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_ascora_provider.source.extract import extract
        from airflow_ascora_provider.source.staging import Snapshot

        staging = self.staging_path or default_staging_root()
        reader, label = make_reader(self.source, self.ascora_conn_id)
        snapshot = Snapshot(staging, self.snapshot_id)
        manifest = extract(reader, snapshot, objects=self.objects, source_label=label)
        totals = manifest["totals"]
        self.log.info(
            "Extracted %s records from %s into %s (%s quarantined, %s skipped as exact duplicates)",
            totals["read"], label, snapshot.path, totals["quarantined"], totals["skipped"],
        )
        return {
            "snapshot": snapshot.id,
            "staging_path": staging,
            "source": label,
            "totals": totals,
            "objects": {k: v["staged"] for k, v in manifest["objects"].items()},
        }
