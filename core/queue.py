"""Queue Celery tasks from services: after the transaction commits, never failing the caller."""

import logging

from django.db import transaction

logger = logging.getLogger(__name__)


def task_enqueue_on_commit(task, *args) -> None:
    """Queue Celery ``task`` with ``args`` once the current transaction commits (at once outside one).

    The task then sees the rows the transaction wrote. When the broker is down the task is lost and
    a warning logged: the write that asked for it stands (STYLE.md, "Transactions and background work").
    """

    def send() -> None:
        try:
            task.apply_async(args=args, retry=False)
        except Exception as exc:
            logger.warning("Could not queue %s%r (%s: %s)", task.name, args, type(exc).__name__, exc)

    transaction.on_commit(send)
