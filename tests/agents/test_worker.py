"""Ingestion in real Celery worker processes (``celery -A config worker --pool=solo``) on the test
database and Redis broker, including a worker killed mid-ingestion and the task delivered again."""

import os
import signal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from agents.models import Chunk, Document, DocumentStatus
from agents.services import document_create
from tests.servers import start_worker, stop_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_upload_is_ingested_by_a_real_worker(user, media_root):
    worker = start_worker(media_root, "ingest")
    try:
        client = APIClient()
        client.force_login(user)
        data = b"Parley keeps every answer in PostgreSQL. " * 40
        response = client.post(
            "/api/v1/documents/", {"file": SimpleUploadedFile("notes.txt", data)}, format="multipart"
        )
        assert response.status_code == 201
        document_id = response.json()["id"]
        wait_for(
            lambda: Document.objects.get(pk=document_id).status in (DocumentStatus.READY, DocumentStatus.FAILED),
            timeout=120,
            what="the worker to ingest the upload",
        )
        document = Document.objects.get(pk=document_id)
        assert document.status == DocumentStatus.READY, document.failure_reason
        assert client.get(f"/api/v1/documents/{document_id}/").json()["chunk_count"] == document.chunk_count > 0
    finally:
        stop_worker(worker)


def test_a_worker_killed_mid_ingestion_leaves_no_duplicate_chunks(user, media_root):
    text = "\n\n".join(
        f"Section {i}. " + f"Fact number {i} about the harbour lighthouse and its keeper. " * 12 for i in range(60)
    )
    first = start_worker(media_root, "doomed")
    try:
        document = document_create(owner=user, data=text.encode(), filename="harbour.txt")  # queued on commit
        wait_for(
            lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.PROCESSING,
            timeout=60,
            what="the first worker to start the ingestion",
        )
        os.kill(first.pid, signal.SIGKILL)  # no warm shutdown: the task stays unacknowledged
        first.wait(timeout=10)
    finally:
        stop_worker(first)
    document.refresh_from_db()
    assert document.status == DocumentStatus.PROCESSING and not Chunk.objects.filter(document=document).exists()

    second = start_worker(media_root, "rescuer")
    try:
        # The broker delivers the unacknowledged task again (CELERY_VISIBILITY_TIMEOUT=3 s, checked every 10 s).
        wait_for(
            lambda: Document.objects.get(pk=document.pk).status == DocumentStatus.READY,
            timeout=150,
            what="the redelivered task to finish the ingestion",
        )
    finally:
        stop_worker(second)
    document.refresh_from_db()
    chunks = Chunk.objects.filter(document=document)
    assert document.attempts >= 2  # it really ran again
    assert chunks.count() == document.chunk_count > 1
    assert sorted(chunks.values_list("index", flat=True)) == list(range(document.chunk_count))
