"""Take docs/screenshot.png: the chat page with a short conversation answered by the bundled model.

Run with ``make screenshot`` (embedded PostgreSQL and Valkey are started for it), or
``python -m core.launcher run -- python scripts/screenshot.py [--output docs/screenshot.png] [--dark]``.

It migrates the database, makes a user ``demo`` with a few conversations, starts a real Daphne
server, logs in with Debian's Chromium (``/usr/bin/chromium``, driven by Playwright), asks the
questions through the UI and waits for the model's streamed answers, then saves the screenshot.
The demo conversations are deleted again at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 (needs BASE_DIR on the path)
from tests.servers import stop_process  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number, in a code block.",
]
OTHER_TITLES = ["Trip to Lyon", "Sourdough starter tips", "Explain pgvector indexes"]
PASSWORD = "demo-screenshot-password"  # noqa: S105 - a throwaway local account


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=BASE_DIR / "docs" / "screenshot.png")
    parser.add_argument("--dark", action="store_true", help="dark colour scheme")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (e.g. 390: a phone)")
    parser.add_argument("--height", type=int, default=760, help="viewport height in CSS pixels")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()
    from django.core.management import call_command
    from playwright.sync_api import sync_playwright

    from accounts.models import User
    from chat.models import Conversation
    from chat.services import conversation_create
    from tests.servers import free_port

    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="demo")
    user.set_password(PASSWORD)
    user.save()
    Conversation.objects.filter(owner=user).delete()
    for title in OTHER_TITLES:
        conversation_create(owner=user, title=title)

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    command = [sys.executable, "-m", "config.web", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    daphne = subprocess.Popen(command, cwd=BASE_DIR, env=os.environ, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base_url + "/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if daphne.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit("daphne did not start:\n" + log.read().decode()[-3000:])
            time.sleep(0.2)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(
                viewport={"width": args.width, "height": args.height},
                device_scale_factor=1,
                color_scheme="dark" if args.dark else "light",
                # wait_for_function below evaluates a string, which the page's CSP (no eval) refuses.
                bypass_csp=True,
            )
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(base_url + "/login/")
            page.get_by_label("Username").fill("demo")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            for number, question in enumerate(QUESTIONS, start=1):
                page.get_by_label("Message").fill(question)
                page.get_by_label("Message").press("Enter")
                if number == 1:  # sent from the home page: it moves to the new conversation
                    page.wait_for_url(re.compile(r"/c/[0-9a-f-]+/$"))
                    page.wait_for_selector("#main[data-connected=true]")
                page.wait_for_function(
                    "n => document.querySelectorAll('.message.assistant:not([data-status=streaming])').length >= n",
                    arg=number,
                )
            page.get_by_label("Message").fill("Thanks! Now in JavaScript?")
            page.wait_for_timeout(300)
            page.mouse.move(5, 700)  # no hover effects in the picture
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output))
            browser.close()
        print(f"Wrote {args.output}")
    finally:
        stop_process(daphne)
        log.close()
        Conversation.objects.filter(owner=user).delete()


if __name__ == "__main__":
    main()
