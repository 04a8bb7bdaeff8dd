"""Writes for accounts."""

import secrets
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import API_KEY_PREFIX, API_KEY_PREFIX_LENGTH, APIKey, User, api_key_hash


@transaction.atomic
def operator_ensure(*, username: str = "admin", email: str = "") -> tuple[User | None, str | None]:
    """Create an operator (superuser) with a generated password when no superuser exists.

    Return ``(user, password)`` for a new operator, or ``(None, None)`` when one already exists.
    The password is 16 random bytes, URL-safe base64 (``secrets.token_urlsafe``); it is returned
    once and stored only hashed.
    """
    if User.objects.filter(is_superuser=True).exists():
        return None, None
    password = secrets.token_urlsafe(16)
    user = User.objects.create_superuser(username=username, email=email, password=password)
    return user, password


@transaction.atomic
def api_key_create(*, user: User, name: str) -> tuple[APIKey, str]:
    """Create an API key for ``user`` and return ``(api_key, key)``.

    ``key`` is ``pk_`` followed by 32 random bytes, URL-safe base64 (43 characters); it is returned
    only here and stored only as its SHA-256 (:func:`accounts.models.api_key_hash`).
    """
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = APIKey.objects.create(
        user=user, name=name, prefix=key[:API_KEY_PREFIX_LENGTH], key_hash=api_key_hash(key)
    )
    return api_key, key


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke ``api_key`` from now on; revoking a revoked key keeps its first ``revoked_at``."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


# last_used_at is a hint for people reviewing their keys, not an audit log: one write a minute per
# key at most keeps authentication from writing to the database on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_mark_used(*, api_key: APIKey) -> None:
    """Set ``api_key.last_used_at`` to now when it is unset or older than a minute.

    The conditional UPDATE makes concurrent requests with the same key write at most once.
    """
    now = timezone.now()
    if api_key.last_used_at is not None and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    if APIKey.objects.filter(stale, pk=api_key.pk).update(last_used_at=now):
        api_key.last_used_at = now
