"""Per-user API keys: create, list, use, revoke; stored only hashed."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create

from .conftest import bearer_client, obtain_tokens, session_client

pytestmark = pytest.mark.django_db


def test_create_shows_the_key_once_and_lists_it_by_prefix(user):
    client = session_client(user)
    response = client.post("/api/v1/keys/", {"name": "laptop"}, format="json")
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "name", "prefix", "key", "created_at", "allowed_models", "expires_at", "rate_limit"}
    # Unscoped by default: every model the user may use, no expiry, no limit of its own.
    assert (created["allowed_models"], created["expires_at"], created["rate_limit"]) == (None, None, "")
    key = created["key"]
    assert key.startswith("pk_") and len(key) == 3 + 43
    assert key.startswith(created["prefix"]) and len(created["prefix"]) == 11

    listed = client.get("/api/v1/keys/")
    assert listed.status_code == 200
    assert listed.json() == [
        {
            "id": created["id"],
            "name": "laptop",
            "prefix": created["prefix"],
            "created_at": created["created_at"],
            "last_used_at": None,
            "allowed_models": None,
            "expires_at": None,
            "rate_limit": "",
            "budgets": [],  # none set for this key (see tests/accounts/test_budgets.py)
        }
    ]
    assert key not in listed.content.decode()


def test_the_database_never_holds_the_key(user):
    response = session_client(user).post("/api/v1/keys/", {"name": "laptop"}, format="json")
    key = response.json()["key"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(k)::text FROM accounts_apikey k")
        rows = [row[0] for row in cursor.fetchall()]
    assert len(rows) == 1
    secret = key.removeprefix(response.json()["prefix"])
    assert key not in rows[0] and secret not in rows[0]
    assert APIKey.objects.get().key_hash == hashlib.sha256(key.encode()).hexdigest()


def test_a_key_authenticates_its_user_and_records_use(user, api_key, local_model):
    client = bearer_client(api_key)
    me = client.get("/api/v1/me/")
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
    # CSRF does not apply to a key; it works for writes too.
    assert client.post("/api/v1/conversations/", {"title": "From a script"}, format="json").status_code == 201
    assert APIKey.objects.get().last_used_at is not None


def test_last_used_at_is_written_at_most_once_a_minute(user, api_key):
    client = bearer_client(api_key)
    client.get("/api/v1/me/")
    first = APIKey.objects.get().last_used_at
    client.get("/api/v1/me/")
    assert APIKey.objects.get().last_used_at == first

    long_ago = timezone.now() - timedelta(minutes=2)
    APIKey.objects.update(last_used_at=long_ago)
    client.get("/api/v1/me/")
    assert APIKey.objects.get().last_used_at > long_ago + timedelta(minutes=1)


def test_revoked_keys_stop_working_and_leave_the_list(user, api_key):
    client = session_client(user)
    key_id = client.get("/api/v1/keys/").json()[0]["id"]
    assert bearer_client(api_key).get("/api/v1/me/").status_code == 200

    assert client.delete(f"/api/v1/keys/{key_id}/").status_code == 204
    response = bearer_client(api_key).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert client.get("/api/v1/keys/").json() == []
    assert APIKey.objects.get().revoked_at is not None  # kept for the record
    assert client.delete(f"/api/v1/keys/{key_id}/").status_code == 404


def test_unknown_keys_and_inactive_users_are_401(user, api_key):
    assert bearer_client("pk_" + "x" * 43).get("/api/v1/me/").status_code == 401
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = bearer_client(api_key).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_another_users_key_is_a_404_and_stays_active(user, other_user):
    mallory_key, _ = api_key_create(user=other_user, name="mallory's")
    client = session_client(user)
    response = client.delete(f"/api/v1/keys/{mallory_key.pk}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    mallory_key.refresh_from_db()
    assert mallory_key.revoked_at is None
    assert client.get("/api/v1/keys/").json() == []


def test_staff_see_only_their_own_keys(user, staff):
    api_key_create(user=user, name="alice's")
    api_key_create(user=staff, name="staff's")
    assert [k["name"] for k in session_client(staff).get("/api/v1/keys/").json()] == ["staff's"]


def test_anonymous_clients_get_401(db):
    client = APIClient()
    assert client.get("/api/v1/keys/").status_code == 401
    assert client.post("/api/v1/keys/", {"name": "x"}, format="json").status_code == 401
    assert client.delete("/api/v1/keys/00000000-0000-0000-0000-000000000000/").status_code == 401
    assert not APIKey.objects.exists()


def test_an_api_key_cannot_manage_keys_but_a_jwt_can(user, api_key):
    by_key = bearer_client(api_key)
    response = by_key.post("/api/v1/keys/", {"name": "another"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "api_key_not_allowed"
    assert by_key.get("/api/v1/keys/").status_code == 403
    assert APIKey.objects.count() == 1

    by_jwt = bearer_client(obtain_tokens()["access"])
    assert by_jwt.post("/api/v1/keys/", {"name": "another"}, format="json").status_code == 201
    assert len(by_jwt.get("/api/v1/keys/").json()) == 2


def test_a_name_is_required(user):
    response = session_client(user).post("/api/v1/keys/", {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "name" in response.json()["error"]["fields"]
