"""Import in a real browser, under the Content-Security-Policy: the settings page uploads a hand-written
ChatGPT export, follows the job while a worker runs it, and shows the per-conversation report."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat.models import Conversation, ImportJob
from chat.services import import_job_run

from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "chatgpt_conversations.json"


def test_upload_a_chatgpt_export_and_see_the_report(csp_page, live_server_url, user):
    page = csp_page
    log_in(page, live_server_url, user)
    page.goto(live_server_url + "/settings/")
    page.get_by_label("Export file").set_input_files(str(FIXTURE))
    page.get_by_role("button", name="Import").click()

    job = page.locator(".import-job").first
    job.get_by_text("Waiting for a worker").wait_for()  # no worker in the suite: queued
    # The worker's part, here: the page, polling, reloads once the job is done and shows the report.
    import_job_run(job_id=ImportJob.objects.get(owner=user).pk)
    page.get_by_text("Done: 3 imported, 1 skipped (ChatGPT export).").wait_for()

    rows = page.locator(".import-report tbody tr")
    assert rows.count() == 4
    capitals = page.locator("tr", has_text="Capitals")
    assert capitals.locator("td").nth(1).inner_text() == "imported"
    assert capitals.locator("td").nth(2).inner_text() == "4"
    empty = page.locator("tr", has_text="Empty chat")
    assert empty.locator("td").nth(1).inner_text() == "skipped"
    assert "No text messages" in empty.locator("td").nth(3).inner_text()
    # A title from the file is text, never markup.
    assert page.get_by_role("link", name="<script>alert(1)</script> Greetings").is_visible()
    assert page.dialogs == []

    capitals.get_by_role("link", name="Capitals").click()
    page.get_by_text("About 2.8 million people live in Rome.").wait_for()
    assert "What is the capital of France?" not in page.content()  # the abandoned branch
    assert Conversation.objects.filter(owner=user).count() == 3
