"""Conversations over REST: list, search, pagination, rename, archive, delete, regenerate, stop, feedback."""

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from rest_framework.test import APIClient

from chat.models import Conversation, Feedback, Message, MessageStatus, Role
from chat.selectors import model_messages
from chat.services import conversation_create, message_finalize, message_send
from chat.turns import control_group

pytestmark = pytest.mark.django_db

MISSING = "00000000-0000-0000-0000-000000000000"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def api(user):
    return client_for(user)


def answered(conversation: Conversation, question: str, answer: str = "An answer."):
    """Store a finished turn without running the model; return it."""
    turn = message_send(conversation=conversation, content=question)
    message_finalize(message_id=turn.assistant_message.pk, content=answer, status=MessageStatus.COMPLETE)
    return turn


def listed(client, query: str = "") -> list[str]:
    response = client.get(f"/api/v1/conversations/{query}")
    assert response.status_code == 200
    return [c["title"] for c in response.json()["results"]]


# List, pagination and search


def test_the_list_is_paginated_most_recent_first(api, user, local_model):
    for title in ["first", "second", "third"]:
        conversation_create(owner=user, title=title)

    page = api.get("/api/v1/conversations/?page_size=2").json()
    assert page["count"] == 3
    assert [c["title"] for c in page["results"]] == ["third", "second"]
    assert page["previous"] is None
    following = api.get(page["next"]).json()
    assert [c["title"] for c in following["results"]] == ["first"]
    assert following["next"] is None
    assert api.get("/api/v1/conversations/?page=9").status_code == 404
    invalid = api.get("/api/v1/conversations/?archived=maybe")
    assert invalid.status_code == 400
    assert "archived" in invalid.json()["error"]["fields"]


def test_search_finds_titles_and_message_content_of_ones_own_conversations(api, user, other_user, local_model):
    conversation_create(owner=user, title="Trip to Lyon")
    answered(conversation_create(owner=user, title="Cooking"), "How do I make a bouillabaisse?")
    answered(conversation_create(owner=user, title="Weather"), "Will it rain?", answer="Bring an umbrella.")
    conversation_create(owner=other_user, title="Lyon again")
    answered(conversation_create(owner=other_user, title="Fish soup"), "A bouillabaisse, please")

    assert listed(api, "?q=lyon") == ["Trip to Lyon"]
    assert listed(api, "?q=bouillabaisse") == ["Cooking"]
    assert listed(api, "?q=umbrella") == ["Weather"]  # the answer's text counts too
    assert listed(api, '?q="make a bouillabaisse"') == ["Cooking"]
    assert listed(api, "?q=lyon or umbrella") == ["Weather", "Trip to Lyon"]
    assert listed(api, "?q=submarine") == []
    assert listed(api, "?q=%21%26%7C") == []  # no words: nothing, not an error
    assert len(listed(api)) == 3


def test_a_conversation_with_several_matching_messages_is_listed_once(api, user, local_model):
    conversation = conversation_create(owner=user, title="Lyon")
    answered(conversation, "Lyon?", answer="Lyon.")
    answered(conversation, "Lyon again?", answer="Lyon again.")
    assert listed(api, "?q=lyon") == ["Lyon"]


# Detail: get, rename, archive, delete


def test_get_rename_and_archive(api, user, local_model):
    conversation = conversation_create(owner=user, title="Trip")
    url = f"/api/v1/conversations/{conversation.pk}/"
    body = api.get(url).json()
    assert (body["id"], body["title"], body["archived"], body["archived_at"]) == (
        str(conversation.pk),
        "Trip",
        False,
        None,
    )

    response = api.patch(url, {"title": "  Lyon, May  "}, format="json")
    assert response.status_code == 200
    assert response.json()["title"] == "Lyon, May"
    assert listed(api) == ["Lyon, May"]

    archived = api.patch(url, {"archived": True}, format="json").json()
    assert archived["archived"] is True and archived["archived_at"]
    assert archived["title"] == "Lyon, May"
    assert listed(api) == []
    assert listed(api, "?archived=true") == ["Lyon, May"]
    assert listed(api, "?archived=true&q=lyon") == ["Lyon, May"]
    assert api.get(url).json()["archived"] is True  # still reachable by id

    assert api.patch(url, {"archived": False}, format="json").json()["archived_at"] is None
    assert listed(api) == ["Lyon, May"]
    assert listed(api, "?archived=true") == []


