"""Reads for conversations and messages."""

from datetime import timedelta

from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import User

from .models import Conversation, Message, MessageStatus, Role

# A message still "streaming" after this long was orphaned by a process that died mid-generation.
STALE_GENERATION_AFTER = timedelta(minutes=10)


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    """Return ``user``'s conversations, most recently active first."""
    return Conversation.objects.filter(owner=user).select_related("model")


def conversation_get(*, user: User, conversation_id) -> Conversation:
    """Return ``user``'s conversation ``conversation_id``.

    Raise ``Http404`` when it does not exist or belongs to someone else (the two are not told apart,
    so ids of other users' conversations are not revealed).
    """
    conversation = conversation_list(user=user).filter(pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """Return the conversation's messages, oldest first."""
    return conversation.messages.order_by("created_at")


def generation_active(*, conversation: Conversation) -> Message | None:
    """Return the assistant message being generated in ``conversation``, if any (ignoring stale ones)."""
    return (
        conversation.messages.filter(
            role=Role.ASSISTANT,
            status__in=[MessageStatus.PENDING, MessageStatus.STREAMING],
            created_at__gte=timezone.now() - STALE_GENERATION_AFTER,
        )
        .order_by("-created_at")
        .first()
    )


def model_messages(*, conversation: Conversation, system_prompt: str = "") -> list[dict[str, str]]:
    """Return the conversation as chat messages for a model: ``[{"role", "content"}]``, oldest first.

    Includes the system prompt (when given), user messages and finished assistant answers (complete,
    or the partial text of a cancelled one); leaves out failed answers and the one being generated.
    """
    messages = [{"role": Role.SYSTEM.value, "content": system_prompt}] if system_prompt else []
    rows = message_list(conversation=conversation).filter(
        role__in=[Role.USER, Role.ASSISTANT], status__in=[MessageStatus.COMPLETE, MessageStatus.CANCELLED]
    )
    messages += [{"role": m.role, "content": m.content} for m in rows if m.content]
    return messages
