"""Every way to log in is throttled alike (issue 20, item 6): per client IP and per account, RATE_LIMIT_LOGIN.

Before, ``/login/`` and ``/admin/login/`` took 30 wrong passwords in 24 s, all 200, while the token
endpoint allowed 10 a minute per IP.
"""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.forms import LOCKOUT_MESSAGE
from conftest import make_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # conftest.make_user's


@pytest.fixture
def three_a_minute(settings):
    """RATE_LIMIT_LOGIN of 3 a minute, and one trusted proxy so X-Forwarded-For names the client."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"login": "3/min"},
        "NUM_PROXIES": 1,
    }


def log_in(path: str, username: str, password: str, ip: str = "203.0.113.1"):
    return Client().post(path, {"username": username, "password": password}, HTTP_X_FORWARDED_FOR=ip)


def locked_out(response) -> bool:
    return response.status_code == 429 and "Too many login attempts" in response.content.decode()


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_after_the_limit_from_one_ip_even_the_right_password_is_refused(path, three_a_minute):
    make_user("alice", is_staff=True)
    wrong = [log_in(path, "alice", "guess") for _ in range(3)]
    assert [r.status_code for r in wrong] == [200, 200, 200]  # the form again, with an error
    refused = log_in(path, "alice", PASSWORD)
    assert locked_out(refused)
    assert 0 < int(refused["Retry-After"]) <= 60
    assert "_auth_user_id" not in refused.wsgi_request.session
    # Another address is not locked out of another account.
    make_user("bob", is_staff=True)
    assert log_in(path, "bob", PASSWORD, ip="198.51.100.9").status_code == 302


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_guesses_at_one_account_from_many_ips_are_limited_too(path, three_a_minute):
    make_user("alice", is_staff=True)
    for i in range(3):
        assert log_in(path, "alice", "guess", ip=f"198.51.100.{i}").status_code == 200
    assert locked_out(log_in(path, "alice", PASSWORD, ip="198.51.100.200"))


def test_a_lockout_does_not_tell_whether_the_account_exists(three_a_minute):
    make_user("alice")
    answers = {}
    for username, ip in [("alice", "198.51.100.1"), ("nobody", "198.51.100.2")]:
        for _ in range(3):
            log_in("/login/", username, "guess", ip=ip)
        answers[username] = log_in("/login/", username, "guess", ip=ip)
    assert all(locked_out(r) for r in answers.values())
    messages = {name: r.context["form"].non_field_errors() for name, r in answers.items()}
    assert messages["alice"] == messages["nobody"]
    assert LOCKOUT_MESSAGE.split("%")[0] in messages["alice"][0]


def test_the_token_endpoint_limits_each_account_whatever_the_ip(three_a_minute):
    make_user("alice")

    def token(ip: str):
        return APIClient().post(
            "/api/v1/auth/token/", {"username": "alice", "password": PASSWORD}, format="json", HTTP_X_FORWARDED_FOR=ip
        )

    assert [token(f"198.51.100.{i}").status_code for i in range(4)] == [200, 200, 200, 429]
