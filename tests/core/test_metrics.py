"""Prometheus /metrics: who may scrape it, and the Parley metrics moving with real requests."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.services import usage_record
from core import prometheus

pytestmark = pytest.mark.django_db


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """GET /metrics and return ``{(sample name, sorted labels): value}``."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


def test_loopback_may_scrape_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_without_a_token_others_are_refused(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    # A reverse proxy on this host relays from loopback: a forwarded request is not local.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403


@pytest.mark.parametrize(
    "header",
    ["HTTP_X_REAL_IP", "HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO"],
)
def test_without_a_token_any_forwarding_header_is_refused(client, settings, header):
    settings.METRICS_TOKEN = ""
    # A proxy on this host that sends only X-Real-IP (nginx's usual) exposed /metrics before.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", **{header: "203.0.113.9"}).status_code == 403


def test_behind_a_declared_proxy_even_loopback_needs_the_token(client, settings):
    settings.METRICS_TOKEN = ""
    settings.TRUSTED_PROXY_COUNT = 1
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-123").status_code == 200


def test_with_a_token_only_the_token_gets_in(client, settings):
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert client.get("/metrics").status_code == 401  # even from loopback
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic c2NyYXBl").status_code == 401
    ok = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer scrape-secret-123")
    assert ok.status_code == 200
    assert b"parley_ws_connections" in ok.content


@pytest.mark.django_db(transaction=True)  # the turn runs on another thread's connection
def test_a_chat_turn_moves_the_request_token_and_timing_metrics(client, user, conversation, local_model):
    model = {"model": local_model.slug}
    before = scrape(client)
    client.force_login(user)
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Say hello.", "params": {"max_tokens": 8}, "cache": False},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    answer = response.json()["assistant_message"]
    after = scrape(client)
    requests = ("parley_llm_requests_total", dict(model, provider="llama_cpp", status=answer["status"]))
    assert value(after, requests[0], **requests[1]) == value(before, requests[0], **requests[1]) + 1
    for kind in ("prompt", "completion"):
        moved = value(after, "parley_llm_tokens_total", kind=kind, **model) - value(
            before, "parley_llm_tokens_total", kind=kind, **model
        )
        assert moved == answer["usage"][f"{kind}_tokens"] > 0
    for histogram in ("parley_llm_ttft_seconds_count", "parley_llm_generation_seconds_count"):
        assert value(after, histogram, **model) == value(before, histogram, **model) + 1


def test_a_gateway_error_is_counted_by_status(client):
    from accounts.models import User

    alice = User.objects.create_user(username="alice2")
    labels = {"model": "ghost", "provider": "openai_compatible", "status": "error"}
    before = prometheus.sample_value("parley_llm_requests_total", labels)
    usage_record(user=alice, model_slug="ghost", provider="openai_compatible", source="gateway", status="error")
    assert prometheus.sample_value("parley_llm_requests_total", labels) == before + 1


def test_cache_lookups_are_counted_per_layer_and_result():
    from inference.cache import layer

    tool = layer("tool")
    hit = {"layer": "tool", "result": "hit"}
    miss = {"layer": "tool", "result": "miss"}
    hits, misses = (
        prometheus.sample_value("parley_cache_requests_total", hit),
        prometheus.sample_value("parley_cache_requests_total", miss),
    )
    assert tool.get("no-such-key") is None
    tool.set("a-key", {"answer": 42})
    assert tool.get("a-key") == {"answer": 42}
    assert prometheus.sample_value("parley_cache_requests_total", hit) == hits + 1
    assert prometheus.sample_value("parley_cache_requests_total", miss) == misses + 1


@pytest.mark.django_db(transaction=True)
async def test_open_websockets_are_counted(local_model):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from chat.services import conversation_create
    from config.asgi import application
    from conftest import make_user, ws_headers

    alice = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=alice)
    before = prometheus.sample_value("parley_ws_connections")
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(alice))
    assert (await socket.connect(timeout=10))[0]
    assert prometheus.sample_value("parley_ws_connections") == before + 1
    await socket.disconnect()
    assert prometheus.sample_value("parley_ws_connections") == before


def test_celery_tasks_are_counted_and_carry_the_request_id():
    """Signals of a real task, run by Celery's eager mode in this process: sent is not counted there
    (nothing is published), started and success are."""
    from accounts.tasks import usage_prune_task
    from config.celery import app

    name = usage_prune_task.name
    started = prometheus.sample_value("parley_celery_tasks_total", {"task": name, "state": "started"})
    success = prometheus.sample_value("parley_celery_tasks_total", {"task": name, "state": "success"})
    app.conf.task_always_eager = True
    try:
        assert usage_prune_task.delay().get() == {"records": 0, "daily": 0}
    finally:
        app.conf.task_always_eager = False
    assert prometheus.sample_value("parley_celery_tasks_total", {"task": name, "state": "started"}) == started + 1
    assert prometheus.sample_value("parley_celery_tasks_total", {"task": name, "state": "success"}) == success + 1


def test_a_task_enqueued_during_a_request_carries_its_request_id(settings):
    import json

    import redis
    from celery.signals import task_prerun

    from accounts.tasks import usage_prune_task
    from core.log import request_id_get, request_id_var

    queue = "parley-test-observability"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(queue)
    token = request_id_var.set("req-abc123")
    try:
        usage_prune_task.apply_async(queue=queue)
    finally:
        request_id_var.reset(token)
    message = json.loads(broker.lpop(queue))
    assert message["headers"]["parley_request_id"] == "req-abc123"

    # The worker side: the id is set while the task runs.
    seen = []

    def record(**kwargs):
        seen.append(request_id_get())

    task_prerun.connect(record)
    try:
        usage_prune_task.apply(headers={"parley_request_id": "req-abc123"})
    finally:
        task_prerun.disconnect(record)
    assert seen == ["req-abc123"]


def test_metrics_of_other_processes_are_added_up():
    """A Celery worker or another Daphne process writes to the same directory; any process serves the sum."""
    import os
    import subprocess
    import sys

    if not prometheus.multiprocess_dir():
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is unset: run under `python -m core.launcher run`")
    labels = {"model": "other-process", "provider": "llama_cpp", "status": "complete"}
    before = prometheus.sample_value("parley_llm_requests_total", labels)
    code = (
        "from core import prometheus\n"
        "for _ in range(3):\n"
        "    prometheus.llm_request_observe(model='other-process', provider='llama_cpp', status='complete',"
        " prompt_tokens=5, completion_tokens=2, ttft_ms=10, latency_ms=50)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)  # noqa: S603
    assert prometheus.sample_value("parley_llm_requests_total", labels) == before + 3
    assert prometheus.sample_value("parley_llm_tokens_total", {"model": "other-process", "kind": "prompt"}) >= 15
