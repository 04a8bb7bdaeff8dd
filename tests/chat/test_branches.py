"""Edit and branch: messages form a tree, the chat shows (and the model reads) one branch of it.

Editing a question or regenerating an answer adds a sibling; switching picks the branch shown;
nothing is ever overwritten or lost.
"""

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from chat.exports import conversation_export_data, conversations_for_export
from chat.imports import conversation_read
from chat.models import Conversation, Message, MessageStatus
from chat.selectors import message_list, model_messages
from chat.services import (
    conversation_create,
    conversation_switch_branch,
    message_edit,
    message_finalize,
    message_regenerate,
    message_send,
    share_create,
)
from chat.turns import conversation_group
from conftest import make_user
from core.errors import ParleyError
from inference.models import ModelConfig, Provider
from tests.chat.test_websocket import connect, receive_until
from tests.servers import ScriptedServer

pytestmark = pytest.mark.django_db

MISSING = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


def finish(turn, answer: str):
    """Store ``answer`` as the turn's finished answer without running the model; return the turn."""
    message_finalize(message_id=turn.assistant_message.pk, content=answer, status=MessageStatus.COMPLETE)
    return turn


def contents(conversation) -> list[str]:
    return [m.content for m in message_list(conversation=conversation)]


# Services


def test_an_edit_is_a_sibling_of_the_edited_question_and_the_old_branch_is_kept(conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    finish(message_send(conversation=conversation, content="And its population?"), "About 2 million.")

    edited = finish(
        message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome."
    )

    assert edited.user_message.parent_id is None  # a first message: same (no) parent as the one edited
    assert edited.assistant_message.parent_id == edited.user_message.pk
    assert contents(conversation) == ["Capital of Italy?", "Rome."]
    # The model's history is the branch shown, nothing of the other one.
    assert [m["content"] for m in model_messages(conversation=conversation)] == ["Capital of Italy?", "Rome."]
    # Nothing was overwritten or deleted.
    assert conversation.messages.count() == 6
    assert Message.objects.get(pk=first.user_message.pk).content == "Capital of France?"


def test_switching_back_shows_the_newest_message_of_that_branch_and_the_next_send_follows_it(conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    finish(message_send(conversation=conversation, content="And its population?"), "About 2 million.")
    finish(message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome.")

    leaf = conversation_switch_branch(conversation=conversation, message=first.user_message)

    assert leaf.content == "About 2 million."
    assert contents(conversation) == ["Capital of France?", "Paris.", "And its population?", "About 2 million."]
    later = finish(message_send(conversation=conversation, content="And its area?"), "105 km².")
    assert later.user_message.parent_id == leaf.pk  # a send never starts a branch of its own
    assert contents(conversation)[-2:] == ["And its area?", "105 km²."]


def test_regenerating_an_earlier_answer_branches_from_its_question(conversation):
    first = finish(message_send(conversation=conversation, content="One?"), "1")
    finish(message_send(conversation=conversation, content="Two?"), "2")

    again = message_regenerate(conversation=conversation, message=first.assistant_message)

    assert again.user_message.pk == first.user_message.pk
    assert again.assistant_message.parent_id == first.user_message.pk
    assert [m.content for m in message_list(conversation=conversation)] == ["One?", ""]
    finish(again, "one")
    assert model_messages(conversation=conversation) == [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "one"},
    ]
    assert conversation.messages.count() == 5


def test_a_switch_or_an_edit_while_an_answer_is_generated_is_refused(conversation):
    first = finish(message_send(conversation=conversation, content="One?"), "1")
    message_send(conversation=conversation, content="Two?")  # still streaming
    for attempt in (
        lambda: conversation_switch_branch(conversation=conversation, message=first.user_message),
        lambda: message_edit(conversation=conversation, message=first.user_message, content="Uno?"),
    ):
        with pytest.raises(ParleyError) as raised:
            attempt()
        assert raised.value.code == "generation_in_progress"
    assert conversation.messages.count() == 4


def test_the_share_snapshot_is_the_branch_shown_when_it_was_made(conversation):
    first = finish(message_send(conversation=conversation, content="Where to eat in Lyon?"), "A bouchon.")
    finish(
        message_edit(conversation=conversation, message=first.user_message, content="Where to eat in Nice?"), "Socca."
    )

    nice = share_create(conversation=conversation)
    conversation_switch_branch(conversation=conversation, message=first.user_message)
    lyon = share_create(conversation=conversation)

    assert [m["content"] for m in nice.messages] == ["Where to eat in Nice?", "Socca."]
    assert [m["content"] for m in lyon.messages] == ["Where to eat in Lyon?", "A bouchon."]
    nice.refresh_from_db()
    assert [m["content"] for m in nice.messages] == ["Where to eat in Nice?", "Socca."]  # a snapshot stays


# REST


def test_the_list_is_the_active_path_with_versions_and_the_tree_has_every_branch(api, conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    edited = finish(
        message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome."
    )
    base = f"/api/v1/conversations/{conversation.pk}/messages/"

    listed = api.get(base).json()
    assert [m["content"] for m in listed] == ["Capital of Italy?", "Rome."]
    question, answer = listed
    assert question["parent_id"] is None and answer["parent_id"] == question["id"]
    assert question["sibling_ids"] == [str(first.user_message.pk), str(edited.user_message.pk)]
    assert (question["sibling_index"], question["sibling_count"]) == (1, 2)
    assert (answer["sibling_index"], answer["sibling_count"]) == (0, 1)

    tree = api.get(f"{base}tree/").json()
    assert len(tree["messages"]) == 4
    assert tree["active_path"] == [question["id"], answer["id"]]
    assert tree["active_leaf"] == answer["id"]
    parents = {m["id"]: m["parent_id"] for m in tree["messages"]}
    assert parents[str(first.assistant_message.pk)] == str(first.user_message.pk)


def test_activate_switches_the_branch_and_tells_the_open_pages(api, conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    finish(message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome.")

    # One event loop for the listener throughout, as a page's: a Pub/Sub subscription lives with its loop.
    async def activate_while_listening():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(conversation_group(conversation.pk), channel)
        try:
            url = f"/api/v1/conversations/{conversation.pk}/messages/{first.user_message.pk}/activate/"
            response = await sync_to_async(api.post)(url)
            return response, await asyncio.wait_for(layer.receive(channel), 10)
        finally:
            await layer.group_discard(conversation_group(conversation.pk), channel)

    response, event = async_to_sync(activate_while_listening)()

    assert response.status_code == 200
    assert [m["content"] for m in response.json()] == ["Capital of France?", "Paris."]
    assert response.json()[0]["sibling_index"] == 0
    assert event["event"] == {
        "type": "branch.switched",
        "message_id": str(first.user_message.pk),
        "leaf_id": str(first.assistant_message.pk),
    }
    # It lasts: the page and the list read the same branch afterwards.
    assert [m["content"] for m in api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()] == [
        "Capital of France?",
        "Paris.",
    ]


def test_edit_and_activate_errors_are_in_the_error_shape(api, user, conversation):
    turn = finish(message_send(conversation=conversation, content="Hello?"), "Hi.")
    base = f"/api/v1/conversations/{conversation.pk}/messages/"

    response = api.post(f"{base}{turn.assistant_message.pk}/edit/", {"content": "Hey"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_editable"

    response = api.post(f"{base}{turn.user_message.pk}/edit/", {"content": "   "}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_message"

    for path in (f"{MISSING}/edit/", f"{MISSING}/activate/"):
        response = api.post(f"{base}{path}", {"content": "Hey"}, format="json")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    # Another user's conversation, and a message of another conversation of one's own: 404, not revealed.
    mallory = make_user("mallory")
    theirs = conversation_create(owner=mallory)
    their_turn = finish(message_send(conversation=theirs, content="Secret?"), "Yes.")
    other = APIClient()
    other.force_login(mallory)
    assert other.post(f"{base}{turn.user_message.pk}/edit/", {"content": "x"}, format="json").status_code == 404
    assert other.post(f"{base}{turn.user_message.pk}/activate/").status_code == 404
    assert api.post(f"{base}{their_turn.user_message.pk}/activate/").status_code == 404

    message_send(conversation=conversation, content="Still there?")  # an answer being generated
    response = api.post(f"{base}{turn.user_message.pk}/edit/", {"content": "Hey"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "generation_in_progress"
    assert api.post(f"{base}{turn.user_message.pk}/activate/").status_code == 409
    assert conversation.messages.count() == 4  # nothing was stored by a refused request


def remote_model(base_url) -> ModelConfig:
    return ModelConfig.objects.create(
        slug="scripted",
        display_name="Scripted",
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=base_url,
        system_prompt="",
    )


@pytest.mark.django_db(transaction=True)
def test_the_model_receives_only_the_active_path(api, user, local_model):
    """What reached a real OpenAI-compatible server for each turn: the branch shown, never another."""
    with ScriptedServer(["ok"], words=("Fine",)) as server:
        remote_model(server.base_url)
        conversation = conversation_create(owner=user)
        base = f"/api/v1/conversations/{conversation.pk}/messages/"

        def sent(path, body):
            response = api.post(f"{base}{path}", {"model": "scripted", "cache": False, **body}, format="json")
            assert response.status_code == 201, response.json()
            chat = [r for r in server.requests if "messages" in r][-1]
            return response.json(), [(m["role"], m["content"]) for m in chat["messages"] if m["role"] != "system"]

        first, _ = sent("", {"content": "Capital of France?"})
        _, history = sent("", {"content": "And its population?"})
        assert history == [
            ("user", "Capital of France?"),
            ("assistant", "Fine"),
            ("user", "And its population?"),
        ]

        _, history = sent(f"{first['user_message']['id']}/edit/", {"content": "Capital of Italy?"})
        assert history == [("user", "Capital of Italy?")]

        _, history = sent("", {"content": "And its population?"})
        assert history == [("user", "Capital of Italy?"), ("assistant", "Fine"), ("user", "And its population?")]

        # Back to France: the next question continues that branch, with its history only.
        assert api.post(f"{base}{first['user_message']['id']}/activate/").status_code == 200
        _, history = sent("", {"content": "And its area?"})
        assert history == [
            ("user", "Capital of France?"),
            ("assistant", "Fine"),
            ("user", "And its population?"),
            ("assistant", "Fine"),
            ("user", "And its area?"),
        ]

        # Regenerating the first answer asks the first question alone again.
        response = api.post(
            f"{base}{first['assistant_message']['id']}/regenerate/", {"model": "scripted"}, format="json"
        )
        assert response.status_code == 201
        chat = [r for r in server.requests if "messages" in r][-1]
        assert [(m["role"], m["content"]) for m in chat["messages"] if m["role"] != "system"] == [
            ("user", "Capital of France?")
        ]
    assert conversation.messages.count() == 11  # five turns and a regeneration: all kept


# WebSocket


@pytest.mark.django_db(transaction=True)
async def test_over_the_websocket_an_edit_streams_a_new_branch_and_a_switch_is_announced(local_model):
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    first = await database_sync_to_async(
        lambda: finish(message_send(conversation=conversation, content="Hi?"), "Hello.")
    )()
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    try:
        await communicator.send_json_to(
            {
                "type": "message.edit",
                "message_id": str(first.user_message.pk),
                "content": "Say yes.",
                "params": {"max_tokens": 4},
            }
        )
        events = await receive_until(communicator, "generation.completed")
        created = next(e for e in events if e["type"] == "message.created")["message"]
        started = next(e for e in events if e["type"] == "generation.started")
        assert created["content"] == "Say yes." and created["parent_id"] is None
        assert started["parent_id"] == created["id"]
        assert events[-1]["message"]["parent_id"] == created["id"]

        await communicator.send_json_to({"type": "branch.switch", "message_id": str(first.user_message.pk)})
        (switched,) = await receive_until(communicator, "branch.switched")
        assert switched == {
            "type": "branch.switched",
            "message_id": str(first.user_message.pk),
            "leaf_id": str(first.assistant_message.pk),
        }
        path = await database_sync_to_async(contents)(conversation)
        assert path == ["Hi?", "Hello."]

        for frame, code in [
            ({"type": "message.edit", "message_id": str(first.assistant_message.pk), "content": "x"}, "not_editable"),
            ({"type": "message.edit", "message_id": MISSING, "content": "x"}, "not_found"),
            ({"type": "branch.switch", "message_id": "not-a-uuid"}, "not_found"),
            ({"type": "branch.switch"}, "not_found"),
        ]:
            await communicator.send_json_to(frame)
            error = await communicator.receive_json_from(timeout=10)
            assert (error["type"], error["code"]) == ("error", code), frame
    finally:
        await communicator.disconnect()
    assert await Message.objects.filter(conversation_id=conversation.pk).acount() == 4


# The migration of existing conversations


@pytest.mark.django_db(transaction=True)
def test_the_migration_links_existing_messages_and_keeps_regenerated_answers_as_siblings():
    executor = MigrationExecutor(connection)
    before, after = [("chat", "0007_conversation_metadata_import_job")], [("chat", "0008_message_tree")]
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        user = apps.get_model("accounts", "User").objects.create(username="old")
        OldConversation, OldMessage = apps.get_model("chat", "Conversation"), apps.get_model("chat", "Message")
        conversation = OldConversation.objects.create(owner=user, title="Before branches")
        question = OldMessage.objects.create(conversation=conversation, role="user", content="Q1")
        replaced = OldMessage.objects.create(conversation=conversation, role="assistant", content="A1 (first)")
        answer = OldMessage.objects.create(conversation=conversation, role="assistant", content="A1")
        OldMessage.objects.filter(pk=replaced.pk).update(superseded_by=answer)
        follow_up = OldMessage.objects.create(conversation=conversation, role="user", content="Q2")
        empty = OldConversation.objects.create(owner=user, title="Empty")

        executor = MigrationExecutor(connection)
        executor.migrate(after)
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    migrated = Conversation.objects.get(pk=conversation.pk)
    assert migrated.active_leaf_id == follow_up.pk
    parents = dict(Message.objects.filter(conversation=migrated).values_list("pk", "parent_id"))
    assert parents == {question.pk: None, replaced.pk: question.pk, answer.pk: question.pk, follow_up.pk: answer.pk}
    assert contents(migrated) == ["Q1", "A1", "Q2"]
    assert Conversation.objects.get(pk=empty.pk).active_leaf_id is None


# Export and import


def test_an_export_marks_other_branches_and_a_parley_import_keeps_the_shown_one(api, user, conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    finish(message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome.")

    (exported,) = conversations_for_export(Conversation.objects.filter(pk=conversation.pk))
    exported = conversation_export_data(exported)
    flags = {m["content"]: m["active"] for m in exported["messages"]}
    assert flags == {"Capital of France?": False, "Paris.": False, "Capital of Italy?": True, "Rome.": True}
    assert all("parent_id" in m for m in exported["messages"])

    imported = conversation_read(source="parley", raw=exported)
    assert [m.content for m in imported.messages] == ["Capital of Italy?", "Rome."]
    assert imported.dropped == 2


# Admin


def test_the_admin_shows_the_whole_tree_with_versions_and_the_branch_shown(client, conversation):
    first = finish(message_send(conversation=conversation, content="Capital of France?"), "Paris.")
    finish(message_edit(conversation=conversation, message=first.user_message, content="Capital of Italy?"), "Rome.")
    client.force_login(make_user("root", is_staff=True, is_superuser=True))

    page = client.get(f"/admin/chat/conversation/{conversation.pk}/change/").content.decode()

    tree = page[page.index("message-tree") :]
    for text in ("Capital of France?", "Paris.", "Capital of Italy?", "Rome."):
        assert text in tree
    assert tree.count("★") == 2  # the branch shown: the edited question and its answer
    assert "version 1 / 2" in tree and "version 2 / 2" in tree
    # Each answer is indented under its question.
    assert tree.index("Capital of France?") < tree.index("Paris.") < tree.index("Capital of Italy?")
