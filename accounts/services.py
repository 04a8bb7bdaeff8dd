"""Writes for accounts."""

import ipaddress
import logging
import re
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from core import prometheus
from core.log import REDACTED, redact, request_id_get

from .audit import AuditContext, audit_context_get, authenticated
from .budgets import budget_spend_add
from .middleware import request_audit_context
from .models import (
    API_KEY_PREFIX,
    API_KEY_PREFIX_LENGTH,
    APIKey,
    AuditEvent,
    Budget,
    BudgetPeriod,
    UsageDaily,
    UsageRecord,
    UsageSource,
    UsageStatus,
    User,
    api_key_hash,
)
from .throttling import parse_rate

logger = logging.getLogger(__name__)


@transaction.atomic
def operator_ensure(
    *, username: str = "admin", email: str = "", password: str | None = None
) -> tuple[User | None, str | None]:
    """Create an operator (superuser) when no superuser exists.

    With ``password`` None, a password is generated: 16 random bytes, URL-safe base64
    (``secrets.token_urlsafe``). Return ``(user, generated_password)`` for a new operator
    (``generated_password`` None when ``password`` was given: it is returned once, stored only
    hashed), or ``(None, None)`` when a superuser already exists. ``email`` may be empty.
    Raise ``django.core.exceptions.ValidationError`` for a username or email the user form would
    refuse (invalid characters, taken, too long).
    """
    if User.objects.filter(is_superuser=True).exists():
        return None, None
    generated = secrets.token_urlsafe(16) if password is None else None
    user = User(
        username=User.normalize_username(username),
        email=User.objects.normalize_email(email),
        is_staff=True,
        is_superuser=True,
    )
    user.set_password(generated or password)
    user.full_clean()
    user.save()
    audit_record(action="user.create", target=user, changes={"is_staff": True, "is_superuser": True})
    return user, generated


@transaction.atomic
def api_key_create(
    *,
    user: User,
    name: str,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit: str = "",
) -> tuple[APIKey, str]:
    """Create an API key for ``user`` and return ``(api_key, key)``.

    ``key`` is ``pk_`` followed by 32 random bytes, URL-safe base64 (43 characters); it is returned
    only here and stored only as its SHA-256 (:func:`accounts.models.api_key_hash`). Scopes narrow
    the key, never widen it: ``allowed_models`` (model slugs; None: every model ``user`` may use;
    a slug ``user`` may not use gives nothing), ``expires_at`` (aware datetime; None: never),
    ``rate_limit`` (``"60/min"``; empty: only the user's limit). Raise ``ValueError`` for an
    ``expires_at`` not in the future or a malformed ``rate_limit``.
    """
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("expires_at must be in the future.")
    parse_rate(rate_limit)  # raises ValueError
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = APIKey.objects.create(
        user=user,
        name=name,
        prefix=key[:API_KEY_PREFIX_LENGTH],
        key_hash=api_key_hash(key),
        allowed_models=sorted(set(allowed_models)) if allowed_models is not None else None,
        expires_at=expires_at,
        rate_limit=rate_limit,
    )
    # The prefix only: the key itself exists nowhere but in the caller's hands.
    audit_record(
        action="api_key.create",
        target=api_key,
        changes={
            "name": name,
            "prefix": api_key.prefix,
            "owner": user.username,
            "allowed_models": api_key.allowed_models,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "rate_limit": rate_limit,
        },
    )
    return api_key, key


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke ``api_key`` from now on; revoking a revoked key keeps its first ``revoked_at``."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(action="api_key.revoke", target=api_key, changes={"prefix": api_key.prefix})
    return api_key


@transaction.atomic
def api_keys_revoke_all(*, user: User, reason: str = "") -> int:
    """Revoke every live API key of ``user`` from now on; return how many were revoked.

    One ``api_key.revoke`` audit event per key, with ``reason`` (e.g. ``"password changed"``) when given.
    """
    live = list(APIKey.objects.select_for_update().filter(user=user, revoked_at__isnull=True))
    now = timezone.now()
    APIKey.objects.filter(pk__in=[api_key.pk for api_key in live]).update(revoked_at=now)
    for api_key in live:
        changes = {"prefix": api_key.prefix, **({"reason": reason} if reason else {})}
        audit_record(action="api_key.revoke", target=api_key, changes=changes)
    return len(live)


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


