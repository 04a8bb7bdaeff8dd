"""Tools and structured output on /v1/chat/completions, driven by real clients against a live Daphne.

Remote models are ``ScriptedServer`` (an OpenAI-compatible server on loopback that answers with tool
calls when its script says so); the local one is the bundled SmolLM2 on llama.cpp, held to the
shape asked for by a grammar.
"""

import json

import httpx
import jsonschema
import openai
import pytest

from accounts.services import api_key_create
from conftest import make_user
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS_CALL = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CALL_PARIS = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}


@pytest.fixture
def api_key(db) -> str:
    _, key = api_key_create(user=make_user("alice"), name="tools tests")
    return key


@pytest.fixture
def client(daphne_url, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=daphne_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


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


def test_the_openai_client_gets_the_tool_call_whole_and_streamed(client):
    with ScriptedServer([CALL_PARIS]) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER_TOOL])
        streamed = list(
            client.chat.completions.create(
                model="remote", messages=ASK, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
            )
        )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id == "call_0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # Streamed: the deltas join up to the same call, as OpenAI's own stream does.
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == "call_0" and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"

    # The tools reached the server as sent, both times.
    assert [r["tools"] for r in server.requests] == [[WEATHER_TOOL], [WEATHER_TOOL]]
    assert server.requests[1]["tool_choice"] == "auto"


def test_the_follow_up_with_the_call_and_its_result_reaches_the_server_intact(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": '{"sky": "sunny", "celsius": 21}'},
    ]
    with ScriptedServer(["ok"], words=("Sunny", ", 21 °C.")) as server:
        remote(server)
        completion = client.chat.completions.create(model="remote", messages=history, tools=[WEATHER_TOOL])

    assert completion.choices[0].message.content == "Sunny, 21 °C."
    assert completion.choices[0].finish_reason == "stop"
    assert server.requests[0]["messages"] == history


def test_seed_top_p_and_response_format_reach_the_server(client):
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object", "properties": {"sky": {"type": "string"}}}},
    }
    with ScriptedServer(["ok"]) as server:
        remote(server)
        client.chat.completions.create(
            model="remote", messages=ASK, seed=42, top_p=0.5, response_format=response_format, parallel_tool_calls=False
        )
        client.chat.completions.create(model="remote", messages=ASK)

    sent, plain = server.requests
    assert (sent["seed"], sent["top_p"], sent["response_format"]) == (42, 0.5, response_format)
    # parallel_tool_calls only means something with tools: without them it is not sent.
    assert "parallel_tool_calls" not in sent
    # A request without them sends none of them (servers that do not know them are not confused).
    assert not {"seed", "top_p", "response_format", "tools", "logprobs"} & set(plain)


@pytest.mark.parametrize(
    ("fields", "extra", "param"),
    [
        ({"supports_tools": False}, {"tools": [WEATHER_TOOL]}, "tools"),
        (
            {"supports_tools": False},
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "c", "content": "x"}]},
            "messages[1]",
        ),
        ({"supports_response_format": False}, {"response_format": {"type": "json_object"}}, "response_format"),
        ({}, {"logprobs": True}, "logprobs"),  # supports_logprobs is off by default
    ],
)
def test_a_parameter_the_model_does_not_support_is_a_400_naming_it(client, fields, extra, param):
    with ScriptedServer(["ok"]) as server:
        remote(server, **fields)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**{"model": "remote", "messages": ASK, **extra})
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == param
    assert server.requests == []  # refused before anything was sent


def test_logprobs_pass_through_to_a_model_that_supports_them(client):
    with ScriptedServer(["ok"]) as server:
        remote(server, supports_logprobs=True)
        client.chat.completions.create(model="remote", messages=ASK, logprobs=True, top_logprobs=2)
    assert (server.requests[0]["logprobs"], server.requests[0]["top_logprobs"]) == (True, 2)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ],
)
def test_invalid_tool_and_format_parameters_are_a_400_naming_them(client, extra, param):
    with ScriptedServer(["ok"]) as server:
        remote(server)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**{"model": "remote", "messages": ASK, **extra})
    assert caught.value.param == param
    assert server.requests == []


