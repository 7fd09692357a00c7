"""The reports page in a real browser, served by a real ``airflow api-server``.

A migration run (the DAG's operators against the emulators, see ``tests/ui_scenario.py``) fills a
ledger; ``airflow api-server`` starts on a free port with SimpleAuthManager and the plugin loaded from
its entry point; a token comes from the auth manager's login endpoint; headless Chromium (Debian's
package, driven over the DevTools protocol) opens the run's page with the UI's session cookie, takes a
screenshot and reads what a person would see. Without the cookie the same page refuses the browser.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from itertools import count
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.ui_scenario import RUN_ID, run_migration

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,1800"]
PASSWORD = "vera-browser-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def _stop(process: subprocess.Popen) -> None:
    """End the process we started and its own children (its process group, by its id)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, airflow_db):
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (scripts/ensure-services.sh installs Debian's "
                    "chromium package when apt is reachable)")
    migrated = run_migration(tmp_path_factory)
    home = tmp_path_factory.mktemp("api-server")
    (home / "passwords.json").write_text(json.dumps({"vera": PASSWORD}))
    port = _free_port()
    env = {**os.environ,
           "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
                                          "SimpleAuthManager",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "vera:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "ASCORA_LEDGER_URL": migrated["ledger_url"]}
    log = (home / "api-server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port",
                                str(port), "--workers", "1", "--apps", "core"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def healthy():
        if process.poll() is not None:
            raise RuntimeError(f"api-server exited: {(home / 'api-server.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 120, "airflow api-server")
        yield {"base": base, "migrated": migrated, "home": home}
    finally:
        _stop(process)
        log.close()


class Browser:
    """Headless Chromium over the DevTools protocol (one page)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        port = _wait(lambda: port_file.exists() and port_file.read_text().split("\n")[0], 30, "Chromium")
        targets = _wait(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                                 if t["type"] == "page"], 20, "a Chromium page")
        self.ws = connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        self.ids = count(1)
        self.send("Page.enable")
        self.send("Network.enable")

    def send(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("method") == "Page.loadEventFired":
                return
        raise TimeoutError(f"{url} did not load")

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()
        _stop(self.process)


def _png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct byte values in the image rows (a blank page has few)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_reports_page_in_headless_chromium(api_server, tmp_path):
    base = api_server["base"]
    login = httpx.post(f"{base}/auth/token", json={"username": "vera", "password": PASSWORD})
    assert login.status_code == 201, login.text
    token = login.json()["access_token"]
    page_url = f"{base}/ascora-migrations/runs/{quote(RUN_ID, safe='')}"
    browser = Browser(tmp_path / "chromium-profile")
    try:
        # Without Airflow's session cookie the browser is refused.
        browser.open(page_url)
        assert "Not authenticated" in browser.evaluate("document.body.innerText")

        # With it (what the UI sets after login) the run's page renders.
        browser.send("Network.setCookie", name="_token", value=token, url=f"{base}/", httpOnly=True)
        browser.open(page_url)
        text = browser.evaluate("document.body.innerText")
        shot = tmp_path / "reports-page.png"
        data = browser.screenshot(shot)
        if os.environ.get("ASCORA_UI_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["ASCORA_UI_SCREENSHOT_DIR"]) / shot.name)
        for heading in ("Field map: proposed and approved", "Compatibility", "Data quality (audit)",
                        "Sample: field-level diff", "Reconciliation", "Quarantine", "Delta runs", "Rollback",
                        "Reports and downloads"):
            assert heading in text, heading
        assert f"twenty full run {RUN_ID}" in text
        assert "Approved by Priya (ops)" in text
        assert "Every record accounted for." in text
        assert "signed in as vera" in text
        bars = browser.evaluate("document.querySelectorAll('svg.chart rect').length")
        assert bars > 8, "the reconciliation chart has no bars"
        width, height, distinct = _png_facts(data)
        assert width == 1280 and height > 1800, (width, height)
        assert distinct > 40, "the screenshot looks blank"

        # The runs list links to the run; the CSV link downloads with the same session.
        browser.open(f"{base}/ascora-migrations/")
        assert RUN_ID in browser.evaluate("document.body.innerText")
        href = browser.evaluate("document.querySelector('a[href$=\"/csv/reconciliation.csv\"]') === null")
        assert href is True  # the list page has no downloads; the run page does:
        browser.open(page_url)
        csv_link = browser.evaluate("document.querySelector('a[href$=\"/csv/reconciliation.csv\"]').href")
        response = httpx.get(csv_link, cookies={"_token": token})
        assert response.status_code == 200 and response.text.startswith("object,read,staged,loaded")
    finally:
        browser.close()
