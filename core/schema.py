"""OpenAPI 3 schema (drf-spectacular): the error shape as a component, on every operation.

``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`` is :class:`AutoSchema`. Served at ``/api/schema/``, with
Swagger UI at ``/api/docs/`` and ReDoc at ``/api/redoc/`` (assets from drf-spectacular-sidecar).
"""

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_found`, `invalid`, `throttled`.")
    detail = serializers.CharField(help_text="What went wrong, for people.")
    fields = serializers.DictField(
        required=False, help_text="Validation errors by field name (code `invalid` only): lists of messages."
    )


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API: `{"error": {"code", "detail", "fields"?}}`, with the HTTP status."""

    error = ErrorBodySerializer()


def _error(status: int, code: str, detail: str, description: str, **extra) -> OpenApiResponse:
    example = OpenApiExample(code, value={"error": {"code": code, "detail": detail, **extra}}, status_codes=[status])
    return OpenApiResponse(ErrorSerializer, description=description, examples=[example])


ERRORS = {
    400: _error(
        400,
        "invalid",
        "title: Ensure this field has no more than 200 characters.",
        "Invalid input or malformed JSON (`parse_error`).",
        fields={"title": ["Ensure this field has no more than 200 characters."]},
    ),
    401: _error(
        401,
        "not_authenticated",
        "Authentication credentials were not provided.",
        "No or invalid credentials (`not_authenticated`, `invalid_api_key`, `token_not_valid`).",
    ),
    403: _error(403, "permission_denied", "You do not have permission to perform this action.", "Not allowed."),
    404: _error(404, "not_found", "Not found.", "No such object, or it belongs to someone else."),
    415: _error(
        415,
        "unsupported_media_type",
        'Unsupported media type "text/plain" in request.',
        "The body is not JSON (or, where documented, a form or multipart upload).",
    ),
    429: _error(
        429,
        "rate_limited",
        "Too many requests: the limit is 600 per window. Try again in 42 s.",
        "Too many requests (`rate_limited`; `throttled` for token requests), or for generating "
        "endpoints too many answers at once (`too_many_generations`) or the daily token quota used up "
        "(`quota_exceeded`, with `resets_at`).",
    ),
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."},
    "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "Requests allowed per window."},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}, "description": "Requests left in this window."},
    "X-RateLimit-Reset": {"schema": {"type": "integer"}, "description": "Seconds until the window resets."},
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, plus the error responses each operation can give, and clear names.

    Added to each operation unless it documents the status itself: 400 for a request body or query
    parameters, 401 and 403 when it needs authentication, 404 when its path has parameters or it
    is paginated (``?page=`` past the end), 415 for a request body, 429 (with ``Retry-After``)
    when it is throttled.
    """

    def get_serializer_name(self, serializer, direction) -> str:
        # Views nest their serializers (HackSoft style): name ``ConversationListApi.InputSerializer``
        # "ConversationListInput" rather than "Input", which every view would share.
        outer, _, inner = type(serializer).__qualname__.rpartition(".")
        if outer:
            return outer.rpartition(".")[2].removesuffix("Api") + inner.removesuffix("Serializer")
        return super().get_serializer_name(serializer, direction)

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        codes = []
        query = {p["name"] for p in self._get_parameters() if p.get("in") == "query"}
        if self.method in ("POST", "PUT", "PATCH") or query:
            codes.append(400)
        if self.view.get_authenticators() and not all(isinstance(p, AllowAny) for p in self.view.get_permissions()):
            codes += [401, 403]
        if "{" in self.path or "page" in query:
            codes.append(404)
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append(415)
        if self.view.get_throttles():
            codes.append(429)
        for code in codes:
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(ERRORS[code], str(code), direction=direction)
                if code == 429:
                    responses[str(code)]["headers"] = RETRY_AFTER
        return responses
