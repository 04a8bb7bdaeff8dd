"""Images in chat: attached by REST (multipart, data URLs, uploaded ids) and the WebSocket, checked and
cleaned before storage, served only to their owner, and sent to a vision model on every turn.

The model is a real OpenAI-compatible server (tests/servers.py's scripted one), which records each
request: the tests assert that the image's bytes are in what it received.
"""

import io

import pytest
from channels.db import database_sync_to_async
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.test import APIClient

from chat.models import Attachment, Message, MessageStatus, Role
from chat.services import conversation_create, conversation_delete
from conftest import make_user
from inference.models import ModelConfig, Provider, TextOnlyImages
from tests.chat.test_websocket import connect, receive_until
from tests.factories import (
    CAMERA_MODEL,
    bomb_png,
    data_url,
    data_url_bytes,
    image_parts,
    jpeg_with_exif,
    png_bytes,
)
from tests.servers import ScriptedServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media_root")]


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


def remote_model(base_url, slug="eyes", **fields) -> ModelConfig:
    fields.setdefault("supports_vision", True)
    return ModelConfig.objects.create(
        slug=slug,
        display_name=slug.title(),
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=base_url,
        max_retries=0,
        temperature=0.0,
        **fields,
    )


def messages_url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.pk}/messages/"


def stored_bytes(attachment_id) -> bytes:
    with Attachment.objects.get(pk=attachment_id).file.open("rb") as file:
        return file.read()


def test_a_multipart_image_reaches_the_model_on_the_first_turn_and_on_a_follow_up(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url)
        conversation = conversation_create(owner=user)
        upload = io.BytesIO(png_bytes(64, 48))
        upload.name = "red.png"
        first = api.post(
            messages_url(conversation), {"content": "What colour is this?", "model": "eyes", "images": [upload]}
        )
        follow_up = api.post(messages_url(conversation), {"content": "Are you sure?"}, format="json")

    assert first.status_code == 201, first.json()
    assert first.json()["assistant_message"]["content"] == "Hello there!"
    attachments = first.json()["user_message"]["attachments"]
    assert [(a["content_type"], a["width"], a["height"]) for a in attachments] == [("image/png", 64, 48)]
    stored = stored_bytes(attachments[0]["id"])
    assert follow_up.status_code == 201, follow_up.json()

    posts = [r for r in server.requests if "messages" in r]
    assert len(posts) == 2
    # Turn 1: the question carries the image.
    question = posts[0]["messages"][-1]
    assert question["content"][0] == {"type": "text", "text": "What colour is this?"}
    assert [data_url_bytes(p["image_url"]["url"]) for p in image_parts(posts[0])[-1]] == [stored]
    # Turn 2: the earlier question still carries the same image; the new one is text.
    [first_question] = [m for m in posts[1]["messages"] if m["role"] == "user" and isinstance(m["content"], list)]
    assert data_url_bytes(first_question["content"][1]["image_url"]["url"]) == stored
    assert posts[1]["messages"][-1] == {"role": "user", "content": "Are you sure?"}


def test_a_data_url_image_is_stored_with_the_message(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url)
        conversation = conversation_create(owner=user)
        response = api.post(
            messages_url(conversation),
            {"content": "", "model": "eyes", "images": [data_url(png_bytes(20, 10))]},
            format="json",
        )
    assert response.status_code == 201, response.json()
    message = response.json()["user_message"]
    assert message["content"] == ""  # an image alone is a message
    assert Attachment.objects.get(pk=message["attachments"][0]["id"]).message_id is not None
    conversation.refresh_from_db()
    assert conversation.title == "Image"
    assert len(image_parts(server.requests[-1])[-1]) == 1


async def test_an_uploaded_image_sent_over_the_websocket_reaches_the_model(local_model):
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    with ScriptedServer(["ok"]) as server:
        await database_sync_to_async(remote_model)(server.base_url)
        client = APIClient()
        await database_sync_to_async(client.force_login)(user)
        upload = io.BytesIO(png_bytes(30, 30))
        upload.name = "square.png"
        uploaded = await database_sync_to_async(client.post)("/api/v1/attachments/", {"file": upload})
        assert uploaded.status_code == 201, uploaded.json()
        image_id = uploaded.json()["id"]

        communicator, connected, _ = await connect(user, conversation.pk)
        assert connected
        await communicator.send_json_to(
            {"type": "message.send", "content": "Describe it.", "model": "eyes", "attachments": [image_id]}
        )
        events = await receive_until(communicator, "generation.completed")
        # The same image cannot be sent again with another message.
        await communicator.send_json_to(
            {"type": "message.send", "content": "Again.", "model": "eyes", "attachments": [image_id]}
        )
        refused = await receive_until(communicator, "error")
        await communicator.disconnect()

    created = events[0]["message"]
    assert [a["id"] for a in created["attachments"]] == [image_id]
    assert created["attachments"][0]["thumbnail_url"] == f"/api/v1/attachments/{image_id}/thumbnail/"
    assert events[-1]["message"]["status"] == "complete"
    stored = await database_sync_to_async(stored_bytes)(image_id)
    assert [data_url_bytes(p["image_url"]["url"]) for p in image_parts(server.requests[-1])[-1]] == [stored]
    assert refused[-1]["code"] == "invalid_attachment"


