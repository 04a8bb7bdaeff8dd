"""Sending over REST as server-sent events: a live Daphne server, the Redis channel layer and SmolLM2."""

import json
import time

import httpx
import pytest
from asgiref.testing import ApplicationCommunicator
from rest_framework.test import APIClient

from accounts.services import api_key_create
from chat import sse
from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create
from conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60  # seconds: a cold model load plus a short generation takes well under this


@pytest.fixture
def alice(transactional_db):
    return make_user("alice")


@pytest.fixture
def key(alice) -> str:
    return api_key_create(user=alice, name="sse tests")[1]


@pytest.fixture
def conversation(alice, local_model):
    return conversation_create(owner=alice)


def parse_events(lines) -> list[dict]:
    """Return the SSE events of ``lines`` as ``{"event", "data"}``, keep-alive comments as ``{"comment"}``."""
    events, current = [], {}
    for line in lines:
        if line == "":
            if current:
                events.append(current)
            current = {}
        elif line.startswith(":"):
            events.append({"comment": line[1:].strip()})
        else:
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    if current:
        events.append(current)
    return events


def stream(base_url, key, path, body, *, on_event=None):
    """POST ``body`` asking for SSE; return ``(response, events)``. ``on_event(event)`` may stop reading early."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    events = []
    with httpx.stream("POST", base_url + path, json=body, headers=headers, timeout=TIMEOUT) as response:
        if response.status_code != 200:
            response.read()
            return response, events
        block = []
        for line in response.iter_lines():
            block.append(line)
            if line == "":
                parsed = parse_events(block)
                block = []
                events.extend(parsed)
                if on_event is not None and any(on_event(e) is False for e in parsed):
                    break
        events.extend(parse_events(block))
    return response, events


def test_a_send_streams_the_turns_events_in_order_and_the_tokens_join_to_the_stored_answer(
    daphne_url, key, conversation
):
    question = "Name three colours of the rainbow."
    response, events = stream(
        daphne_url,
        key,
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": question, "params": {"max_tokens": 24}, "cache": False},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = [e for e in events if "event" in e]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["message.created", "generation.started"]
    assert kinds[-1] == "generation.completed"
    assert set(kinds[2:-1]) <= {"node", "token"}, kinds  # agent steps, then the answer's deltas
    assert "token" in kinds
    assert all(e["event"] == e["data"]["type"] for e in events)  # data is the WebSocket frame

    created, started, completed = events[0]["data"], events[1]["data"], events[-1]["data"]
    assert created["message"]["content"] == question
    assert created["message"]["role"] == Role.USER
    answer = Message.objects.get(pk=started["message_id"])
    assert answer.status == MessageStatus.COMPLETE
    deltas = "".join(e["data"]["delta"] for e in events if e["event"] == "token")
    assert deltas == answer.content == completed["message"]["content"]
    assert answer.content
    assert completed["message"]["id"] == str(answer.pk)
    assert completed["message"]["usage"]["completion_tokens"] > 0
    assert Message.objects.filter(conversation=conversation, role=Role.USER, content=question).count() == 1

    # Regenerating the answer streams the same way, without a message.created.
    response, events = stream(
        daphne_url,
        key,
        f"/api/v1/conversations/{conversation.pk}/messages/{answer.pk}/regenerate/",
        {"params": {"max_tokens": 8}},
    )
    assert response.status_code == 200
    kinds = [e["event"] for e in events if "event" in e]
    assert kinds[0] == "generation.started"
    assert kinds[-1] == "generation.completed"
    new_answer = events[-1]["data"]["message"]
    assert new_answer["id"] != str(answer.pk)
    assert "".join(e["data"]["delta"] for e in events if e.get("event") == "token") == new_answer["content"]


def test_stop_during_a_stream_ends_it_with_a_cancelled_answer_keeping_its_partial_text(daphne_url, key, conversation):
    stopped = []

    def stop_at_first_token(event):
        if event.get("event") == "token" and not stopped:
            reply = httpx.post(
                f"{daphne_url}/api/v1/conversations/{conversation.pk}/stop/",
                headers={"Authorization": f"Bearer {key}"},
                timeout=TIMEOUT,
            )
            stopped.append(reply.status_code)

    _, events = stream(
        daphne_url,
        key,
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Write a long story about a dragon and a knight.", "params": {"max_tokens": 400}, "cache": False},
        on_event=stop_at_first_token,
    )

    assert stopped == [202]
    completed = events[-1]
    assert completed["event"] == "generation.completed"
    message = completed["data"]["message"]
    assert message["status"] == MessageStatus.CANCELLED
    deltas = "".join(e["data"]["delta"] for e in events if e.get("event") == "token")
    assert message["content"] == deltas
    assert deltas  # the partial text is kept
    assert Message.objects.get(pk=message["id"]).content == deltas


def test_a_client_that_leaves_midway_does_not_cancel_the_generation(daphne_url, key, conversation):
    _, events = stream(
        daphne_url,
        key,
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Count from one to ten.", "params": {"max_tokens": 32}, "cache": False},
        on_event=lambda event: event.get("event") != "generation.started",
    )
    assert events[-1]["event"] == "generation.started"
    answer_id = events[-1]["data"]["message_id"]

    deadline = time.monotonic() + TIMEOUT
    while Message.objects.get(pk=answer_id).status == MessageStatus.STREAMING and time.monotonic() < deadline:
        time.sleep(0.2)
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [({"content": ""}, 400, "empty_message"), ({"content": "hi", "model": "no-such-model"}, 400, None)],
)
def test_an_sse_request_that_fails_before_streaming_is_a_json_error(conversation, alice, body, status, code):
    client = APIClient()
    client.force_login(alice)
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", body, format="json", HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert set(response.json()["error"]) >= {"code", "detail"}
    if code:
        assert response.json()["error"]["code"] == code
    assert not Message.objects.filter(conversation=conversation).exists()


def test_an_other_users_conversation_is_not_found_as_sse(conversation, local_model):
    client = APIClient()
    client.force_login(make_user("mallory"))
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "hi"},
        format="json",
        HTTP_ACCEPT="text/event-stream",
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_with_the_channel_layer_down_the_stream_still_ends_with_the_answer(
    key, conversation, settings, monkeypatch
):
    # Nothing listens on port 1: every channel-layer call fails at once, as with Redis down.
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    }
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    from config.asgi import application

    body = json.dumps({"content": "Say hello.", "params": {"max_tokens": 16}, "cache": False}).encode()
    # Channels' HttpCommunicator wants a body in every message; ASGI lets the last one omit it.
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": f"/api/v1/conversations/{conversation.pk}/messages/",
            "query_string": b"",
            "headers": [
                (b"authorization", f"Bearer {key}".encode()),
                (b"content-length", str(len(body)).encode()),
                (b"accept", b"text/event-stream"),
                (b"content-type", b"application/json"),
                (b"host", b"testserver"),
            ],
        },
    )
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(TIMEOUT)
    response = {"status": start["status"], "body": b""}
    while True:
        message = await communicator.receive_output(TIMEOUT)
        response["body"] += message.get("body", b"")
        if not message.get("more_body"):
            break

    assert response["status"] == 200, response["body"]
    events = parse_events(response["body"].decode().split("\n"))
    kinds = [e.get("event") for e in events if "event" in e]
    assert kinds == ["message.created", "generation.completed"]
    assert {"comment": "ping"} in events  # keep-alive while the answer is generated
    message = events[-1]["data"]["message"]
    assert message["status"] == MessageStatus.COMPLETE
    assert message["content"]
