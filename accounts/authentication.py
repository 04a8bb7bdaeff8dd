"""DRF authentication by per-user API keys: ``Authorization: Bearer pk_...``.

Reusable by any DRF view, e.g. the OpenAI-compatible ``/v1/`` endpoints:
``authentication_classes = [APIKeyAuthentication]``.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from .models import API_KEY_PREFIX, APIKey
from .selectors import api_key_authenticate
from .services import api_key_mark_used


def api_key_check(*, key: str) -> APIKey | None:
    """Return the API key ``key`` (``pk_...``) when it may be used now, marked used, with its user; else None.

    None for an unknown, revoked or expired (``expires_at`` passed) key, or one whose user is
    inactive. The one test of a key that every way in takes: DRF's :class:`APIKeyAuthentication`
    (``/api/v1/``, ``/v1/``) and ``/mcp``.
    Blocking (database).
    """
    api_key = api_key_authenticate(key=key)
    if api_key is None or api_key.is_expired or not api_key.user.is_active:
        return None
    api_key_mark_used(api_key=api_key)
    return api_key


class APIKeyAuthentication(BaseAuthentication):
    """Authenticate a request by an API key sent as a Bearer token.

    Only tokens starting with ``pk_`` are taken; any other Bearer token (a JWT: three dot-separated
    base64url parts, never starting with ``pk_``) or none at all is left to the next class. On
    success ``request.user`` is the key's user and ``request.auth`` the :class:`~accounts.models.APIKey`.
    An unknown, revoked or expired key, or one whose user is inactive, raises ``AuthenticationFailed``
    (401, code ``invalid_api_key``).
    """

    keyword = "Bearer"
    realm = "api"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower().encode():
            return None
        try:
            token = parts[1].decode()
        except UnicodeDecodeError:
            return None
        if not token.startswith(API_KEY_PREFIX):
            return None
        api_key = api_key_check(key=token)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.", code="invalid_api_key")
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        # Being first in DEFAULT_AUTHENTICATION_CLASSES, this header is what turns DRF's
        # "not authenticated" into a 401 (a class without it gets 403).
        return f'{self.keyword} realm="{self.realm}"'
