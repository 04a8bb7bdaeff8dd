"""Images in a real browser: attach with the file input, ask, see the thumbnail and the answer; the
model (tests/servers.py's scripted OpenAI-compatible server) receives the image on the first turn and
on a follow-up."""

from __future__ import annotations

import pytest

from chat.models import Attachment, Message, Role
from chat.services import conversation_create
from inference.models import ModelConfig, Provider
from tests.factories import data_url_bytes, image_parts, png_bytes
from tests.servers import ScriptedServer

from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def vision_model(server: ScriptedServer) -> ModelConfig:
    return ModelConfig.objects.create(
        slug="eyes",
        display_name="Eyes",
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=server.base_url,
        max_retries=0,
        supports_vision=True,
        cache_policy="never",
    )


def attach(page, name: str = "red.png") -> None:
    page.set_input_files("#attach-input", files=[{"name": name, "mimeType": "image/png", "buffer": png_bytes()}])
    page.locator("#attachments li[data-id] img").wait_for(state="visible")


def test_attach_an_image_ask_and_follow_up(browser_page, live_server_url, user, local_model):
    page = browser_page
    with ScriptedServer(["ok"]) as server:
        model = vision_model(server)
        conversation = conversation_create(owner=user, model=model)
        log_in(page, live_server_url, user)
        page.goto(f"{live_server_url}/c/{conversation.pk}/")
        attach(page)
        page.get_by_label("Message").fill("What colour is this?")
        page.get_by_label("Message").press("Enter")

        thumbnail = page.locator(".message.user .images img")
        thumbnail.wait_for(state="visible")
        page.locator(".message.assistant .content", has_text="Hello there!").wait_for()
        assert thumbnail.evaluate("img => img.complete && img.naturalWidth") > 0  # served to its owner
        assert page.locator("#attachments li").count() == 0  # sent: the composer is empty again

        page.get_by_label("Message").fill("Are you sure?")
        page.get_by_label("Message").press("Enter")
        page.locator(".message.assistant .content", has_text="Hello there!").nth(1).wait_for()

    stored = Attachment.objects.get()
    with stored.file.open("rb") as file:
        image = file.read()
    posts = [r for r in server.requests if "messages" in r]
    assert len(posts) == 2
    for post in posts:  # the first turn and the follow-up both carry the image
        received = [data_url_bytes(p["image_url"]["url"]) for parts in image_parts(post) for p in parts]
        assert received == [image]
    assert Message.objects.get(conversation=conversation, role=Role.USER, content="What colour is this?") == (
        stored.message
    )


def test_a_first_message_with_an_image_from_the_home_page(browser_page, live_server_url, user, local_model):
    page = browser_page
    with ScriptedServer(["ok"]) as server:
        vision_model(server)
        log_in(page, live_server_url, user)
        page.goto(live_server_url + "/")
        page.get_by_label("Model").select_option("eyes")
        attach(page)
        page.get_by_label("Message").fill("Describe this image.")
        page.get_by_label("Message").press("Enter")
        page.wait_for_url("**/c/**")
        page.locator(".message.user .images img").wait_for(state="visible")
        page.locator(".message.assistant .content", has_text="Hello there!").wait_for()
    assert len(image_parts(server.requests[-1])[-1]) == 1
