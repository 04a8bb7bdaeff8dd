"""Celery tasks of the knowledge base. Each takes ids, calls a service, and is idempotent.

(The memory tasks are chat's: they read conversations; see :mod:`chat.tasks`.)

``acks_late``: a task is acknowledged only after it finished, so a worker that dies mid-task leaves
the message to be delivered again (the services make a second run harmless).
"""

from celery import shared_task

from . import services


@shared_task(name="agents.document_ingest", acks_late=True, reject_on_worker_lost=True)
def document_ingest_task(document_id: str) -> str | None:
    """Ingest document ``document_id`` (see :func:`agents.services.document_ingest`); return its status."""
    document = services.document_ingest(document_id=document_id)
    return document.status if document is not None else None
