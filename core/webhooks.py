"""Signed webhooks: every domain event (:mod:`core.events`) POSTed to the endpoints that want it.

Flow: :func:`event_emit` announces an event once its transaction commits; :func:`webhooks_on_event`
(connected in :class:`core.apps.CoreConfig`) stores one :class:`~core.models.WebhookDelivery` per
enabled endpoint whose ``event_types`` hold the type or ``"*"``, and queues the Celery task
``core.webhook_deliver`` for each once they are stored. The task (:func:`webhook_deliver`) makes one
attempt: a POST of the event as JSON with the Standard Webhooks headers, signed by the
``standardwebhooks`` library:

    webhook-id: <event id, the same on every attempt>
    webhook-timestamp: <Unix seconds of this attempt>
    webhook-signature: v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>

Any 2xx answer is a success. Anything else (another status, a redirect, which is never followed, a
connection error, a timeout) is logged as a failed attempt and retried after the next delay of
``WEBHOOK_RETRY_SCHEDULE``, no later than ``WEBHOOK_RETRY_WINDOW_SECONDS`` after the first attempt;
then the delivery ends ``failed`` (an operator can re-send it from the admin).

How retries are queued: a delay up to ``WEBHOOK_SWEEP_SECONDS`` is a Celery countdown; longer ones
(minutes to hours) are left to the beat sweep (:func:`webhook_deliveries_enqueue_due`, every
``WEBHOOK_SWEEP_SECONDS``), which queues every due delivery. Both, because a countdown task lives in
the broker: with Redis, a task whose countdown outlasts the visibility timeout (an hour) is delivered
again each hour, and one queued while the broker is down, or held by a worker that dies, or kept by
a Redis that restarts without persistence, is lost. The sweep finds every due delivery in the
database whatever happened to its task. A task that runs twice (a duplicate, or one the sweep queued
as well) sends once: a task first takes the delivery's lease (``locked_until``) in one conditional
UPDATE, and only while it is due and not finished.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from standardwebhooks import Webhook

from .models import WebhookAttempt, WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from .queue import task_enqueue, task_enqueue_on_commit

logger = logging.getLogger(__name__)

# The event types an endpoint can ask for, with what their ``data`` holds (README, "Webhooks").
EVENT_TYPES = {
    "budget.threshold": "a budget crossed one of its alert thresholds",
    "budget.exceeded": "a budget's spend reached its limit",
    "document.ready": "a knowledge-base document was ingested",
    "document.failed": "a knowledge-base document could not be ingested",
    "deployment.unhealthy": "a model deployment started failing (once per incident)",
    "deployment.recovered": "an unhealthy model deployment served a request or probe again",
    "user.created": "an account was created",
    "feedback.created": "a user rated an answer",
}
ALL_EVENTS = "*"
TEST_EVENT = "webhook.test"  # sent by the admin's test action to the chosen endpoints only

SECRET_PREFIX = "whsec_"  # noqa: S105 (Standard Webhooks: "whsec_" + base64 of the key)
SECRET_BYTES = 32  # 256-bit keys; the spec asks for 24 to 64 bytes
RESPONSE_EXCERPT_CHARS = 500
RESPONSE_READ_BYTES = 4096  # of an answer's body read at most: a huge or endless body is cut here
USER_AGENT = "Parley-Webhooks/1"


class WebhookSecretMissing(Exception):
    """The endpoint's secret variable is not set in this process's environment."""


def webhook_secret_generate() -> str:
    """Return a new secret: ``whsec_`` + base64 of :data:`SECRET_BYTES` random bytes (Standard Webhooks)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_endpoint_secret(endpoint: WebhookEndpoint) -> str:
    """Return the secret that signs ``endpoint``'s deliveries: its variable's value, or the stored one.

    Raise :class:`WebhookSecretMissing` when ``secret_env`` names a variable that is not set.
    """
    if endpoint.secret_env:
        value = os.environ.get(endpoint.secret_env, "")
        if not value:
            raise WebhookSecretMissing(f"The secret variable {endpoint.secret_env} is not set.")
        return value
    return endpoint.secret


@transaction.atomic
def webhook_endpoint_create(
    *,
    url: str,
    event_types: list[str],
    description: str = "",
    secret_env: str = "",
    is_enabled: bool = True,
) -> tuple[WebhookEndpoint, str | None]:
    """Register an endpoint; return ``(endpoint, secret)``, the generated secret to show once (None
    when ``secret_env`` names the variable holding it). Raise ``ValidationError`` for a URL that is
    not http(s), no or malformed event types, or a variable name that is not one."""
    endpoint = WebhookEndpoint(
        url=url, description=description, secret_env=secret_env, event_types=event_types, is_enabled=is_enabled
    )
    generated = None if secret_env else webhook_secret_generate()
    endpoint.secret = generated or ""
    endpoint.full_clean()
    endpoint.save()
    return endpoint, generated


