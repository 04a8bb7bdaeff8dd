"""``manage.py kb``, the documents admin's retry action, and ingestion progress events."""

import asyncio
import json
from io import StringIO

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.management import call_command
from django.test import Client

from agents.models import Document, DocumentStatus
from agents.selectors import chunk_search
from agents.services import document_create, document_ingest, documents_group
from config.asgi import application
from conftest import ws_headers

from .conftest import make_pdf

pytestmark = pytest.mark.django_db(transaction=True)


def test_kb_import_reads_folders_and_jsonl_then_reports_stats_and_reembeds(user, tmp_path):
    source = tmp_path / "kb"
    (source / "sub").mkdir(parents=True)
    (source / "alpha.md").write_text("# Alpha\n\nThe alpha project ships on Fridays.")
    (source / "sub" / "qa.jsonl").write_text(
        json.dumps({"question": "Who wrote Hamlet?", "answer": "William Shakespeare."})
        + "\n"
        + json.dumps({"question": "What is the boiling point of water?", "answer": "100 degrees Celsius at sea level."})
        + "\n"
    )
    (source / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    (source / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # skipped: not a supported type
    out = StringIO()
    call_command("kb", "import", str(source), "--user", user.username, stdout=out)
    assert "Imported 3 document(s) for alice; 1 failed." in out.getvalue()
    qa = Document.objects.get(filename="qa.jsonl")
    assert qa.status == DocumentStatus.READY and qa.chunk_count == 2
    assert Document.objects.get(filename="broken.pdf").status == DocumentStatus.FAILED

    top = chunk_search(user_id=user.pk, query="Who is the author of Hamlet?", top_k=1)[0]
    assert top.document_id == str(qa.pk) and "Shakespeare" in top.content

    out = StringIO()
    call_command("kb", "stats", "--json", stdout=out)
    stats = json.loads(out.getvalue())
    assert stats["documents"] == {"pending": 0, "processing": 0, "ready": 2, "failed": 1}
    assert stats["chunks"] == 3

    out = StringIO()
    call_command("kb", "reembed", stdout=out)
    assert "Re-embedded 3 chunks and 0 memories." in out.getvalue()
    assert chunk_search(user_id=user.pk, query="Who is the author of Hamlet?", top_k=1)[0].chunk_id == top.chunk_id


def test_the_admin_retries_a_failed_ingestion_and_logs_it(user, other_user):
    operator = type(user).objects.create_superuser("root", password="correct horse battery")
    document = document_create(owner=other_user, data=make_pdf("Second try works."), filename="doc.pdf", ingest=False)
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.FAILED, failure_reason="worker lost")
    client = Client()
    client.force_login(operator)
    page = client.get("/admin/agents/document/")
    assert page.status_code == 200 and b"failed" in page.content
    assert client.get(f"/admin/agents/document/{document.pk}/change/").status_code == 200
    response = client.post(
        "/admin/agents/document/", {"action": "retry_ingestion", "_selected_action": [str(document.pk)]}
    )
    assert response.status_code == 302
    document.refresh_from_db()
    assert (document.status, document.failure_reason) == (DocumentStatus.PENDING, "")
    entry = LogEntry.objects.get(object_id=str(document.pk))
    assert entry.action_flag == CHANGE and "Retried ingestion" in entry.get_change_message()
    # What the queued task then does:
    assert document_ingest(document_id=document.pk).status == DocumentStatus.READY


def test_ingestion_reports_progress_to_the_owners_group(user):
    document = document_create(owner=user, data=("Lighthouse facts. " * 400).encode(), filename="l.txt", ingest=False)

    # One event loop for the listener throughout, as a socket's: a Pub/Sub subscription lives with its loop.
    async def ingest_while_listening():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(documents_group(user.pk), channel)
        await sync_to_async(document_ingest)(document_id=document.pk)
        events = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=1)
            except TimeoutError:
                return events
            events.append(message["event"])

    events = async_to_sync(ingest_while_listening)()
    assert [e["stage"] for e in events][0] == "extract"
    assert events[-1] == {**events[-1], "stage": "done", "status": "ready", "document_id": str(document.pk)}
    embeds = [e for e in events if e["stage"] == "embed"]
    assert embeds and embeds[-1]["done"] == embeds[-1]["total"] == events[-1]["chunk_count"]


async def test_the_documents_socket_relays_only_the_users_own_progress(user, other_user):
    anonymous = WebsocketCommunicator(application, "/ws/documents/", headers=await ws_headers(None))
    connected, code = await anonymous.connect(timeout=10)
    assert not connected and code == 4401

    socket = WebsocketCommunicator(application, "/ws/documents/", headers=await ws_headers(user))
    assert (await socket.connect(timeout=10))[0]
    theirs = await database_sync_to_async(document_create)(
        owner=other_user, data=b"Not yours.", filename="x.txt", ingest=False
    )
    mine = await database_sync_to_async(document_create)(owner=user, data=b"Yours.", filename="y.txt", ingest=False)
    await database_sync_to_async(document_ingest)(document_id=theirs.pk)
    await database_sync_to_async(document_ingest)(document_id=mine.pk)
    events = []
    while not events or events[-1]["stage"] != "done":
        events.append(await socket.receive_json_from(timeout=30))
    await socket.disconnect()
    assert {e["document_id"] for e in events} == {str(mine.pk)}
    assert events[-1]["status"] == "ready" and events[-1]["chunk_count"] == 1
