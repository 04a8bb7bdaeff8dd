"""Reads for accounts."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.http import Http404
from django.utils import timezone

from .models import API_KEY_PREFIX, APIKey, UsageDaily, UsageRecord, User, api_key_hash


def api_key_list(*, user: User) -> QuerySet[APIKey]:
    """Return ``user``'s active (not revoked) API keys, newest first."""
    return APIKey.objects.filter(user=user, revoked_at__isnull=True).order_by("-created_at")


def api_key_get(*, user: User, api_key_id) -> APIKey:
    """Return ``user``'s active API key ``api_key_id``.

    Raise :class:`Http404` when there is none: another user's key is as unknown as a missing one.
    """
    api_key = api_key_list(user=user).filter(pk=api_key_id).first()
    if api_key is None:
        raise Http404("No such API key.")
    return api_key


def api_key_authenticate(*, key: str) -> APIKey | None:
    """Return the active API key whose full text is ``key``, with its user, or None.

    Looked up by hash (a unique index); the key itself is never stored or compared in clear.
    """
    if not key.startswith(API_KEY_PREFIX):
        return None
    return APIKey.objects.select_related("user").filter(key_hash=api_key_hash(key), revoked_at__isnull=True).first()


def usage_today(*, user: User) -> dict:
    """Return ``user``'s usage today (UTC), all models together, from :class:`UsageDaily`.

    ``{"requests", "prompt_tokens", "completion_tokens", "total_tokens": int, "cost": Decimal (USD)}``.
    """
    totals = UsageDaily.objects.filter(user=user, day=timezone.now().astimezone(UTC).date()).aggregate(
        requests=Sum("requests"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    prompt, completion = totals["prompt_tokens"] or 0, totals["completion_tokens"] or 0
    return {
        "requests": totals["requests"] or 0,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": totals["cost"] or Decimal(0),
    }


def spend_summary(*, start: datetime, end: datetime) -> dict:
    """Return the spend (USD) of the requests recorded in ``[start, end)`` (UTC), from :class:`UsageRecord`.

    ``{"total": Decimal, "requests": int, "by_user", "by_group", "by_api_key", "by_model": [{"name",
    "requests", "cost"}] (costliest first, 50 at most; a member of two groups counts in both),
    "by_day": [{"day": date, "cost": Decimal}]}`` with every UTC day from ``start`` to the last day
    before ``end`` that has begun (days without requests as 0).
    """
    records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)

    def grouped(name: str) -> list[dict]:
        # Rows without one (a user in no group, a request made without a key) are left out.
        rows = records.values(name).annotate(requests=Count("id"), cost=Sum("cost")).order_by("-cost", name)[:51]
        return [{"name": row[name], "requests": row["requests"], "cost": row["cost"]} for row in rows if row[name]][:50]

    totals = records.aggregate(total=Sum("cost"), requests=Count("id"))
    per_day = {
        row["day"]: row["cost"]
        for row in records.annotate(day=TruncDay("created_at", tzinfo=UTC)).values("day").annotate(cost=Sum("cost"))
    }
    per_day = {moment.date(): cost for moment, cost in per_day.items()}
    last = min(end, timezone.now().astimezone(UTC) + timedelta(days=1)).date()
    days, day = [], start.astimezone(UTC).date()
    while day < last:
        days.append({"day": day, "cost": per_day.get(day) or Decimal(0)})
        day += timedelta(days=1)
    return {
        "total": totals["total"] or Decimal(0),
        "requests": totals["requests"],
        "by_user": grouped("user__username"),
        "by_group": grouped("user__groups__name"),
        "by_api_key": grouped("api_key__prefix"),
        "by_model": grouped("model_slug"),
        "by_day": days,
    }