@transaction.atomic
def webhook_endpoint_secret_rotate(*, endpoint: WebhookEndpoint) -> str:
    """Give ``endpoint`` a new generated secret (its variable, if any, no longer used); return it, to show once.

    Deliveries not yet sent are signed with the new one.
    """
    endpoint.secret, endpoint.secret_env = webhook_secret_generate(), ""
    endpoint.save(update_fields=["secret", "secret_env"])
    return endpoint.secret


def _event(event_type: str, data: dict) -> dict:
    """An event in :mod:`core.events`' shape, for one not announced through it (the test event)."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": event_type,
        "timestamp": timezone.now().isoformat(),
        "data": data,
    }


def _deliveries_store(*, endpoints: list[WebhookEndpoint], event: dict) -> list[WebhookDelivery]:
    """Store a delivery of ``event`` for each of ``endpoints`` (one INSERT) and queue each once committed."""
    now = timezone.now()
    with transaction.atomic():
        deliveries = WebhookDelivery.objects.bulk_create(
            [
                WebhookDelivery(
                    endpoint=endpoint,
                    event_id=event["id"],
                    event_type=event["type"],
                    payload=event,
                    next_attempt_at=now,
                    schedule_started_at=now,
                )
                for endpoint in endpoints
            ],
            # The same event announced twice (a listener connected twice) is delivered once.
            ignore_conflicts=True,
        )
        for delivery in deliveries:
            _enqueue_on_commit(delivery.pk)
    return deliveries


def _enqueue_on_commit(delivery_id) -> None:
    from .tasks import webhook_deliver_task  # here: tasks.py imports this module

    task_enqueue_on_commit(webhook_deliver_task, str(delivery_id))


def webhook_deliveries_create(*, event: dict) -> list[WebhookDelivery]:
    """Store and queue a delivery of ``event`` (:mod:`core.events`' shape) for every enabled endpoint
    that wants its type; return them (empty when none does)."""
    endpoints = list(
        WebhookEndpoint.objects.filter(is_enabled=True).filter(
            Q(event_types__contains=[event["type"]]) | Q(event_types__contains=[ALL_EVENTS])
        )
    )
    if not endpoints:
        return []
    return _deliveries_store(endpoints=endpoints, event=event)


def webhooks_on_event(sender, event: dict, **kwargs) -> None:
    """Receiver of :data:`core.events.event_emitted`: store and queue the deliveries of ``event``.

    Runs where the event was emitted, after its transaction committed (a failure is logged by
    :func:`core.events.event_emit`, which also closes a database connection it opened for this).
    """
    webhook_deliveries_create(event=event)


def webhook_test_send(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a ``webhook.test`` event to ``endpoint`` alone (whatever its event types); return the delivery."""
    event = _event(TEST_EVENT, {"endpoint_id": str(endpoint.pk), "description": endpoint.description})
    (delivery,) = _deliveries_store(endpoints=[endpoint], event=event)
    return delivery


def webhook_deliveries_resend(*, delivery_ids: list) -> int:
    """Send ``delivery_ids`` again now, whatever their status, with a new retry schedule; return how many.

    The event keeps its id (``webhook-id``): a receiver that already handled it may recognise it.
    """
    now = timezone.now()
    with transaction.atomic():
        ids = list(WebhookDelivery.objects.select_for_update().filter(pk__in=delivery_ids).values_list("pk", flat=True))
        # The lease stays: a delivery being sent right now is sent again once that attempt is over.
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status=WebhookDeliveryStatus.PENDING,
            next_attempt_at=now,
            schedule_started_at=now,
            schedule_offset=F("attempt_count"),
            updated_at=now,
        )
        for delivery_id in ids:
            _enqueue_on_commit(delivery_id)
    return len(ids)


def retry_delay(*, retries_done: int, first_attempt_at: datetime, now: datetime) -> float | None:
    """Return the seconds to wait before the next attempt, or None when no attempt is left.

    ``retries_done``: failed attempts of the current schedule minus one (0 after the first attempt).
    The delay is ``WEBHOOK_RETRY_SCHEDULE[retries_done]``, cut so that the attempt starts no later than
    ``WEBHOOK_RETRY_WINDOW_SECONDS`` after ``first_attempt_at``; None once the schedule is used up or
    the window is over.
    """
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    if retries_done >= len(schedule):
        return None
    window_end = first_attempt_at + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
    left = (window_end - now).total_seconds()
    if left <= 0:
        return None
    return min(float(schedule[retries_done]), left)


