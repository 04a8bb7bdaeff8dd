"""Edit and branch in a real browser: edit a question, get a second answer, switch back, reload.

Sync Playwright in plain (not async) tests: its sync API refuses to run inside a running event loop.
"""

from __future__ import annotations

import pytest

from chat.models import MessageStatus
from chat.services import conversation_create, message_finalize, message_send
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_edit_a_question_then_switch_back_to_the_first_answer_and_it_stays_after_a_reload(
    browser_page, live_server_url, user, local_model
):
    # A real OpenAI-compatible server answers the edited question; the first answer is stored.
    with ScriptedServer(["ok"], words=("Rome", " it", " is.")) as server:
        ModelConfig.objects.create(
            slug="scripted",
            display_name="Scripted",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
        )
        conversation = conversation_create(owner=user)
        first = message_send(conversation=conversation, content="Capital of France?", model_slug="scripted")
        message_finalize(
            message_id=first.assistant_message.pk, content="Paris is the capital.", status=MessageStatus.COMPLETE
        )

        page = browser_page
        log_in(page, live_server_url, user)
        page.goto(f"{live_server_url}/c/{conversation.pk}/")
        page.wait_for_selector("#main[data-connected=true]")
        question = page.locator(".message.user")
        assert question.locator(".versions").is_hidden()  # one version: no switcher

        # Edit: an inline box, "Cancel" leaves the question as it was.
        question.get_by_role("button", name="Edit").click()
        box = page.get_by_label("Edit your message")
        assert box.input_value() == "Capital of France?"
        page.get_by_role("button", name="Cancel").click()
        assert box.count() == 0
        assert question.locator(".content").inner_text() == "Capital of France?"

        question.get_by_role("button", name="Edit").click()
        page.get_by_label("Edit your message").fill("Capital of Italy?")
        page.get_by_role("button", name="Save & submit").click()

        # The new branch: the edited question, its own answer, and "2 / 2" on the question.
        page.wait_for_selector(".message.user .version-label >> text='2 / 2'")
        page.wait_for_selector(".message.assistant[data-status=complete]")
        assert page.locator(".message.user .content").all_inner_texts() == ["Capital of Italy?"]
        assert page.locator(".message.assistant .content").all_inner_texts() == ["Rome it is."]
        assert len(server.requests) == 1
        assert [m["content"] for m in server.requests[0]["messages"] if m["role"] != "system"] == ["Capital of Italy?"]

        # Back to the first version: its answer comes back with it, without a page load.
        page.evaluate("window.__samePage = true")
        page.get_by_role("button", name="Previous version of this message").click()
        page.wait_for_selector(".message.assistant .content >> text='Paris is the capital.'")
        assert page.evaluate("window.__samePage") is True
        assert page.locator(".message.user .content").all_inner_texts() == ["Capital of France?"]
        assert page.locator(".message.user .version-label").inner_text() == "1 / 2"
        assert page.get_by_role("button", name="Previous version of this message").is_disabled()

        # The choice is stored: a reload shows the same branch.
        page.reload()
        page.wait_for_selector("#main[data-connected=true]")
        assert page.locator(".message.user .content").all_inner_texts() == ["Capital of France?"]
        assert page.locator(".message.assistant .content").all_inner_texts() == ["Paris is the capital."]
        assert page.locator(".message.user .version-label").inner_text() == "1 / 2"

        # And forward again, to the edited branch.
        page.get_by_role("button", name="Next version of this message").click()
        page.wait_for_selector(".message.assistant .content >> text='Rome it is.'")
    assert conversation.messages.count() == 4  # both branches kept
