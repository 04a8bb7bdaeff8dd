"""``/ws/documents/``: a user's document ingestion progress, live.

Relays the events of the user's group ``user.<id>.documents`` (see
:func:`agents.services.document_event`) as JSON frames, ``{"type": "document.progress", ...}``.
It closes with 4403 when the user's rights change (see :mod:`accounts.signals`).
The socket only listens: it answers ``{"type": "ping"}`` with ``pong``, ignores other JSON objects,
and anything else with an ``error`` frame (:class:`core.websocket.JsonWebsocketConsumer`).
"""

from __future__ import annotations

from accounts.services import user_group
from core.websocket import JsonWebsocketConsumer

from .services import documents_group

CLOSE_UNAUTHENTICATED = 4401


class DocumentsConsumer(JsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # Counted against the same per-user cap as chat sockets (core.websocket).
        if not await self.presence_open(user):
            return
        self.group = documents_group(user.pk)
        # A "session.close" there (the user's rights changed) closes this socket too.
        self.user_group = user_group(user.pk)
        if not await self.groups_join([self.group, self.user_group]):
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.presence_close()
        for group in (getattr(self, "user_group", None), getattr(self, "group", None)):
            if group is not None:
                await self.group_leave(group)

    async def receive_json(self, content, **kwargs) -> None:
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def documents_event(self, message: dict) -> None:
        """Relay one progress event of the user's group to this socket."""
        await self.send_json(message["event"])
