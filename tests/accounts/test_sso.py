"""Single sign-on against a real OpenID Connect provider (npm's oidc-provider, tests/oidc_provider.py).

Parley runs in this process (Django's test client); the provider runs in its own, on loopback, and
Parley talks to it over HTTP as it would to Keycloak: discovery, the token endpoint, userinfo, JWKS.
"""

import logging

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from accounts.models import AuditEvent, User
from conftest import make_user
from inference.models import ModelConfig
from tests.oidc_provider import OIDCProvider, provider_settings, sign_in_code_flow
from tests.servers import free_port

CALLBACK = "http://testserver/accounts/oidc/testidp/login/callback/"


@pytest.fixture(scope="module")
def idp():
    provider = OIDCProvider(redirect_uris=[CALLBACK])
    yield provider
    provider.stop()


@pytest.fixture(autouse=True)
def sso(settings, idp, db):
    idp.tamper("")
    settings.SOCIALACCOUNT_PROVIDERS = provider_settings(idp)
    settings.OIDC_AUTO_CREATE = True
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.OIDC_STAFF_GROUP = "parley-admins"
    settings.LOCAL_LOGIN_ENABLED = True
    return settings


@pytest.fixture
def eng_model(local_model) -> ModelConfig:
    """A second model, open only to the group "eng"."""
    config = ModelConfig.objects.create(
        slug="eng-only", display_name="Engineering model", model=local_model.model, provider=local_model.provider
    )
    config.groups.add(Group.objects.get_or_create(name="eng")[0])
    return config


def sso_user(login: str) -> User:
    return User.objects.get(socialaccount__uid=login)


def model_slugs(client) -> list[str]:
    return [row["slug"] for row in client.get("/api/v1/models/").json()]


def test_the_login_page_offers_each_provider_and_works_without_contacting_it(settings):
    settings.SOCIALACCOUNT_PROVIDERS = provider_settings_down()
    page = Client().get("/login/")
    assert page.status_code == 200
    assert "Sign in with Test IdP" in page.content.decode()
    assert 'name="password"' in page.content.decode()  # local logins still on


def provider_settings_down() -> dict:
    class Down:
        issuer = f"http://127.0.0.1:{free_port()}"

    return provider_settings(Down())


def test_a_first_sign_in_creates_the_user_with_the_groups_of_the_claim(idp, eng_model):
    idp.set_account("carol", email="carol@example.com", name="Carol", groups=["eng", "writers"])
    client = Client()
    response = sign_in_code_flow(client, idp, "carol")

    assert response.status_code == 302 and response["Location"] == "/"
    carol = sso_user("carol")
    assert carol.username == "carol" and carol.email == "carol@example.com"
    assert set(carol.groups.values_list("name", flat=True)) == {"eng", "writers"}
    assert not carol.is_staff
    assert client.get("/").status_code == 200  # signed in
    assert "eng-only" in model_slugs(client)
    assert AuditEvent.objects.filter(action="user.sso_sync", target_id=str(carol.pk)).exists()


def test_a_group_taken_away_at_the_provider_is_lost_at_the_next_sign_in_on_every_session(idp, eng_model):
    idp.set_account("carol", groups=["eng"])
    first = Client()
    sign_in_code_flow(first, idp, "carol")
    assert "eng-only" in model_slugs(first)

    idp.set_account("carol", groups=["sales"])
    second = Client()
    assert sign_in_code_flow(second, idp, "carol").status_code == 302

    assert User.objects.filter(socialaccount__uid="carol").count() == 1  # the same account, not a new one
    assert set(sso_user("carol").groups.values_list("name", flat=True)) == {"sales"}
    # The session opened before the change follows it at its next request.
    assert "eng-only" not in model_slugs(first)
    assert "eng-only" not in model_slugs(second)
    assert "smollm2-135m" in model_slugs(first)


def test_the_staff_claim_value_makes_staff_and_its_absence_takes_it_back(idp):
    idp.set_account("dora", groups=["parley-admins"])
    sign_in_code_flow(Client(), idp, "dora")
    assert sso_user("dora").is_staff

    idp.set_account("dora", groups=[])
    sign_in_code_flow(Client(), idp, "dora")
    dora = sso_user("dora")
    assert not dora.is_staff and not dora.groups.exists()


