"""The chat WebSocket: ``/ws/chat/<conversation_id>/``, speaking the protocol in DESIGN.md."""

from __future__ import annotations

import asyncio
import logging
import uuid

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
from .models import MessageStatus
from .selectors import answers_get, conversation_get, generations_unfinished, message_get
from .serializers import MessageOutputSerializer

logger = logging.getLogger(__name__)

# Close codes (RFC 6455 leaves 4000-4999 to applications).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# Seconds between looks at the stored answers a socket that missed events waits for the end of.
CATCH_UP_POLL_SECONDS = 1.0
UNFINISHED = (MessageStatus.PENDING, MessageStatus.STREAMING)


def _unfinished_ids(conversation) -> set[str]:
    return {str(pk) for pk in generations_unfinished(conversation=conversation).values_list("pk", flat=True)}


class ChatConsumer(JsonWebsocketConsumer):
    """Relay a conversation's events to its owner and take their messages and stops.

    Only the owner may connect: anyone else is refused during the handshake.

    Every answer whose stream this socket relays ends here with its ``generation.completed``, even
    when the channel layer lost events on the way (this socket fell ``capacity`` events behind, or
    Redis went away and came back): the layer says so (``channel_layer.lagged`` /
    ``channel_layer.resumed``), and the socket then reads the stored answers it was waiting for,
    and sends the end of each once it is stored (:meth:`catch_up`). Missed ``token`` text is
    recovered by the client from the stored answer, by the events' ``offset``.
    """

    database_free_types = JsonWebsocketConsumer.database_free_types | {"chat.event"}
    streaming: set[str]  # answers this socket relayed events of, whose end it has not sent
    ended: set[str]  # answers whose generation.completed this socket sent
    catching_up: asyncio.Task | None = None

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
        self.streaming, self.ended = set(), set()
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
        if self.catching_up is not None:
            self.catching_up.cancel()
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
        if kind in ("message.send", "message.edit"):
            await self.message_send(content)
        elif kind == "branch.switch":
            await self.branch_switch(content)
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
        """Send a message, or with ``message.edit`` ask message ``message_id`` again as a new branch."""
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
            fields = {
                "conversation": self.conversation,
                "content": text,
                "client_id": str(content.get("client_id") or ""),
                "model_slug": content.get("model") or None,
                "params": content.get("params"),
                "cache": use_cache,
                "attachments": attachments,
                "images": [(data_url_decode(url), "") for url in images],
            }
            if content.get("type") == "message.edit":
                fields["message"] = await self.message_of(content)
                turn = await database_sync_to_async(services.message_edit, thread_sensitive=False)(**fields)
            else:
                turn = await database_sync_to_async(services.message_send, thread_sensitive=False)(**fields)
        except ParleyError as exc:  # includes InferenceError (no model), too_many_generations, quota_exceeded
            await self.send_parley_error(exc)
            return
        await turns.send_event(
            self.conversation.pk,
            {"type": "message.created", "message": MessageOutputSerializer(turn.user_message).data},
        )
        turns.turn_start(turn, until_taken=True)  # this socket follows it through the channel layer

    async def message_of(self, content: dict):
        """Return the conversation's message ``content["message_id"]``; raise ``not_found`` (404) if none."""
        message_id = content.get("message_id")
        try:
            return await database_sync_to_async(message_get, thread_sensitive=False)(
                conversation=self.conversation, message_id=uuid.UUID(str(message_id))
            )
        except (ValueError, Http404) as exc:
            raise ParleyError("No such message in this conversation.", code="not_found", status_code=404) from exc

    async def branch_switch(self, content: dict) -> None:
        """Show the branch through ``content["message_id"]``; every page of the conversation is told."""
        try:
            message = await self.message_of(content)
            leaf = await database_sync_to_async(services.conversation_switch_branch, thread_sensitive=False)(
                conversation=self.conversation, message=message
            )
        except ParleyError as exc:
            await self.send_parley_error(exc)
            return
        await turns.send_event(self.conversation.pk, turns.branch_switched_event(leaf=leaf, message=message))

    async def chat_event(self, message: dict) -> None:
        """Relay one event of the conversation's group to this socket."""
        event = message["event"]
        kind = event.get("type")
        if kind == "generation.completed":
            answer_id = str(event["message"]["id"])
            if answer_id in self.ended:
                return  # already sent from the stored answer (catch_up)
            self.streaming.discard(answer_id)
            self.ended.add(answer_id)
        elif kind in ("generation.started", "token") and event["message_id"] not in self.ended:
            self.streaming.add(event["message_id"])
        await self.send_json(event)

    async def channel_layer_lagged(self, message: dict) -> None:
        """Events for this socket were dropped (it fell ``capacity`` behind): make sure every answer still ends."""
        logger.info("WebSocket fell behind: %s channel-layer events dropped", message.get("dropped"))
        self.catch_up()

    async def channel_layer_resumed(self, message: dict) -> None:
        """Redis is back after an outage: events sent meanwhile are lost, so catch up as after a lag."""
        self.catch_up()

    def catch_up(self) -> None:
        """Start (unless running) the task that sends the end of each answer this socket may have missed it of."""
        if self.catching_up is None or self.catching_up.done():
            self.catching_up = asyncio.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        # The answers whose end may have been lost: those this socket saw streaming, and any other
        # unfinished one of the conversation (its generation.started may have been lost too).
        read = database_sync_to_async(answers_get, thread_sensitive=False)
        unfinished = await database_sync_to_async(_unfinished_ids, thread_sensitive=False)(self.conversation)
        waiting = (self.streaming | unfinished) - self.ended
        while waiting:
            try:
                answers = await read(conversation=self.conversation, message_ids=waiting)
            except Exception as exc:  # the database is away: look again at the next poll
                logger.warning("Could not read the answers to catch up on (%s)", type(exc).__name__)
                answers = None
            if answers is not None:
                found = {str(answer.pk) for answer in answers}
                waiting &= found  # a deleted answer has nothing to end
                for answer in answers:
                    answer_id = str(answer.pk)
                    if answer.status in UNFINISHED or answer_id in self.ended:
                        continue
                    self.ended.add(answer_id)
                    self.streaming.discard(answer_id)
                    for event in turns.end_events(answer):
                        await self.send_json(event)
                waiting -= self.ended
            if waiting:
                await asyncio.sleep(CATCH_UP_POLL_SECONDS)
