"""The Freshsales hourly budget as the hook models it from the answers' rate-limit headers."""

from __future__ import annotations

from airflow_ascora_provider.hooks.freshsales import HourlyQuota


def _headers(remaining: int, reset: int, limit: int = 60) -> dict[str, str]:
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(reset)}


def test_answers_arriving_out_of_order_never_raise_the_count_within_a_window():
    """Four calls sent at once are answered with 10, 9, 8 and 7 calls left, and read in another order:
    the budget must not end up believing in calls already spent (the next batch would bounce off
    the limit with 429s, as CI saw)."""
    now = [1_800_000_000.0]
    quota = HourlyQuota(60, clock=lambda: now[0])
    reset = int(now[0]) + 3600
    for remaining in (8, 7, 10, 9):
        quota.observe(_headers(remaining, reset))
    assert quota.remaining == 7


def test_a_later_reset_is_a_new_window_whose_count_is_taken_as_it_is():
    now = [1_800_000_000.0]
    quota = HourlyQuota(60, clock=lambda: now[0])
    quota.observe(_headers(3, int(now[0]) + 10))
    now[0] += 11
    quota.observe(_headers(59, int(now[0]) + 3600))
    assert quota.remaining == 59
    quota.ensure(50, "a batch")  # fits: no QuotaExhausted


def test_reset_given_as_seconds_from_now_is_the_same_window():
    now = [1_800_000_000.0]
    quota = HourlyQuota(60, clock=lambda: now[0])
    quota.observe(_headers(20, 120))
    now[0] += 0.4
    quota.observe(_headers(25, 119))  # older news from the same window
    assert quota.remaining == 20


def test_the_first_answer_of_a_window_replaces_the_local_guess():
    """The plan says 2,000 an hour, the account's answers say 1,000,000: after calls counted locally the
    first answer's count is taken as it is, not the lower local guess (the soak ran out at 2,000)."""
    now = [1_800_000_000.0]
    quota = HourlyQuota(2000, clock=lambda: now[0])
    for _ in range(1990):
        quota.spend()
    quota.observe(_headers(999_000, int(now[0]) + 3600, limit=1_000_000))
    assert quota.remaining == 999_000
    quota.ensure(100, "a batch")
