"""``hooks.create_once``: records without an upsert key are sent until each landed once, never twice.

The callables stand in for a plugin's send and look-up; what they model is a server that may have
written some or all of a request it failed to answer.
"""

from __future__ import annotations

import time

import httpx
import pytest

from airflow_ascora_provider.hooks.create_once import (
    IN_FLIGHT_TIMEOUTS,
    LOOKS_PER_TIMEOUT,
    InDoubt,
    create_once,
    timed_out,
)
from airflow_ascora_provider.hooks.http_client import ApiError, RetryPolicy


class Server:
    """Holds what was written; each entry of ``failures`` is how the next send fails:
    ``"lost"`` (all written, answer lost), ``"half"`` (first half written, 500), ``"503"`` (nothing
    written), ``"late"`` (timed out; written after ``late_after`` more look-ups), ``"400"`` (refused)."""

    def __init__(self, *failures: str, late_after: int = 2):
        self.failures = list(failures)
        self.held: dict[str, str] = {}
        self.sends: list[list[str]] = []
        self.late: list[str] = []
        self.late_after = late_after
        self.lookups = 0

    def send(self, keys: list[str]) -> dict[str, str]:
        self.sends.append(list(keys))
        failure = self.failures.pop(0) if self.failures else None
        if failure == "lost":
            self._write(keys)
            raise ApiError("connection dropped before the answer")
        if failure == "half":
            self._write(keys[: len(keys) // 2])
            raise ApiError("batch partly written", status=500)
        if failure == "503":
            raise ApiError("unavailable", status=503)
        if failure == "400":
            raise ApiError("bad field", status=400)
        if failure == "late":
            self.late = list(keys)
            try:
                raise httpx.ReadTimeout("read timed out")
            except httpx.ReadTimeout as exc:
                raise ApiError("timed out") from exc
        return self._write(keys)

    def landed(self, keys: list[str]) -> dict[str, str]:
        self.lookups += 1
        if self.late and self.lookups > self.late_after:
            self._write(self.late)
            self.late = []
        return {k: self.held[k] for k in keys if k in self.held}

    def _write(self, keys: list[str]) -> dict[str, str]:
        for k in keys:
            if k in self.held:
                raise AssertionError(f"{k} written twice")
            self.held[k] = f"id-{k}"
        return {k: self.held[k] for k in keys}


def _create(server: Server, keys: list[str], **kwargs):
    sleeps: list[float] = []
    resent: list[list[str]] = []
    out = create_once(keys, server.send, server.landed, what="test", client_timeout=0.001,
                      retry=RetryPolicy(jitter=0, sleep=sleeps.append), before_resend=resent.append, **kwargs)
    return out, sleeps, resent


def test_a_lost_answer_is_found_and_not_sent_again():
    server = Server("lost")
    out, sleeps, _ = _create(server, ["a", "b"])
    assert out == {"a": "id-a", "b": "id-b"}
    assert len(server.sends) == 1 and sleeps == []


def test_a_half_written_batch_sends_only_the_rest_again():
    server = Server("half")
    out, sleeps, resent = _create(server, ["a", "b", "c", "d"])
    assert out == {k: f"id-{k}" for k in "abcd"}
    assert server.sends == [["a", "b", "c", "d"], ["c", "d"]]
    assert resent == [["c", "d"]] and sleeps == [0.25], "the client's back-off after a 5xx"


def test_a_timeout_is_looked_for_until_it_lands_instead_of_being_sent_twice():
    server = Server("late", late_after=3)
    out, _, _ = _create(server, ["a"])
    assert out == {"a": "id-a"} and len(server.sends) == 1


def test_a_timeout_that_never_lands_is_sent_again_after_the_in_flight_looks():
    server = Server("late", late_after=10**6)  # the stalled request never completes
    out, _, _ = _create(server, ["a"])
    assert out == {"a": "id-a"}
    assert len(server.sends) == 2 and server.lookups == 1 + IN_FLIGHT_TIMEOUTS * LOOKS_PER_TIMEOUT


def test_deferred_a_timeout_is_handed_back_in_doubt_and_settled_later_without_a_second_send():
    server = Server("late", late_after=1)  # lands after the first look: while the caller does other work
    with pytest.raises(InDoubt) as doubt:
        _create(server, ["a", "b"], defer=True)
    assert server.lookups == 1 and len(server.sends) == 1 and server.held == {}
    assert doubt.value.settle() == {"a": "id-a", "b": "id-b"}
    assert len(server.sends) == 1 and server.lookups == 2, "one look found both; nothing sent twice"


def test_deferred_what_never_lands_is_sent_again_once_its_window_has_passed():
    server = Server("late", late_after=10**6)
    resent: list[list[str]] = []
    with pytest.raises(InDoubt) as doubt:
        create_once(["a"], server.send, server.landed, what="test", client_timeout=0.01, retry=RetryPolicy(sleep=lambda s: None),
                    before_resend=resent.append, defer=True)
    started = time.monotonic()
    assert doubt.value.settle() == {"a": "id-a"}
    assert time.monotonic() - started >= IN_FLIGHT_TIMEOUTS * 0.01 * 0.9, "not sent again inside its window"
    assert server.sends == [["a"], ["a"]] and resent == [["a"]]


def test_deferred_a_window_that_passed_while_the_caller_worked_costs_one_look():
    server = Server("late", late_after=10**6)
    with pytest.raises(InDoubt) as doubt:
        create_once(["a"], server.send, server.landed, what="test", client_timeout=0.001, retry=RetryPolicy(sleep=lambda s: None),
                    defer=True)
    time.sleep(IN_FLIGHT_TIMEOUTS * 0.001 * 2)
    looks = server.lookups
    assert doubt.value.settle() == {"a": "id-a"}
    assert server.lookups == looks + 1 and len(server.sends) == 2


def test_deferred_errors_other_than_a_timeout_are_handled_at_once():
    server = Server("half")
    out, _, _ = _create(server, ["a", "b"], defer=True)
    assert out == {"a": "id-a", "b": "id-b"}


def test_the_wait_is_the_clients_own_a_dropped_connection_none_a_429_its_retry_after():
    server = Server("503", "503")
    _, sleeps, _ = _create(server, ["a"])
    assert sleeps == [0.25, 0.5]

    class Throttled(ApiError):
        retry_after = 3.0

    def send(keys):
        if not calls:
            calls.append(keys)
            raise Throttled("slow down", status=429)
        return {k: k for k in keys}

    calls: list = []
    waited: list[float] = []
    create_once(["a"], send, lambda keys: {}, what="test", client_timeout=0.001,
                retry=RetryPolicy(jitter=0, sleep=waited.append))
    assert waited == [3.0]

    def drop(keys):
        if not calls2:
            calls2.append(keys)
            raise ApiError("connection reset")
        return {k: k for k in keys}

    calls2: list = []
    waited.clear()
    create_once(["a"], drop, lambda keys: {}, what="test", client_timeout=0.001,
                retry=RetryPolicy(jitter=0, sleep=waited.append))
    assert waited == [], "a dropped connection is sent again at once, like any request of the client"


def test_a_refusal_is_raised_at_once():
    server = Server("400")
    with pytest.raises(ApiError, match="bad field"):
        _create(server, ["a"])
    assert len(server.sends) == 1 and server.lookups == 0


def test_it_gives_up_after_the_last_attempt_and_says_why():
    server = Server(*["503"] * 3)
    with pytest.raises(ApiError, match="unavailable"):
        _create(server, ["a"], attempts=3)
    assert len(server.sends) == 3 and server.held == {}


def test_the_wait_may_pause_the_load_instead():
    class Pause(Exception):
        pass

    def wait(exc, attempt):
        raise Pause(str(exc))

    with pytest.raises(Pause):
        _create(Server("503"), ["a"], wait=wait)


def test_timed_out_follows_the_cause_chain():
    try:
        try:
            raise httpx.ConnectTimeout("connect")
        except httpx.ConnectTimeout as inner:
            raise ApiError("wrapped") from inner
    except ApiError as exc:
        assert timed_out(exc)
    assert not timed_out(ApiError("plain", status=503))
