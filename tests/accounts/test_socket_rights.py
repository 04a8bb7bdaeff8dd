"""Open WebSockets end when their user's rights change, by any path (issue 20, problem 5).

Unticking Active in the admin's user form or changing the password used to leave the user's chat
socket open and generating, and ``/ws/documents/`` sockets were never closed, not even by the
admin's deactivate action.
"""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.services import user_sso_sync
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers
from core.websocket import CLOSE_SESSION_ENDED


def untick_active_in_the_admin_form(user) -> None:
    """Post the admin's change form for ``user`` as an operator would, with Active unticked."""
    operator = make_user("operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    url = reverse("admin:accounts_user_change", args=[user.pk])
    page = client.get(url).context
    form = page["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if field.disabled or value is None:
            continue
        if isinstance(value, list | tuple) or hasattr(value, "all"):
            data[name] = [getattr(item, "pk", item) for item in (value.all() if hasattr(value, "all") else value)]
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = value
    data.pop("is_active", None)
    for inline in page["inline_admin_formsets"]:  # the API keys inline: its management form, no change
        management = inline.formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = management.initial.get(name, 0)
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors


def change_password(user) -> None:
    user.set_password("a new password nobody knows")
    user.save()


def deactivate_from_the_shell(user) -> None:
    user.is_active = False
    user.save()


def add_to_a_group(user) -> None:
    user.groups.add(Group.objects.create(name="readers"))


def remove_from_every_group_via_the_group(user) -> None:
    Group.objects.get(name="writers").user_set.clear()


def lose_a_group_at_single_sign_on(user) -> None:
    user_sso_sync(user=user, groups=["editors"])  # what a sign-in whose groups claim lacks "writers" does


def change_a_groups_permissions(user) -> None:
    Group.objects.get(name="editors").permissions.add(Permission.objects.get(codename="view_apikey"))


CHANGES = [
    untick_active_in_the_admin_form,
    change_password,
    deactivate_from_the_shell,
    add_to_a_group,
    remove_from_every_group_via_the_group,
    lose_a_group_at_single_sign_on,
    change_a_groups_permissions,
]


async def open_sockets(user) -> list[WebsocketCommunicator]:
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    sockets = []
    for path in (f"/ws/chat/{conversation.pk}/", "/ws/documents/"):
        socket = WebsocketCommunicator(application, path, headers=await ws_headers(user))
        connected, _ = await socket.connect(timeout=10)
        assert connected
        sockets.append(socket)
    return sockets


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__)
async def test_a_change_of_rights_closes_the_users_chat_and_document_sockets(change, local_model):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    for name in ("writers", "editors"):  # groups Alice is in before her sockets open
        await database_sync_to_async(lambda name=name: Group.objects.create(name=name).user_set.add(alice))()
    alices, bobs = await open_sockets(alice), await open_sockets(bob)

    await database_sync_to_async(change)(alice)

    for socket in alices:
        assert await socket.receive_output(timeout=10) == {"type": "websocket.close", "code": CLOSE_SESSION_ENDED}
    for socket in bobs:  # another user's sockets stay open
        assert await socket.receive_nothing(timeout=0.5)
    for socket in alices + bobs:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_save_that_changes_no_right_leaves_the_sockets_open(local_model):
    alice = await database_sync_to_async(make_user)("alice")
    sockets = await open_sockets(alice)

    def log_in_and_edit_the_quota(user):
        user.last_login = timezone.now()
        user.save(update_fields=["last_login"])
        user.daily_token_quota = 1000
        user.save()

    await database_sync_to_async(log_in_and_edit_the_quota)(alice)

    for socket in sockets:
        assert await socket.receive_nothing(timeout=0.5)
        await socket.disconnect()
