"""Turns on remote (OpenAI-compatible) and busy models, through the REST API."""

import threading

import pytest
from rest_framework.test import APIClient

from chat.services import conversation_create
from inference.models import ModelConfig, Provider
from inference.providers import GenerationParams, ModelBusy
from inference.services import provider_for
from tests.servers import ScriptedServer, free_port, llama_cpp_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


def remote_model(base_url, slug="remote", **fields):
    return ModelConfig.objects.create(
        slug=slug,
        display_name=slug.title(),
        provider=Provider.OPENAI_COMPATIBLE,
        model="smollm2",
        base_url=base_url,
        **fields,
    )


def send(api, conversation, content="What is the capital of France?", **extra):
    return api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": content, "params": {"max_tokens": 12}, **extra},
        format="json",
    )


def test_a_remote_model_answers_with_server_usage_and_price(api, user, local_model):
    with llama_cpp_server() as base_url:
        remote_model(base_url, price_input_per_mtok=2, price_output_per_mtok=10)
        conversation = conversation_create(owner=user)
        response = send(api, conversation, model="remote")
    answer = response.json()["assistant_message"]
    assert response.status_code == 201
    assert answer["status"] == "complete" and answer["content"]
    assert answer["model_slug"] == "remote"
    usage = answer["usage"]
    expected = (usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 10) / 1_000_000
    assert answer["cost"] == pytest.approx(expected, abs=1e-6)
    assert answer["tokens_per_s"] is None or answer["tokens_per_s"] > 0


def test_no_first_token_in_time_is_model_timeout_and_the_question_is_kept(api, user, local_model):
    with ScriptedServer(["stall"]) as server:
        remote_model(server.base_url, ttft_timeout=1.0, max_retries=0)
        conversation = conversation_create(owner=user)
        response = send(api, conversation, model="remote")
    answer = response.json()["assistant_message"]
    assert answer["status"] == "error"
    assert answer["metadata"]["error_code"] == "model_timeout"
    assert "within 1 s" in answer["error"]
    assert response.json()["user_message"]["content"] == "What is the capital of France?"


def test_an_idle_stream_keeps_its_partial_text(api, user, local_model):
    with ScriptedServer(["stall-midway"]) as server:
        remote_model(server.base_url, idle_timeout=1.0)
        conversation = conversation_create(owner=user)
        answer = send(api, conversation, model="remote").json()["assistant_message"]
    assert answer["status"] == "error"
    assert answer["metadata"]["error_code"] == "model_timeout"
    assert answer["content"] == "Hello there"


def test_orchestrator_rewrites_the_request_and_both_prompts_are_kept(api, user, local_model):
    with ScriptedServer(["ok"], words=("Name", " the", " capital", " of", " France.")) as server:
        orchestrator = remote_model(server.base_url, slug="planner")
        local_model.orchestrator = orchestrator
        local_model.save(update_fields=["orchestrator"])
        conversation = conversation_create(owner=user)
        answer = send(api, conversation, content="capital of france??").json()["assistant_message"]
    assert answer["status"] == "complete"
    meta = answer["metadata"]["orchestrator"]
    assert meta["status"] == "ok"
    assert meta["raw_prompt"] == "capital of france??"
    assert meta["prompt"] == "Name the capital of France."
    assert server.requests[0]["messages"][-1]["content"].endswith("capital of france??")


def test_a_failing_orchestrator_lets_the_raw_request_through(api, user, local_model):
    orchestrator = remote_model(f"http://127.0.0.1:{free_port()}/v1", slug="planner", max_retries=0)
    local_model.orchestrator = orchestrator
    local_model.save(update_fields=["orchestrator"])
    conversation = conversation_create(owner=user)
    answer = send(api, conversation, content="Hello!").json()["assistant_message"]
    assert answer["status"] == "complete" and answer["content"]
    meta = answer["metadata"]["orchestrator"]
    assert meta["status"] == "failed"
    assert meta["error"].startswith("model_unavailable")
    assert meta["prompt"] == meta["raw_prompt"] == "Hello!"


def test_a_full_queue_is_model_busy_with_retry_after(api, user, local_model):
    local_model.max_queue = 1
    local_model.save(update_fields=["max_queue"])
    provider = provider_for(config=local_model)
    started, release = threading.Event(), threading.Event()

    def long_generation():
        for _chunk in provider.stream(
            [{"role": "user", "content": "Tell me a long story."}], GenerationParams(max_tokens=400, temperature=0)
        ):
            started.set()
            if release.wait(0):
                break
            release.wait(0.05)

    worker = threading.Thread(target=long_generation)
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(ModelBusy):
            next(
                iter(
                    provider_for(config=local_model).stream([{"role": "user", "content": "Hi"}], GenerationParams(4, 0))
                )
            )
        conversation = conversation_create(owner=user)
        response = send(api, conversation, content="Hi")
    finally:
        release.set()
        worker.join()
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "model_busy"
    # The question is kept, and the conversation is free again for the next try.
    assert conversation.messages.filter(role="user").count() == 1
    assert send(api, conversation, content="Hi again").status_code == 201


def test_models_api_lists_enabled_models_default_first(api, local_model):
    ModelConfig.objects.create(slug="alpha", display_name="Alpha", model="/x.gguf")
    ModelConfig.objects.create(slug="off", display_name="Off", model="/y.gguf", is_enabled=False)
    body = api.get("/api/v1/models/").json()
    assert [m["slug"] for m in body] == ["smollm2-135m", "alpha"]
    assert body[0] == {
        "slug": "smollm2-135m",
        "display_name": local_model.display_name,
        "provider": "llama_cpp",
        "context_window": 4096,
        "is_default": True,
    }
    assert body[1]["is_default"] is False
    assert APIClient().get("/api/v1/models/").status_code == 401
