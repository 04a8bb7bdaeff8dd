"""Browser tests: a live Daphne server (HTTP + WebSocket) and Debian's headless Chromium via Playwright.

Daphne runs as a subprocess on the test database, so the tests use ``django_db(transaction=True)``:
what a test writes is committed and visible to the server. Playwright's own browser download does
not work here (FACTS.md), so the tests drive ``/usr/bin/chromium`` and skip when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from conftest import session_cookie
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.servers import free_port, stop_process

BASE_DIR = Path(__file__).resolve().parents[2]


def daphne_env(database_name: str) -> dict[str, str]:
    """Return this process's environment, pointed at the test database ``database_name``."""
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set for this process only (see ``chromium``)
    env["DATABASE_URL"] = urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + database_name))
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    env["WEB_STOP_GRACE_SECONDS"] = "2"  # a test's server stops within stop_process's 10 s, turns or not
    return env


def start_daphne(env: dict[str, str], port: int | None = None) -> tuple[subprocess.Popen, str, object]:
    """Start the web process (the Procfile's: ``python -m config.web``, Daphne) on loopback ``port`` (default: a
    free one); return ``(process, base_url, log)`` once it answers."""
    port = port or free_port()
    # A file, not a pipe: a full pipe would block the server.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "config.web", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        env=env,
        cwd=BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"daphne exited: {log.read().decode()[-3000:]}")
        try:
            if httpx.get(base_url + "/health/", timeout=1).status_code == 200:
                return process, base_url, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("daphne did not start within 60 s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's tests (skipped when Debian's chromium is not installed)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop marked as running in this thread (it switches to
    # it with greenlets), so Django would refuse the tests' ORM calls as "async". They are plain
    # synchronous calls: allow them, in this process and for this module only.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live_server_url(chromium, django_db_setup, django_db_blocker) -> str:
    """Base URL of a Daphne process serving the test database (started once per module)."""
    from django.db import connection

    process, base_url, log = start_daphne(daphne_env(connection.settings_dict["NAME"]))
    try:
        yield base_url
    finally:
        stop_process(process)
        if os.environ.get("PARLEY_UI_SERVER_LOG"):  # debugging aid: print what the server logged
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-5000:])
        log.close()


def open_page(chromium, *, bypass_csp: bool):
    """Return a page in a fresh browser context; ``page.requests`` lists every URL it requested."""
    context = chromium.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=bypass_csp)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.dialogs = []

    def on_dialog(dialog):
        # Recorded (a payload's alert() would show here); confirmations ("Delete ...?") are accepted.
        page.dialogs.append(dialog.message)
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()

    page.on("dialog", on_dialog)
    return page


@pytest.fixture
def browser_page(chromium, live_server_url):
    """A fresh page that ignores the Content-Security-Policy (``tests/ui/test_csp.py`` tests it).

    The XSS tests then prove the rendering safe on its own, not thanks to the policy; and
    Playwright's ``wait_for_function`` evaluates strings, which the policy (no eval) would refuse.
    """
    page = open_page(chromium, bypass_csp=True)
    yield page
    page.context.close()


@pytest.fixture
def csp_page(chromium, live_server_url):
    """A fresh page under the Content-Security-Policy, as every real browser is."""
    page = open_page(chromium, bypass_csp=False)
    yield page
    page.context.close()


def log_in(page, base_url: str, user) -> None:
    """Give the page's browser a session of ``user`` (the login form itself is tested elsewhere)."""
    host = urlsplit(base_url).hostname
    page.context.add_cookies([{"name": "sessionid", "value": session_cookie(user), "domain": host, "path": "/"}])
