from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User

pytestmark = pytest.mark.django_db


def run() -> str:
    out = StringIO()
    call_command("ensure_operator", stdout=out)
    return out.getvalue()


def test_generates_an_operator_once_and_prints_the_password_once(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    output = run()
    password = output.split("with password ")[1].split()[0]
    operator = User.objects.get(is_superuser=True)
    assert operator.username == "admin"
    assert operator.check_password(password)
    assert run() == ""
    assert User.objects.filter(is_superuser=True).count() == 1


def test_uses_the_environment_when_set(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long operator passphrase")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@example.com")
    output = run()
    assert "a long operator passphrase" not in output
    operator = User.objects.get(username="ops")
    assert operator.is_superuser and operator.email == "ops@example.com"
    assert operator.check_password("a long operator passphrase")


def test_a_username_and_password_without_an_email_make_the_operator(monkeypatch):
    """`make run` with DJANGO_SUPERUSER_USERNAME and _PASSWORD only: Django's createsuperuser would stop."""
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long operator passphrase")
    monkeypatch.delenv("DJANGO_SUPERUSER_EMAIL", raising=False)
    assert run() == "Created operator 'ops'.\n"
    operator = User.objects.get(is_superuser=True)
    assert (operator.username, operator.email, operator.is_staff) == ("ops", "", True)
    assert operator.check_password("a long operator passphrase")
    assert run() == ""  # the next start finds it


def test_a_username_the_user_form_refuses_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "no spaces allowed")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long operator passphrase")
    with pytest.raises(CommandError, match="username"):
        run()
    assert not User.objects.exists()
