"""Webhooks: endpoints operators register, the deliveries of events to them, and every attempt.

Written only through :mod:`core.webhooks` (services) and the admin that calls them.
"""

import re
import uuid

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import RegexValidator, URLValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Only http(s): a webhook URL never makes Parley read a file or speak another protocol.
webhook_url_validator = URLValidator(schemes=["http", "https"])
env_name_validator = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*$", "Enter an environment variable name (A-Z, 0-9, _).")
EVENT_TYPE_PATTERN = re.compile(r"^(\*|[a-z_]+(\.[a-z_]+)+)$")


def event_types_validator(value) -> None:
    """Accept a non-empty list of event types (``"<noun>.<verb>"``) or ``"*"``."""
    if not isinstance(value, list) or not value:
        raise ValidationError("Choose at least one event type.")
    for item in value:
        if not isinstance(item, str) or not EVENT_TYPE_PATTERN.match(item):
            raise ValidationError(f"{item!r} is not an event type (e.g. document.ready, or * for all).")


class WebhookEndpoint(models.Model):
    """A URL that receives the events of ``event_types`` (``["*"]``: all), signed with its secret.

    The secret (``whsec_<base64 of 32 random bytes>``, as Standard Webhooks defines it) is stored
    because signing needs it (an HMAC key cannot be kept as a hash); the admin shows it once, when it
    is made, and masked afterwards. ``secret_env`` names an environment variable holding the secret
    instead (then nothing secret is stored).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    url = models.URLField("URL", max_length=2000, validators=[webhook_url_validator])
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=200, blank=True, editable=False)
    secret_env = models.CharField(
        "secret variable",
        max_length=100,
        blank=True,
        validators=[env_name_validator],
        help_text="Name of an environment variable holding the signing secret (whsec_...) instead of a "
        "generated one; it is read at each delivery and never stored.",
    )
    event_types = models.JSONField(
        default=list, validators=[event_types_validator], help_text='Event types sent to this endpoint; "*": all.'
    )
    is_enabled = models.BooleanField("enabled", default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(secret="") | ~Q(secret_env=""), name="core_webhookendpoint_has_secret"),
        ]

    def __str__(self) -> str:
        return self.description or self.url


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint: sent until the endpoint answers 2xx or the retry schedule runs out.

    ``payload`` is the event as sent (``{"id", "type", "timestamp", "data"}``); ``event_id`` is its
    ``webhook-id`` header, the same on every attempt, so receivers can drop duplicates. A delivery is
    due when ``next_attempt_at`` has passed (null once it succeeded or failed); the task sending it
    holds ``locked_until`` so no second task sends it meanwhile. The retry schedule counts from
    ``schedule_started_at`` and the attempts after ``schedule_offset`` (a re-send from the admin
    starts a new schedule; the attempt numbers go on).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=100)
    payload = models.JSONField(encoder=DjangoJSONEncoder)  # Decimal, datetime, UUID in data become strings
    status = models.CharField(
        max_length=16, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempt_count = models.PositiveIntegerField("attempts", default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    locked_until = models.DateTimeField(null=True, blank=True)
    schedule_started_at = models.DateTimeField(default=timezone.now)
    schedule_offset = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="core_webhook_due")]
        constraints = [
            # One delivery per event and endpoint: an event announced twice is delivered once.
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="core_one_delivery_per_event"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "retrying", "succeeded", "failed"]),
                name="core_webhookdelivery_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class WebhookAttempt(models.Model):
    """One HTTP POST of a delivery: its status code (null: no answer), latency and the answer's start."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    response_excerpt = models.CharField(max_length=500, blank=True, help_text="The first 500 characters.")
    error = models.CharField(max_length=500, blank=True)
    attempted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="core_one_attempt_per_number")]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error[:40]}"
