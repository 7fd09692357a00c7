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
4. send again only what did not land, after the client's back-off (its ``RetryPolicy``: at once after a
   dropped connection, the server's ``Retry-After`` after a 429, the policy's back-off after a 5xx),
   the wait any other request of the client would take.

Step 3 holds the caller for as long as the stalled request takes to land (a stall of 45 s holds a
Freshsales load of one call per record for most of a minute). A caller with other work to do passes
``defer=True``: a timed-out create that has not landed at the first look raises :class:`InDoubt`
instead, and its ``settle()`` does the rest of steps 3 and 4 when the caller asks, typically after
the rest of its records went out, by which time the late write has landed and one look finds it.

A refusal of the request itself (a 4xx other than 429) is raised at once: sending it again cannot help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import httpx

from airflow_ascora_provider.hooks.http_client import ApiError, RetryPolicy

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


def backoff(exc: ApiError, attempt: int, policy: RetryPolicy) -> float:
    """The wait before sending again, as ``policy`` waits before retrying any request of its client."""
    if exc.status is None:
        return policy.after_transport_error(attempt)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(policy.max_retry_after, max(float(retry_after), policy.min_retry_after))
    return policy.backoff(attempt)


class InDoubt(Exception):
    """A create timed out and had not landed at the first look: it may still be on its way.

    ``settle()`` finishes it: looks until the request's in-flight window (counted from the timeout,
    not from the call to ``settle``) has passed, sends again what did not land, and returns what
    every record landed as, like :func:`create_once`.
    """

    def __init__(self, what: str, settle: Callable[[], dict]):
        super().__init__(f"{what}: timed out; not landed yet, settled later")
        self.settle = settle


def create_once(
    keys: Sequence[K],
    send: Callable[[list[K]], dict[K, R]],
    landed: Callable[[list[K]], dict[K, R]],
    *,
    what: str,
    client_timeout: float,
    retry: RetryPolicy,
    wait: Callable[[ApiError, int], float] | None = None,
    before_resend: Callable[[list[K]], None] | None = None,
    attempts: int = ATTEMPTS,
    defer: bool = False,
) -> dict[K, R]:
    """Send the records ``keys`` name until each has landed once; return what each landed as.

    :param send: sends the records still pending (once, no client retries) and returns their answers
        by key; raises :class:`ApiError` when the request failed as a whole.
    :param landed: looks up which of the pending records the destination already holds.
    :param client_timeout: the client's timeout: how long a request that timed out is looked for is
        counted in it (the timeout's own clock, slept in real time).
    :param retry: the client's retry policy: its back-offs and its clock (``sleep``, which tests compress).
    :param wait: seconds to wait before sending again (default :func:`backoff` under ``retry``); may
        raise (a quota pause) instead.
    :param before_resend: called with the records about to be sent again (to reserve their quota).
    :param defer: raise :class:`InDoubt` rather than wait for a timed-out request to land.
    """
    if wait is None:
        def wait(exc: ApiError, attempt: int) -> float:
            return backoff(exc, attempt, retry)
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
                if defer:
                    window_ends = time.monotonic() + IN_FLIGHT_TIMEOUTS * client_timeout
                    done.update(found)
                    later = dict(what=what, client_timeout=client_timeout, retry=retry, wait=wait,
                                 before_resend=before_resend, attempts=attempts - attempt + 1)
                    rest = [k for k in pending if k not in found]
                    raise InDoubt(what, lambda: {**done, **_settle(rest, send, landed, window_ends, **later)}) from exc
                found = _look_until(pending, landed, found, float("inf"), client_timeout)
            done.update(found)
            pending = [k for k in pending if k not in found]
            if not pending:
                return done
            if attempt == attempts:
                raise
            log.warning("%s failed (%s); %d did not land, sending again in %.1fs", what, exc, len(pending), pause)
            if pause > 0:
                retry.sleep(pause)
    raise AssertionError("unreachable")


def _look_until(pending: list[K], landed: Callable[[list[K]], dict[K, R]], found: dict[K, R], window_ends: float,
                client_timeout: float) -> dict[K, R]:
    """Look every sixth of a client timeout until all of ``pending`` landed, for as many looks as fit in
    the in-flight window and never past ``window_ends``; ``found`` is what the last look found."""
    for _ in range(IN_FLIGHT_TIMEOUTS * LOOKS_PER_TIMEOUT):
        if time.monotonic() >= window_ends:
            break
        time.sleep(client_timeout / LOOKS_PER_TIMEOUT)
        found = landed(pending)
        if len(found) == len(pending):
            break
    return found


def _settle(pending: list[K], send, landed, window_ends: float, *, attempts: int, client_timeout: float,
            before_resend: Callable[[list[K]], None] | None, **options) -> dict[K, R]:
    """The rest of a deferred create: what landed since (looking on while its window lasts), then
    :func:`create_once` for what did not, sent again as the timed-out attempt's next one."""
    found = landed(pending)
    if len(found) < len(pending):
        found = _look_until(pending, landed, found, window_ends, client_timeout)
    rest = [k for k in pending if k not in found]
    if not rest:
        return found
    if before_resend is not None:
        before_resend(rest)
    return {**found, **create_once(rest, send, landed, client_timeout=client_timeout, attempts=attempts,
                                   before_resend=before_resend, **options)}