def test_patch_validates(api, conversation):
    response = api.patch(f"/api/v1/conversations/{conversation.pk}/", {"title": "x" * 201}, format="json")
    assert response.status_code == 400
    assert "title" in response.json()["error"]["fields"]


def test_delete_removes_the_conversation_and_its_messages(api, conversation):
    answered(conversation, "Hello?")
    url = f"/api/v1/conversations/{conversation.pk}/"
    response = api.delete(url)
    assert response.status_code == 204
    assert api.get(url).status_code == 404
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()


def test_delete_while_generating_is_a_409(api, conversation):
    message_send(conversation=conversation, content="Hello?")  # leaves a streaming placeholder
    response = api.delete(f"/api/v1/conversations/{conversation.pk}/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "generation_in_progress"
    assert Conversation.objects.filter(pk=conversation.pk).exists()


# Stop


def test_stop_with_nothing_running_is_a_409(api, conversation):
    answered(conversation, "Hello?")
    response = api.post(f"/api/v1/conversations/{conversation.pk}/stop/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_generation"


def test_stop_asks_the_generating_process_to_stop(api, conversation):
    message_send(conversation=conversation, content="Hello?")  # a generation in progress

    # One event loop for the listener throughout, as a turn's: a Pub/Sub subscription lives with its loop.
    async def stop_while_listening():
        layer = get_channel_layer()
        channel = "test.stop.listener"
        await layer.group_add(control_group(conversation.pk), channel)
        try:
            response = await sync_to_async(api.post)(f"/api/v1/conversations/{conversation.pk}/stop/")
            return response, await asyncio.wait_for(layer.receive(channel), 10)
        finally:
            await layer.group_discard(control_group(conversation.pk), channel)

    response, received = async_to_sync(stop_while_listening)()
    assert response.status_code == 202
    assert response.json() == {"stopping": True}
    assert received == {"type": "generation.stop"}


# Regenerate


@pytest.mark.django_db(transaction=True)
def test_regenerate_gives_a_new_answer_without_the_old_one_in_the_history(api, user, local_model):
    conversation = conversation_create(owner=user)
    base = f"/api/v1/conversations/{conversation.pk}/messages/"
    sent = api.post(base, {"content": "Name a colour.", "params": {"max_tokens": 8}}, format="json").json()
    old = sent["assistant_message"]
    assert old["status"] == "complete"

    response = api.post(f"{base}{old['id']}/regenerate/", {"params": {"max_tokens": 8}}, format="json")
    assert response.status_code == 201
    new = response.json()
    assert new["id"] != old["id"]
    assert new["role"] == Role.ASSISTANT
    assert new["status"] == "complete"
    assert new["content"]
    assert new["cached"] is False  # regenerating asks the model again, not the cache
    # The model saw the same history as for the first answer (system prompt and question), not the
    # old answer as well.
    assert new["usage"]["prompt_tokens"] == old["usage"]["prompt_tokens"]

    assert [m["id"] for m in api.get(base).json()] == [sent["user_message"]["id"], new["id"]]
    # The old answer is kept, as the other version of the answer to the same question.
    assert Message.objects.get(pk=old["id"]).parent_id == Message.objects.get(pk=new["id"]).parent_id
    assert api.get(base).json()[1]["sibling_ids"] == [old["id"], new["id"]]
    history = model_messages(conversation=conversation)
    assert [m["role"] for m in history] == [Role.USER, Role.ASSISTANT]
    assert history[1]["content"] == new["content"]

    # A question is not an answer: it is edited, not regenerated.
    again = api.post(f"{base}{sent['user_message']['id']}/regenerate/", {}, format="json")
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "not_regenerable"


def test_only_answers_can_be_regenerated(api, conversation):
    first = answered(conversation, "One?")
    second = answered(conversation, "Two?")
    base = f"/api/v1/conversations/{conversation.pk}/messages/"
    for message in (first.user_message, second.user_message):
        response = api.post(f"{base}{message.pk}/regenerate/", {}, format="json")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "not_regenerable"
    assert conversation.messages.count() == 4


def test_regenerate_while_generating_is_a_409(api, conversation):
    turn = message_send(conversation=conversation, content="Hello?")
    url = f"/api/v1/conversations/{conversation.pk}/messages/{turn.assistant_message.pk}/regenerate/"
    response = api.post(url, {}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "generation_in_progress"


def test_regenerate_an_unknown_message_is_a_404(api, conversation):
    response = api.post(f"/api/v1/conversations/{conversation.pk}/messages/{MISSING}/regenerate/", {}, format="json")
    assert response.status_code == 404


# Feedback


def test_feedback_is_created_then_replaced(api, user, conversation):
    turn = answered(conversation, "Capital of France?", answer="Lyon.")
    url = f"/api/v1/conversations/{conversation.pk}/messages/{turn.assistant_message.pk}/feedback/"

    created = api.post(url, {"rating": "down", "comment": "It is Paris."}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert (body["message"], body["rating"], body["comment"]) == (
        str(turn.assistant_message.pk),
        "down",
        "It is Paris.",
    )

    updated = api.post(url, {"rating": "up"}, format="json")
    assert updated.status_code == 200
    assert updated.json()["id"] == body["id"]
    feedback = Feedback.objects.get(message=turn.assistant_message, user=user)
    assert (feedback.rating, feedback.comment) == ("up", "")
    assert Feedback.objects.count() == 1


def test_feedback_is_per_user(api, user, other_user, conversation):
    turn = answered(conversation, "Hi?")
    # Another user cannot see the conversation at all, so cannot rate inside it.
    url = f"/api/v1/conversations/{conversation.pk}/messages/{turn.assistant_message.pk}/feedback/"
    assert client_for(other_user).post(url, {"rating": "up"}, format="json").status_code == 404
    assert api.post(url, {"rating": "up"}, format="json").status_code == 201
    assert list(Feedback.objects.values_list("user", flat=True)) == [user.pk]


def test_feedback_validation(api, conversation):
    turn = answered(conversation, "Hi?")
    base = f"/api/v1/conversations/{conversation.pk}/messages/"
    answer_url = f"{base}{turn.assistant_message.pk}/feedback/"

    on_question = api.post(f"{base}{turn.user_message.pk}/feedback/", {"rating": "up"}, format="json")
    assert on_question.status_code == 400
    assert on_question.json()["error"]["code"] == "not_an_answer"

    bad_rating = api.post(answer_url, {"rating": "meh"}, format="json")
    assert bad_rating.status_code == 400
    assert "rating" in bad_rating.json()["error"]["fields"]

    long_comment = api.post(answer_url, {"rating": "up", "comment": "x" * 2001}, format="json")
    assert long_comment.status_code == 400
    assert "comment" in long_comment.json()["error"]["fields"]

    assert api.post(answer_url, {"rating": "up", "comment": "x" * 2000}, format="json").status_code == 201
    assert api.post(f"{base}{MISSING}/feedback/", {"rating": "up"}, format="json").status_code == 404


# Other users and anonymous clients


def endpoints(conversation, turn) -> list[tuple[str, str, dict | None]]:
    base = f"/api/v1/conversations/{conversation.pk}/"
    answer = turn.assistant_message.pk
    return [
        ("get", base, None),
        ("patch", base, {"title": "Mine now"}),
        ("delete", base, None),
        ("post", f"{base}stop/", None),
        ("post", f"{base}messages/{answer}/regenerate/", {}),
        ("post", f"{base}messages/{answer}/feedback/", {"rating": "up"}),
    ]


def test_other_users_get_404_and_change_nothing(user, other_user, conversation):
    turn = answered(conversation, "Private question")
    mallory = client_for(other_user)
    for method, url, data in endpoints(conversation, turn):
        response = getattr(mallory, method)(url, data, format="json")
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found"
    assert mallory.get("/api/v1/conversations/?q=private").json()["results"] == []
    conversation.refresh_from_db()
    assert conversation.title == "Private question"
    assert conversation.messages.count() == 2
    assert not Feedback.objects.exists()


def test_anonymous_clients_get_401(conversation):
    turn = answered(conversation, "Private question")
    anonymous = APIClient()
    assert anonymous.get("/api/v1/conversations/?q=private").status_code == 401
    for method, url, data in endpoints(conversation, turn):
        response = getattr(anonymous, method)(url, data, format="json")
        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["code"] == "not_authenticated"
    assert Conversation.objects.filter(pk=conversation.pk).exists()
