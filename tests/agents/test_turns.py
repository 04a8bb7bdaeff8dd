"""Turns through the agent graph with the real model, embeddings and pgvector: retrieval, citations,
isolation between users, the calculator, node events and memory."""

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from accounts.services import user_memory_set
from agents.graph import context_message, turn_graph_stream, turn_report
from agents.models import Chunk, Memory, MemoryKind
from chat.memory import conversation_summarize, memory_remember
from chat.models import MessageStatus
from chat.services import conversation_create, message_send
from chat.turns import conversation_group, turn_run
from inference.cache import layer
from inference.providers import GenerationParams
from inference.services import llm_cache_key

from .conftest import ingested

pytestmark = pytest.mark.django_db(transaction=True)

ZORBLAX = """\
History of the Zorblax reactor. The first Zorblax reactor was built in 1987 in a valley near Lake Ontario by a
team of forty engineers. It took six years to finish and was opened by the mayor with a brass band.

Cooling of the Zorblax reactor. The Zorblax reactor is cooled with cobalt-blue glycol pumped at 412 kelvin
through titanium pipes; the coolant is replaced every ninety days.

Staffing of the Zorblax reactor. Three shifts of eleven operators run the control room, and a night
watchman walks the perimeter fence every hour with a lantern and a dog named Pickles.
"""
GARDENING = "Tomatoes need full sun, deep watering twice a week and a stake to climb on. Basil grows well beside them."
MALLORY_ZORBLAX = (
    "Mallory's notes: the Zorblax reactor coolant is secretly orange lemonade, and the password is hunter2."
)


async def collect(conversation_id):
    """Subscribe to a conversation's events; return (channel, receive_all)."""
    channel_layer = get_channel_layer()
    channel = await channel_layer.new_channel()
    await channel_layer.group_add(conversation_group(conversation_id), channel)

    async def receive_all():
        events = []
        while True:
            try:
                message = await asyncio.wait_for(channel_layer.receive(channel), timeout=2)
            except TimeoutError:
                return events
            events.append(message["event"])
            if message["event"]["type"] == "generation.completed":
                return events

    return receive_all


async def test_a_question_about_a_document_retrieves_and_cites_the_right_chunk(user, other_user, local_model, settings):
    settings.KB_CHUNK_TOKENS, settings.KB_CHUNK_OVERLAP = 60, 10  # one chunk per paragraph, roughly
    mine = await database_sync_to_async(ingested)(
        owner=user, text=ZORBLAX, filename="zorblax.md", title="Zorblax manual"
    )
    await database_sync_to_async(ingested)(owner=user, text=GARDENING, title="Garden")
    theirs = await database_sync_to_async(ingested)(owner=other_user, text=MALLORY_ZORBLAX, title="Mallory")
    assert mine.chunk_count >= 3

    conversation = await database_sync_to_async(conversation_create)(owner=user)
    receive_all = await collect(conversation.pk)
    turn = await database_sync_to_async(message_send)(
        conversation=conversation, content="What coolant does the Zorblax reactor use?", params={"max_tokens": 8}
    )
    message = await turn_run(turn)
    events = await receive_all()

    assert message.status == MessageStatus.COMPLETE
    assert message.citations, message.metadata
    top = message.citations[0]
    assert top["document_id"] == str(mine.pk) and top["title"] == "Zorblax manual"
    chunk = await database_sync_to_async(mine.chunks.get)(pk=top["chunk_id"])
    assert "cobalt-blue glycol" in chunk.content
    # Another user's document is never retrieved, however well it matches.
    assert str(theirs.pk) not in {c["document_id"] for c in message.citations}
    assert message.metadata["retrieval_confidence"] == pytest.approx(top["similarity"], abs=1e-3)
    assert message.metadata["agents_used"] == ["classify_intent", "retrieve", "generate"]
    completed = events[-1]
    assert completed["type"] == "generation.completed"
    assert completed["message"]["citations"] == message.citations

    # The cited passages reached the model: its answer is cached under the messages that held them.
    chunks = await database_sync_to_async(lambda: {c.pk: c.content for c in Chunk.objects.all()})()
    retrieved = [{"title": c["title"], "content": chunks[c["chunk_id"]]} for c in message.citations]
    expected = [
        {"role": "system", "content": context_message({"retrieved": retrieved})},
        {"role": "user", "content": "What coolant does the Zorblax reactor use?"},
    ]
    key = llm_cache_key(config=turn.model, params=turn.params, messages=expected, owner_id=user.pk)
    cached = await asyncio.to_thread(layer("llm").get, key, count=False)
    assert cached is not None and cached["content"] == message.content


