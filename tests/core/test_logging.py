"""Structured logs: request ids from HTTP, and no secret (API key, password, JWT) in any log output."""

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings as django_settings

from core.log import ConsoleFormatter, RedactSecretsFilter, redact

pytestmark = pytest.mark.django_db

CANARY_PASSWORD = "canary-Pa55word-7b1e9c"


@contextlib.contextmanager
def handler_output(caplog, formatter: logging.Formatter | None = None):
    """Capture everything logged at DEBUG and up as the configured console handler writes it.

    With ``formatter``, the handler writes with it instead of the test settings' (JSON) one.
    """
    caplog.set_level(logging.DEBUG)
    handler = next(
        h for h in logging.getLogger().handlers if any(isinstance(f, RedactSecretsFilter) for f in h.filters)
    )
    stream, configured = io.StringIO(), handler.formatter
    previous = handler.setStream(stream)
    if formatter is not None:
        handler.setFormatter(formatter)
    try:
        yield stream
    finally:
        handler.setFormatter(configured)
        handler.setStream(previous)


@pytest.fixture
def json_logs(caplog):
    """Everything logged at DEBUG and up, as the configured JSON console handler writes it."""
    with handler_output(caplog) as stream:
        yield stream


@pytest.fixture(params=["json", "console"])
def log_format(request) -> str:
    """Each LOG_FORMAT in turn."""
    return request.param


@pytest.fixture
def any_logs(log_format, caplog):
    """Everything logged at DEBUG and up, in each LOG_FORMAT: the redaction must hold in both."""
    with handler_output(caplog, ConsoleFormatter() if log_format == "console" else None) as stream:
        yield stream


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_the_request_id_is_taken_from_the_client_or_made(client):
    given = client.get("/health/", HTTP_X_REQUEST_ID="req-0123456789abcdef")
    assert given["X-Request-ID"] == "req-0123456789abcdef"
    made = client.get("/health/")
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    # Not sane (spaces, a newline for log injection, too long): replaced.
    for bad in ("two words", "x\ninjected", "a" * 500):
        assert re.fullmatch(r"[0-9a-f]{32}", client.get("/health/", HTTP_X_REQUEST_ID=bad)["X-Request-ID"])


def test_log_lines_are_json_with_the_request_id(client, json_logs):
    response = client.get("/api/v1/me/", HTTP_X_REQUEST_ID="trace-42")
    assert response.status_code == 401
    # Django logs every 4xx response on django.request ("Unauthorized: /api/v1/me/").
    [line] = [r for r in records(json_logs) if r["logger"] == "django.request"]
    assert line["request_id"] == "trace-42"
    assert line["level"] == "WARNING" and "/api/v1/me/" in line["message"]
    assert "time" in line


def test_secrets_in_log_calls_are_redacted_everywhere(any_logs, log_format, caplog):
    logger = logging.getLogger("parley.test")
    key = "pk_" + "Zx9" * 14
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    logger.info("Authorization: Bearer %s", "opaque-token-value-123")
    logger.info("key %s and jwt %s", key, jwt)
    logger.warning("login failed for %s", {"username": "bob", "password": CANARY_PASSWORD})
    logger.info("form posted", extra={"body": f"username=bob&password={CANARY_PASSWORD}&next=/"})
    logger.info("login", extra={"password": CANARY_PASSWORD, "form": {"user": "bob", "password": CANARY_PASSWORD}})
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        logger.exception("failed")
    output = any_logs.getvalue()
    for secret in ("opaque-token-value-123", key, jwt, CANARY_PASSWORD):
        assert secret not in output
        assert secret not in caplog.text
    # The console format leaves extra fields out (the JSON one writes them, redacted).
    assert output.count("[REDACTED]") >= (7 if log_format == "json" else 6)
    assert "username" in output and "bob" in output  # the rest of the message is kept


def test_redact_keeps_ordinary_text():
    text = "Loaded model (n_ctx=4096) in 0.30 s; 12 prompt_tokens, tokens: 7"
    assert redact(text) == text


