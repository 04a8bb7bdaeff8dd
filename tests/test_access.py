"""Every operation of the REST API, as anonymous, another user, the owner and staff.

The operations come from the OpenAPI schema itself, so a new endpoint joins this sweep by existing.
Path ids name the owner's objects. What each role may see:

- anonymous: 401 everywhere (token endpoints aside: they are how one logs in);
- another user, and staff who are not the owner: the owner's conversations, messages, documents,
  memories and keys are 404 (not 403: their existence is not revealed); staff-only endpoints are 403 to non-staff;
- the owner: never refused (no 401/403/404), never a server error;
- nobody, ever, a 5xx.

Bodies are empty or point at the user's own question, so no model generates anything here.
"""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.services import api_key_create
from agents.services import document_create, memory_exchange_store
from chat.models import MessageStatus, Role
from chat.services import attachment_create, conversation_create, import_job_create, prompt_create, share_create
from conftest import make_user
from tests.factories import message_add, png_bytes

pytestmark = pytest.mark.django_db

PUBLIC = {"/api/v1/auth/token/", "/api/v1/auth/token/refresh/"}
STAFF_ONLY = re.compile(r"^/api/v1/(admin|cache)/")
OWNED = re.compile(
    r"\{(conversation_id|message_id|document_id|api_key_id|memory_id|share_id|prompt_id|import_job_id|attachment_id)\}"
)


def operations() -> list[tuple[str, str]]:
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    return [
        (path, method)
        for path, ops in paths.items()
        for method in ("get", "post", "patch", "delete")
        if method in ops and path not in PUBLIC
    ]


@pytest.fixture
def world(local_model, media_root):
    owner, other = make_user("owner"), make_user("other")
    staff = make_user("staff", is_staff=True)
    conversation = conversation_create(owner=owner, title="Mine")
    question = message_add(conversation=conversation, role=Role.USER, content="Hi")
    message_add(conversation=conversation, role=Role.ASSISTANT, content="Hello", status=MessageStatus.COMPLETE)
    document = document_create(owner=owner, data=b"Some notes.", filename="notes.txt", ingest=False)
    api_key, _ = api_key_create(user=owner, name="script")
    answer = conversation.messages.get(role=Role.ASSISTANT)
    memory = memory_exchange_store(
        owner_id=owner.pk, conversation_id=conversation.pk, message_id=answer.pk, question="Hi", answer="Hello"
    )
    ids = {
        "conversation_id": conversation.pk,
        "message_id": question.pk,  # the question: feedback and regenerate refuse it (400) without generating
        "document_id": document.pk,
        "api_key_id": api_key.pk,
        "memory_id": memory.pk,
        "share_id": share_create(conversation=conversation).pk,
        "prompt_id": prompt_create(owner=owner, title="Mine", text="Say {{x}}").pk,
        "import_job_id": import_job_create(owner=owner, data=b"[]", filename="c.json", enqueue=False).pk,
        "attachment_id": attachment_create(owner=owner, data=png_bytes()).pk,
        "layer": "intent",
    }
    return {"owner": owner, "other": other, "staff": staff}, ids


def call(user, path: str, method: str, ids: dict):
    client = APIClient()
    if user is not None:
        client.force_login(user)
    url = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path)
    response = getattr(client, method)(url, {}, format="json")
    if response.streaming:
        # Read to the end, as a server sends it: only then is the request finished (Django's test
        # client closes it), and its audit context cleared before the next test's events.
        b"".join(response.streaming_content)
    return response


@pytest.mark.parametrize(("path", "method"), operations())
def test_each_role_gets_what_it_may_and_nobody_a_server_error(world, path, method):
    users, ids = world
    anonymous = call(None, path, method, ids)
    assert anonymous.status_code == 401, anonymous.content
    assert anonymous.json()["error"]["code"] == "not_authenticated"

    for role in ("other", "staff"):
        response = call(users[role], path, method, ids)
        assert response.status_code < 500, (role, response.content)
        if OWNED.search(path):
            assert response.status_code == 404, (role, response.content)
        elif STAFF_ONLY.match(path) and role == "other":
            assert response.status_code == 403, response.content
        elif STAFF_ONLY.match(path):
            assert response.status_code < 400, response.content

    # The owner last: a DELETE really deletes.
    response = call(users["owner"], path, method, ids)
    assert response.status_code < 500, response.content
    if not STAFF_ONLY.match(path):
        assert response.status_code not in (401, 403, 404), response.content
