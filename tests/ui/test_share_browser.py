"""A share link in a real browser: the owner creates it on the conversation page, and a visitor who is
not logged in opens it (``SHARE_PUBLIC=true`` in this module's server), with nothing of it running as script."""

from __future__ import annotations

import pytest

from chat.models import MessageStatus, Role
from chat.services import conversation_create
from tests.factories import message_add
from tests.servers import stop_process

from .conftest import daphne_env, log_in, open_page, start_daphne
from .xss_payloads import PAYLOADS

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def live_server_url(chromium, django_db_setup, django_db_blocker) -> str:
    """This module's own Daphne, with ``SHARE_PUBLIC=true`` (the shared conftest's has the default, false)."""
    from django.db import connection

    env = daphne_env(connection.settings_dict["NAME"])
    env["SHARE_PUBLIC"] = "true"
    process, base_url, log = start_daphne(env)
    try:
        yield base_url
    finally:
        stop_process(process)
        log.close()


def test_a_share_link_made_on_the_conversation_page_opens_logged_out(
    chromium, browser_page, live_server_url, user, local_model
):
    conversation = conversation_create(owner=user, title="Trip to Lyon")
    message_add(conversation=conversation, role=Role.USER, content="Where should I eat in Lyon?")
    message_add(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="Try a **bouchon** in the old town.\n\n" + "\n\n".join(PAYLOADS),
        status=MessageStatus.COMPLETE,
    )
    message_add(conversation=conversation, role=Role.USER, content="\n".join(PAYLOADS))

    owner = browser_page
    log_in(owner, live_server_url, user)
    owner.goto(f"{live_server_url}/c/{conversation.pk}/")
    owner.get_by_text("Share", exact=True).click()
    owner.get_by_label("Expires").select_option("7")
    owner.get_by_role("button", name="Create link").click()
    link = owner.get_by_label("Share link")
    link.wait_for(state="visible")
    url = link.input_value()
    assert url.startswith(live_server_url + "/s/")

    visitor = open_page(chromium, bypass_csp=True)  # a new browser context: no session cookie
    try:
        response = visitor.goto(url)
        assert response.status == 200 and visitor.url == url  # not sent to the login page
        assert response.headers["x-robots-tag"] == "noindex, nofollow"
        assert visitor.locator("h1").text_content() == "Trip to Lyon"
        visitor.wait_for_selector(".message.assistant .content strong")
        assert visitor.locator(".message.assistant .content strong").first.text_content() == "bouchon"
        assert visitor.locator(".message.user .content").first.text_content() == "Where should I eat in Lyon?"
        assert visitor.locator(".message.user .content").nth(1).text_content() == "\n".join(PAYLOADS)
        assert visitor.evaluate("window.__xss") is None and visitor.dialogs == []
        assert visitor.get_by_role("link", name="Log in to continue this chat").is_visible()
        assert not visitor.locator(f"a[href*='{conversation.pk}']").count()
    finally:
        visitor.context.close()
