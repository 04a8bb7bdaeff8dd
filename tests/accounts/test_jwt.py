"""JWT: obtain, refresh, use, and the login throttle."""

import pytest
from rest_framework.test import APIClient

from conftest import make_user

from .conftest import bearer_client, obtain_tokens

pytestmark = pytest.mark.django_db


def test_obtain_a_pair_and_use_the_access_token_on_conversations(user, local_model):
    tokens = obtain_tokens()
    assert set(tokens) == {"access", "refresh"}
    client = bearer_client(tokens["access"])

    # No CSRF token needed: a Bearer token is not ambient like a cookie.
    created = client.post("/api/v1/conversations/", {"title": "Over JWT"}, format="json")
    assert created.status_code == 201
    listed = client.get("/api/v1/conversations/")
    assert listed.status_code == 200
    assert [c["title"] for c in listed.json()["results"]] == ["Over JWT"]


def test_refresh_gives_a_working_access_token(user, local_model):
    refresh = obtain_tokens()["refresh"]
    response = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert response.status_code == 200
    access = response.json()["access"]
    assert bearer_client(access).get("/api/v1/me/").json()["username"] == "alice"


def test_changing_the_password_ends_earlier_tokens(user):
    tokens = obtain_tokens()
    user.set_password("a new long passphrase")
    user.save(update_fields=["password"])
    assert bearer_client(tokens["access"]).get("/api/v1/me/").status_code == 401
    # The refresh token still mints access tokens, but they carry the old password's hash.
    refreshed = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    assert bearer_client(refreshed.json()["access"]).get("/api/v1/me/").status_code == 401
    fresh = obtain_tokens(password="a new long passphrase")
    assert bearer_client(fresh["access"]).get("/api/v1/me/").status_code == 200


def test_wrong_password_is_a_401_in_the_error_shape(user):
    response = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "wrong"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "no_active_account"


def test_inactive_users_get_no_token(user):
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "alice", "password": "correct horse battery"}, format="json"
    )
    assert response.status_code == 401


def test_a_bad_or_misused_token_is_a_401_with_its_code(user):
    tokens = obtain_tokens()
    response = bearer_client("not.a.jwt").get("/api/v1/conversations/")
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "token_not_valid", "detail": response.json()["error"]["detail"]}}
    assert response.json()["error"]["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")

    # A refresh token is not an access token, and the other way round.
    assert bearer_client(tokens["refresh"]).get("/api/v1/me/").status_code == 401
    response = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["access"]}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_not_valid"


def test_missing_credentials_are_a_400_naming_the_field(db):
    response = APIClient().post("/api/v1/auth/token/", {"username": "alice"}, format="json")
    assert response.status_code == 400
    assert "password" in response.json()["error"]["fields"]


def test_login_attempts_are_throttled_per_ip_with_retry_after(user, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"login": "3/min"}}
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    wrong = {"username": "alice", "password": "guess"}
    for _ in range(3):
        assert client.post("/api/v1/auth/token/", wrong, format="json").status_code == 401

    # The right password does not get through either once the budget is spent.
    right = {"username": "alice", "password": "correct horse battery"}
    response = client.post("/api/v1/auth/token/", right, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60

    # X-Forwarded-For is not trusted without a proxy in front (TRUSTED_PROXY_COUNT=0).
    spoofed = client.post("/api/v1/auth/token/", right, format="json", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert spoofed.status_code == 429

    # Another address has its own budget (for another account: alice's own is spent too, whatever
    # the address; see tests/accounts/test_login_throttling.py).
    make_user("bob")
    bob = {"username": "bob", "password": "correct horse battery"}
    other = APIClient(REMOTE_ADDR="203.0.113.8").post("/api/v1/auth/token/", bob, format="json")
    assert other.status_code == 200


def test_the_default_login_rate_is_ten_a_minute(user):
    client = APIClient(REMOTE_ADDR="203.0.113.9")
    wrong = {"username": "alice", "password": "guess"}
    statuses = [client.post("/api/v1/auth/token/", wrong, format="json").status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]


def test_refreshing_the_token_of_a_deleted_user_is_a_401_not_a_500(user):
    refresh = obtain_tokens()["refresh"]
    user.delete()
    response = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_not_valid"
