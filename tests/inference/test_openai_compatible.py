"""The OpenAI-compatible provider against real servers: llama.cpp's, and a scripted one that fails."""

import time

import pytest

from inference.providers import (
    GenerationParams,
    InferenceError,
    ModelTimeout,
    ModelUnavailable,
    UpstreamRateLimited,
)
from inference.providers.openai_compatible import OpenAICompatibleProvider
from tests.servers import ScriptedServer, free_port, llama_cpp_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PARAMS = GenerationParams(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def llama_server():
    with llama_cpp_server() as base_url:
        yield base_url


def provider(base_url, **kwargs):
    return OpenAICompatibleProvider(model="smollm2", base_url=base_url, api_key=None, **kwargs)


def test_streams_deltas_and_reports_usage(llama_server):
    chunks = list(provider(llama_server).stream(QUESTION, PARAMS))
    text = "".join(c.delta for c in chunks)
    assert text.strip()
    assert len([c for c in chunks if c.delta]) >= 2
    last = chunks[-1]
    assert last.finish_reason in {"stop", "length"}
    assert last.usage.prompt_tokens > 5
    assert 0 < last.usage.completion_tokens <= 12


def test_non_streaming_completion_matches_the_stream(llama_server):
    streamed = "".join(c.delta for c in provider(llama_server).stream(QUESTION, PARAMS))
    completion = provider(llama_server).complete(QUESTION, PARAMS)
    assert completion.text == streamed
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 12


def test_retries_5xx_before_the_first_token():
    with ScriptedServer([503, 502, "ok"]) as server:
        chunks = list(provider(server.base_url, max_retries=2).stream(QUESTION, PARAMS))
    assert "".join(c.delta for c in chunks) == "Hello there!"
    assert chunks[-1].usage.prompt_tokens == 7 and chunks[-1].usage.completion_tokens == 3
    assert len(server.requests) == 3


def test_gives_up_after_max_retries_with_a_stable_code():
    with ScriptedServer([500]) as server:
        with pytest.raises(InferenceError) as error:
            list(provider(server.base_url, max_retries=1).stream(QUESTION, PARAMS))
    assert error.value.code == "upstream_error"
    assert len(server.requests) == 2


def test_persistent_429_is_upstream_rate_limited():
    with ScriptedServer([429]) as server:
        with pytest.raises(UpstreamRateLimited) as error:
            list(provider(server.base_url, max_retries=2).stream(QUESTION, PARAMS))
    assert error.value.code == "upstream_rate_limited"
    assert len(server.requests) == 3


def test_a_4xx_is_not_retried():
    with ScriptedServer([400]) as server:
        with pytest.raises(InferenceError):
            list(provider(server.base_url, max_retries=3).stream(QUESTION, PARAMS))
    assert len(server.requests) == 1


def test_unreachable_server_is_model_unavailable():
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as error:
        list(provider(f"http://127.0.0.1:{free_port()}/v1", max_retries=1).stream(QUESTION, PARAMS))
    assert error.value.code == "model_unavailable"
    assert time.monotonic() - started < 10


def test_a_stall_mid_stream_times_out_without_a_retry():
    with ScriptedServer(["stall-midway", "ok"]) as server:
        received = []
        with pytest.raises(ModelTimeout):
            for chunk in provider(server.base_url, read_timeout=1, max_retries=3).stream(QUESTION, PARAMS):
                received.append(chunk.delta)
    # Text already streamed is never requested again (it would be duplicated).
    assert received == ["Hello", " there"]
    assert len(server.requests) == 1


def test_usage_is_counted_when_the_server_sends_none():
    with ScriptedServer(["ok"], words=("a", "b", "c", "d"), send_usage=False) as server:
        chunks = list(provider(server.base_url).stream(QUESTION, PARAMS))
    # One token per streamed chunk; prompt tokens estimated at 4 characters per token.
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == len(QUESTION[0]["content"]) // 4
