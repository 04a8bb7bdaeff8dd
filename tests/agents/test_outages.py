"""Ingestion lost around outages (issue 20, item 10): an upload while the broker is down, and a worker
killed mid-ingestion, both end ``ready`` within minutes, with a real broker and real workers."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import Document, DocumentStatus
from agents.services import document_create, documents_requeue
from config.celery import app as celery_app
from tests.core.test_health import closed_port
from tests.servers import start_worker, stop_worker

from .test_worker import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "\n\n".join(
    f"Section {i}. " + f"Fact number {i} about the harbour lighthouse and its keeper. " * 12 for i in range(60)
)


def _reset_broker_connections() -> None:
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def broker_down():
    """Point this process's Celery app at a port nothing listens on: every publish is refused."""
    saved = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis://127.0.0.1:{closed_port()}/0"
    _reset_broker_connections()

    def restore() -> None:
        celery_app.conf.broker_url = saved
        _reset_broker_connections()

    yield restore
    restore()


def test_an_upload_while_the_broker_is_down_is_ingested_once_it_is_back(user, media_root, broker_down):
    client = APIClient()
    client.force_login(user)
    started = time.monotonic()
    upload = SimpleUploadedFile("notes.txt", b"The keeper rowed out. " * 40)
    response = client.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 201
    assert time.monotonic() - started < 10  # the refused publish does not hold the upload
    document = Document.objects.get(pk=response.json()["id"])
    assert document.status == DocumentStatus.PENDING and document.enqueued_at is None  # the intent, recorded

    assert documents_requeue(grace=timedelta(0)) == {"queued": 0, "failed": 0}  # still down: nothing lost
    broker_down()  # the broker is back
    assert documents_requeue(grace=timedelta(0)) == {"queued": 1, "failed": 0}
    document.refresh_from_db()
    assert document.enqueued_at is not None
    assert documents_requeue(grace=timedelta(0)) == {"queued": 0, "failed": 0}  # queued once

    worker = start_worker(media_root, "after-outage")
    try:
        wait_for(
            lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.READY,
            timeout=120,
            what="the requeued ingestion",
        )
    finally:
        stop_worker(worker)


def test_a_killed_workers_ingestion_is_queued_again_within_minutes(user, media_root, settings):
    settings.KB_INGEST_STALL_SECONDS = 3
    # The broker alone would deliver the task again only after an hour (the default visibility timeout).
    env = {"CELERY_VISIBILITY_TIMEOUT": "3600", "KB_INGEST_HEARTBEAT_SECONDS": "0.5"}
    first = start_worker(media_root, "doomed", env=env)
    try:
        document = document_create(owner=user, data=TEXT.encode(), filename="harbour.txt")
        wait_for(
            lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.PROCESSING,
            timeout=60,
            what="the first worker to start the ingestion",
        )
        time.sleep(1)
        assert documents_requeue() == {"queued": 0, "failed": 0}  # alive: its heartbeat is fresh
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
    finally:
        stop_worker(first)

    counts = wait_for(
        lambda: (counts := documents_requeue())["queued"] and counts,
        timeout=settings.KB_INGEST_STALL_SECONDS + 5,
        what="the sweep to see the ingestion stalled",
    )
    assert counts == {"queued": 1, "failed": 0}
    assert time.monotonic() - killed_at < settings.KB_INGEST_STALL_SECONDS + 5
    second = start_worker(media_root, "rescuer", env=env)
    try:
        wait_for(
            lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.READY,
            timeout=150,
            what="the requeued ingestion to finish",
        )
    finally:
        stop_worker(second)
    assert Document.objects.get(pk=document.pk).attempts == 2


def test_a_document_that_keeps_killing_its_worker_ends_failed(user, settings):
    document = document_create(owner=user, data=TEXT.encode(), filename="harbour.txt", ingest=False)
    long_ago = timezone.now() - timedelta(seconds=settings.KB_INGEST_STALL_SECONDS + 1)
    Document.objects.filter(pk=document.pk).update(
        status=DocumentStatus.PROCESSING, attempts=settings.KB_INGEST_MAX_ATTEMPTS, heartbeat_at=long_ago
    )
    assert documents_requeue() == {"queued": 0, "failed": 1}
    document.refresh_from_db()
    assert document.status == DocumentStatus.FAILED
    assert "stopped 3 times" in document.failure_reason
