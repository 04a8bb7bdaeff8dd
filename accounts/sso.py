"""Single sign-on through OpenID Connect providers, on django-allauth's ``openid_connect`` provider.

Each provider of ``OIDC_PROVIDERS`` gets a "Sign in with <name>" button on ``/login/``, which POSTs
to ``/accounts/oidc/<id>/login/``: django-allauth sends the browser to the provider's authorization
endpoint (from its discovery document) with a state kept in the session and a PKCE challenge
(S256), and on the way back checks the state (once: a replayed callback fails), exchanges the code,
reads the userinfo and the ID token. Here the ID token's signature is always checked against the
provider's published keys (django-allauth skips it for a token fetched over a direct connection,
which the OpenID Connect spec allows; Parley does not), with its issuer, audience and expiry.

At every sign-in the user's groups become those of the ``OIDC_GROUPS_CLAIM`` claim, and their
staff flag follows ``OIDC_STAFF_GROUP`` (:func:`accounts.services.user_sso_sync`). A person seen for
the first time gets an account unless ``OIDC_AUTO_CREATE`` is off. Every refusal (a bad token, a
replayed or forged state, a provider that is down, a closed sign-up, an inactive account) shows a
page saying why, logs a warning and records ``auth.sso_failed``; no account is created.
"""

from __future__ import annotations

import logging

import jwt
from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.signals import user_logged_in
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.helpers import render_authentication_error
from allauth.socialaccount.internal import jwtkit
from allauth.socialaccount.models import SocialApp
from allauth.socialaccount.providers.oauth2.client import OAuth2Error
from allauth.socialaccount.providers.oauth2.views import OAuth2CallbackView, OAuth2LoginView
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.conf import settings
from django.dispatch import receiver
from django.http import Http404
from django.shortcuts import render
from requests import RequestException

from .models import User
from .services import audit_record, user_sso_sync

logger = logging.getLogger(__name__)


def sso_providers() -> list[dict]:
    """Return the configured providers, for the login page: ``[{"id", "name"}]``, in ``OIDC_PROVIDERS`` order.

    Read from the settings only: the page never contacts a provider, so it renders (and local
    logins work) while a provider is down.
    """
    apps = settings.SOCIALACCOUNT_PROVIDERS.get("openid_connect", {}).get("APPS", [])
    return [{"id": app["provider_id"], "name": app.get("name") or app["provider_id"]} for app in apps]


class VerifyingOIDCAdapter(OpenIDConnectOAuth2Adapter):
    """django-allauth's OpenID Connect adapter, checking the ID token's signature every time."""

    def _decode_id_token(self, app: SocialApp, id_token: str) -> dict:
        try:
            return jwtkit.verify_and_decode(
                credential=id_token,
                keys_url=self.openid_config["jwks_uri"],
                issuer=self.openid_config["issuer"],
                audience=app.client_id,
                lookup_kid=jwtkit.lookup_kid_jwk,
                verify_signature=True,
            )
        except (KeyError, ValueError, TypeError, jwt.PyJWTError) as exc:
            # An unsigned token ("alg": "none") has no key id: refused like a bad signature.
            raise OAuth2Error("Invalid id_token") from exc


def _run(view_class, request, provider_id: str):
    """Run django-allauth's ``view_class`` with :class:`VerifyingOIDCAdapter` for provider ``provider_id``.

    404 for an unknown provider. A provider that cannot be reached (its discovery document is read
    before django-allauth's own error handling starts) gets the refusal page, not a 500.
    """
    adapter = VerifyingOIDCAdapter(request, provider_id)
    try:
        return view_class.adapter_view(adapter)(request)
    except SocialApp.DoesNotExist:
        raise Http404("No such sign-in provider.") from None
    except RequestException as exc:
        return render_authentication_error(request, adapter.get_provider(), exception=exc)


def oidc_login(request, provider_id: str):
    """``POST /accounts/oidc/<provider_id>/login/``: start a sign-in with that provider (a GET asks to confirm)."""
    return _run(OAuth2LoginView, request, provider_id)


def oidc_callback(request, provider_id: str):
    """``GET /accounts/oidc/<provider_id>/login/callback/``: where the provider sends the browser back."""
    return _run(OAuth2CallbackView, request, provider_id)


