"""Authentication backends: the switch that turns local passwords off (``LOCAL_LOGIN_ENABLED``)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied

logger = logging.getLogger(__name__)


class LocalLoginSwitch:
    """First in ``AUTHENTICATION_BACKENDS``: refuse every password while ``LOCAL_LOGIN_ENABLED`` is off.

    Django stops at a backend that raises :class:`PermissionDenied`, so no later backend (Django's
    ``ModelBackend``) checks the password: ``/login/``, ``/admin/login/`` and the JWT token endpoint
    all refuse it, as a failed login (audited as ``auth.login_failed``). Sign-in is then only through
    single sign-on (:mod:`accounts.sso`). While on, it steps aside (returns None). It has no
    ``get_user``: sessions are Django's ``ModelBackend``'s, so switching it never ends one.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if password is not None and not settings.LOCAL_LOGIN_ENABLED:
            logger.info("Password login refused for %r: LOCAL_LOGIN_ENABLED is off", str(username)[:150])
            raise PermissionDenied("Local passwords are switched off; sign in with single sign-on.")
        return None
