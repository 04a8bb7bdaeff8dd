"""Signed webhooks, end to end: a real receiver on loopback verifies every request with ``svix`` (and by
hand, from the Standard Webhooks spec), answers as scripted, and sees the retries; events come from
the real code paths (ingestion, sign-up, feedback over REST, deployment probes); the admin's add,
test and re-send work. Deliveries are sent by the real task function, and in one test by a real
Celery worker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient
from svix.webhooks import Webhook as SvixWebhook

from agents.services import document_create, document_ingest
from chat.models import MessageStatus
from chat.services import conversation_create, message_finalize, message_send
from conftest import make_user
from core.events import event_emit
from core.models import WebhookAttempt, WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from core.tasks import webhook_deliver_task, webhooks_sweep_task
from core.webhooks import (
    webhook_deliver,
    webhook_deliveries_enqueue_due,
    webhook_endpoint_create,
)
from inference.routing import deployment_failure
from inference.tasks import deployments_probe_task
from tests.inference.test_routing import deploy, refused_url, remote_model
from tests.servers import ScriptedServer, start_worker, stop_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A webhook receiver on a free loopback port: verifies each POST with svix, answers ``statuses``
    in turn (the last one repeats). ``redirect_to``: a 3xx answer's Location; ``delay``: seconds
    before answering."""

    def __init__(self, secret: str, statuses=(200,), redirect_to: str = "", delay: float = 0.0):
        self.secret = secret
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    SvixWebhook(receiver.secret).verify(body, headers)
                    error = ""
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                receiver.requests.append({"headers": headers, "body": body, "verify_error": error, "at": time.time()})
                status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                time.sleep(delay)
                answer = (f"answered {status} " + "x" * 1000).encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", redirect_to)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/parley"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def endpoint_for(url: str, event_types=("*",), **fields) -> tuple[WebhookEndpoint, str]:
    endpoint, secret = webhook_endpoint_create(url=url, event_types=list(event_types), **fields)
    return endpoint, secret


def deliveries(event_type: str | None = None) -> list[WebhookDelivery]:
    queryset = WebhookDelivery.objects.order_by("created_at")
    return list(queryset.filter(event_type=event_type) if event_type else queryset)


