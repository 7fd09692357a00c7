"""What every emulator shares: request log, rate limit, fault injection and a way to serve it.

Each emulator (Ascora, Twenty, ...) is a plain Starlette app that only knows its own API. Wrapping it
with :func:`instrument` adds the behaviour tests and benchmarks need from *any* remote system:

* every request is recorded, so a test can assert exactly what a client called;
* a rate limit per window answers ``429`` with ``Retry-After`` like the real services;
* faults (429 bursts, 5xx, slow answers, dropped connections) can be switched on at set rates,
  deterministically from a seed so a failing soak can be replayed.

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
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

CONTROL_PREFIX = "/__sandbox__"


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
    """Rates are probabilities per request (0..1). ``slow_seconds`` is how long a "timeout" stalls."""

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_slow: float = 0.0
    rate_drop: float = 0.0
    slow_seconds: float = 5.0
    retry_after: str = "1"
    seed: int = 0
    # Only requests whose path starts with one of these prefixes are eligible (empty = all).
    paths: list[str] = field(default_factory=list)


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
        self._rng = random.Random(0)
        self.keep_bodies = keep_bodies
        self.counters: dict[str, int] = {"429": 0, "5xx": 0, "slow": 0, "drop": 0}

    def set_faults(self, plan: FaultPlan) -> None:
        self.faults = plan
        self._rng = random.Random(plan.seed)

    def set_rate_limit(self, limit: int | None, window: float = 60.0) -> None:
        self.limiter = RateLimiter(limit, window)

    def reset_log(self) -> None:
        self.requests.clear()
        self.counters = dict.fromkeys(self.counters, 0)

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
        roll = self._rng.random()
        for name, rate in (
            ("429", plan.rate_429),
            ("5xx", plan.rate_5xx),
            ("slow", plan.rate_slow),
            ("drop", plan.rate_drop),
        ):
            if roll < rate:
                self.counters[name] += 1
                return name
            roll -= rate
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
            await asyncio.sleep(self.control.faults.slow_seconds)
        if fault == "drop":
            # Start a response that promises more bytes than it sends, then stop: the client sees the
            # connection end mid-reply, which is what a dropped connection looks like from outside.
            record.status = -1
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000"), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
            raise ConnectionAbortedError("injected connection drop")

        async def recording_send(message):
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        await self.app(scope, recording_receive, recording_send)
        record.body = b"".join(body_chunks)


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
