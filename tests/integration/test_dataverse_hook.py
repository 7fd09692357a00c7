"""DataverseHook against the emulator over HTTPS: msal tokens, pacing, 429 back-off, $batch, keys."""

from __future__ import annotations

import time

import pytest

from airflow_ascora_provider.hooks.dataverse import (
    BatchOperation,
    DataverseApiError,
    DataverseAuthError,
    DataverseHook,
    column_definition,
)
from airflow_ascora_provider.hooks.http_client import RetryPolicy
from tests.integration.dataverse_support import connection_options, serve


def _hook(server, **overrides) -> DataverseHook:
    options = connection_options(server)
    extra = {"publisher_prefix": options.pop("publisher_prefix")}
    options.update(overrides)
    return DataverseHook(extra=extra, **options)


def _token_calls(server) -> int:
    return len(server.control.calls("POST", "/sandbox-tenant/oauth2/v2.0/token"))


@pytest.fixture
def server(request):
    srv = serve(**getattr(request, "param", {}))
    yield srv
    srv.stop()


def test_msal_token_is_cached_and_acquired_again_after_a_401(server):
    hook = _hook(server)
    for _ in range(5):
        hook.get_json("WhoAmI")
    assert _token_calls(server) == 1  # msal served the other four from its cache
    server.app.state.dataverse.tokens.clear()  # the service forgets the token (revoked, or expired early)
    assert hook.get_json("WhoAmI")["UserId"]
    assert _token_calls(server) == 2
    assert hook.test_connection()[0]
    hook.close()


@pytest.mark.parametrize("server", [{"token_lifetime": 1}], indirect=True)
def test_expired_tokens_are_refreshed(server):
    hook = _hook(server)
    hook.get_json("WhoAmI")
    time.sleep(1.2)
    hook.get_json("WhoAmI")
    assert _token_calls(server) >= 2
    hook.close()


def test_wrong_secret_is_a_clear_auth_error(server):
    hook = _hook(server, client_secret="nope")
    with pytest.raises(DataverseAuthError, match="invalid_client"):
        hook.get_json("WhoAmI")
    ok, message = hook.test_connection()
    assert not ok and "invalid_client" in message
    hook.close()


@pytest.mark.parametrize("server", [{"rate_limit": 20, "window": 1.0}], indirect=True)
def test_a_known_limit_is_kept_by_a_window_that_counts_every_request_of_a_batch(server):
    """At 20 requests a second the hook uses its 90% share, 18: two batches worth 10 and 8 requests go
    out at once, the next request waits for the window to turn, and the service never answers 429."""
    hook = _hook(server, requests_per_window=20, window_seconds=1.0)
    assert hook.batch_size == 17  # a batch of n records counts n + 1 requests: at most the share
    time.sleep(1.1)  # the token request and any earlier call have left the window
    started = time.monotonic()
    hook.execute_batch([BatchOperation("GET", "accounts") for _ in range(9)])  # 10 requests' worth
    hook.execute_batch([BatchOperation("GET", "accounts") for _ in range(7)])  # 8 more: the share is full
    assert time.monotonic() - started < 0.5
    hook.get_json("WhoAmI")
    assert time.monotonic() - started >= 0.95
    assert hook.client.stats.throttled == 0
    hook.close()


@pytest.mark.parametrize("server", [{"rate_limit": 8, "window": 2.0}], indirect=True)
def test_throttling_is_honoured_and_slows_the_pace(server):
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    hook = _hook(server, requests_per_window=0, window_seconds=2.0,
                 retry=RetryPolicy(max_attempts=8, base_delay=0.1, max_retry_after=3.0, sleep=sleep))
    for _ in range(14):
        hook.get_json("WhoAmI")
    stats = hook.client.stats
    assert stats.throttled >= 1 and stats.retries >= 1
    assert any(s >= 1.0 for s in sleeps), sleeps  # Retry-After (seconds) was obeyed
    assert hook.client.pacer.rate is not None  # pacing switched on after the 429
    assert hook.rate_headers["x-ms-ratelimit-burst-remaining-xrm-requests"]
    hook.close()


