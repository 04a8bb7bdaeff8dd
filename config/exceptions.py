"""One error shape for the whole API (DESIGN.md): ``{"error": {"code", "detail", "fields"?}}``."""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ParleyError(Exception):
    """An error a user can cause, with a stable ``code`` and an HTTP status.

    Raised by services; the API turns it into the error shape, the WebSocket into an ``error`` event.
    """

    code = "error"
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after  # seconds, sent as the Retry-After header
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


def _first_message(data) -> str:
    if isinstance(data, list) and data:
        return _first_message(data[0])
    if isinstance(data, dict) and data:
        key, value = next(iter(data.items()))
        message = _first_message(value)
        return message if key == "non_field_errors" else f"{key}: {message}"
    return str(data)


def api_exception_handler(exc, context):
    """Render DRF and Parley exceptions as the API error shape; leave others to a 500."""
    if isinstance(exc, ParleyError):
        response = Response({"error": {"code": exc.code, "detail": exc.detail}}, status=exc.status_code)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        error = {"code": "invalid", "detail": _first_message(exc.detail), "fields": exc.detail}
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        error = {"code": codes if isinstance(codes, str) else "error", "detail": _first_message(response.data)}
    response.data = {"error": error}
    return response
