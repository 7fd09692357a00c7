"""The provider is visible to Airflow: entry point, schema-valid metadata, hooks and connection forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema

from airflow_ascora_provider.get_provider_info import get_provider_info


def test_entry_point_points_at_get_provider_info():
    eps = {ep.value for ep in entry_points(group="apache_airflow_provider")}
    assert "airflow_ascora_provider.get_provider_info:get_provider_info" in eps


def test_provider_info_validates_against_airflows_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_airflow_lists_the_hooks_and_connection_types(airflow_db):
    out = subprocess.run([sys.executable, "-m", "airflow", "providers", "hooks", "--output", "json"],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    rows = {row["connection_type"]: row["class"] for row in json.loads(out.stdout[out.stdout.index("["):])}
    assert rows["ascora"] == "airflow_ascora_provider.hooks.ascora.AscoraHook"
    assert rows["twenty"] == "airflow_ascora_provider.hooks.twenty.TwentyHook"
    assert rows["ascora_ledger"] == "airflow_ascora_provider.hooks.ledger.LedgerHook"


def test_connection_form_behaviour_hides_and_relabels():
    info = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    ascora = info["ascora"]["ui-field-behaviour"]
    assert "login" in ascora["hidden-fields"]
    assert ascora["relabeling"]["password"].startswith("API key")
