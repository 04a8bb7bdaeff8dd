"""The turn workflow, a LangGraph ``StateGraph``: classify_intent → retrieve → tools → generate.

Each node sends ``{"type": "node", "name": <node>, "status": "start"|"end"}`` through the ``emit``
callable it is given. The first three only gather context; ``generate`` puts it in a system message
just before the user's question and calls back into the chat turn (``generate(messages)``), which
streams the answer through inference with its caches, stop and timeouts. This module imports
nothing from ``chat``: the turn hands it what it needs.

Keeping plain chat fast: intent is decided by rules first (no model call for the obvious cases);
a model classifies the rest only when ``AGENTS_INTENT_MODEL`` names one (cached in the ``intent``
layer); retrieval embeds the question only when the user has documents or memories.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

from channels.db import database_sync_to_async
from django.conf import settings

from inference.cache import canonical_key
from inference.cache import layer as cache_layer

from .intent import intent_rules
from .tools import (
    REGISTRY,
    ToolContext,
    ToolResult,
    json_tool_prompt,
    openai_tools,
    parse_json_tool_call,
    parse_openai_tool_calls,
    tool_run,
)

logger = logging.getLogger(__name__)

NODES = ("classify_intent", "retrieve", "tools", "generate")


class TurnState(TypedDict, total=False):
    """What flows through the graph. ``messages`` are chat messages ending with the user's question."""

    messages: list[dict[str, str]]
    user_id: int
    conversation_id: str
    intent: str  # chat | knowledge | calculate | datetime | conversation_search | tool
    intent_source: str  # rules | model | cache | default
    tool_calls: list[dict]  # [{"tool", "arguments"}]
    retrieved: list[dict]  # chunk hits: {document_id, title, chunk_id, index, content, similarity}
    memories: list[dict]  # memory hits: {memory_id, conversation_id, kind, content, similarity}
    tool_results: list[dict]  # ToolResult.as_dict()
    citations: list[dict]  # {document_id, title, chunk_id, similarity}
    agents_used: list[str]
    confidence: float | None  # top cosine similarity of what was retrieved
    outcome: Any  # what generate() returned


def intent_from_model(*, text: str, model_slug: str) -> dict:
    """Ask model ``model_slug`` whether ``text`` needs a tool; return ``{"intent", "tool"?, "arguments"?}``.

    Remote (OpenAI-compatible) models get OpenAI function calling; local ones the JSON format (see
    :mod:`agents.tools`). Cached in the ``intent`` layer by model and text. Any failure gives
    ``{"intent": "chat"}``. Blocking.
    """
    from inference.models import Provider
    from inference.providers import GenerationParams, InferenceError
    from inference.selectors import model_config_get
    from inference.services import provider_for

    cache = cache_layer("intent")
    try:
        config = model_config_get(slug=model_slug)
    except InferenceError as exc:
        logger.warning("Intent model %r unavailable: %s", model_slug, exc.detail)
        return {"intent": "chat", "source": "default"}
    key = canonical_key({"model": config.slug, "weights": config.model, "text": text})
    cached = cache.get(key)
    if cached is not None:
        return {**cached, "source": "cache"}
    call = None
    try:
        provider = provider_for(config=config)
        if config.provider == Provider.OPENAI_COMPATIBLE:
            response = provider.client.chat.completions.create(
                model=config.model,
                messages=[{"role": "user", "content": text}],
                tools=openai_tools(),
                tool_choice="auto",
                max_tokens=128,
                temperature=0,
            )
            calls = parse_openai_tool_calls(response.choices[0].message.tool_calls)
            call = calls[0] if calls else None
        else:
            completion = provider.complete(
                [{"role": "system", "content": json_tool_prompt()}, {"role": "user", "content": text}],
                GenerationParams(max_tokens=64, temperature=0.0),
            )
            call = parse_json_tool_call(completion.text)
    except Exception as exc:  # a classifier failure must not fail the turn
        logger.warning("Intent classification failed (%s: %s); treating as chat", type(exc).__name__, exc)
        return {"intent": "chat", "source": "default"}
    if call is not None and call[0] in REGISTRY:
        result = {"intent": "tool", "tool": call[0], "arguments": call[1]}
    else:
        result = {"intent": "chat"}
    cache.set(key, result)
    return {**result, "source": "model"}


