"""The chat WebSocket: ``/ws/chat/<conversation_id>/``, speaking the protocol in DESIGN.md."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.http import Http404

from accounts.services import user_group
from accounts.throttling import websocket_message_throttle
from core import prometheus
from core.errors import ParleyError
from core.log import websocket_message_begin
from core.websocket import JsonWebsocketConsumer
from inference.images import data_url_decode

from . import services, turns
from .selectors import conversation_get
from .serializers import MessageOutputSerializer

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 leaves 4000-4999 to applications).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class ChatConsumer(JsonWebsocketConsumer):
    """Relay a conversation's events to its owner and take their messages and stops.

    Only the owner may connect: anyone else is refused during the handshake.
    """

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            # thread_sensitive=False: a consumer has no request thread, and asgiref's one shared thread
            # would queue every socket of the process behind each other.
            self.conversation = await database_sync_to_async(conversation_get, thread_sensitive=False)(
                user=user, conversation_id=self.scope["url_route"]["kwargs"]["conversation_id"]
            )
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Counted (and capped) before joining any group and before the handshake completes, so a
        # socket over the cap costs no channel-layer work and a client that sees it open is counted.
        if not await self.presence_open(user):
            return
        self.group = turns.conversation_group(self.conversation.pk)
        # The user's group: a "session.close" sent there closes every socket of theirs
        # (JsonWebsocketConsumer.session_close).
        self.user_group = user_group(user.pk)
        if not await self.groups_join([self.group, self.user_group]):
            return
        await self.accept()
        prometheus.ws_connection_opened()
        self.counted = True

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            prometheus.ws_connection_closed()
            self.counted = False
        # First, and whatever fails after: a socket left counted would inflate the counts and hold
        # one of the user's WS_MAX_CONNECTIONS_PER_USER places until TTL_SECONDS.
        await self.presence_close()
        if hasattr(self, "user_group"):
            await self.group_leave(self.user_group)
        # Leaving the group does not stop a generation: other tabs, and the stored message, still get it.
        if hasattr(self, "group"):
            await self.group_leave(self.group)

    async def send_parley_error(self, exc: ParleyError) -> None:
        """Send ``exc`` as an ``error`` frame, with ``retry_after`` (seconds) and its extra keys when it has them."""
        extra = dict(getattr(exc, "extra", {}))
        if exc.retry_after is not None:
            extra["retry_after"] = exc.retry_after
        await self.send_error(exc.code, exc.detail, **extra)

    async def receive_json(self, content, **kwargs) -> None:
        websocket_message_begin(self.scope)  # logs of this message (and the turn it starts) carry its id
        kind = content.get("type")
        if kind == "message.send":
            await self.message_send(content)
        elif kind == "generation.stop":
            # An answer whose process died cannot be stopped: end it here, and tell every open page.
            ended = await database_sync_to_async(services.conversation_orphans_finalize)(conversation=self.conversation)
            for message in ended:
                await turns.send_event(
                    self.conversation.pk,
                    {"type": "generation.completed", "message": MessageOutputSerializer(message).data},
                )
            try:
                await turns.generation_stop(self.conversation.pk)
            except Exception as exc:  # the channel layer (Redis) is down: say so, keep the socket
                logger.warning("generation.stop not sent (%s)", type(exc).__name__)
                await self.send_error("service_unavailable", "The stop could not be sent; try again shortly.")
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error("unknown_type", f"Unknown message type {kind!r}.")

    async def message_send(self, content: dict) -> None:
        try:  # RATE_LIMIT_WS: over it, an error frame with retry_after; the socket stays open
            await sync_to_async(websocket_message_throttle)(user=self.scope["user"])
        except ParleyError as exc:
            await self.send_parley_error(exc)
            return
        text = content.get("content")
        if not isinstance(text, str):
            await self.send_error("invalid", "content must be a string.")
            return
        use_cache = content.get("cache", True)
        if not isinstance(use_cache, bool):
            await self.send_error("invalid", "cache must be true or false.")
            return
        attachments, images = content.get("attachments") or [], content.get("images") or []
        if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in (attachments, images)):
            await self.send_error("invalid", "attachments (image ids) and images (data URLs) must be lists of strings.")
            return
        try:
            turn = await database_sync_to_async(services.message_send, thread_sensitive=False)(
                conversation=self.conversation,
                content=text,
                client_id=str(content.get("client_id") or ""),
                model_slug=content.get("model") or None,
                params=content.get("params"),
                cache=use_cache,
                attachments=attachments,
                images=[(data_url_decode(url), "") for url in images],
            )
        except ParleyError as exc:  # includes InferenceError (no model), too_many_generations, quota_exceeded
            await self.send_parley_error(exc)
            return
        await turns.send_event(
            self.conversation.pk,
            {"type": "message.created", "message": MessageOutputSerializer(turn.user_message).data},
        )
        turns.turn_start(turn)

    async def chat_event(self, message: dict) -> None:
        """Relay one event of the conversation's group to this socket."""
        await self.send_json(message["event"])
