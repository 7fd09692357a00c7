"""The Salesforce session retries by the provider's one retry rule, over real HTTP.

simple-salesforce retries nothing and sets no timeout; the plugin's session adapter sends every
request through ``send_with_retries`` (the rule every ``ApiClient`` hook follows) with a bounded
timeout. A tiny local server plays the misbehaving org: answers 503 before it succeeds, stalls, or
presents a certificate nobody trusts.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from airflow_ascora_provider.destinations.salesforce.connection import QuotaGuard, Settings, build_session
from airflow_ascora_provider.hooks.http_client import CallStats, RetryPolicy


class _Org(BaseHTTPRequestHandler):
    """Answers from a script: each entry is ``(status, delay seconds)`` for one request, in order."""

    script: list[tuple[int, float]] = []
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).seen.append(self.path)
        status, delay = type(self).script.pop(0) if type(self).script else (200, 0.0)
        if delay:
            time.sleep(delay)
        body = b'{"ok": true}' if status == 200 else b'[{"errorCode": "SERVER_UNAVAILABLE"}]'
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def org():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Org)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Org.script, _Org.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}", _Org
    server.shutdown()
    server.server_close()


def _session(timeout: float = 30.0, max_attempts: int = 4, **settings):
    waits: list[float] = []
    retry = RetryPolicy(max_attempts=max_attempts, sleep=waits.append)
    stats = CallStats()
    options = {"timeout": timeout} | settings
    session = build_session(Settings.from_sources({}, options), QuotaGuard(5.0, None, 60.0), retry, stats)
    return session, stats, waits


def test_server_errors_are_retried_through_the_policy_and_counted(org):
    url, handler = org
    handler.script = [(503, 0.0), (503, 0.0)]
    session, stats, waits = _session()

    response = session.get(f"{url}/services/data/v62.0/limits")

    assert response.status_code == 200 and response.json() == {"ok": True}
    assert (stats.calls, stats.retries, stats.server_errors) == (3, 2, 2)
    assert len(waits) == 2 and all(w >= 0.2 for w in waits)  # Retry-After: 0 still waits the minimum
    assert stats.by_path == {"GET /services/data/v62.0/limits": 3}


def test_the_last_answer_is_returned_when_attempts_run_out(org):
    url, handler = org
    handler.script = [(503, 0.0)] * 5
    session, stats, _ = _session(max_attempts=3)

    assert session.get(f"{url}/services/data/v62.0/limits").status_code == 503
    assert (stats.calls, stats.retries) == (3, 2)


def test_a_stalled_answer_costs_one_timeout_and_a_retry(org):
    url, handler = org
    handler.script = [(200, 2.0)]  # the first answer stalls past the 0.5 s timeout
    session, stats, waits = _session(timeout=0.5)

    started = time.monotonic()
    response = session.get(f"{url}/services/data/v62.0/limits")

    assert response.status_code == 200
    assert time.monotonic() - started < 1.9  # the stall was not waited out
    assert (stats.calls, stats.transport_errors, stats.retries) == (2, 1, 1) and len(waits) == 1


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be seconds above 0"):
        Settings.from_sources({}, {"timeout": 0})


def test_an_untrusted_certificate_is_not_retried(tmp_path):
    from airflow_ascora_provider.sandbox.dataverse import TlsServedApp, self_signed_certificate
    from airflow_ascora_provider.sandbox.salesforce import create_app

    with TlsServedApp(create_app(), certificate=self_signed_certificate(tmp_path)) as served:
        session, stats, waits = _session()  # no CA bundle: the org's certificate is not trusted
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"{served.url}/services/data/")
    assert stats.calls == 1 and stats.retries == 0 and waits == []
