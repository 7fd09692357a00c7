"""The provider's retry rule for code that speaks ``requests`` rather than httpx.

Two libraries the provider builds on bring their own HTTP session: simple-salesforce (behind
Airflow's SalesforceHook) and msal (the Dataverse hook's sign-in). Neither retries nor sets a
timeout. :func:`policy_adapter` mounts on such a session and sends each request through
:func:`~airflow_ascora_provider.hooks.http_client.send_with_retries`, the rule every ``ApiClient``
follows, so a 429 from the sign-in endpoint or a dropped connection to an org is retried, waited
and counted like any other call (and the fault soak can compress those waits like any other).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from airflow_ascora_provider.hooks.http_client import AnswerDeadline, CallStats, RetryPolicy, route_of, send_with_retries


def is_certificate_error(exc: BaseException | None) -> bool:
    """An untrusted or mismatched certificate: the same on every attempt, so never retried."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return True
        nested = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = exc.__cause__ or exc.__context__ or (nested[0] if nested else None)
    return False


def policy_adapter(retry: RetryPolicy, timeout: float, stats: CallStats, name: str) -> Any:
    """A ``requests`` transport adapter that sends every request under ``retry``.

    urllib3 itself retries nothing (``max_retries=0``). A reply is read in full inside the attempt, so
    one cut off mid-body is a transport error retried like a dropped connection. A request sent
    without a timeout gets ``timeout``: connect at most 10 s, read ``timeout``.
    """
    from requests.adapters import HTTPAdapter
    from requests.exceptions import ChunkedEncodingError, ConnectionError, SSLError, Timeout

    def untrusted(exc: BaseException) -> bool:
        return isinstance(exc, SSLError) and is_certificate_error(exc)

    deadline = AnswerDeadline(timeout)
    connect = min(timeout, 10.0)

    class PolicyAdapter(HTTPAdapter):
        def __init__(self):
            super().__init__(max_retries=0)
            self.deadline = deadline

        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            # A caller's own timeout (a bulk upload) is kept; otherwise the first attempt waits what the
            # service's recent answers say, the next ones after a timeout the full ``timeout``.
            learned = timeout is None
            route = route_of(request.method, request.path_url)
            current = [(connect, deadline.first_attempt(route)) if learned else timeout]

            def attempt():
                started = time.monotonic()
                try:
                    response = super(PolicyAdapter, self).send(request, stream=stream, timeout=current[0],
                                                               verify=verify, cert=cert, proxies=proxies)
                    if not stream:
                        response.content  # noqa: B018 - read the whole body now, while a retry is possible
                except Timeout:
                    if learned:
                        current[0] = (connect, deadline.timeout)
                    raise
                deadline.answered(route, time.monotonic() - started, response.status_code)
                return response

            return send_with_retries(attempt, request.method, request.path_url, retry=retry, stats=stats, name=name,
                                     transport_errors=(ConnectionError, ChunkedEncodingError, Timeout),
                                     fatal=untrusted)

    return PolicyAdapter()


def mount_policy(session: Any, retry: RetryPolicy, timeout: float, stats: CallStats, name: str) -> Any:
    """``session`` with :func:`policy_adapter` on http and https; returns the session."""
    adapter = policy_adapter(retry, timeout, stats, name)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
