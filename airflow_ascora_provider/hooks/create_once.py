"""Creates that have no idempotency key, sent so that each lands exactly once.

A note, a file or a catalogue product is written by a plain POST: the API has no upsert key for it,
so the client's usual retry is unsafe. An answer lost after the server wrote the record, a timeout
the server finished after the client gave up, or a batch half-written before a 5xx would each be
written twice by a blind re-send. Every plugin that creates such records does the same thing
instead, and this module is the one place that thing is written down:

1. send once, with no retries in the client;
2. on a 429, a 5xx or a transport error, look for what landed (the plugin knows how: a key in the
   body, a file's name and size on its parent);
3. after a *timeout*, keep looking for a while (every sixth of a client timeout, for five client
   timeouts) before giving up on it, since the request may still be on its way through a load
   balancer (the fault soak wrote a Freshsales task twice when it was re-sent at once). Looking
   often finds a late write soon after it lands: the client gives up on a stall after a deadline
   learned from the service's answers (``AnswerDeadline``), well before the write lands;
4. send again only what did not land, after the plugin's back-off.

A refusal of the request itself (a 4xx other than 429) is raised at once: sending it again cannot help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import httpx

from airflow_ascora_provider.hooks.http_client import ApiError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

#: Attempts to send before the error is raised.
ATTEMPTS = 5
#: After a timeout, how many client timeouts to keep looking for the request before sending it again.
IN_FLIGHT_TIMEOUTS = 5
#: Looks per client timeout while waiting for a request that timed out to land.
LOOKS_PER_TIMEOUT = 6


def timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a client timeout: the request may still be processed."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def refused(exc: ApiError) -> bool:
    """A refusal of the request itself (a 4xx other than 429): no attempt of it will land."""
    return exc.status is not None and exc.status != 429 and exc.status < 500


def backoff(exc: ApiError, attempt: int) -> float:
    """The default wait before sending again: 1, 2, 4, 8 s."""
    return 0.5 * 2**attempt


def create_once(
    keys: Sequence[K],
    send: Callable[[list[K]], dict[K, R]],
    landed: Callable[[list[K]], dict[K, R]],
    *,
    what: str,
    client_timeout: float,
    sleep: Callable[[float], None],
    wait: Callable[[ApiError, int], float] = backoff,
    before_resend: Callable[[list[K]], None] | None = None,
    attempts: int = ATTEMPTS,
) -> dict[K, R]:
    """Send the records ``keys`` name until each has landed once; return what each landed as.

    :param send: sends the records still pending (once, no client retries) and returns their answers
        by key; raises :class:`ApiError` when the request failed as a whole.
    :param landed: looks up which of the pending records the destination already holds.
    :param client_timeout: the client's timeout: how long a request that timed out is looked for is
        counted in it (the timeout's own clock, slept in real time).
    :param sleep: the back-off clock (the client's ``RetryPolicy.sleep``, so tests can compress it).
    :param wait: seconds to wait before sending again; may raise (a quota pause) instead.
    :param before_resend: called with the records about to be sent again (to reserve their quota).
    """
    done: dict[K, R] = {}
    pending = list(keys)
    for attempt in range(1, attempts + 1):
        if attempt > 1 and before_resend is not None:
            before_resend(pending)
        try:
            done.update(send(pending))
            return done
        except ApiError as exc:
            if refused(exc):
                raise
            pause = wait(exc, attempt)
            found = landed(pending)
            if len(found) < len(pending) and timed_out(exc):
                for _ in range(IN_FLIGHT_TIMEOUTS * LOOKS_PER_TIMEOUT):
                    time.sleep(client_timeout / LOOKS_PER_TIMEOUT)
                    found = landed(pending)
                    if len(found) == len(pending):
                        break
            done.update(found)
            pending = [k for k in pending if k not in found]
            if not pending:
                return done
            if attempt == attempts:
                raise
            log.warning("%s failed (%s); %d did not land, sending again in %.1fs", what, exc, len(pending), pause)
            sleep(pause)
    raise AssertionError("unreachable")