def hand_signature(secret: str, headers: dict, body: bytes) -> str:
    """The Standard Webhooks signature computed from the spec, not from any library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_a_real_worker_retries_after_500s_until_the_receiver_takes_the_event(media_root):
    """The headline: 500, 500, then 200; every request verifies with svix; three attempts are logged."""
    with Receiver(secret="", statuses=[500, 500, 200]) as receiver:
        endpoint, secret = endpoint_for(receiver.url, ["user.created"], description="CRM")
        receiver.secret = secret
        worker = start_worker(media_root, "webhooks", env={"WEBHOOK_RETRY_SCHEDULE": "1,1,1"})
        try:
            user = make_user("bob", email="bob@example.com")  # user.created, sent by the worker
            delivery = wait_for(
                lambda: WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.SUCCEEDED).first(),
                timeout=60,
                what="the worker to deliver the event",
            )
        finally:
            stop_worker(worker)

    assert [r["verify_error"] for r in receiver.requests] == ["", "", ""], "svix verifies every attempt"
    first = receiver.requests[0]
    for request in receiver.requests:
        assert request["headers"]["webhook-signature"] == hand_signature(secret, request["headers"], request["body"])
        assert request["headers"]["webhook-id"] == first["headers"]["webhook-id"] == delivery.event_id
        assert request["body"] == first["body"], "the same event every time"
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), f"each retry waits its delay: {gaps}"
    event = json.loads(first["body"])
    assert event["type"] == "user.created" and event["id"].startswith("evt_")
    assert event["data"]["user_id"] == user.pk and event["data"]["username"] == "bob"
    assert "password" not in first["body"].decode()

    assert (delivery.status, delivery.attempt_count, delivery.last_status_code) == ("succeeded", 3, 200)
    assert delivery.next_attempt_at is None
    attempts = list(delivery.attempts.all())
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    assert [a.error for a in attempts] == ["HTTP 500", "HTTP 500", ""]
    assert all(a.latency_ms >= 0 and a.response_excerpt.startswith("answered") for a in attempts)
    assert all(len(a.response_excerpt) == 500 for a in attempts), "the first 500 characters are kept"


def test_a_receiver_that_stays_down_gets_growing_delays_then_the_delivery_fails(settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [0.3, 0.6, 1.2]
    settings.WEBHOOK_SWEEP_SECONDS = 0  # no countdown tasks: this test makes each attempt itself
    endpoint, _ = endpoint_for(refused_url(), ["feedback.created"])
    event_emit("feedback.created", {"feedback_id": "f1"})
    (delivery,) = deliveries()

    delays = []
    while True:
        assert webhook_deliver(delivery_id=delivery.pk) is not None, "due: an attempt is made"
        delivery.refresh_from_db()
        if delivery.status != WebhookDeliveryStatus.RETRYING:
            break
        last = delivery.attempts.last()
        delays.append((delivery.next_attempt_at - last.attempted_at).total_seconds())
        # Not due yet: a task that comes early does nothing (the countdown's duplicate, say).
        assert webhook_deliver(delivery_id=delivery.pk) is None
        assert delivery.attempts.count() == delivery.attempt_count
        time.sleep(max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds()) + 0.05)

    assert delays == pytest.approx([0.3, 0.6, 1.2], abs=0.05), "the schedule's delays, growing"
    assert delivery.status == WebhookDeliveryStatus.FAILED and delivery.next_attempt_at is None
    assert delivery.attempt_count == 4, "the first attempt and one per delay"
    errors = list(delivery.attempts.values_list("error", flat=True))
    assert all(e.startswith("ConnectError") for e in errors), errors
    assert list(delivery.attempts.values_list("status_code", flat=True)) == [None] * 4
    assert webhook_deliver(delivery_id=delivery.pk) is None, "a failed delivery is not sent again by a task"


def test_no_attempt_starts_after_the_retry_window(settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [0.2, 3600]
    settings.WEBHOOK_RETRY_WINDOW_SECONDS = 1.0
    settings.WEBHOOK_SWEEP_SECONDS = 0
    endpoint_for(refused_url())
    event_emit("document.ready", {"document_id": "d1"})
    (delivery,) = deliveries()
    webhook_deliver(delivery_id=delivery.pk)
    time.sleep(0.25)
    delivery = webhook_deliver(delivery_id=delivery.pk)
    window_end = delivery.schedule_started_at + timedelta(seconds=1)
    assert delivery.status == WebhookDeliveryStatus.RETRYING
    assert delivery.next_attempt_at == pytest.approx(window_end, abs=timedelta(milliseconds=50)), (
        "the hour-long delay is cut to the window's end"
    )
    time.sleep(max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds()) + 0.05)
    delivery = webhook_deliver(delivery_id=delivery.pk)
    assert (delivery.status, delivery.attempt_count) == (WebhookDeliveryStatus.FAILED, 3)


def test_a_succeeded_delivery_is_not_sent_again_by_a_duplicate_task(caplog):
    with Receiver(secret="") as receiver:
        endpoint, receiver.secret = endpoint_for(receiver.url)
        event_emit("user.created", {"user_id": 1})
        (delivery,) = deliveries()
        assert webhook_deliver_task.apply(args=[str(delivery.pk)]).get() == "succeeded"
        assert webhook_deliver_task.apply(args=[str(delivery.pk)]).get() is None
    assert len(receiver.requests) == 1 and receiver.requests[0]["verify_error"] == ""
    assert "delivered" in caplog.text and receiver.secret not in caplog.text


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    with Receiver(secret="", delay=2) as receiver:
        endpoint, receiver.secret = endpoint_for(receiver.url)
        event_emit("user.created", {"user_id": 1})
        started = time.monotonic()
        delivery = webhook_deliver(delivery_id=deliveries()[0].pk)
        took = time.monotonic() - started
    assert delivery.status == WebhookDeliveryStatus.RETRYING and delivery.last_status_code is None
    assert delivery.last_error == "timeout (ReadTimeout) after 0.5 s"
    assert took < 1.5, "the attempt gave up at the timeout"
    assert 450 <= delivery.attempts.get().latency_ms < 1500


def test_a_rolled_back_transaction_sends_nothing_and_a_committed_one_sends_after_commit():
    with Receiver(secret="") as receiver:
        endpoint, receiver.secret = endpoint_for(receiver.url, ["user.created"])
        with pytest.raises(RuntimeError), transaction.atomic():
            make_user("ghost")
            raise RuntimeError("the sign-up failed after the user row was written")
        assert deliveries() == []

        with transaction.atomic():
            make_user("carol")
            assert deliveries() == [], "nothing before the commit"
        (delivery,) = deliveries("user.created")
        assert delivery.payload["data"]["username"] == "carol"
        webhook_deliver(delivery_id=delivery.pk)
    assert [json.loads(r["body"])["data"]["username"] for r in receiver.requests] == ["carol"]


def test_an_event_from_a_thread_without_a_database_connection_leaves_none_open():
    """As the generation pipeline's worker threads (asyncio.to_thread) emit deployment events."""
    endpoint_for("http://127.0.0.1:9/")
    left_open = []

    def emit() -> None:
        event_emit("deployment.unhealthy", {"deployment": "remote/gpu-1"})
        left_open.append(connection.connection is not None)

    thread = threading.Thread(target=emit)
    thread.start()
    thread.join()
    assert len(deliveries("deployment.unhealthy")) == 1
    assert left_open == [False], "the thread's connection was closed again"


