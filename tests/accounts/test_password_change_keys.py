"""A password change revokes the user's API keys (issue 20, problem 11).

Before, a stolen session could mint an API key that kept working after the victim reset the password.
"""

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client
from django.urls import reverse

from accounts.services import api_key_create

from .conftest import PASSWORD, bearer_client

pytestmark = pytest.mark.django_db(transaction=True)

NEW = "a brand new passphrase 42"


def change_password_on_the_page(user) -> Client:
    client = Client()
    client.force_login(user)
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("password_change_done")
    return response


def test_changing_the_password_revokes_every_api_key_and_says_so(user):
    _, stolen = api_key_create(user=user, name="minted by the thief")
    assert bearer_client(stolen).get("/api/v1/me/").status_code == 200

    page = change_password_on_the_page(user).content.decode()

    assert bearer_client(stolen).get("/api/v1/me/").status_code == 401
    assert "Your API keys were revoked" in page
    assert "minted by the thief" not in page
    assert "no API keys that work" in page


def test_with_revocation_off_the_page_lists_the_keys_that_still_work(user, settings):
    settings.API_KEYS_REVOKE_ON_PASSWORD_CHANGE = False
    api_key, key = api_key_create(user=user, name="ci runner")

    page = change_password_on_the_page(user).content.decode()

    assert bearer_client(key).get("/api/v1/me/").status_code == 200
    assert "Your API keys were revoked" not in page
    assert "ci runner" in page and api_key.prefix in page


def test_an_operator_resetting_the_password_in_a_script_revokes_the_keys_too(user):
    _, key = api_key_create(user=user, name="laptop")
    user.set_password(NEW)
    user.save()
    assert bearer_client(key).get("/api/v1/me/").status_code == 401


def test_a_hash_upgrade_on_login_is_no_password_change(user, settings):
    # An older hasher's hash, as after a Django upgrade: the next login re-hashes the same password.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    type(user).objects.filter(pk=user.pk).update(password=make_password(PASSWORD, hasher="md5"))
    user.refresh_from_db()
    _, key = api_key_create(user=user, name="laptop")

    assert user.check_password(PASSWORD)  # saves the PBKDF2 hash
    user.refresh_from_db()
    assert user.password.startswith("pbkdf2_sha256$")
    assert bearer_client(key).get("/api/v1/me/").status_code == 200
