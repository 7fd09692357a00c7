"""The one HTTP client every hook in this provider talks through.

Retry, backoff, pacing and budgets are the same problem for Ascora and for every CRM, so they live
here once. A hook builds an :class:`ApiClient` with its base URL, auth headers and a
:class:`RetryPolicy` / :class:`Pacer` matching the service's published limits, and then only deals
with its own paths and envelopes.

Rules worth knowing (each one a bug other tools shipped):

* ``Retry-After: 0`` still backs off (dlt #4036 retried in a tight loop until attempts ran out).
* 429 and 5xx are retried; other 4xx are the caller's problem and are returned, not retried.
* Transport failures (timeouts, dropped connections) are retried like 5xx.
* A client-side request budget stops a run *before* a daily quota is burnt, with a clear error the
  engine turns into a resumable stop instead of a half-finished load.
* Calls are counted (made, retried, throttled) so benchmarks can report wasted calls.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
R = TypeVar("R")


class ApiError(Exception):
    """A service answered with an error that retrying will not fix."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None, url: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url


class RequestBudgetExhausted(ApiError):
    """The client-side budget for this run is spent; the engine stops resumably."""


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    # The first retry after a 5xx waits 0.25 s, then 0.5, 1, 2 ... (the AWS and Google client
    # libraries start at 0.1-1 s): long enough not to pile onto a failing server, short enough that
    # a 5xx costs a fraction of a call's own time.
    base_delay: float = 0.25
    max_delay: float = 60.0
    max_retry_after: float = 600.0  # a server asking for a longer wait than max_delay is obeyed up to this
    min_retry_after: float = 0.2  # a Retry-After of 0 still waits this long, with jitter
    jitter: float = 0.1
    sleep: Callable[[float], None] = time.sleep

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return delay * (1 + random.uniform(0, self.jitter))

    def after_transport_error(self, attempt: int) -> float:
        """The wait after a dropped connection or a timeout: none the first time, then the back-off.

        Unlike a 5xx, such a failure says nothing about the server's load: most are a keep-alive
        connection the server or a proxy closed, and the retry goes out on a fresh one (urllib3's
        rule too). A timeout has already waited its deadline. A second failure in a row backs off.
        """
        return 0.0 if attempt <= 1 else self.backoff(attempt - 1)

    def wait_for(self, response: Any, attempt: int) -> float:
        """Seconds before retrying ``response`` (an httpx or requests answer: only its headers are read)."""
        header = response.headers.get("Retry-After") if response is not None else None
        if header is not None:
            seconds = parse_retry_after(header)
            if seconds is not None:
                return min(self.max_retry_after, max(seconds, self.min_retry_after)) * (
                    1 + random.uniform(0, self.jitter)
                )
        return self.backoff(attempt)


def parse_retry_after(value: str) -> float | None:
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Pacer:
    """Token bucket: at most ``rate`` requests per ``per`` seconds, spread evenly.

    When a service's limit is known in advance, pacing under it means no 429 is ever earned, which
    is both faster and kinder than bouncing off the limit and backing off.
    """

    def __init__(self, rate: float | None, per: float = 60.0, burst: int = 1):
        self.rate = rate
        self.per = per
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        return self.per / self.rate if self.rate else 0.0

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> None:
        if not self.rate:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) * self.interval
            sleep(wait)