def test_endpoints_get_only_their_event_types_and_disabled_ones_nothing():
    documents, _ = endpoint_for("http://127.0.0.1:9/documents", ["document.ready", "document.failed"])
    everything, _ = endpoint_for("http://127.0.0.1:9/all", ["*"])
    endpoint_for("http://127.0.0.1:9/off", ["*"], is_enabled=False)

    event_emit("user.created", {"user_id": 1})
    event_emit("document.failed", {"document_id": "d1"})

    assert sorted((d.endpoint.url, d.event_type) for d in deliveries()) == [
        ("http://127.0.0.1:9/all", "document.failed"),
        ("http://127.0.0.1:9/all", "user.created"),
        ("http://127.0.0.1:9/documents", "document.failed"),
    ]


def test_a_redirect_is_not_followed():
    with Receiver(secret="") as target, Receiver(secret="", statuses=[307], redirect_to=target.url) as receiver:
        endpoint, receiver.secret = endpoint_for(receiver.url)
        event_emit("user.created", {"user_id": 1})
        delivery = webhook_deliver(delivery_id=deliveries()[0].pk)
    assert delivery.status == WebhookDeliveryStatus.RETRYING and delivery.last_status_code == 307
    assert delivery.last_error.startswith("redirect to http://127.0.0.1") and "not followed" in delivery.last_error
    assert len(receiver.requests) == 1 and target.requests == []


def test_only_http_urls_and_known_shapes_of_event_types_are_accepted():
    with pytest.raises(ValidationError):
        webhook_endpoint_create(url="file:///etc/passwd", event_types=["*"])
    with pytest.raises(ValidationError):
        webhook_endpoint_create(url="http://127.0.0.1:9/", event_types=[])
    with pytest.raises(ValidationError):
        webhook_endpoint_create(url="http://127.0.0.1:9/", event_types=["*"], secret_env="not a name")
    assert WebhookEndpoint.objects.count() == 0


def test_a_secret_from_an_environment_variable_signs_and_is_never_stored(monkeypatch):
    from core.webhooks import webhook_secret_generate

    secret = webhook_secret_generate()
    with Receiver(secret=secret) as receiver:
        endpoint, shown = endpoint_for(receiver.url, secret_env="PARLEY_TEST_WEBHOOK_SECRET")
        assert shown is None and endpoint.secret == ""
        event_emit("user.created", {"user_id": 1})
        (delivery,) = deliveries()

        monkeypatch.delenv("PARLEY_TEST_WEBHOOK_SECRET", raising=False)
        missing = webhook_deliver(delivery_id=delivery.pk)
        assert missing.status == WebhookDeliveryStatus.RETRYING
        assert missing.last_error == "The secret variable PARLEY_TEST_WEBHOOK_SECRET is not set."
        assert receiver.requests == [], "nothing is sent unsigned"

        monkeypatch.setenv("PARLEY_TEST_WEBHOOK_SECRET", secret)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        assert webhook_deliver(delivery_id=delivery.pk).status == WebhookDeliveryStatus.SUCCEEDED
    assert [r["verify_error"] for r in receiver.requests] == [""]


