"""AscoraHook against the emulator over real HTTP: paging, errors, retries, budget and the never-mark rule."""

from __future__ import annotations

import ast
import inspect
import json
import re
import time
from pathlib import Path

import pytest

from airflow_ascora_provider.hooks import ascora as hook_module
from airflow_ascora_provider.hooks.ascora import (
    AscoraApiError,
    AscoraExtensionDisabled,
    AscoraHook,
    ForbiddenAscoraCall,
)
from airflow_ascora_provider.hooks.http_client import RequestBudgetExhausted, RetryPolicy
from airflow_ascora_provider.sandbox.ascora import (
    DEFAULT_API_KEY,
    create_app,
    fixture_tenant_records,
    write_tenant,
)
from airflow_ascora_provider.sandbox.emulator import FaultPlan, ServedApp

KEY = DEFAULT_API_KEY


def gid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def fast_retry(**overrides) -> RetryPolicy:
    settings = {
        "max_attempts": 8,
        "base_delay": 0.01,
        "max_delay": 2.0,
        "min_retry_after": 0.05,
        "jitter": 0.0,
    }
    return RetryPolicy(**(settings | overrides))


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    resources, files = fixture_tenant_records()
    return write_tenant(tmp_path_factory.mktemp("tenant"), resources, files=files)


@pytest.fixture(scope="module")
def server(tenant):
    with ServedApp(create_app(tenant)) as served:
        yield served


@pytest.fixture
def emulator(server):
    """The shared server with a clean log and no faults or limits left over from another test."""
    server.control.reset_log()
    server.control.set_faults(FaultPlan())
    server.control.set_rate_limit(None)
    yield server
    server.control.set_faults(FaultPlan())
    server.control.set_rate_limit(None)


@pytest.fixture
def make_hook(emulator):
    hooks = []

    def make(**kwargs) -> AscoraHook:
        settings = {
            "base_url": emulator.url,
            "api_key": KEY,
            "page_size": 3,
            "retry": fast_retry(),
            "enable_extensions": True,
        } | kwargs
        hook = AscoraHook(**settings)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


# -- reads and paging ---------------------------------------------------------------------------------


def test_paging_walks_every_page_once(make_hook, emulator):
    hook = make_hook()
    customers = list(hook.iter_customers())
    assert len(customers) == 7 == len({c["customerId"] for c in customers})
    calls = emulator.control.calls("GET", "/Customers/Customers")
    assert len(calls) == 3
    assert [re.search(r"Page=(\d+)", r.query).group(1) for r in calls] == ["1", "2", "3"]
    assert all("PageSize=3" in r.query and "SiteBillingType=All" in r.query for r in calls)


