"""Operator work in the admin: finding conversations, exporting them, revoking keys, deactivating users.

Every action leaves an entry in the admin log.
"""

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from accounts.models import APIKey
from accounts.services import api_key_create
from config.asgi import application
from conftest import make_user, ws_headers

pytestmark = pytest.mark.django_db

CONVERSATIONS = reverse("admin:chat_conversation_changelist")
USERS = reverse("admin:accounts_user_changelist")


def listed(response) -> set[str]:
    return {str(c) for c in response.context["cl"].result_list}


def test_conversations_are_found_by_message_text_title_and_owner(admin_client, user, chats):
    user.email = "alice@example.com"
    user.save()
    assert listed(admin_client.get(CONVERSATIONS, {"q": "Lisbon"})) == {"Weather"}
    assert listed(admin_client.get(CONVERSATIONS, {"q": "Broken"})) == {"Broken"}
    assert listed(admin_client.get(CONVERSATIONS, {"q": "alice@example.com"})) == {"Weather", "Broken"}
    assert listed(admin_client.get(CONVERSATIONS, {"q": "nobody-says-this"})) == set()


def test_conversations_filter_by_last_status_and_errors(admin_client, chats):
    assert listed(admin_client.get(CONVERSATIONS, {"last_status": "error"})) == {"Broken"}
    assert listed(admin_client.get(CONVERSATIONS, {"last_status": "complete"})) == {"Weather"}
    assert listed(admin_client.get(CONVERSATIONS, {"has_error": "yes"})) == {"Broken"}
    assert listed(admin_client.get(CONVERSATIONS, {"has_error": "no"})) == {"Weather"}


def export(admin_client, action, conversations):
    return admin_client.post(CONVERSATIONS, {"action": action, "_selected_action": [c.pk for c in conversations]})


def test_export_as_json_downloads_the_selected_conversations_with_their_messages(admin_client, chats):
    weather, broken = chats
    response = export(admin_client, "export_json", [weather])
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="parley-conversations-')
    [conversation] = json.loads(response.content)["conversations"]
    assert conversation["title"] == "Weather" and conversation["owner"] == "alice"
    assert [(m["role"], m["content"]) for m in conversation["messages"]] == [
        ("user", "Is it raining in Lisbon?"),
        ("assistant", "Sunny with clouds."),
    ]
    assert conversation["messages"][1]["completion_tokens"] == 7
    assert LogEntry.objects.filter(object_id=str(weather.pk), change_message="Exported as JSON").exists()
    assert not LogEntry.objects.filter(object_id=str(broken.pk)).exists()


def test_export_as_markdown_downloads_a_readable_transcript(admin_client, chats):
    weather, broken = chats
    response = export(admin_client, "export_markdown", [weather, broken])
    assert response["Content-Type"].startswith("text/markdown")
    text = response.content.decode()
    assert "# Weather" in text and "# Broken" in text
    assert "## User" in text and "Is it raining in Lisbon?" in text
    assert "> Error: model crashed" in text
    assert LogEntry.objects.filter(change_message="Exported as Markdown").count() == 2


def test_the_markdown_export_shows_user_text_literally(admin_client, user, local_model):
    from markdown_it import MarkdownIt

    from chat.services import conversation_create

    from .conftest import finished_turn

    forged = conversation_create(owner=user, title="Notes\n# Payroll\n- owner: root")
    question = "# Admin notice\n- owner: root\n- model: gpt-5\n\n[click](http://evil.example) <img src=x>\n---\n1. pay"
    finished_turn(forged, question, "**Done.** `ok`", error="")

    text = export(admin_client, "export_markdown", [forged]).content.decode()
    html = MarkdownIt("commonmark").render(text)

    # The document's structure is the exporter's: one conversation heading, one owner line.
    assert html.count("<h1>") == 1 and html.count("<h2>") == 2  # User, Assistant
    assert html.count("<li>owner: ") == 1 and "<li>owner: alice</li>" in html
    assert html.count("<hr />") == 1  # the exporter's separator only
    assert "<a " not in html and "<img" not in html and "<ol>" not in html and "<strong>" not in html
    # ...and the user's text is all there, as text.
    for shown in ("# Admin notice", "- owner: root", "[click](http://evil.example)", "&lt;img src=x&gt;", "**Done.**"):
        assert shown in html


def browser_form_data(html: str, form_id: str) -> dict[str, list[str]]:
    """Return what a browser would submit for the form ``form_id`` of ``html``, untouched."""
    from bs4 import BeautifulSoup

    form = BeautifulSoup(html, "html.parser").find("form", id=form_id)
    data: dict[str, list[str]] = {}
    for field in form.find_all(["input", "select", "textarea"]):
        name = field.get("name")
        if not name or field.get("type") in ("submit", "button", "file"):
            continue
        if field.name == "select":
            values = [o.get("value", o.text) for o in field.find_all("option") if o.has_attr("selected")]
        elif field.get("type") in ("checkbox", "radio"):
            values = [field.get("value", "on")] if field.has_attr("checked") else []
        elif field.name == "textarea":
            values = [field.text]
        else:
            values = [field.get("value", "")]
        data.setdefault(name, []).extend(values)
    return data


def test_an_api_key_is_revoked_and_the_quota_set_from_the_user_page(admin_client, user):
    api_key, key = api_key_create(user=user, name="laptop")
    url = reverse("admin:accounts_user_change", args=[user.pk])
    data = browser_form_data(admin_client.get(url).content.decode(), "user_form")
    data["daily_token_quota"] = ["5000"]
    data["api_keys-0-revoke"] = ["on"]
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    api_key.refresh_from_db()
    user.refresh_from_db()
    assert api_key.revoked_at is not None
    assert user.daily_token_quota == 5000
    assert LogEntry.objects.filter(object_id=str(api_key.pk), change_message="Revoked").exists()
    # The key no longer works.
    assert admin_client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_revoke_every_key_of_selected_users(admin_client, user):
    api_key_create(user=user, name="one"), api_key_create(user=user, name="two")
    admin_client.post(USERS, {"action": "revoke_api_keys", "_selected_action": [user.pk]})
    assert not APIKey.objects.filter(user=user, revoked_at__isnull=True).exists()
    assert LogEntry.objects.filter(change_message="Revoked").count() == 2


@pytest.mark.django_db(transaction=True)
async def test_deactivating_a_user_closes_their_open_websockets_and_logs_it(local_model):
    from channels.db import database_sync_to_async
    from django.test import AsyncClient

    from chat.services import conversation_create

    alice = await database_sync_to_async(make_user)("alice")
    operator = await database_sync_to_async(make_user)("operator", is_staff=True, is_superuser=True)
    conversation = await database_sync_to_async(conversation_create)(owner=alice)
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(alice))
    connected, _ = await socket.connect(timeout=10)
    assert connected

    client = AsyncClient()
    await database_sync_to_async(client.force_login)(operator)
    response = await client.post(USERS, {"action": "deactivate", "_selected_action": [alice.pk]})
    assert response.status_code == 302

    closed = await socket.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4403}
    await alice.arefresh_from_db()
    assert alice.is_active is False
    assert await LogEntry.objects.filter(
        object_id=str(alice.pk), change_message="Deactivated; open WebSockets closed"
    ).aexists()
    await socket.disconnect()


def test_an_operator_cannot_deactivate_themselves(admin_client, admin_user):
    admin_client.post(USERS, {"action": "deactivate", "_selected_action": [admin_user.pk]})
    admin_user.refresh_from_db()
    assert admin_user.is_active is True
