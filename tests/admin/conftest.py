"""Fixtures for the admin tests: conversations with messages in every interesting state."""

import pytest

from accounts.models import User
from chat.models import MessageStatus
from chat.services import conversation_create, message_finalize, message_send


def finished_turn(conversation, question: str, answer: str, *, status=MessageStatus.COMPLETE, error: str = ""):
    """Store a question and its answer through chat.services, without running the model."""
    turn = message_send(conversation=conversation, content=question)
    return message_finalize(
        message_id=turn.assistant_message.pk,
        content=answer,
        status=status,
        prompt_tokens=12,
        completion_tokens=7,
        ttft_ms=30,
        latency_ms=200,
        error=error,
    )


@pytest.fixture
def staff_user(db) -> User:
    """A staff member with no permissions at all: the admin lets them in, but shows them nothing."""
    return User.objects.create_user(username="clerk", password="correct horse battery", is_staff=True)


@pytest.fixture
def chats(user, local_model):
    """Two conversations of alice: one fine ("Weather"), one whose last answer failed ("Broken")."""
    weather = conversation_create(owner=user, title="Weather")
    finished_turn(weather, "Is it raining in Lisbon?", "Sunny with clouds.")
    broken = conversation_create(owner=user, title="Broken")
    finished_turn(broken, "Tell me about zebras", "Zebras have", status=MessageStatus.ERROR, error="model crashed")
    return weather, broken
