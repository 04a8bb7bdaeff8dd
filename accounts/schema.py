"""OpenAPI (drf-spectacular) extensions of accounts; imported by ``AccountsConfig.ready`` to register them."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class APIKeyScheme(OpenApiAuthenticationExtension):
    """Document :class:`accounts.authentication.APIKeyAuthentication` as a Bearer scheme."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "pk_...",
            "description": "A per-user API key (`POST /api/v1/keys/`), sent as `Authorization: Bearer pk_...`.",
        }
