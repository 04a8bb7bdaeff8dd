"""One model served by several deployments (inference.routing), against real scripted servers and Redis.

Every request goes through the one pipeline (inference.pipeline.Generation), so what holds here holds for
chat turns, SSE, REST and /v1 alike; the REST and /v1 tests below check what reaches their users.
"""

import asyncio
import json
import subprocess
import sys
import time
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import UsageRecord
from accounts.services import api_key_create
from inference.models import Deployment, ModelConfig, ModelFallback, Provider, RoutingStrategy
from inference.pipeline import Generation
from inference.providers import GenerationParams, InferenceError, ModelTimeout
from inference.routing import deployment_failure, deployment_states, deployment_success, slot_acquire
from tests.core.test_health import redis_down
from tests.servers import ScriptedServer, free_port, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hello."}]
PARAMS = GenerationParams(max_tokens=8, temperature=0.0)


def remote_model(slug: str = "remote", **fields) -> ModelConfig:
    """A remote model config; its own server fields are unused once it has deployments."""
    return ModelConfig.objects.create(
        slug=slug,
        display_name=slug.title(),
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url="http://127.0.0.1:9/v1",
        temperature=0.0,
        max_retries=0,
        **fields,
    )


def deploy(config: ModelConfig, name: str, base_url: str, **fields) -> Deployment:
    return Deployment.objects.create(config=config, name=name, model="scripted", base_url=base_url, **fields)


