"""Celery tasks of the knowledge base. Each takes ids, calls a service, and is idempotent.

(The memory tasks are chat's: they read conversations; see :mod:`chat.tasks`.)

``acks_late``: a task is acknowledged only after it finished, so a worker that dies mid-task leaves
the message to be delivered again (the services make a second run harmless).
"""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import services


# On the `ingestion` queue, with soft/hard time limits (CELERY_TASK_ROUTES and CELERY_TASK_ANNOTATIONS
# in config/settings: settings are not read at import time).
@shared_task(name="agents.document_ingest", bind=True, acks_late=True, reject_on_worker_lost=True)
def document_ingest_task(self, document_id: str) -> str | None:
    """Ingest document ``document_id`` (see :func:`agents.services.document_ingest`); return its status.

    Past ``KB_INGEST_SOFT_TIME_LIMIT`` seconds the document ends ``failed`` with the reason; a task
    still running ``KB_INGEST_HARD_TIME_LIMIT`` seconds in has its worker child killed.
    """
    try:
        document = services.document_ingest(document_id=document_id)
    except SoftTimeLimitExceeded:
        # The limit the message was sent with (the sender's settings) is the one that applied.
        limit = (self.request.timelimit or (None, None))[1] or settings.KB_INGEST_SOFT_TIME_LIMIT
        document = services.document_ingest_fail(
            document_id=document_id,
            reason=f"Ingestion took longer than {limit:g} s and was stopped; split the document into smaller files.",
        )
    return document.status if document is not None else None


@shared_task(name="agents.documents_requeue", acks_late=False)
def documents_requeue_task() -> dict[str, int]:
    """Queue again ingestions lost to a broker outage or a dead worker (:func:`agents.services.documents_requeue`)."""
    return services.documents_requeue()