def _question(state: TurnState) -> str:
    return state["messages"][-1]["content"] if state.get("messages") else ""


async def classify_intent(state: TurnState) -> dict:
    text = _question(state)
    result = intent_rules(text)
    source = "rules"
    if result is None and settings.AGENTS_INTENT_MODEL:
        result = await asyncio.to_thread(intent_from_model, text=text, model_slug=settings.AGENTS_INTENT_MODEL)
        source = result.pop("source", "model")
    if result is None:
        result, source = {"intent": "chat"}, "default"
    calls = [{"tool": result["tool"], "arguments": result.get("arguments", {})}] if result.get("tool") else []
    used = list(state.get("agents_used", [])) + ["classify_intent"]
    return {"intent": result["intent"], "intent_source": source, "tool_calls": calls, "agents_used": used}


# retrieve: pgvector over the user's chunks and memories.


def _retrieve(*, user_id: int, conversation_id, query: str, knowledge: bool) -> tuple[list[dict], list[dict]]:
    from accounts.models import User
    from inference.embeddings import embed_text
    from inference.providers import InferenceError

    from .selectors import chunk_search, knowledge_available, memory_search

    memory_enabled = User.objects.filter(pk=user_id, memory_enabled=True).exists()
    has_chunks, has_memories = knowledge_available(user_id=user_id, memory=memory_enabled)
    if not (has_chunks or has_memories):
        return [], []  # nothing to search: no embedding, no query
    try:
        embedding = embed_text(query)
    except InferenceError as exc:
        logger.warning("Retrieval skipped: embeddings failed (%s)", exc.detail)
        return [], []
    top_k = settings.KB_TOP_K * (2 if knowledge else 1)
    chunks = (
        [vars(hit) for hit in chunk_search(user_id=user_id, embedding=embedding, top_k=top_k)] if has_chunks else []
    )
    memories = (
        [
            vars(hit)
            for hit in memory_search(
                user_id=user_id,
                embedding=embedding,
                top_k=settings.AGENTS_MEMORY_TOP_K,
                exclude_conversation_id=conversation_id,
            )
        ]
        if has_memories
        else []
    )
    return chunks, memories


async def retrieve(state: TurnState) -> dict:
    if state.get("intent") in ("calculate", "datetime"):
        return {"retrieved": [], "memories": [], "citations": [], "confidence": None}
    try:
        chunks, memories = await database_sync_to_async(_retrieve)(
            user_id=state["user_id"],
            conversation_id=state.get("conversation_id"),
            query=_question(state),
            knowledge=state.get("intent") == "knowledge",
        )
    except Exception:  # the answer can still be given without its context
        logger.exception("Retrieval failed; answering without it")
        chunks, memories = [], []
    similarities = [h["similarity"] for h in chunks + memories]
    threshold = settings.KB_MIN_SIMILARITY
    relevant = [h for h in chunks if h["similarity"] >= threshold]
    citations = [
        {
            "document_id": h["document_id"],
            "title": h["title"],
            "chunk_id": h["chunk_id"],
            "similarity": round(h["similarity"], 4),
        }
        for h in relevant
    ]
    used = list(state.get("agents_used", []))
    if chunks or memories:
        used.append("retrieve")
    return {
        "retrieved": relevant,
        "memories": [m for m in memories if m["similarity"] >= threshold],
        "citations": citations,
        "confidence": round(max(similarities), 4) if similarities else None,
        "agents_used": used,
    }


# tools


async def tools(state: TurnState) -> dict:
    calls = state.get("tool_calls") or []
    if not calls:
        return {"tool_results": []}
    context = ToolContext(user_id=state["user_id"], conversation_id=state.get("conversation_id"))
    results = []
    for call in calls[: settings.AGENTS_MAX_TOOL_CALLS]:
        try:
            result = await database_sync_to_async(tool_run)(
                name=call["tool"], arguments=call["arguments"], context=context
            )
        except Exception:  # a broken tool must not fail the turn: the model is told it failed
            logger.exception("Tool %s failed", call["tool"])
            result = ToolResult(tool=call["tool"], arguments=call["arguments"], result="The tool failed.", ok=False)
        results.append(result.as_dict())
    used = list(state.get("agents_used", [])) + [f"tool:{r['tool']}" for r in results]
    return {"tool_results": results, "agents_used": used}


