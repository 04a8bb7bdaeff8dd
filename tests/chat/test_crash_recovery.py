"""Answers never stay ``streaming`` after their process dies (issue 20, item 4).

A real Daphne is killed (SIGKILL) in the middle of an answer; its generation lease then lapses, and
the Celery beat task, or the first user who meets the conversation, ends the answer ``error`` with
its partial text kept.
"""

import json
import os
import signal
import time

import httpx
import pytest
from django.test import Client
from django_redis import get_redis_connection

from accounts.limits_store import limits_key
from accounts.quotas import generation_live, generation_renew
from accounts.services import api_key_create
from chat.models import Message, MessageStatus
from chat.services import INTERRUPTED, conversation_create, conversation_orphans_finalize, message_send
from chat.tasks import orphans_finalize_task
from conftest import lease_store_restarted, make_user
from tests.core.test_health import redis_down

LEASE_SECONDS = 2
CONFIRM_SECONDS = 0.5
STREAM_BEFORE_KILL = 1.6  # seconds of tokens before the kill: the text so far is stored every second


@pytest.fixture
def short_lease(settings):
    """Leases of 2 s, no grace, orphans confirmed after 0.5 s; set before Daphne is forked so it has them."""
    settings.GENERATION_LEASE_SECONDS = LEASE_SECONDS
    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    settings.GENERATION_ORPHAN_CONFIRM_SECONDS = CONFIRM_SECONDS


