"""Fixtures shared by the resilience tests: the destination table and a fresh tenant per scenario."""

from __future__ import annotations

import pytest

from tests.resilience.destinations import DESTINATIONS


@pytest.fixture(params=sorted(DESTINATIONS), ids=str)
def destination(request):
    """Each destination of the table in turn (Twenty, Dynamics 365); a test the row lists among its
    known failures is marked xfail(strict=True) with the row's reason."""
    spec = DESTINATIONS[request.param]
    reason = spec.known_failures.get(request.node.originalname)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    return spec


@pytest.fixture(scope="session")
def soak_tenant(tmp_path_factory):
    """A dirty tenant (bad e-mails, orphans, duplicates), so the quarantine is never empty."""
    from airflow_ascora_provider.sandbox.generate import generate_tenant

    folder = tmp_path_factory.mktemp("tenant-soak")
    generate_tenant(folder, size=400, seed=23, dirty=True)
    return folder
