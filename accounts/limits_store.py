"""Redis access for rate limits, generation slots and quotas: one place that names keys and fails open.

Every limit lives in the ``default`` Redis (``REDIS_URL``), so all processes on all machines share it,
and each check is one Lua script, so concurrent requests cannot both pass a limit. When Redis is
unreachable the limits fail open: the request goes through and a warning is logged (a rate limiter
must never be the reason chat is down). After an error the limits rest for
``CACHE_RETRY_AFTER_ERROR`` seconds instead of paying a connection timeout on every request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_rest_until = 0.0
_lock = threading.Lock()
# Lua scripts by source, each run with whichever client asks (Script(client=...)). Keyed by the
# client as well (id(connection)) this grew by every client made, one per thread-sensitive context
# (each chat turn's): ~35 KB a turn held for good (bench/load.py --memory-turns 1000: +13.9%).
_scripts: dict[str, object] = {}


def limits_key(*parts) -> str:
    """Return the Redis key of a limit: ``<REDIS_KEY_PREFIX>:limits:<part>:<part>...``."""
    return ":".join([settings.REDIS_KEY_PREFIX, "limits", *(str(part) for part in parts)])


def run_script(source: str, keys: list[str], args: list, *, default: T, what: str) -> T | list:
    """Run the Lua ``source`` on the default Redis and return its result, or ``default`` when Redis is down.

    ``what`` names the limit in the warning logged when Redis fails.
    """
    global _rest_until
    if time.monotonic() < _rest_until:
        return default
    try:
        connection = get_redis_connection("default")
        script = _scripts.get(source)
        if script is None:
            script = _scripts[source] = connection.register_script(source)
        return script(keys=keys, args=args, client=connection)
    except (RedisError, OSError) as exc:
        with _lock:
            _rest_until = time.monotonic() + settings.CACHE_RETRY_AFTER_ERROR
        logger.warning("Redis unavailable (%s): %s not enforced", type(exc).__name__, what)
        return default


def run(call: Callable[..., T], *, default: T, what: str) -> T:
    """Call ``call(connection)`` on the default Redis; return ``default`` (and log) when Redis is down."""
    global _rest_until
    if time.monotonic() < _rest_until:
        return default
    try:
        return call(get_redis_connection("default"))
    except (RedisError, OSError) as exc:
        with _lock:
            _rest_until = time.monotonic() + settings.CACHE_RETRY_AFTER_ERROR
        logger.warning("Redis unavailable (%s): %s skipped", type(exc).__name__, what)
        return default


def reset_breaker() -> None:
    """Forget an earlier Redis error (tests)."""
    global _rest_until
    _rest_until = 0.0
