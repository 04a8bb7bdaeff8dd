"""INFERENCE_EXECUTION=celery: turns run in a real Celery worker; clients see them as if inline."""

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create
from tests.servers import start_worker, stop_worker

from .test_websocket import connect, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(tmp_path, local_model):
    process = start_worker(tmp_path, "turns")
    yield process
    stop_worker(process)


def test_turns_run_in_the_worker_and_reach_rest_and_websocket_clients(worker, user, settings):
    settings.INFERENCE_EXECUTION = "celery"
    conversation = conversation_create(owner=user)
    api = APIClient()
    api.force_login(user)

    response = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Hello!", "params": {"max_tokens": 8}},
        format="json",
    )
    assert response.status_code == 201
    answer = response.json()["assistant_message"]
    assert answer["status"] == "complete" and answer["content"]

    async def over_the_websocket():
        communicator, connected, _ = await connect(user, conversation.pk)
        assert connected
        await communicator.send_json_to({"type": "message.send", "content": "And again?", "params": {"max_tokens": 8}})
        events = await receive_until(communicator, "generation.completed")
        await communicator.disconnect()
        return events

    events = async_to_sync(over_the_websocket)()
    tokens = [e["delta"] for e in events if e["type"] == "token"]
    final = events[-1]["message"]
    # The worker's events reached this socket through the channel layer, deltas joining to the answer.
    assert tokens and "".join(tokens) == final["content"]
    assert final["status"] == "complete"
    stored = Message.objects.filter(conversation=conversation, role=Role.ASSISTANT)
    assert [m.status for m in stored] == [MessageStatus.COMPLETE, MessageStatus.COMPLETE]

    # Without a worker nothing generates: the send is stored and waits (here 1 s) for one.
    stop_worker(worker)
    settings.TURN_WAIT_SECONDS = 1
    response = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Anyone there?", "params": {"max_tokens": 8}},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["user_message"]["content"] == "Anyone there?"
    assert response.json()["assistant_message"]["status"] == "streaming"
