"""The base of Parley's WebSocket consumers: JSON object frames, decoded with the API's limits.

A frame that is binary, not JSON, not a JSON object, nested too deeply or holding NUL or a lone
surrogate (see :func:`core.parsers.json_loads`) is answered with ``{"type": "error", "code",
"detail"}`` and the socket stays open. Channels' own decoding raises instead, which closes the
socket with 1011 and no word to the client.

Each socket of a logged-in user is counted (:mod:`core.presence`) and capped per user: the socket
beyond ``WS_MAX_CONNECTIONS_PER_USER`` is accepted and closed at once with
:data:`CLOSE_TOO_MANY_SOCKETS`. (A handshake refused before it is accepted reaches the client as a
bare HTTP 403, with no code; a close frame carries one.)

With Redis (the channel layer) down, an open socket gets one ``service_unavailable`` error frame
and stays open (its pings answered; events resume when Redis is back), and a new socket is
accepted, sent that frame and closed with :data:`CLOSE_TRY_AGAIN_LATER`.

With PostgreSQL unreachable (:func:`core.errors.database_unavailable`), a frame whose handling needs
the database is answered with a ``database_unavailable`` error frame (``retry_after`` in seconds) and
the socket stays open; a new socket is accepted, sent that frame and closed with
:data:`CLOSE_TRY_AGAIN_LATER`, whether the consumer's ``connect`` or the session lookup before it
(:class:`DatabaseUnavailableASGIMiddleware`) failed. The consumer never crashes with a 1011.
"""

from __future__ import annotations

import json
import logging

from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import close_old_connections

from . import presence
from .channel_layer import CHANNEL_LAYER_ERRORS
from .errors import ParleyError, database_unavailable
from .parsers import UnsafeJSON, json_loads

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 leaves 4000-4999 to applications); 4403, 4429 and 4503 echo HTTP codes.
CLOSE_SESSION_ENDED = 4403  # the user's rights changed (accounts.services.user_sockets_close)
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_TRY_AGAIN_LATER = 4503  # Redis (the channel layer) is down: reconnect later

SERVICE_UNAVAILABLE_DETAIL = (
    "Live updates are paused: the server cannot reach Redis. Answers are still stored; they show "
    "here when it is back, or on reload."
)


async def connections_drop_broken() -> None:
    """Close the database connection of asgiref's shared thread if it failed (PostgreSQL restarted).

    ``sync_to_async`` calls (thread-sensitive, outside a request) all run in that one thread, and
    nothing there closes a connection between calls as Django does between requests (and
    ``database_sync_to_async`` before each call): without this, a connection broken by a database
    restart would fail every later call until the process restarts.
    """
    await sync_to_async(close_old_connections)()


