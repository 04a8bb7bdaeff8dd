"""Structured logs: a request id on every record, and secrets redacted before anything is written.

The request id lives in a context variable, so it follows a request through sync and async code:

- HTTP: :func:`request_id_middleware` takes a sane ``X-Request-ID`` from the client (or makes one),
  returns it in the response's ``X-Request-ID`` and sets it for the request.
- WebSocket: :class:`RequestIdASGIMiddleware` gives each connection an id (its handshake's
  ``X-Request-ID`` or a new one); :func:`websocket_message_begin` gives each received message
  ``<connection id>.<n>``, which the turn it starts keeps (asyncio tasks copy the context).
- Celery: the id of the code that enqueues a task travels in the task's headers and is set while
  the task runs (signals connected in ``config/celery.py``).

:class:`RequestIdFilter` puts it on every record as ``request_id``; :class:`RedactSecretsFilter`
replaces API keys (``pk_...``), Bearer tokens, JWTs and password-like fields in messages, arguments,
extra fields and tracebacks. Both are installed on the handler (``LOGGING`` in config/settings), so
they see the records of every logger, whichever formatter writes them: :class:`ConsoleFormatter`
(``LOG_FORMAT=console``) or python-json-logger's (``json``).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.signals import request_finished
from django.dispatch import receiver
from django.utils.decorators import sync_and_async_middleware

request_id_var: ContextVar[str | None] = ContextVar("parley_request_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept when it is short and plain (a UUID, a hex or base64url string, a proxy's
# id); anything else (log injection, megabytes) is replaced by a fresh one.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def request_id_new() -> str:
    """Return a new request id: 32 lowercase hex characters (a UUID4)."""
    return uuid.uuid4().hex


def request_id_from(value: str | bytes | None) -> str:
    """Return ``value`` if it is a sane request id (≤ 128 of ``[A-Za-z0-9._:-]``), else a new one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return request_id_new()


def request_id_get() -> str | None:
    """Return the request id of the running code, or None outside any request, message or task."""
    return request_id_var.get()


@sync_and_async_middleware
def request_id_middleware(get_response):
    """Set the request id for the request and return it in the ``X-Request-ID`` response header."""

    # The id stays set after the middleware returns: Django logs 4xx/5xx responses (django.request)
    # and streams response bodies after it. It is cleared when the request finishes (request_finished).
    def begin(request) -> None:
        request.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request_id_var.set(request.request_id)

    if iscoroutinefunction(get_response):

        async def middleware(request):
            begin(request)
            response = await get_response(request)
            response[REQUEST_ID_HEADER] = request.request_id
            return response

    else:

        def middleware(request):
            begin(request)
            response = get_response(request)
            response[REQUEST_ID_HEADER] = request.request_id
            return response

    return middleware


@receiver(request_finished, dispatch_uid="parley_request_id_clear")
def _request_finished(**kwargs) -> None:
    request_id_var.set(None)


class RequestIdASGIMiddleware:
    """ASGI middleware for WebSockets: a request id per connection, kept in ``scope["request_id"]``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER.lower().encode()))
        scope = {**scope, "request_id": request_id, "request_id_messages": [0]}
        token = request_id_var.set(request_id)
        try:
            return await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)


def websocket_message_begin(scope: dict) -> str:
    """Set and return the request id of the next message received on a WebSocket: ``<connection>.<n>``.

    Call at the start of a consumer's receive handler; code the message starts (a turn's task) keeps it.
    """
    connection = scope.get("request_id") or request_id_new()
    counter = scope.setdefault("request_id_messages", [0])
    counter[0] += 1
    request_id = f"{connection}.{counter[0]}"
    request_id_var.set(request_id)
    return request_id


class RequestIdFilter(logging.Filter):
    """Add ``record.request_id``: the running request's id, or None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class ConsoleFormatter(logging.Formatter):
    """One readable line a record: ``12:03:52 WARNING django.request [<request id>] Unauthorized: /api/v1/me/``.

    The time is local, to the second; ``-`` stands for no request id. A traceback follows on its own
    lines. Extra fields (``extra=``) are left out: the JSON format writes them.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_id = request_id or "-"
        try:
            return super().format(record)
        finally:
            record.request_id = request_id


REDACTED = "[REDACTED]"
# Order matters: a "Bearer <JWT>" becomes "Bearer [REDACTED]" before the JWT rule sees it.
_SECRET_PATTERNS: list[tuple[re.Pattern, str]] = [
    # Authorization header values: Bearer and Basic credentials.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), rf"\1 {REDACTED}"),
    # Parley API keys: "pk_" + URL-safe base64 (accounts.services.api_key_create).
    (re.compile(r"\bpk_[A-Za-z0-9_\-]{8,}"), f"pk_{REDACTED}"),
    # JWTs: three base64url parts, the first a JSON header ("eyJ" is base64 for '{"').
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED),
    # Secret-looking fields in logged dicts, JSON, query strings and key=value text.
    (
        re.compile(
            r"""(?ix)
            (["']?\b(?:password\d?|passwd|new_password\d?|old_password|secret|client_secret|api_key|apikey|
            token|access_token|refresh_token|access|refresh|authorization|csrfmiddlewaretoken|sessionid)["']?
            \s*[:=]\s*)
            (["']?)[^"'&\s,;}\]]+"""
        ),
        rf"\1\2{REDACTED}",
    ),
]


def redact(text: str) -> str:
    """Return ``text`` with API keys, Bearer/Basic credentials, JWTs and secret-named fields replaced."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# Attributes every LogRecord has; anything else was passed as ``extra=`` and is written by the JSON formatter.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "request_id"}


_SECRET_NAME = re.compile(
    r"(?i)^(password\d?|passwd|new_password\d?|old_password|secret|client_secret|api_key|apikey|token|access_token|"
    r"refresh_token|access|refresh|authorization|csrfmiddlewaretoken|sessionid)$"
)


def _secret_name(name: Any) -> bool:
    return bool(_SECRET_NAME.match(str(name)))


def _redact_value(value: Any, depth: int = 0) -> Any:
    """Return ``value`` with secrets redacted: strings, and dicts and lists of them, keep their shape
    (the JSON formatter writes them as JSON); other objects become their redacted ``str()``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if depth < 4 and isinstance(value, dict):
        return {str(k): REDACTED if _secret_name(k) else _redact_value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_redact_value(v, depth + 1) for v in value]
    return redact(str(value))


class RedactSecretsFilter(logging.Filter):
    """Redact secrets from a record's message, arguments, extra fields and traceback (see :func:`redact`).

    The message is formatted here (``msg % args``) and the arguments dropped, so no handler can
    write an argument unredacted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw parts, redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # The text above replaces the traceback; formatters would otherwise re-render it unredacted.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, REDACTED if _secret_name(key) else _redact_value(value))
        return True
