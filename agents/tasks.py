"""Celery tasks of the knowledge base and memory. Each takes ids, calls a service, and is idempotent.

``acks_late``: a task is acknowledged only after it finished, so a worker that dies mid-task leaves
the message to be delivered again (the services make a second run harmless).
"""

from celery import shared_task

from inference.providers import InferenceError, ModelUnavailable

from . import services


@shared_task(name="agents.document_ingest", acks_late=True, reject_on_worker_lost=True)
def document_ingest_task(document_id: str) -> str | None:
    """Ingest document ``document_id`` (see :func:`agents.services.document_ingest`); return its status."""
    document = services.document_ingest(document_id=document_id)
    return document.status if document is not None else None


@shared_task(
    name="agents.memory_remember",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(ModelUnavailable,),
    retry_backoff=True,
    max_retries=3,
)
def memory_remember_task(message_id: str) -> int | None:
    """Embed answer ``message_id`` and its question as memory; return the memory's id."""
    memory = services.memory_remember(message_id=message_id)
    return memory.pk if memory is not None else None


@shared_task(
    name="agents.conversation_summarize",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(InferenceError,),
    retry_backoff=True,
    max_retries=3,
)
def conversation_summarize_task(conversation_id: str, pairs: int) -> int | None:
    """Summarise conversation ``conversation_id``'s first ``pairs`` pairs as memory; return the memory's id."""
    memory = services.conversation_summarize(conversation_id=conversation_id, pairs=pairs)
    return memory.pk if memory is not None else None
