"""One error shape for the whole API (DESIGN.md): ``{"error": {"code", "detail", "fields"?}}``.

:func:`api_exception_handler` is DRF's ``EXCEPTION_HANDLER``; :func:`bad_request`,
:func:`permission_denied`, :func:`page_not_found` and :func:`server_error` are the URLconf's
``handler400``/``403``/``404``/``500``. The error type itself is :class:`core.errors.ParleyError`.

With PostgreSQL unreachable, every interface answers 503 ``database_unavailable`` with ``Retry-After``
(:func:`core.errors.database_unavailable`) instead of a 500: the API through
:func:`api_exception_handler`, plain Django views through :class:`DatabaseUnavailableMiddleware`
(a short page, or the error shape on API paths), ``/v1`` in OpenAI's shape (inference.gateway), and
WebSockets with an ``error`` frame (core.websocket).
"""

import sys

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from django.utils.html import escape
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .errors import ParleyError, database_unavailable, payload_too_large


def _first_message(data) -> str:
    if isinstance(data, list) and data:
        return _first_message(data[0])
    if isinstance(data, dict) and data:
        key, value = next(iter(data.items()))
        message = _first_message(value)
        # DRF's own errors ({"detail": ...}, e.g. the paginator's "Invalid page.") are not a field's.
        return message if key in ("non_field_errors", "detail") else f"{key}: {message}"
    return str(data)


def api_exception_handler(exc, context):
    """Render DRF and Parley exceptions as the API error shape; leave others to a 500."""
    if isinstance(exc, RequestDataTooBig):
        exc = payload_too_large()
    exc = database_unavailable(exc) or exc
    if isinstance(exc, ParleyError):
        response = Response(
            {"error": {"code": exc.code, "detail": exc.detail, **getattr(exc, "extra", {})}}, status=exc.status_code
        )
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
    elif isinstance(exc.detail, dict) and "detail" in exc.detail:
        # simplejwt's InvalidToken carries {"detail", "code", "messages"}: keep its detail and code.
        detail = exc.detail["detail"]
        error = {"code": str(exc.detail.get("code") or getattr(detail, "code", "error")), "detail": str(detail)}
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        error = {"code": codes if isinstance(codes, str) else "error", "detail": _first_message(response.data)}
    response.data = {"error": error}
    return response


# Paths whose errors are JSON in the error shape, whatever raised them.
API_PATH_PREFIXES = ("/api/", "/v1/")


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PATH_PREFIXES)


def _error(status_code: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status_code)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler400``: a request Django refused before any view (e.g. a disallowed Host header)."""
    if _is_api(request) and isinstance(exception, RequestDataTooBig):
        error = payload_too_large()
        return _error(error.status_code, error.code, error.detail)
    if _is_api(request):
        return _error(400, "bad_request", "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler403``: ``PermissionDenied`` raised outside DRF's own handling."""
    if _is_api(request):
        return _error(403, "permission_denied", "You do not have permission to perform this action.")
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler404``: no URL matched (or ``Http404`` outside DRF)."""
    if _is_api(request):
        return _error(404, "not_found", "Not found.")
    return defaults.page_not_found(request, exception)


def database_unavailable_response(request: HttpRequest, error: ParleyError) -> HttpResponse:
    """Return the 503 of ``error`` (``database_unavailable``): the error shape on API paths, else a short page.

    The page needs no template, session or database: it is what shows while PostgreSQL is down.
    """
    if _is_api(request):
        response = _error(error.status_code, error.code, error.detail)
    else:
        response = HttpResponse(
            "<!doctype html><title>Parley is unavailable</title><h1>Parley is unavailable for a moment</h1>"
            f"<p>{escape(error.detail)}</p>",
            status=error.status_code,
        )
    response["Retry-After"] = str(error.retry_after)
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Answer a view's "database unreachable" error (:func:`core.errors.database_unavailable`) with a 503.

    ``process_exception`` only: no thread hop per request under ASGI. It sees what views (and the
    templates they render) raise, which is where the session, the user and the data are first read;
    an error raised in another middleware reaches :func:`server_error` instead, which maps it too.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        error = database_unavailable(exception)
        return None if error is None else database_unavailable_response(request, error)


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: an unhandled exception. The traceback goes to the log, never to the client.

    A database outage is answered 503 here too when the exception is known (Django's synchronous
    path hands it over as ``sys.exc_info()``).
    """
    error = database_unavailable(sys.exc_info()[1]) if sys.exc_info()[1] is not None else None
    if error is not None:
        return database_unavailable_response(request, error)
    if _is_api(request):
        return _error(500, "server_error", "A server error occurred.")
    return defaults.server_error(request)
