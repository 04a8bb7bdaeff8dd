"""Usage figures of a window: requests, errors, tokens, cost, TTFT and latency percentiles, top users.

They come from :class:`~accounts.models.UsageRecord` (one row per model request), so they are the
same whichever process served the requests and survive restarts. The admin's Metrics page adds live
cache, WebSocket and Celery figures to them (:mod:`inference.metrics`); ``manage.py usage report``
prints them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Aggregate, Count, DateTimeField, DurationField, F, FloatField, Func, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import UsageRecord, UsageStatus

# window name -> (length, bar width of its charts)
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}
DEFAULT_WINDOW = "24h"
TOP_USERS = 10
_EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday, 00:00 UTC: buckets align to it


class Percentile(Aggregate):
    """PostgreSQL ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)``: interpolated, NULLs ignored."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        super().__init__(expression, fraction=float(fraction), **extra)


class DateBin(Func):
    """PostgreSQL ``date_bin(stride, source, origin)``: the start of the bucket ``source`` falls in."""

    function = "date_bin"
    output_field = DateTimeField()


def _bucket_start(moment: datetime, bucket: timedelta) -> datetime:
    return _EPOCH + ((moment - _EPOCH) // bucket) * bucket


def _ratio(part: float | None, whole: float | None, digits: int = 4) -> float | None:
    return round(part / whole, digits) if part is not None and whole else None


def _ms(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def usage_metrics(*, since: datetime, until: datetime | None = None, bucket: timedelta = timedelta(hours=1)) -> dict:
    """Return the model-request figures of ``[since, until)`` (until: now).

    Shape::

        {"requests", "errors", "cancelled", "cached_requests": int, "error_rate": float | None (0..1),
         "prompt_tokens", "completion_tokens": int, "cost": Decimal (USD),
         "tokens_per_s": float | None,     completion tokens / generation seconds (after the first
                                           token), over complete, uncached requests
         "ttft_ms", "latency_ms": {"p50", "p95"}: float | None (ms, PostgreSQL percentile_cont),
         "top_users": [{"user_id", "username", "requests", "tokens"}]  (by tokens, at most TOP_USERS),
         "deployments": [{"deployment", "requests", "errors", "fallbacks", "ttft_ms_p50"}]  per deployment
                                           that served requests ("<model>/<name>"), most requests first;
                                           fallbacks: requests it served for another deployment or model
         "series": [{"start": datetime, "requests", "errors", "tokens"}]  one per ``bucket``, oldest first,
                                           buckets aligned to UTC boundaries, empty ones included}
    """
    until = until or timezone.now()
    records = UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until)
    generating = Q(status=UsageStatus.COMPLETE, cached=False, latency_ms__isnull=False, ttft_ms__isnull=False)
    totals = records.aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status=UsageStatus.ERROR)),
        cancelled=Count("id", filter=Q(status=UsageStatus.CANCELLED)),
        cached_requests=Count("id", filter=Q(cached=True)),
        # Aliases differ from the field names: Django refuses an aggregate named like a field it sums.
        prompt_total=Coalesce(Sum("prompt_tokens"), 0),
        completion_total=Coalesce(Sum("completion_tokens"), 0),
        cost_total=Coalesce(Sum("cost"), Value(Decimal(0))),
        generated_tokens=Sum("completion_tokens", filter=generating),
        generation_ms=Sum(F("latency_ms") - F("ttft_ms"), filter=generating),
        ttft_p50=Percentile("ttft_ms", 0.5),
        ttft_p95=Percentile("ttft_ms", 0.95),
        latency_p50=Percentile("latency_ms", 0.5),
        latency_p95=Percentile("latency_ms", 0.95),
    )
    generation_s = (totals["generation_ms"] or 0) / 1000
    top_users = [
        {
            "user_id": row["user_id"],
            "username": row["user__username"],
            "requests": row["requests"],
            "tokens": row["tokens"],
        }
        for row in records.values("user_id", "user__username")
        .annotate(requests=Count("id"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("-tokens", "user__username")[:TOP_USERS]
    ]
    deployments = [
        {
            "deployment": row["deployment"],
            "requests": row["requests"],
            "errors": row["errors"],
            "fallbacks": row["fallbacks"],
            "ttft_ms_p50": _ms(row["ttft_p50"]),
        }
        for row in records.exclude(deployment="")
        .values("deployment")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status=UsageStatus.ERROR)),
            fallbacks=Count("id", filter=Q(route__startswith="fallback:")),
            ttft_p50=Percentile("ttft_ms", 0.5),
        )
        .order_by("-requests", "deployment")
    ]
    first = _bucket_start(since, bucket)
    rows = {
        row["start"]: row
        for row in records.annotate(
            start=DateBin(Value(bucket, output_field=DurationField()), "created_at", Value(_EPOCH))
        )
        .values("start")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status=UsageStatus.ERROR)),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
        )
    }
    series = []
    start = first
    while start < until:
        row = rows.get(start, {})
        series.append(
            {
                "start": start,
                "requests": row.get("requests", 0),
                "errors": row.get("errors", 0),
                "tokens": row.get("tokens") or 0,
            }
        )
        start += bucket
    return {
        "requests": totals["requests"],
        "errors": totals["errors"],
        "cancelled": totals["cancelled"],
        "cached_requests": totals["cached_requests"],
        "error_rate": _ratio(totals["errors"], totals["requests"]),
        "prompt_tokens": totals["prompt_total"],
        "completion_tokens": totals["completion_total"],
        "cost": totals["cost_total"],
        "tokens_per_s": round(totals["generated_tokens"] / generation_s, 1) if generation_s > 0 else None,
        "ttft_ms": {"p50": _ms(totals["ttft_p50"]), "p95": _ms(totals["ttft_p95"])},
        "latency_ms": {"p50": _ms(totals["latency_p50"]), "p95": _ms(totals["latency_p95"])},
        "top_users": top_users,
        "deployments": deployments,
        "series": series,
    }