class RequestWindow:
    """The client's model of a service's request count: a sliding window of ``window`` seconds in
    which at most ``budget`` requests may fall. A call may weigh more than one request (Dataverse's
    service protection counts each request inside a ``$batch``, and the batch too).

    A call that weighs ``n`` requests *reserves* all ``n`` at once: it waits until the requests this
    client sent in the last ``window`` seconds leave room for the whole call, then records them at
    the moment it goes out. Whatever the sizes of the calls, no window of the service then ever
    holds more than ``budget`` of this client's requests, so full ``$batch`` calls (up to 1,000
    requests) go out without a 429. A token bucket cannot do that: it accrues a batch's tokens
    *before* the batch, and the window that ends just after the batch holds the batch plus a window's
    worth of accrual (with a 90% share, any batch over 10% of the limit earned a 429).

    A call weighing more than the whole budget (the budget was lowered after a 429) waits until this
    client's window is empty; it cannot be split here.

    Against a token bucket at the same rate it also wins back time a fault cost: after a back-off or
    a client timeout, the calls not sent meanwhile go out as soon as the window has room for them
    (the service counts requests in a window; it does not ask for them evenly spaced), where a bucket
    of one token loses every interval it sat idle for good.
    """

    def __init__(self, budget: float, window: float):
        self.budget = float(budget)
        self.full_budget = float(budget)
        self.window = float(window)
        self._sent: deque[list] = deque()  # [time counted from, requests], oldest first
        self._used = 0
        self._lock = threading.Lock()
        self._weight = threading.local()

    @property
    def rate(self) -> float:
        """The long-run pace this budget allows (requests per ``window``), for logs and the adaptation."""
        return self.budget

    def used(self, now: float | None = None) -> int:
        with self._lock:
            self._expire(time.monotonic() if now is None else now)
            return self._used

    def _expire(self, now: float) -> None:
        while self._sent and now - self._sent[0][0] >= self.window:
            self._used -= self._sent.popleft()[1]

    def wait_time(self, weight: int, now: float) -> float:
        """Seconds until ``weight`` requests fit (0: they fit now). Caller holds the lock."""
        self._expire(now)
        room = self.budget - self._used
        if weight <= room or not self._sent:
            return 0.0
        # The oldest sends leave the window first: find the one whose departure makes room.
        needed = weight - room if weight <= self.budget else self._used
        freed = 0
        for at, n in self._sent:
            freed += n
            if freed >= needed:
                return max(0.0, at + self.window - now)
        return max(0.0, self._sent[-1][0] + self.window - now)

    def reserve(self, weight: int, sleep=time.sleep) -> float:
        """Wait until ``weight`` requests fit in the window, then count them as sent now; the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self.wait_time(weight, now)
                if wait <= 0:
                    entry = [now, weight]
                    self._sent.append(entry)
                    self._used += weight
                    self._weight.entry = entry
                    return waited
            sleep(wait + 0.001)
            waited += wait

    # ApiClient's pacer interface: every attempt (a retry is a request the service counts) reserves
    # the weight of the call being sent (1 unless the caller set another for its thread: ``weigh``).
    def acquire(self, sleep=time.sleep) -> None:
        self.reserve(getattr(self._weight, "value", 1), sleep)

    def weigh(self, weight: int) -> None:
        self._weight.value = max(1, int(weight))

    def settle(self) -> None:
        """The call this thread sent last has been answered (or given up on): count it from now. The
        service counted it when it arrived, somewhere between the send and the answer; counting it from
        the answer makes the model free its room no earlier than the service does (a large ``$batch``
        takes a while to upload and parse). :class:`ApiClient` calls it after every attempt."""
        entry = getattr(self._weight, "entry", None)
        if entry is not None:
            with self._lock:
                entry[0] = max(entry[0], time.monotonic())
            self._weight.entry = None


def per_minute_window(requests_per_minute: float | None, window_seconds: float = 60.0) -> Pacer | RequestWindow:
    """A per-minute limit as the window it is counted in: ``requests_per_minute`` spread over a window of
    ``window_seconds`` (60 for a real service; an emulator in compressed time shortens it, keeping the
    pace). No limit (None or 0): no pacing."""
    if not requests_per_minute:
        return Pacer(None)
    return RequestWindow(max(1.0, requests_per_minute * window_seconds / 60.0), window_seconds)


class AnswerDeadline:
    """How long to wait for an answer: learned from the service's own recent answers, never more than
    the configured timeout.

    A request stuck behind a lock or a dead backend costs whatever the client waits for it. Waiting
    the full timeout (30 s) when the service answers in a fraction of a second makes each stall cost
    as much as a hundred calls; gRPC deadlines and the "tail at scale" playbook give up much sooner.
    The first attempt of a call therefore waits ``factor`` times the slowest of the last ``keep``
    answers on its route (``GET /Attachments/Download/{id}``; the client's slowest until the route
    has ``warm_up`` answers of its own), at least ``floor`` of the timeout (3 s of 30). Until the
    client has ``warm_up`` answers, and for every attempt after one that timed out, it waits the
    full timeout. A call that is slow for a reason (a large upload, a heavy batch) so costs one
    short wait at most, never a failure.

    Safe because every call that can time out is already safe to give up on: reads and upserts are
    sent again, and creates without a key go through ``create_once``, which looks for what landed.
    """

    def __init__(self, timeout: float, *, factor: float = 4.0, floor: float = 1 / 10, keep: int = 50,
                 warm_up: int = 10):
        self.timeout = timeout
        self.factor = factor
        self.floor = floor
        self._keep = keep
        self._warm_up = warm_up
        self._recent: deque[float] = deque(maxlen=keep)
        self._by_route: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def answered(self, route: str, seconds: float, status: int) -> None:
        """Learn from an answer the service itself gave: not a 5xx, and not a 429, which the gateway
        gives at once without the service's work."""
        if status < 500 and status != 429:
            self.observe(seconds, route)

    def observe(self, seconds: float, route: str = "") -> None:
        with self._lock:
            self._recent.append(seconds)
            self._by_route.setdefault(route, deque(maxlen=self._keep)).append(seconds)

    def hedge_after(self, route: str) -> float | None:
        """When a read on ``route`` is slow enough to send a second copy: twice the 95th percentile
        of the route's recent answers (None until the route has ``warm_up`` answers of its own)."""
        with self._lock:
            own = self._by_route.get(route)
            if own is None or len(own) < self._warm_up:
                return None
            ordered = sorted(own)
        return min(self.first_attempt(route), 2 * ordered[int(0.95 * (len(ordered) - 1))])

    def first_attempt(self, route: str = "") -> float:
        """The read timeout of a call's first attempt on ``route``."""
        with self._lock:
            if len(self._recent) < self._warm_up:
                return self.timeout
            own = self._by_route.get(route)
            slowest = max(own if own is not None and len(own) >= self._warm_up else self._recent)
        return min(self.timeout, max(self.timeout * self.floor, self.factor * slowest))


