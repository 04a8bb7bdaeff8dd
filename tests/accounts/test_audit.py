"""The audit log (issue 17, item 3): one event per change that matters, by every path, and never a secret."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import WebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.forms import CheckboxInput
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.middleware import AuditASGIMiddleware
from accounts.models import APIKey, AuditEvent, AuditSource, User
from accounts.services import api_key_create, audit_is_secret_name, audit_record, audit_redact
from accounts.tasks import audit_prune_task
from agents.models import Document
from agents.services import document_create
from chat.services import conversation_create
from conftest import make_user, ws_headers
from inference.models import Deployment, ModelConfig

from .conftest import PASSWORD, bearer_client, obtain_tokens, session_client

# Not a real secret: the canary whose absence the tests check.
CANARY_ENV_VALUE = "sk-canary-env-7f3a9d1c2b"


@pytest.fixture
def operator(db) -> User:
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def only(action: str) -> AuditEvent:
    """Return the one event of ``action``; fail when there are none or several."""
    found = events(action)
    assert len(found) == 1, [(e.action, e.target_label, e.source) for e in AuditEvent.objects.all()]
    return found[0]


def admin_form_data(page) -> dict:
    """Return the POST data of an admin add/change page as shown (main form and inlines), unchanged."""
    data: dict = {}

    def add(form) -> None:
        for bound in form:
            if bound.field.disabled:
                continue
            value = bound.value()
            if bound.field.show_hidden_initial:  # as the page's hidden "initial-" input sends it
                data[bound.html_initial_name] = "" if value is None else str(value)
            if isinstance(bound.field.widget, CheckboxInput):
                if value:
                    data[bound.html_name] = "on"
                continue
            if value is None:
                data[bound.html_name] = ""
            elif isinstance(value, (list, tuple)):
                data[bound.html_name] = [str(getattr(v, "pk", v)) for v in value]
            else:
                data[bound.html_name] = str(value)

    add(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = management.initial.get(name, 0)
        for form in formset.forms:
            add(form)
    return data


# Logins


@pytest.mark.parametrize("path, source", [("/login/", AuditSource.WEB), ("/admin/login/", AuditSource.ADMIN)])
def test_a_login_is_recorded_with_its_request_id_and_ip(path, source, operator):
    response = Client(REMOTE_ADDR="203.0.113.5").post(
        path, {"username": "root", "password": PASSWORD}, HTTP_X_REQUEST_ID="req-login-1"
    )
    assert response.status_code == 302

    event = only("auth.login")
    assert (event.actor, event.actor_label, event.source) == (operator, "root", source)
    assert (event.target_type, event.target_id) == ("accounts.user", str(operator.pk))
    assert (event.request_id, event.ip) == ("req-login-1", "203.0.113.5")


def test_a_failed_login_names_the_account_tried_and_no_one_as_actor(user):
    response = Client(REMOTE_ADDR="203.0.113.6").post("/login/", {"username": "alice", "password": "wrong guess"})
    assert response.status_code == 200

    event = only("auth.login_failed")
    assert (event.actor, event.target_label, event.source, event.ip) == (None, "alice", AuditSource.WEB, "203.0.113.6")
    assert "wrong guess" not in json.dumps(event.changes)
    assert not events("auth.login")


def test_a_jwt_obtained_is_a_login_and_a_refused_one_a_failed_login(user):
    obtain_tokens()
    event = only("auth.login")
    assert (event.actor, event.source) == (user, AuditSource.API)

    response = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert response.status_code == 401
    failed = only("auth.login_failed")
    assert (failed.actor, failed.target_label, failed.source) == (None, "alice", AuditSource.API)


# API keys


def test_an_api_key_created_and_revoked_over_rest_records_its_prefix_only(user):
    client = bearer_client(obtain_tokens()["access"])  # a JWT: DRF, not the session, names the actor
    response = client.post("/api/v1/keys/", {"name": "laptop"}, format="json", HTTP_X_REQUEST_ID="req-key-1")
    assert response.status_code == 201
    key, key_id = response.json()["key"], response.json()["id"]

    created = only("api_key.create")
    assert (created.actor, created.source, created.request_id) == (user, AuditSource.API, "req-key-1")
    assert (created.target_type, created.target_id) == ("accounts.apikey", key_id)
    assert created.changes["prefix"] == key[:11] and created.target_label == f"laptop ({key[:11]}…)"

    assert client.delete(f"/api/v1/keys/{key_id}/").status_code == 204
    revoked = only("api_key.revoke")
    assert (revoked.actor, revoked.target_id, revoked.source) == (user, key_id, AuditSource.API)
    assert key not in str(vars(created)) + str(vars(revoked))


def test_the_admin_revoke_action_records_the_operator(operator_client, operator, user, api_key):
    api_key_row = APIKey.objects.get(user=user)
    response = operator_client.post(
        reverse("admin:accounts_apikey_changelist"), {"action": "revoke", "_selected_action": [api_key_row.pk]}
    )
    assert response.status_code == 302

    event = only("api_key.revoke")
    assert (event.actor, event.source, event.target_id) == (operator, AuditSource.ADMIN, str(api_key_row.pk))


# Users, groups, quotas


def test_a_quota_changed_in_the_admin_is_a_user_change_with_its_diff(operator_client, operator, user):
    url = reverse("admin:accounts_user_change", args=[user.pk])
    data = admin_form_data(operator_client.get(url))
    data["daily_token_quota"] = "5000"
    response = operator_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors

    event = only("user.change")
    assert (event.actor, event.source, event.target_id) == (operator, AuditSource.ADMIN, str(user.pk))
    assert event.changes == {"daily_token_quota": [None, 5000]}


def test_a_user_added_to_a_group_in_the_admin_shows_old_and_new_groups(operator_client, user):
    readers = Group.objects.create(name="readers")
    url = reverse("admin:accounts_user_change", args=[user.pk])
    data = admin_form_data(operator_client.get(url))
    data["groups"] = [str(readers.pk)]
    assert operator_client.post(url, data).status_code == 302

    assert only("user.change").changes == {"groups": [[], ["readers"]]}


def test_a_group_created_in_the_admin(operator_client, operator):
    response = operator_client.post(reverse("admin:auth_group_add"), {"name": "editors", "permissions": []})
    assert response.status_code == 302

    event = only("group.create")
    assert (event.actor, event.target_label, event.source) == (operator, "editors", AuditSource.ADMIN)


def test_a_user_deactivated_by_the_admin_action(operator_client, operator, user):
    response = operator_client.post(
        reverse("admin:accounts_user_changelist"), {"action": "deactivate", "_selected_action": [user.pk]}
    )
    assert response.status_code == 302

    event = only("user.deactivate")
    assert (event.actor, event.target_id, event.source) == (operator, str(user.pk), AuditSource.ADMIN)


def test_a_user_deleted_in_the_admin_keeps_the_actors_name_in_older_events(operator_client, operator, user):
    audit_record(action="auth.login", actor=user, target=user)
    response = operator_client.post(reverse("admin:accounts_user_delete", args=[user.pk]), {"post": "yes"})
    assert response.status_code == 302

    deleted = only("user.delete")
    assert (deleted.actor, deleted.target_label, deleted.target_id) == (operator, "alice", str(user.pk))
    login = AuditEvent.objects.get(action="auth.login", target_id=str(user.pk))
    assert (login.actor, login.actor_label) == (None, "alice")


def test_a_password_change_is_recorded_without_the_password(user, api_key):
    client = Client()
    client.force_login(user)
    new = "a brand new secret phrase 42"
    response = client.post(
        "/password/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}, HTTP_X_REQUEST_ID="pw-1"
    )
    assert response.status_code == 302

    event = only("user.password_change")
    assert (event.actor, event.source, event.request_id) == (user, AuditSource.WEB, "pw-1")
    # API_KEYS_REVOKE_ON_PASSWORD_CHANGE: the key goes with it, as one revoke event with the reason.
    assert only("api_key.revoke").changes["reason"] == "password changed"


def test_a_sign_up_is_a_user_created_by_themselves_then_a_login(db, settings):
    settings.SIGNUP_ENABLED = True
    password = "sign-up-password-canary-9c2"
    response = Client().post("/signup/", {"username": "dave", "password1": password, "password2": password})
    assert response.status_code == 302

    dave = User.objects.get(username="dave")
    created = only("user.create")
    assert (created.actor, created.target_id, created.source) == (dave, str(dave.pk), AuditSource.WEB)
    assert only("auth.login").actor == dave
    assert password not in json.dumps(list(AuditEvent.objects.values_list("changes", "target_label")))


# Models and deployments


@pytest.fixture
def remote_model(db, monkeypatch) -> ModelConfig:
    monkeypatch.setenv("PARLEY_TEST_AUDIT_KEY", CANARY_ENV_VALUE)
    return ModelConfig.objects.create(
        slug="remote",
        display_name="Remote",
        provider="openai_compatible",
        model="gpt",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="PARLEY_TEST_AUDIT_KEY",
        temperature=0.7,
    )


def test_a_model_changed_in_the_admin_with_field_diffs_and_secret_fields_masked(
    operator_client, operator, remote_model
):
    url = reverse("admin:inference_modelconfig_change", args=[remote_model.pk])
    data = admin_form_data(operator_client.get(url))
    data.update(temperature="0.2", api_key_env="PARLEY_OTHER_KEY")
    response = operator_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors

    event = only("model.change")
    assert (event.actor, event.source, event.target_type) == (operator, AuditSource.ADMIN, "inference.modelconfig")
    assert event.changes == {"temperature": [0.7, 0.2], "api_key_env": "[masked]"}


def test_a_deployment_added_in_the_admin_inline(operator_client, remote_model):
    url = reverse("admin:inference_modelconfig_change", args=[remote_model.pk])
    data = admin_form_data(operator_client.get(url))
    data.update(
        {
            "deployments-TOTAL_FORMS": "1",
            "deployments-0-order": "0",
            "deployments-0-name": "east",
            "deployments-0-provider": "openai_compatible",
            "deployments-0-model": "gpt",
            "deployments-0-base_url": "http://127.0.0.1:9/v1",
            "deployments-0-weight": "1",
        }
    )
    response = operator_client.post(url, data)
    assert response.status_code == 302, [f.errors for f in response.context["inline_admin_formsets"][0].formset]

    event = only("deployment.create")
    assert event.target_id == str(Deployment.objects.get(name="east").pk)
    assert event.changes["name"] == [None, "east"]
    assert not events("model.change")  # the model's own fields did not change


def test_models_set_default_from_the_command_line_is_cli_with_the_named_actor(operator, local_model, remote_model):
    call_command("models", "set-default", "remote", actor="root")

    changed = {(e.target_label, json.dumps(e.changes)) for e in events("model.change")}
    assert changed == {
        (str(local_model), '{"is_default": [true, false]}'),
        (str(remote_model), '{"is_default": [false, true]}'),
    }
    assert {(e.source, e.actor_id) for e in events("model.change")} == {(AuditSource.CLI, operator.pk)}


def test_a_command_without_actor_records_the_os_user(remote_model):
    call_command("models", "disable", "remote")
    event = only("model.change")
    assert (event.source, event.actor, event.changes) == (AuditSource.CLI, None, {"is_enabled": [True, False]})
    assert event.actor_label.startswith("os:")


# Cache flushes: one service for the command, REST and the admin page


def test_cache_flush_from_the_command_line(operator):
    call_command("cache", "flush", "--all", actor="root", stdout=io.StringIO())
    event = only("cache.flush")
    assert (event.source, event.actor, event.target_id) == (AuditSource.CLI, operator, "all")
    assert event.changes["layers"] == ["llm", "tool", "intent", "semantic"]


def test_cache_flush_over_rest(operator):
    client = APIClient(REMOTE_ADDR="198.51.100.4")
    client.force_login(operator)
    assert client.delete("/api/v1/cache/llm/").status_code == 200
    event = only("cache.flush")
    assert (event.source, event.actor, event.target_id, event.ip) == (AuditSource.API, operator, "llm", "198.51.100.4")


def test_cache_flush_from_the_admin_page(operator_client, operator):
    assert operator_client.post(reverse("admin_cache"), {"layer": "tool"}).status_code == 302
    event = only("cache.flush")
    assert (event.source, event.actor, event.target_id) == (AuditSource.ADMIN, operator, "tool")


def test_an_unknown_layer_flushes_and_records_nothing(operator):
    client = APIClient()
    client.force_login(operator)
    assert client.delete("/api/v1/cache/nope/").status_code == 404
    assert not events("cache.flush")


# Webhooks (core's admin, audited from accounts)


def test_webhook_endpoint_edits_and_secret_rotations_are_recorded_without_the_secret(operator_client, operator):
    from core.models import WebhookEndpoint

    response = operator_client.post(
        reverse("admin:core_webhookendpoint_add"),
        {"url": "https://hooks.example.test/in", "event_types": ["document.failed"], "is_enabled": "on"},
    )
    assert response.status_code == 200, "the new secret's page"
    endpoint = WebhookEndpoint.objects.get()
    created = only("webhook_endpoint.create")
    assert (created.actor, created.source, created.target_id) == (operator, AuditSource.ADMIN, str(endpoint.pk))

    change_url = reverse("admin:core_webhookendpoint_change", args=[endpoint.pk])
    data = admin_form_data(operator_client.get(change_url))
    data["event_types"] = ["document.failed", "feedback.created"]
    assert operator_client.post(change_url, data).status_code == 302
    changed = only("webhook_endpoint.change")
    assert changed.changes["event_types"] == [["document.failed"], ["document.failed", "feedback.created"]]

    old_secret = endpoint.secret
    operator_client.post(
        reverse("admin:core_webhookendpoint_changelist"),
        {"action": "rotate_secret", "_selected_action": [endpoint.pk]},
    )
    endpoint.refresh_from_db()
    assert endpoint.secret != old_secret
    assert only("webhook_endpoint.secret_rotate").actor == operator
    dumped = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert old_secret not in dumped and endpoint.secret not in dumped


# Documents and exports


def test_a_document_deleted_over_rest(user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    document = document_create(owner=user, data=b"Lisbon notes", filename="notes.txt", title="Notes", ingest=False)
    assert session_client(user).delete(f"/api/v1/documents/{document.pk}/").status_code == 204

    event = only("document.delete")
    assert (event.actor, event.source, event.target_id, event.target_label) == (
        user,
        AuditSource.API,
        str(document.pk),
        "Notes",
    )
    assert not Document.objects.filter(pk=document.pk).exists()


def test_a_document_deleted_on_its_admin_page_goes_through_the_service(
    operator_client, operator, user, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    document = document_create(owner=user, data=b"Porto notes", filename="porto.txt", title="Porto", ingest=False)
    stored = tmp_path / document.file.name
    assert stored.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(reverse("admin:agents_document_delete", args=[document.pk]), {"post": "yes"})
    assert response.status_code == 302

    event = only("document.delete")
    assert (event.actor, event.source, event.target_id) == (operator, AuditSource.ADMIN, str(document.pk))
    assert not stored.exists()  # the service's delete: the file went too


def test_a_conversation_exported_from_the_admin(operator_client, operator, user, local_model):
    conversation = conversation_create(owner=user, title="Trip")
    response = operator_client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_json", "_selected_action": [conversation.pk]},
    )
    assert response.status_code == 200 and "Trip" in response.content.decode()

    event = only("conversation.export")
    assert (event.actor, event.source, event.target_id) == (operator, AuditSource.ADMIN, str(conversation.pk))
    assert event.changes == {"format": "json", "owner": "alice", "messages": 0}


# The admin of the log itself


def test_nobody_may_change_or_delete_an_event_not_even_a_superuser(operator_client):
    event = audit_record(action="cache.flush", target_type="cache_layer", target_id="llm")
    change_url = reverse("admin:accounts_auditevent_change", args=[event.pk])
    assert operator_client.get(change_url).status_code == 200  # viewable
    assert operator_client.post(change_url, {"action": "x"}).status_code == 403
    assert (
        operator_client.post(reverse("admin:accounts_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    listing = operator_client.get(reverse("admin:accounts_auditevent_changelist"))
    assert "delete_selected" not in listing.content.decode()
    assert operator_client.get(reverse("admin:accounts_auditevent_add")).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()

    # Nor in code: a stored event is never saved again, updated or deleted one by one.
    with pytest.raises(TypeError):
        event.action = "nothing.happened"
        event.save()
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(pk=event.pk).update(action="nothing.happened")
    with pytest.raises(TypeError):
        event.delete()


def test_the_admin_lists_and_filters_events(operator_client):
    audit_record(action="cache.flush", target_type="cache_layer", target_id="llm", target_label="llm")
    audit_record(action="model.change", target_type="inference.modelconfig", target_id="7", target_label="Gemma")
    page = operator_client.get(reverse("admin:accounts_auditevent_changelist"), {"action__exact": "model.change"})
    assert page.status_code == 200
    listed = [event.action for event in page.context["cl"].result_list]
    assert listed == ["model.change"]


def test_the_csv_export_streams_the_filtered_events(operator_client, operator):
    audit_record(action="cache.flush", actor=operator, target_type="cache_layer", target_id="llm", target_label="llm")
    audit_record(action="model.change", target_type="inference.modelconfig", target_id="7", changes={"x": [1, 2]})
    response = operator_client.get(reverse("admin:accounts_auditevent_export"), {"action__exact": "cache.flush"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["action"], r["actor"], r["target_id"], r["source"]) for r in rows] == [
        ("cache.flush", "root", "llm", "system")
    ]
    exported = only("audit.export")  # who read the log, and which part
    assert (exported.actor, exported.source, exported.changes) == (
        operator,
        AuditSource.ADMIN,
        {"filters": {"action__exact": ["cache.flush"]}},
    )


def test_the_csv_export_is_for_staff_with_the_view_permission_only(user):
    client = Client()
    client.force_login(user)
    assert client.get(reverse("admin:accounts_auditevent_export")).status_code == 302  # to the admin login

    clerk = make_user("clerk", is_staff=True)
    client.force_login(clerk)
    assert client.get(reverse("admin:accounts_auditevent_export")).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    assert client.get(reverse("admin:accounts_auditevent_export")).status_code == 200


# Retention


def test_the_nightly_prune_deletes_only_events_older_than_the_retention(db, settings):
    settings.AUDIT_RETENTION_DAYS = 30
    old = AuditEvent(action="cache.flush", source=AuditSource.SYSTEM, created=timezone.now() - timedelta(days=31))
    old.save()
    recent = AuditEvent(action="cache.flush", source=AuditSource.SYSTEM, created=timezone.now() - timedelta(days=29))
    recent.save()

    assert audit_prune_task.apply().get() == {"deleted": 1}
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert audit_prune_task.apply().get() == {"deleted": 0}  # idempotent


@pytest.mark.parametrize(
    "name, secret",
    [
        ("password1", True),
        ("usable_password", True),
        ("client_secret", True),
        ("api_key_env", True),
        ("access_token", True),
        ("key_hash", True),
        ("daily_token_quota", False),
        ("max_tokens", False),
        ("prefix", False),
        ("temperature", False),
    ],
)
def test_fields_named_like_secrets_are_masked_and_counts_are_not(name, secret):
    assert audit_is_secret_name(name) is secret


def test_texts_lose_keys_tokens_and_nul_characters_but_keep_key_prefixes():
    key = "pk_" + "A1b2C3d4" + "e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X"
    text = f"key {key} named pk_A1b2C3d4 by Bearer abc.def; api_key=pk_Zz9Yy8Xx\x00 end"
    cleaned = audit_redact(text)
    assert key not in cleaned and "abc.def" not in cleaned and "\x00" not in cleaned
    assert "named pk_A1b2C3d4 by" in cleaned


# The canary: no key, password or secret anywhere in the log


def test_no_event_and_no_csv_line_holds_a_key_a_password_or_a_secret(
    operator_client, operator, user, remote_model, local_model, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    secrets_used = [PASSWORD, CANARY_ENV_VALUE]

    # Logins: right and wrong passwords, on every login path.
    wrong = "wrong-password-canary-5e1"
    secrets_used.append(wrong)
    for path in ("/login/", "/admin/login/"):
        Client().post(path, {"username": "alice", "password": PASSWORD})
        Client().post(path, {"username": "alice", "password": wrong})
    tokens = obtain_tokens()
    secrets_used += [tokens["access"], tokens["refresh"]]
    APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": wrong}, format="json")

    # API keys: over REST and in code, revoked both ways.
    jwt = bearer_client(tokens["access"])
    created = jwt.post("/api/v1/keys/", {"name": "canary"}, format="json").json()
    secrets_used.append(created["key"])
    jwt.delete(f"/api/v1/keys/{created['id']}/")
    api_key, key = api_key_create(user=user, name="script")
    secrets_used.append(key)
    operator_client.post(
        reverse("admin:accounts_apikey_changelist"), {"action": "revoke", "_selected_action": [api_key.pk]}
    )

    # A user created in the admin with a password, a password changed, a quota set.
    new_user_password = "new-user-password-canary-a41"
    secrets_used.append(new_user_password)
    add_url = reverse("admin:accounts_user_add")
    data = admin_form_data(operator_client.get(add_url))
    data.update(username="carol", password1=new_user_password, password2=new_user_password)
    added = operator_client.post(add_url, data)
    assert added.status_code == 302, added.context["adminform"].form.errors
    changed_password = "changed-password-canary-77b"
    secrets_used.append(changed_password)
    client = Client()
    client.force_login(user)
    client.post(
        "/password/",
        {"old_password": PASSWORD, "new_password1": changed_password, "new_password2": changed_password},
    )
    url = reverse("admin:accounts_user_change", args=[user.pk])
    data = admin_form_data(operator_client.get(url))
    data["daily_token_quota"] = "100"
    operator_client.post(url, data)

    # A model whose key variable changes; a default moved by the command; every cache flushed three ways.
    url = reverse("admin:inference_modelconfig_change", args=[remote_model.pk])
    data = admin_form_data(operator_client.get(url))
    data.update(api_key_env="PARLEY_TEST_AUDIT_KEY_2", system_prompt=f"Use key {created['key']}")
    operator_client.post(url, data)
    call_command("models", "set-default", "remote", actor="root")
    call_command("cache", "flush", "--all", stdout=io.StringIO())
    operator_client.post(reverse("admin_cache"), {"layer": "llm"})
    staff_api = APIClient()
    staff_api.force_login(operator)
    staff_api.delete("/api/v1/cache/all/")

    # A document deleted, a conversation exported.
    document = document_create(owner=user, data=b"notes", filename="n.txt", title="N", ingest=False)
    operator_client.post(reverse("admin:agents_document_delete", args=[document.pk]), {"post": "yes"})
    conversation = conversation_create(owner=user, title="Trip")
    operator_client.post(
        reverse("admin:chat_conversation_changelist"),
        {"action": "export_markdown", "_selected_action": [conversation.pk]},
    )

    recorded = set(AuditEvent.objects.values_list("action", flat=True))
    assert recorded >= {
        "auth.login",
        "auth.login_failed",
        "api_key.create",
        "api_key.revoke",
        "user.create",
        "user.change",
        "user.password_change",
        "model.change",
        "cache.flush",
        "document.delete",
        "conversation.export",
    }
    if len(settings.SECRET_KEY) >= 16:
        secrets_used.append(settings.SECRET_KEY)
    dump = json.dumps(
        list(AuditEvent.objects.values()), default=lambda v: str(v) if not isinstance(v, Decimal) else float(v)
    )
    csv_text = b"".join(operator_client.get(reverse("admin:accounts_auditevent_export")).streaming_content).decode()
    for secret in secrets_used:
        assert secret not in dump, secret
        assert secret not in csv_text, secret
    # The system prompt that quoted a key is recorded with the key redacted.
    assert "Use key pk_[REDACTED]" in dump


# WebSockets: no listed action is taken over a socket today (they only send and stop messages); the
# context is there for the services a consumer calls. A consumer of this test stands in for one.


class RecordingConsumer(WebsocketConsumer):
    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        event = audit_record(action="test.socket_action", target_type="test", target_id=text_data)
        self.send(text_data=str(event.pk))


@pytest.mark.django_db(transaction=True)
async def test_a_change_made_over_a_websocket_names_its_user_source_and_ip():
    user = await database_sync_to_async(make_user)("alice")
    application = AuthMiddlewareStack(AuditASGIMiddleware(RecordingConsumer.as_asgi()))
    socket = WebsocketCommunicator(application, "/ws/test/", headers=await ws_headers(user))
    socket.scope["client"] = ["203.0.113.9", 51000]
    connected, _ = await socket.connect(timeout=10)
    assert connected
    await socket.send_to(text_data="42")
    event_id = int(await socket.receive_from(timeout=10))
    await socket.disconnect()

    event = await AuditEvent.objects.select_related("actor").aget(pk=event_id)
    assert (event.actor, event.source, event.ip, event.target_id) == (user, AuditSource.WS, "203.0.113.9", "42")