def usage_record(
    *,
    user: User,
    model_slug: str,
    source: UsageSource | str,
    status: UsageStatus | str,
    provider: str = "",
    prompt_tokens: int | None = 0,
    completion_tokens: int | None = 0,
    cost: Decimal | None = None,
    ttft_ms: int | None = None,
    latency_ms: int | None = None,
    cached: bool = False,
    deployment: str = "",
    route: str = "",
    api_key_id=None,
) -> UsageRecord:
    """Record one model request and add it to the user's :class:`UsageDaily` row for today (UTC).

    Tokens are counts (``None`` counts as 0), ``cost`` USD, ``ttft_ms``/``latency_ms`` milliseconds;
    ``deployment`` (``<model>/<name>``) served it, for ``route`` (``routed`` / ``fallback:<reason>``);
    ``api_key_id``: the API key a ``/v1`` request was made with. Once committed, the tokens count
    against the daily quota and the cost against every applicable budget
    (:func:`accounts.budgets.budget_spend_add`, which may emit ``budget.threshold`` / ``budget.exceeded``).
    The daily row is incremented with ``F()`` expressions in SQL, so concurrent processes never lose
    an update; the first request of a day creates the row (a racing creator retries as an update).
    """
    prompt_tokens, completion_tokens, cost = prompt_tokens or 0, completion_tokens or 0, cost or Decimal(0)
    with transaction.atomic():
        record = UsageRecord.objects.create(
            user=user,
            model_slug=model_slug,
            provider=provider,
            source=source,
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            ttft_ms=ttft_ms,
            latency_ms=latency_ms,
            cached=cached,
            deployment=deployment,
            route=route,
            api_key_id=api_key_id,
        )
        increments = {
            "requests": F("requests") + 1,
            "errors": F("errors") + int(status == UsageStatus.ERROR),
            "cached_requests": F("cached_requests") + int(cached),
            "prompt_tokens": F("prompt_tokens") + prompt_tokens,
            "completion_tokens": F("completion_tokens") + completion_tokens,
            "cost": F("cost") + cost,
        }
        day = record.created_at.date()
        rows = UsageDaily.objects.filter(user=user, day=day, model_slug=model_slug)
        if not rows.update(**increments):
            try:
                with transaction.atomic():
                    UsageDaily.objects.create(
                        user=user,
                        day=day,
                        model_slug=model_slug,
                        requests=1,
                        errors=int(status == UsageStatus.ERROR),
                        cached_requests=int(cached),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cost=cost,
                    )
            except IntegrityError:
                rows.update(**increments)
        # Count the tokens against the daily quota once they are stored. (Imported here: accounts.quotas
        # imports DRF, whose settings import accounts.authentication, which imports this module.)
        from .quotas import quota_add

        transaction.on_commit(lambda: quota_add(user_id=user.pk, day=day, tokens=prompt_tokens + completion_tokens))
        if cost > 0:
            transaction.on_commit(
                lambda: budget_spend_add(user_id=user.pk, api_key_id=api_key_id, cost=cost, at=record.created_at)
            )
    # The one place every model request passes: the Prometheus counters and histograms move here.
    prometheus.llm_request_observe(
        model=model_slug,
        provider=provider,
        status=status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        deployment=deployment,
    )
    return record


BUDGET_AUDITED_FIELDS = ("amount", "period", "threshold_percent")


@transaction.atomic
def budget_set(
    *,
    amount: Decimal,
    period: BudgetPeriod | str = BudgetPeriod.MONTH,
    user: User | None = None,
    group=None,
    api_key: APIKey | None = None,
    threshold_percent: int | None = 80,
) -> Budget:
    """Create or change the ``period`` budget of one subject (``user``, ``group`` or ``api_key``); return it.

    ``amount`` is USD per period; ``threshold_percent`` (1 to 100, None: none) of it fires
    ``budget.threshold``. Audited as ``budget.create`` / ``budget.change`` with the diffs (who raised
    it, from what to what). Raise ``django.core.exceptions.ValidationError`` unless exactly one
    subject is given or for an out-of-range value.
    """
    subject = {"user": user, "group": group, "api_key": api_key}
    budget = Budget.objects.select_for_update().filter(**subject, period=period).first()
    if budget is None:
        budget = Budget(**subject, period=period, amount=amount, threshold_percent=threshold_percent)
        budget.full_clean()
        budget.save()
        audit_record(
            action="budget.create",
            target=budget,
            changes={"amount": str(budget.amount), "period": period, "threshold_percent": threshold_percent},
        )
        return budget
    old = {name: getattr(budget, name) for name in BUDGET_AUDITED_FIELDS}
    budget.amount, budget.threshold_percent = amount, threshold_percent
    budget.full_clean()
    changes = _budget_changes(old, budget)
    if changes:
        budget.save(update_fields=["amount", "threshold_percent", "updated_at"])
        audit_record(action="budget.change", target=budget, changes=changes)
    return budget


def _budget_changes(old: dict, budget: Budget) -> dict:
    changes = {}
    for name in BUDGET_AUDITED_FIELDS:
        before, after = old[name], getattr(budget, name)
        if name == "amount":
            before, after = Decimal(before).quantize(Decimal("0.01")), Decimal(after).quantize(Decimal("0.01"))
        if before != after:
            changes[name] = [audit_clean(before), audit_clean(after)]
    return changes


