"""MEMORY_DEFAULT_ENABLED decides memory for every new user, however the account is made; existing users keep theirs."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import User
from conftest import make_user

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase"  # noqa: S105 - test accounts


def by_create_user() -> User:
    return make_user("scripted")


def by_signup(settings) -> User:
    settings.SIGNUP_ENABLED = True
    response = Client().post(
        "/signup/", {"username": "newcomer", "email": "", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 302, response.content
    return User.objects.get(username="newcomer")


def by_ensure_operator(monkeypatch) -> User:
    """The operator ``make run`` creates on a fresh install (generated password). Call before any superuser exists."""
    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    call_command("ensure_operator", stdout=StringIO())
    return User.objects.get(username="admin")


def by_createsuperuser(monkeypatch) -> User:
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command("createsuperuser", interactive=False, username="root2", email="root2@example.com", verbosity=0)
    return User.objects.get(username="root2")


def by_admin() -> User:
    operator = User.objects.create_superuser(username="boss", password=PASSWORD)
    client = Client()
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "added",
            "usable_password": "true",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "api_keys-TOTAL_FORMS": "0",  # the (empty) API keys inline's management form
            "api_keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content
    return User.objects.get(username="added")


@pytest.mark.parametrize("enabled", [False, True])
def test_every_way_of_creating_a_user_follows_the_setting(enabled, settings, monkeypatch):
    settings.MEMORY_DEFAULT_ENABLED = enabled
    users = [
        by_create_user(),
        by_signup(settings),
        by_ensure_operator(monkeypatch),
        by_createsuperuser(monkeypatch),
        by_admin(),
    ]
    assert {user.username: User.objects.get(pk=user.pk).memory_enabled for user in users} == {
        user.username: enabled for user in users
    }


def test_memory_is_off_for_new_users_unless_the_operator_says_otherwise():
    assert make_user("fresh").memory_enabled is False


def test_existing_users_keep_their_choice_when_the_setting_changes(settings):
    settings.MEMORY_DEFAULT_ENABLED = False
    quiet = make_user("quiet")
    settings.MEMORY_DEFAULT_ENABLED = True
    keen = make_user("keen")
    settings.MEMORY_DEFAULT_ENABLED = False
    quiet.refresh_from_db()
    keen.refresh_from_db()
    assert (quiet.memory_enabled, keen.memory_enabled) == (False, True)
