import hashlib
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q
from django.utils import timezone


def memory_enabled_default() -> bool:
    """Return whether a new user starts with memory on: the ``MEMORY_DEFAULT_ENABLED`` setting.

    The field's default, so every way of creating a user (sign-up, the admin, ``createsuperuser``,
    ``ensure_operator``, ``create_user`` in a script) follows it; existing users keep their value.
    """
    return settings.MEMORY_DEFAULT_ENABLED


class User(AbstractUser):
    """A person using Parley. API keys in :class:`APIKey`, usage in :class:`UsageRecord` / :class:`UsageDaily`."""

    daily_token_quota = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens allowed per day (UTC). Empty: the site default "
        "(QUOTA_DAILY_TOKENS). 0: unlimited.",
    )
    memory_enabled = models.BooleanField(
        "memory",
        default=memory_enabled_default,
        help_text="Finished answers are embedded and recalled, with the user's own notes, in their other "
        "conversations. New users: MEMORY_DEFAULT_ENABLED.",
    )


# Every API key starts with this, so a Bearer token is told apart from a JWT (which never starts so).
API_KEY_PREFIX = "pk_"
# Characters of the key kept in clear as its public prefix ("pk_" + 8): enough to recognise a key in a
# list, far too few to guess the rest (the key carries 256 random bits after it).
API_KEY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8


def api_key_hash(key: str) -> str:
    """Return the SHA-256 of ``key`` as 64 lowercase hex characters.

    A fast, unsalted hash is the standard for high-entropy tokens (GitHub and Stripe tokens work
    the same way): a key is 32 random bytes, so there is nothing to brute-force or look up in a
    rainbow table, and one indexed lookup per request stays cheap. Passwords, which people choose,
    need a slow salted hash instead (Django's PBKDF2); keys do not.
    """
    return hashlib.sha256(key.encode()).hexdigest()


