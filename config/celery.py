"""The Celery application: `celery -A config worker`. Settings come from Django's, `CELERY_`-prefixed."""

import os

from celery import Celery, signals

from core.log import request_id_from, request_id_get, request_id_var
from core.prometheus import celery_task_observe, mark_process_dead

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("parley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The request id of the code that enqueues a task rides in the task's message headers.
REQUEST_ID_HEADER = "parley_request_id"


@signals.setup_logging.connect
def _setup_logging(**kwargs) -> None:
    """Log through Django's LOGGING (JSON, request ids, redaction) instead of Celery's own setup."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.before_task_publish.connect
def _publish(sender=None, headers=None, **kwargs) -> None:
    request_id = request_id_get()
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)
    celery_task_observe(task=str(sender), state="sent")


@signals.task_prerun.connect
def _prerun(task=None, **kwargs) -> None:
    # A task enqueued outside any request gets an id of its own, so its log lines still group.
    # A worker puts custom message headers on the request; eager runs (apply) keep them in .headers.
    given = task.request.get(REQUEST_ID_HEADER) or (task.request.get("headers") or {}).get(REQUEST_ID_HEADER)
    request_id_var.set(request_id_from(given))
    celery_task_observe(task=task.name, state="started")


@signals.task_postrun.connect
def _postrun(**kwargs) -> None:
    request_id_var.set(None)


@signals.task_success.connect
def _success(sender=None, **kwargs) -> None:
    celery_task_observe(task=sender.name, state="success")


@signals.task_failure.connect
def _failure(sender=None, **kwargs) -> None:
    celery_task_observe(task=sender.name, state="failure")


@signals.task_retry.connect
def _retry(sender=None, **kwargs) -> None:
    celery_task_observe(task=sender.name, state="retry")


@signals.task_revoked.connect
def _revoked(sender=None, request=None, **kwargs) -> None:
    celery_task_observe(task=getattr(sender, "name", None) or str(getattr(request, "task", "unknown")), state="revoked")


@signals.worker_process_shutdown.connect
def _process_shutdown(pid=None, **kwargs) -> None:
    mark_process_dead(pid or os.getpid())
