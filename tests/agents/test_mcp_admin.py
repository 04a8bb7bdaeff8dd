"""Operating MCP servers: the admin (Test, allow-list, who may edit what), `manage.py mcp`, and the
tool calls in the admin's conversation view; against a live MCP server started here."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command

from accounts.models import User
from agents.models import McpServer
from chat.services import conversation_create, message_finalize, message_send
from tests.servers import free_port

SERVERS = "/admin/agents/mcpserver/"
LISTED = ["lookup_order", "add", "hang", "delete_everything", "big", "whoami", "fail"]


@pytest.fixture
def shop(db, mcp_http) -> McpServer:
    return McpServer.objects.create(slug="shop", name="Shop", url=mcp_http, allowed_tools=["lookup_order"])


@pytest.fixture
def down(db) -> McpServer:
    return McpServer.objects.create(
        slug="gone", name="Gone", url=f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=2
    )


def shown(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_the_test_action_lists_each_servers_tools_and_which_are_allowed(admin_client, shop, down):
    response = admin_client.post(
        SERVERS, {"action": "test_servers", "_selected_action": [shop.pk, down.pk]}, follow=True
    )
    messages = shown(response)
    ok = next(m for m in messages if m.startswith("shop:"))
    assert ok.startswith("shop: 7 tool(s): lookup_order (allowed), add, hang, delete_everything")
    failed = next(m for m in messages if m.startswith("gone:"))
    assert "MCP server Gone is unavailable" in failed


def test_allow_every_listed_tool_fills_the_allow_list_from_the_server(admin_client, shop, down):
    response = admin_client.post(
        SERVERS, {"action": "allow_listed_tools", "_selected_action": [shop.pk, down.pk]}, follow=True
    )
    shop.refresh_from_db()
    down.refresh_from_db()
    assert shop.allowed_tools == LISTED
    assert down.allowed_tools == []  # unchanged when the server cannot be listed
    assert any("The allow-list is unchanged" in m for m in shown(response))


def test_only_superusers_set_where_a_server_is_and_its_secrets(client, shop):
    operator = User.objects.create_user(username="ops", password="correct horse battery", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_mcpserver", "change_mcpserver"]))
    client.force_login(operator)
    page = client.get(f"{SERVERS}{shop.pk}/change/").content.decode()
    assert 'name="allowed_tools"' in page and 'name="url"' not in page and 'name="command"' not in page
    client.post(
        f"{SERVERS}{shop.pk}/change/",
        {
            "slug": "shop",
            "name": "Shop",
            "enabled": "on",
            "timeout_seconds": "10",
            "allowed_tools": '["lookup_order", "add"]',
            "url": "http://evil.example/mcp",
            "transport": "stdio",
            "command": "/bin/sh",
            "bearer_token_env": "DJANGO_SECRET_KEY",
        },
    )
    shop.refresh_from_db()
    assert shop.allowed_tools == ["lookup_order", "add"]  # what operators may change, changed
    assert (shop.transport, shop.url, shop.command, shop.bearer_token_env) == ("http", shop.url, "", "")
    assert "evil" not in shop.url
    assert client.get(f"{SERVERS}add/").status_code == 403


def test_a_server_form_refuses_a_stdio_server_without_a_command_and_bad_env_names(admin_client):
    response = admin_client.post(
        f"{SERVERS}add/",
        {
            "slug": "local",
            "name": "Local",
            "transport": "stdio",
            "timeout_seconds": "10",
            "args": "[]",
            "env_passthrough": '["NOT A NAME"]',
            "header_envs": "{}",
            "allowed_tools": "[]",
        },
    )
    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors
    assert "command" in errors and "env_passthrough" in errors
    assert not McpServer.objects.exists()


def test_manage_py_mcp_lists_checks_and_shows_tools(shop, down, capsys):
    call_command("mcp", "list")
    out = capsys.readouterr().out
    assert "shop\thttp\t" in out and "allowed: lookup_order" in out and "gone\thttp\t" in out

    call_command("mcp", "tools", "shop")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines][:2] == [["lookup_order", "allowed"], ["add", "not allowed"]]
    assert len(lines) == len(LISTED)

    with pytest.raises(CommandError, match="1 MCP server"):
        call_command("mcp", "check")
    out = capsys.readouterr().out
    assert "shop: ok, 7 tool(s), 1 allowed" in out and "gone: FAILED: MCP server Gone is unavailable" in out
    call_command("mcp", "check", "shop")  # the one that works: no error
    with pytest.raises(CommandError, match="No MCP server 'nope'"):
        call_command("mcp", "tools", "nope")


def test_the_admin_conversation_shows_an_answers_tool_calls_escaped(admin_client, user, local_model):
    conversation = conversation_create(owner=user, title="Orders")
    turn = message_send(conversation=conversation, content="Where is my order?")
    call = {
        "tool": "shop__lookup_order",
        "server": "shop",
        "arguments": {"order_id": "A17"},
        "result": "<script>alert(1)</script> shipped",
        "ok": True,
        "cached": False,
        "ms": 12,
    }
    message_finalize(
        message_id=turn.assistant_message.pk,
        content="It shipped.",
        status="complete",
        metadata={"tool_calls": [call]},
    )
    page = admin_client.get(f"/admin/chat/conversation/{conversation.pk}/change/").content.decode()
    assert "<code>shop__lookup_order</code> on shop: ok, 12 ms" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; shipped" in page and "<script>alert(1)" not in page
    assert "{&quot;order_id&quot;: &quot;A17&quot;}" in page