def test_the_next_page_is_asked_for_while_this_one_is_consumed(make_hook, emulator):
    """Page 2 is requested before page 1's records are handed on, so its wait overlaps their staging;
    the records still come in page order, each once, and no page past the last is asked for."""
    hook = make_hook()
    pages = hook.iter_customers()
    first = next(pages)
    deadline = time.monotonic() + 2.0
    while len(emulator.control.calls("GET", "/Customers/Customers")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(emulator.control.calls("GET", "/Customers/Customers")) == 2, "page 2 asked for ahead"
    rest = list(pages)
    assert [c["customerId"] for c in [first, *rest]] == [c["customerId"] for c in make_hook().iter_customers()]
    pages_asked = [re.search(r"Page=(\d+)", r.query).group(1) for r in emulator.control.calls("GET", "/Customers/Customers")]
    assert pages_asked == ["1", "2", "3"] * 2


def test_paging_stops_on_an_empty_page(make_hook, emulator):
    hook = make_hook(page_size=7)  # exactly one full page; totalPages says 1, so no second call
    assert len(list(hook.iter_customers())) == 7
    assert len(emulator.control.calls("GET", "/Customers/Customers")) == 1
    assert list(make_hook().iter_jobs(status="DEFERRED")) == []


def test_filters(make_hook):
    hook = make_hook()
    assert len(list(hook.iter_customers("Site"))) == 4
    assert len(list(hook.iter_customers("Billing"))) == 3
    assert len(list(hook.iter_jobs())) == 7  # every status, child jobs included
    assert len(list(hook.iter_jobs(include_child_jobs=False))) == 5
    assert [j["jobNumber"] for j in hook.iter_jobs(status="COMPLETED", include_child_jobs=False)] == ["J1001"]
    assert [j["jobNumber"] for j in hook.iter_jobs(start_date="2025-07-01")] == ["J1002"]
    import datetime as dt

    window = list(
        hook.iter_jobs(start_date=dt.date(2024, 1, 1), end_date=dt.datetime(2024, 12, 31, tzinfo=dt.UTC))
    )
    assert [j["jobNumber"] for j in window] == ["J1004"]
    assert [q["quoteNumber"] for q in hook.iter_quotes("WON")] == ["Q0001"]
    assert [b["trackingNumber"] for b in hook.iter_supplier_invoices(start="2025-07-01")] == ["SUP-001"]


def test_single_reads_and_bare_arrays(make_hook, emulator):
    hook = make_hook()
    assert hook.get_customer(gid(11))["customerName"] == "Acme Depot"
    assert hook.get_job("J1001")["jobId"] == gid(301)
    assert hook.get_quote("Q0001.02")["quoteNumber"] == "Q0001.02"
    assert emulator.control.calls("GET", "/Quotes/Quote/")[-1].path == "/Quotes/Quote/Q0001-02"
    assert hook.get_supplier(gid(501))["name"] == "Reece"
    assert hook.get_supplier_invoice(gid(551))["trackingNumber"] == "SUP-000"
    assert [c["contactId"] for c in hook.contacts_for_customer(gid(11))] == [gid(102)]
    assert hook.get_contact(gid(101))["firstName"] == "First1"
    assert [r["name"] for r in hook.labour_roles()] == ["Plumber", "Apprentice"]
    assert len(hook.standard_sections()) == 2 and len(hook.standard_stages()) == 1
    assert len(list(hook.iter_supplies())) == 3 and len(list(hook.iter_kits())) == 1
    assert len(list(hook.iter_categories())) == 2 and len(list(hook.iter_suppliers())) == 2
    assert len(list(hook.iter_contacts())) == 4


def test_invoices_to_send_is_a_read_only_view(make_hook, emulator):
    hook = make_hook()
    first = [i["invoiceNumber"] for i in hook.invoices_to_send("2031-01-01")]
    second = [i["invoiceNumber"] for i in hook.invoices_to_send("2031-01-01")]
    assert first == second == ["INV-0002", "INV-0003"]  # nothing got marked in between
    assert hook.invoices_to_send("2031-01-01")[0]["invoiceCustomFields"]  # asked for custom fields
    assert emulator.control.calls("POST") == []


# -- errors -------------------------------------------------------------------------------------------


def test_not_found_envelopes_raise_with_ascoras_message(make_hook):
    hook = make_hook()
    cases = (
        (lambda: hook.get_job("J999"), "No Matching Job Found (J999)"),
        (lambda: hook.get_quote("Q404"), "QUOTE-NOT-FOUND"),
        (lambda: hook.get_customer(gid(999)), "No Matching Customer Found"),
    )
    for call, message in cases:
        with pytest.raises(AscoraApiError) as info:
            call()
        assert info.value.ascora_message == message
        assert message in str(info.value)
        assert info.value.status == 200


def test_bad_key_gives_a_clear_401(make_hook):
    hook = make_hook(api_key="not-the-key")
    with pytest.raises(AscoraApiError) as info:
        list(hook.iter_customers())
    assert info.value.status == 401
    assert "Administration → API Settings" in str(info.value)
    assert info.value.ascora_message == "Unauthorised"
    ok, message = hook.test_connection()
    assert ok is False and "API key" in message


def test_bad_parameter_surfaces_as_api_error(make_hook):
    with pytest.raises(AscoraApiError) as info:
        list(make_hook().iter_jobs(status="QUOTED"))
    assert info.value.status == 400 and "JobStatus" in str(info.value)


# -- retries, pacing, budget ---------------------------------------------------------------------------


def test_rate_limit_is_ridden_out(make_hook, emulator):
    emulator.control.set_rate_limit(2, window=1.0)
    hook = make_hook(page_size=3)
    jobs = list(hook.iter_jobs())
    customers = list(hook.iter_customers())
    assert len(jobs) == 7 and len(customers) == 7
    assert hook.stats.throttled > 0
    assert emulator.control.counters["429"] == hook.stats.throttled


def test_server_errors_are_retried(make_hook, emulator):
    emulator.control.set_faults(FaultPlan(rate_5xx=0.3, seed=7))
    hook = make_hook(page_size=2)
    assert len(list(hook.iter_customers())) == 7
    assert len(list(hook.iter_jobs())) == 7
    assert len(list(hook.iter_quotes())) == 3
    assert hook.stats.server_errors > 0 and hook.stats.server_errors == emulator.control.counters["5xx"]


def test_dropped_connections_are_retried(make_hook, emulator):
    emulator.control.set_faults(FaultPlan(rate_drop=0.3, seed=3))
    hook = make_hook(page_size=2)
    assert len(list(hook.iter_customers())) == 7
    assert hook.stats.transport_errors > 0


def test_retry_after_zero_still_waits(make_hook, emulator):
    emulator.control.set_faults(FaultPlan(rate_429=1.0, retry_after="0"))
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    hook = make_hook(retry=fast_retry(max_attempts=3, min_retry_after=0.15, sleep=sleep))
    started = time.monotonic()
    with pytest.raises(AscoraApiError) as info:
        hook.get_job("J1001")
    elapsed = time.monotonic() - started
    assert info.value.status == 429
    assert len(waits) == 2 and all(w >= 0.15 for w in waits)
    assert elapsed >= 0.3
    # and with the faults gone, the same hook recovers
    emulator.control.set_faults(FaultPlan())
    assert hook.get_job("J1001")["jobNumber"] == "J1001"


def test_pacing_spreads_requests(make_hook):
    hook = make_hook(requests_per_minute=600)  # one request per 0.1 s
    started = time.monotonic()
    list(hook.iter_customers())  # 3 pages
    hook.get_job("J1001")
    assert time.monotonic() - started >= 0.25


def test_request_budget_stops_before_the_quota(make_hook, emulator):
    hook = make_hook(request_budget=2)
    with pytest.raises(RequestBudgetExhausted):
        list(hook.iter_customers())  # needs 3 pages
    assert len(emulator.control.calls("GET")) == 2


# -- connection handling -------------------------------------------------------------------------------


def test_connection_from_airflow(monkeypatch, emulator):
    conn = {
        "conn_type": "ascora",
        "host": emulator.url,
        "password": KEY,
        "extra": {"page_size": "2", "enable_extensions": "true", "timeout": "5", "max_attempts": "2"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_TEST", json.dumps(conn))
    hook = AscoraHook("ascora_test")
    try:
        assert hook.page_size == 2 and hook.enable_extensions is True and hook.base_url == emulator.url
        ok, message = hook.test_connection()
        assert ok, message
        assert "7 customers" in message
        assert len(list(hook.iter_customers())) == 7
        assert len(emulator.control.calls("GET", "/Customers/Customers")) == 5  # 1 test + 4 pages of 2
        assert hook.get_conn().retry.max_attempts == 2
    finally:
        hook.close()


def test_connection_defaults(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ASCORA_DEFAULT", json.dumps({"conn_type": "ascora", "password": "k-123456"})
    )
    hook = AscoraHook()
    assert hook.base_url == "https://api.ascora.com.au"
    assert hook.page_size == 250 and hook.enable_extensions is False
    assert hook.get_conn().base_url.startswith("https://api.ascora.com.au")
    assert hook.get_conn()._http.headers["Auth"] == "k-123456"
    assert "authorization" not in hook.get_conn()._http.headers
    hook.close()
    monkeypatch.setenv("AIRFLOW_CONN_ASCORA_NOKEY", json.dumps({"conn_type": "ascora"}))
    with pytest.raises(ValueError, match="API Settings"):
        AscoraHook("ascora_nokey").get_conn()


def test_ui_metadata():
    behaviour = AscoraHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"] == {"host": "API base URL", "password": "API key (Auth header)"}
    widgets = AscoraHook.get_connection_form_widgets()  # {} when wtforms/flask_appbuilder are absent
    assert isinstance(widgets, dict)
    assert (
        AscoraHook.conn_type,
        AscoraHook.conn_name_attr,
        AscoraHook.default_conn_name,
        AscoraHook.hook_name,
    ) == ("ascora", "ascora_conn_id", "ascora_default", "Ascora")


# -- extensions ----------------------------------------------------------------------------------------

EXT_CALLS = {
    "ext_iter_equipment": (),
    "ext_iter_users": (),
    "ext_iter_job_types": (),
    "ext_iter_notes": (),
    "ext_iter_attachments": (),
    "ext_download_attachment": (gid(771),),
    "ext_iter_enquiries": (),
    "ext_iter_form_responses": (),
    "ext_iter_invoices": (),
}


def test_extensions_disabled_refuse_and_point_at_excel(make_hook, emulator):
    hook = make_hook(enable_extensions=False)
    for name, args in EXT_CALLS.items():
        with pytest.raises(AscoraExtensionDisabled, match="Excel export"):
            result = getattr(hook, name)(*args)
            list(result) if not isinstance(result, bytes) else result
    assert emulator.control.requests == []


def test_extension_reads(make_hook):
    hook = make_hook()
    assert len(list(hook.ext_iter_equipment())) == 2
    assert {u["fullName"] for u in hook.ext_iter_users()} == {"Sam Tech", "Alex Office"}
    assert len(list(hook.ext_iter_job_types())) == 2
    assert len(list(hook.ext_iter_notes())) == 3
    assert [n["noteId"] for n in hook.ext_iter_notes("Job", gid(301))] == [gid(751)]
    assert len(list(hook.ext_iter_attachments())) == 2
    assert [a["fileName"] for a in hook.ext_iter_attachments("Job", gid(301))] == ["photo.jpg"]
    assert hook.ext_download_attachment(gid(771)) == b"\xff\xd8JPEG\xff\xd9"
    with pytest.raises(AscoraApiError) as info:
        hook.ext_download_attachment(gid(999))
    assert info.value.status == 404
    assert len(list(hook.ext_iter_enquiries())) == 2
    assert len(list(hook.ext_iter_form_responses())) == 1
    assert len(list(hook.ext_iter_invoices())) == 3


# -- the never-mark rule -------------------------------------------------------------------------------

# Arguments for every public method the hook defines. A new public method without an entry here fails
# the test, so nobody can add a way out of the read-only rule without this test exercising it.
PUBLIC_CALLS = {
    "iter_customers": (),
    "get_customer": (gid(1),),
    "iter_contacts": (),
    "contacts_for_customer": (gid(1),),
    "get_contact": (gid(101),),
    "iter_jobs": (),
    "get_job": ("J1001",),
    "iter_quotes": (),
    "get_quote": ("Q0001.01",),
    "iter_suppliers": (),
    "get_supplier": (gid(501),),
    "iter_supplier_invoices": (),
    "get_supplier_invoice": (gid(551),),
    "iter_supplies": (),
    "iter_kits": (),
    "iter_categories": (),
    "labour_roles": (),
    "standard_sections": (),
    "standard_stages": (),
    "invoices_to_send": ("2031-01-01",),
    "test_connection": (),
    "get_conn": (),
    "get_ui_field_behaviour": (),
    "get_connection_form_widgets": (),
    **EXT_CALLS,
    "close": (),
}


def test_no_public_method_ever_posts_or_marks(make_hook, emulator):
    hook = make_hook()
    public = sorted(
        name
        for name, value in vars(AscoraHook).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, (classmethod, staticmethod)))
    )
    assert set(public) == set(PUBLIC_CALLS), "update PUBLIC_CALLS for new public hook methods"
    before = emulator.control.calls("GET", "/Accounting/GetInvoicesToSend")
    for name in public:
        result = getattr(hook, name)(*PUBLIC_CALLS[name])
        if inspect.isgenerator(result):
            list(result)
    requests = emulator.control.requests
    assert len(requests) >= len(public) - 4  # every reading method really called the server
    assert [r for r in requests if r.method != "GET"] == []
    assert [r for r in requests if re.search(r"mark", r.path, re.IGNORECASE)] == []
    assert len(emulator.control.calls("GET", "/Accounting/GetInvoicesToSend")) == len(before) + 1
    # and the unsent invoices are still unsent
    assert emulator.app.state.ascora.find("invoices", "invoiceId", gid(402))["sentToAccounts"] is False


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/Accounting/MarkInvoicesAsSent"),
        ("POST", "/Accounting/MarkPaymentsAsSent"),
        ("GET", "/Accounting/MarkInvoicesAsSent"),
        ("get", "/accounting/markinvoicesassent"),
        ("POST", "/MarkInvoice"),
        ("POST", "/MarkPayment"),
        ("POST", "/acct/api/MarkPayment"),
        ("GET", "/Accounting/%4DarkInvoicesAsSent"),
        ("GET", "/Accounting/Mark%2549nvoicesAsSent"),
        ("GET", "https://api.ascora.com.au/Accounting/MarkInvoicesAsSent?x=1"),
        ("POST", "/Customers/Customer"),
        ("PUT", "/Jobs/Job"),
    ],
)
def test_the_request_function_refuses_before_sending(make_hook, emulator, method, path):
    hook = make_hook()
    hook.get_conn()
    calls_before = hook.stats.calls
    with pytest.raises(ForbiddenAscoraCall):
        hook._request(method, path, {"InvoiceIds": gid(402)})
    assert emulator.control.requests == []
    assert hook.stats.calls == calls_before


def test_hook_source_names_the_mark_endpoints_only_in_the_guard():
    source = Path(inspect.getsourcefile(hook_module)).read_text(encoding="utf-8")
    guard_lines = [
        i for i, line in enumerate(source.splitlines()) if line.startswith("_FORBIDDEN_PATH = re.compile(")
    ]
    assert len(guard_lines) == 1
    for word in ("MarkInvoicesAsSent", "MarkPaymentsAsSent"):
        hits = [source.count("\n", 0, m.start()) for m in re.finditer(word, source, re.IGNORECASE)]
        assert hits == guard_lines, f"{word} appears outside the guard at lines {hits}"
    assert re.search(r"""["']POST["']""", source) is None
    # Only the private request function talks to the HTTP client, and it always asks for GET.
    tree = ast.parse(source)
    senders = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef):
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr
                    in ("request", "json", "get", "post", "put", "patch", "delete", "stream")
                ):
                    receiver = ast.unparse(node.func.value)
                    if "get_conn()" in receiver or "_client" in receiver or "_http" in receiver:
                        senders.append(
                            (func.name, node.func.attr, ast.unparse(node.args[0]) if node.args else None)
                        )
    assert senders == [("_request", "request", "'GET'")]
