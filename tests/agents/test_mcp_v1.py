"""MCP tools Parley runs for /v1/chat/completions clients (``tools: [{"type": "mcp", "server_label"}]``).

Real parts only: a live Daphne, the official ``openai`` client and LangChain's ``ChatOpenAI``, the test
MCP server (the SDK's, over Streamable HTTP, recording each call it gets) and a ScriptedServer model
that answers first with tool calls, then with text.
"""

from __future__ import annotations

import json

import openai
import pytest
from django.contrib.auth.models import Group

from accounts.models import UsageRecord, UsageSource
from accounts.services import api_key_create
from agents.models import McpServer
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = ("Your order", " has shipped.")
ASK = [{"role": "user", "content": "Where is my order A17?"}]
SHOP = {"type": "mcp", "server_label": "shop"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def register(url: str, *, slug: str = "shop", **fields) -> McpServer:
    fields.setdefault("allowed_tools", ["lookup_order", "add", "hang", "fail"])  # not delete_everything
    return McpServer.objects.create(slug=slug, name=slug.title(), transport="http", url=url, **fields)


def remote(server: ScriptedServer, **fields) -> ModelConfig:
    return ModelConfig.objects.create(
        slug="remote",
        display_name="Remote",
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=server.base_url,
        max_retries=0,
        **{"cache_policy": "never", **fields},
    )


def call(*calls: tuple[str, dict]) -> dict:
    """A ScriptedServer step: the model answers with these calls ``(name, arguments)``."""
    return {"tool_calls": [{"name": name, "arguments": arguments} for name, arguments in calls]}


def tool_messages(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def offered(request: dict) -> set[str]:
    return {tool["function"]["name"] for tool in request.get("tools") or []}


@pytest.fixture
def api_key(user) -> str:
    _, key = api_key_create(user=user, name="mcp over /v1")
    return key


@pytest.fixture
def client(daphne_url, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=daphne_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def test_the_openai_client_gets_an_answer_written_from_an_mcp_tool_whole_and_streamed(client, mcp_http, calls, user):
    register(mcp_http)
    with ScriptedServer(
        [
            call(("shop__lookup_order", {"order_id": "A17"})),
            "ok",
            call(("shop__lookup_order", {"order_id": "B42"})),
            "ok",
        ],
        words=ANSWER,
    ) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP])
        assert calls() == [{"tool": "lookup_order", "arguments": {"order_id": "A17"}}]
        stream = list(
            client.chat.completions.create(
                model="remote",
                messages=[{"role": "user", "content": "And B42?"}],
                tools=[SHOP],
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    # Whole: the answer, written after the tool ran, and what was run.
    choice = completion.choices[0]
    assert choice.message.content == "Your order has shipped."
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    [mcp_call] = completion.model_extra["mcp_calls"]
    assert mcp_call["server_label"] == "shop" and mcp_call["name"] == "lookup_order"
    assert json.loads(mcp_call["arguments"]) == {"order_id": "A17"}
    assert "Order A17 shipped on 3 December" in mcp_call["output"] and mcp_call["error"] is None
    # Usage sums both rounds (a tool-call round: 7 + 5 tokens; the answer: 7 + 2).
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 7)
    # The model was offered the allowed tools only, then given the call and its result.
    assert "shop__lookup_order" in offered(server.requests[0])
    assert "shop__delete_everything" not in offered(server.requests[0])
    follow_up = server.requests[1]["messages"]
    assert follow_up[-2]["role"] == "assistant" and follow_up[-2]["tool_calls"][0]["function"]["name"] == (
        "shop__lookup_order"
    )
    assert "tracking number ZX-71A" in tool_messages(server.requests[1])[0]["content"]

    # Streamed: the same, chunk by chunk; the calls ride on the last choice chunk.
    assert calls() == [
        {"tool": "lookup_order", "arguments": {"order_id": "A17"}},
        {"tool": "lookup_order", "arguments": {"order_id": "B42"}},
    ]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Your order has shipped."
    last = [c for c in stream if c.choices][-1]
    assert last.choices[0].finish_reason == "stop"
    assert "Order B42 shipped" in last.model_extra["mcp_calls"][0]["output"]
    assert not any(c.choices[0].delta.tool_calls for c in stream if c.choices)
    assert (stream[-1].usage.prompt_tokens, stream[-1].usage.completion_tokens) == (14, 7)

    # One usage record per request, with the tokens of every round.
    def both_recorded() -> list[UsageRecord] | None:
        records = list(UsageRecord.objects.filter(user=user, source=UsageSource.GATEWAY))
        return records if len(records) == 2 else None

    records = wait_for(both_recorded, timeout=10, what="two usage records")
    assert sorted((r.prompt_tokens, r.completion_tokens, r.status) for r in records) == [
        (14, 7, "complete"),
        (14, 7, "complete"),
    ]


def test_tools_outside_the_allow_lists_are_never_called(client, mcp_http, calls):
    register(mcp_http)
    narrowed = {**SHOP, "allowed_tools": ["lookup_order"]}
    script = [call(("shop__add", {"a": 1, "b": 2}), ("shop__delete_everything", {})), "ok"]
    with ScriptedServer(script, words=ANSWER) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[narrowed])

    assert calls() == []
    assert offered(server.requests[0]) == {"shop__lookup_order"}
    results = [m["content"] for m in tool_messages(server.requests[1])]
    assert len(results) == 2 and all("not called" in r for r in results)
    assert completion.choices[0].message.content == "Your order has shipped."
    assert completion.model_extra["mcp_calls"] == []


def test_the_client_gets_its_own_function_calls_back_after_the_mcp_round(client, mcp_http, calls):
    register(mcp_http, cache_results=False)
    weather = call(("get_weather", {"city": "Paris"}))
    script = [
        call(("shop__lookup_order", {"order_id": "A17"})),
        weather,
        call(("shop__add", {"a": 2, "b": 3})),
        weather,
    ]
    with ScriptedServer(script) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER_TOOL, SHOP])
        stream = list(
            client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP, WEATHER_TOOL], stream=True)
        )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [weather_call] = choice.message.tool_calls
    assert weather_call.function.name == "get_weather"
    assert json.loads(weather_call.function.arguments) == {"city": "Paris"}
    assert offered(server.requests[0]) >= {"get_weather", "shop__lookup_order"}
    # Streamed: only the client's call comes out, as OpenAI streams one; the MCP call stayed inside.
    deltas = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather")]
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "tool_calls"
    assert calls() == [
        {"tool": "lookup_order", "arguments": {"order_id": "A17"}},
        {"tool": "add", "arguments": {"a": 2, "b": 3}},
    ]


