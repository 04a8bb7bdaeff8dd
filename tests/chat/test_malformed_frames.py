"""Malformed WebSocket frames (issue 20, item 9): an error frame for each, and the socket stays open.

Before, a binary frame, deeply nested JSON, or NUL / a lone surrogate in ``content``, ``model`` or
``client_id`` closed the socket with 1011 and no word to the client.
"""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.models import Message
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 100_000 + "]" * 100_000


def send(**fields) -> str:
    """Return a ``message.send`` frame with ``fields``, where ``\\u0000`` and ``\\ud800`` stay escapes."""
    return json.dumps({"type": "message.send", "content": "Hi", **fields})


FRAMES = {
    "binary": {"bytes_data": b"\x00\x01\x02"},
    "not JSON": {"text_data": "not json"},
    "truncated JSON": {"text_data": '{"type": "message.send", "content": "Hi"'},
    "a JSON array": {"text_data": "[1, 2]"},
    "a JSON string": {"text_data": '"message.send"'},
    "nested 100,000 deep": {"text_data": DEEP},
    "an object nested 50,000 deep": {"text_data": '{"a":' * 50_000 + "1" + "}" * 50_000},
    "unclosed brackets": {"text_data": "[" * 100_000},
    "NUL in content": {"text_data": send(content="a\u0000b")},
    "lone surrogate in content": {"text_data": send(content="a\ud800b")},
    "NUL in model": {"text_data": send(model="smollm2-135m\u0000")},
    "lone surrogate in model": {"text_data": send(model="\udfff")},
    "NUL in client_id": {"text_data": send(client_id="c\u0000")},
    "lone surrogate in client_id": {"text_data": send(client_id="\ud83d")},
    "model not a string": {"text_data": send(model=["smollm2-135m"])},
    "content not a string": {"text_data": send(content={"text": "Hi"})},
    "params not an object": {"text_data": send(params="hot")},
    "NaN in params": {"text_data": '{"type": "message.send", "content": "Hi", "params": {"temperature": NaN}}'},
    "type not a string": {"text_data": '{"type": ["message.send"]}'},
}


async def connect(path: str, user):
    communicator = WebsocketCommunicator(application, path, headers=await ws_headers(user))
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


async def answer_to(communicator, frame: dict) -> list[dict]:
    """Send ``frame``, then a ping; return the frames received before the pong (which shows the socket open)."""
    await communicator.send_to(**frame)
    await communicator.send_json_to({"type": "ping"})
    answers = []
    while (answer := await communicator.receive_json_from(timeout=10)) != {"type": "pong"}:
        answers.append(answer)
    return answers


async def test_each_malformed_chat_frame_gets_an_error_and_the_socket_stays_open(local_model):
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    communicator = await connect(f"/ws/chat/{conversation.pk}/", user)
    for name, frame in FRAMES.items():
        answers = await answer_to(communicator, frame)
        assert [a["type"] for a in answers] == ["error"], f"{name}: {answers}"
        assert answers[0]["code"] and answers[0]["detail"], name
    await communicator.disconnect()
    assert await Message.objects.filter(conversation=conversation).acount() == 0, "nothing malformed was stored"


async def test_each_malformed_frame_to_the_documents_socket_gets_an_error_and_the_socket_stays_open(db):
    user = await database_sync_to_async(make_user)("alice")
    communicator = await connect("/ws/documents/", user)
    for name, frame in FRAMES.items():
        if "send" in frame.get("text_data", ""):
            continue  # well-formed JSON objects: this socket ignores what it does not know
        answers = await answer_to(communicator, frame)
        assert [a["type"] for a in answers] == ["error"], f"{name}: {answers}"
    await communicator.disconnect()