def test_the_sweep_queues_overdue_deliveries_whose_task_was_lost():
    endpoint, _ = endpoint_for("http://127.0.0.1:9/")
    event_emit("user.created", {"user_id": 1})
    event_emit("user.created", {"user_id": 2})
    event_emit("user.created", {"user_id": 3})
    lost, fresh, held = deliveries()
    WebhookDelivery.objects.filter(pk=lost.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    WebhookDelivery.objects.filter(pk=held.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=5), locked_until=timezone.now() + timedelta(minutes=1)
    )
    assert webhook_deliveries_enqueue_due() == 1, "only the overdue one nobody holds"


# Events from the real code paths


@pytest.fixture
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def test_document_ingestion_emits_ready_and_failed(user, media_root):
    endpoint_for("http://127.0.0.1:9/", ["document.ready", "document.failed"])
    good = document_create(owner=user, data=b"Parley keeps answers in PostgreSQL.", filename="a.txt", ingest=False)
    document_ingest(document_id=good.pk)
    bad = document_create(owner=user, data=b"%PDF-1.7\n" + bytes(range(256)) * 8, filename="b.pdf", ingest=False)
    document_ingest(document_id=bad.pk)

    (ready,) = deliveries("document.ready")
    (failed,) = deliveries("document.failed")
    assert ready.payload["data"]["document_id"] == str(good.pk)
    assert ready.payload["data"]["status"] == "ready" and ready.payload["data"]["chunk_count"] == 1
    assert failed.payload["data"]["document_id"] == str(bad.pk)
    assert failed.payload["data"]["status"] == "failed" and "PDF" in failed.payload["data"]["failure_reason"]


def test_sign_up_emits_user_created(settings):
    settings.SIGNUP_ENABLED = True
    endpoint_for("http://127.0.0.1:9/", ["user.created"])
    response = Client().post(
        "/signup/",
        {"username": "dave", "password1": "correct horse battery", "password2": "correct horse battery"},
    )
    assert response.status_code == 302, response.content[:500]
    (delivery,) = deliveries("user.created")
    assert delivery.payload["data"]["username"] == "dave"
    assert set(delivery.payload["data"]) == {"user_id", "username", "email", "is_active", "is_staff", "date_joined"}


def test_feedback_over_rest_emits_feedback_created_once(user, local_model):
    conversation = conversation_create(owner=user)
    turn = message_send(conversation=conversation, content="Capital of France?")
    message_finalize(message_id=turn.assistant_message.pk, content="Lyon.", status=MessageStatus.COMPLETE)
    endpoint_for("http://127.0.0.1:9/", ["feedback.created"])
    api = APIClient()
    api.force_login(user)
    url = f"/api/v1/conversations/{conversation.pk}/messages/{turn.assistant_message.pk}/feedback/"

    assert api.post(url, {"rating": "down", "comment": "It is Paris."}, format="json").status_code == 201
    assert api.post(url, {"rating": "up"}, format="json").status_code == 200  # a change: no new event

    (delivery,) = deliveries("feedback.created")
    data = delivery.payload["data"]
    assert (data["rating"], data["comment"], data["user_id"]) == ("down", "It is Paris.", user.pk)
    assert data["message_id"] == str(turn.assistant_message.pk)
    assert data["conversation_id"] == str(conversation.pk)


