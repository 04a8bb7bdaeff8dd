"""Operations metrics for the admin's Metrics page and ``GET /api/v1/admin/metrics/``: one source for both.

The usage figures of the window (:mod:`accounts.metrics`, from the database), plus live figures read
from Redis: cache hit ratios per layer, open WebSockets (:mod:`core.presence`) and the Celery queue
depth. Assembled here, in the app above all of them.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.utils import timezone

from accounts import metrics
from core.presence import ws_connection_count

from . import cache


def celery_queue_depth() -> int | None:
    """Return the tasks waiting in the Celery broker's default queue, or None when the broker fails.

    Celery's Redis transport keeps a queue as a list named after it, plus one list per priority
    step (``<queue>\\x06\\x16<n>``); all are counted.
    """
    queue = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")
    keys = [queue] + [f"{queue}\x06\x16{step}" for step in range(1, 10)]
    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
        with client:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            return sum(pipe.execute())
    except Exception:
        return None


def cache_metrics() -> dict:
    """Return ``{"status": "ok"|"degraded", "layers": [{"layer", "hits", "misses", "hit_ratio"}]}``.

    Counts are since each layer's stats were last reset, not per window (the cache counts in Redis).
    """
    health, layers = cache.report()
    return {
        "status": health.status,
        "layers": [
            {"layer": row["layer"], "hits": row["hits"], "misses": row["misses"], "hit_ratio": row["hit_ratio"]}
            for row in layers
        ],
    }


def operations_metrics(*, window: str = metrics.DEFAULT_WINDOW) -> dict:
    """Return everything the Metrics page shows for ``window`` (a key of :data:`accounts.metrics.WINDOWS`).

    :func:`accounts.metrics.usage_metrics` of the window, plus ``"window"``, ``"since"``, ``"until"``,
    ``"bucket_seconds"``, ``"cache"`` (:func:`cache_metrics`), ``"ws_connections"`` and
    ``"celery_queue_depth"``. Raise KeyError for an unknown window.
    """
    length, bucket = metrics.WINDOWS[window]
    until = timezone.now()
    since = until - length
    return {
        "window": window,
        "since": since,
        "until": until,
        "bucket_seconds": int(bucket.total_seconds()),
        **metrics.usage_metrics(since=since, until=until, bucket=bucket),
        "cache": cache_metrics(),
        "ws_connections": ws_connection_count(),
        "celery_queue_depth": celery_queue_depth(),
    }
