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
    assert session_client(user).get("/api/v1/me/").json() == expected
    assert bearer_client(obtain_tokens()["access"]).get("/api/v1/me/").json() == expected
    assert bearer_client(api_key).get("/api/v1/me/").json() == expected


def test_me_tells_staff_apart(staff):
    assert session_client(staff).get("/api/v1/me/").json()["is_staff"] is True


def test_me_needs_authentication(db):
    response = APIClient().get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