async def test_arithmetic_goes_through_the_calculator_and_50_reaches_the_answer_context(user, local_model):
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    receive_all = await collect(conversation.pk)
    turn = await database_sync_to_async(message_send)(
        conversation=conversation, content="What is 12.5 * 4?", params={"max_tokens": 8, "temperature": 0}
    )
    message = await turn_run(turn)
    events = await receive_all()

    assert message.metadata["tools"] == [
        {
            "tool": "calculator",
            "arguments": {"expression": "12.5 * 4"},
            "result": "12.5 * 4 = 50",
            "ok": True,
            "cached": False,
        }
    ]
    assert message.metadata["intent"] == {"name": "calculate", "source": "rules"}
    assert message.metadata["agents_used"] == ["classify_intent", "tool:calculator", "generate"]
    nodes = [(e["name"], e["status"]) for e in events if e["type"] == "node"]
    # Nothing to retrieve for arithmetic: the step is skipped. The call is a step of its own.
    assert nodes == [
        ("classify_intent", "start"),
        ("classify_intent", "end"),
        ("tools", "start"),
        ("tool", "start"),
        ("tool", "end"),
        ("tools", "end"),
        ("generate", "start"),
        ("generate", "end"),
    ]
    call = [e for e in events if e["type"] == "node" and e["name"] == "tool"]
    assert call[0]["tool"] == "calculator" and call[0]["arguments"] == {"expression": "12.5 * 4"}
    assert call[1]["summary"] == "12.5 * 4 = 50" and call[1]["ok"] is True and call[1]["server"] is None
    # The model was given the result: its answer is cached under exactly these messages.
    expected = [
        {"role": "system", "content": message_context_of(message)},
        {"role": "user", "content": "What is 12.5 * 4?"},
    ]
    key = llm_cache_key(config=turn.model, params=turn.params, messages=expected, owner_id=user.pk)
    cached = await asyncio.to_thread(layer("llm").get, key, count=False)
    assert cached is not None and cached["content"] == message.content


def message_context_of(message) -> str:
    return context_message({"tool_results": message.metadata["tools"]})


async def test_the_context_message_carries_the_tool_result_before_the_question(user, local_model):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    params = GenerationParams(max_tokens=8, temperature=0.0)
    events, state = [], {}
    async for kind, payload in turn_graph_stream(
        messages=[*history, {"role": "user", "content": "What is 12.5 * 4?"}],
        user_id=user.pk,
        conversation_id="00000000-0000-0000-0000-000000000000",
        model=local_model,
        params=params,
        use_cache=True,
        started=time.perf_counter(),
        cancel=threading.Event(),
        knowledge={"has_chunks": False, "has_memories": False},
    ):
        if kind == "update":
            state.update(payload)
        else:
            events.append(payload)
    outcome = state["outcome"]
    answer = "".join(chunk.delta for e in events if e["type"] == "chunks" for chunk in e["chunks"])
    assert outcome.content and answer == outcome.content, "the streamed chunks are the answer"
    # The model was asked with the history, then the context (the tool's result), then the question:
    # its answer is cached under exactly these messages.
    context = context_message({"tool_results": state["tool_results"]})
    assert "12.5 * 4 = 50" in context
    expected = [*history, {"role": "system", "content": context}, {"role": "user", "content": "What is 12.5 * 4?"}]
    key = llm_cache_key(config=local_model, params=params, messages=expected, owner_id=user.pk)
    cached = await asyncio.to_thread(layer("llm").get, key, count=False)
    assert cached is not None and cached["content"] == outcome.content
    citations, metadata = turn_report(state)
    assert citations == [] and metadata["retrieval_confidence"] is None


