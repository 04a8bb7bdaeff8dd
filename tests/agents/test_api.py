"""The documents REST API: upload, list, read, delete; owner-only; limits and types."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from agents.models import Document, DocumentStatus

from .conftest import ingested

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


def upload(client, name: str, data: bytes, **extra):
    return client.post("/api/v1/documents/", {"file": SimpleUploadedFile(name, data), **extra}, format="multipart")


def test_upload_stores_a_pending_document_under_a_generated_name(api, user, media_root):
    response = upload(api, "../../etc/Team notes.md", b"# Team\n\nWe meet on Tuesdays.", title="Team")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["title"] == "Team"
    assert body["content_type"] == "text/markdown"
    assert body["filename"] == "Team notes.md"
    document = Document.objects.get(pk=body["id"])
    stored = media_root / document.file.name
    assert stored.read_bytes() == b"# Team\n\nWe meet on Tuesdays."
    assert "Team notes" not in document.file.name and document.file.name.startswith(f"documents/{user.pk}/")

    listed = api.get("/api/v1/documents/").json()
    assert [d["id"] for d in listed["results"]] == [body["id"]]
    assert api.get(f"/api/v1/documents/{body['id']}/").json()["status"] == "pending"


def test_unsupported_and_oversized_files_are_refused(api, settings):
    response = upload(api, "archive.zip", b"PK\x03\x04" + b"\x00" * 64)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert upload(api, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00").status_code == 415

    settings.KB_MAX_UPLOAD_MB = 1
    response = upload(api, "big.txt", b"a" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert upload(api, "empty.txt", b"").json()["error"]["code"] == "empty_file"
    assert not Document.objects.exists()


def test_another_users_documents_are_404_and_never_listed(api, user, other_user, media_root):
    theirs = ingested(owner=other_user, text="Mallory's secret launch codes are 0000.")
    assert api.get(f"/api/v1/documents/{theirs.pk}/").status_code == 404
    assert api.delete(f"/api/v1/documents/{theirs.pk}/").status_code == 404
    assert api.get("/api/v1/documents/").json()["results"] == []
    assert Document.objects.filter(pk=theirs.pk, status=DocumentStatus.READY).exists()
    assert APIClient().get("/api/v1/documents/").status_code == 401


def test_delete_removes_the_document_its_chunks_and_file(api, user, media_root):
    document = ingested(owner=user, text="Short note about llamas.")
    path = media_root / document.file.name
    assert path.exists() and document.chunks.exists()
    assert api.delete(f"/api/v1/documents/{document.pk}/").status_code == 204
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not path.exists()
