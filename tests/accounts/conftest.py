import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import api_key_create
from conftest import make_user


@pytest.fixture(autouse=True)
def fresh_login_throttle():
    """Forget earlier token requests: throttle counters live in Redis and outlive a test."""
    cache.delete_pattern("throttle_login_*")
    yield
    cache.delete_pattern("throttle_login_*")


@pytest.fixture
def staff(db) -> User:
    return make_user("stafford", is_staff=True)


def session_client(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def bearer_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


PASSWORD = "correct horse battery"  # conftest.make_user's


def obtain_tokens(username: str = "alice", password: str = PASSWORD) -> dict:
    response = APIClient().post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def api_key(user) -> str:
    return api_key_create(user=user, name="script")[1]
