"""Rate limits: DRF throttle policies, and the WebSocket's message limit. State lives in Redis, shared by all processes.

Request rates (:class:`RequestRateThrottle`, every ``/api/v1/`` and ``/v1/`` view by default) and
WebSocket messages (:func:`websocket_message_throttle`) count in a fixed window per user (or per
anonymous client IP) that opens with the first request: one Lua ``INCR`` + ``PEXPIRE`` in Redis, atomic,
so however many processes answer, no more than the limit get through in a window. Every throttled
response carries::

    X-RateLimit-Limit: <requests allowed per window>
    X-RateLimit-Remaining: <requests left in this window>
    X-RateLimit-Reset: <seconds until the window resets>   (a delta, as Retry-After; not an epoch)

and a 429 also ``Retry-After`` (seconds), with the error code ``rate_limited``. Redis down: no limit
(see :mod:`accounts.limits_store`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from django.conf import settings
from rest_framework import status
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from core.errors import ParleyError

from .limits_store import limits_key, run_script
from .models import APIKey

# DRF's rate periods, by first letter: "10/s", "600/min", "1000/hour", "10000/day".
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Count one request and return it with the milliseconds left in its window. The window (the key's
# TTL) is set by the request that opens it; a key that lost its TTL somehow gets one back.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """Return ``(requests, seconds)`` of a DRF-style rate such as ``"600/min"``; None for no limit (empty).

    Raise ``ValueError`` for a malformed rate.
    """
    if not rate:
        return None
    count, _, period = rate.partition("/")
    try:
        return int(count), PERIODS[period.strip()[0].lower()]
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"Not a rate: {rate!r} (expected e.g. '600/min').") from None


@dataclass
class RateResult:
    """One counted request: whether it is allowed, and the window's state after it."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the window resets (rounded up)

    def headers(self) -> dict[str, str]:
        """Return the ``X-RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset)
        return headers

    def error(self, what: str = "requests") -> ParleyError:
        """Return the 429 ``rate_limited`` :class:`~core.errors.ParleyError` for a refused request."""
        return ParleyError(
            f"Too many {what}: the limit is {self.limit} per window. Try again in {self.reset} s.",
            code="rate_limited",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            retry_after=self.reset,
        )


def rate_hit(*, scope: str, ident: str, rate: str | None) -> RateResult | None:
    """Count one request of ``ident`` (a user id, an IP) in ``scope`` against ``rate`` (e.g. ``"600/min"``).

    Return the outcome, or None when there is no limit (empty rate) or Redis is unreachable.
    """
    parsed = parse_rate(rate)
    if parsed is None:
        return None
    limit, seconds = parsed
    result = run_script(
        HIT_SCRIPT, [limits_key("rate", scope, ident)], [seconds * 1000], default=None, what=f"rate limit {scope}"
    )
    if result is None:
        return None
    count, ttl_ms = int(result[0]), int(result[1])
    return RateResult(
        allowed=count <= limit, limit=limit, remaining=max(0, limit - count), reset=max(1, math.ceil(ttl_ms / 1000))
    )


def _hits(*, user_id, api_key=None) -> list[RateResult]:
    """Count one request of user ``user_id`` (``RATE_LIMIT_USER``) and of ``api_key`` (its own ``rate_limit``)."""
    results = [rate_hit(scope="user", ident=user_id, rate=settings.RATE_LIMIT_USER)]
    if api_key is not None and api_key.rate_limit:
        results.append(rate_hit(scope="api-key", ident=api_key.pk, rate=api_key.rate_limit))
    return [result for result in results if result is not None]


def _tightest(results: list[RateResult]) -> RateResult:
    """Return the refused result (the longest wait) if any, else the one with the fewest requests left."""
    refused = [result for result in results if not result.allowed]
    if refused:
        return max(refused, key=lambda result: result.reset)
    return min(results, key=lambda result: result.remaining)


def user_rate_check(*, user_id: int, api_key=None) -> dict[str, str]:
    """Count one request of user ``user_id`` against ``RATE_LIMIT_USER``; return its ``X-RateLimit-*`` headers.

    With ``api_key`` (an :class:`~accounts.models.APIKey` with a ``rate_limit``), the request counts
    against the key's own limit too, and the headers are those of the tighter of the two windows.
    For the paths that authenticate outside DRF's throttles (the ``/v1`` chat completions view, the
    MCP server). Raise 429 ``rate_limited`` (with ``Retry-After`` and the same headers) over a limit;
    ``{}`` when there is no limit or Redis is unreachable.
    """
    results = _hits(user_id=user_id, api_key=api_key)
    if not results:
        return {}
    limit = _tightest(results)
    headers = limit.headers()
    headers.pop("Retry-After", None)  # a 429 sets its own
    if not limit.allowed:
        error = limit.error()
        error.headers = headers
        raise error
    return headers


class RequestRateThrottle(BaseThrottle):
    """Limit each user to ``RATE_LIMIT_USER`` requests and each anonymous client IP to ``RATE_LIMIT_ANON``;
    a request made with an API key that has a ``rate_limit`` counts against that too.

    The default throttle of every DRF view (``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``), the
    ``/v1/`` gateway included. Sets the ``X-RateLimit-*`` headers on the response, whatever its
    status; over the limit raises 429 ``rate_limited`` with ``Retry-After``. The client IP honours
    ``X-Forwarded-For`` only behind ``TRUSTED_PROXY_COUNT`` proxies (DRF's ``NUM_PROXIES``).

    DRF checks throttles after authentication and permissions, so a request refused as
    unauthenticated (401) is not counted.
    """

    def allow_request(self, request, view) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            auth = getattr(request, "auth", None)
            results = _hits(user_id=user.pk, api_key=auth if isinstance(auth, APIKey) else None)
            result = _tightest(results) if results else None
        else:
            result = rate_hit(scope="anon", ident=self.get_ident(request), rate=settings.RATE_LIMIT_ANON)
        if result is None:
            return True
        # APIView.finalize_response copies view.headers onto the response, error responses included.
        headers = result.headers()
        headers.pop("Retry-After", None)  # the 429 sets its own
        view.headers.update(headers)
        if not result.allowed:
            raise result.error()
        return True


def websocket_message_throttle(*, user) -> None:
    """Count one ``message.send`` frame of ``user`` against ``RATE_LIMIT_WS`` (e.g. ``"30/min"``).

    Raise :class:`ParleyError` ``rate_limited`` (``retry_after`` in seconds) over the limit.
    """
    result = rate_hit(scope="ws", ident=user.pk, rate=settings.RATE_LIMIT_WS)
    if result is not None and not result.allowed:
        raise result.error("messages")


def client_ip(request) -> str:
    """Return the client IP of a Django or DRF ``request``, as every throttle here keys it.

    ``X-Forwarded-For`` is honoured only behind ``TRUSTED_PROXY_COUNT`` proxies (DRF's ``NUM_PROXIES``).
    """
    return BaseThrottle().get_ident(request)


def login_attempt(*, ip: str, username: str) -> tuple[RateResult | None, RateResult | None]:
    """Count one login attempt from ``ip`` for the account ``username`` against ``RATE_LIMIT_LOGIN``.

    The one policy of every way to log in (the token endpoint, ``/login/``, ``/admin/login/``):
    attempts per client IP, and attempts per account name whatever the IP, each in its own window.
    The account counter is kept whether or not such an account exists, so that a refusal tells
    nothing about it (its key is a hash of the name). Return ``(by_ip, by_account)``, each None
    when not counted (no rate, Redis down, no username).
    """
    rate = api_settings.DEFAULT_THROTTLE_RATES.get("login")  # read now: a changed setting takes effect
    by_ip = rate_hit(scope="scope-login", ident=ip, rate=rate)
    by_account = None
    if username:
        account = hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:32]
        by_account = rate_hit(scope="login-account", ident=account, rate=rate)
    return by_ip, by_account


def signup_attempt(*, ip: str) -> RateResult | None:
    """Count one sign-up submission from ``ip`` against ``RATE_LIMIT_SIGNUP`` (e.g. ``"5/hour"``).

    Every submission counts, accepted or not, so the form cannot be used to probe names or
    passwords at speed either. Return the outcome, or None when not counted (no rate, Redis down).
    """
    return rate_hit(scope="signup", ident=ip, rate=settings.RATE_LIMIT_SIGNUP)


def login_refusal(results: tuple[RateResult | None, RateResult | None]) -> RateResult | None:
    """Return the refused one of :func:`login_attempt`'s results (the longer wait if both), or None."""
    refused = [result for result in results if result is not None and not result.allowed]
    return max(refused, key=lambda result: result.reset) if refused else None


class LoginRateThrottle(BaseThrottle):
    """Limit token requests per client IP and per account name (:func:`login_attempt`, ``RATE_LIMIT_LOGIN``).

    Keyed by IP even when the request carries a session: it is the password guesses from one
    address that are limited, and by the ``username`` asked for, so that guesses spread over many
    addresses are limited too. Counted atomically in Redis like :class:`RequestRateThrottle`, with
    the same headers (of the IP's window); over the rate DRF answers 429 ``throttled`` with
    ``Retry-After``.
    """

    def allow_request(self, request, view) -> bool:
        data = request.data  # a body DRF cannot parse raises ParseError (400) here
        username = data.get("username") if hasattr(data, "get") else None
        results = login_attempt(ip=client_ip(request), username=username.strip() if isinstance(username, str) else "")
        if results[0] is not None:
            headers = results[0].headers()
            headers.pop("Retry-After", None)
            view.headers.update(headers)
        refused = login_refusal(results)
        self.retry_after = refused.reset if refused is not None else None
        return refused is None

    def wait(self) -> float | None:
        return getattr(self, "retry_after", None)
