"""The chat WebSocket: ``/ws/chat/<conversation_id>/``, speaking the protocol in DESIGN.md."""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from config.exceptions import ParleyError

from . import services, turns
from .selectors import conversation_get
from .serializers import MessageOutputSerializer

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 leaves 4000-4999 to applications).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Relay a conversation's events to its owner and take their messages and stops.

    Only the owner may connect: anyone else is refused during the handshake.
    """

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            self.conversation = await database_sync_to_async(conversation_get)(
                user=user, conversation_id=self.scope["url_route"]["kwargs"]["conversation_id"]
            )
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = turns.conversation_group(self.conversation.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        # Leaving the group does not stop a generation: other tabs, and the stored message, still get it.
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def send_error(self, code: str, detail: str) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail})

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict):
            await self.send_error("invalid_json", "Each frame must be a JSON object.")
            return
        kind = content.get("type")
        if kind == "message.send":
            await self.message_send(content)
        elif kind == "generation.stop":
            await turns.generation_stop(self.conversation.pk)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error("unknown_type", f"Unknown message type {kind!r}.")

    async def decode_json(self, text_data):
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None

    async def message_send(self, content: dict) -> None:
        text = content.get("content")
        if not isinstance(text, str):
            await self.send_error("invalid", "content must be a string.")
            return
        use_cache = content.get("cache", True)
        if not isinstance(use_cache, bool):
            await self.send_error("invalid", "cache must be true or false.")
            return
        try:
            turn = await database_sync_to_async(services.message_send)(
                conversation=self.conversation,
                content=text,
                client_id=str(content.get("client_id") or ""),
                model_slug=content.get("model") or None,
                params=content.get("params"),
                cache=use_cache,
            )
        except ParleyError as exc:  # includes InferenceError: no model to run
            await self.send_error(exc.code, exc.detail)
            return
        await turns.send_event(
            self.conversation.pk,
            {"type": "message.created", "message": MessageOutputSerializer(turn.user_message).data},
        )
        turns.turn_start(turn)

    async def chat_event(self, message: dict) -> None:
        """Relay one event of the conversation's group to this socket."""
        await self.send_json(message["event"])
