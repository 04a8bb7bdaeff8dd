"""Health probes of deployments (Celery beat) and the per-deployment figures operators see, against
real scripted servers, real Redis and the real Celery task (run eagerly, as beat's worker would run it)."""

import time
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.management import call_command

from accounts.models import UsageRecord
from accounts.services import api_key_create
from config.celery import app as celery_app
from inference.models import Deployment, Provider
from inference.routing import deployment_states
from inference.selectors import deployment_tokens_per_s
from inference.tasks import deployments_probe_task
from tests.inference.test_routing import answer, deploy, refused_url, remote_model
from tests.servers import BUNDLED, ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)


def probe() -> dict[str, str]:
    """Run the beat task once, eagerly (a real task run, in this process)."""
    return deployments_probe_task.apply().get()


def test_beat_runs_the_probe_task_every_routing_probe_seconds():
    entry = django_settings.CELERY_BEAT_SCHEDULE["deployments-probe"]
    assert entry["schedule"] == django_settings.ROUTING_PROBE_SECONDS == 60
    assert entry["task"] in celery_app.tasks, "beat names a task the worker knows"


def test_a_probe_of_a_dead_server_marks_it_failing_and_repeated_probes_cool_it(settings):
    settings.ROUTING_COOLDOWN_FAILURES = 2
    with ScriptedServer(["ok"], words=("live",)) as live:
        config = remote_model()
        dead = deploy(config, "dead", refused_url())
        healthy = deploy(config, "live", live.base_url)

        first = probe()
        after_one = deployment_states([dead, healthy])
        second = probe()
        after_two = deployment_states([dead, healthy])
        served = async_to_sync(answer)(config)

    assert first == second == {"remote/dead": "failed", "remote/live": "ok"}
    assert [s.status for s in after_one] == ["failing", "healthy"]
    assert after_one[0].last_error.startswith("probe: model_unavailable: ConnectError")
    assert [s.status for s in after_two] == ["cooling_down", "healthy"], "two failed probes cool it, like requests"
    assert served.outcome.route["deployment"] == "remote/live" and served.outcome.route["reason"] == "routed"
    assert [r for r in live.requests if "GET" in r] == [{"GET": "/v1/models", "authorization": None}] * 2


def test_a_probe_answered_with_an_error_status_or_without_a_key_is_a_failure_with_its_reason(monkeypatch):
    monkeypatch.delenv("PARLEY_TEST_PROBE_KEY", raising=False)
    with ScriptedServer([503]) as broken:
        config = remote_model()
        erroring = deploy(config, "erroring", broken.base_url)
        keyless = deploy(config, "keyless", broken.base_url, api_key_env="PARLEY_TEST_PROBE_KEY")

        results = probe()

    assert results == {"remote/erroring": "failed", "remote/keyless": "failed"}
    states = deployment_states([erroring, keyless])
    assert states[0].status == "failing" and "GET /models answered 503" in states[0].last_error
    assert states[1].status == "failing" and "PARLEY_TEST_PROBE_KEY is not set" in states[1].last_error
    assert len(broken.requests) == 1, "a deployment without its key is not contacted"


def test_a_probe_sends_the_deployments_api_key(monkeypatch):
    monkeypatch.setenv("PARLEY_TEST_PROBE_KEY", "sk-probe-test")
    with ScriptedServer(["ok"]) as server:
        config = remote_model()
        deploy(config, "keyed", server.base_url, api_key_env="PARLEY_TEST_PROBE_KEY")
        results = probe()

    assert results == {"remote/keyed": "ok"}
    assert server.requests == [{"GET": "/v1/models", "authorization": "Bearer sk-probe-test"}]


def test_drained_deployments_are_probed_and_local_ones_reported_local():
    with ScriptedServer(["ok"]) as spare:
        config = remote_model()
        drained = deploy(config, "spare", spare.base_url, is_drained=True)
        Deployment.objects.create(config=config, name="gguf", provider=Provider.LLAMA_CPP, model=BUNDLED)

        results = probe()

    assert results == {"remote/spare": "ok", "remote/gguf": "local"}
    assert len(spare.requests) == 1
    assert deployment_states([drained])[0].summary(drained).startswith("drained; healthy")


def test_a_lone_deployment_that_fails_its_probes_is_failing_but_not_cooled(settings):
    settings.ROUTING_COOLDOWN_FAILURES = 1
    config = remote_model()
    lone = deploy(config, "lone", refused_url())

    probe()
    probe()

    assert deployment_states([lone])[0].status == "failing", "nothing else could serve it: no cooldown"


def test_after_real_requests_the_admin_and_models_check_show_tokens_per_s_and_p50_ttft(daphne_url, user, admin_client):
    import openai

    # Three chunks 50 ms apart: at least 100 ms between the first token and the end, so at most 20 tokens/s.
    with ScriptedServer(["ok"], words=("one", " two", " three"), word_delay=0.05) as server:
        config = remote_model()
        deploy(config, "gpu-1", server.base_url)
        _, key = api_key_create(user=user, name="probes")
        client = openai.OpenAI(base_url=daphne_url + "/v1", api_key=key, max_retries=0, timeout=60)
        for question in ("Hi", "Hello"):  # two questions: the second is not a cached answer
            client.chat.completions.create(model="remote", messages=[{"role": "user", "content": question}])
        deadline = time.monotonic() + 30  # usage is recorded after the response went out
        while UsageRecord.objects.filter(user=user).count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        out = StringIO()
        call_command("models", "check", "remote", stdout=out)

    records = list(UsageRecord.objects.filter(user=user))
    assert [(r.deployment, r.completion_tokens) for r in records] == [("remote/gpu-1", 3)] * 2
    rate = deployment_tokens_per_s(labels=["remote/gpu-1"])["remote/gpu-1"]
    expected = sum(r.completion_tokens - 1 for r in records) / (sum(r.latency_ms - r.ttft_ms for r in records) / 1000)
    assert rate == pytest.approx(expected) and 0 < rate <= 20
    figure = f"{rate:.1f} tokens/s"

    changelist = admin_client.get("/admin/inference/modelconfig/").content.decode()
    change = admin_client.get(f"/admin/inference/modelconfig/{config.pk}/change/").content.decode()
    assert figure in changelist and "p50 TTFT" in changelist and "healthy" in changelist
    assert f"{rate:.1f}" in change and "Tokens/s (last hour)" in change and "p50 TTFT" in change
    assert figure in out.getvalue() and "p50 TTFT" in out.getvalue()


def test_without_timed_requests_there_is_no_tokens_per_s_figure(user):
    config = remote_model()
    idle = deploy(config, "idle", refused_url())
    UsageRecord.objects.create(  # a cached answer: no generation time of this deployment
        user=user, model_slug="remote", source="gateway", status="complete", completion_tokens=5, cached=True,
        ttft_ms=1, latency_ms=2, deployment="remote/idle",
    )  # fmt: skip

    assert deployment_tokens_per_s(labels=["remote/idle"]) == {"remote/idle": None}
    assert "tokens/s" not in deployment_states([idle])[0].summary(idle, None)
