"""An MCP tool in a real browser: the user's question is answered with the tool's result, shown as a
step while it runs and under the answer afterwards, as text whatever the result says."""

from __future__ import annotations

import json

import pytest

from agents.models import McpServer
from chat.services import conversation_create
from inference.models import ModelConfig, Provider
from tests.agents.conftest import mcp_server_process
from tests.servers import ScriptedServer

from .conftest import log_in
from .test_browser import wait_connected, xss_check
from .xss_payloads import PAYLOADS

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_question_is_answered_with_an_mcp_tools_result_shown_as_a_step(
    browser_page, live_server_url, user, local_model, tmp_path
):
    record = tmp_path / "calls.jsonl"
    order = "A17 " + PAYLOADS[0]  # the tool echoes it back: a result is shown as text, never markup
    script = [{"tool_calls": [{"name": "shop__lookup_order", "arguments": {"order_id": order}}]}, "ok"]
    with (
        mcp_server_process("streamable-http", record) as base,
        ScriptedServer(script, words=("It", " shipped.")) as model,
    ):
        McpServer.objects.create(slug="shop", name="Shop", url=f"{base}/mcp", allowed_tools=["lookup_order"])
        scripted = ModelConfig.objects.create(
            slug="scripted",
            display_name="Scripted",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=model.base_url,
        )
        conversation = conversation_create(owner=user, model=scripted)
        page = browser_page
        log_in(page, live_server_url, user)
        page.goto(f"{live_server_url}/c/{conversation.pk}/")
        wait_connected(page)
        page.get_by_label("Model").select_option("scripted")
        page.get_by_label("Message").fill("Where is my order A17?")
        page.get_by_role("button", name="Send").click()
        page.wait_for_selector(".message.assistant[data-status=complete]")

    assert [json.loads(line)["tool"] for line in record.read_text().splitlines()] == ["lookup_order"]
    answer = page.locator(".message.assistant").last
    assert answer.locator(".content").text_content().strip() == "It shipped."
    step = answer.locator(".steps li", has_text="tool shop__lookup_order")
    assert step.text_content() == "tool shop__lookup_order ✓"
    assert "shipped on 3 December" in step.get_attribute("title")
    calls = answer.locator(".tool-calls")
    assert calls.locator("summary").text_content() == "Tool calls (1)"
    calls.locator("summary").click()
    result = calls.locator(".tool-result").text_content()
    assert result.startswith(f"Order {order} shipped on 3 December")
    assert json.loads(calls.locator(".tool-arguments").text_content()) == {"order_id": order}
    xss_check(page)

    # Reloaded, the history shows the same calls under the answer.
    page.reload()
    page.wait_for_selector(".message.assistant[data-status=complete]")
    again = page.locator(".message.assistant").last.locator(".tool-calls")
    assert again.locator("summary").text_content() == "Tool calls (1)"
    assert again.locator(".tool-result").text_content() == result
    xss_check(page)
