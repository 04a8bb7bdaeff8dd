"""Celery tasks of core: webhook deliveries. Each takes ids, calls a service, and is idempotent.

``acks_late``: a task is acknowledged only after it finished, so a worker that dies mid-task leaves
the message to be delivered again; :func:`core.webhooks.webhook_deliver` makes that second run
harmless (a delivery already sent, or being sent, is not sent again).
"""

from celery import shared_task
from django.conf import settings

from . import webhooks


@shared_task(name="core.webhook_deliver", acks_late=True, reject_on_worker_lost=True)
def webhook_deliver_task(delivery_id: str) -> str | None:
    """Make one attempt of webhook delivery ``delivery_id`` if it is due (:func:`core.webhooks.webhook_deliver`);
    return its status after it, or None when nothing was done (not due, finished, or held by another task)."""
    delivery = webhooks.webhook_deliver(delivery_id=delivery_id)
    return delivery.status if delivery is not None else None


@shared_task(name="core.webhooks_sweep", acks_late=False)
def webhooks_sweep_task() -> dict[str, int]:
    """Queue the webhook deliveries that are due and whose task was lost or never queued
    (:func:`core.webhooks.webhook_deliveries_enqueue_due`), and delete finished ones older than
    ``WEBHOOK_DELIVERY_RETENTION_DAYS``; Celery beat, every ``WEBHOOK_SWEEP_SECONDS``.
    Return ``{"queued": n, "pruned": n}``."""
    return {
        "queued": webhooks.webhook_deliveries_enqueue_due(),
        "pruned": webhooks.webhook_deliveries_prune(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS),
    }
