"""Login forms of the web UI and the admin, throttled like the token endpoint (issue 20, item 6)."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from .throttling import client_ip, login_attempt, login_refusal

LOCKOUT_MESSAGE = "Too many login attempts. Try again in %(seconds)d seconds."


class ThrottledLoginMixin:
    """Count each login attempt, per client IP and per account name (``RATE_LIMIT_LOGIN``), before the password.

    Over the rate the attempt is refused, right password or not, with :data:`LOCKOUT_MESSAGE`: the
    same words, and the same count, whether or not the account exists. ``retry_after`` (seconds)
    is set on the form then, for :func:`accounts.views.lockout_status`.
    """

    retry_after: int | None = None

    def clean(self):
        username = (self.cleaned_data.get("username") or "").strip()
        refused = login_refusal(login_attempt(ip=client_ip(self.request), username=username))
        if refused is not None:
            self.retry_after = refused.reset
            raise forms.ValidationError(LOCKOUT_MESSAGE, code="throttled", params={"seconds": refused.reset})
        return super().clean()


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """``/login/``."""


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """``/admin/login/`` (``admin.site.login_form``)."""
