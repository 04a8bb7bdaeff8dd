"""Request rate limits on /api/v1/ and /v1/, and the WebSocket message limit: real Redis, real processes."""

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from daphne.testing import DaphneProcess
from django.core.cache import cache
from django.db import connections
from rest_framework.test import APIClient

from accounts.throttling import parse_rate, rate_hit
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers

from .conftest import bearer_client, session_client

pytestmark = pytest.mark.django_db


def test_every_response_carries_the_rate_limit_headers_counting_down(user, settings):
    settings.RATE_LIMIT_USER = "5/min"
    client = session_client(user)
    remaining = []
    for _ in range(3):
        response = client.get("/api/v1/conversations/")
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "5"
        assert 0 < int(response["X-RateLimit-Reset"]) <= 60  # seconds until the window resets
        remaining.append(int(response["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2]
    # Errors count and carry the headers too.
    response = client.get("/api/v1/conversations/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    assert response["X-RateLimit-Remaining"] == "1"


def test_over_the_limit_is_a_429_with_retry_after_in_the_error_shape(user, settings):
    settings.RATE_LIMIT_USER = "3/min"
    client = session_client(user)
    assert [client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 200]
    response = client.get("/api/v1/me/")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert "3" in error["detail"]
    assert 0 < int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Remaining"] == "0"
    assert response["X-RateLimit-Limit"] == "3"


def test_each_user_has_their_own_budget_whatever_the_credentials(user, other_user, api_key, settings):
    settings.RATE_LIMIT_USER = "2/min"
    assert session_client(user).get("/api/v1/me/").status_code == 200
    assert bearer_client(api_key).get("/api/v1/me/").status_code == 200  # the same user, by API key
    assert session_client(user).get("/api/v1/me/").status_code == 429
    assert session_client(other_user).get("/api/v1/me/").status_code == 200


def anonymous_refresh(forwarded_for: str | None = None):
    # token/refresh/ takes anonymous requests: a bad token is a 401 after the throttle counted it.
    extra = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for else {}
    return APIClient().post("/api/v1/auth/token/refresh/", {"refresh": "nope"}, format="json", **extra)


def test_anonymous_clients_are_limited_per_ip(db, settings):
    settings.RATE_LIMIT_ANON = "2/min"
    assert [anonymous_refresh().status_code for _ in range(2)] == [401, 401]
    response = anonymous_refresh()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in response


def test_x_forwarded_for_is_ignored_without_trusted_proxies(db, settings):
    settings.RATE_LIMIT_ANON = "2/min"
    # A client cannot reset its budget by inventing a new X-Forwarded-For each time.
    statuses = [anonymous_refresh(f"203.0.113.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 429]


def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(db, settings):
    settings.RATE_LIMIT_ANON = "2/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    # The proxy appends the address it saw connect: the last entry is the client.
    statuses = [anonymous_refresh(f"198.51.100.7, 203.0.113.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 401]  # three clients, one request each
    assert anonymous_refresh("203.0.113.0").status_code == 401
    assert anonymous_refresh("203.0.113.0").status_code == 429  # the first client's third request


def test_the_login_throttle_still_works_beside_the_user_limit(user, settings):
    cache.delete_pattern("throttle_login_*")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"login": "2/min"}}
    credentials = {"username": "alice", "password": "wrong"}
    statuses = [APIClient().post("/api/v1/auth/token/", credentials, format="json").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_the_gateway_is_throttled_in_openai_shape(user, api_key, settings, local_model):
    settings.RATE_LIMIT_USER = "1/min"
    client = bearer_client(api_key)
    first = client.get("/v1/models")
    assert first.status_code == 200
    assert first["X-RateLimit-Remaining"] == "0"
    response = client.get("/v1/models")
    assert response.status_code == 429
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response["Retry-After"]) > 0
    assert response["X-RateLimit-Limit"] == "1"


def test_redis_down_lets_requests_through_without_headers(user, settings, caplog):
    settings.RATE_LIMIT_USER = "1/min"
    # A port nothing listens on: the limiter cannot reach Redis and must not fail the request.
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"},
    }
    client = session_client(user)
    responses = [client.get("/api/v1/conversations/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "X-RateLimit-Limit" not in responses[0]
    assert "not enforced" in caplog.text


def test_rates_parse_as_drf_writes_them():
    assert parse_rate("600/min") == (600, 60)
    assert parse_rate("10/s") == (10, 1)
    assert parse_rate("5/hour") == (5, 3600)
    assert parse_rate("100/day") == (100, 86400)
    assert parse_rate("") is None
    with pytest.raises(ValueError):
        parse_rate("lots")


# WebSocket


@pytest.mark.django_db(transaction=True)
async def test_websocket_messages_over_the_limit_get_an_error_frame_and_the_socket_stays_open(settings):
    settings.RATE_LIMIT_WS = "1/min"
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(user))
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    # The first frame passes the limit (and fails validation: no model work needed for this test).
    await communicator.send_json_to({"type": "message.send", "content": ""})
    first = await communicator.receive_json_from(timeout=10)
    assert first["code"] == "empty_message"
    await communicator.send_json_to({"type": "message.send", "content": "Hello"})
    refused = await communicator.receive_json_from(timeout=10)
    assert refused["type"] == "error"
    assert refused["code"] == "rate_limited"
    assert 0 < refused["retry_after"] <= 60
    assert refused["detail"]
    # Still open: other frames are answered.
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=10) == {"type": "pong"}
    await communicator.disconnect()
    assert not await database_sync_to_async(conversation.messages.exists)()


# Two processes


ROOT = Path(__file__).resolve().parents[2]

HAMMER = textwrap.dedent(
    """
    import os, sys, time
    import django
    django.setup()
    from accounts.throttling import rate_hit
    go = sys.argv[1]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    allowed = sum(rate_hit(scope="user", ident="two-processes", rate="10/min").allowed for _ in range(10))
    print(allowed, flush=True)
    """
)


def start_processes(script: str, count: int, go: Path, *args: str) -> list[subprocess.Popen]:
    """Start ``count`` Python processes running ``script`` with the test settings; wait until each is ready."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", script, str(go), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    return processes


def finish_processes(processes: list[subprocess.Popen], go: Path) -> list[str]:
    go.touch()  # all start at once
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        outputs.append(out.strip())
    return outputs


def test_the_request_limit_holds_across_two_processes(tmp_path):
    go = tmp_path / "go"
    processes = start_processes(HAMMER, 2, go)
    allowed = [int(out) for out in finish_processes(processes, go)]
    # 2 processes x 10 requests against 10/min: exactly 10 got through, however they interleaved.
    assert sum(allowed) == 10
    assert rate_hit(scope="user", ident="two-processes", rate="10/min").allowed is False


def test_a_window_resets_after_its_period():
    assert rate_hit(scope="user", ident="short", rate="1/s").allowed
    assert not rate_hit(scope="user", ident="short", rate="1/s").allowed
    time.sleep(1.1)
    assert rate_hit(scope="user", ident="short", rate="1/s").allowed


def _application():
    from config.asgi import application

    return application


@pytest.mark.django_db(transaction=True)
def test_two_daphne_servers_share_one_request_budget(user, api_key, settings):
    settings.RATE_LIMIT_USER = "10/min"  # the forked servers inherit it
    connections.close_all()  # the children are forked: each opens its own database connections
    servers = [DaphneProcess("127.0.0.1", _application) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            assert server.ready.wait(30), "Daphne did not start"
        urls = [f"http://127.0.0.1:{server.port.value}/api/v1/me/" for server in servers]
        headers = {"Authorization": f"Bearer {api_key}"}

        def hit(url: str) -> int:
            return httpx.get(url, headers=headers, timeout=30).status_code

        # 10 requests to each server at once, against one budget of 10 a minute.
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(hit, urls * 10))
    finally:
        for server in servers:
            server.terminate()
            server.join(10)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 10
