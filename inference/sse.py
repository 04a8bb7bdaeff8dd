"""Server-sent events: the one framer every stream uses (chat turns' SSE and ``/v1`` chat completions).

Wire format: https://html.spec.whatwg.org/multipage/server-sent-events.html — ``event: <name>`` (optional),
``data: <payload>``, then a blank line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse

MEDIA_TYPE = "text/event-stream"


def sse_frame(data: dict | str, *, event: str | None = None) -> bytes:
    """Return one event: ``data`` as compact JSON (a str as it is, e.g. ``[DONE]``), named ``event`` when given."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def event_stream_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """Return ``events`` as a ``text/event-stream`` response that proxies pass on unbuffered."""
    response = StreamingHttpResponse(events, content_type=MEDIA_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
    return response
