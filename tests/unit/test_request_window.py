"""``RequestWindow``: never more than the budget in any window, and time lost to a fault is won back."""

from __future__ import annotations

import time

from airflow_ascora_provider.hooks.http_client import Pacer, RequestWindow


def _most_in_any_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def _send(acquire, counts: list[int], idle: float) -> list[float]:
    """``counts[0]`` calls, an idle spell of ``idle`` seconds (a back-off), then ``counts[1]`` calls."""
    sent = []
    for i, count in enumerate(counts):
        if i:
            time.sleep(idle)
        for _ in range(count):
            acquire()
            sent.append(time.monotonic())
    return sent


def test_the_budget_holds_in_every_window():
    window = RequestWindow(10, 0.4)
    sent = _send(window.acquire, [25], 0)
    assert _most_in_any_window(sent, 0.4) <= 10
    assert sent[-1] - sent[0] >= 0.8  # 25 calls need two full windows after the first ten


def test_calls_held_back_by_a_back_off_go_out_when_the_window_has_room():
    """Five calls, a 0.5 s back-off, five more, at 10 a second: the window sends the second five at
    once (the last second holds only five); a token bucket spaces them 0.1 s apart after the idle
    spell it could not bank."""
    started = time.monotonic()
    sent = _send(RequestWindow(10, 1.0).acquire, [5, 5], 0.5)
    windowed = time.monotonic() - started
    assert _most_in_any_window(sent, 1.0) <= 10
    started = time.monotonic()
    _send(Pacer(10, per=1.0).acquire, [5, 5], 0.5)
    bucket = time.monotonic() - started
    assert windowed < 0.65 < 1.1 < bucket, (windowed, bucket)


def test_a_call_counts_from_its_answer():
    """Settled when answered, a slow call frees its room one window after the answer, not after the send."""
    window = RequestWindow(1, 0.3)
    window.acquire()
    time.sleep(0.2)  # the answer takes 0.2 s
    window.settle()
    started = time.monotonic()
    window.acquire()
    assert 0.25 <= time.monotonic() - started < 0.45
