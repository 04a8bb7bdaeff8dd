"""WebSocket presence (core.presence) and the staff counts at /api/v1/admin/sessions/count/."""

import time
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts.models import UsageRecord
from chat.models import Message
from chat.services import conversation_create, message_send
from config.asgi import application
from conftest import make_user, ws_headers
from core import presence

URL = "/api/v1/admin/sessions/count/"


@pytest.fixture(autouse=True)
def own_presence_keys(settings):
    """Count in keys of this test only: sockets of earlier runs or other tests stay out of its counts."""
    settings.REDIS_KEY_PREFIX = f"parley-test-presence-{uuid.uuid4().hex[:8]}"


async def open_socket(user, conversation):
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(user))
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


@pytest.mark.django_db(transaction=True)
async def test_open_sockets_are_counted_in_total_and_per_user_until_they_close(local_model):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    alices = await database_sync_to_async(conversation_create)(owner=alice)
    bobs = await database_sync_to_async(conversation_create)(owner=bob)
    before = presence.ws_connection_count()

    sockets = [await open_socket(alice, alices), await open_socket(alice, alices), await open_socket(bob, bobs)]
    assert presence.ws_connection_count() == before + 3
    assert presence.ws_connection_count(user=alice) == 2
    assert presence.ws_connection_count(user=bob) == 1

    await sockets[0].disconnect()
    assert presence.ws_connection_count() == before + 2
    assert presence.ws_connection_count(user=alice) == 1
    for socket in sockets[1:]:
        await socket.disconnect()
    assert presence.ws_connection_count() == before
    assert presence.ws_connection_count(user=alice) == 0


@pytest.mark.django_db(transaction=True)
async def test_a_refused_socket_is_not_counted(local_model):
    alice = await database_sync_to_async(make_user)("alice")
    alices = await database_sync_to_async(conversation_create)(owner=alice)
    before = presence.ws_connection_count()
    communicator = WebsocketCommunicator(application, f"/ws/chat/{alices.pk}/", headers=await ws_headers(None))
    connected, _ = await communicator.connect(timeout=10)
    assert not connected
    assert presence.ws_connection_count() == before


def test_sockets_of_a_process_that_died_stop_counting_after_the_ttl(db):
    user = make_user("alice")
    presence.ws_connection_mark(channel_name="specific.dead!1", user_id=user.pk)
    assert presence.ws_connection_count(user=user) == 1
    # A crashed process never unmarks its sockets; they only stop being seen.
    before = presence.ws_connection_count()
    stale = time.time() - presence.TTL_SECONDS - 1
    redis = get_redis_connection("default")
    for key in (presence._key(), presence._key(user.pk)):
        redis.zadd(key, {"specific.dead!1": stale})
    assert presence.ws_connection_count(user=user) == 0
    assert presence.ws_connection_count() == before - 1


@pytest.mark.django_db
def test_staff_see_sockets_sessions_and_active_users(local_model):
    staff = make_user("root", is_staff=True)
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    message_send(conversation=conversation_create(owner=alice), content="Hello")
    UsageRecord.objects.create(user=bob, model_slug="smollm2-135m", source="gateway", status="complete")
    # An old message does not make carol active.
    old = message_send(conversation=conversation_create(owner=carol), content="Long ago").user_message
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    for user in (alice, bob):
        Client().force_login(user)
    presence.ws_connection_mark(channel_name="specific.test!presence", user_id=alice.pk)
    expected_sockets = presence.ws_connection_count()

    client = APIClient()
    client.force_login(staff)
    try:
        response = client.get(URL)
    finally:
        presence.ws_connection_unmark(channel_name="specific.test!presence", user_id=alice.pk)

    assert response.status_code == 200
    body = response.json()
    assert body["websocket_connections"] == expected_sockets >= 1
    assert body["authenticated_sessions"] == 3  # alice, bob and the staff member
    assert body["active_users_24h"] == 2  # alice (a message) and bob (a /v1 request)


@pytest.mark.django_db
@pytest.mark.parametrize("path", [URL, "/api/v1/admin/model/info/"])
def test_admin_counts_and_model_info_are_for_staff_only(path):
    anonymous = APIClient().get(path)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    client = APIClient()
    client.force_login(make_user("alice"))
    forbidden = client.get(path)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "permission_denied"