@dataclass
class CallStats:
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    hedged: int = 0  # reads sent a second time because the first was slow (see ApiClient)
    by_path: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, route: str | None = None, **counters: int) -> None:
        """Add to the counters (and a call to ``route``), under a lock: a client's calls may come from
        several threads (hedged reads, a plugin's concurrent writes), and ``+=`` on an attribute can
        lose one that lands between the read and the write. The request budget is checked on these."""
        with self._lock:
            for name, n in counters.items():
                setattr(self, name, getattr(self, name) + n)
            if route is not None:
                self.by_path[route] = self.by_path.get(route, 0) + 1

    @property
    def wasted(self) -> int:
        return self.retries

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "throttled": self.throttled,
            "server_errors": self.server_errors,
            "transport_errors": self.transport_errors,
            "hedged": self.hedged,
        }


def combined_stats(*clients: ApiClient | None) -> dict[str, int]:
    """The counters of a hook's clients summed (its retrying client and its send-once client share
    one budget and one pace, so a report of the hook's calls counts both)."""
    out: dict[str, int] = {}
    for client in clients:
        if client is not None:
            for key, value in client.stats.as_dict().items():
                out[key] = out.get(key, 0) + value
    return out


#: Methods whose second copy changes nothing on the server, so a slow one can be hedged.
HEDGED_METHODS = frozenset({"GET", "HEAD"})


