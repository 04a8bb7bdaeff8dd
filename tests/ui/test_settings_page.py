"""The settings page in a real browser, under the Content-Security-Policy: memory on, a note added, deleted."""

from __future__ import annotations

import pytest

from accounts.models import User
from agents.models import Memory, MemoryKind

from .conftest import log_in
from .test_csp import LISTEN, violations

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_user_turns_memory_on_adds_a_note_and_deletes_their_memories(csp_page, live_server_url, user, local_model):
    page = csp_page
    # The first note loads the embedding model in the server (EMBEDDING_PRELOAD is off in tests): ~13 s
    # alone, longer on a busy machine.
    page.set_default_timeout(120_000)
    page.add_init_script(LISTEN)
    page.console_csp = []
    page.on("console", lambda m: "Content Security Policy" in m.text and page.console_csp.append(m.text))
    log_in(page, live_server_url, user)

    page.goto(f"{live_server_url}/")
    page.get_by_role("link", name="Settings").click()
    page.wait_for_url(f"{live_server_url}/settings/")
    assert "Memory is off." in page.locator("#memory-state").inner_text()

    page.get_by_role("button", name="Turn memory on").click()
    page.wait_for_selector("text=Memory is on.")
    assert User.objects.get(pk=user.pk).memory_enabled is True

    page.get_by_label("Something to remember").fill("I prefer metric units.")
    page.get_by_role("button", name="Remember").click()
    page.wait_for_selector(".memory-list >> text=I prefer metric units.")
    assert page.get_by_role("status").first.inner_text() == "Remembered."
    note = Memory.objects.get(owner=user)
    assert note.kind == MemoryKind.NOTE

    page.get_by_label("Something to remember").fill("I live in Porto.")
    page.get_by_role("button", name="Remember").click()
    page.wait_for_selector(".memory-list >> text=I live in Porto.")
    page.get_by_role("button", name="Delete memory: I prefer metric units.").click()
    page.wait_for_selector("text=Memory deleted.")
    assert list(Memory.objects.values_list("content", flat=True)) == ["I live in Porto."]

    page.get_by_text("Delete all memories").click()  # the <details> that holds the button
    page.get_by_role("button", name="Delete all 1 memories").click()
    page.wait_for_selector("text=No memories yet.")
    assert not Memory.objects.exists()
    assert not violations(page)