def refused_url() -> str:
    """The base URL of a loopback port nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


def slow(deployment: Deployment) -> None:
    """Record a slow recent answer for ``deployment``, so ``lowest_latency`` tries the others first."""
    deployment_success(deployment=deployment, ttft_ms=60_000)


async def answer(config: ModelConfig, messages=QUESTION, **kwargs) -> Generation:
    generation = Generation(config=config, messages=messages, params=PARAMS, use_cache=False, **kwargs)
    await generation.run()
    return generation


def test_least_busy_spreads_concurrent_requests_over_both_deployments():
    async def burst(config: ModelConfig) -> list[Generation]:
        return await asyncio.gather(*(answer(config) for _ in range(6)))

    with (
        ScriptedServer(["ok"], words=("from", " a"), first_token_delay=2) as a,
        ScriptedServer(["ok"], words=("from", " b"), first_token_delay=2) as b,
    ):
        config = remote_model()
        deploy(config, "a", a.base_url)
        deploy(config, "b", b.base_url)

        generations = async_to_sync(burst)(config)

    assert [g.outcome.finish_reason for g in generations] == ["stop"] * 6
    assert len(a.requests) + len(b.requests) == 6
    # Requests overlap (each waits 2 s for its first token), so each one is routed while the others are
    # in flight: the least busy deployment takes it, and the six split evenly.
    assert (len(a.requests), len(b.requests)) == (3, 3)
    served = {g.outcome.route["deployment"] for g in generations}
    assert served == {"remote/a", "remote/b"}
    assert {g.outcome.route["reason"] for g in generations} == {"routed"}
    assert {g.outcome.content for g in generations} == {"from a", "from b"}


def test_a_failing_deployment_costs_users_nothing(settings):
    settings.ROUTING_COOLDOWN_FAILURES = 1
    with ScriptedServer([500], words=("broken",)) as broken, ScriptedServer(["ok"], words=("fine",)) as healthy:
        config = remote_model(routing_strategy=RoutingStrategy.LOWEST_LATENCY)
        failing = deploy(config, "failing", broken.base_url)
        refused = deploy(config, "refused", refused_url())
        good = deploy(config, "good", healthy.base_url)
        slow(good)  # tried last while the others are unmeasured: the failures must happen

        first = async_to_sync(answer)(config)
        later = [async_to_sync(answer)(config) for _ in range(4)]

    assert first.outcome.content == "fine"
    assert first.outcome.route["deployment"] == "remote/good"
    assert first.outcome.route["reason"] in ("fallback:upstream_error", "fallback:model_unavailable")
    assert {t["deployment"] for t in first.outcome.route["tried"]} == {"remote/failing", "remote/refused"}
    assert [g.outcome.content for g in later] == ["fine"] * 4, "no user sees an error"
    assert len(broken.requests) == 1, "a cooling deployment gets no more requests"
    assert len(healthy.requests) == 5
    states = deployment_states([failing, refused, good])
    assert [s.status for s in states] == ["cooling_down", "cooling_down", "healthy"]
    assert "500" in states[0].last_error


def test_a_429_with_retry_after_cools_the_deployment_for_every_process(settings, tmp_path):
    with (
        ScriptedServer([429], retry_after="120") as limited,
        ScriptedServer(["ok"], words=("other",)) as other,
    ):
        config = remote_model(routing_strategy=RoutingStrategy.LOWEST_LATENCY)
        busy = deploy(config, "limited", limited.base_url)
        spare = deploy(config, "spare", other.base_url)
        slow(spare)

        first = async_to_sync(answer)(config)
        assert first.outcome.content == "other"
        assert first.outcome.route["reason"] == "fallback:upstream_rate_limited"
        (state,) = deployment_states([busy])
        assert state.status == "cooling_down"

        # Another process (as a second Daphne or a Celery worker is) skips the deployment at once.
        script = (
            "import django, json; django.setup()\n"
            "from asgiref.sync import async_to_sync\n"
            "from inference.models import ModelConfig\n"
            "from inference.pipeline import Generation\n"
            "from inference.providers import GenerationParams\n"
            "g = Generation(config=ModelConfig.objects.get(slug='remote'), use_cache=False,\n"
            "    messages=[{'role': 'user', 'content': 'Say hello.'}], params=GenerationParams(8, 0.0))\n"
            "async_to_sync(g.run)()\n"
            "print(json.dumps({'content': g.outcome.content, 'route': g.outcome.route}))\n"
        )
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-c", script],
            env=worker_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["content"] == "other"
    assert seen["route"]["deployment"] == "remote/spare"
    assert "tried" not in seen["route"], "the cooling deployment was not even tried"
    assert len(limited.requests) == 1
    assert state.cooldown_until is not None


def test_all_remote_deployments_down_the_bundled_model_answers_and_the_message_says_why(
    client, user, conversation, local_model
):
    config = remote_model()
    deploy(config, "gpu-1", refused_url())
    deploy(config, "gpu-2", refused_url())
    ModelFallback.objects.create(model=config, fallback=local_model, order=0)
    client.force_login(user)

    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Say hello.", "model": "remote", "params": {"max_tokens": 8}, "cache": False},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    message = response.json()["assistant_message"]
    assert message["status"] == "complete" and message["content"]
    from chat.models import Message

    route = Message.objects.get(pk=message["id"]).metadata["route"]
    assert route["model"] == local_model.slug
    assert route["deployment"] == f"{local_model.slug}/default"
    assert route["reason"] == "fallback:model_unavailable"
    assert {t["deployment"] for t in route["tried"]} == {"remote/gpu-1", "remote/gpu-2"}
    record = UsageRecord.objects.get(user=user)
    assert record.model_slug == "remote"
    assert (record.deployment, record.route, record.provider) == (
        f"{local_model.slug}/default",
        "fallback:model_unavailable",
        "llama_cpp",
    )


def test_a_prompt_longer_than_the_context_window_goes_to_the_larger_fallback():
    with (
        ScriptedServer(["ok"], words=("small",)) as small_server,
        ScriptedServer(["ok"], words=("large",)) as large_server,
    ):
        small = remote_model("small", context_window=256)
        deploy(small, "a", small_server.base_url)
        tiny = remote_model("tiny", context_window=512)
        deploy(tiny, "a", refused_url())
        large = remote_model("large", context_window=8192)
        deploy(large, "a", large_server.base_url)
        ModelFallback.objects.create(model=small, fallback=tiny, order=0)
        ModelFallback.objects.create(model=small, fallback=large, order=1)

        long_prompt = [{"role": "user", "content": "Summarise this. " + "word " * 600}]  # ~3,000 characters
        generation = async_to_sync(answer)(small, long_prompt)
        short = async_to_sync(answer)(small)

    assert generation.outcome.content == "large"
    assert generation.outcome.route["model"] == "large"
    assert generation.outcome.route["reason"] == "fallback:context_window"
    assert short.outcome.content == "small" and short.outcome.route["reason"] == "routed"
    assert len(small_server.requests) == 1, "only the short prompt reached the small model"
    assert len(large_server.requests) == 1


def test_after_the_first_token_a_failure_ends_the_answer_with_its_text_and_no_switch(settings):
    with (
        ScriptedServer(["stall-midway"], words=("Hello", " there", "!"), stall_seconds=10) as stalling,
        ScriptedServer(["ok"], words=("other",)) as other,
    ):
        config = remote_model(routing_strategy=RoutingStrategy.LOWEST_LATENCY, idle_timeout=0.5)
        deploy(config, "stalling", stalling.base_url)
        spare = deploy(config, "spare", other.base_url)
        slow(spare)
        generation = Generation(config=config, messages=QUESTION, params=PARAMS, use_cache=False)

        with pytest.raises(ModelTimeout) as raised:
            async_to_sync(generation.run)()

    assert raised.value.partial == "Hello there"
    assert other.requests == [], "no silent switch once text was sent"
    assert generation.outcome.route["deployment"] == "remote/stalling"


def test_a_model_with_every_deployment_drained_or_cooling_answers_503_with_retry_after(
    client, user, conversation, local_model
):
    config = remote_model()
    deploy(config, "drained", refused_url(), is_drained=True)
    cooling = deploy(config, "cooling", refused_url())
    deployment_failure(deployment=cooling, error="upstream_rate_limited: scripted", retry_after=40)
    _, key = api_key_create(user=user, name="routing")

    openai_shape = client.post(
        "/v1/chat/completions",
        {"model": "remote", "messages": QUESTION, "max_tokens": 8},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    client.force_login(user)
    parley_shape = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Say hello.", "model": "remote", "cache": False},
        content_type="application/json",
    )

    assert openai_shape.status_code == 503, openai_shape.content
    assert openai_shape.json()["error"]["code"] == "model_unavailable"
    assert openai_shape.json()["error"]["type"] == "server_error"
    assert 1 <= int(openai_shape["Retry-After"]) <= 40
    assert parley_shape.status_code == 503, parley_shape.content
    assert parley_shape.json()["error"]["code"] == "model_unavailable"
    assert "remote/drained: drained" in parley_shape.json()["error"]["detail"]
    assert 1 <= int(parley_shape["Retry-After"]) <= 40


def test_a_model_without_deployments_is_served_by_its_own_fields_as_before(local_model):
    generation = async_to_sync(answer)(local_model)
    assert generation.outcome.content
    assert generation.outcome.route == {
        "model": local_model.slug,
        "deployment": f"{local_model.slug}/default",
        "provider": "llama_cpp",
        "reason": "routed",
    }


def test_a_lone_failing_deployment_is_not_cooled_down_so_its_errors_stay_as_they_were():
    with ScriptedServer([503]) as failing:
        config = remote_model()
        deploy(config, "only", failing.base_url)
        for _ in range(4):
            with pytest.raises(InferenceError) as raised:
                async_to_sync(answer)(config)
            assert raised.value.code == "upstream_error"
    assert len(failing.requests) == 4, "each request still reaches the server: there is nothing else to serve it"


def test_models_check_probes_each_deployment_and_prints_the_shared_state():
    with ScriptedServer(["ok"], words=("fine",)) as healthy:
        config = remote_model()
        deploy(config, "good", healthy.base_url)
        down = deploy(config, "down", refused_url())
        deployment_failure(deployment=down, error="model_unavailable: connection refused", retry_after=60)
        out = StringIO()
        call_command("models", "check", "remote", stdout=out)

    text = out.getvalue()
    assert "remote/good" in text and "check: OK" in text and "'fine'" in text
    assert "remote/down" in text and "cooling down until" in text
    assert "last error: model_unavailable: connection refused" in text
    assert "check: failed: model_unavailable" in text
    assert "OK (1 of 2 deployments answered)" in text


def test_models_check_fails_when_no_deployment_answers():
    config = remote_model()
    deploy(config, "down", refused_url())
    with pytest.raises(CommandError, match="no deployment answered"):
        call_command("models", "check", "remote", stdout=StringIO())


def test_the_admin_shows_each_deployments_state_and_a_missing_key_as_a_failure(admin_client, monkeypatch):
    monkeypatch.delenv("PARLEY_TEST_MISSING_KEY", raising=False)
    config = remote_model()
    keyless = deploy(config, "keyless", "http://127.0.0.1:9/v1", api_key_env="PARLEY_TEST_MISSING_KEY")
    deploy(config, "spare", refused_url(), is_drained=True)
    Deployment.objects.filter(pk=keyless.pk).update(order=0)

    generation = Generation(config=config, messages=QUESTION, params=PARAMS, use_cache=False)
    with pytest.raises(InferenceError):
        async_to_sync(generation.run)()
    changelist = admin_client.get("/admin/inference/modelconfig/")
    change = admin_client.get(f"/admin/inference/modelconfig/{config.pk}/change/")

    assert changelist.status_code == 200 and change.status_code == 200
    for page in (changelist.content.decode(), change.content.decode()):
        assert "failing" in page
        assert "PARLEY_TEST_MISSING_KEY is not set" in page
        assert "drained" in page


def test_a_deployment_that_sends_no_first_token_in_time_hands_the_request_on():
    with (
        ScriptedServer(["stall"], stall_seconds=10) as stalled,
        ScriptedServer(["ok"], words=("on", " time")) as prompt,
    ):
        config = remote_model(routing_strategy=RoutingStrategy.LOWEST_LATENCY, ttft_timeout=0.5)
        deploy(config, "stalled", stalled.base_url)
        spare = deploy(config, "prompt", prompt.base_url)
        slow(spare)
        generation = async_to_sync(answer)(config)

    assert generation.outcome.content == "on time"
    assert generation.outcome.route["reason"] == "fallback:model_timeout"
    assert generation.outcome.route["tried"] == [{"deployment": "remote/stalled", "code": "model_timeout"}]


def test_a_streamed_v1_request_fails_over_before_its_first_token(daphne_url, user):
    import openai

    with ScriptedServer([502]) as failing, ScriptedServer(["ok"], words=("stream", "ed")) as healthy:
        config = remote_model(routing_strategy=RoutingStrategy.LOWEST_LATENCY)
        deploy(config, "failing", failing.base_url)
        slow(deploy(config, "healthy", healthy.base_url))
        _, key = api_key_create(user=user, name="routing")
        client = openai.OpenAI(base_url=daphne_url + "/v1", api_key=key, max_retries=0, timeout=60)

        chunks = list(client.chat.completions.create(model="remote", messages=QUESTION, max_tokens=8, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed"
    assert len(failing.requests) == 1, "the failing deployment was tried first"
    # A streamed request is recorded after its last event went out: wait for the record.
    deadline = time.monotonic() + 30
    while not UsageRecord.objects.filter(user=user).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = UsageRecord.objects.get(user=user)
    assert (record.status, record.deployment, record.route) == ("complete", "remote/healthy", "fallback:upstream_error")


def test_max_concurrent_requests_are_held_across_both_deployments_and_the_rest_is_busy():
    async def burst(config: ModelConfig) -> list:
        requests = [answer(config) for _ in range(3)]
        return await asyncio.gather(*requests, return_exceptions=True)

    with (
        ScriptedServer(["ok"], words=("a",), first_token_delay=2) as a,
        ScriptedServer(["ok"], words=("b",), first_token_delay=2) as b,
    ):
        config = remote_model()
        deploy(config, "a", a.base_url, max_concurrent=1)
        deploy(config, "b", b.base_url, max_concurrent=1)
        results = async_to_sync(burst)(config)

    errors = [r for r in results if isinstance(r, Exception)]
    assert sorted(r.outcome.content for r in results if not isinstance(r, Exception)) == ["a", "b"]
    assert [(e.code, e.status_code, e.retry_after) for e in errors] == [("model_busy", 503, 1)]
    assert len(a.requests) == 1 and len(b.requests) == 1


def test_a_deployment_over_its_requests_per_minute_sends_the_rest_to_the_fallback():
    with ScriptedServer(["ok"], words=("primary",)) as primary, ScriptedServer(["ok"], words=("spare",)) as spare:
        config = remote_model()
        deploy(config, "limited", primary.base_url, rpm_limit=1)
        fallback = remote_model("spare")
        deploy(fallback, "a", spare.base_url)
        ModelFallback.objects.create(model=config, fallback=fallback)

        first = async_to_sync(answer)(config)
        second = async_to_sync(answer)(config)

    assert (first.outcome.content, first.outcome.route["reason"]) == ("primary", "routed")
    assert (second.outcome.content, second.outcome.route["reason"]) == ("spare", "fallback:rpm_limit")
    assert second.outcome.route["model"] == "spare"


def test_a_crashed_processs_in_flight_request_stops_counting_after_its_ttl(settings):
    settings.ROUTING_INFLIGHT_TTL_SECONDS = 1
    with ScriptedServer(["ok"], words=("free",)) as server:
        config = remote_model()
        only = deploy(config, "only", server.base_url, max_concurrent=1)
        spare = deploy(config, "spare", refused_url(), is_drained=True)
        # A process took the only slot and died without releasing it (nor renewing it).
        taken, _ = slot_acquire(candidates=[only, spare], request_id="crashed", tokens=10)
        assert taken == only
        with pytest.raises(InferenceError) as raised:
            async_to_sync(answer)(config)
        assert raised.value.code == "model_busy"

        time.sleep(1.5)  # past the entry's TTL: no renewal came
        generation = async_to_sync(answer)(config)

    assert generation.outcome.content == "free"
    assert deployment_states([only])[0].in_flight == 0


def test_a_deployment_over_its_tokens_per_minute_sends_the_rest_to_the_fallback():
    question = [{"role": "user", "content": "x" * 40}]  # estimated at 10 prompt tokens
    with ScriptedServer(["ok"], words=("primary",)) as primary, ScriptedServer(["ok"], words=("spare",)) as spare:
        config = remote_model()
        limited = deploy(config, "limited", primary.base_url, tpm_limit=15)
        fallback = remote_model("spare")
        deploy(fallback, "a", spare.base_url)
        ModelFallback.objects.create(model=config, fallback=fallback)

        first = async_to_sync(answer)(config, question)
        second = async_to_sync(answer)(config, question)

    assert first.outcome.content == "primary"
    # 10 estimated prompt tokens, then the 1 completion token the server reported: 11 of 15 this minute.
    assert deployment_states([limited])[0].tokens_this_minute == 11
    assert (second.outcome.content, second.outcome.route["reason"]) == ("spare", "fallback:tpm_limit")


def test_with_the_routing_redis_down_answers_still_come_from_the_deployments(settings):
    with ScriptedServer(["ok"], words=("still", " here")) as server:
        config = remote_model()
        deploy(config, "drained", refused_url(), is_drained=True)
        deploy(config, "up", server.base_url)
        redis_down(settings)  # routing state is unreachable: it fails open, with no limits or cooldowns

        generation = async_to_sync(answer)(config)

    assert generation.outcome.content == "still here"
    assert generation.outcome.route["deployment"] == "remote/up", "a drained deployment stays drained"
