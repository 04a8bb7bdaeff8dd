"""The prompt library in a real browser: "/" in the composer lists the prompts and inserts one with its
first {{variable}} selected, ready to be typed over."""

from __future__ import annotations

import pytest

from chat.models import Conversation, PromptVisibility
from chat.services import prompt_create
from conftest import make_user

from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def selection(page) -> str:
    return page.evaluate(
        "(() => { const t = document.getElementById('prompt'); "
        "return t.value.slice(t.selectionStart, t.selectionEnd); })()"
    )


def test_slash_lists_prompts_and_inserts_one_with_its_placeholders_selected(
    browser_page, live_server_url, user, local_model
):
    prompt_create(owner=user, title="Translate", text="Translate into {{language}}:\n\n{{ text }}")
    prompt_create(owner=user, title="Summarise", text="Summarise this:")
    prompt_create(
        owner=make_user("bob"), title="Team greeting", text="Hello team", visibility=PromptVisibility.EVERYONE
    )
    prompt_create(owner=make_user("carol"), title="Carol's private", text="secret")

    page = browser_page
    log_in(page, live_server_url, user)
    page.goto(live_server_url + "/")
    composer = page.get_by_label("Message")
    composer.press_sequentially("/")
    menu = page.get_by_role("listbox", name="Prompts")
    menu.get_by_role("option", name="Translate").wait_for()
    assert menu.get_by_role("option").all_inner_texts() == ["Summarise", "Team greeting · bob", "Translate"]

    composer.press_sequentially("tra")
    assert menu.get_by_role("option").all_inner_texts() == ["Translate"]
    composer.press("Enter")  # inserts the prompt; sends nothing
    assert menu.is_hidden()
    assert composer.input_value() == "Translate into {{language}}:\n\n{{ text }}"
    assert selection(page) == "{{language}}"
    composer.press_sequentially("French")
    composer.press("Tab")
    assert selection(page) == "{{ text }}"
    composer.press_sequentially("Bonjour")
    assert composer.input_value() == "Translate into French:\n\nBonjour"
    assert page.url == live_server_url + "/" and not Conversation.objects.exists()

    # Escape closes the list and keeps what was typed; arrows choose among several.
    composer.fill("")
    composer.press_sequentially("/")
    menu.get_by_role("option", name="Translate").wait_for()
    composer.press("ArrowDown")
    composer.press("Enter")
    assert composer.input_value() == "Hello team"
    composer.fill("")
    composer.press_sequentially("/s")
    composer.press("Escape")
    assert menu.is_hidden() and composer.input_value() == "/s"