def _refuse(request, *, provider: str, reason: str, message: str, status: int = 403):
    """Log and audit a refused sign-in, and answer with a page that says ``message``."""
    logger.warning("Single sign-on with %s refused: %s", provider or "?", reason)
    audit_record(
        action="auth.sso_failed",
        target_type=User._meta.label_lower,
        changes={"provider": provider, "reason": reason},
        request=request,
    )
    response = render(request, "registration/sso_error.html", {"message": message}, status=status)
    raise ImmediateHttpResponse(response)


def _provider_label(provider) -> tuple[str, str]:
    """Return ``(id, name)`` of an allauth provider (or None)."""
    if provider is None:
        return "", "the identity provider"
    app = getattr(provider, "app", None)
    return (getattr(app, "provider_id", "") or provider.id), (getattr(app, "name", "") or provider.name)


def sso_claims(extra_data: dict) -> dict:
    """Return the claims of a sign-in: the ID token's, overlaid with the userinfo's (allauth keeps both)."""
    if "userinfo" in extra_data or "id_token" in extra_data:
        return {**(extra_data.get("id_token") or {}), **(extra_data.get("userinfo") or {})}
    return dict(extra_data)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Parley's rules for single sign-on: who may come in, and the page shown when they may not."""

    def pre_social_login(self, request, sociallogin) -> None:
        provider_id, name = _provider_label(sociallogin.provider if hasattr(sociallogin, "provider") else None)
        if sociallogin.is_existing:
            if not sociallogin.user.is_active:
                _refuse(
                    request,
                    provider=provider_id,
                    reason=f"account {sociallogin.user.get_username()!r} is inactive",
                    message="Your account is deactivated. Ask an operator to reactivate it.",
                )
            return
        if not settings.OIDC_AUTO_CREATE:
            _refuse(
                request,
                provider=provider_id,
                reason=f"no account for subject {sociallogin.account.uid!r} and OIDC_AUTO_CREATE is off",
                message=f"You signed in with {name}, but there is no Parley account for you and new accounts "
                "are not created automatically here. Ask an operator for access.",
            )

    def is_open_for_signup(self, request, sociallogin) -> bool:
        return settings.OIDC_AUTO_CREATE

    def on_authentication_error(self, request, provider, error=None, exception=None, extra_context=None):
        provider_id, name = _provider_label(provider)
        no_state = exception is None and "state_id" in (extra_context or {})
        if no_state:
            detail = "unknown, expired or already used state"
        elif exception is not None:
            cause = exception.__cause__
            detail = f"{type(exception).__name__}: {exception}" + (f" ({cause})" if cause else "")
        else:
            detail = f"provider answered with error {request.GET.get('error', error)!r}"
        _refuse(
            request,
            provider=provider_id,
            reason=detail[:300],
            message=_failure_message(name, error, exception, no_state=no_state),
            status=400,
        )


def _failure_message(name: str, error, exception, *, no_state: bool = False) -> str:
    """Return what the person is told when a sign-in with provider ``name`` failed."""
    text = str(exception or "").lower()
    if str(error) == "cancelled":
        return f"The sign-in with {name} was cancelled."
    if no_state or "state" in text:
        return (
            f"This sign-in with {name} was not started here, expired, or was already used. "
            "Start again from the login page."
        )
    if isinstance(exception, RequestException):
        return f"{name} cannot be reached right now. Try again later."
    if "id_token" in text:
        return f"{name} sent an identity token that Parley cannot trust (signature, issuer, audience or expiry)."
    return f"The sign-in with {name} failed. Try again, or ask an operator."


class AccountAdapter(DefaultAccountAdapter):
    """django-allauth's own sign-up and password pages are not Parley's: its local sign-up stays closed."""

    def is_open_for_signup(self, request) -> bool:
        return False


@receiver(user_logged_in, dispatch_uid="accounts.sso_sync")
def sso_sync_on_login(sender, request, user: User, sociallogin=None, **kwargs) -> None:
    """At every single-sign-on login: the user's groups and staff flag from the provider's claims."""
    if sociallogin is None or not settings.OIDC_GROUPS_CLAIM:
        return
    claims = sso_claims(sociallogin.account.extra_data or {})
    groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
    if isinstance(groups, str):
        groups = [groups]
    staff = (settings.OIDC_STAFF_GROUP in groups) if settings.OIDC_STAFF_GROUP else None
    user_sso_sync(user=user, groups=list(groups), staff=staff, provider=sociallogin.account.provider)
