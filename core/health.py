"""Health checks for load balancers and orchestrators; no authentication.

- ``GET /health/``: liveness. 200 ``{"status": "ok"}`` without touching any dependency: the process
  is up and serving requests.
- ``GET /health/ready/``: readiness. ``{"status": "ok"|"down"|"stopping", "components": {name: {"status":
  "ok"|"down", "latency_ms": float, "required": bool, "detail"?: str}}}`` for ``database``,
  ``redis``, ``celery`` and the components the apps register (inference's ``model``,
  :func:`readiness_check_register`); 503 when a required component is down, else 200. ``detail``
  (error texts, file paths, worker host names) is shown to staff only: the endpoint is public, and
  a database error can name hosts and users. Failures are always logged with their detail.

Readiness is probed at most once per ``HEALTH_READY_CACHE_SECONDS`` (1 s) per process: callers in
between get the last result (concurrent ones wait for the probe under way), so a flood of probes
cannot turn into a flood of database, Redis and broker pings. Anonymous callers are limited to
``RATE_LIMIT_HEALTH`` per client IP and process (429 ``rate_limited`` with ``Retry-After``); logged-in
users are not.

``celery`` is ok when the broker accepts a connection and a worker answers a ping within
``HEALTH_CELERY_TIMEOUT`` seconds. It is required only when ``HEALTH_CELERY_REQUIRED`` is true, by
default when ``INFERENCE_EXECUTION`` is ``celery``: with inline execution chat works without a worker,
so a missing worker is reported but does not take the web process out of rotation.
"""

import logging
import math
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from django_redis import get_redis_connection
from rest_framework.throttling import BaseThrottle

from config.celery import app

logger = logging.getLogger(__name__)

# Checks of the apps above core, by component name (see readiness_check_register).
_REGISTERED: dict[str, tuple[Callable[[], str | None], bool]] = {}


def readiness_check_register(*, name: str, check: Callable[[], str | None], required: bool = True) -> None:
    """Add component ``name`` to ``/health/ready/``: ``check()`` returns a detail (or None) or raises when down.

    For the apps above core (e.g. inference's ``model``), from their ``AppConfig.ready()``; a second
    registration of a name replaces the first. A check must stay cheap: probes come every few seconds.
    """
    _REGISTERED[name] = (check, required)


@never_cache
@require_safe
def liveness(request: HttpRequest) -> JsonResponse:
    """Return 200 ``{"status": "ok"}``."""
    return JsonResponse({"status": "ok"})


def check_database() -> str | None:
    """Run ``SELECT 1`` on the default database."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
    return None


def check_redis() -> str | None:
    """PING the default cache's Redis (cache, throttles, channel layer and broker live there)."""
    get_redis_connection("default").ping()
    return None


def check_celery() -> str:
    """Connect to the Celery broker, then ping the workers; raise when none answers in time."""
    timeout = settings.HEALTH_CELERY_TIMEOUT
    # A connection of the probe's own, closed here, not one of Celery's pool: the ping's reply
    # consumer leaves a BRPOP in flight, and a pooled connection in that state is closed again by
    # kombu in every process forked later, where both processes then read one socket and hang.
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        # limit=1: return on the first answer instead of waiting out the timeout.
        replies = app.control.ping(timeout=timeout, limit=1, connection=connection)
    if not replies:
        raise RuntimeError(f"broker reachable, but no worker answered within {timeout:g} s")
    return f"{', '.join(name for reply in replies for name in reply)} answered"


