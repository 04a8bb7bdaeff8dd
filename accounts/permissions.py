"""DRF permission policies for accounts."""

from rest_framework.permissions import BasePermission

from .models import APIKey


class IsNotAPIKey(BasePermission):
    """Refuse requests authenticated by an API key (403 ``api_key_not_allowed``).

    Managing keys needs a login (session or JWT): a leaked key must not be able to mint new keys
    that outlive its revocation.
    """

    message = "API keys cannot manage API keys: log in or use a JWT."
    code = "api_key_not_allowed"

    def has_permission(self, request, view) -> bool:
        return not isinstance(request.auth, APIKey)