def user_memory_set(*, user: User, enabled: bool) -> User:
    """Turn ``user``'s memory on or off; return the user.

    Off: nothing new is remembered from their conversations and nothing is recalled into them; the
    memories already stored stay (the user can see and delete them) and are recalled again once it
    is back on.
    """
    if user.memory_enabled != enabled:
        audit_record(action="user.change", target=user, changes={"memory_enabled": [user.memory_enabled, enabled]})
        user.memory_enabled = enabled
        user.save(update_fields=["memory_enabled"])
    return user


def user_group(user_id: int) -> str:
    """Return the channel-layer group every WebSocket of user ``user_id`` joins (chat and documents)."""
    return f"user.{user_id}"


def user_deactivate(*, user: User) -> User:
    """Deactivate ``user`` and close their open WebSockets.

    An inactive user's sessions, JWTs and API keys stop authenticating at once (Django's backend,
    simplejwt and :class:`accounts.authentication.APIKeyAuthentication` all check ``is_active``);
    sockets already open get a ``session.close`` on the user's group once the change is committed.
    """
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
        audit_record(action="user.deactivate", target=user, changes={"is_active": [True, False]})
    # (The User post_save receiver in accounts.signals closes them too; closing twice is harmless.)
    transaction.on_commit(lambda: user_sockets_close(user_id=user.pk))
    return user


def user_sockets_close(*, user_id: int, reason: str = "deactivated") -> None:
    """Close every open WebSocket (chat and ``/ws/documents/``) of user ``user_id``, on all processes.

    Call after the change that ended the user's right is committed (``transaction.on_commit``): a
    socket that reconnects then authenticates against the new state. Sockets close with code 4403.
    Never raises: with Redis down the close is logged and skipped (the sockets cannot reach the
    channel layer either, and their reconnects authenticate afresh).
    """
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user_id), {"type": "session.close"})
        logger.info("Closed the WebSockets of user %s (%s)", user_id, reason)
    except Exception as exc:
        logger.warning("Could not close the WebSockets of user %s (%s)", user_id, type(exc).__name__)


@transaction.atomic
def user_sso_sync(*, user: User, groups: list[str], staff: bool | None = None, provider: str = "") -> dict:
    """Make ``user``'s groups exactly ``groups`` (names from the identity provider's claim), and their
    staff flag ``staff`` (None: unchanged); return the changes ``{"groups_added", "groups_removed":
    [names], "is_staff"?: [old, new]}``.

    Called at every single-sign-on login (:mod:`accounts.sso`), so groups given at the provider are
    added and groups taken away there are removed, locally assigned ones included: the provider is
    the source of truth of a single-sign-on user's groups. Missing groups are created (empty of
    rights: an operator gives them models and tools). A removal closes the user's open WebSockets
    once committed (the ``m2m_changed`` receiver in :mod:`accounts.signals`), and every path checks
    the groups at the next request. Superuser status is never given or taken here. One
    ``user.sso_sync`` audit event when anything changed.
    """
    wanted = {name.strip()[:150] for name in groups if isinstance(name, str) and name.strip()}
    current = {group.name: group for group in user.groups.all()}
    added = sorted(wanted - current.keys())
    removed = sorted(current.keys() - wanted)
    if removed:
        user.groups.remove(*(current[name] for name in removed))
    if added:
        user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in added))
    changes: dict = {"groups_added": added, "groups_removed": removed}
    if staff is not None and user.is_staff != staff:
        changes["is_staff"] = [user.is_staff, staff]
        user.is_staff = staff
        user.save(update_fields=["is_staff"])  # taking it away closes their sockets (accounts.signals)
    if added or removed or "is_staff" in changes:
        audit_record(action="user.sso_sync", target=user, changes={**changes, "provider": provider})
    return changes


def usage_prune(*, record_days: int, daily_days: int | None = None) -> tuple[int, int]:
    """Delete usage older than the given ages; return ``(usage records deleted, daily rows deleted)``.

    :class:`UsageRecord` rows created more than ``record_days`` days ago go, and :class:`UsageDaily`
    rows of UTC days more than ``daily_days`` (default ``record_days``) days before today.
    Raise ValueError for a negative age.
    """
    daily_days = record_days if daily_days is None else daily_days
    if record_days < 0 or daily_days < 0:
        raise ValueError("Retention must be 0 days or more.")
    now = timezone.now()
    with transaction.atomic():
        records, _ = UsageRecord.objects.filter(created_at__lt=now - timedelta(days=record_days)).delete()
        days, _ = UsageDaily.objects.filter(day__lt=now.date() - timedelta(days=daily_days)).delete()
    return records, days


