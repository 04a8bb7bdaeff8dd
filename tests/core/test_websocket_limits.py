"""Socket floods through a real Daphne: a per-user cap, a channel-layer pool that waits, exact counts.

Issue 20, problem 3: one user opened 2,000 sockets; the channel layer's Redis pool failed at once
when full, disconnects failed, and the open-socket count stayed inflated until a restart.
"""

import asyncio
import copy
import json
import time
import uuid

import pytest
import redis.asyncio
import websockets
from channels.db import database_sync_to_async

from chat.services import conversation_create
from chat.turns import send_event
from conftest import make_user, ws_connect
from core import presence
from core.websocket import CLOSE_TOO_MANY_SOCKETS

FLOOD = 40


@pytest.fixture
def own_presence_keys(settings):
    """Count in keys of this test only: sockets of other tests stay out of its counts."""
    settings.REDIS_KEY_PREFIX = f"parley-test-limits-{uuid.uuid4().hex[:8]}"


def channel_layer_pool(settings, *, max_connections: int) -> None:
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["max_connections"] = max_connections
    settings.CHANNEL_LAYERS = layers


async def ping(socket) -> str:
    """Return "open" when the socket answers a ping, or the close code it was closed with."""
    try:
        await socket.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(socket.recv(), 30)) == {"type": "pong"}
        return "open"
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else "no close frame"


async def count_settles(expected: int, *, user=None, within: float = 10.0) -> int:
    """Wait until the open-socket count is ``expected`` (disconnects run after the client closes)."""
    deadline = time.monotonic() + within
    while (count := await asyncio.to_thread(presence.ws_connection_count, user=user)) != expected:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return count


@pytest.fixture
def capped(settings, own_presence_keys):
    settings.WS_MAX_CONNECTIONS_PER_USER = 20
    # A small pool, so the flood has to wait for connections rather than fail.
    channel_layer_pool(settings, max_connections=8)


@pytest.mark.django_db(transaction=True)
async def test_a_user_gets_the_cap_of_sockets_and_the_rest_close_with_4429(capped, daphne_url, local_model):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    conversation = await database_sync_to_async(conversation_create)(owner=alice)
    path = f"/ws/chat/{conversation.pk}/"

    sockets = await asyncio.gather(*(ws_connect(daphne_url, path, alice) for _ in range(FLOOD)))
    states = await asyncio.gather(*(ping(socket) for socket in sockets))

    assert states.count("open") == 20
    assert states.count(CLOSE_TOO_MANY_SOCKETS) == FLOOD - 20
    assert presence.ws_connection_count(user=alice) == 20
    # Document sockets count against the same cap; other users are not affected.
    documents = await ws_connect(daphne_url, "/ws/documents/", alice)
    assert await ping(documents) == CLOSE_TOO_MANY_SOCKETS
    bobs = await ws_connect(
        daphne_url, f"/ws/chat/{(await database_sync_to_async(conversation_create)(owner=bob)).pk}/", bob
    )
    assert await ping(bobs) == "open"

    # Every open socket still gets the conversation's events.
    await send_event(conversation.pk, {"type": "node", "name": "probe", "status": "start"})
    open_sockets = [socket for socket, state in zip(sockets, states, strict=True) if state == "open"]
    for socket in open_sockets:
        assert json.loads(await asyncio.wait_for(socket.recv(), 30))["name"] == "probe"

    await asyncio.gather(*(socket.close() for socket in sockets), bobs.close(), documents.close())
    assert await count_settles(0) == 0
    assert presence.ws_connection_count(user=alice) == 0
    # Closed sockets give their places back at once, not after the presence TTL.
    again = await ws_connect(daphne_url, "/ws/documents/", alice)
    assert await ping(again) == "open"
    await again.close()


@pytest.fixture
def uncapped_small_pool(settings, own_presence_keys):
    settings.WS_MAX_CONNECTIONS_PER_USER = 0
    channel_layer_pool(settings, max_connections=4)


@pytest.mark.django_db(transaction=True)
async def test_a_flood_larger_than_the_redis_pool_waits_and_leaves_no_socket_counted(
    uncapped_small_pool, daphne_url, local_model, settings
):
    alice = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=alice)

    sockets = await asyncio.gather(
        *(ws_connect(daphne_url, f"/ws/chat/{conversation.pk}/", alice) for _ in range(FLOOD))
    )
    assert await asyncio.gather(*(ping(socket) for socket in sockets)) == ["open"] * FLOOD
    assert presence.ws_connection_count() == FLOOD

    await asyncio.gather(*(socket.close() for socket in sockets))
    assert await count_settles(0) == 0
    # The server left every group too (no stale members): disconnect leaves them after the count,
    # and a process unsubscribes from a group (Redis Pub/Sub) once its last socket there has left.
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    group_channel = f"{config['prefix']}__group__conversation.{conversation.pk}"
    client = redis.asyncio.Redis.from_url(config["hosts"][0]["address"])
    deadline = time.monotonic() + 10
    while (subscribers := dict(await client.pubsub_numsub(group_channel))[group_channel.encode()]) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.1)
    await client.aclose()
    assert subscribers == 0