def test_a_tool_call_answer_is_cached_and_replayed_as_a_tool_call_but_never_for_a_plain_request(client):
    with ScriptedServer([CALL_PARIS, "ok"]) as server:
        remote(server, cache_policy="always")
        first = client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER_TOOL])
        again = list(client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER_TOOL], stream=True))
        plain = client.chat.completions.create(model="remote", messages=ASK)

    assert len(server.requests) == 2  # the repeat came from the cache; the plain request did not
    assert first.choices[0].message.tool_calls[0].function.name == "get_weather"
    deltas = [d for c in again if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.id, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
        ("call_0", "get_weather", {"city": "Paris"})
    ]
    assert [c.choices[0].finish_reason for c in again if c.choices][-1] == "tool_calls"
    assert plain.choices[0].message.content == "Hello there!"
    assert plain.choices[0].message.tool_calls is None


def test_a_langchain_agent_calls_a_python_tool_through_parley_and_answers(daphne_url, api_key):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    calls = []

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"Sunny in {city}, 21 °C."

    with ScriptedServer([CALL_PARIS, "ok"], words=("It is sunny", " in Paris.")) as server:
        remote(server)
        model = ChatOpenAI(model="remote", base_url=daphne_url + "/v1", api_key=api_key, max_retries=0)
        # bind_tools as LangChain's agents use it: the model asks for the tool, the agent runs it here
        # and sends its result back, and the model answers.
        assert model.bind_tools([get_weather]).invoke("What is the weather in Paris?").tool_calls == [
            {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_0", "type": "tool_call"}
        ]
        server.script, server.requests = [CALL_PARIS, "ok"], []
        agent = create_react_agent(model, [get_weather])
        result = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})

    assert calls == ["Paris"]
    assert result["messages"][-1].content == "It is sunny in Paris."
    assert server.requests[0]["tools"][0]["function"]["name"] == "get_weather"
    assert server.requests[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "Sunny in Paris, 21 °C.",
    }


def test_litellm_as_a_client_gets_the_tool_call_whole_and_streamed(daphne_url, api_key, monkeypatch):
    # (The OpenAI Agents SDK's package is named ``agents``, as Parley's app is: litellm stands in for it.)
    # litellm reads its model price map from the network unless told to use its bundled copy.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    kwargs = {
        "model": "openai/remote",
        "api_base": daphne_url + "/v1",
        "api_key": api_key,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "num_retries": 0,
    }
    with ScriptedServer([CALL_PARIS]) as server:
        remote(server)
        whole = litellm.completion(**kwargs)
        chunks = list(litellm.completion(**kwargs, stream=True))

    [call] = whole.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert whole.choices[0].finish_reason == "tool_calls"
    rebuilt = litellm.stream_chunk_builder(chunks, messages=ASK)
    [call] = rebuilt.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert len(server.requests) == 2


# --- The local model (llama.cpp): a grammar holds it to the shape -------------------------------


def test_the_local_model_answers_json_valid_against_the_schema(client, local_model):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Is it sunny in Paris? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
        max_tokens=64,
    )
    answer = json.loads(completion.choices[0].message.content)
    jsonschema.validate(answer, schema)


def test_the_local_model_calls_the_tool_it_is_told_to_whole_and_streamed(client, local_model):
    kwargs = {
        "model": "smollm2-135m",
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 64,
    }
    completion = client.chat.completions.create(**kwargs)
    assert completion.choices[0].finish_reason == "tool_calls"
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])

    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    jsonschema.validate(
        json.loads("".join(d.function.arguments for d in deltas)), WEATHER_TOOL["function"]["parameters"]
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_the_local_model_answers_after_a_tool_result(client, local_model):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [PARIS_CALL]},
        {"role": "tool", "tool_call_id": "call_0", "content": "Sunny, 21 degrees."},
    ]
    completion = client.chat.completions.create(
        model="smollm2-135m", messages=history, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=16
    )
    alone = client.chat.completions.create(model="smollm2-135m", messages=ASK, max_tokens=1)
    assert completion.choices[0].message.content
    assert completion.choices[0].message.tool_calls is None
    # The call and its result were in the prompt (about 25 tokens more).
    assert completion.usage.prompt_tokens >= alone.usage.prompt_tokens + 15


def test_the_local_model_refuses_logprobs_naming_them(client, local_model):
    local_model.supports_logprobs = True  # even when an operator says so: llama.cpp here cannot
    local_model.save(update_fields=["supports_logprobs"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2-135m", messages=ASK, logprobs=True, max_tokens=4)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "logprobs")


def test_models_list_their_capabilities(daphne_url, api_key, local_model):
    body = httpx.get(daphne_url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert body["data"][0]["capabilities"] == {
        "vision": False,
        "tools": True,
        "response_format": True,
        "logprobs": False,
    }