class ApiClient:
    """httpx client with the provider's retry, pacing and budget rules.

    Reads are *hedged* ("The Tail at Scale", Dean and Barroso): a GET still unanswered after twice
    its route's 95th-percentile answer time is sent a second time, and the first answer wins. A read
    stuck behind a lock so costs about one slow answer instead of a deadline (5 s or more) and a
    retry, for a few percent more reads. A client paced in a request window does not hedge: its
    limit bounds it, and a second copy would spend the limit.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | RequestWindow | None = None,
        budget: int | None = None,
        transport: httpx.BaseTransport | None = None,
        name: str = "api",
        deadline: AnswerDeadline | None = None,
    ):
        self.name = name
        self.retry = retry or RetryPolicy()
        self.pacer = pacer or Pacer(None)
        self.budget = budget
        self.stats = CallStats()
        # Another client of the same service (a hook's send-once client beside its main one) shares
        # what the service's answers taught: on its own, a client that sends a few creates would
        # stay cold and wait the whole timeout for each stalled one.
        self.deadline = deadline if deadline is not None else AnswerDeadline(timeout)
        self.hedge_reads = not isinstance(self.pacer, RequestWindow)
        self._hedges: ThreadPoolExecutor | None = None
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        if self._hedges is not None:
            self._hedges.shutdown(wait=True)  # a read still out finishes before its connection closes
            self._hedges = None
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_budget(self) -> None:
        if self.budget is not None and self.stats.calls >= self.budget:
            raise RequestBudgetExhausted(
                f"{self.name}: request budget of {self.budget} calls is spent; stopping before the "
                "service's own quota is hit. Resume later or raise the budget on the connection."
            )

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send with retries. Returns the final response (which may be a non-retryable 4xx)."""
        route = route_of(method, path)
        send = lambda: self._attempt(method, path, kwargs)  # noqa: E731
        if "timeout" not in kwargs:  # a caller's own timeout (a long upload) is kept as it is
            kwargs["timeout"] = self._first_timeout(route)
            if self.hedge_reads and method.upper() in HEDGED_METHODS:
                send = lambda: self._hedged(method, path, route, kwargs)  # noqa: E731
        try:
            return send_with_retries(send, method, path,
                                     retry=self.retry, stats=self.stats, name=self.name,
                                     transport_errors=(httpx.TransportError, httpx.TimeoutException),
                                     before_attempt=self._before_attempt)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise ApiError(f"{self.name}: {method} {path} failed after {self.retry.max_attempts} attempts: "
                           f"{exc!r}", url=path) from exc

    def _first_timeout(self, route: str) -> httpx.Timeout:
        timeout = self._http.timeout
        return httpx.Timeout(timeout.connect, read=self.deadline.first_attempt(route), write=timeout.write,
                             pool=timeout.pool)

    def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        started = time.monotonic()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            kwargs["timeout"] = self._http.timeout  # the next attempt waits the full timeout
            raise
        finally:
            if isinstance(self.pacer, RequestWindow):
                self.pacer.settle()
        self.deadline.answered(route_of(method, path), time.monotonic() - started, response.status_code)
        return response

    def _hedged(self, method: str, path: str, route: str, kwargs: dict[str, Any]) -> httpx.Response:
        """One attempt of a read, with a second copy sent if the first is slow; the first answer wins.

        The copy is counted and paced like any call. An answer that loses is closed when it comes.
        Only when both copies time out does the next attempt wait the full timeout.
        """
        after = self.deadline.hedge_after(route)
        if after is None:
            return self._attempt(method, path, kwargs)
        if self._hedges is None:
            self._hedges = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{self.name}-hedge")
        first = self._hedges.submit(self._attempt, method, path, dict(kwargs))
        try:
            return first.result(timeout=after)
        except FuturesTimeout:
            if first.done():  # the read itself raised a TimeoutError: not slow, failed
                raise
        try:
            self._before_attempt()
        except BaseException:
            first.add_done_callback(_close_answer)
            raise
        self.stats.count(calls=1, hedged=1)
        copies = [first, self._hedges.submit(self._attempt, method, path, dict(kwargs))]
        failure: BaseException | None = None
        for done in as_completed(copies):
            try:
                answer = done.result()
            except Exception as exc:  # the other copy may still answer
                failure = exc
                continue
            for other in copies:
                if other is not done:
                    other.add_done_callback(_close_answer)
            return answer
        if isinstance(failure, httpx.TimeoutException):
            kwargs["timeout"] = self._http.timeout
        raise failure  # both copies failed: the retry rule decides what comes next

    def _before_attempt(self) -> None:
        self._check_budget()
        self.pacer.acquire(self.retry.sleep)
        self._check_budget()  # the pacer's wait may have been another thread's last call

    def json(self, method: str, path: str, **kwargs) -> Any:
        """Send and decode JSON, raising :class:`ApiError` on any non-2xx answer."""
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(
                f"{self.name}: {method} {path} answered HTTP {response.status_code}: {_body_text(response)}",
                status=response.status_code,
                body=_body_json(response),
                url=path,
            )
        if not response.content:
            return None
        return response.json()


