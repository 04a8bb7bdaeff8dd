from io import StringIO

import pytest
from django.core.management import call_command

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
