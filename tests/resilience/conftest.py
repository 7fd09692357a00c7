"""Fixtures shared by the resilience tests: the destination table and a fresh tenant per scenario."""

from __future__ import annotations

import pytest

from tests.resilience.destinations import DESTINATIONS


@pytest.fixture(params=sorted(DESTINATIONS), ids=str)
def destination(request):
    """Each destination of the table in turn (only Twenty today)."""
    return DESTINATIONS[request.param]


@pytest.fixture(scope="session")
def soak_tenant(tmp_path_factory):
    """A dirty tenant (bad e-mails, orphans, duplicates), so the quarantine is never empty."""
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    folder = tmp_path_factory.mktemp("tenant-soak")
    generate_tenant(folder, size=400, seed=23, dirty=True)
    return folder
