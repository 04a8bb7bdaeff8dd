"""The chat REST API with session auth, against the real model."""

import pytest
from rest_framework.test import APIClient

from chat.models import Message, Role
from chat.services import conversation_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


def test_create_and_list_conversations(api, local_model):
    response = api.post("/api/v1/conversations/", {"title": "Trip"}, format="json")
    assert response.status_code == 201
    conversation_id = response.json()["id"]
    listed = api.get("/api/v1/conversations/").json()
    assert [c["id"] for c in listed["results"]] == [conversation_id]
    assert listed["results"][0]["title"] == "Trip"


def test_send_returns_the_stored_user_and_assistant_messages(api, user, local_model):
    conversation = conversation_create(owner=user)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    response = api.post(url, {"content": "What is the capital of France?", "params": {"max_tokens": 16}}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["user_message"]["content"] == "What is the capital of France?"
    answer = body["assistant_message"]
    assert answer["status"] == "complete"
    assert answer["content"]
    assert 0 < answer["usage"]["completion_tokens"] <= 16
    assert Message.objects.get(pk=answer["id"]).content == answer["content"]

    listed = api.get(url).json()
    assert [m["role"] for m in listed] == [Role.USER, Role.ASSISTANT]
    assert listed[1]["id"] == answer["id"]


def test_empty_message_is_a_400_in_the_error_shape(api, user, local_model):
    conversation = conversation_create(owner=user)
    response = api.post(f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "  "}, format="json")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "empty_message", "detail": "The message is empty."}}
    assert not conversation.messages.exists()


def test_missing_content_names_the_field(api, user, local_model):
    conversation = conversation_create(owner=user)
    response = api.post(f"/api/v1/conversations/{conversation.pk}/messages/", {}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "content" in error["fields"]


def test_too_long_message_is_a_413(api, user, local_model, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    conversation = conversation_create(owner=user)
    response = api.post(f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "x" * 11}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "message_too_long"


def test_other_users_get_404_and_anonymous_clients_401(user, other_user, local_model):
    conversation = conversation_create(owner=user)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    mallory = APIClient()
    mallory.force_login(other_user)
    assert mallory.get(url).status_code == 404
    assert mallory.post(url, {"content": "hi"}, format="json").status_code == 404
    assert mallory.get("/api/v1/conversations/").json()["results"] == []

    anonymous = APIClient()
    response = anonymous.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["error"]["code"] == "not_authenticated"
    assert not conversation.messages.exists()


def test_unknown_conversation_is_a_404(api):
    response = api.get("/api/v1/conversations/00000000-0000-0000-0000-000000000000/messages/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_message_too_long_for_the_model_is_a_clear_error_not_a_crash(api, user, local_model):
    local_model.context_window = 256
    local_model.save(update_fields=["context_window"])
    conversation = conversation_create(owner=user)
    response = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "word " * 600, "params": {"max_tokens": 16}},
        format="json",
    )
    answer = response.json()["assistant_message"]
    assert answer["status"] == "error"
    assert answer["metadata"]["error_code"] == "context_length_exceeded"
    assert "256 tokens" in answer["error"]
    assert response.json()["user_message"]["content"].startswith("word word")
