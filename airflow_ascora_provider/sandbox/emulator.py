"""What every emulator shares: request log, rate limit, fault injection and a way to serve it.

Each emulator (Ascora, Twenty, ...) is a plain Starlette app that only knows its own API. Wrapping it
with :func:`instrument` adds the behaviour tests and benchmarks need from *any* remote system:

* every request is recorded, so a test can assert exactly what a client called;
* a rate limit per window answers ``429`` with ``Retry-After`` like the real services;
* faults (429 bursts, 5xx, slow answers, dropped connections, replies lost after the write was
  done, batches only partly written) can be switched on at set rates, deterministically from a seed
  so a failing soak can be replayed;
* a service time (:class:`Latency`) can be switched on, so that a run's time has a real service's
  proportions: left off, an emulator answers in a millisecond or two, and anything a client waits
  for (a timeout, a ``Retry-After``) looks many times costlier than it is against a real API.

The switches are reachable in-process (``app.state.sandbox``) and over HTTP under ``/__sandbox__/``,
so a test can steer an emulator running in another process the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

CONTROL_PREFIX = "/__sandbox__"
# Drawn in this order from one roll, so a seed replays the same faults (new kinds go last).
FAULT_KINDS = ("429", "5xx", "slow", "drop", "lost_reply", "partial")
_DROPPED = -1  # RecordedRequest.status of a request whose connection was cut
FORCED_SPACING = 10  # eligible requests between two kinds a fault plan's coverage injects


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    status: int
    at: float
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class FaultPlan:
    """Rates are probabilities per request (0..1). ``slow_seconds`` is how long a "timeout" stalls.

    The kinds differ in whether the emulator's own app saw the request, which is what a client
    cannot tell from outside and must survive either way:

    * ``429``, ``5xx``, ``drop``: answered before the app runs; nothing was written.
    * ``slow``: the request waits ``slow_seconds`` and then *is* handled. With ``slow_seconds`` above
      the client's timeout, the client gives up and the write still happens a moment later, as
      behind a real load balancer.
    * ``lost_reply``: the app handles the request completely (writes commit), then the connection
      drops before the answer arrives, like a gateway timeout after the backend finished.
    * ``partial``: for a request whose JSON body carries a batch (a list of objects, as the body or
      under one of ``batch_keys``), only a leading part of the batch reaches the app (it is written)
      and the client gets a 500, like a non-transactional server failing mid-batch. Requests without
      a batch of two or more items are passed through untouched, and the fault waits for the next
      request that carries one: a rate per request still cuts batches when most calls are reads.

    ``cover_every_kind_after``: when set, every kind with a rate above zero that has not occurred by
    that many eligible requests is injected then, one every ``FORCED_SPACING`` requests (injected on
    consecutive requests, they would be the successive attempts of one call). A seeded draw
    at a low rate (timeouts are kept rare because each costs a whole client timeout) may otherwise
    never come up in a short run, and a soak that never met a timeout has not shown it survives one.
    """

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_slow: float = 0.0
    rate_drop: float = 0.0
    rate_lost_reply: float = 0.0
    rate_partial: float = 0.0
    slow_seconds: float = 5.0
    retry_after: str = "1"
    seed: int = 0
    cover_every_kind_after: int | None = None
    # Only requests whose path starts with one of these prefixes are eligible (empty = all).
    paths: list[str] = field(default_factory=list)
    # Keys of a JSON object body that hold a batch of records (the usual envelopes). Other lists,
    # such as a field's pick-list options, are part of one record and never cut short.
    batch_keys: list[str] = field(default_factory=lambda: ["records", "inputs", "data", "items"])


@dataclass
class Latency:
    """How long the service takes to answer a request its app handles: ``per_call`` seconds, plus
    ``per_kb`` seconds for each KiB of the request and of the answer (a batch of 200 records is
    processed longer than one record, a page of 2,000 rows is sent longer than a count). Answers the
    gateway gives on its own (a 429, an injected 5xx or drop) take no service time.
    """

    per_call: float = 0.0
    per_kb: float = 0.0

    def scaled(self, factor: float) -> Latency:
        return Latency(self.per_call * factor, self.per_kb * factor)

    def __bool__(self) -> bool:
        return self.per_call > 0 or self.per_kb > 0


class RateLimiter:
    """Sliding-window limiter per key: at most ``limit`` requests in any ``window`` seconds."""

    def __init__(self, limit: int | None = None, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float | None:
        """Record a hit; return seconds to wait when the limit is exceeded, else None."""
        if not self.limit:
            return None
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(0.0, self.window - (now - hits[0]))
            hits.append(now)
            return None


class SandboxControl:
    """The emulator-independent state: request log, limiter and faults."""

    def __init__(self, *, rate_limit: int | None = None, window: float = 60.0, keep_bodies: bool = True):
        self.requests: list[RecordedRequest] = []
        self.limiter = RateLimiter(rate_limit, window)
        self.faults = FaultPlan()
        self.latency = Latency()
        self._rng = random.Random(0)
        self.keep_bodies = keep_bodies
        self.counters: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._eligible = 0  # requests the fault plan applied to
        self._forced_at = -FORCED_SPACING  # the eligible request that last got a kind it was owed
        self._partial_waiting = False  # a drawn ``partial`` that met no batch yet
        # An emulator whose API has a limit of its own shape (Dataverse weighs a $batch by the
        # requests inside it) takes the rate-limit switch instead of the generic per-call limiter.
        self.own_limit: Callable[[int | None, float], None] | None = None
        # An emulator whose batches are not JSON (Dataverse's multipart $batch) says how to keep a
        # leading part of one for a ``partial`` fault: (body, content type, draw_prefix) -> body or None.
        self.batch_cutter: Callable[[bytes, str, Callable[[int], int]], bytes | None] | None = None

    def set_faults(self, plan: FaultPlan) -> None:
        self.faults = plan
        self._rng = random.Random(plan.seed)
        self._eligible = 0
        self._forced_at = -FORCED_SPACING
        self._partial_waiting = False

    def set_rate_limit(self, limit: int | None, window: float = 60.0) -> None:
        if self.own_limit is not None:
            self.own_limit(limit, window)
            return
        self.limiter = RateLimiter(limit, window)

    def reset_log(self) -> None:
        self.requests.clear()
        self.counters = dict.fromkeys(self.counters, 0)

    def draw_prefix(self, size: int) -> int:
        """How many leading items of a batch of ``size`` (>= 2) a ``partial`` fault lets through."""
        return self._rng.randrange(1, size)

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(path_prefix)
        ]

    def draw_fault(self, path: str) -> str | None:
        plan = self.faults
        if plan.paths and not any(path.startswith(p) for p in plan.paths):
            return None
        self._eligible += 1
        drawn = self._roll(plan) or self._owed(plan)
        if drawn is None and self._partial_waiting:
            return "partial"
        if drawn == "partial":
            self._partial_waiting = True
        elif drawn is not None:
            self.counters[drawn] += 1
        return drawn

    def batch_met(self, cut: bool) -> None:
        """Whether a ``partial`` fault found a batch to cut (counted) or waits for the next one."""
        if cut:
            self.counters["partial"] += 1
            self._partial_waiting = False

    def _roll(self, plan: FaultPlan) -> str | None:
        roll = self._rng.random()
        for name in FAULT_KINDS:
            rate = getattr(plan, f"rate_{name}")
            if roll < rate:
                return name
            roll -= rate
        return None

    def _owed(self, plan: FaultPlan) -> str | None:
        """The first kind the plan asks for that has not occurred by ``cover_every_kind_after``."""
        if plan.cover_every_kind_after is None or self._eligible <= plan.cover_every_kind_after \
                or self._eligible - self._forced_at < FORCED_SPACING:
            return None
        for name in FAULT_KINDS:
            if getattr(plan, f"rate_{name}") > 0 and self.counters[name] == 0:
                if name == "partial" and self._partial_waiting:
                    continue
                self._forced_at = self._eligible
                return name
        return None


def _rate_key(scope: dict) -> str:
    headers = dict(scope.get("headers") or [])
    for name in (b"authorization", b"auth"):
        if name in headers:
            return headers[name].decode("latin-1")
    return "anonymous"


class _Instrumented:
    """ASGI middleware applying log, limiter and faults around the emulator's own app."""

    def __init__(self, app: Starlette, control: SandboxControl, control_app: Starlette):
        self.app = app
        self.control = control
        self.control_app = control_app
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.startswith(CONTROL_PREFIX):
            return await self.control_app(scope, receive, send)

        body_chunks: list[bytes] = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request" and self.control.keep_bodies:
                body_chunks.append(message.get("body", b""))
            return message

        record = RecordedRequest(
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            status=0,
            at=time.time(),
        )
        self.control.requests.append(record)

        wait = self.control.limiter.check(_rate_key(scope))
        fault = self.control.draw_fault(path) if wait is None else None
        if wait is not None or fault == "429":
            retry_after = str(max(1, int(wait + 0.999))) if wait is not None else self.control.faults.retry_after
            record.status = 429
            if wait is not None:
                self.control.counters["429"] += 1
            response = JSONResponse(
                {"statusCode": 429, "error": "TooManyRequests", "message": "Rate limit exceeded"},
                status_code=429,
                headers={"Retry-After": retry_after},
            )
            return await response(scope, receive, send)
        if fault == "5xx":
            record.status = 503
            response = JSONResponse({"message": "Service Unavailable (injected)"}, status_code=503)
            return await response(scope, receive, send)
        if fault == "slow":
            # The request is read first and handled after the stall, as by a server stuck on a lock:
            # a client that timed out meanwhile does not stop the write.
            body = await _read_body(receive)
            record.body = body if self.control.keep_bodies else b""
            await asyncio.sleep(self.control.faults.slow_seconds)
            return await self._serve(scope, _replay(body), _recording_send(send, record))
        if fault == "drop":
            record.status = _DROPPED
            await _cut_connection(send)
        if fault == "partial":
            body = await _read_body(receive)
            shortened = self._shorten_batch(body, scope)
            if shortened is None:
                record.body = body if self.control.keep_bodies else b""
                return await self._serve(scope, _replay(body), _recording_send(send, record))
            # The leading part is handled (and recorded, so the log shows what was written); the
            # client only hears that the batch failed.
            record.body = shortened if self.control.keep_bodies else b""
            record.status = 500
            await self._serve(scope, _replay(shortened), _discard)
            response = JSONResponse({"message": "Internal server error (injected: batch partly written)"},
                                    status_code=500)
            return await response(scope, receive, send)
        if fault == "lost_reply":
            await self._serve(scope, recording_receive, _discard)
            record.body = b"".join(body_chunks)
            record.status = _DROPPED
            await _cut_connection(send)

        await self._serve(scope, recording_receive, _recording_send(send, record))
        record.body = b"".join(body_chunks)

    async def _serve(self, scope, receive, send):
        """The emulator's own app, taking the service time of :class:`Latency` when it is switched on:
        the call's share first, then each KiB as the request is read and as the answer is sent."""
        latency = self.control.latency
        if not latency:
            return await self.app(scope, receive, send)
        await asyncio.sleep(latency.per_call)

        async def timed_receive():
            message = await receive()
            if message["type"] == "http.request" and latency.per_kb:
                await asyncio.sleep(latency.per_kb * len(message.get("body", b"")) / 1024)
            return message

        async def timed_send(message):
            if message["type"] == "http.response.body" and latency.per_kb:
                await asyncio.sleep(latency.per_kb * len(message.get("body", b"")) / 1024)
            await send(message)

        return await self.app(scope, timed_receive, timed_send)

    def _shorten_batch(self, body: bytes, scope: dict) -> bytes | None:
        """The body with only a leading part of its batch, or None when it carries no batch of 2+."""
        if self.control.batch_cutter is not None:
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            shortened = self.control.batch_cutter(body, content_type, self.control.draw_prefix)
            self.control.batch_met(shortened is not None)
            return shortened
        try:
            document = json.loads(body) if body else None
        except ValueError:
            return None
        holder, key = _batch_in(document, self.control.faults.batch_keys)
        self.control.batch_met(holder is not None)
        if holder is None:
            return None
        items = holder if key is None else holder[key]
        keep = self.control.draw_prefix(len(items))
        if key is None:
            document = items[:keep]
        else:
            holder[key] = items[:keep]
        return json.dumps(document).encode("utf-8")


