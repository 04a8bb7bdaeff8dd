import pytest
from django.test import Client

from accounts.models import APIKey
from accounts.services import api_key_create
from conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


def test_the_admin_lists_keys_by_prefix_and_never_shows_the_hash(admin_client, user):
    api_key, key = api_key_create(user=user, name="laptop")
    listing = admin_client.get("/admin/accounts/apikey/").content.decode()
    assert api_key.prefix in listing and "laptop" in listing
    detail = admin_client.get(f"/admin/accounts/apikey/{api_key.pk}/change/").content.decode()
    for page in (listing, detail):
        assert api_key.key_hash not in page
        assert key not in page
    assert admin_client.get("/admin/accounts/apikey/add/").status_code == 403


def test_the_revoke_action_revokes(admin_client, user):
    keep, _ = api_key_create(user=user, name="keep")
    drop, _ = api_key_create(user=user, name="drop")
    response = admin_client.post(
        "/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [str(drop.pk)]}, follow=True
    )
    assert response.status_code == 200
    assert "Revoked 1 API key(s)." in response.content.decode()
    assert APIKey.objects.get(pk=drop.pk).revoked_at is not None
    assert APIKey.objects.get(pk=keep.pk).revoked_at is None
