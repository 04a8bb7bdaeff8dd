"""Celery tasks of the chat app: turns run in a worker when ``INFERENCE_EXECUTION=celery``, and
memory (an answer embedded, a conversation summarised) is stored after a turn. Memory tasks are
``acks_late`` and idempotent: a worker that dies mid-task leaves the message to be delivered again."""

from __future__ import annotations

import logging
import threading

from asgiref.sync import async_to_sync
from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from accounts.quotas import generation_renew
from core.errors import ParleyError
from inference.providers import InferenceError, ModelUnavailable

from . import memory, services
from .models import MessageStatus

logger = logging.getLogger(__name__)


def _taken_key(message_id: str) -> str:
    return f"chat:turn-taken:{message_id}"


def turn_taken(message_id: str) -> bool:
    """Return whether a worker has taken turn ``message_id`` (:func:`turn_run_task`); False when Redis cannot say.

    The web process that queued the turn holds its generation lease only until then: the worker
    holds it while it generates, so a worker that dies lets it lapse and the answer is finalised.
    """
    try:
        return bool(cache.get(_taken_key(message_id)))
    except Exception:  # Redis down: the web process keeps holding the lease, as before
        return False


# At most once (acks_late off, unlike the project's default): a turn whose worker died must not be
# generated again from the start over the text its clients already saw. Its lease lapses and
# orphans_finalize_task ends the message with its partial text and the reason.
@shared_task(name="chat.turn_run", acks_late=False)
def turn_run_task(message_id: str, params: dict, use_cache: bool) -> str | None:
    """Generate the answer ``message_id`` (see :func:`chat.turns.turn_run`); return its final status."""
    from . import turns  # lazily: chat.turns enqueues this task

    try:
        turn = services.turn_load(message_id=message_id, params=params, use_cache=use_cache)
    except ParleyError as exc:  # the model was disabled between the send and this task
        services.turn_abandon(message_id=message_id, error=exc.detail)
        return MessageStatus.ERROR
    if turn is None:
        return None
    try:
        if not cache.add(_taken_key(message_id), 1, timeout=settings.TURN_WAIT_SECONDS):
            # Queued again by its web process after a Redis restart (chat.turns.turn_execute), and
            # the first delivery survived after all: that worker has it.
            logger.info("Turn %s is taken by another worker already", message_id)
            return None
    except Exception as exc:
        logger.warning("Could not record that turn %s was taken (%s); its web process keeps its lease", message_id, exc)
    with _Custody(message_id, user_id=turn.admission.user.pk):
        return async_to_sync(turns.turn_run)(turn).status


class _Custody:
    """A worker's hold on turn ``message_id`` from the moment it takes it until it ends.

    Its generation lease is renewed at once, then with its taken mark every third of
    ``GENERATION_LEASE_SECONDS``. The web process that queued the turn stops renewing the lease once
    the mark is set; the turn renews it itself only once it runs, after its setup (seconds, in a new
    worker child under load), and a lease lapsed in between made a live answer an orphan. A Redis
    restarted empty loses lease and mark: the web process queues the turn again only if no worker has
    set the mark again within ``GENERATION_LEASE_SECONDS`` + ``CACHE_RETRY_AFTER_ERROR``
    (:func:`accounts.quotas.settle_ms`).
    """

    def __init__(self, message_id: str, *, user_id: int):
        self.message_id, self.user_id = message_id, user_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"custody-{message_id}", daemon=True)

    def _run(self) -> None:
        while True:
            generation_renew(user_id=self.user_id, generation_id=self.message_id)  # never raises: Redis down is a no-op
            try:
                cache.set(_taken_key(self.message_id), 1, timeout=settings.TURN_WAIT_SECONDS)
            except Exception:  # noqa: S110 (Redis down: tried again at the next renewal)
                pass
            if self.stopped.wait(settings.GENERATION_LEASE_SECONDS / 3):
                return

    def __enter__(self) -> _Custody:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()


@shared_task(name="chat.orphans_finalize", acks_late=False)
def orphans_finalize_task() -> int:
    """Finalise answers orphaned by a dead process (:func:`chat.services.orphans_finalize_lapsed`); in beat."""
    return services.orphans_finalize_lapsed()


# Memory. The task names are the ones these tasks had in the agents app, so messages queued before
# an upgrade still find them.
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
    remembered = memory.memory_remember(message_id=message_id)
    return remembered.pk if remembered is not None else None


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
    summary = memory.conversation_summarize(conversation_id=conversation_id, pairs=pairs)
    return summary.pk if summary is not None else None


@shared_task(name="chat.import_job_run", acks_late=True)
def import_job_run_task(job_id: str) -> str | None:
    """Import the conversations of import job ``job_id`` (:func:`chat.services.import_job_run`); return its status.

    Idempotent: run again, it resumes after the last conversation written, or does nothing.
    """
    job = services.import_job_run(job_id=job_id)
    return job.status if job is not None else None