def _batch_in(document: Any, batch_keys: list[str]) -> tuple[Any, str | None]:
    """Where a JSON body keeps its batch: the body itself (a list of objects) or one of ``batch_keys``.

    Covers ``[...]``, ``{"records": [...]}``, ``{"inputs": [...]}``, ``{"data": [...]}`` without
    knowing any API; the first key of ``batch_keys`` holding a list of two or more objects wins.
    """
    def is_batch(value: Any) -> bool:
        return isinstance(value, list) and len(value) >= 2 and all(isinstance(v, dict) for v in value)

    if is_batch(document):
        return document, None
    if isinstance(document, dict):
        for key in batch_keys:
            if is_batch(document.get(key)):
                return document, key
    return None, None


async def _read_body(receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes):
    """A receive callable that hands the app ``body`` once, then reports the client gone."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _discard(message) -> None:
    """A send callable for answers the client must never see."""


def _recording_send(send, record: RecordedRequest):
    async def recording_send(message):
        if message["type"] == "http.response.start":
            record.status = message["status"]
        await send(message)

    return recording_send


async def _cut_connection(send) -> None:
    """Start a response that promises more bytes than it sends, then stop.

    The client sees the connection end mid-reply, which is what a dropped connection looks like from
    outside; raising makes the server close the socket.
    """
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1000"), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
    raise ConnectionAbortedError("injected connection drop")


def _control_app(control: SandboxControl) -> Starlette:
    async def requests_(request: Request):
        return JSONResponse(
            [
                {"method": r.method, "path": r.path, "query": r.query, "status": r.status, "at": r.at}
                for r in control.requests
            ]
        )

    async def faults(request: Request):
        if request.method == "POST":
            control.set_faults(FaultPlan(**(await request.json())))
        return JSONResponse(asdict(control.faults))

    async def rate_limit(request: Request):
        if request.method == "POST":
            body = await request.json()
            control.set_rate_limit(body.get("limit"), float(body.get("window", 60.0)))
        return JSONResponse({"limit": control.limiter.limit, "window": control.limiter.window})

    async def reset(request: Request):
        control.reset_log()
        return JSONResponse({"ok": True})

    async def counters(request: Request):
        return JSONResponse(control.counters)

    async def latency(request: Request):
        if request.method == "POST":
            control.latency = Latency(**(await request.json()))
        return JSONResponse(asdict(control.latency))

    return Starlette(
        routes=[
            Mount(
                CONTROL_PREFIX,
                routes=[
                    Route("/requests", requests_),
                    Route("/faults", faults, methods=["GET", "POST"]),
                    Route("/rate-limit", rate_limit, methods=["GET", "POST"]),
                    Route("/reset", reset, methods=["POST"]),
                    Route("/counters", counters),
                    Route("/latency", latency, methods=["GET", "POST"]),
                ],
            )
        ]
    )


def instrument(app: Starlette, *, rate_limit: int | None = None, window: float = 60.0) -> _Instrumented:
    """Wrap an emulator app; its control object is then ``app.state.sandbox``."""
    control = SandboxControl(rate_limit=rate_limit, window=window)
    app.state.sandbox = control
    return _Instrumented(app, control, _control_app(control))


class ServedApp:
    """An ASGI app served by uvicorn on a background thread (tests, demo, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> SandboxControl:
        return self.app.state.sandbox

    def start(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start within 10 seconds")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
