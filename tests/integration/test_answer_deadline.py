"""A stalled request costs a deadline learned from the service's answers, not the whole timeout; a
stalled read costs about one slow answer (hedged).

Over real HTTP: a tiny local server answers from a script (delay per request), and both HTTP stacks
the provider uses are driven against it, httpx through ``ApiClient`` and requests through the
Salesforce session's policy adapter. Writes (POST) show the deadline; reads (GET) the hedge.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_ascora_provider.hooks.http_client import AnswerDeadline, ApiClient, CallStats, RetryPolicy


class _Service(BaseHTTPRequestHandler):
    script: list[float] = []  # seconds before each answer, in order; then instant answers
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self):
        type(self).seen.append(f"{self.command} {self.path}")
        delay = type(self).script.pop(0) if type(self).script else 0.0
        if delay:
            time.sleep(delay)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up and left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Service.script, _Service.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}", _Service
    server.shutdown()
    server.server_close()


def _client(url: str, timeout: float) -> tuple[ApiClient, list[float]]:
    waits: list[float] = []
    return ApiClient(url, timeout=timeout, retry=RetryPolicy(max_attempts=3, sleep=waits.append)), waits


def _warm(send, answers: int = 10) -> None:
    for _ in range(answers):
        send()


def test_after_warm_up_a_stall_costs_the_learned_deadline(service):
    url, handler = service
    client, waits = _client(url, timeout=6.0)
    _warm(lambda: client.json("POST", "/ping", json={}))
    assert client.deadline.first_attempt("POST /ping") == pytest.approx(0.6)  # a tenth of 6 s: answers were instant

    handler.script = [3.0]  # stuck for 3 s; the retry is answered at once
    started = time.monotonic()
    assert client.json("POST", "/ping", json={}) == {"ok": True}

    assert time.monotonic() - started < 2.0  # not the 3 s stall, not the 6 s timeout
    assert (client.stats.transport_errors, client.stats.retries) == (1, 1)
    assert waits == [0.0]  # a timeout has waited already: the first retry goes at once


def test_before_warm_up_the_full_timeout_is_waited(service):
    url, handler = service
    client, _ = _client(url, timeout=1.5)
    handler.script = [1.0]  # slower than a learned deadline would allow, inside the timeout

    assert client.json("POST", "/ping", json={}) == {"ok": True}
    assert client.stats.transport_errors == 0


def test_a_slow_answer_fails_one_short_wait_then_gets_the_full_timeout(service):
    url, handler = service
    client, _ = _client(url, timeout=6.0)
    _warm(lambda: client.json("POST", "/ping", json={}))

    handler.script = [1.5, 1.5]  # a heavy call: slow every time, well inside the timeout
    assert client.json("POST", "/ping", json={}) == {"ok": True}
    assert (client.stats.transport_errors, client.stats.retries) == (1, 1)


def test_a_callers_own_timeout_is_kept(service):
    url, handler = service
    client, _ = _client(url, timeout=6.0)
    _warm(lambda: client.json("POST", "/ping", json={}))

    handler.script = [1.5]
    assert client.json("POST", "/ping", json={}, timeout=4.0) == {"ok": True}  # a long upload sets its own
    assert client.stats.transport_errors == 0


def test_the_salesforce_session_learns_its_deadline_too(service):
    from airflow_ascora_provider.destinations.salesforce.connection import QuotaGuard, Settings, build_session

    url, handler = service
    waits: list[float] = []
    stats = CallStats()
    session = build_session(Settings.from_sources({}, {"timeout": 6.0}), QuotaGuard(5.0, None, 60.0),
                            RetryPolicy(max_attempts=3, sleep=waits.append), stats)
    _warm(lambda: session.get(f"{url}/ping"))

    handler.script = [3.0]
    started = time.monotonic()
    assert session.get(f"{url}/ping").json() == {"ok": True}
    assert time.monotonic() - started < 2.0
    assert (stats.transport_errors, stats.retries) == (1, 1) and waits == [0.0]


def test_the_deadline_rule():
    deadline = AnswerDeadline(30.0, warm_up=3)
    deadline.observe(0.2)
    deadline.observe(0.3)
    assert deadline.first_attempt() == 30.0  # too few answers to judge by
    deadline.observe(0.4)
    assert deadline.first_attempt() == 3.0  # 4 x 0.4 s is under the floor of a tenth of the timeout
    deadline.observe(2.5)
    assert deadline.first_attempt() == 10.0  # 4 x the slowest recent answer
    deadline.observe(20.0)
    assert deadline.first_attempt() == 30.0  # never past the timeout


def test_transport_errors_retry_at_once_then_back_off():
    policy = RetryPolicy(base_delay=0.5, jitter=0.0)
    assert [policy.after_transport_error(n) for n in (1, 2, 3, 4)] == [0.0, 0.5, 1.0, 2.0]


def test_a_stalled_read_is_hedged_and_the_first_answer_wins(service):
    url, handler = service
    client, waits = _client(url, timeout=6.0)
    _warm(lambda: client.json("GET", "/ping"))
    handler.seen.clear()

    handler.script = [3.0]  # the first copy is stuck; the second is answered at once
    started = time.monotonic()
    assert client.json("GET", "/ping") == {"ok": True}

    assert time.monotonic() - started < 0.5  # neither the stall nor the 0.6 s deadline
    assert handler.seen == ["GET /ping", "GET /ping"]
    assert (client.stats.hedged, client.stats.calls, client.stats.retries, client.stats.transport_errors) == (
        1, 12, 0, 0)
    assert waits == []
    client.close()  # waits for the stuck copy, whose answer is closed


def test_a_read_is_not_hedged_before_its_route_has_answers_of_its_own(service):
    url, handler = service
    client, _ = _client(url, timeout=6.0)
    _warm(lambda: client.json("GET", "/other"))

    handler.script = [0.5]
    assert client.json("GET", "/ping") == {"ok": True}
    assert client.stats.hedged == 0


def test_a_client_paced_in_a_request_window_does_not_hedge(service):
    from airflow_ascora_provider.hooks.http_client import RequestWindow

    url, handler = service
    client = ApiClient(url, timeout=6.0, pacer=RequestWindow(1000, 60.0))
    _warm(lambda: client.json("GET", "/ping"))

    handler.script = [1.5]  # past the 0.6 s deadline: given up on and retried, not hedged
    assert client.json("GET", "/ping") == {"ok": True}
    assert (client.stats.hedged, client.stats.transport_errors) == (0, 1)


def test_the_hedge_delay_follows_the_routes_answers():
    deadline = AnswerDeadline(30.0, warm_up=3)
    assert deadline.hedge_after("GET /x") is None
    for seconds in (0.1, 0.2, 0.3, 0.4):
        deadline.observe(seconds, "GET /x")
    assert deadline.hedge_after("GET /x") == pytest.approx(0.6)  # twice the 95th percentile (0.3 of 4)
    assert deadline.hedge_after("GET /y") is None


def test_call_counts_from_many_threads_are_exact():
    """Hedged reads and a plugin's concurrent writes count calls from several threads; the request
    budget is checked against these counts, so none may be lost."""
    import threading

    from airflow_ascora_provider.hooks.http_client import CallStats

    stats = CallStats()

    def work():
        for _ in range(20_000):
            stats.count("GET /x", calls=1, retries=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (stats.calls, stats.retries, stats.by_path["GET /x"]) == (160_000, 160_000, 160_000)


def test_a_client_sharing_a_warm_deadline_gives_up_on_a_stall_at_once(service):
    """A hook's send-once client (notes, uploads) makes a handful of calls: with a deadline of its own
    it would still be warming up, and each stalled create would cost the whole timeout. Sharing the
    main client's, it gives up after what the service's answers taught."""
    url, handler = service
    main, _ = _client(url, timeout=6.0)
    _warm(lambda: main.json("POST", "/records", json={}))
    once = ApiClient(url, timeout=6.0, retry=RetryPolicy(max_attempts=1), deadline=main.deadline)
    alone = ApiClient(url, timeout=6.0, retry=RetryPolicy(max_attempts=1))
    assert alone.deadline.first_attempt("POST /notes") == 6.0  # cold: the whole timeout

    handler.script = [3.0]  # the create is stuck
    started = time.monotonic()
    with pytest.raises(Exception, match="ReadTimeout"):
        once.json("POST", "/notes", json={})
    assert time.monotonic() - started < 1.5  # the learned 0.6 s, not 6 s (nor the 3 s stall)
    assert main.deadline is once.deadline
