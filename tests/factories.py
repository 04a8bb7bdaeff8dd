"""Shared builders of test data that a service would otherwise write through a whole turn."""

from __future__ import annotations

from chat.models import Conversation, Message


def message_add(*, conversation: Conversation, role: str, content: str = "", **fields) -> Message:
    """Store a finished message at the end of ``conversation``'s active path, without a turn; return it.

    It follows the active leaf and becomes it, as :func:`chat.services.message_send` links messages,
    so it shows in the chat, the message list and share snapshots. ``fields``: any other Message fields.
    """
    leaf_id = Conversation.objects.filter(pk=conversation.pk).values_list("active_leaf_id", flat=True).get()
    message = Message.objects.create(conversation=conversation, role=role, content=content, parent_id=leaf_id, **fields)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf=message)
    conversation.active_leaf_id = message.pk
    return message
