"""Health checks for load balancers and orchestrators; no authentication.

- ``GET /health/``: liveness. 200 ``{"status": "ok"}`` without touching any dependency: the process
  is up and serving requests.
- ``GET /health/ready/``: readiness. ``{"status": "ok"|"down", "components": {name: {"status":
  "ok"|"down", "latency_ms": float, "required": bool, "detail"?: str}}}`` for ``database``,
  ``redis``, ``celery`` and the components the apps register (inference's ``model``,
  :func:`readiness_check_register`); 503 when a required component is down, else 200. ``detail``
  (error texts, file paths, worker host names) is shown to staff only: the endpoint is public, and
  a database error can name hosts and users. Failures are always logged with their detail.

``celery`` is ok when the broker accepts a connection and a worker answers a ping within
``HEALTH_CELERY_TIMEOUT`` seconds. It is required only when ``HEALTH_CELERY_REQUIRED`` is true, by
default when ``INFERENCE_EXECUTION`` is ``celery``: with inline execution chat works without a worker,
so a missing worker is reported but does not take the web process out of rotation.
"""

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from django_redis import get_redis_connection

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
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    # limit=1: return on the first answer instead of waiting out the timeout.
    replies = app.control.ping(timeout=timeout, limit=1)
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


@never_cache
@require_safe
def readiness(request: HttpRequest) -> JsonResponse:
    """Check each dependency; 200 when every required one is ok, else 503."""
    checks = {
        "database": (check_database, True),
        "redis": (check_redis, True),
        **_REGISTERED,
        "celery": (check_celery, settings.HEALTH_CELERY_REQUIRED),
    }
    verbose = request.user.is_authenticated and request.user.is_staff
    components = {name: _probe(name, check, required, verbose=verbose) for name, (check, required) in checks.items()}
    ready = all(c["status"] == "ok" for c in components.values() if c["required"])
    return JsonResponse({"status": "ok" if ready else "down", "components": components}, status=200 if ready else 503)
