"""Single sign-on in a real browser, under the Content-Security-Policy, against a real OpenID Connect
provider (npm's oidc-provider): sign in, see the group's model, lose it when the group is taken away."""

from __future__ import annotations

import os
import sys

import pytest
from django.contrib.auth.models import Group

from inference.models import ModelConfig
from inference.registry import model_config_access_set
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OIDCProvider
from tests.servers import free_port, stop_process

from .conftest import daphne_env, open_page, start_daphne

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def sso_server(chromium, django_db_setup, django_db_blocker):
    """``(base_url, provider)``: a Daphne process with single sign-on through a live provider."""
    from django.db import connection

    port = free_port()
    provider = OIDCProvider(redirect_uris=[f"http://127.0.0.1:{port}/accounts/oidc/testidp/login/callback/"])
    env = daphne_env(connection.settings_dict["NAME"])
    env.update(
        OIDC_PROVIDERS="testidp",
        OIDC_TESTIDP_NAME="Test IdP",
        OIDC_TESTIDP_DISCOVERY_URL=provider.issuer,
        OIDC_TESTIDP_CLIENT_ID=CLIENT_ID,
        OIDC_TESTIDP_CLIENT_SECRET=CLIENT_SECRET,
        OIDC_TESTIDP_SCOPES="openid,email,profile,groups",
    )
    process, base_url, log = start_daphne(env, port=port)
    try:
        yield base_url, provider
    finally:
        stop_process(process)
        provider.stop()
        if os.environ.get("PARLEY_UI_SERVER_LOG"):
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-5000:])
        log.close()


def sign_in(chromium, base_url: str, login: str):
    """Sign in as ``login`` through the login page's button and the provider's own login page."""
    page = open_page(chromium, bypass_csp=False)
    page.goto(f"{base_url}/login/")
    page.get_by_role("button", name="Sign in with Test IdP").click()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.wait_for_url(f"{base_url}/")
    return page


def picker(page) -> list[str]:
    return page.locator("#model option").evaluate_all("options => options.map(o => o.value)")


def test_a_user_signs_in_sees_their_groups_model_and_loses_it_with_the_group(chromium, sso_server, local_model):
    base_url, provider = sso_server
    eng = Group.objects.create(name="eng")
    eng_model = ModelConfig.objects.create(
        slug="eng-only", display_name="Engineering model", model=local_model.model, provider=local_model.provider
    )
    model_config_access_set(configs=[eng_model], groups=[eng], mode="set")

    provider.set_account("carol", email="carol@example.com", groups=["eng"])
    page = sign_in(chromium, base_url, "carol")
    assert picker(page) == ["smollm2-135m", "eng-only"]
    page.context.close()

    provider.set_account("carol", email="carol@example.com", groups=[])
    page = sign_in(chromium, base_url, "carol")
    assert picker(page) == ["smollm2-135m"]
    page.context.close()
