"""Account pages of the web UI: sign up (switchable by ``SIGNUP_ENABLED``) and log in.

Password change and logout are Django's own views (``config/urls.py``); logout is POST only.
"""

from functools import wraps

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters

from .forms import LoginForm
from .selectors import api_key_list
from .services import audit_record
from .sso import sso_providers
from .throttling import client_ip, signup_attempt

SIGNUP_LOCKOUT_MESSAGE = "Too many sign-ups from your address. Try again in %(seconds)d seconds."


class SignupForm(UserCreationForm):
    """Username, optional email and a password checked by ``AUTH_PASSWORD_VALIDATORS``."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")


def lockout_status(view):
    """Wrap a login view: answer 429 with ``Retry-After`` when its form refused a throttled attempt.

    The page is the login form as usual, with the lockout message (see :mod:`accounts.forms`).
    """

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        retry_after = getattr(form, "retry_after", None)
        if retry_after:
            response.status_code = 429
            response["Retry-After"] = str(retry_after)
        return response

    return wrapped


class LoginView(auth_views.LoginView):
    """Django's login view, throttled (:class:`accounts.forms.LoginForm`), with a "Sign in with <name>"
    button per single-sign-on provider; the password form only while ``LOCAL_LOGIN_ENABLED``, and
    a link to sign-up when that is on."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True
    authentication_form = LoginForm

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            signup_enabled=signup_open(),
            local_login_enabled=settings.LOCAL_LOGIN_ENABLED,
            sso_providers=sso_providers(),
            **kwargs,
        )


def signup_open() -> bool:
    """Return whether ``/signup/`` takes new accounts: ``SIGNUP_ENABLED``, and local passwords on."""
    return settings.SIGNUP_ENABLED and settings.LOCAL_LOGIN_ENABLED


@sensitive_post_parameters("password1", "password2")
def signup(request):
    """Create an account and sign in. 404 when ``SIGNUP_ENABLED`` is off (the operator creates accounts),
    or ``LOCAL_LOGIN_ENABLED`` is (accounts come from single sign-on).

    With ``SIGNUP_APPROVAL`` the account is created inactive and a page says it awaits an operator's
    approval (ticking Active in the admin); it cannot log in until then.

    Submissions are limited per client IP (``RATE_LIMIT_SIGNUP``): over it the form is shown again
    with :data:`SIGNUP_LOCKOUT_MESSAGE`, status 429 and ``Retry-After`` (seconds).
    """
    if not signup_open():
        raise Http404("Sign-up is switched off on this server.")
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        attempt = signup_attempt(ip=client_ip(request))
        if attempt is not None and not attempt.allowed:
            form.add_error(None, SIGNUP_LOCKOUT_MESSAGE % {"seconds": attempt.reset})
            response = render(request, "registration/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(attempt.reset)
            return response
    if request.method == "POST" and form.is_valid():
        if settings.SIGNUP_APPROVAL:
            # The account waits, inactive, until an operator ticks Active in the admin.
            user = form.save(commit=False)
            user.is_active = False
            user.save()
            audit_record(action="user.create", actor=user, target=user, changes={"signup": True, "is_active": False})
            return render(request, "registration/signup_pending.html", {"username": user.username})
        user = form.save()
        audit_record(action="user.create", actor=user, target=user, changes={"signup": True, "is_active": True})
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    """Django's page after a password change, with a notice about the user's API keys.

    With ``API_KEYS_REVOKE_ON_PASSWORD_CHANGE`` on, the keys were revoked with the change; either
    way the page lists the keys that still work, so a key the user does not recognise can go.
    """

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            keys_revoked=settings.API_KEYS_REVOKE_ON_PASSWORD_CHANGE,
            live_keys=list(api_key_list(user=self.request.user)),
            **kwargs,
        )
