import pytest
from django.http import Http404

from chat.models import Message, MessageStatus, Role
from chat.selectors import conversation_get, model_messages
from chat.services import conversation_create, message_finalize, message_send
from core.errors import ParleyError

pytestmark = pytest.mark.django_db


def test_send_stores_the_user_message_and_a_streaming_placeholder(conversation, local_model):
    turn = message_send(conversation=conversation, content="  Hello there  ", client_id="abc")
    assert turn.user_message.content == "Hello there"
    assert turn.user_message.client_id == "abc"
    assert turn.assistant_message.status == MessageStatus.STREAMING
    assert turn.assistant_message.model_slug == local_model.slug
    assert list(conversation.messages.values_list("role", flat=True)) == [Role.USER, Role.ASSISTANT]


def test_first_message_titles_the_conversation(conversation):
    message_send(conversation=conversation, content="Plan a\ntrip to Lisbon " + "please " * 20)
    conversation.refresh_from_db()
    assert conversation.title.startswith("Plan a trip to Lisbon please")
    assert len(conversation.title) == 60


def test_an_explicit_title_is_kept(user, local_model):
    conversation = conversation_create(owner=user, title="Mine")
    message_send(conversation=conversation, content="Hi")
    conversation.refresh_from_db()
    assert conversation.title == "Mine"


def test_a_second_send_while_generating_is_refused(conversation):
    message_send(conversation=conversation, content="First")
    with pytest.raises(ParleyError) as error:
        message_send(conversation=conversation, content="Second")
    assert error.value.code == "generation_in_progress"
    assert error.value.status_code == 409
    assert conversation.messages.count() == 2


def test_finished_generation_allows_the_next_send(conversation):
    turn = message_send(conversation=conversation, content="First")
    message_finalize(message_id=turn.assistant_message.pk, content="Answer", status=MessageStatus.COMPLETE)
    message_send(conversation=conversation, content="Second")
    assert conversation.messages.filter(role=Role.USER).count() == 2


def test_history_for_the_model_leaves_out_failed_and_pending_answers(conversation, local_model):
    local_model.system_prompt = "Be brief."
    turn = message_send(conversation=conversation, content="One")
    message_finalize(message_id=turn.assistant_message.pk, content="partial", status=MessageStatus.ERROR)
    turn = message_send(conversation=conversation, content="Two")
    message_finalize(message_id=turn.assistant_message.pk, content="Cut sh", status=MessageStatus.CANCELLED)
    message_send(conversation=conversation, content="Three")
    assert model_messages(conversation=conversation, system_prompt="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "Cut sh"},
        {"role": "user", "content": "Three"},
    ]


def test_conversations_of_others_are_not_found(conversation, other_user):
    with pytest.raises(Http404):
        conversation_get(user=other_user, conversation_id=conversation.pk)


def test_only_assistant_messages_can_be_unfinished(conversation):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        Message.objects.create(conversation=conversation, role=Role.USER, status=MessageStatus.STREAMING)
