"""Writes for conversations and messages: the only code that creates or changes them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from accounts.models import User
from config.exceptions import ParleyError
from inference.models import ModelConfig
from inference.providers import GenerationParams
from inference.selectors import model_config_get
from inference.services import generation_params

from .models import Conversation, Message, MessageStatus, Role
from .selectors import generation_active

TITLE_LENGTH = 60  # characters of the first message used as a conversation's title


def conversation_create(*, owner: User, title: str = "", model: ModelConfig | None = None) -> Conversation:
    """Create a conversation for ``owner``. An empty title is filled from the first message."""
    return Conversation.objects.create(owner=owner, title=title.strip()[:200], model=model)


def message_validate(*, content: str) -> str:
    """Return ``content`` stripped of surrounding whitespace.

    Raise :class:`ParleyError` ``empty_message`` (400) when nothing is left, or ``message_too_long``
    (413) when it is longer than ``CHAT_MAX_MESSAGE_CHARS`` characters (default 32,000).
    """
    content = (content or "").strip()
    if not content:
        raise ParleyError("The message is empty.", code="empty_message")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ParleyError(
            f"The message is {len(content):,} characters long; the limit is {limit:,}.",
            code="message_too_long",
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return content


@dataclass
class Turn:
    """What a sent message starts: the stored user message, its assistant placeholder, the model
    and the sampling parameters."""

    user_message: Message
    assistant_message: Message
    model: ModelConfig
    params: GenerationParams
    use_cache: bool = True  # False: the request asked to bypass the response caches


def message_send(
    *,
    conversation: Conversation,
    content: str,
    client_id: str = "",
    model_slug: str | None = None,
    params: dict | None = None,
    cache: bool = True,
) -> Turn:
    """Store the user's message and a ``streaming`` assistant placeholder, in one transaction.

    Runs before any model work, so nothing the user typed is lost if generation fails. The model is
    ``model_slug``, else the conversation's, else the default. Raise :class:`ParleyError`:
    ``empty_message`` / ``message_too_long`` (see :func:`message_validate`),
    ``generation_in_progress`` (409) when an answer is still being generated in this conversation,
    ``model_unavailable`` when no enabled model matches, ``invalid_params`` for bad ``params``
    (see :func:`inference.services.generation_params`).
    """
    content = message_validate(content=content)
    if not model_slug and conversation.model_id and conversation.model.is_enabled:
        model_slug = conversation.model.slug
    model = model_config_get(slug=model_slug)
    generation = generation_params(model=model, overrides=params)
    with transaction.atomic():
        # Lock the conversation so two sends cannot both pass the in-progress check.
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if generation_active(conversation=locked):
            raise ParleyError(
                "An answer is still being generated in this conversation; stop it or wait.",
                code="generation_in_progress",
                status_code=status.HTTP_409_CONFLICT,
            )
        user_message = Message.objects.create(
            conversation=locked, role=Role.USER, content=content, client_id=client_id[:64]
        )
        assistant_message = Message.objects.create(
            conversation=locked, role=Role.ASSISTANT, status=MessageStatus.STREAMING, model_slug=model.slug
        )
        update_fields = ["updated_at"]
        if not locked.title:
            locked.title = " ".join(content.split())[:TITLE_LENGTH]
            update_fields.append("title")
        if locked.model_id != model.pk:
            locked.model = model
            update_fields.append("model")
        locked.save(update_fields=update_fields)
    conversation.title, conversation.model = locked.title, locked.model
    return Turn(
        user_message=user_message,
        assistant_message=assistant_message,
        model=model,
        params=generation,
        use_cache=cache,
    )


def message_finalize(
    *,
    message_id,
    content: str,
    status: MessageStatus,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttft_ms: int | None = None,
    latency_ms: int | None = None,
    tokens_per_s: float | None = None,
    cost: Decimal | None = None,
    cached: bool = False,
    error: str = "",
    metadata: dict | None = None,
) -> Message:
    """Finish an assistant message: its text (partial on error or stop), status, usage and timings.

    ``ttft_ms`` and ``latency_ms`` are milliseconds from the start of the turn to the first token
    and to the end; ``tokens_per_s`` completion tokens per second; ``cost`` USD. ``metadata`` is
    merged into the message's metadata. Return the stored message.
    """
    message = Message.objects.get(pk=message_id)
    message.content = content
    message.status = status
    message.prompt_tokens = prompt_tokens
    message.completion_tokens = completion_tokens
    message.ttft_ms = ttft_ms
    message.latency_ms = latency_ms
    message.tokens_per_s = tokens_per_s
    message.cost = cost
    message.cached = cached
    message.error = error
    message.metadata = {**message.metadata, **(metadata or {})}
    message.finished_at = timezone.now()
    message.save(
        update_fields=[
            "content",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms",
            "latency_ms",
            "tokens_per_s",
            "cost",
            "cached",
            "error",
            "metadata",
            "finished_at",
        ]
    )
    return message
