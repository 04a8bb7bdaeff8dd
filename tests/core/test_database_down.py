"""PostgreSQL unreachable: every interface answers 503 ``database_unavailable`` and recovers by itself (issue 19).

The outage is real: the test's database settings point at a port where nothing listens (each new
connection is refused, as with PostgreSQL stopped), then back; nothing restarts in between.
"""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client

from accounts.services import api_key_create
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers
from core.websocket import CLOSE_TRY_AGAIN_LATER
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


class Outage:
    """Switch the default database between reachable and refused, for every thread's next connection."""

    def __init__(self):
        self.settings = connections["default"].settings_dict  # shared by every thread's connection
        self.saved = {key: self.settings[key] for key in ("HOST", "PORT")}

    def begin(self) -> None:
        # Other threads' connections (the consumers' pool threads) go too, as with a real restart.
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        connections.close_all()
        self.settings.update(HOST="127.0.0.1", PORT=str(free_port()))

    def end(self) -> None:
        connections.close_all()
        self.settings.update(self.saved)


@pytest.fixture
def outage():
    down = Outage()
    yield down
    down.end()  # before the database is flushed


@pytest.fixture
def alice():
    return make_user("alice")


def test_the_rest_api_answers_503_database_unavailable_then_recovers(alice, outage):
    client = Client()
    client.force_login(alice)

    outage.begin()
    response = client.get("/api/v1/conversations/")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response["Retry-After"]) > 0

    outage.end()
    assert client.get("/api/v1/conversations/").status_code == 200


def test_a_page_answers_a_short_503_page_then_recovers(alice, outage):
    client = Client()
    client.force_login(alice)

    outage.begin()
    response = client.get("/")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert b"unavailable" in response.content
    assert int(response["Retry-After"]) > 0

    outage.end()
    assert client.get("/").status_code == 200


def test_the_v1_gateway_answers_an_openai_shaped_503_then_recovers(alice, local_model, outage):
    _api_key, key = api_key_create(user=alice, name="script")
    client = Client(headers={"Authorization": f"Bearer {key}"})
    completion = {"model": local_model.slug, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    outage.begin()
    for response in (
        client.get("/v1/models"),
        client.post("/v1/chat/completions", completion, content_type="application/json"),
    ):
        assert response.status_code == 503
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
        assert int(response["Retry-After"]) > 0

    outage.end()
    assert client.get("/v1/models").status_code == 200


async def test_websockets_are_told_and_not_crashed(alice, local_model, outage):
    conversation = await database_sync_to_async(conversation_create)(owner=alice)
    path = f"/ws/chat/{conversation.pk}/"
    headers = await ws_headers(alice)
    opened = WebsocketCommunicator(application, path, headers=headers)
    assert (await opened.connect(timeout=10))[0]

    # Sockets' recovery is not checked here: in-process communicators share the test's database
    # connection objects (asgiref's context-local ``connections``), which a real Daphne does not.
    await database_sync_to_async(outage.begin)()
    # A message on an open socket: an error frame, and the socket stays open.
    await opened.send_json_to({"type": "message.send", "content": "Hello", "client_id": "c1"})
    frame = await opened.receive_json_from(timeout=10)
    while frame["type"] not in ("error", "message.created"):
        frame = await opened.receive_json_from(timeout=10)
    assert (frame["type"], frame["code"]) == ("error", "database_unavailable")
    await opened.send_json_to({"type": "ping"})
    assert await opened.receive_json_from(timeout=10) == {"type": "pong"}

    # A new socket (its session cannot be read): accepted, told, closed with "try again later".
    refused = WebsocketCommunicator(application, path, headers=headers)
    assert (await refused.connect(timeout=10))[0]
    frame = json.loads((await refused.receive_output(timeout=10))["text"])
    assert (frame["type"], frame["code"]) == ("error", "database_unavailable")
    assert await refused.receive_output(timeout=10) == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}

    await opened.disconnect()
