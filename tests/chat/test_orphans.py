from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.models import Message, MessageStatus
from chat.services import message_send

pytestmark = pytest.mark.django_db


def test_answers_interrupted_by_a_dead_process_are_finalised_keeping_their_text(conversation):
    old = message_send(conversation=conversation, content="First").assistant_message
    Message.objects.filter(pk=old.pk).update(content="Half an ans", created_at=timezone.now() - timedelta(hours=1))
    call_command("finalize_orphans", stdout=StringIO())
    old.refresh_from_db()
    assert old.status == MessageStatus.ERROR
    assert old.content == "Half an ans"
    assert "stopped while this answer was being generated" in old.error


def test_recent_generations_are_left_alone_unless_all(conversation):
    live = message_send(conversation=conversation, content="First").assistant_message
    call_command("finalize_orphans", stdout=StringIO())
    live.refresh_from_db()
    assert live.status == MessageStatus.STREAMING
    out = StringIO()
    call_command("finalize_orphans", "--all", stdout=out)
    live.refresh_from_db()
    assert live.status == MessageStatus.ERROR
    assert "Finalised 1" in out.getvalue()
