"""Property-based tests over the OpenAPI schema (schemathesis): no server errors, answers as documented.

Every operation of ``/api/schema/`` gets requests generated from the schema, valid ones and invalid
ones, sent to the real WSGI application as a logged-in staff user (a JWT), so operations are
exercised past authentication. Path ids point at a real conversation and its last answer, so the
conversation operations get past the 404. Operations that generate an answer with the model run
a few examples only, to keep the test around a minute.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat.models import Conversation, MessageStatus
from chat.services import conversation_create, message_finalize, message_send
from config.wsgi import application
from conftest import make_user

# Transactional: the WSGI handler closes the database connection after each request, as in production.
pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 20  # per operation and generation mode
# Each of these runs the model (or waits for it): a few examples are enough to find their errors.
GENERATING = {
    ("POST", "/api/v1/conversations/{conversation_id}/messages/"): 3,
    ("POST", "/api/v1/conversations/{conversation_id}/messages/{message_id}/regenerate/"): 2,
}


MAX_TOKENS = 8  # answers of a few tokens: the test is about the API, not the model


@pytest.fixture
def staff(db, local_model, settings):
    settings.RATE_LIMIT_USER = "100000/min"  # thousands of requests a minute are this test's point
    local_model.max_tokens = MAX_TOKENS
    local_model.save(update_fields=["max_tokens"])
    return make_user("root", is_staff=True, is_superuser=True)  # no email: me/ must still match its schema


def _short_answers(case) -> None:
    """Cap a valid ``params.max_tokens`` of a generating request at ``MAX_TOKENS`` (invalid ones stay)."""
    params = case.body.get("params") if isinstance(case.body, dict) else None
    value = params.get("max_tokens") if isinstance(params, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
        params["max_tokens"] = MAX_TOKENS


def _answered_conversation(user) -> Conversation:
    """Return ``user``'s conversation with a finished answer (created again if a case deleted it)."""
    conversation = Conversation.objects.filter(owner=user, archived_at__isnull=True).first()
    if conversation is None:
        conversation = conversation_create(owner=user, title="Schemathesis")
    last = conversation.active_leaf
    if last is None or last.role != "assistant" or last.status == MessageStatus.STREAMING:
        turn = message_send(conversation=conversation, content="Hello?")
        message_finalize(message_id=turn.assistant_message.pk, content="Hello!", status=MessageStatus.COMPLETE)
        last = turn.assistant_message
    return conversation, last


def _fuzz(operation, mode, *, user, headers: dict) -> None:
    """Send the operation's generated requests in ``mode``; raise what schemathesis finds."""
    label = (operation.method.upper(), operation.path)
    generating = label in GENERATING

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=GENERATING.get(label, EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        conversation, answer = _answered_conversation(user)
        if "conversation_id" in (case.path_parameters or {}):
            case.path_parameters["conversation_id"] = str(conversation.pk)
        if "message_id" in (case.path_parameters or {}):
            case.path_parameters["message_id"] = str(answer.pk)
        if generating:
            _short_answers(case)
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)

    run()


def test_the_api_gives_no_server_errors_and_answers_as_documented(staff):
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    headers = {"Authorization": f"Bearer {RefreshToken.for_user(staff).access_token}"}
    failures: list[str] = []
    operations = 0

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, user=staff, headers=headers)
            except BaseException as exc:  # collect every operation's failures (exception groups too)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")

    assert operations >= 20
    assert not failures, "\n\n".join(failures)


def test_a_page_past_the_end_is_a_404_in_the_error_shape(staff):
    # Found by the test above: the paginator's error read "detail: Invalid page.".
    client = APIClient()
    client.force_login(staff)
    response = client.get("/api/v1/conversations/?page=-3")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "detail": "Invalid page."}}