class JsonWebsocketConsumer(AsyncJsonWebsocketConsumer):
    """``AsyncJsonWebsocketConsumer`` that answers undecodable frames with an ``error`` frame.

    ``receive_json(content)`` is called with JSON objects (``dict``) only. Subclasses call
    :meth:`presence_open` in ``connect`` and :meth:`presence_close` in ``disconnect``.
    """

    presence: presence.WsPresence | None = None

    async def presence_open(self, user) -> bool:
        """Count this socket as one of ``user``'s; return False when that is over their cap.

        Over ``WS_MAX_CONNECTIONS_PER_USER``, the socket is accepted and closed with
        :data:`CLOSE_TOO_MANY_SOCKETS` and not counted: the caller returns from ``connect``.
        """
        self.presence = await presence.ws_connection_open(
            channel_name=self.channel_name, user_id=user.pk, limit=settings.WS_MAX_CONNECTIONS_PER_USER
        )
        if self.presence is None:
            logger.info("WebSocket of user %s refused: %s open already", user.pk, settings.WS_MAX_CONNECTIONS_PER_USER)
            await self.accept()
            await self.close(code=CLOSE_TOO_MANY_SOCKETS, reason="Too many open sockets; close another tab.")
            return False
        return True

    async def presence_close(self) -> None:
        """Stop counting this socket (safe to call twice, or when it was never counted). Never raises."""
        opened, self.presence = self.presence, None
        await presence.ws_connection_close(opened)

    async def groups_join(self, groups: list[str]) -> bool:
        """Join the channel-layer ``groups``; return False when Redis fails (the socket is then closed).

        Call from ``connect`` after :meth:`presence_open`. With Redis down the socket is accepted, sent
        a ``service_unavailable`` error frame and closed with :data:`CLOSE_TRY_AGAIN_LATER` (not an
        HTTP 500): the chat page reconnects with backoff.
        """
        try:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
            return True
        except CHANNEL_LAYER_ERRORS as exc:
            logger.warning("WebSocket refused: the channel layer is unavailable (%s)", type(exc).__name__)
        except BaseException:
            # Channels calls disconnect() only for a socket whose connect() returned.
            await self.presence_close()
            raise
        await self.presence_close()
        await self.accept()
        await self.send_error("service_unavailable", SERVICE_UNAVAILABLE_DETAIL)
        await self.close(code=CLOSE_TRY_AGAIN_LATER)
        return False

    async def channel_layer_unavailable(self, message: dict) -> None:
        """Tell the client once per outage that live events are paused; the socket stays open.

        The channel layer sends this in place of a message while Redis fails (core.channel_layer).
        """
        if not getattr(self, "layer_down", False):
            self.layer_down = True
            logger.warning("WebSocket's channel layer is unavailable (%s)", message.get("error"))
            await self.send_error("service_unavailable", SERVICE_UNAVAILABLE_DETAIL)

    async def channel_layer_resumed(self, message: dict) -> None:
        """Redis is back after an outage (core.channel_layer); what was sent meanwhile is lost. Subclasses
        that relay a stream catch up here."""

    async def channel_layer_lagged(self, message: dict) -> None:
        """The channel layer dropped ``message["dropped"]`` events for this socket (it fell ``capacity``
        behind; core.channel_layer). Subclasses that relay a stream catch up here."""

    async def accept(self, subprotocol=None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    # Message types whose handlers never touch the database themselves (any database work they start
    # goes through database_sync_to_async, which closes stale connections on its own). They skip the
    # close_old_connections() Channels (4.2+) runs before every handler: a hop to asgiref's one shared
    # thread per message, ~40% of a web process's CPU when it relays 2,000 tokens/s (bench/load.py
    # --relay-only, profiled with py-spy).
    database_free_types: frozenset[str] = frozenset(
        {"channel_layer.unavailable", "channel_layer.resumed", "channel_layer.lagged"}
    )

    async def dispatch(self, message: dict) -> None:
        kind = message["type"]
        if kind != "channel_layer.unavailable" and not kind.startswith("websocket."):
            self.layer_down = False  # a message came through the channel layer: it is back
        try:
            if kind in self.database_free_types:
                await getattr(self, get_handler_name(message))(message)
            else:
                await super().dispatch(message)
        except Exception as exc:
            error = database_unavailable(exc)
            if error is None:
                raise
            await self.database_unavailable(message, error, exc)

    async def database_unavailable(self, message: dict, error: ParleyError, exc: Exception) -> None:
        """Answer ``message``, whose handler could not reach PostgreSQL, without crashing the consumer.

        A socket not yet accepted (its ``connect`` failed) is accepted, sent the ``database_unavailable``
        frame and closed with :data:`CLOSE_TRY_AGAIN_LATER`; an open one is sent the frame and stays open.
        """
        logger.warning("WebSocket %s: the database is unavailable (%s: %s)", message["type"], type(exc).__name__, exc)
        await connections_drop_broken()
        if message["type"] == "websocket.disconnect":
            return
        if getattr(self, "accepted", False):
            await self.send_error(error.code, error.detail, retry_after=error.retry_after)
            return
        await self.presence_close()
        await self.accept()
        await self.send_error(error.code, error.detail, retry_after=error.retry_after)
        await self.close(code=CLOSE_TRY_AGAIN_LATER)

    async def session_close(self, message: dict) -> None:
        """Close this socket with :data:`CLOSE_SESSION_ENDED`: a ``session.close`` on its user's group.

        Sent when the user is deactivated or their password, groups or permissions change: a
        reconnect is authorised against the new state.
        """
        await self.close(code=CLOSE_SESSION_ENDED)

    async def group_leave(self, group: str) -> None:
        """Leave channel-layer ``group``; a failure (Redis down or saturated) is logged, not raised.

        The group's membership expires on its own (channels-redis ``group_expiry``), so a missed
        leave costs a few undelivered messages, never a stuck socket or count.
        """
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except Exception as exc:
            logger.warning("WebSocket did not leave group %s (%s)", group, type(exc).__name__)

    async def send_error(self, code: str, detail: str, **extra) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail, **extra})

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if text_data is None:
            await self.send_error("invalid_frame", "Send text frames holding JSON; binary frames are not accepted.")
            return
        try:
            content = await self.decode_json(text_data)
        except UnsafeJSON as exc:
            await self.send_error("invalid_json", f"The frame is not accepted: {exc}")
            return
        if not isinstance(content, dict):
            await self.send_error("invalid_json", "Each frame must be a JSON object.")
            return
        await self.receive_json(content, **kwargs)

    @classmethod
    async def decode_json(cls, text_data: str):
        return json_loads(text_data)


class DatabaseUnavailableASGIMiddleware:
    """Turn a "database unreachable" error of the WebSocket stack inside it into a clean refusal.

    Wraps Channels' ``AuthMiddlewareStack``, which reads the session and user from PostgreSQL before
    any consumer runs: with the database down the handshake is accepted, sent a ``database_unavailable``
    error frame and closed with :data:`CLOSE_TRY_AGAIN_LATER`, where it would otherwise end in an
    HTTP 500. Any other error is raised as before.
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        accepted = closed = False

        async def tracked_send(message: dict) -> None:
            nonlocal accepted, closed
            accepted = accepted or message["type"] == "websocket.accept"
            closed = closed or message["type"] == "websocket.close"
            await send(message)

        try:
            return await self.inner(scope, receive, tracked_send)
        except Exception as failure:
            error, exc = database_unavailable(failure), failure
            if error is None or scope["type"] != "websocket" or closed:
                raise
        logger.warning("WebSocket refused: the database is unavailable (%s: %s)", type(exc).__name__, exc)
        await connections_drop_broken()
        frame = {"type": "error", "code": error.code, "detail": error.detail, "retry_after": error.retry_after}
        if not accepted:
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(frame)})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
