"""The fault kinds of ``sandbox.emulator.instrument`` that decide *whether a write happened*.

A toy app that stores what it is sent stands in for any emulator: the point is what the app saw
(and therefore wrote) behind each fault, which a client cannot tell from outside.
"""

from __future__ import annotations

import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from airflow_ascora_provider.sandbox.emulator import (
    FAULT_KINDS,
    FORCED_SPACING,
    FaultPlan,
    Latency,
    ServedApp,
    instrument,
)


def _store_app():
    stored: list[dict] = []

    async def items(request: Request):
        body = await request.json()
        batch = body if isinstance(body, list) else body.get("records", [body])
        stored.extend(batch)
        return JSONResponse({"stored": len(batch)}, status_code=201)

    app = Starlette(routes=[Route("/items", items, methods=["POST"])])
    app.state.stored = stored
    return instrument(app)


@pytest.fixture
def server():
    with ServedApp(_store_app()) as served:
        yield served


def _items(n: int) -> list[dict]:
    return [{"n": i} for i in range(n)]


def test_lost_reply_writes_but_the_client_never_hears(server):
    server.control.set_faults(FaultPlan(rate_lost_reply=1.0))
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{server.url}/items", json=_items(3))
    assert server.app.state.stored == _items(3)
    assert server.control.counters["lost_reply"] == 1
    assert server.control.requests[-1].status == -1
    assert server.control.requests[-1].json() == _items(3)


@pytest.mark.parametrize("envelope", [lambda items: items, lambda items: {"records": items}], ids=["list", "records"])
def test_partial_writes_a_leading_part_of_the_batch_and_answers_500(server, envelope):
    server.control.set_faults(FaultPlan(rate_partial=1.0, seed=5))
    response = httpx.post(f"{server.url}/items", json=envelope(_items(10)))
    assert response.status_code == 500
    written = server.app.state.stored
    assert 1 <= len(written) < 10 and written == _items(len(written))
    assert server.control.counters["partial"] == 1
    assert server.control.requests[-1].status == 500


def test_partial_leaves_requests_without_a_batch_alone(server):
    server.control.set_faults(FaultPlan(rate_partial=1.0))
    # One record, and a record whose own list (pick-list options) is not a batch.
    assert httpx.post(f"{server.url}/items", json=_items(1)).status_code == 201
    record = {"name": "status", "options": _items(4)}
    assert httpx.post(f"{server.url}/items", json=record).status_code == 201
    assert server.app.state.stored == [*_items(1), record]
    assert server.control.counters["partial"] == 0


def test_a_partial_drawn_on_a_request_without_a_batch_cuts_the_next_batch(server):
    # Seed 3 draws partial for the first request only (0.24, then 0.54 and 0.92: above the rate).
    server.control.set_faults(FaultPlan(rate_partial=0.5, seed=3))
    assert httpx.post(f"{server.url}/items", json=_items(1)).status_code == 201
    assert server.control.counters["partial"] == 0
    assert httpx.post(f"{server.url}/items", json=_items(6)).status_code == 500
    assert server.control.counters["partial"] == 1
    assert httpx.post(f"{server.url}/items", json=_items(6)).status_code == 201


def test_cover_every_kind_after_injects_each_kind_a_short_run_never_drew(server):
    plan = FaultPlan(rate_5xx=1e-9, rate_slow=1e-9, rate_partial=1e-9, slow_seconds=0.0,
                     cover_every_kind_after=5, seed=1)
    server.control.set_faults(plan)
    statuses = [httpx.post(f"{server.url}/items", json=_items(3)).status_code for _ in range(40)]
    assert statuses[:5] == [201] * 5  # nothing owed before the threshold
    # One owed kind every FORCED_SPACING requests (never the successive attempts of one call): the
    # 5xx, then the timeout (handled in the end: 201), then a cut batch; then the plan's own rates.
    assert [(i, s) for i, s in enumerate(statuses) if s != 201] == [(5, 503), (5 + 2 * FORCED_SPACING, 500)]
    counters = server.control.counters
    assert (counters["5xx"], counters["slow"], counters["partial"]) == (1, 1, 1)
    assert counters["429"] == counters["drop"] == counters["lost_reply"] == 0  # kinds the plan has no rate for