def _claim(delivery_id) -> bool:
    """Take the lease of ``delivery_id`` if it is due and unfinished and nobody holds it; return whether taken.

    One conditional UPDATE: of two tasks for one delivery, one takes it. The lease outlasts an
    attempt (the POST's timeout for each of connect, write and read, plus a margin), so an
    attempt is never made twice at once, and one whose worker died is free again after it.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=4 * settings.WEBHOOK_TIMEOUT_SECONDS + 30)
    return bool(
        WebhookDelivery.objects.filter(
            pk=delivery_id,
            status__in=[WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.RETRYING],
            # A countdown run early by a worker whose clock is behind does nothing: the sweep sends it.
            next_attempt_at__lte=now,
        )
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .update(locked_until=lease)
    )


def _post(*, url: str, body: str, headers: dict[str, str]) -> tuple[int | None, str, str]:
    """POST ``body`` to ``url``; return ``(status code or None, first characters of the answer, error)``.

    Redirects are not followed (a 3xx is a failure: a redirect could lead anywhere, private
    networks included). Once the status has come, at most :data:`RESPONSE_READ_BYTES` of the answer
    are read, for at most ``WEBHOOK_TIMEOUT_SECONDS``; a body that stalls or breaks off changes
    nothing (the status is the answer), so an attempt lasts at most about four timeouts.
    """
    timeout = httpx.Timeout(settings.WEBHOOK_TIMEOUT_SECONDS)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", url, content=body.encode(), headers=headers) as response,
        ):
            read = b""
            deadline = time.monotonic() + settings.WEBHOOK_TIMEOUT_SECONDS
            try:
                for chunk in response.iter_bytes():
                    read += chunk
                    if len(read) >= RESPONSE_READ_BYTES or time.monotonic() > deadline:
                        break
            except httpx.HTTPError:
                pass
            excerpt = read[:RESPONSE_READ_BYTES].decode("utf-8", errors="replace")[:RESPONSE_EXCERPT_CHARS]
            error = ""
            if response.is_redirect:
                error = f"redirect to {response.headers.get('location', '?')[:200]} not followed"
            elif not response.is_success:
                error = f"HTTP {response.status_code}"
            return response.status_code, excerpt, error
    except httpx.TimeoutException as exc:
        return None, "", f"timeout ({type(exc).__name__}) after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        return None, "", f"{type(exc).__name__}: {exc}"[:500]


def webhook_deliver(*, delivery_id) -> WebhookDelivery | None:
    """Make one attempt of ``delivery_id`` if it is due; return the delivery after it (None: nothing done).

    Nothing is done for a delivery that succeeded, failed, is not due yet or is being sent by another
    task (see :func:`_claim`): a duplicate task is harmless. The attempt is logged
    (:class:`~core.models.WebhookAttempt`: number, status code, latency in ms, the answer's first
    500 characters, the error). Then the delivery is ``succeeded`` (2xx), ``retrying`` with
    ``next_attempt_at`` (see :func:`retry_delay`), or ``failed``. A delivery whose endpoint was
    disabled meanwhile ends ``failed`` without an attempt. Blocking: up to ``WEBHOOK_TIMEOUT_SECONDS``
    per network step.
    """
    if not _claim(delivery_id):
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.is_enabled and delivery.event_type != TEST_EVENT:
        WebhookDelivery.objects.filter(pk=delivery_id).update(
            status=WebhookDeliveryStatus.FAILED,
            next_attempt_at=None,
            locked_until=None,
            last_error="The endpoint is disabled.",
            updated_at=timezone.now(),
        )
        return WebhookDelivery.objects.get(pk=delivery_id)

    started = time.perf_counter()
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    try:
        signer = Webhook(webhook_endpoint_secret(endpoint))
    except WebhookSecretMissing as exc:
        status_code, excerpt, error = None, "", str(exc)
    except Exception as exc:  # a malformed secret in the variable: the library cannot decode it
        status_code, excerpt, error = None, "", f"The signing secret is not valid ({type(exc).__name__})."
    else:
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(delivery.event_id, sent_at, body),
        }
        status_code, excerpt, error = _post(url=endpoint.url, body=body, headers=headers)
    latency_ms = round((time.perf_counter() - started) * 1000)
    return _attempt_record(
        delivery_id=delivery_id, status_code=status_code, excerpt=excerpt, error=error, latency_ms=latency_ms
    )


def _attempt_record(
    *, delivery_id, status_code: int | None, excerpt: str, error: str, latency_ms: int
) -> WebhookDelivery:
    """Log an attempt of ``delivery_id`` and move it on (succeeded, retrying or failed); queue a near retry."""
    now = timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        delivery.attempt_count += 1
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempt_count,
            status_code=status_code,
            latency_ms=latency_ms,
            response_excerpt=excerpt,
            error=error[:500],
            attempted_at=now,
        )
        delivery.last_status_code, delivery.last_error, delivery.locked_until = status_code, error[:500], None
        delay = None
        if not error:
            delivery.status, delivery.next_attempt_at = WebhookDeliveryStatus.SUCCEEDED, None
        else:
            first_attempt_at = delivery.schedule_started_at
            delay = retry_delay(
                retries_done=delivery.attempt_count - delivery.schedule_offset - 1,
                first_attempt_at=first_attempt_at,
                now=now,
            )
            if delay is None:
                delivery.status, delivery.next_attempt_at = WebhookDeliveryStatus.FAILED, None
            else:
                delivery.status = WebhookDeliveryStatus.RETRYING
                delivery.next_attempt_at = now + timedelta(seconds=delay)
        delivery.save(
            update_fields=[
                "attempt_count",
                "status",
                "next_attempt_at",
                "locked_until",
                "last_status_code",
                "last_error",
                "updated_at",
            ]
        )
        if delay is not None and delay <= settings.WEBHOOK_SWEEP_SECONDS:
            _enqueue_on_commit_after(delivery_id, delay)
    if delivery.status == WebhookDeliveryStatus.SUCCEEDED:
        logger.info(
            "Webhook %s delivered to %s (attempt %d)", delivery.event_type, delivery.endpoint_id, delivery.attempt_count
        )
    else:
        logger.warning(
            "Webhook %s to endpoint %s failed (attempt %d: %s); %s",
            delivery.event_type,
            delivery.endpoint_id,
            delivery.attempt_count,
            error,
            f"next attempt in {delay:g} s" if delay is not None else "no attempt left",
        )
    return delivery


def _enqueue_on_commit_after(delivery_id, delay: float) -> None:
    """Queue the next attempt of ``delivery_id`` in ``delay`` seconds (a Celery countdown) once committed.

    A lost countdown is harmless: the sweep queues the delivery when it finds it overdue.
    """
    from .tasks import webhook_deliver_task  # here: tasks.py imports this module

    def send() -> None:
        try:
            webhook_deliver_task.apply_async(args=[str(delivery_id)], countdown=delay, retry=False)
        except Exception as exc:
            logger.warning("Could not queue webhook delivery %s (%s); the sweep will", delivery_id, type(exc).__name__)

    transaction.on_commit(send)


# A delivery due this long without its task having taken it is queued again by the sweep (its task
# was lost); shorter, and the sweep would queue a second task for one whose task is on its way.
SWEEP_GRACE_SECONDS = 30


def webhook_deliveries_enqueue_due(*, grace_seconds: float = SWEEP_GRACE_SECONDS, limit: int = 500) -> int:
    """Queue the deliveries due for ``grace_seconds`` or more that no task holds; return how many were queued.

    Celery beat runs it every ``WEBHOOK_SWEEP_SECONDS``: it sends the retries too far off for a
    countdown and recovers deliveries whose task was lost. Stops at the first task the broker
    refuses (down: the next sweep tries again). At most ``limit`` per sweep, the longest due first.
    """
    now = timezone.now()
    due = (
        WebhookDelivery.objects.filter(
            status__in=[WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.RETRYING],
            next_attempt_at__lte=now - timedelta(seconds=grace_seconds),
        )
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    from .tasks import webhook_deliver_task  # here: tasks.py imports this module

    queued = 0
    for delivery_id in due:
        if not task_enqueue(webhook_deliver_task, str(delivery_id)):
            break
        queued += 1
    return queued


def webhook_deliveries_prune(*, days: int) -> int:
    """Delete the deliveries (and their attempts) that ended ``succeeded`` or ``failed`` more than
    ``days`` days ago; return how many deliveries. ``days`` 0 keeps everything."""
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    old = WebhookDelivery.objects.filter(
        status__in=[WebhookDeliveryStatus.SUCCEEDED, WebhookDeliveryStatus.FAILED], updated_at__lt=cutoff
    )
    return old.delete()[1].get(WebhookDelivery._meta.label, 0)