def test_a_member_of_the_servers_group_may_use_it(client, mcp_http, calls, user):
    finance = Group.objects.create(name="finance")
    register(mcp_http, slug="vault").groups.add(finance)
    user.groups.add(finance)
    with ScriptedServer([call(("vault__add", {"a": 2, "b": 3})), "ok"], words=("Five.",)) as server:
        remote(server)
        completion = client.chat.completions.create(
            model="remote",
            messages=ASK,
            tools=[{"type": "mcp", "server_label": "Vault"}],  # by its name
        )

    assert completion.choices[0].message.content == "Five."
    assert calls() == [{"tool": "add", "arguments": {"a": 2, "b": 3}}]
    assert tool_messages(server.requests[1])[0]["content"] == "5"


def test_a_tool_that_fails_or_hangs_gives_its_error_to_the_model(client, mcp_http, calls):
    register(mcp_http, timeout_seconds=2)
    script = [call(("shop__fail", {}), ("shop__hang", {"seconds": 60})), "ok"]
    with ScriptedServer(script, words=ANSWER) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP])

    assert completion.choices[0].message.content == "Your order has shipped."
    errors = {c["name"]: c["error"] for c in completion.model_extra["mcp_calls"]}
    assert "Error executing tool fail" in errors["fail"] and "did not answer within 2 s" in errors["hang"]
    results = [m["content"] for m in tool_messages(server.requests[1])]
    assert any("Error executing tool fail" in r for r in results) and any("did not answer" in r for r in results)