def _close_answer(copy: Future) -> None:
    """Close the answer of a hedged read that lost (a failed copy has nothing to close)."""
    if copy.exception() is None:
        copy.result().close()


def send_with_retries(send: Callable[[], R], method: str, path: str, *, retry: RetryPolicy, stats: CallStats,
                      name: str, transport_errors: tuple[type[BaseException], ...],
                      before_attempt: Callable[[], None] | None = None,
                      fatal: Callable[[BaseException], bool] = lambda exc: False) -> R:
    """The provider's one retry rule, for any HTTP library's ``send`` (httpx here, requests in the
    Salesforce session): every attempt counted, 429 and 5xx retried after ``RetryPolicy.wait_for``
    (``Retry-After``, else the back-off), transport errors after the back-off, every wait through
    ``RetryPolicy.sleep``. Returns the last response (a non-retryable answer, or the last 429/5xx
    once attempts run out); re-raises the last transport error, or one ``fatal`` says no retry fixes.
    """
    attempt = 0
    while True:
        attempt += 1
        if before_attempt is not None:
            before_attempt()
        stats.count(route_of(method, path), calls=1)
        try:
            response = send()
        except transport_errors as exc:
            if fatal(exc):
                raise
            stats.count(transport_errors=1)
            if attempt >= retry.max_attempts:
                raise
            delay = retry.after_transport_error(attempt)
            log.warning("%s: %s %s transport error (%s); retry %d in %.1fs",
                        name, method, path, type(exc).__name__, attempt, delay)
            stats.count(retries=1)
            retry.sleep(delay)
            continue
        if response.status_code not in RETRYABLE_STATUS:
            return response
        stats.count(**({"throttled": 1} if response.status_code == 429 else {"server_errors": 1}))
        if attempt >= retry.max_attempts:
            return response
        delay = retry.wait_for(response, attempt)
        log.warning("%s: %s %s answered %s; retry %d in %.1fs", name, method, path, response.status_code, attempt, delay)
        response.close()
        stats.count(retries=1)
        retry.sleep(delay)


def route_of(method: str, path: str) -> str:
    """``GET /rest/people/4f1c…`` → ``GET /rest/people/{id}``: per-route counts and deadlines that do
    not grow per record."""
    parts = [("{id}" if any(ch.isdigit() for ch in p) and len(p) >= 8 else p) for p in path.split("?")[0].split("/")]
    return f"{method} {'/'.join(parts)}"


def _body_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _body_text(response: httpx.Response, limit: int = 500) -> str:
    text = response.text
    return text if len(text) <= limit else text[:limit] + "…"