def test_a_failing_deployment_is_announced_once_per_incident(settings):
    settings.ROUTING_COOLDOWN_FAILURES = 2
    settings.ROUTING_COOLDOWN_WINDOW_SECONDS = 1.0
    endpoint_for("http://127.0.0.1:9/", ["deployment.unhealthy", "deployment.recovered"])
    with ScriptedServer([500, 500, 500, "ok", 500, 500]) as server:
        config = remote_model()
        deploy(config, "gpu-1", server.base_url)  # alone: never cooled, "unhealthy" after 2 failures

        for _ in range(3):  # fail, fail (unhealthy), fail (still: no second event)
            assert deployments_probe_task.apply().get()["remote/gpu-1"] == "failed"
        assert len(deliveries("deployment.unhealthy")) == 1
        time.sleep(1.1)  # the failures leave the window
        assert deployments_probe_task.apply().get()["remote/gpu-1"] == "ok"  # recovered
        for _ in range(2):  # a new incident
            deployments_probe_task.apply().get()

    unhealthy = deliveries("deployment.unhealthy")
    assert len(unhealthy) == 2, "one event per incident, not per failed probe"
    data = unhealthy[0].payload["data"]
    assert (data["model"], data["deployment"], data["provider"]) == ("remote", "remote/gpu-1", "openai_compatible")
    assert "GET /models answered 500" in data["error"] and data["cooldown_until"] is None
    assert len(deliveries("deployment.recovered")) == 1


def test_a_cooled_deployment_is_announced_with_the_end_of_its_cooldown(settings):
    settings.ROUTING_COOLDOWN_FAILURES = 1
    endpoint_for("http://127.0.0.1:9/", ["deployment.unhealthy"])
    with ScriptedServer(["ok"]) as live:
        config = remote_model()
        deploy(config, "dead", refused_url())
        deploy(config, "live", live.base_url)
        deployments_probe_task.apply().get()
        deployments_probe_task.apply().get()
    (delivery,) = deliveries("deployment.unhealthy")
    assert delivery.payload["data"]["deployment"] == "remote/dead"
    assert delivery.payload["data"]["cooldown_until"] is not None


