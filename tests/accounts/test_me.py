import pytest
from rest_framework.test import APIClient

from .conftest import bearer_client, obtain_tokens, session_client

pytestmark = pytest.mark.django_db


def test_me_is_the_authenticated_user_by_any_means(user, api_key):
    user.email = "alice@example.com"
    user.save(update_fields=["email"])
    expected = {
        "id": user.pk,
        "username": "alice",
        "email": "alice@example.com",
        "is_staff": False,
        "date_joined": user.date_joined.isoformat().replace("+00:00", "Z"),
    }

    def profile(client) -> dict:  # usage_today and quota: tests/accounts/test_usage.py
        return {key: value for key, value in client.get("/api/v1/me/").json().items() if key in expected}

    assert profile(session_client(user)) == expected
    assert profile(bearer_client(obtain_tokens()["access"])) == expected
    assert profile(bearer_client(api_key)) == expected


def test_me_tells_staff_apart(staff):
    assert session_client(staff).get("/api/v1/me/").json()["is_staff"] is True


def test_me_needs_authentication(db):
    response = APIClient().get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