# generate


CONTEXT_INTRO = (
    "Use the context below to answer the user's next message. Prefer it over what you remember; "
    "if it does not help, answer normally."
)


def context_message(state: TurnState) -> str | None:
    """Return the system message carrying retrieved passages, memories and tool results, or None."""
    parts = []
    for result in state.get("tool_results") or []:
        status = "result" if result["ok"] else "error"
        parts.append(f"Tool {result['tool']} {status}: {result['result']}")
    if state.get("retrieved"):
        parts.append("Passages from the user's documents:")
        parts += [f"[{i}] {h['title']}: {h['content']}" for i, h in enumerate(state["retrieved"], start=1)]
    if state.get("memories"):
        parts.append("From the user's earlier conversations:")
        parts += [f"- {m['content']}" for m in state["memories"]]
    if not parts:
        return None
    return CONTEXT_INTRO + "\n\n" + "\n".join(parts)


def with_context(messages: list[dict[str, str]], context: str | None) -> list[dict[str, str]]:
    """Return ``messages`` with ``context`` as a system message just before the last (the question)."""
    if not context:
        return messages
    return [*messages[:-1], {"role": "system", "content": context}, messages[-1]]


async def generate(state: TurnState, config) -> dict:
    generate_answer = config["configurable"]["generate"]
    messages = with_context(state["messages"], context_message(state))
    outcome = await generate_answer(messages)
    return {"outcome": outcome, "agents_used": list(state.get("agents_used", [])) + ["generate"]}


# The graph


def _observed(name: str, node: Callable) -> Callable:
    """Wrap ``node`` so it sends node start/end events and records its outcome in the turn's report."""
    takes_config = node is generate

    async def run(state: TurnState, config) -> dict:
        emit = config["configurable"]["emit"]
        report = config["configurable"]["report"]
        await emit({"type": "node", "name": name, "status": "start"})
        try:
            update = await (node(state, config) if takes_config else node(state))
        finally:
            await emit({"type": "node", "name": name, "status": "end"})
        merged = {**state, **update}
        report["citations"] = merged.get("citations", [])
        report["metadata"] = {
            "agents_used": merged.get("agents_used", []),
            "retrieval_confidence": merged.get("confidence"),
            "intent": {"name": merged.get("intent"), "source": merged.get("intent_source")},
            "tools": merged.get("tool_results", []),
            "memories": [
                {
                    "memory_id": m["memory_id"],
                    "conversation_id": m["conversation_id"],
                    "similarity": round(m["similarity"], 4),
                }
                for m in merged.get("memories", [])
            ],
        }
        return update

    run.__name__ = name
    return run


_graph = None


def turn_graph():
    """Return the compiled graph (built once per process)."""
    global _graph
    if _graph is None:
        from langgraph.graph import END, START, StateGraph

        builder = StateGraph(TurnState)
        for name, node in zip(NODES, (classify_intent, retrieve, tools, generate), strict=True):
            builder.add_node(name, _observed(name, node))
        builder.add_edge(START, "classify_intent")
        builder.add_edge("classify_intent", "retrieve")
        builder.add_edge("retrieve", "tools")
        builder.add_edge("tools", "generate")
        builder.add_edge("generate", END)
        _graph = builder.compile()
    return _graph


async def turn_graph_run(
    *,
    messages: list[dict[str, str]],
    user_id: int,
    conversation_id,
    emit: Callable[[dict], Awaitable[None]],
    generate: Callable[[list[dict[str, str]]], Awaitable[Any]],
    report: dict,
) -> Any:
    """Run the workflow for one turn and return what ``generate`` returned.

    ``messages`` end with the user's question; ``emit(event)`` sends a protocol event; ``generate
    (messages)`` produces the answer from the final messages (context included). ``report`` is
    filled as the nodes run, so it holds what is known even when generation fails:
    ``{"citations": [{document_id, title, chunk_id, similarity}], "metadata": {"agents_used",
    "retrieval_confidence", "intent", "tools", "memories"}}``. Errors of ``generate`` propagate.
    """
    state = await turn_graph().ainvoke(
        {"messages": messages, "user_id": user_id, "conversation_id": str(conversation_id), "agents_used": []},
        config={"configurable": {"emit": emit, "generate": generate, "report": report}},
    )
    return state["outcome"]
