"""Ingestion with budgets (issue 20, item 8): text and passages per document, time, uploads per day,
cancellation on delete, its own queue; and ``/v1/embeddings`` admitted against the token quota."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.models import Chunk, Document, DocumentStatus
from agents.services import document_create, document_delete, document_ingest
from agents.tasks import document_ingest_task
from config.celery import app as celery_app
from tests.accounts.test_quotas import hold_generations, use_tokens
from tests.servers import start_worker, stop_worker

pytestmark = pytest.mark.django_db

FACT = "The harbour lighthouse was built in 1871 and its keeper rowed out every evening. "


def upload(client, name: str, data: bytes):
    return client.post("/api/v1/documents/", {"file": SimpleUploadedFile(name, data)}, format="multipart")


def test_a_document_over_the_character_budget_fails_with_the_reason(user, settings):
    settings.KB_MAX_DOCUMENT_CHARS = 10_000
    document = document_create(owner=user, data=(FACT * 200).encode(), filename="big.txt", ingest=False)
    document = document_ingest(document_id=document.pk)
    assert document.status == DocumentStatus.FAILED
    assert "limit per document is 10,000 characters" in document.failure_reason
    assert not Chunk.objects.filter(document=document).exists()


def test_a_huge_html_source_is_refused_before_it_is_parsed(user, settings):
    settings.KB_MAX_DOCUMENT_CHARS = 10_000
    html = b"<html><body>" + b"<div><span>x</span></div>" * 4_000 + b"</body></html>"  # ~100 KB, 4,000 chars of text
    document = document_create(owner=user, data=html, filename="page.html", ingest=False)
    document = document_ingest(document_id=document.pk)
    assert document.status == DocumentStatus.FAILED
    assert "HTML source is over 40,000 characters" in document.failure_reason


def test_a_document_over_the_passage_budget_fails_before_anything_is_embedded(user, settings):
    settings.KB_MAX_DOCUMENT_CHUNKS = 3
    document = document_create(owner=user, data=(FACT * 200).encode(), filename="long.txt", ingest=False)
    progress = []
    document = document_ingest(document_id=document.pk, on_progress=lambda done, total: progress.append(done))
    assert document.status == DocumentStatus.FAILED
    assert "the limit per document is 3" in document.failure_reason
    assert progress == []


def test_deleting_a_document_stops_its_ingestion_at_the_next_batch(user):
    document = document_create(owner=user, data=(FACT * 400).encode(), filename="long.txt", ingest=False)
    batches = []

    def delete_after_first_batch(done: int, total: int) -> None:
        batches.append(done)
        if len(batches) == 1:
            document_delete(document=Document.objects.get(pk=document.pk))

    assert document_ingest(document_id=document.pk, on_progress=delete_after_first_batch) is None
    assert batches == [32]  # of the ~8 batches, only the one running when it was deleted was embedded
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(document_id=document.pk).exists()


def test_uploads_per_day_are_limited_and_deleting_does_not_give_them_back(user, settings):
    settings.KB_DAILY_DOCUMENTS = 2
    client = APIClient()
    client.force_login(user)
    first = upload(client, "a.txt", FACT.encode())
    assert first.status_code == 201
    assert upload(client, "b.txt", FACT.encode()).status_code == 201
    assert client.delete(f"/api/v1/documents/{first.json()['id']}/").status_code == 204
    refused = upload(client, "c.txt", FACT.encode())
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "ingestion_quota_exceeded"
    assert int(refused["Retry-After"]) > 0
    assert Document.objects.filter(owner=user).count() == 1


def test_ingestion_has_its_own_queue():
    route = celery_app.amqp.router.route({}, document_ingest_task.name)
    assert route["queue"].name == "ingestion"
    assert celery_app.amqp.router.route({}, "agents.memory_remember")["queue"].name == "celery"


def test_ingestion_runs_under_the_configured_time_limits(settings):
    assert document_ingest_task.soft_time_limit == settings.KB_INGEST_SOFT_TIME_LIMIT
    assert document_ingest_task.time_limit == settings.KB_INGEST_HARD_TIME_LIMIT > settings.KB_INGEST_SOFT_TIME_LIMIT


@pytest.mark.django_db(transaction=True)
def test_an_ingestion_past_its_soft_time_limit_ends_failed_in_a_real_worker(user, media_root):
    # A prefork worker (time limits need one); the task is sent with a limit of 1 s: loading the
    # embedding model alone takes longer.
    worker = start_worker(media_root, "limited", pool="prefork")
    try:
        document = document_create(owner=user, data=(FACT * 50).encode(), filename="slow.txt", ingest=False)
        document_ingest_task.apply_async(args=[str(document.pk)], soft_time_limit=1, time_limit=60)
        deadline = time.monotonic() + 90
        while Document.objects.get(pk=document.pk).status in (DocumentStatus.PENDING, DocumentStatus.PROCESSING):
            assert time.monotonic() < deadline, "the ingestion was not stopped"
            time.sleep(0.2)
    finally:
        stop_worker(worker)
    document.refresh_from_db()
    assert document.status == DocumentStatus.FAILED
    assert "took longer than 1 s" in document.failure_reason


@pytest.mark.django_db(transaction=True)  # /v1 authenticates in a pool thread: committed rows only
def test_embeddings_must_fit_in_the_quota_and_take_a_generation_slot(user, settings):
    settings.QUOTA_DAILY_TOKENS = 1_000
    use_tokens(user, 900)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(user=user, name='e')[1]}")
    # 2,000 characters: ~500 tokens, more than the 100 left (it used to be admitted and counted after).
    refused = client.post("/v1/embeddings", {"input": ["word " * 400]}, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "needs about 500 tokens, more than the 100 left" in refused.json()["error"]["message"]
    assert client.post("/v1/embeddings", {"input": ["a red apple"]}, format="json").status_code == 200

    settings.GENERATION_CONCURRENCY = 1
    hold_generations(user, 1)
    busy = client.post("/v1/embeddings", {"input": ["a red apple"]}, format="json")
    assert busy.status_code == 429
    assert busy.json()["error"]["code"] == "too_many_generations"
