"""The error type of the whole project: raised by services, shown to users with a stable code.

Plain Python and Django only (no DRF): every app raises it, and each interface turns it into its
own shape: the API's ``{"error": {"code", "detail"}}`` (:mod:`core.handlers`), a WebSocket ``error``
event, a management command's message.
"""

from http import HTTPStatus

from django.conf import settings


class ParleyError(Exception):
    """An error a user can cause, with a stable ``code`` and an HTTP status.

    Raised by services; the API turns it into the error shape, the WebSocket into an ``error`` event.
    ``status_code`` is an int (an :class:`http.HTTPStatus` is one).
    """

    code = "error"
    status_code: int = HTTPStatus.BAD_REQUEST

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: int | None = None,
        extra: dict | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after  # seconds, sent as the Retry-After header
        self.extra = extra or {}  # more keys for the "error" object, e.g. quota_exceeded's "resets_at"
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


def payload_too_large() -> ParleyError:
    """Return the 413 ``payload_too_large`` error for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes.

    Django raises ``RequestDataTooBig`` when such a body is read; it would otherwise answer 400.
    """
    return ParleyError(
        f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes.",
        code="payload_too_large",
        status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    )
