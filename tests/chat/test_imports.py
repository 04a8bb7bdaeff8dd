"""Import and export of conversations: ChatGPT's export (its message tree's active branch), Parley's own
zip, the Celery job and its report, size and message limits, owner scoping, ``manage.py chats``."""

import io
import json
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from chat.models import Conversation, ImportJob, Message, MessageStatus, Role
from chat.services import conversation_create, import_job_create, import_job_run
from conftest import make_user
from tests.factories import message_add

pytestmark = pytest.mark.django_db

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "chatgpt_conversations.json"
T = 1717000000.0  # the fixture's base create_time


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(client: APIClient, data: bytes, name: str = "conversations.json"):
    return client.post("/api/v1/imports/", {"file": _file(data, name)}, format="multipart")


def import_via_api(user, data: bytes, django_capture_on_commit_callbacks, name: str = "conversations.json") -> dict:
    """Upload ``data`` as ``user`` with the worker running inline; return the finished job as the API shows it."""
    client = api(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(client, data, name)
    assert response.status_code == 202, response.content
    job = client.get(f"/api/v1/imports/{response.json()['id']}/")
    assert job.status_code == 200
    return job.json()


def transcript(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages.order_by("created_at")]


def test_chatgpt_export_imports_the_active_branch_and_reports_each_conversation(
    user, eager_celery, django_capture_on_commit_callbacks
):
    job = import_via_api(user, FIXTURE.read_bytes(), django_capture_on_commit_callbacks)

    assert job["status"] == "done"
    assert job["source"] == "chatgpt"
    assert (job["total"], job["processed"], job["imported"], job["skipped"]) == (4, 4, 3, 1)
    report = {entry["title"]: entry for entry in job["report"]}
    capitals = Conversation.objects.get(pk=report["Capitals"]["conversation"], owner=user)
    # current_node picks the edited question's branch; the hidden system node and the browsing tool
    # node are left out; the abandoned branch ("France") is not imported.
    assert transcript(capitals) == [
        ("user", "What is the capital of Italy?"),
        ("assistant", "The capital of Italy is Rome."),
        ("user", "And how many people live there?"),
        ("assistant", "About 2.8 million people live in Rome."),
    ]
    assert [m.created_at for m in capitals.messages.order_by("created_at")] == [
        datetime.fromtimestamp(T + s, tz=UTC) for s in (20, 22, 30, 33)
    ]
    assert capitals.created_at == datetime.fromtimestamp(T, tz=UTC)
    assert capitals.metadata["imported_from"] == "chatgpt"
    assert capitals.messages.filter(role=Role.ASSISTANT).first().model_slug == "gpt-4o"
    assert "left out" in report["Capitals"]["reason"]

    picture = Conversation.objects.get(pk=report["A picture"]["conversation"])
    # The system message and the image part are left out; the text of the multimodal message stays.
    assert transcript(picture) == [
        ("user", "What is in this picture?"),
        ("assistant", "A red bicycle leaning on a wall."),
    ]

    assert report["Empty chat"]["status"] == "skipped"
    assert report["Empty chat"]["conversation"] is None
    assert "No text messages" in report["Empty chat"]["reason"]
    assert Conversation.objects.filter(owner=user).count() == 3
    assert AuditEvent.objects.filter(action="conversation.import").count() == 1
    assert ImportJob.objects.get(pk=job["id"]).data is None  # the upload is not kept once done


def test_chatgpt_zip_as_emailed_is_read_and_importing_it_again_duplicates_nothing(
    user, eager_celery, django_capture_on_commit_callbacks
):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chat.html", "<html></html>")
        archive.writestr("conversations.json", FIXTURE.read_bytes())
    first = import_via_api(user, buffer.getvalue(), django_capture_on_commit_callbacks, name="export.zip")
    assert first["imported"] == 3

    again = import_via_api(user, buffer.getvalue(), django_capture_on_commit_callbacks, name="export.zip")
    assert again["status"] == "done"
    assert again["imported"] == 0
    assert {e["reason"] for e in again["report"] if e["title"] != "Empty chat"} == {
        "Already imported (or already yours)."
    }
    assert Conversation.objects.filter(owner=user).count() == 3


def test_parley_export_round_trips(user, local_model, eager_celery, django_capture_on_commit_callbacks):
    original = conversation_create(owner=user, title="Trip to Lyon")
    message_add(conversation=original, role=Role.USER, content="Where should I eat in Lyon?")
    message_add(conversation=original, role=Role.ASSISTANT, status=MessageStatus.ERROR, error="model crashed")
    message_add(conversation=original, role=Role.ASSISTANT, content="Try a **bouchon**.", model_slug="smollm2-135m")
    other = conversation_create(owner=make_user("mallory"), title="Not alice's")
    message_add(conversation=other, role=Role.USER, content="secret")

    response = api(user).get("/api/v1/conversations/export/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    data = json.loads(archive.read("conversations.json"))
    assert (data["format"], data["version"]) == ("parley", 1)
    assert [c["title"] for c in data["conversations"]] == ["Trip to Lyon"]  # never another user's
    markdown = [n for n in archive.namelist() if n.endswith(".md")]
    assert len(markdown) == 1
    assert "bouchon" in archive.read(markdown[0]).decode()
    assert AuditEvent.objects.filter(action="conversation.export", target_id=str(original.pk)).exists()

    bob = make_user("bob")
    job = import_via_api(bob, response_bytes(user), django_capture_on_commit_callbacks, name="parley.zip")
    assert (job["status"], job["source"], job["imported"]) == ("done", "parley", 1)
    copy = Conversation.objects.get(owner=bob)
    assert copy.title == original.title
    fields = ("role", "content", "status", "error", "model_slug", "created_at")
    assert list(copy.messages.order_by("created_at").values_list(*fields)) == list(
        original.messages.order_by("created_at").values_list(*fields)
    )
    assert copy.created_at == original.created_at
    assert copy.metadata["original_id"] == str(original.pk)


def response_bytes(user) -> bytes:
    response = api(user).get("/api/v1/conversations/export/")
    return b"".join(response.streaming_content)  # read to the end: the request is finished


def test_malformed_json_fails_the_job_with_a_clear_message(user, eager_celery, django_capture_on_commit_callbacks):
    job = import_via_api(user, b'[{"title": "half a file", "mapping": {', django_capture_on_commit_callbacks)
    assert job["status"] == "failed"
    assert job["error"].startswith("The file is not valid JSON")
    assert job["report"] == []
    assert not Conversation.objects.filter(owner=user).exists()


def test_other_json_shape_fails_the_job(user, eager_celery, django_capture_on_commit_callbacks):
    job = import_via_api(user, b'{"hello": "world"}', django_capture_on_commit_callbacks)
    assert job["status"] == "failed"
    assert "neither ChatGPT's export" in job["error"]


def test_too_big_is_refused_with_413_before_a_job_exists(user, settings):
    settings.IMPORT_MAX_BYTES = 1024
    response = upload(api(user), b"[" + b" " * 200_000 + b"]")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not ImportJob.objects.exists()

    # Over the limit, but within the multipart slack: refused once its size is known, still no job.
    response = upload(api(user), b"[" + b" " * 2000 + b"]")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not ImportJob.objects.exists()


def test_a_conversation_over_the_message_cap_is_skipped_and_the_others_imported(
    user, settings, eager_celery, django_capture_on_commit_callbacks
):
    settings.IMPORT_MAX_MESSAGES = 3  # "Capitals" has 4 messages on its active branch
    job = import_via_api(user, FIXTURE.read_bytes(), django_capture_on_commit_callbacks)
    report = {entry["title"]: entry for entry in job["report"]}
    assert report["Capitals"]["status"] == "skipped"
    assert report["Capitals"]["reason"] == "4 messages; the limit is 3 (IMPORT_MAX_MESSAGES)."
    assert report["A picture"]["status"] == "imported"
    assert job["imported"] == 2
    assert not Conversation.objects.filter(owner=user, title="Capitals").exists()  # nothing half-written


def test_another_users_job_is_not_visible(user, other_user):
    job = import_job_create(owner=user, data=FIXTURE.read_bytes(), filename="c.json", enqueue=False)
    assert api(other_user).get(f"/api/v1/imports/{job.pk}/").status_code == 404
    assert api(other_user).get("/api/v1/imports/").json()["results"] == []
    assert [j["id"] for j in api(user).get("/api/v1/imports/").json()["results"]] == [str(job.pk)]


def test_running_a_job_again_changes_nothing(user):
    job = import_job_create(owner=user, data=FIXTURE.read_bytes(), enqueue=False)
    assert import_job_run(job_id=job.pk).imported == 3
    again = import_job_run(job_id=job.pk)
    assert (again.status, again.imported, len(again.report)) == ("done", 3, 4)
    assert Conversation.objects.filter(owner=user).count() == 3


def test_an_interrupted_job_resumes_after_the_last_conversation_written(user):
    job = import_job_create(owner=user, data=FIXTURE.read_bytes(), enqueue=False)
    import_job_run(job_id=job.pk)
    # As if the worker died after the first conversation: its report entry and conversation stay.
    first = ImportJob.objects.get(pk=job.pk).report[:1]
    Conversation.objects.filter(owner=user).exclude(pk=first[0]["conversation"]).delete()
    ImportJob.objects.filter(pk=job.pk).update(
        status="running", report=first, imported=1, skipped=0, data=FIXTURE.read_bytes()
    )
    resumed = import_job_run(job_id=job.pk)
    assert (resumed.status, resumed.imported, resumed.skipped) == ("done", 3, 1)
    assert Conversation.objects.filter(owner=user).count() == 3


def test_manage_py_chats_import_and_export(user, tmp_path):
    out = io.StringIO()
    call_command("chats", "import", str(FIXTURE), "--user", "alice", stdout=out)
    text = out.getvalue()
    assert "imported: Capitals (4 messages)" in text
    assert "skipped: Empty chat (0 messages) - No text messages" in text
    assert "Imported 3 conversation(s) for alice; 1 skipped" in text
    assert Conversation.objects.filter(owner=user, metadata__imported_from="chatgpt").count() == 3
    assert AuditEvent.objects.filter(action="conversation.import", source="cli").exists()

    target = tmp_path / "alice.zip"
    out = io.StringIO()
    call_command("chats", "export", "--user", "alice", "--output", str(target), stdout=out)
    assert "Exported 3 conversation(s)" in out.getvalue()
    data = json.loads(zipfile.ZipFile(target).read("conversations.json"))
    assert sorted(c["title"] for c in data["conversations"]) == [
        "<script>alert(1)</script> Greetings",
        "A picture",
        "Capitals",
    ]

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CommandError, match="Import failed: The file is not valid JSON"):
        call_command("chats", "import", str(broken), "--user", "alice", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("chats", "import", str(FIXTURE), "--user", "nobody")


def test_settings_page_import_form_queues_a_job_and_shows_it(user, settings):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/settings/")
    assert b"Export all conversations" in page.content
    token = page.cookies["csrftoken"].value

    response = client.post(
        "/settings/imports/", {"file": _file(FIXTURE.read_bytes(), "c.json"), "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    job = ImportJob.objects.get(owner=user)
    assert job.status == "queued"
    assert b"Waiting for a worker" in client.get("/settings/").content

    # The CSRF check still holds for this view (it runs once the size is known to be acceptable).
    refused = client.post("/settings/imports/", {"file": _file(FIXTURE.read_bytes(), "c.json")})
    assert refused.status_code == 403
    assert ImportJob.objects.count() == 1


def test_settings_page_refuses_a_too_big_upload_unread(user, settings):
    settings.IMPORT_MAX_BYTES = 1024
    client = Client()
    client.force_login(user)
    response = client.post("/settings/imports/", {"file": _file(b"[" + b" " * 200_000 + b"]", "big.json")})
    assert response.status_code == 413
    assert "the import limit is 1,024 bytes (IMPORT_MAX_BYTES)" in response.content.decode()
    assert not ImportJob.objects.exists()


def _file(data: bytes, name: str) -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


def test_a_10000_message_conversation_is_skipped_with_the_default_cap(user):
    """The issue's case: a 10,000-message chain (its tree 10,000 levels deep by parent pointers)."""
    mapping = {"root": {"id": "root", "message": None, "parent": None, "children": ["n0"]}}
    for i in range(10_000):
        mapping[f"n{i}"] = {
            "id": f"n{i}",
            "parent": "root" if i == 0 else f"n{i - 1}",
            "children": [f"n{i + 1}"] if i < 9_999 else [],
            "message": {
                "author": {"role": "user" if i % 2 == 0 else "assistant"},
                "content": {"content_type": "text", "parts": [f"message {i}"]},
                "create_time": T + i,
                "metadata": {},
            },
        }
    export = [
        {"title": "Very long", "create_time": T, "mapping": mapping, "current_node": "n9999"},
        json.loads(FIXTURE.read_text())[3],
    ]
    job = import_job_create(owner=user, data=json.dumps(export).encode(), enqueue=False)
    job = import_job_run(job_id=job.pk)
    assert job.status == "done"
    assert job.report[0]["status"] == "skipped"
    assert job.report[0]["reason"] == "10,000 messages; the limit is 5,000 (IMPORT_MAX_MESSAGES)."
    assert job.report[1]["status"] == "imported"
    assert not Message.objects.filter(content="message 0").exists()


def test_the_conversation_page_exports_that_conversation_alone(user, local_model):
    mine = conversation_create(owner=user, title="This one")
    message_add(conversation=mine, role=Role.USER, content="Hello")
    conversation_create(owner=user, title="Another")
    client = Client()
    client.force_login(user)
    page = client.get(mine.get_absolute_url()).content.decode()
    link = re.search(r'href="([^"]+)" download id="export-link"', page).group(1)
    response = client.get(link.replace("&amp;", "&"))
    assert response.status_code == 200
    data = json.loads(zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).read("conversations.json"))
    assert [c["title"] for c in data["conversations"]] == ["This one"]
