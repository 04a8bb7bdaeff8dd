"""The error type of the whole project: raised by services, shown to users with a stable code.

Plain Python and Django only (no DRF): every app raises it, and each interface turns it into its
own shape: the API's ``{"error": {"code", "detail"}}`` (:mod:`core.handlers`), a WebSocket ``error``
event, a management command's message.
"""

from http import HTTPStatus

import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError


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


# Seconds a client is told to wait (Retry-After) when the database cannot be reached.
DATABASE_RETRY_AFTER = 5

DATABASE_UNAVAILABLE_DETAIL = "The database is unavailable for a moment; try again in a few seconds."

# SQLSTATEs that mean "the server cannot be reached or is going away", not "this query failed":
# class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now) and
# 53300 (too many connections).
_UNAVAILABLE_SQLSTATES = ("57P01", "57P02", "57P03", "53300")


def database_unavailable(exc: BaseException) -> ParleyError | None:
    """Return the 503 ``database_unavailable`` error when ``exc`` means PostgreSQL cannot be reached, else None.

    That is Django's ``InterfaceError`` (a connection closed under the query), or an ``OperationalError``
    (Django's or psycopg's) with no SQLSTATE (the connection was refused, reset or timed out; psycopg_pool's
    ``PoolTimeout`` when no connection came within ``DATABASE_POOL_TIMEOUT``) or one of a connection
    failure or server shutdown. Other ``OperationalError``\\s (a statement timeout, a lock not available)
    are a query's failure and stay a 500. ``Retry-After`` is :data:`DATABASE_RETRY_AFTER` seconds.
    """
    if isinstance(exc, (InterfaceError, psycopg.InterfaceError)):
        unavailable = True
    elif isinstance(exc, (OperationalError, psycopg.OperationalError)):
        cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ is not None else exc
        sqlstate = getattr(cause, "sqlstate", None)
        unavailable = sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
    else:
        unavailable = False
    if not unavailable:
        return None
    return ParleyError(
        DATABASE_UNAVAILABLE_DETAIL,
        code="database_unavailable",
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        retry_after=DATABASE_RETRY_AFTER,
    )