def test_memory_is_recalled_across_conversations_only_when_enabled(user, other_user, local_model):
    user_memory_set(user=user, enabled=True)
    first = conversation_create(owner=user)
    turn = message_send(
        conversation=first, content="My cat is called Bartholomew Whiskerton.", params={"max_tokens": 8}
    )
    answer = async_to_sync(turn_run)(turn)
    memory = memory_remember(message_id=answer.pk)
    assert memory.kind == MemoryKind.EXCHANGE and "Bartholomew" in memory.content
    assert memory_remember(message_id=answer.pk).pk == memory.pk  # idempotent

    second = conversation_create(owner=user)
    reply = async_to_sync(turn_run)(
        message_send(conversation=second, content="What is my cat called?", params={"max_tokens": 8})
    )
    recalled = reply.metadata["memories"]
    assert recalled and recalled[0]["memory_id"] == str(memory.pk)
    assert recalled[0]["conversation_id"] == str(first.pk)

    # Someone else never sees it.
    theirs = conversation_create(owner=other_user)
    reply = async_to_sync(turn_run)(
        message_send(conversation=theirs, content="What is my cat called?", params={"max_tokens": 8})
    )
    assert reply.metadata["memories"] == []

    # Memory off: nothing recalled, nothing new remembered.
    user_memory_set(user=user, enabled=False)
    third = conversation_create(owner=user)
    reply = async_to_sync(turn_run)(
        message_send(conversation=third, content="What is my cat called?", params={"max_tokens": 8})
    )
    assert reply.metadata["memories"] == []
    assert memory_remember(message_id=reply.pk) is None


def test_a_conversation_summary_is_stored_as_embedded_memory_once(user, local_model):
    user_memory_set(user=user, enabled=True)
    conversation = conversation_create(owner=user)
    async_to_sync(turn_run)(
        message_send(
            conversation=conversation, content="Let's plan a trip to Lisbon in May.", params={"max_tokens": 16}
        )
    )
    summary = conversation_summarize(conversation_id=conversation.pk, pairs=1)
    assert summary is not None and summary.kind == MemoryKind.SUMMARY and summary.pairs == 1
    assert len(summary.embedding) == 384
    assert conversation_summarize(conversation_id=conversation.pk, pairs=1).pk == summary.pk
    assert Memory.objects.filter(conversation=conversation, kind=MemoryKind.SUMMARY).count() == 1


def test_a_finished_turn_queues_its_memory_and_a_summary_every_n_pairs(user, local_model, settings, eager_celery):
    settings.AGENTS_SUMMARY_EVERY_PAIRS, settings.AGENTS_SUMMARY_MAX_TOKENS = 2, 24
    user_memory_set(user=user, enabled=True)
    conversation = conversation_create(owner=user)
    first = async_to_sync(turn_run)(
        message_send(conversation=conversation, content="I grow tomatoes.", params={"max_tokens": 8})
    )
    assert Memory.objects.get(kind=MemoryKind.EXCHANGE).message_id == first.pk
    assert not Memory.objects.filter(kind=MemoryKind.SUMMARY).exists()
    async_to_sync(turn_run)(message_send(conversation=conversation, content="And basil too.", params={"max_tokens": 8}))
    assert Memory.objects.filter(kind=MemoryKind.EXCHANGE).count() == 2
    summary = Memory.objects.get(kind=MemoryKind.SUMMARY)
    assert (summary.conversation_id, summary.pairs) == (conversation.pk, 2)