async def test_a_data_url_image_over_the_websocket_is_stored_and_sent(local_model):
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    with ScriptedServer(["ok"]) as server:
        await database_sync_to_async(remote_model)(server.base_url)
        communicator, _, _ = await connect(user, conversation.pk)
        await communicator.send_json_to(
            {"type": "message.send", "content": "And this?", "model": "eyes", "images": [data_url(png_bytes(8, 8))]}
        )
        events = await receive_until(communicator, "generation.completed")
        await communicator.disconnect()
    assert len(events[0]["message"]["attachments"]) == 1
    assert len(image_parts(server.requests[-1])[-1]) == 1


def test_a_text_only_model_refuses_images_before_anything_is_stored(api, user, local_model):
    conversation = conversation_create(owner=user)
    response = api.post(
        messages_url(conversation), {"content": "What is this?", "images": [data_url(png_bytes())]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_vision_capable"
    assert "cannot read images" in response.json()["error"]["detail"]
    assert not Message.objects.filter(conversation=conversation).exists()
    assert not Attachment.objects.exists()


def test_a_follow_up_on_a_text_only_model_is_refused_while_the_history_holds_an_image(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url)
        conversation = conversation_create(owner=user)
        api.post(
            messages_url(conversation),
            {"content": "Look.", "model": "eyes", "images": [data_url(png_bytes())]},
            format="json",
        )
    response = api.post(messages_url(conversation), {"content": "And now?", "model": "smollm2-135m"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_vision_capable"
    assert Message.objects.filter(conversation=conversation).count() == 2


def test_a_text_only_model_set_to_omit_reads_a_note_where_the_image_was(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url, slug="blind", supports_vision=False, text_only_images=TextOnlyImages.OMIT)
        conversation = conversation_create(owner=user)
        response = api.post(
            messages_url(conversation),
            {"content": "What is this?", "model": "blind", "images": [data_url(png_bytes())]},
            format="json",
        )
    assert response.status_code == 201, response.json()
    question = server.requests[-1]["messages"][-1]
    assert question["content"] == "What is this?\n[image omitted: the model blind cannot see images]"


def test_images_over_the_models_pixel_cap_are_resized_with_their_aspect_kept(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url, image_max_pixels=64)
        conversation = conversation_create(owner=user)
        api.post(
            messages_url(conversation),
            {"content": "Big", "model": "eyes", "images": [data_url(png_bytes(200, 100)), data_url(png_bytes(40, 30))]},
            format="json",
        )
    sent = [Image.open(io.BytesIO(data_url_bytes(p["image_url"]["url"]))) for p in image_parts(server.requests[-1])[-1]]
    assert [image.size for image in sent] == [(64, 32), (40, 30)]  # the small one is not shrunk


def test_two_different_images_never_share_a_cached_answer(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url)  # temperature 0: answers are cached
        for color in [(255, 0, 0), (0, 0, 255), (255, 0, 0)]:
            conversation = conversation_create(owner=user)
            response = api.post(
                messages_url(conversation),
                {"content": "What colour?", "model": "eyes", "images": [data_url(png_bytes(color=color))]},
                format="json",
            )
            assert response.status_code == 201
    assert len([r for r in server.requests if "messages" in r]) == 2  # red, blue; red again from the cache
    assert response.json()["assistant_message"]["cached"] is True


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (png_bytes(300, 300, color=(9, 9, 9))[:60], 400, "invalid_image"),  # truncated
        (b"just some text, not an image", 415, "unsupported_image_type"),
        (bomb_png(), 413, "image_too_many_pixels"),
    ],
)
def test_bad_images_are_refused_with_the_error_shape(api, data, status, code):
    upload = io.BytesIO(data)
    upload.name = "picture.png"
    response = api.post("/api/v1/attachments/", {"file": upload})
    assert response.status_code == status, response.json()
    assert response.json()["error"]["code"] == code
    assert not Attachment.objects.exists()


def test_a_bmp_is_not_a_supported_type(api):
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="BMP")
    response = api.post("/api/v1/attachments/", {"url": data_url(out.getvalue(), "image/png")}, format="json")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_image_type"


def test_an_image_over_the_byte_limit_is_413(api, settings):
    settings.IMAGE_MAX_BYTES = 1000
    upload = io.BytesIO(png_bytes(400, 400, color=(1, 2, 3)) + b"\0" * 1000)
    upload.name = "big.png"
    response = api.post("/api/v1/attachments/", {"file": upload})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"
    as_data_url = api.post("/api/v1/attachments/", {"url": data_url(b"\0" * 2000)}, format="json")
    assert as_data_url.status_code == 413


def test_exif_is_stripped_before_storage_and_the_photo_stays_upright(api, media_root):
    photo = jpeg_with_exif(64, 32, orientation=6)
    assert CAMERA_MODEL.encode() in photo
    response = api.post("/api/v1/attachments/", {"url": data_url(photo, "image/jpeg")}, format="json")
    assert response.status_code == 201, response.json()
    attachment = response.json()
    assert (attachment["content_type"], attachment["width"], attachment["height"]) == ("image/jpeg", 32, 64)
    stored = stored_bytes(attachment["id"])
    assert CAMERA_MODEL.encode() not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.size == (32, 64)
    assert not dict(image.getexif())
    # Stored under the private prefix, under a generated name.
    name = Attachment.objects.get(pk=attachment["id"]).file.name
    assert name.startswith("private/attachments/") and (media_root / name).is_file()


def test_only_the_owner_and_staff_can_fetch_an_image(api, user, other_user):
    upload = api.post("/api/v1/attachments/", {"url": data_url(png_bytes())}, format="json").json()
    mine = api.get(upload["url"])
    assert mine.status_code == 200
    assert mine["Content-Type"] == "image/png"
    assert b"".join(mine.streaming_content) == stored_bytes(upload["id"])
    assert api.get(upload["thumbnail_url"])["Content-Type"] == "image/webp"

    mallory = APIClient()
    mallory.force_login(other_user)
    for url in (upload["url"], upload["thumbnail_url"]):
        response = mallory.get(url)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert APIClient().get(upload["url"]).status_code in (401, 403)

    staff = APIClient()
    staff.force_login(make_user("root", is_staff=True, is_superuser=True))
    assert staff.get(upload["url"]).status_code == 200


def test_an_attachment_of_another_user_cannot_be_sent(api, user, other_user, local_model):
    ModelConfig.objects.filter(pk=local_model.pk).update(supports_vision=True)  # past the vision check
    theirs = APIClient()
    theirs.force_login(other_user)
    image_id = theirs.post("/api/v1/attachments/", {"url": data_url(png_bytes())}, format="json").json()["id"]
    conversation = conversation_create(owner=user)
    response = api.post(messages_url(conversation), {"content": "Hi", "attachments": [image_id]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_attachment"
    assert Attachment.objects.get(pk=image_id).message_id is None
    assert not Message.objects.filter(conversation=conversation).exists()


def test_a_local_vision_model_without_its_projector_says_so(api, user, local_model):
    ModelConfig.objects.filter(pk=local_model.pk).update(
        supports_vision=True, vision_projector="/nonexistent/mmproj-model-f16.gguf"
    )
    conversation = conversation_create(owner=user)
    response = api.post(
        messages_url(conversation), {"content": "What is it?", "images": [data_url(png_bytes())]}, format="json"
    )
    answer = response.json()["assistant_message"] if response.status_code == 201 else response.json()
    assert "projector" in str(answer), answer
    assert Message.objects.get(conversation=conversation, role=Role.ASSISTANT).status == MessageStatus.ERROR


def test_deleting_a_conversation_deletes_its_image_files(api, user, local_model):
    with ScriptedServer(["ok"]) as server:
        remote_model(server.base_url)
        conversation = conversation_create(owner=user)
        api.post(
            messages_url(conversation),
            {"content": "Keep?", "model": "eyes", "images": [data_url(png_bytes())]},
            format="json",
        )
    attachment = Attachment.objects.get()
    names = [attachment.file.name, attachment.thumbnail.name]
    assert all(default_storage.exists(name) for name in names)
    conversation_delete(conversation=conversation)
    assert not Attachment.objects.exists()
    assert not any(default_storage.exists(name) for name in names)