def answer_then_kill(daphne_process, user, conversation_id) -> tuple[str, str]:
    """Start a long answer over SSE, SIGKILL Daphne once tokens have flowed; return (message id, text seen)."""
    key = api_key_create(user=user, name="crash")[1]
    message_id, text, first_token_at = None, "", None
    with httpx.stream(
        "POST",
        f"{daphne_process.url}/api/v1/conversations/{conversation_id}/messages/",
        json={
            "content": "Write a very long story about a knight, a dragon and a lost city.",
            "params": {"max_tokens": 500},
            "cache": False,
        },
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert event != "generation.completed", "the answer ended before the kill: make it longer"
                if event == "generation.started":
                    message_id = data["message_id"]
                elif event == "token":
                    text += data["delta"]
                    first_token_at = first_token_at or time.monotonic()
            if first_token_at and time.monotonic() - first_token_at > STREAM_BEFORE_KILL:
                os.kill(daphne_process.pid, signal.SIGKILL)
                break
    daphne_process.join(10)
    assert message_id and text
    return message_id, text


def wait_for_lapse(user, message_id: str) -> None:
    deadline = time.monotonic() + LEASE_SECONDS + 2
    while generation_live(user_id=user.pk, generation_id=message_id):
        assert time.monotonic() < deadline, "the dead process's lease did not lapse"
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
def test_beat_ends_an_answer_whose_server_was_killed_keeping_its_text(short_lease, local_model, daphne_process):
    user = make_user("alice")
    conversation = conversation_create(owner=user)
    message_id, seen = answer_then_kill(daphne_process, user, conversation.pk)
    killed_at = time.monotonic()
    answer = Message.objects.get(pk=message_id)
    assert answer.status == MessageStatus.STREAMING  # what the crash left
    assert answer.content and seen.startswith(answer.content)

    # The beat task, called as beat would (every 30 s there; here as fast as it likes).
    while Message.objects.get(pk=message_id).status == MessageStatus.STREAMING:
        assert time.monotonic() - killed_at < LEASE_SECONDS + CONFIRM_SECONDS + 2, "still streaming"
        orphans_finalize_task()
        time.sleep(0.1)
    answer.refresh_from_db()
    assert answer.status == MessageStatus.ERROR
    assert answer.error == INTERRUPTED
    assert answer.content and seen.startswith(answer.content)  # the partial text is kept
    assert answer.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_without_beat_the_conversation_is_usable_again_once_the_lease_lapses(short_lease, local_model, daphne_process):
    user = make_user("alice")
    conversation = conversation_create(owner=user)
    message_id, _ = answer_then_kill(daphne_process, user, conversation.pk)
    wait_for_lapse(user, message_id)
    client = Client()
    client.force_login(user)

    # The page and the message list (what the chat page reads when it catches up) show it ended:
    # the page offers no Stop for it.
    page = client.get(f"/c/{conversation.pk}/")
    assert page.status_code == 200
    assert b'"streaming"' not in page.content  # chat.js shows Stop only for a streaming answer
    listed = {m["id"]: m for m in client.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()}
    assert listed[message_id]["status"] == MessageStatus.ERROR
    assert listed[message_id]["error"] == INTERRUPTED
    stop = client.post(f"/api/v1/conversations/{conversation.pk}/stop/")
    assert stop.status_code == 409
    assert stop.json()["error"]["code"] == "no_generation"
    assert client.delete(f"/api/v1/conversations/{conversation.pk}/").status_code == 204


@pytest.mark.django_db
def test_a_send_after_an_orphaned_answer_is_accepted_and_ends_the_orphan(conversation, settings):
    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    orphan = message_send(conversation=conversation, content="First").assistant_message
    # The process died: its lease is gone, never released.
    get_redis_connection("default").zrem(limits_key("gen", conversation.owner_id), str(orphan.pk))
    Message.objects.filter(pk=orphan.pk).update(content="Half an ans")
    message_send(conversation=conversation, content="Second")  # no 409
    orphan.refresh_from_db()
    assert orphan.status == MessageStatus.ERROR
    assert orphan.content == "Half an ans"


@pytest.mark.django_db
def test_a_live_answer_whose_lease_redis_lost_is_not_taken_for_an_orphan(conversation, settings):
    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    answer = message_send(conversation=conversation, content="First").assistant_message
    get_redis_connection("default").zrem(limits_key("gen", conversation.owner_id), str(answer.pk))  # a flush
    assert orphans_finalize_task() == 0  # first seen without a lease: only suspected
    assert generation_renew(user_id=conversation.owner_id, generation_id=str(answer.pk))  # the live turn renews
    settings.GENERATION_ORPHAN_CONFIRM_SECONDS = 0  # would finalise at once what is still suspected
    assert orphans_finalize_task() == 0
    answer.refresh_from_db()
    assert answer.status == MessageStatus.STREAMING


@pytest.mark.django_db
def test_a_redis_restarted_empty_makes_no_live_answer_an_orphan_for_a_lease_period(conversation, settings):
    """Every lease gone with Redis: neither the message list nor beat ends the answer until a lease period
    (and the limits' rest after an error) has passed without its turn taking the lease again."""
    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    settings.GENERATION_ORPHAN_CONFIRM_SECONDS = 0
    settings.GENERATION_LEASE_SECONDS = 1
    settings.CACHE_RETRY_AFTER_ERROR = 0.2  # the settling time is a lease period and this rest
    answer = message_send(conversation=conversation, content="First").assistant_message
    lease_store_restarted()
    assert conversation_orphans_finalize(conversation=conversation) == []  # the page lists its messages
    assert orphans_finalize_task() == 0
    answer.refresh_from_db()
    assert answer.status == MessageStatus.STREAMING
    time.sleep(1.4)  # the settling time with no renewal: the turn is dead after all
    assert [m.pk for m in conversation_orphans_finalize(conversation=conversation)] == [answer.pk]
    answer.refresh_from_db()
    assert (answer.status, answer.error) == (MessageStatus.ERROR, INTERRUPTED)


@pytest.mark.django_db
def test_with_redis_down_nothing_is_finalised(conversation, settings):
    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    settings.GENERATION_ORPHAN_CONFIRM_SECONDS = 0
    answer = message_send(conversation=conversation, content="First").assistant_message
    redis_down(settings)
    assert orphans_finalize_task() == 0
    answer.refresh_from_db()
    assert answer.status == MessageStatus.STREAMING


@pytest.mark.django_db(transaction=True)
async def test_stop_on_an_orphaned_answer_ends_it_for_every_open_page(local_model, settings):
    from channels.db import database_sync_to_async

    from tests.chat.test_websocket import connect, receive_until

    settings.GENERATION_ORPHAN_GRACE_SECONDS = 0
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    turn = await database_sync_to_async(message_send)(conversation=conversation, content="First")
    orphan = turn.assistant_message
    get_redis_connection("default").zrem(limits_key("gen", user.pk), str(orphan.pk))  # its process died
    communicator, connected, _ = await connect(user, conversation.pk)
    assert connected
    await communicator.send_json_to({"type": "generation.stop"})
    completed = (await receive_until(communicator, "generation.completed"))[-1]["message"]
    await communicator.disconnect()
    assert completed["id"] == str(orphan.pk)
    assert completed["status"] == MessageStatus.ERROR
    assert completed["error"] == INTERRUPTED
