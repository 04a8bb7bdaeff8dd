"""Celery tasks of the chat app: turns run in a worker when ``INFERENCE_EXECUTION=celery``."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task

from core.errors import ParleyError

from . import services, turns
from .models import MessageStatus


# At most once (acks_late off, unlike the project's default): a turn whose worker died must not be
# generated again from the start over the text its clients already saw. `manage.py finalize_orphans`
# ends such a message with its partial text and the reason.
@shared_task(name="chat.turn_run", acks_late=False)
def turn_run_task(message_id: str, params: dict, use_cache: bool) -> str | None:
    """Generate the answer ``message_id`` (see :func:`chat.turns.turn_run`); return its final status."""
    try:
        turn = services.turn_load(message_id=message_id, params=params, use_cache=use_cache)
    except ParleyError as exc:  # the model was disabled between the send and this task
        services.message_finalize(message_id=message_id, content="", status=MessageStatus.ERROR, error=exc.detail)
        return MessageStatus.ERROR
    if turn is None:
        return None
    return async_to_sync(turns.turn_run)(turn).status
