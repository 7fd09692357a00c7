"""Destination discovery through pluggy entry points."""

from __future__ import annotations

import pytest

from airflow_ascora_provider.destinations import manager
from airflow_ascora_provider.destinations.spec import Capabilities, Destination, hookimpl


def test_builtin_destination_comes_through_the_entry_point_door():
    manager.reset()
    assert manager.get_destination_class("twenty").__name__ == "TwentyDestination"
    pm = manager.get_plugin_manager()
    assert "twenty" in {name for name, _ in pm.list_name_plugin()}


def test_unknown_destination_names_what_is_installed():
    with pytest.raises(manager.UnknownDestination, match="installed: .*twenty"):
        manager.get_destination_class("hubspot")


def test_a_mistyped_hook_fails_at_load():
    class Broken:
        @hookimpl
        def register_destination(self, register):  # typo: the spec is register_destinations
            pass

    with pytest.raises(Exception, match="unknown hook"):
        manager.register_plugin(Broken(), name="broken")
    manager.reset()


def test_third_party_plugin_registers_like_a_builtin():
    class HubSpot(Destination):
        name = "hubspot_test"
        label = "HubSpot"
        capabilities = Capabilities(batch_size=100)

        def describe_schema(self):
            return {}

        apply_schema_change = list_users = write_batch = read_records = delete_records = restore_record = \
            lambda *a, **k: None

    class Plugin:
        @hookimpl
        def register_destinations(self, register):
            register(HubSpot)

    manager.reset()
    manager.register_plugin(Plugin(), name="hubspot-test")
    assert manager.get_destination_class("hubspot_test") is HubSpot
    manager.reset()


def test_dag_files_do_not_import_plugins():
    import subprocess
    import sys

    code = ("import sys; import runpy; runpy.run_path('dags/ascora_to_twenty.py'); "
            "print('airflow_ascora_provider.destinations.twenty.plugin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
