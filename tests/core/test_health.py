"""/health/ and /health/ready/ against the real database, Redis (Valkey) and, for Celery, a real worker."""

import os
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings
from django.test import Client

from conftest import make_user
from core import health
from inference.models import ModelConfig
from tests.servers import celery_ping

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_readiness():
    """Each test probes afresh: readiness results are cached for a second, per process."""
    health.readiness_cache_clear()
    yield
    health.readiness_cache_clear()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_down(settings) -> None:
    default = dict(settings.CACHES["default"], LOCATION=f"redis://127.0.0.1:{closed_port()}/0")
    settings.CACHES = {**settings.CACHES, "default": default}


def ready(*, staff: bool = True) -> tuple[int, dict]:
    """GET /health/ready/, as staff (who see each component's detail) or anonymously."""
    client = Client()
    if staff:
        client.force_login(make_user("operator", is_staff=True))
    response = client.get("/health/ready/")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def test_liveness_touches_nothing(settings, django_assert_num_queries):
    redis_down(settings)
    with django_assert_num_queries(0):
        response = Client().get("/health/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_reports_each_component(local_model):
    status, body = ready()
    assert status == 200
    assert body["status"] == "ok"
    components = body["components"]
    assert set(components) == {"database", "redis", "model", "celery"}
    for name in ("database", "redis", "model"):
        assert components[name]["status"] == "ok", components[name]
        assert components[name]["required"] is True
        assert isinstance(components[name]["latency_ms"], float)
    assert "smollm2-135m" in components["model"]["detail"]
    # No worker runs in the tests; with inline execution that is reported but not fatal.
    assert components["celery"]["status"] == "down"
    assert components["celery"]["required"] is False
    assert "no worker answered" in components["celery"]["detail"]


def test_redis_down_makes_ready_503_naming_redis(local_model, settings):
    redis_down(settings)
    status, body = ready()
    assert status == 503
    assert body["status"] == "down"
    redis = body["components"]["redis"]
    assert redis["status"] == "down"
    assert "refused" in redis["detail"].lower() or "connect" in redis["detail"].lower()
    assert body["components"]["database"]["status"] == "ok"


def test_anonymous_probes_see_status_but_no_error_text(local_model, settings):
    redis_down(settings)
    ModelConfig.objects.filter(pk=local_model.pk).update(model="/nonexistent/model.gguf")
    status, body = ready(staff=False)
    assert status == 503
    for component in body["components"].values():
        assert set(component) == {"status", "latency_ms", "required"}
    assert body["components"]["redis"]["status"] == body["components"]["model"]["status"] == "down"


def test_a_missing_model_file_makes_ready_503(local_model):
    ModelConfig.objects.filter(pk=local_model.pk).update(model="/nonexistent/model.gguf")
    status, body = ready()
    assert status == 503
    assert body["components"]["model"]["status"] == "down"
    assert "does not exist" in body["components"]["model"]["detail"]


def test_no_enabled_model_makes_ready_503(local_model):
    ModelConfig.objects.update(is_default=False, is_enabled=False)
    status, body = ready()
    assert status == 503
    assert body["components"]["model"]["status"] == "down"


def test_a_required_celery_without_workers_makes_ready_503(local_model, settings):
    settings.HEALTH_CELERY_REQUIRED = True
    status, body = ready()
    assert status == 503
    assert body["components"]["celery"] == {**body["components"]["celery"], "status": "down", "required": True}


@pytest.fixture
def celery_worker():
    """A real Celery worker process on the test Redis; stopped (by its pid) afterwards."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "--loglevel=WARNING"]
    worker = subprocess.Popen(command, env=env, cwd=django_settings.BASE_DIR)  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while not celery_ping(timeout=0.5):
            assert worker.poll() is None, "the Celery worker exited"
            assert time.monotonic() < deadline, "the Celery worker did not answer within 60 s"
        yield worker
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_running_worker_makes_celery_ok(local_model, settings, celery_worker):
    settings.HEALTH_CELERY_REQUIRED = True
    status, body = ready()
    assert status == 200, body
    assert body["components"]["celery"]["status"] == "ok"
    assert "answered" in body["components"]["celery"]["detail"]


def test_ready_probes_the_backends_at_most_once_a_second(local_model, settings, django_assert_num_queries):
    assert ready(staff=False)[0] == 200
    redis_down(settings)
    # Within the second: the last probe's answer, without touching the database or Redis.
    with django_assert_num_queries(0):
        assert ready(staff=False)[0] == 200
    time.sleep(settings.HEALTH_READY_CACHE_SECONDS)
    status, body = ready(staff=False)
    assert status == 503 and body["components"]["redis"]["status"] == "down"


def test_anonymous_probes_are_limited_per_address_and_staff_are_not(local_model, settings):
    settings.RATE_LIMIT_HEALTH = "3/min"
    for _ in range(3):
        assert Client().get("/health/ready/", REMOTE_ADDR="192.0.2.10").status_code == 200
    refused = Client().get("/health/ready/", REMOTE_ADDR="192.0.2.10")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused["Retry-After"]) <= 60
    assert Client().get("/health/ready/", REMOTE_ADDR="192.0.2.11").status_code == 200  # another address
    staff = Client()
    staff.force_login(make_user("operator", is_staff=True))
    for _ in range(5):
        assert staff.get("/health/ready/", REMOTE_ADDR="192.0.2.10").status_code == 200
