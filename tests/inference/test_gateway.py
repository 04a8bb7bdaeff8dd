"""The OpenAI-compatible gateway under /v1/, driven by the official ``openai`` client against a live Daphne."""

import httpx
import openai
import pytest

from accounts.services import api_key_create
from conftest import make_user
from inference import cache
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Name one colour of the rainbow."}]


@pytest.fixture
def api_key(db) -> str:
    _, key = api_key_create(user=make_user("alice"), name="gateway tests")
    return key


@pytest.fixture
def client(daphne_url, api_key, local_model) -> openai.OpenAI:
    return openai.OpenAI(base_url=daphne_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def test_models_lists_the_enabled_models(client, local_model):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m"]
    assert models.data[0].object == "model"
    assert models.data[0].owned_by == "parley"
    assert models.data[0].created > 0


def test_a_completion_has_the_answer_its_finish_reason_and_usage(client):
    completion = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.model == "smollm2-135m"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_a_streamed_answer_joins_up_to_the_whole_answer(client, settings):
    # Without the cache both answers are generated, so this compares the model's two outputs.
    settings.CACHE_ENABLED = False
    kwargs = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    # include_usage: one last chunk with no choices and the usage.
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_repeated_temperature_0_request_is_answered_from_the_llm_cache(client):
    kwargs = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    streamed = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage == first.usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    assert chunks[-1].usage == first.usage
    stats = cache.layer("llm").stats()
    assert (stats["sets"], stats["hits"]) == (1, 2)


def test_embeddings_are_384_floats_per_input(client):
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a red apple", "a green pear"])
    assert [d.index for d in response.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in response.data)
    assert response.model == "all-MiniLM-L6-v2"
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0

    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input="a red apple", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(response.data[0].embedding, abs=1e-6)


def test_a_bad_api_key_is_an_authentication_error(daphne_url, local_model):
    client = openai.OpenAI(base_url=daphne_url + "/v1", api_key="pk_not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body["type"] == "invalid_request_error"


def test_no_api_key_is_a_401_in_openais_error_shape(daphne_url):
    response = httpx.get(daphne_url + "/v1/models")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=QUESTION, max_tokens=8)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": QUESTION}, "model"),
        ({"model": "smollm2-135m", "messages": []}, "messages"),
        ({"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "smollm2-135m", "messages": QUESTION, "temperature": 3}, "temperature"),
        ({"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 10**6}, "max_tokens"),
        ({"model": "smollm2-135m", "messages": QUESTION, "n": 2}, "n"),
    ],
)
def test_an_invalid_body_is_a_bad_request_naming_the_param(client, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert caught.value.param == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_malformed_json_is_a_bad_request(daphne_url, api_key):
    response = httpx.post(
        daphne_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_message_longer_than_the_context_window_is_a_400(client, local_model):
    local_model.context_window = 256
    local_model.save(update_fields=["context_window"])
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": "word " * 600}], max_tokens=8, stream=stream
            )
        assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("script", "fields", "client_error", "status_code", "code"),
    [
        ([429], {"max_retries": 0}, openai.RateLimitError, 429, "rate_limit_exceeded"),
        (["stall"], {"ttft_timeout": 1.0, "max_retries": 0}, openai.InternalServerError, 504, "model_timeout"),
    ],
)
def test_upstream_failures_are_openai_errors_with_their_status(client, script, fields, client_error, status_code, code):
    with ScriptedServer(script, stall_seconds=5) as server:
        ModelConfig.objects.create(
            slug="remote",
            display_name="Remote",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            cache_policy="never",
            **fields,
        )
        for stream in (False, True):
            with pytest.raises(client_error) as caught:
                client.chat.completions.create(model="remote", messages=QUESTION, max_tokens=8, stream=stream)
            assert caught.value.status_code == status_code
            assert caught.value.code == code


def test_a_full_model_queue_is_a_503_with_retry_after(client, local_model):
    local_model.max_queue = 1
    local_model.save(update_fields=["max_queue"])
    story = [{"role": "user", "content": "Tell me a long story."}]
    # A streamed answer that has started holds the model (its queue admits one generation)...
    running = client.chat.completions.create(
        model="smollm2-135m", messages=story, max_tokens=400, temperature=0, stream=True
    )
    try:
        next(iter(running))
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8, temperature=0.5)
    finally:
        running.close()
    assert caught.value.status_code == 503
    assert caught.value.code == "model_busy"
    assert caught.value.response.headers["Retry-After"] == "5"