def _probe(name: str, check: Callable[[], str | None], required: bool, *, verbose: bool) -> dict:
    start = time.perf_counter()
    try:
        detail = check()
        result = {"status": "ok"}
    except Exception as exc:  # noqa: BLE001 (any failure means the component is down)
        detail = f"{type(exc).__name__}: {exc}"[:300]
        result = {"status": "down"}
        # Probes come every few seconds: one line, and a missing optional worker is no warning.
        logger.log(logging.WARNING if required else logging.DEBUG, "health: %s is down: %s", name, detail)
    result["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
    result["required"] = required
    if detail and verbose:
        result["detail"] = detail
    return result


class _Probed:
    """The last readiness probe of this process: its components (details included) and when (monotonic s)."""

    lock = threading.Lock()
    components: dict | None = None
    at: float = -math.inf


def readiness_cache_clear() -> None:
    """Forget the last probe and the anonymous counts: the next ``/health/ready/`` probes again."""
    with _Probed.lock:
        _Probed.components, _Probed.at = None, -math.inf
    with _AnonymousCalls.lock:
        _AnonymousCalls.window_start, _AnonymousCalls.counts = -math.inf, {}


def _components() -> dict:
    """Return every component's probe result, at most ``HEALTH_READY_CACHE_SECONDS`` old."""
    with _Probed.lock:  # one probe at a time; the callers waiting for it then share its result
        if _Probed.components is None or time.monotonic() - _Probed.at >= settings.HEALTH_READY_CACHE_SECONDS:
            checks = {
                "database": (check_database, True),
                "redis": (check_redis, True),
                **_REGISTERED,
                "celery": (check_celery, settings.HEALTH_CELERY_REQUIRED),
            }
            _Probed.components = {
                name: _probe(name, check, required, verbose=True) for name, (check, required) in checks.items()
            }
            _Probed.at = time.monotonic()
        return _Probed.components


class _AnonymousCalls:
    """Fixed-window counts of anonymous readiness calls per client IP, in this process.

    Kept in memory rather than in Redis: readiness must answer when Redis is down.
    """

    lock = threading.Lock()
    window_start: float = -math.inf
    counts: dict[str, int] = {}


def _anonymous_refusal(request: HttpRequest) -> int | None:
    """Count one anonymous call; return seconds to wait when it is over ``RATE_LIMIT_HEALTH``, else None."""
    rate = settings.RATE_LIMIT_HEALTH
    if not rate:
        return None
    count, _, period = rate.partition("/")
    seconds = {"s": 1, "sec": 1, "min": 60, "m": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400}[period]
    ip = BaseThrottle().get_ident(request)  # X-Forwarded-For only behind TRUSTED_PROXY_COUNT proxies
    now = time.monotonic()
    with _AnonymousCalls.lock:
        if now - _AnonymousCalls.window_start >= seconds:
            _AnonymousCalls.window_start, _AnonymousCalls.counts = now, {}
        _AnonymousCalls.counts[ip] = _AnonymousCalls.counts.get(ip, 0) + 1
        if _AnonymousCalls.counts[ip] > int(count):
            return max(1, math.ceil(_AnonymousCalls.window_start + seconds - now))
    return None


_stopping = threading.Event()


def readiness_stop() -> None:
    """Make ``/health/ready/`` answer 503 ``{"status": "stopping"}`` from now on: this process is shutting down.

    Called by the web process on SIGTERM (:mod:`config.web`), so a load balancer that still probes
    it over an open connection takes it out of rotation while its running turns finish.
    """
    _stopping.set()


@never_cache
@require_safe
def readiness(request: HttpRequest) -> JsonResponse:
    """Check each dependency (at most once a second); 200 when every required one is ok, else 503.

    A process that is stopping answers 503 ``{"status": "stopping"}`` at once, without probing.
    """
    if _stopping.is_set():
        return JsonResponse({"status": "stopping", "components": {}}, status=503)
    if not request.user.is_authenticated and (retry_after := _anonymous_refusal(request)) is not None:
        detail = f"Too many readiness probes from your address. Try again in {retry_after} s."
        response = JsonResponse({"error": {"code": "rate_limited", "detail": detail}}, status=429)
        response["Retry-After"] = str(retry_after)
        return response
    verbose = request.user.is_authenticated and request.user.is_staff
    components = {
        name: {key: value for key, value in result.items() if verbose or key != "detail"}
        for name, result in _components().items()
    }
    ready = all(c["status"] == "ok" for c in components.values() if c["required"])
    return JsonResponse({"status": "ok" if ready else "down", "components": components}, status=200 if ready else 503)