def test_batch_results_line_up_with_operations(server):
    hook = _hook(server, batch_size=3)
    account = hook.create("accounts", {"name": "Parent"})
    ops = [BatchOperation("POST", "accounts", {"name": f"A{i}"}) for i in range(4)]
    ops.insert(2, BatchOperation("POST", "accounts", {"name": "x" * 500}))
    ops.append(BatchOperation("PATCH", f"accounts({account})", {"telephone1": "1"}, {"If-Match": "*"}))
    ops.append(BatchOperation("DELETE", "accounts(00000000-0000-0000-0000-000000000001)"))
    results = hook.execute_batch(ops)
    assert [r.status for r in results] == [204, 204, 400, 204, 204, 204, 404]
    assert results[2].error_code == "0x80044331"
    assert results[5].entity_id == account
    assert len(server.control.calls("POST", "/api/data/v9.2/$batch")) == 3  # 7 operations in batches of 3
    hook.close()


def test_upsert_through_an_alternate_key(server):
    hook = _hook(server)
    hook.create_table("asc_widget", "Widget", "Widgets", "asc_name")
    hook.create_column("asc_widget", column_definition("String", "asc_ascora_id", "Ascora ID", max_length=100))
    hook.create_key("asc_widget", "asc_ascora_id_key", ["asc_ascora_id"], "Ascora ID")
    hook.wait_for_key("asc_widget", "asc_ascora_id_key", timeout=10)
    set_name = hook.entity_definition("asc_widget", expand=())["EntitySetName"]
    first, created = hook.upsert(set_name, {"asc_ascora_id": "W-1"}, {"asc_name": "one"}, create_only=True)
    assert created
    same, created = hook.upsert(set_name, {"asc_ascora_id": "W-1"}, {"asc_name": "two"})
    assert same == first and not created
    with pytest.raises(DataverseApiError) as exc:
        hook.upsert(set_name, {"asc_ascora_id": "W-1"}, {"asc_name": "three"}, create_only=True)
    assert exc.value.status == 412 and exc.value.code == "0x80040237"
    with pytest.raises(DataverseApiError) as exc:
        hook.upsert(set_name, {"asc_ascora_id": "W-2"}, {"asc_name": "x"}, update_only=True)
    assert exc.value.status == 404
    with pytest.raises(ValueError, match="cannot take in a key URL"):
        hook.upsert(set_name, {"asc_ascora_id": "job:J1042"}, {"asc_name": "x"})
    hook.publish(["asc_widget"])
    assert server.app.state.dataverse.snapshot()["unpublished"] == []
    hook.close()


def test_a_key_whose_index_fails_is_reported(server):
    hook = _hook(server)
    hook.create_table("asc_gadget", "Gadget", "Gadgets", "asc_name")
    hook.create_column("asc_gadget", column_definition("String", "asc_code", "Code", max_length=50))
    for _ in range(2):
        hook.create("asc_gadgets", {"asc_name": "g", "asc_code": "same"})
    hook.create_key("asc_gadget", "asc_code_key", ["asc_code"], "Code")
    with pytest.raises(DataverseApiError, match="failed to build"):
        hook.wait_for_key("asc_gadget", "asc_code_key", timeout=5)
    hook.close()


def test_the_sign_in_endpoint_is_retried_like_any_call(server):
    """msal retries nothing: a 429 or 5xx from the authority (its OpenID configuration or the token
    endpoint) used to fail the task at once. The hook's sign-in session retries them by the
    provider's rule, through the same policy as Dataverse calls."""
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    waits: list[float] = []
    server.control.set_faults(FaultPlan(rate_429=0.5, rate_5xx=0.2, retry_after="0", seed=3,
                                        paths=["/sandbox-tenant/"]))
    hook = _hook(server, retry=RetryPolicy(max_attempts=8, sleep=waits.append))
    assert hook.get_json("WhoAmI")["UserId"]
    stats = hook.token_stats
    assert stats.retries >= 1 and stats.retries == len(waits), (stats, waits)
    assert stats.calls == stats.retries + 2  # one discovery read and one token request got through
    assert hook.client.stats.retries == 0  # Dataverse itself had no fault
    hook.close()


def test_a_sign_in_endpoint_that_keeps_failing_stops_after_the_policys_attempts(server):
    from airflow_ascora_provider.sandbox.emulator import FaultPlan

    server.control.set_faults(FaultPlan(rate_5xx=1.0, paths=["/sandbox-tenant/"]))
    hook = _hook(server, retry=RetryPolicy(max_attempts=3, sleep=lambda s: None))
    with pytest.raises(Exception, match="500|503|502|504|OIDC|authority"):
        hook.get_json("WhoAmI")
    assert hook.token_stats.calls == 3
    hook.close()