# Names of values never written to an audit event (their change is, as "[masked]"): a field, form
# field or setting that holds a password, secret, credential or API key anywhere in its name, or whose
# name ends in key, token or hash. (daily_token_quota and max_tokens are counts, and stay readable.)
_SECRET_ANYWHERE = re.compile(r"(?i)password|passwd|secret|credential|api_?key|authorization")
_SECRET_LAST_WORD = {"key", "token", "hash", "pin", "otp"}
MASKED = "[masked]"


def audit_is_secret_name(name: Any) -> bool:
    """Return whether a field called ``name`` may hold a secret (``password1``, ``client_secret``,
    ``api_key_env``, ``access_token``, ``key_hash``…), so that its values are masked."""
    name = str(name)
    last_word = re.split(r"[_\-\s.]+", name.lower().rstrip("0123456789_"))[-1]
    return bool(_SECRET_ANYWHERE.search(name)) or last_word in _SECRET_LAST_WORD


# A key's public prefix ("pk_" + 8, API_KEY_PREFIX_LENGTH) is kept; anything longer after "pk_" is a key.
_KEY_PREFIX_ONLY = re.compile(r"\bpk_[A-Za-z0-9_\-]{8}(?![A-Za-z0-9_\-])")
_KEY = re.compile(r"\bpk_[A-Za-z0-9_\-]{9,}")


def audit_redact(text: str) -> str:
    """Return ``text`` through :func:`core.log.redact` (keys, Bearer tokens, JWTs, ``password=…``),
    keeping API-key prefixes (``pk_`` + 8 characters), which name a key without giving it away."""
    # NUL characters go first: PostgreSQL stores none in text or JSON, and the placeholders use them.
    text = _KEY.sub(f"pk_{REDACTED}", text.replace("\x00", ""))
    kept: list[str] = []

    def hold(match: re.Match) -> str:
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    text = redact(_KEY_PREFIX_ONLY.sub(hold, text))
    return re.sub(r"\x00(\d+)\x00", lambda match: kept[int(match.group(1))], text).replace("\x00", "")


def audit_clean(value: Any, depth: int = 0) -> Any:
    """Return ``value`` as JSON-ready data with secrets taken out.

    Values under secret-looking names (:func:`audit_is_secret_name`) become ``"[masked]"``; strings
    pass through :func:`audit_redact` (API keys, Bearer tokens, JWTs); model instances become
    ``str()``, querysets and other iterables lists; anything else ``str()``.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return audit_redact(value)
    if depth < 6 and isinstance(value, dict):
        return {str(k): MASKED if audit_is_secret_name(k) else audit_clean(v, depth + 1) for k, v in value.items()}
    if depth < 6 and isinstance(value, (list, tuple, set, frozenset, models.QuerySet)):
        return [audit_clean(v, depth + 1) for v in value]
    return audit_redact(str(value))


def _ip_or_none(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return None


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    target_label: str = "",
    changes: dict | None = None,
    request=None,
    source: str | None = None,
) -> AuditEvent:
    """Append one :class:`AuditEvent` for ``action`` (dotted: ``api_key.create``, ``model.change``…).

    ``actor``, ``source`` and the IP default to the running :class:`accounts.audit.AuditContext`
    (the HTTP request, WebSocket or command; ``system`` and no actor elsewhere), or to ``request``'s
    when one is given; the request id is :func:`core.log.request_id_get`'s. ``target`` (a model
    instance) gives ``target_type`` (``app_label.model``), ``target_id`` (pk) and ``target_label``
    (``str()``), each of which may be given instead for a target that is no row (a cache layer).
    ``changes`` (``{"field": [old, new]}`` or the action's details) is cleaned by :func:`audit_clean`:
    a secret never reaches the log. Write it in the transaction of the change it records, so both
    are kept or neither.
    """
    context: AuditContext = request_audit_context(request) if request is not None else audit_context_get()
    actor = authenticated(actor) or authenticated(context.actor())
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk if target.pk is not None else "")
        target_label = target_label or str(target)
    return AuditEvent.objects.create(
        actor=actor,
        actor_label=(actor.get_username() if actor is not None else context.actor_label)[:200],
        action=action,
        target_type=target_type[:100],
        target_id=str(target_id)[:64],
        target_label=audit_redact(str(target_label))[:200],
        changes=audit_clean(changes or {}),
        request_id=(request_id_get() or "")[:160],
        ip=_ip_or_none(context.ip),
        source=source or context.source,
    )


def audit_prune(*, days: int) -> int:
    """Delete the audit events created more than ``days`` days ago; return how many.

    The only way an audit event is deleted (``AUDIT_RETENTION_DAYS``, Celery beat). Raise ValueError
    for a negative age.
    """
    if days < 0:
        raise ValueError("Retention must be 0 days or more.")
    deleted, _ = AuditEvent.objects.filter(created__lt=timezone.now() - timedelta(days=days)).delete()
    return deleted
