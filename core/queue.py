"""Queue Celery tasks from services: after the transaction commits, never failing the caller."""

import logging
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger(__name__)


def task_enqueue(task, *args) -> bool:
    """Queue Celery ``task`` with ``args`` now; return whether the broker took it (never raises).

    When the broker is down a warning is logged and False returned: the caller decides whether the
    work is recorded elsewhere to be queued again.
    """
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:
        logger.warning("Could not queue %s%r (%s: %s)", task.name, args, type(exc).__name__, exc)
        return False
    return True


def task_enqueue_on_commit(task, *args, on_sent: Callable[[], None] | None = None) -> None:
    """Queue Celery ``task`` with ``args`` once the current transaction commits (at once outside one).

    The task then sees the rows the transaction wrote. ``on_sent`` is called once the broker took
    the task. When the broker is down the task is lost and a warning logged: the write that asked for
    it stands (STYLE.md, "Transactions and background work"); work that must not be lost records its
    intent in the database and is queued again from there (e.g. ``agents.services.documents_requeue``).
    """

    def send() -> None:
        if task_enqueue(task, *args) and on_sent is not None:
            on_sent()

    transaction.on_commit(send)