def test_with_auto_create_off_a_new_person_is_refused_and_no_account_is_made(idp, settings, caplog):
    settings.OIDC_AUTO_CREATE = False
    idp.set_account("erin", groups=["eng"])
    with caplog.at_level(logging.WARNING, logger="accounts.sso"):
        response = sign_in_code_flow(Client(), idp, "erin")
    assert response.status_code == 403
    assert "no Parley account for you" in response.content.decode()
    assert not User.objects.filter(username="erin").exists()
    assert "OIDC_AUTO_CREATE is off" in caplog.text
    assert AuditEvent.objects.filter(action="auth.sso_failed").exists()


def test_with_auto_create_off_someone_who_signed_in_before_still_may(idp, settings):
    idp.set_account("fred", groups=[])
    sign_in_code_flow(Client(), idp, "fred")
    settings.OIDC_AUTO_CREATE = False
    assert sign_in_code_flow(Client(), idp, "fred").status_code == 302


@pytest.mark.parametrize("mode", ["wrong_aud", "wrong_iss", "unsigned", "bad_signature"])
def test_an_id_token_parley_cannot_trust_fails_the_sign_in_with_a_message_and_a_log_line(idp, mode, caplog):
    idp.set_account("gus", groups=["eng"])
    idp.tamper(mode)
    client = Client()
    with caplog.at_level(logging.WARNING, logger="accounts.sso"):
        response = sign_in_code_flow(client, idp, "gus")

    assert response.status_code == 400
    assert "identity token that Parley cannot trust" in response.content.decode()
    assert "Single sign-on with testidp refused" in caplog.text
    assert not User.objects.filter(username="gus").exists()
    assert client.get("/api/v1/me/").status_code in (401, 403)  # not signed in
    assert AuditEvent.objects.filter(action="auth.sso_failed").exists()


def test_a_replayed_callback_is_refused(idp):
    idp.set_account("hana", groups=[])
    client = Client()
    first = sign_in_code_flow(client, idp, "hana")
    assert first.status_code == 302

    replay = Client().get(first.callback_url)  # another browser, same code and state
    assert replay.status_code == 400
    assert "was not started here, expired, or was already used" in replay.content.decode()
    again = client.get(first.callback_url)  # the same browser, once more
    assert again.status_code == 400
    assert User.objects.filter(socialaccount__uid="hana").count() == 1


def test_an_unknown_provider_is_not_found():
    assert Client().post("/accounts/oidc/nobody/login/").status_code == 404


def test_a_provider_that_is_down_leaves_local_logins_and_sessions_working(settings):
    settings.SOCIALACCOUNT_PROVIDERS = provider_settings_down()
    make_user("ivy")
    signed_in = Client()
    signed_in.force_login(make_user("jack"))

    response = Client().post("/accounts/oidc/testidp/login/")
    assert response.status_code == 400
    assert "cannot be reached" in response.content.decode()

    local = Client()
    assert local.post("/login/", {"username": "ivy", "password": "correct horse battery"}).status_code == 302
    assert local.get("/").status_code == 200
    assert signed_in.get("/").status_code == 200


def test_with_local_logins_off_passwords_are_refused_everywhere_and_sso_still_works(idp, settings):
    settings.LOCAL_LOGIN_ENABLED = False
    settings.SIGNUP_ENABLED = True  # closed all the same: accounts come from the provider
    make_user("kim")

    page = Client().get("/login/")
    assert 'name="password"' not in page.content.decode() and "Sign in with Test IdP" in page.content.decode()
    browser = Client()
    response = browser.post("/login/", {"username": "kim", "password": "correct horse battery"})
    assert response.status_code == 200 and "Passwords are switched off here" in response.content.decode()
    assert browser.get("/api/v1/me/").status_code in (401, 403)
    token = Client().post(
        "/api/v1/auth/token/", {"username": "kim", "password": "correct horse battery"}, content_type="application/json"
    )
    assert token.status_code == 401
    assert Client().get("/signup/").status_code == 404

    idp.set_account("kim-sso", groups=[])
    assert sign_in_code_flow(Client(), idp, "kim-sso").status_code == 302


def test_a_deactivated_account_cannot_sign_in_again(idp):
    idp.set_account("lena", groups=[])
    sign_in_code_flow(Client(), idp, "lena")
    User.objects.filter(socialaccount__uid="lena").update(is_active=False)

    client = Client()
    response = sign_in_code_flow(client, idp, "lena")
    assert response.status_code == 403 and "Your account is deactivated" in response.content.decode()
    assert client.get("/api/v1/me/").status_code in (401, 403)
