"""The chat WebSocket, end to end: real Channels stack, Redis channel layer and SmolLM2 on llama.cpp."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat import turns
from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60  # seconds; a cold model load plus a short generation takes well under this


async def connect(user, conversation_id, origin="http://testserver"):
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{conversation_id}/", headers=await ws_headers(user, origin)
    )
    connected, code = await communicator.connect(timeout=10)
    return communicator, connected, code


async def receive_until(communicator, event_type):
    """Return every event received up to and including the first of ``event_type``."""
    events = []
    while True:
        event = await communicator.receive_json_from(timeout=TIMEOUT)
        events.append(event)
        if event["type"] == event_type:
            return events


async def setup_conversation(local_model, username="alice"):
    user = await database_sync_to_async(make_user)(username)
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    return user, conversation


async def test_answer_streams_token_by_token_and_is_stored_with_usage(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected

    await communicator.send_json_to(
        {
            "type": "message.send",
            "content": "What is the capital of France?",
            "client_id": "c-1",
            "params": {"max_tokens": 24},
        }
    )
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()

    kinds = [e["type"] for e in events]
    assert kinds[0] == "message.created"
    assert events[0]["message"]["content"] == "What is the capital of France?"
    assert events[0]["message"]["client_id"] == "c-1"
    assert kinds[1] == "generation.started"
    tokens = [e for e in events if e["type"] == "token"]
    assert len(tokens) >= 2, "the answer should arrive in several pieces, not all at once"
    final = events[-1]["message"]
    # Deltas never repeat text: together they are exactly the stored answer.
    assert "".join(t["delta"] for t in tokens) == final["content"]
    assert final["content"].strip()
    assert final["status"] == "complete"
    assert 0 < final["usage"]["completion_tokens"] <= 24
    assert final["usage"]["prompt_tokens"] > 5
    assert final["ttft_ms"] is not None and final["latency_ms"] >= final["ttft_ms"]

    stored = await Message.objects.aget(pk=final["id"])
    assert stored.content == final["content"]
    assert stored.model_slug == "smollm2-135m"
    assert stored.completion_tokens == final["usage"]["completion_tokens"]
    assert await Message.objects.filter(conversation=conversation, role=Role.USER).acount() == 1


@pytest.mark.parametrize("batch_ms", [0, 1, 50])
async def test_no_delta_is_lost_or_repeated_whatever_the_batching(local_model, settings, batch_ms):
    # Batch deadlines falling between tokens are where a delta could be dropped or sent twice.
    settings.CHAT_TOKEN_BATCH_MS = batch_ms
    settings.CHAT_TOKEN_BATCH_SIZE = 1000
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to(
        {"type": "message.send", "content": "Count from one to twenty.", "params": {"max_tokens": 48}}
    )
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()
    deltas = [e["delta"] for e in events if e["type"] == "token"]
    assert "".join(deltas) == events[-1]["message"]["content"]
    if batch_ms == 0:
        assert len(deltas) == events[-1]["message"]["usage"]["completion_tokens"] - 1 or len(deltas) > 10


async def test_second_turn_sees_the_first(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    for text in ["My name is Ada.", "What is my name?"]:
        await communicator.send_json_to({"type": "message.send", "content": text, "params": {"max_tokens": 8}})
        events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()
    # The second prompt holds the whole first exchange, so it is longer than the first prompt.
    answers = [m async for m in Message.objects.filter(conversation=conversation, role=Role.ASSISTANT)]
    assert [a.status for a in answers] == ["complete", "complete"]
    assert answers[1].prompt_tokens > answers[0].prompt_tokens + answers[0].completion_tokens
    assert events[-1]["message"]["id"] == str(answers[1].pk)


async def test_stop_keeps_the_partial_answer(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to(
        {"type": "message.send", "content": "Write a long story about a dragon.", "params": {"max_tokens": 1500}}
    )
    await receive_until(communicator, "token")
    await communicator.send_json_to({"type": "generation.stop"})
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()

    final = events[-1]["message"]
    assert final["status"] == "cancelled"
    assert final["error"] == "Stopped by the user."
    assert final["content"], "text generated before the stop is kept"
    assert final["usage"]["completion_tokens"] < 1500


async def test_a_stalled_answer_shows_its_text_so_far_and_a_stop_ends_it(local_model):
    user, conversation = await setup_conversation(local_model)
    # Two words, then silence for far longer than this test may wait: only the stop can end it.
    with ScriptedServer(["stall-midway"], stall_seconds=120) as server:
        await ModelConfig.objects.acreate(
            slug="remote",
            display_name="Remote",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            idle_timeout=120,
            cache_policy="never",
        )
        communicator, _, _ = await connect(user, conversation.pk)
        await communicator.send_json_to({"type": "message.send", "content": "Hi", "model": "remote"})
        seen = ""
        while seen != "Hello there":
            token = (await receive_until(communicator, "token"))[-1]
            assert token["offset"] == len(seen), "each delta says where it goes in the answer"
            seen += token["delta"]
        # A client connecting now (a reload, a reconnect) reads the text so far over REST.
        answer = await Message.objects.aget(conversation=conversation, role=Role.ASSISTANT)
        for _ in range(TIMEOUT * 10):
            if answer.content:
                break
            await asyncio.sleep(0.1)
            await answer.arefresh_from_db()
        assert (answer.status, answer.content) == (MessageStatus.STREAMING, "Hello there")
        await communicator.send_json_to({"type": "generation.stop"})
        events = await receive_until(communicator, "generation.completed")
        await communicator.disconnect()
    final = events[-1]["message"]
    assert final["status"] == "cancelled"
    assert final["content"] == "Hello there"


async def test_disconnecting_does_not_cancel_the_turn(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": "Hello!", "params": {"max_tokens": 12}})
    await receive_until(communicator, "generation.started")
    await communicator.disconnect()

    for _ in range(TIMEOUT * 10):
        answer = await Message.objects.aget(conversation=conversation, role=Role.ASSISTANT)
        if answer.status != MessageStatus.STREAMING:
            break
        await asyncio.sleep(0.1)
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content
    assert await turns.turns_drain(timeout=TIMEOUT) == 0


async def test_a_second_socket_of_the_same_user_sees_the_stream(local_model):
    user, conversation = await setup_conversation(local_model)
    first, _, _ = await connect(user, conversation.pk)
    second, _, _ = await connect(user, conversation.pk)
    await first.send_json_to({"type": "message.send", "content": "Hi", "params": {"max_tokens": 8}})
    seen_by_first = await receive_until(first, "generation.completed")
    seen_by_second = await receive_until(second, "generation.completed")
    await first.disconnect()
    await second.disconnect()
    assert seen_by_first == seen_by_second


@pytest.mark.parametrize("content", ["", "   \n  "])
async def test_empty_message_is_refused_and_nothing_stored(local_model, content):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": content})
    event = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    assert event == {"type": "error", "code": "empty_message", "detail": "The message is empty."}
    assert await Message.objects.filter(conversation=conversation).acount() == 0


async def test_message_over_the_limit_is_refused_with_the_limit(local_model, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": "x" * 101})
    event = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    assert event["type"] == "error"
    assert event["code"] == "message_too_long"
    assert "100" in event["detail"]
    assert await Message.objects.filter(conversation=conversation).acount() == 0


async def test_bad_params_are_refused_before_anything_is_stored(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": "Hi", "params": {"temperature": 9}})
    event = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    assert event["code"] == "invalid_params"
    assert await Message.objects.filter(conversation=conversation).acount() == 0


async def test_failing_model_stores_the_error_and_keeps_the_user_message(local_model):
    user, conversation = await setup_conversation(local_model)
    # A real failure, not a double: the model file does not exist, so llama.cpp cannot load it.
    await ModelConfig.objects.acreate(slug="missing", display_name="Missing", model="/nonexistent/model.gguf")
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": "Hello?", "model": "missing"})
    events = await receive_until(communicator, "generation.completed")
    await communicator.disconnect()

    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "model_unavailable"
    final = events[-1]["message"]
    assert final["status"] == "error"
    assert "does not exist" in final["error"]
    user_message = await Message.objects.aget(conversation=conversation, role=Role.USER)
    assert user_message.content == "Hello?"


async def test_unknown_model_is_refused(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_json_to({"type": "message.send", "content": "Hello?", "model": "nope"})
    event = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    assert event["code"] == "model_unavailable"
    assert await Message.objects.filter(conversation=conversation).acount() == 0


async def test_malformed_frames_get_an_error_not_a_disconnect(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, _, _ = await connect(user, conversation.pk)
    await communicator.send_to(text_data="not json")
    assert (await communicator.receive_json_from())["code"] == "invalid_json"
    await communicator.send_json_to({"type": "dance"})
    assert (await communicator.receive_json_from())["code"] == "unknown_type"
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from() == {"type": "pong"}
    await communicator.disconnect()


async def test_another_user_cannot_open_the_socket(local_model):
    _, conversation = await setup_conversation(local_model)
    mallory = await database_sync_to_async(make_user)("mallory")
    communicator, connected, code = await connect(mallory, conversation.pk)
    assert not connected
    assert code == 4404


async def test_anonymous_client_cannot_open_the_socket(local_model):
    _, conversation = await setup_conversation(local_model)
    communicator, connected, code = await connect(None, conversation.pk)
    assert not connected
    assert code == 4401


async def test_foreign_origin_is_refused(local_model):
    user, conversation = await setup_conversation(local_model)
    communicator, connected, _ = await connect(user, conversation.pk, origin="http://evil.example")
    assert not connected