def test_service_time_is_taken_per_call_and_per_kib_but_not_by_the_gateway(server):
    server.control.latency = Latency(per_call=0.2, per_kb=0.01)

    def timed(body) -> tuple[float, int]:
        started = time.monotonic()
        status = httpx.post(f"{server.url}/items", json=body).status_code
        return time.monotonic() - started, status

    small, status = timed(_items(1))
    assert status == 201 and 0.2 <= small < 0.4
    big, _ = timed([{"n": i, "text": "x" * 1000} for i in range(50)])  # about 50 KiB: 0.5 s more
    assert 0.65 <= big < 1.1, big
    server.control.set_faults(FaultPlan(rate_5xx=1.0))
    refused, status = timed(_items(1))
    assert status == 503 and refused < 0.1  # answered before the service
    assert httpx.post(f"{server.url}/__sandbox__/latency", json={"per_call": 0}).json() == {"per_call": 0,
                                                                                            "per_kb": 0.0}


def test_slow_past_the_client_timeout_still_writes(server):
    server.control.set_faults(FaultPlan(rate_slow=1.0, slow_seconds=0.6))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/items", json=_items(2), timeout=0.2)
    deadline = time.monotonic() + 5
    while not server.app.state.stored and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.state.stored == _items(2)


def test_drop_answers_before_the_app_sees_anything(server):
    server.control.set_faults(FaultPlan(rate_drop=1.0))
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{server.url}/items", json=_items(2))
    assert server.app.state.stored == []


def test_new_kinds_are_steered_over_http_and_replay_from_a_seed(server):
    plan = {"rate_lost_reply": 0.2, "rate_partial": 0.2, "rate_5xx": 0.2, "seed": 11}
    assert httpx.post(f"{server.url}/__sandbox__/faults", json=plan).json()["rate_lost_reply"] == 0.2

    def run() -> list[int]:
        statuses = []
        for _ in range(40):
            try:
                statuses.append(httpx.post(f"{server.url}/items", json=_items(3)).status_code)
            except httpx.TransportError:
                statuses.append(-1)
        return statuses

    first = run()
    counters = httpx.get(f"{server.url}/__sandbox__/counters").json()
    assert set(counters) == set(FAULT_KINDS)
    assert counters["lost_reply"] > 0 and counters["partial"] > 0 and counters["5xx"] > 0
    httpx.post(f"{server.url}/__sandbox__/faults", json=plan)  # same seed: the same faults again
    assert run() == first


def test_partial_cuts_a_dataverse_batch_after_its_leading_change_sets():
    """Dataverse's ``$batch`` is multipart, not JSON: its emulator keeps a leading part of the change
    sets (those records are written) and the client hears 500, as for a JSON batch; and the
    rate-limit switch reaches Dataverse's own service protection, which weighs a batch by its requests."""
    from airflow_ascora_provider.hooks.dataverse import BatchOperation, DataverseApiError, DataverseHook
    from airflow_ascora_provider.hooks.http_client import RetryPolicy
    from airflow_ascora_provider.sandbox.dataverse import (
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        DEFAULT_TENANT,
    )
    from tests.integration.dataverse_support import serve

    server = serve()
    hook = DataverseHook(base_url=server.url, tenant_id=DEFAULT_TENANT, client_id=DEFAULT_CLIENT_ID,
                         client_secret=DEFAULT_CLIENT_SECRET, authority_host=server.url,
                         ca_bundle=str(server.ca_file), requests_per_window=0,
                         retry=RetryPolicy(max_attempts=1))
    accounts = [BatchOperation("POST", "accounts", {"name": f"a{i}"}) for i in range(6)]
    try:
        server.control.set_faults(FaultPlan(rate_partial=1.0, seed=5, paths=["/api/data/v9.2/$batch"]))
        with pytest.raises(DataverseApiError, match="HTTP 500"):
            hook.execute_batch(accounts)
        written = [r["name"] for r in server.app.state.dataverse.snapshot()["records"]["account"]]
        assert 1 <= len(written) < 6 and written == [f"a{i}" for i in range(len(written))]
        assert server.control.counters["partial"] == 1

        server.control.set_faults(FaultPlan())
        httpx.post(f"{server.url}/__sandbox__/rate-limit", json={"limit": 10, "window": 60},
                   verify=str(server.ca_file)).raise_for_status()
        with pytest.raises(DataverseApiError, match="HTTP 429"):
            hook.execute_batch(accounts + accounts)  # 13 requests against a limit of 10
        assert server.control.counters["429"] == 1
    finally:
        hook.close()
        server.stop()
