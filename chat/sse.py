"""Server-sent events for REST sends: a turn's WebSocket events, as ``text/event-stream``.

``POST .../messages/`` (and ``.../regenerate/``) with ``Accept: text/event-stream`` answers with the
events of the WebSocket protocol (DESIGN.md), one SSE event each: ``event: <type>`` and
``data: <the same JSON as the WebSocket frame>``. The stream relays the conversation's channel-layer
group, which is what every process of a turn sends to, so it works wherever the turn runs. It
ends after this answer's ``generation.completed``.

Under Daphne (ASGI) Django iterates the async generator on the event loop, so a stream costs no
thread while it waits. A client that goes away stops the stream, not the generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

from channels.layers import get_channel_layer
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from core.schema import AutoSchema
from inference.sse import MEDIA_TYPE, sse_frame

from . import turns
from .services import Turn

logger = logging.getLogger(__name__)

# A comment line every this many seconds of silence keeps proxies and browsers from closing an idle
# stream (nginx's proxy_read_timeout defaults to 60 s; the HTML standard suggests ~15 s).
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": ping\n\n"
# Once the turn has returned, its generation.completed is already on the group: wait this long
# for it to arrive before answering from the turn's own result instead (Redis failed midway).
COMPLETED_GRACE_SECONDS = 2.0


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept ``Accept: text/event-stream``.

    Views stream the events themselves (:func:`event_stream_response`); anything else they answer,
    such as errors, is rendered as JSON (see :class:`EventStreamMixin`).
    """

    media_type = MEDIA_TYPE
    format = "sse"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return json.dumps(data).encode()


class EventStreamMixin:
    """For views that stream SSE when asked: JSON for every ordinary response, errors included."""

    def wants_event_stream(self, request) -> bool:
        """Return whether content negotiation picked the event stream (``Accept: text/event-stream``)."""
        return isinstance(getattr(request, "accepted_renderer", None), EventStreamRenderer)

    def finalize_response(self, request, response, *args, **kwargs):
        if isinstance(response, Response) and self.wants_event_stream(request):
            # An error (or any non-stream answer) to an SSE request: the one JSON error shape, as
            # OpenAI's API does, rather than a malformed event stream.
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)


class EventStreamAutoSchema(AutoSchema):
    """The project's schema for views with :class:`EventStreamRenderer`: its media type is documented
    only where an operation says so (``(200, "text/event-stream")``), not for every JSON response."""

    def map_renderers(self, attribute: str) -> list:
        renderers = [r for r in self.view.get_renderers() if not isinstance(r, EventStreamRenderer)]
        return list(dict.fromkeys(getattr(r, attribute) for r in renderers))


def event_stream_response_schema(*, description: str, events: list[dict]) -> OpenApiResponse:
    """Return the OpenAPI response of an event stream: a string, with ``events`` as its example."""
    example = "".join(sse_event(event).decode() for event in events)
    return OpenApiResponse(
        OpenApiTypes.STR,
        description=description,
        examples=[OpenApiExample("events", value=example, status_codes=[200], media_type=MEDIA_TYPE)],
    )


def sse_event(event: dict) -> bytes:
    """Return one protocol event as an SSE event: ``event: <type>``, ``data: <compact JSON>``."""
    return sse_frame(event, event=event["type"])


def _belongs(event: dict, message_id: str) -> bool:
    """Return whether a group event is part of the generation of answer ``message_id``.

    ``node`` events carry no id: a conversation runs one generation at a time, so they are ours.
    ``message.created`` is not relayed from the group: the stream sends its own first.
    """
    kind = event.get("type")
    if kind == "generation.completed":
        return str((event.get("message") or {}).get("id")) == message_id
    if kind == "node":
        return True
    return kind != "message.created" and event.get("message_id") == message_id


def _final_events(task: asyncio.Task) -> list[dict]:
    """Return the closing events of a finished turn from its result, for when the group cannot deliver them."""
    exc = task.exception()
    if exc is not None:
        logger.error("Turn failed outside its own error handling", exc_info=exc)
        return [{"type": "error", "code": "server_error", "detail": "The answer could not be generated."}]
    return turns.end_events(task.result())


async def turn_events(turn: Turn, *, announce: dict | None = None) -> AsyncIterator[bytes]:
    """Run ``turn`` and yield its events as SSE bytes, ending after its ``generation.completed``.

    ``announce`` (the ``message.created`` event of a send) goes first, to this stream and to the
    conversation's other clients. The stream joins the conversation's group before the turn starts,
    so it misses none of its events. The turn runs as a task of its own (:func:`turns.turn_start`):
    a client that disconnects stops the stream, not the generation. When the channel layer (Redis)
    is down, the stream still ends with the turn's ``error`` (if any) and ``generation.completed``,
    built from its result. A ``: ping`` comment goes out after ``KEEPALIVE_SECONDS`` of silence.
    """
    layer = get_channel_layer()
    conversation_id = turn.assistant_message.conversation_id
    message_id = str(turn.assistant_message.pk)
    group = turns.conversation_group(conversation_id)
    # A channel of its own, not layer.new_channel() (see turns.turn_run): cancelling the pending
    # receive when the stream ends must not swallow an event meant for a WebSocket of this process.
    channel = f"sse.{uuid.uuid4().hex}"
    receiving: asyncio.Future | None = None
    subscribed = False
    try:
        try:
            await layer.group_add(group, channel)
            subscribed = True
            receiving = asyncio.ensure_future(layer.receive(channel))
        except Exception as exc:
            logger.warning("Channel layer unavailable (%s); SSE answers from the turn's result", type(exc).__name__)
        if announce is not None:
            await turns.send_event(conversation_id, announce)
        task = turns.turn_start(turn)
        if announce is not None:
            yield sse_event(announce)

        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        grace_until: float | None = None
        while True:
            if task.done() and grace_until is None:
                grace_until = loop.time() + (COMPLETED_GRACE_SECONDS if receiving is not None else 0.0)
            if grace_until is not None and loop.time() >= grace_until:
                for event in _final_events(task):
                    yield sse_event(event)
                return
            # A receive that already finished (during the last yield) makes asyncio.wait return at once.
            waiters = [w for w in (receiving, None if task.done() else task) if w is not None]
            wake_at = last_sent + KEEPALIVE_SECONDS
            if grace_until is not None:
                wake_at = min(wake_at, grace_until)
            done = set()
            if waiters:
                done, _ = await asyncio.wait(
                    waiters, timeout=max(0.0, wake_at - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
            if receiving is not None and receiving in done:
                try:
                    message = receiving.result()
                except Exception as exc:  # Redis went away midway: finish from the turn's result
                    logger.warning("Channel layer failed during an SSE stream (%s)", type(exc).__name__)
                    receiving = None
                    continue
                receiving = asyncio.ensure_future(layer.receive(channel))
                event = message.get("event") or {}
                if _belongs(event, message_id):
                    yield sse_event(event)
                    last_sent = loop.time()
                    if event["type"] == "generation.completed":
                        return
            elif loop.time() - last_sent >= KEEPALIVE_SECONDS:
                yield KEEPALIVE
                last_sent = loop.time()
    finally:
        if receiving is not None:
            receiving.cancel()
        if subscribed:
            try:
                await layer.group_discard(group, channel)
            except Exception:  # noqa: S110 (Redis down: the group entry expires on its own)
                pass
