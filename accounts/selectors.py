"""Reads for accounts."""

from datetime import UTC
from decimal import Decimal

from django.db.models import QuerySet, Sum
from django.http import Http404
from django.utils import timezone

from .models import API_KEY_PREFIX, APIKey, UsageDaily, User, api_key_hash


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
