"""Conversations exported as JSON or Markdown: the renderers of :func:`chat.services.conversations_export`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from django.db.models import Prefetch, QuerySet

from .models import Conversation, Message


def conversations_for_export(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """Return ``queryset`` with owners, models and messages (oldest first) fetched in three queries."""
    return queryset.select_related("owner", "model").prefetch_related(
        Prefetch("messages", queryset=Message.objects.order_by("created_at"))
    )


def conversation_export_data(conversation: Conversation) -> dict:
    """Return one conversation as plain data: ``{"id", "title", "owner", "model", "created_at", ..., "messages"}``.

    Each message: ``role``, ``content``, ``status``, ``model``, tokens, ``ttft_ms``, ``latency_ms``,
    ``cost`` (USD, string), ``cached``, ``error``, ``created_at`` (ISO 8601), ``parent_id`` (the
    message it follows; null for a first message) and ``active`` (on the branch shown; false for an
    earlier edit or regeneration and what followed it).
    """
    messages = list(conversation.messages.all())
    parents = {m.pk: m.parent_id for m in messages}
    active, node = set(), conversation.active_leaf_id
    while node is not None and node not in active:
        active.add(node)
        node = parents.get(node)
    return {
        "id": str(conversation.pk),
        "title": str(conversation),
        "owner": conversation.owner.username,
        "model": conversation.model.slug if conversation.model else None,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "archived_at": conversation.archived_at.isoformat() if conversation.archived_at else None,
        "messages": [
            {
                "id": str(m.pk),
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "model": m.model_slug or None,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "ttft_ms": m.ttft_ms,
                "latency_ms": m.latency_ms,
                "cost": str(m.cost) if m.cost is not None else None,
                "cached": m.cached,
                "error": m.error or None,
                "created_at": m.created_at.isoformat(),
                "parent_id": str(m.parent_id) if m.parent_id else None,
                "active": m.pk in active,
            }
            for m in messages
        ],
    }


def conversations_export_json(conversations: Iterable[Conversation]) -> str:
    """Return ``{"conversations": [...]}`` (see :func:`conversation_export_data`) as indented JSON."""
    data = {"conversations": [conversation_export_data(c) for c in conversations]}
    return json.dumps(data, ensure_ascii=False, indent=2)


# Characters that start Markdown structure anywhere in a line (emphasis, code, links, images, raw
# HTML, headings, tables, strikethrough, escapes); each is backslash-escaped, which CommonMark
# allows for any ASCII punctuation.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>#|~])")
# Structure that only a line's start makes: list items, setext heading underlines, thematic breaks,
# ordered list items (1. or 1)).
_MARKDOWN_LINE_START = re.compile(r"^(\s{0,3})([-+=])", re.MULTILINE)
_MARKDOWN_ORDERED = re.compile(r"^(\s{0,3}\d{1,9})([.)])", re.MULTILINE)


def markdown_escape(text: str, *, single_line: bool = False) -> str:
    """Return ``text`` escaped so that Markdown shows it literally: it cannot make headings, list
    items (a forged ``- owner:`` line), links, emphasis, code or raw HTML.

    ``single_line``: newlines become spaces (for a heading or a list item).
    """
    if single_line:
        text = " ".join(text.splitlines())
    text = _MARKDOWN_INLINE.sub(r"\\\1", text)
    text = _MARKDOWN_LINE_START.sub(r"\1\\\2", text)
    return _MARKDOWN_ORDERED.sub(r"\1\\\2", text)


def conversations_export_markdown(conversations: Iterable[Conversation]) -> str:
    """Return the conversations as one Markdown document: a heading per conversation, a section per message.

    Every text a user can set (titles, usernames, message content, errors) is escaped
    (:func:`markdown_escape`): the structure of the document is the exporter's alone.
    """
    parts: list[str] = []
    for conversation in conversations:
        data = conversation_export_data(conversation)
        parts.append(f"# {markdown_escape(data['title'], single_line=True)}\n")
        parts.append(
            f"- owner: {markdown_escape(data['owner'], single_line=True)}\n"
            f"- model: {markdown_escape(data['model'] or '–', single_line=True)}\n"
            f"- created: {data['created_at']}\n- id: {data['id']}\n"
        )
        for m in data["messages"]:
            facts = [m["created_at"], m["status"]]
            if m["model"]:
                facts.append(m["model"])
            if m["completion_tokens"] is not None:
                facts.append(f"{m['prompt_tokens']}+{m['completion_tokens']} tokens")
            if m["cached"]:
                facts.append("cached")
            if not m["active"]:
                facts.append("another branch")
            facts = [markdown_escape(str(fact), single_line=True) for fact in facts]
            parts.append(f"## {m['role'].capitalize()}\n\n_{' · '.join(facts)}_\n\n{markdown_escape(m['content'])}\n")
            if m["error"]:
                parts.append(f"> Error: {markdown_escape(m['error'], single_line=True)}\n")
        parts.append("---\n")
    return "\n".join(parts)
