"""Uploads on S3-compatible storage (``STORAGE_S3_BUCKET``: django-storages' S3Storage), against moto's S3
server on loopback: a real S3 protocol peer, not a mock of boto3.

The web side (this process) and the ingestion worker (a real ``celery worker`` process) each have a
``MEDIA_ROOT`` of their own that stays empty: the bucket is all they share, as on two machines.
"""

import boto3
import pytest
from botocore.exceptions import ClientError
from django.core.files.uploadedfile import SimpleUploadedFile
from moto.server import ThreadedMotoServer
from rest_framework.test import APIClient

from agents.models import Document, DocumentStatus
from agents.selectors import chunk_search
from agents.services import document_create, document_ingest
from config.settings.base import s3_storage
from tests.servers import free_port, start_worker, stop_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "parley-uploads"


@pytest.fixture
def s3(settings, monkeypatch):
    """An S3 server with an empty bucket, as this process's default storage; yield (boto3 client, worker env).

    The storage settings are built by config.settings.base.s3_storage from the same variables a
    worker process reads, so both sides are configured by the code production runs.
    """
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    environment = {
        "STORAGE_S3_BUCKET": BUCKET,
        "STORAGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "STORAGE_S3_REGION": "us-east-1",
        "STORAGE_S3_ACCESS_KEY_ID": "parley-test",
        "STORAGE_S3_SECRET_ACCESS_KEY": "parley-test-secret",
        "STORAGE_S3_ADDRESSING_STYLE": "path",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    client = boto3.client(
        "s3",
        endpoint_url=environment["STORAGE_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="parley-test",
        aws_secret_access_key="parley-test-secret",
    )
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage(BUCKET)}
    try:
        yield client, environment
    finally:
        server.stop()


def keys(client) -> list[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_an_upload_is_stored_in_the_bucket_ingested_by_a_worker_without_shared_disk_and_deleted(
    s3, user, media_root, tmp_path
):
    client, environment = s3
    worker_media = tmp_path / "worker-media"
    worker = start_worker(worker_media, "s3ingest", env=environment)
    try:
        api = APIClient()
        api.force_login(user)
        data = b"The lighthouse keeper of Parley harbour winds the lamp at dusk.\n\n" * 30
        response = api.post("/api/v1/documents/", {"file": SimpleUploadedFile("harbour.txt", data)}, format="multipart")
        assert response.status_code == 201, response.content
        document = Document.objects.get(pk=response.json()["id"])

        # In the bucket, private, under its generated name; nothing on this side's disk.
        assert keys(client) == [document.file.name]
        assert client.get_object(Bucket=BUCKET, Key=document.file.name)["Body"].read() == data
        grants = client.get_object_acl(Bucket=BUCKET, Key=document.file.name)["Grants"]
        assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]  # the owner only
        assert not any(media_root.rglob("*"))

        wait_for(
            lambda: Document.objects.get(pk=document.pk).status in (DocumentStatus.READY, DocumentStatus.FAILED),
            timeout=120,
            what="the worker to ingest the upload from the bucket",
        )
        document.refresh_from_db()
        assert document.status == DocumentStatus.READY, document.failure_reason
        assert document.chunk_count > 0
        assert not any(worker_media.rglob("*"))  # the worker read the bucket, not a disk
    finally:
        stop_worker(worker)

    hits = chunk_search(user_id=user.pk, query="Who winds the lamp of the lighthouse?")
    assert hits and hits[0].document_id == str(document.pk) and "lighthouse keeper" in hits[0].content

    response = api.delete(f"/api/v1/documents/{document.pk}/")
    assert response.status_code == 204
    assert keys(client) == []


def test_a_document_whose_object_is_gone_fails_with_the_reason(s3, user):
    client, _ = s3
    document = document_create(owner=user, data=b"Soon gone. " * 20, filename="gone.txt", ingest=False)
    client.delete_object(Bucket=BUCKET, Key=document.file.name)

    document = document_ingest(document_id=document.pk)

    assert document.status == DocumentStatus.FAILED
    assert document.failure_reason == "The stored file is missing; upload it again."
    with pytest.raises(ClientError):
        client.head_object(Bucket=BUCKET, Key=document.file.name)