@pytest.mark.django_db(transaction=True)  # /v1 authenticates in a pool thread: committed rows only
def test_a_canary_key_and_password_used_through_the_api_appear_in_no_log(client, any_logs, caplog, local_model):
    """Sign in with JWT, make an API key, call /v1 with it, fail a login: then search every log line."""
    from accounts.models import User

    User.objects.create_user(username="canary", password=CANARY_PASSWORD)
    tokens = client.post(
        "/api/v1/auth/token/", {"username": "canary", "password": CANARY_PASSWORD}, content_type="application/json"
    ).json()
    wrong = client.post(
        "/api/v1/auth/token/",
        {"username": "canary", "password": CANARY_PASSWORD + "x"},
        content_type="application/json",
    )
    assert wrong.status_code == 401
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access']}"}
    created = client.post("/api/v1/keys/", {"name": "canary"}, content_type="application/json", **auth)
    assert created.status_code == 201
    key = created.json()["key"]
    completion = client.post(
        "/v1/chat/completions",
        {"model": local_model.slug, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert completion.status_code == 200, completion.content
    # Failures log too (401, 400): with the secrets in the request.
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}x").status_code == 401
    assert (
        client.post(
            "/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"] + "x"}, content_type="application/json"
        ).status_code
        == 401
    )
    logging.getLogger("django.request").debug("request headers: Authorization: Bearer %s", key)

    captured = any_logs.getvalue() + caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert captured  # something was logged (the 401s at least)
    for secret in (CANARY_PASSWORD, key, key[3:], tokens["access"], tokens["refresh"]):
        assert secret not in captured


async def test_a_websocket_gets_a_request_id_per_connection_and_per_message():
    from channels.generic.websocket import AsyncJsonWebsocketConsumer
    from channels.testing import WebsocketCommunicator

    from core.log import RequestIdASGIMiddleware, request_id_get, websocket_message_begin

    seen = []

    class Recorder(AsyncJsonWebsocketConsumer):
        """Does what ChatConsumer does with request ids, and notes the id each handler runs with."""

        async def connect(self):
            seen.append(request_id_get())
            await self.accept()

        async def receive_json(self, content, **kwargs):
            websocket_message_begin(self.scope)
            seen.append(request_id_get())
            await self.send_json({"ok": True})

    socket = WebsocketCommunicator(
        RequestIdASGIMiddleware(Recorder.as_asgi()), "/ws/", headers=[(b"x-request-id", b"ws-conn-1")]
    )
    assert (await socket.connect())[0]
    for _ in range(2):
        await socket.send_json_to({"type": "ping"})
        await socket.receive_json_from()
    await socket.disconnect()
    assert seen == ["ws-conn-1", "ws-conn-1.1", "ws-conn-1.2"]


# Configures logging as django.setup() does, without loading the apps (seconds of imports).
LOG_LINE_SCRIPT = """
import logging, sys
from django.conf import settings
from django.utils.log import configure_logging
configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
from core.log import request_id_var
request_id_var.set("trace-7")
logging.getLogger("parley.check").warning("login failed for %s", {"username": "bob", "password": sys.argv[1]})
"""


def log_line(settings_module: str, **env: str) -> subprocess.CompletedProcess:
    """Log one warning (with a password) through ``settings_module``'s LOGGING in a new process."""
    environment = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    environment |= {"DJANGO_SETTINGS_MODULE": settings_module, "DJANGO_SECRET_KEY": "x" * 50}
    environment |= {"DJANGO_ALLOWED_HOSTS": "parley.example.com", **env}
    return subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", LOG_LINE_SCRIPT, CANARY_PASSWORD],
        cwd=django_settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_local_runs_log_readable_lines_and_production_json_both_redacted():
    local = log_line("config.settings.local")  # make run, make dev, manage.py
    assert local.returncode == 0, local.stderr
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARNING parley\.check \[trace-7\] login failed for "
        r"\{'username': 'bob', 'password': '\[REDACTED\]'\}\n",
        local.stderr,
    ), local.stderr

    production = log_line("config.settings.production")
    assert production.returncode == 0, production.stderr
    line = json.loads(production.stderr)
    assert (line["level"], line["logger"], line["request_id"]) == ("WARNING", "parley.check", "trace-7")
    assert CANARY_PASSWORD not in production.stderr and "[REDACTED]" in line["message"]

    # LOG_FORMAT chooses either way.
    assert json.loads(log_line("config.settings.local", LOG_FORMAT="json").stderr)["request_id"] == "trace-7"
    assert re.match(r"\d\d:\d\d:\d\d WARNING ", log_line("config.settings.production", LOG_FORMAT="console").stderr)


def test_an_unknown_log_format_is_refused_by_name():
    result = log_line("config.settings.local", LOG_FORMAT="xml")
    assert result.returncode == 1
    assert "LOG_FORMAT must be one of console, json, not 'xml'." in result.stderr