class APIKey(models.Model):
    """A per-user secret for scripts and apps: ``Authorization: Bearer pk_...`` on /api/v1/ and /v1/.

    Only the SHA-256 of the key is stored (:func:`api_key_hash`); the key is shown once, when made.
    A revoked key (``revoked_at`` set) never authenticates again and is kept for the record, nor
    does one past ``expires_at``. Scopes only narrow what the owner may do: ``allowed_models`` (null:
    every model the owner may use; a list of slugs: those of them the owner may still use, so a
    model the owner loses leaves the key too) and ``rate_limit`` (on top of ``RATE_LIMIT_USER``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, to recognise it.")
    key_hash = models.CharField("key hash (SHA-256)", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Updated at most once a minute.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="The key stops working then. Empty: never.")
    allowed_models = models.JSONField(
        null=True,
        blank=True,
        default=None,
        help_text='Model slugs this key may use, e.g. ["gpt-4o"], within what its owner may use. Empty: all of those.',
    )
    rate_limit = models.CharField(
        max_length=32,
        blank=True,
        help_text='Requests this key may make, e.g. "60/min" (per s, min, hour, day), on top of the user\'s limit.',
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(key_hash__regex=r"^[0-9a-f]{64}$"), name="api_key_hash_is_sha256_hex"),
        ]
        indexes = [models.Index(fields=["user", "revoked_at"], name="api_key_user_active")]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class UsageSource(models.TextChoices):
    CHAT = "chat", "Chat (UI, REST, WebSocket)"
    GATEWAY = "gateway", "OpenAI-compatible /v1"


class UsageStatus(models.TextChoices):
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


class UsageRecord(models.Model):
    """One model request: a chat turn or a /v1 call, with its tokens, cost and timings.

    Kept for the windows the metrics need (hours to days) and pruned by ``manage.py usage prune``;
    :class:`UsageDaily` keeps the per-day totals for longer.
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    model_slug = models.CharField(max_length=100)
    provider = models.CharField(max_length=32, blank=True)
    source = models.CharField(max_length=16, choices=UsageSource.choices)
    status = models.CharField(max_length=16, choices=UsageStatus.choices)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField("cost (USD)", max_digits=12, decimal_places=6, default=0)
    ttft_ms = models.PositiveIntegerField("TTFT (ms)", null=True, blank=True)
    latency_ms = models.PositiveIntegerField("latency (ms)", null=True, blank=True)
    cached = models.BooleanField(default=False)
    deployment = models.CharField(
        max_length=200, blank=True, help_text="<model>/<deployment> that served it; empty for a cached answer."
    )
    route = models.CharField(
        max_length=64, blank=True, help_text='Why that deployment: "routed" or "fallback:<reason>".'
    )
    # The key a /v1 request (chat completions, embeddings) was made with, so spend per key is known.
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records", verbose_name="API key"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"], name="usage_record_user_time")]

    def __str__(self):
        return f"{self.user_id} {self.model_slug} {self.status} {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageDaily(models.Model):
    """Per user, model and UTC day: requests, errors, cache hits, tokens and cost.

    Written only by :func:`accounts.services.usage_record`, with atomic increments, so totals are
    right however many processes record at once.
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_days")
    day = models.DateField()
    model_slug = models.CharField(max_length=100)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cached_requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField("cost (USD)", max_digits=14, decimal_places=6, default=0)

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        ordering = ["-day", "user_id", "model_slug"]
        constraints = [
            models.UniqueConstraint(fields=["user", "day", "model_slug"], name="usage_daily_unique_user_day_model")
        ]

    def __str__(self):
        return f"{self.user_id} {self.day} {self.model_slug}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AuditSource(models.TextChoices):
    ADMIN = "admin", "Admin"
    API = "api", "REST API"
    WEB = "web", "Web UI"
    WS = "ws", "WebSocket"
    CLI = "cli", "manage.py"
    SYSTEM = "system", "System (tasks, scripts)"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        # One update is Django's own: a deleted user's events lose their actor (on_delete=SET_NULL).
        if kwargs != {"actor": None}:
            raise TypeError("Audit events are append-only: they are never updated.")
        return super().update(**kwargs)


class AuditEvent(models.Model):
    """One change of state that matters: who (``actor``), did what (``action``), to what (``target_*``),
    when, from where (``source``, ``ip``, ``request_id``).

    Append-only: written only by :func:`accounts.services.audit_record`, never updated (``save`` of a
    stored row raises), deleted only by :func:`accounts.services.audit_prune` after
    ``AUDIT_RETENTION_DAYS``. ``changes`` holds field diffs ``{"field": [old, new]}`` (secret-looking
    fields masked) or the action's details; it never holds a key, a password or a token.
    """

    id = models.BigAutoField(primary_key=True)
    created = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    # SET_NULL keeps the event when its user goes; actor_label keeps their name as it was.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(
        max_length=200, blank=True, help_text="The actor's username at the time, or who ran a command."
    )
    action = models.CharField(max_length=64, help_text="Dotted: api_key.create, auth.login_failed, cache.flush…")
    target_type = models.CharField(max_length=100, blank=True, help_text="app_label.model, or a kind of thing.")
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=160, blank=True)
    ip = models.GenericIPAddressField("IP", null=True, blank=True)
    source = models.CharField(max_length=16, choices=AuditSource.choices)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        verbose_name = "audit event"
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["action", "created"], name="audit_event_action_time"),
            models.Index(fields=["actor", "created"], name="audit_event_actor_time"),
            models.Index(fields=["target_type", "target_id"], name="audit_event_target"),
        ]

    def __str__(self):
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.actor_label or '-'} {self.action} {self.target_label}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Audit events are append-only: a stored event is never changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are deleted only by accounts.services.audit_prune (AUDIT_RETENTION_DAYS).")


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day (UTC)"
    WEEK = "week", "Week (UTC, from Monday)"
    MONTH = "month", "Month (UTC)"


class Budget(models.Model):
    """A limit in USD on what one user, one group (all its members together) or one API key may spend
    on priced models per period (UTC day, week from Monday, or month).

    Enforced at admission by :mod:`accounts.budgets` (429 ``budget_exceeded``); spend is the sum of
    :class:`UsageRecord` costs in the period. ``threshold_percent`` (null: none) of the amount fires
    ``budget.threshold`` once per period; 100% fires ``budget.exceeded``.
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets")
    api_key = models.ForeignKey(
        APIKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets", verbose_name="API key"
    )
    amount = models.DecimalField(
        "amount (USD)",
        max_digits=12,
        decimal_places=2,
        help_text="USD per period. 0 refuses every request to a priced model.",
    )
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    threshold_percent = models.PositiveSmallIntegerField(
        "threshold (%)",
        null=True,
        blank=True,
        default=80,
        help_text="Percent of the amount at which budget.threshold is sent, once per period. Empty: none.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["period", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(user__isnull=False, group__isnull=True, api_key__isnull=True)
                    | Q(user__isnull=True, group__isnull=False, api_key__isnull=True)
                    | Q(user__isnull=True, group__isnull=True, api_key__isnull=False)
                ),
                name="budget_exactly_one_subject",
                violation_error_message="A budget is for exactly one of: a user, a group, an API key.",
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="budget_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(threshold_percent__isnull=True) | Q(threshold_percent__gte=1, threshold_percent__lte=100),
                name="budget_threshold_1_to_100",
            ),
            models.UniqueConstraint(
                fields=["user", "period"], condition=Q(user__isnull=False), name="budget_unique_user_period"
            ),
            models.UniqueConstraint(
                fields=["group", "period"], condition=Q(group__isnull=False), name="budget_unique_group_period"
            ),
            models.UniqueConstraint(
                fields=["api_key", "period"], condition=Q(api_key__isnull=False), name="budget_unique_api_key_period"
            ),
        ]

    def __str__(self):
        return f"{self.subject_label}: ${self.amount} per {self.period}"

    @property
    def subject_type(self) -> str:
        """``user``, ``group`` or ``api_key``."""
        return "user" if self.user_id else "group" if self.group_id else "api_key"

    @property
    def subject_label(self) -> str:
        if self.user_id:
            return f"user {self.user}"
        if self.group_id:
            return f"group {self.group}"
        return f"API key {self.api_key}"


class BudgetAlertKind(models.TextChoices):
    THRESHOLD = "threshold", "Threshold reached"
    EXCEEDED = "exceeded", "Exceeded"


class BudgetAlert(models.Model):
    """A budget's threshold or amount reached in one period: at most one of each kind per period.

    The unique constraint is what makes ``budget.threshold`` / ``budget.exceeded`` fire once per
    period however many processes settle spend at once (:func:`accounts.budgets.budget_spend_add`).
    """

    id = models.BigAutoField(primary_key=True)
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=BudgetAlertKind.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    spent = models.DecimalField("spent (USD)", max_digits=14, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "kind"], name="budget_alert_once_per_period")
        ]

    def __str__(self):
        return f"{self.budget} {self.kind} {self.period_start:%Y-%m-%d}"