def test_a_server_that_is_down_is_a_424(client):
    register(f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=2)
    with ScriptedServer(["ok"]) as server:
        remote(server)
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP])

    assert raised.value.status_code == 424
    assert raised.value.body["code"] == "mcp_server_unavailable"
    assert "Shop" in raised.value.body["message"]
    assert server.requests == []  # the model was never asked


def test_an_unknown_label_or_a_server_closed_to_the_user_is_a_400(client, mcp_http):
    register(mcp_http, slug="staff")
    staff_only = register(mcp_http, slug="vault")
    staff_only.groups.add(Group.objects.create(name="finance"))
    with ScriptedServer(["ok"]) as server:
        remote(server)
        for label in ("nowhere", "vault"):
            with pytest.raises(openai.BadRequestError) as raised:
                client.chat.completions.create(
                    model="remote", messages=ASK, tools=[WEATHER_TOOL, {"type": "mcp", "server_label": label}]
                )
            assert raised.value.body["param"] == "tools[1].server_label"
            assert raised.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(
                model="remote",
                messages=ASK,
                tools=[{**SHOP, "server_label": "staff", "allowed_tools": ["delete_everything"]}],
            )
        assert raised.value.body["param"] == "tools[0].allowed_tools"
        # Only the operator's servers run, and only without asking.
        for extra, param in (
            ({"server_url": "http://evil.example/mcp"}, "server_url"),
            ({"require_approval": "always"}, "require_approval"),
        ):
            with pytest.raises(openai.BadRequestError) as raised:
                client.chat.completions.create(
                    model="remote", messages=ASK, tools=[{**SHOP, "server_label": "staff", **extra}]
                )
            assert raised.value.body["param"] == f"tools[0].{param}"
    assert server.requests == []


def test_a_model_without_tools_refuses_mcp_tools(client, mcp_http):
    register(mcp_http)
    with ScriptedServer(["ok"]) as server:
        remote(server, supports_tools=False)
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP])
    assert raised.value.body["code"] == "unsupported_parameter" and raised.value.body["param"] == "tools"


def test_langchain_chat_openai_uses_an_mcp_tool_through_parley(daphne_url, api_key, mcp_http, calls):
    from langchain_openai import ChatOpenAI

    register(mcp_http)
    script = [call(("shop__lookup_order", {"order_id": "A17"})), "ok"]
    with ScriptedServer(script, words=ANSWER) as server:
        remote(server)
        # An "mcp" tool makes LangChain pick OpenAI's Responses API unless told otherwise; Parley speaks
        # Chat Completions.
        model = ChatOpenAI(
            model="remote", base_url=daphne_url + "/v1", api_key=api_key, max_retries=0, use_responses_api=False
        )
        answer = model.bind_tools([SHOP]).invoke("Where is my order A17?")

    assert answer.content == "Your order has shipped." and answer.tool_calls == []
    assert calls() == [{"tool": "lookup_order", "arguments": {"order_id": "A17"}}]
    assert server.requests[0]["tools"][0]["function"]["name"] == "shop__lookup_order"


def test_a_round_runs_at_most_agents_max_tool_calls_and_rounds_end_there(settings, mcp_http, calls, api_key, request):
    settings.AGENTS_MAX_TOOL_CALLS = 2  # before Daphne starts: the forked server has it too
    client = request.getfixturevalue("client")
    register(mcp_http, cache_results=False)
    adds = [("shop__add", {"a": n, "b": n}) for n in range(3)]
    with ScriptedServer([call(*adds)], words=ANSWER) as server:  # the model never stops calling tools
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[SHOP])

    # Two rounds of two calls each; the third call of each round was refused, never run.
    run = sorted((c["arguments"]["a"], c["arguments"]["b"]) for c in calls())  # run at the same time: any order
    assert run == [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert "not called" in tool_messages(server.requests[1])[2]["content"]
    # The round after the last is offered no MCP tools; its calls are not the client's: it ends.
    assert len(server.requests) == 3 and server.requests[2].get("tools") is None
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.tool_calls is None
    assert len(completion.model_extra["mcp_calls"]) == 4