def test_failures_seen_at_once_by_many_processes_announce_the_deployment_once(settings):
    """The turn is decided in Redis (SET NX), so threads stand for processes here: they share nothing else."""
    settings.ROUTING_COOLDOWN_FAILURES = 1
    endpoint_for("http://127.0.0.1:9/", ["deployment.unhealthy"])
    config = remote_model()
    gpu = deploy(config, "gpu-1", refused_url())
    start = threading.Barrier(6)

    def fail() -> None:
        start.wait()
        deployment_failure(deployment=gpu, error="upstream_error: 500", may_cool=False)

    threads = [threading.Thread(target=fail) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(deliveries("deployment.unhealthy")) == 1


# The admin


def test_the_admin_shows_a_new_secret_once_and_its_test_event_verifies(admin_client):
    with Receiver(secret="") as receiver:
        response = admin_client.post(
            reverse("admin:core_webhookendpoint_add"),
            {"url": receiver.url, "description": "Ops", "event_types": ["document.failed"], "is_enabled": "on"},
        )
        assert response.status_code == 200, response.content[:500]
        endpoint = WebhookEndpoint.objects.get()
        assert endpoint.secret.startswith("whsec_") and endpoint.secret in response.content.decode()
        assert "no-store" in response["Cache-Control"]
        receiver.secret = endpoint.secret

        listing = admin_client.get(reverse("admin:core_webhookendpoint_changelist")).content.decode()
        change = admin_client.get(reverse("admin:core_webhookendpoint_change", args=[endpoint.pk])).content.decode()
        assert endpoint.secret not in listing and endpoint.secret not in change
        assert f"whsec_…{endpoint.secret[-4:]}" in listing

        admin_client.post(
            reverse("admin:core_webhookendpoint_changelist"),
            {"action": "send_test_event", "_selected_action": [endpoint.pk]},
        )
        (delivery,) = deliveries("webhook.test")
        assert webhook_deliver(delivery_id=delivery.pk).status == WebhookDeliveryStatus.SUCCEEDED
    assert [r["verify_error"] for r in receiver.requests] == [""]
    assert json.loads(receiver.requests[0]["body"])["type"] == "webhook.test"
    assert LogEntry.objects.filter(object_id=str(endpoint.pk), change_message__startswith="Test event").exists()


def test_the_admin_resends_a_failed_delivery(admin_client, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = []  # one attempt, then failed
    with Receiver(secret="", statuses=[503, 200]) as receiver:
        endpoint, receiver.secret = endpoint_for(receiver.url)
        event_emit("feedback.created", {"feedback_id": "f1"})
        (delivery,) = deliveries()
        assert webhook_deliver(delivery_id=delivery.pk).status == WebhookDeliveryStatus.FAILED

        page = admin_client.get(reverse("admin:core_webhookdelivery_change", args=[delivery.pk])).content.decode()
        assert "HTTP 503" in page and "answered 503" in page, "the attempt is shown with its answer"
        failed = admin_client.get(reverse("admin:core_webhookdelivery_changelist"), {"status__exact": "failed"})
        assert [d.pk for d in failed.context["cl"].result_list] == [delivery.pk]
        response = admin_client.post(
            reverse("admin:core_webhookdelivery_changelist"),
            {"action": "resend", "_selected_action": [delivery.pk]},
        )
        assert response.status_code == 302
        delivery.refresh_from_db()
        assert delivery.status == WebhookDeliveryStatus.PENDING
        delivery = webhook_deliver(delivery_id=delivery.pk)

    assert (delivery.status, delivery.attempt_count) == (WebhookDeliveryStatus.SUCCEEDED, 2)
    assert list(WebhookAttempt.objects.values_list("number", "status_code")) == [(1, 503), (2, 200)]
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery.event_id}, "a re-send keeps the event's id"
    assert LogEntry.objects.filter(object_id=str(delivery.pk), change_message="Re-sent").exists()


def test_a_rotated_secret_is_shown_once_and_signs_from_then_on(admin_client):
    with Receiver(secret="") as receiver:
        endpoint, old_secret = endpoint_for(receiver.url)
        response = admin_client.post(
            reverse("admin:core_webhookendpoint_changelist"),
            {"action": "rotate_secret", "_selected_action": [endpoint.pk]},
        )
        endpoint.refresh_from_db()
        assert endpoint.secret != old_secret and endpoint.secret in response.content.decode()
        receiver.secret = old_secret
        event_emit("user.created", {"user_id": 1})
        webhook_deliver(delivery_id=deliveries()[0].pk)
    assert receiver.requests[0]["verify_error"].startswith("WebhookVerificationError"), "the old secret is void"
    assert receiver.requests[0]["headers"]["webhook-signature"] == hand_signature(
        endpoint.secret, receiver.requests[0]["headers"], receiver.requests[0]["body"]
    )


def test_beat_runs_the_sweep_every_webhook_sweep_seconds():
    from django.conf import settings as django_settings

    from config.celery import app as celery_app

    entry = django_settings.CELERY_BEAT_SCHEDULE["webhooks-sweep"]
    assert entry["schedule"] == django_settings.WEBHOOK_SWEEP_SECONDS == 60
    assert entry["task"] in celery_app.tasks and "core.webhook_deliver" in celery_app.tasks


def test_the_sweep_deletes_finished_deliveries_past_their_retention(settings):
    settings.WEBHOOK_DELIVERY_RETENTION_DAYS = 30
    endpoint_for("http://127.0.0.1:9/")
    for user_id in (1, 2, 3):
        event_emit("user.created", {"user_id": user_id})
    old_done, old_pending, recent_done = deliveries()
    long_ago = timezone.now() - timedelta(days=31)
    WebhookDelivery.objects.filter(pk=old_done.pk).update(status=WebhookDeliveryStatus.FAILED, updated_at=long_ago)
    WebhookDelivery.objects.filter(pk=old_pending.pk).update(updated_at=long_ago)
    WebhookDelivery.objects.filter(pk=recent_done.pk).update(status=WebhookDeliveryStatus.SUCCEEDED)

    result = webhooks_sweep_task.apply().get()

    assert result["pruned"] == 1
    assert {d.pk for d in deliveries()} == {old_pending.pk, recent_done.pk}, "unfinished ones are never deleted"
