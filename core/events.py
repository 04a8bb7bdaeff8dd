"""Domain events: one call where something happened, any number of listeners elsewhere.

The service layer of any app emits an event with :func:`event_emit` (``document.ready``,
``budget.threshold``, ``feedback.created``...); listeners (webhook deliveries, admin notices) connect
to :data:`event_emitted` without the emitting app importing them, so apps keep depending one way.

An event is ``{"id": "evt_<32 hex>", "type": str, "timestamp": ISO 8601 UTC, "data": dict}``; the
``data`` must be JSON-serialisable and never holds a secret (an API key's prefix, never the key).
Listeners run after the current transaction commits (immediately outside one), so a rolled-back
change never announces itself; a failing listener is logged and never fails the emitting request.
"""

from __future__ import annotations

import logging
import uuid

from django.db import connection, transaction
from django.dispatch import Signal
from django.utils import timezone

logger = logging.getLogger(__name__)

# Sent with ``event``: the dict described above. Connect with ``event_emitted.connect(receiver)``.
event_emitted = Signal()


def event_emit(event_type: str, data: dict) -> dict:
    """Announce ``event_type`` (``"<noun>.<verb>"``) with ``data`` once the transaction commits; return the event."""
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": event_type,
        "timestamp": timezone.now().isoformat(),
        "data": data,
    }

    def send() -> None:
        for receiver, error in event_emitted.send_robust(sender=event_type, event=event):
            if isinstance(error, Exception):
                logger.error(
                    "Listener %s failed for event %s",
                    getattr(receiver, "__qualname__", receiver),
                    event_type,
                    exc_info=error,
                )

    opened_here = connection.connection is None  # on_commit() opens one to see the transaction state
    transaction.on_commit(send, robust=True)
    # Emitters may run in threads Django does not manage (asyncio.to_thread in the generation
    # pipeline): a connection opened for this call (and its listeners) is closed again, never left
    # holding a pool slot. An open transaction always has its connection: opened_here is then False.
    if opened_here and not connection.in_atomic_block:
        connection.close()
    return event
