"""Usage retention (manage.py usage prune) and the figures of the Metrics page and its API."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts.models import UsageDaily, UsageRecord
from accounts.services import usage_record

pytestmark = pytest.mark.django_db

API = "/api/v1/admin/metrics/"


def record(user, *, age: timedelta = timedelta(0), **fields):
    fields.setdefault("provider", "llama_cpp")
    row = usage_record(user=user, model_slug="smollm2-135m", source="chat", **fields)
    if age:
        UsageRecord.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
    return row


def test_prune_deletes_only_rows_older_than_the_retention(user):
    old = record(user, status="complete", age=timedelta(days=40))
    recent = record(user, status="complete", age=timedelta(days=5))
    today = timezone.now().date()
    UsageDaily.objects.create(user=user, day=today - timedelta(days=40), model_slug="smollm2-135m", requests=3)
    UsageDaily.objects.create(user=user, day=today - timedelta(days=29), model_slug="smollm2-135m", requests=2)
    out = StringIO()
    call_command("usage", "prune", "--days", "30", stdout=out)
    assert out.getvalue().strip() == "Deleted 1 usage record(s) and 1 daily total(s)."
    assert set(UsageRecord.objects.values_list("pk", flat=True)) == {recent.pk}
    assert not UsageRecord.objects.filter(pk=old.pk).exists()
    # Today's row (written by usage_record) and the 29-day-old one stay.
    assert sorted(UsageDaily.objects.values_list("day", flat=True)) == [today - timedelta(days=29), today]


def test_prune_keeps_daily_totals_longer_when_asked(user):
    record(user, status="complete", age=timedelta(days=40))
    UsageDaily.objects.create(
        user=user, day=timezone.now().date() - timedelta(days=40), model_slug="smollm2-135m", requests=1
    )
    out = StringIO()
    call_command("usage", "prune", "--days", "30", "--daily-days", "365", stdout=out)
    assert "Deleted 1 usage record(s) and 0 daily total(s)." in out.getvalue()


def test_report_prints_the_window(user):
    record(user, status="complete", prompt_tokens=10, completion_tokens=5, ttft_ms=40, latency_ms=240)
    out = StringIO()
    call_command("usage", "report", "--window", "1h", stdout=out)
    assert "Last 1h: 1 requests, 0 errors, 15 tokens" in out.getvalue()
    assert "alice: 1 requests, 15 tokens" in out.getvalue()


@pytest.fixture
def traffic(user, other_user):
    """Three requests of alice (one error, one cached) and one of mallory in the last hour; one a
    day ago; one 3 days ago."""
    record(user, status="complete", prompt_tokens=100, completion_tokens=50, ttft_ms=20, latency_ms=1020)
    record(user, status="complete", prompt_tokens=100, completion_tokens=50, ttft_ms=40, latency_ms=540, cached=True)
    record(user, status="error", prompt_tokens=100, completion_tokens=0, ttft_ms=None, latency_ms=100)
    record(other_user, status="complete", prompt_tokens=10, completion_tokens=10, ttft_ms=100, latency_ms=600)
    record(user, status="complete", prompt_tokens=1, completion_tokens=1, age=timedelta(hours=20))
    record(user, status="complete", prompt_tokens=1, completion_tokens=1, age=timedelta(days=3))


def test_the_metrics_api_sums_the_window(admin_client, traffic):
    data = admin_client.get(API, {"window": "1h"}).json()
    assert data["window"] == "1h"
    assert (data["requests"], data["errors"], data["cached_requests"]) == (4, 1, 1)
    assert data["error_rate"] == 0.25
    assert (data["prompt_tokens"], data["completion_tokens"]) == (310, 110)
    # percentile_cont over TTFT 20, 40, 100 (the error has none): p50 40, p95 94.
    assert data["ttft_ms"] == {"p50": 40.0, "p95": 94.0}
    # Generation after the first token, complete and uncached only: (50 + 10) tokens / (1.0 + 0.5) s.
    assert data["tokens_per_s"] == 40.0
    assert [(u["username"], u["tokens"]) for u in data["top_users"]] == [("alice", 400), ("mallory", 20)]
    assert sum(b["requests"] for b in data["series"]) == 4
    assert data["bucket_seconds"] == 300
    assert {layer["layer"] for layer in data["cache"]["layers"]} == {"llm", "tool", "intent", "semantic"}
    assert isinstance(data["ws_connections"], int)  # core.presence: sockets of every process
    assert data["celery_queue_depth"] is not None


def test_longer_windows_take_older_requests(admin_client, traffic):
    assert admin_client.get(API, {"window": "24h"}).json()["requests"] == 5
    week = admin_client.get(API, {"window": "7d"}).json()
    assert week["requests"] == 6
    assert len(week["series"]) in (28, 29)  # 6-hour bars, aligned to UTC boundaries


def test_the_metrics_api_rejects_an_unknown_window(admin_client):
    response = admin_client.get(API, {"window": "1y"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_the_metrics_api_is_staff_only(client, user):
    assert client.get(API).status_code == 401
    client.force_login(user)
    assert client.get(API).status_code == 403


def test_the_metrics_page_shows_the_figures_and_charts(admin_client, traffic):
    page = admin_client.get(reverse("admin_metrics"), {"window": "1h"}).content.decode()
    assert "<svg" in page and page.count("<rect") >= 3 * 12  # three charts of twelve 5-minute bars
    assert "mallory" in page
    assert 'aria-current="page">1h<' in page


def test_the_metrics_split_requests_by_the_deployment_that_served_them(admin_client, user):
    served = {"provider": "openai_compatible", "status": "complete"}
    record(user, **served, deployment="remote/gpu-1", route="routed", ttft_ms=100)
    record(user, **served, deployment="remote/gpu-1", route="routed", ttft_ms=300)
    record(user, **served, deployment="remote/gpu-2", route="fallback:upstream_error", ttft_ms=900)
    record(user, status="error", deployment="remote/gpu-2", route="routed")
    record(user, status="complete", cached=True)  # a cached answer: no deployment served it

    data = admin_client.get(API, {"window": "1h"}).json()
    page = admin_client.get(reverse("admin_metrics"), {"window": "1h"}).content.decode()

    assert data["deployments"] == [
        {"deployment": "remote/gpu-1", "requests": 2, "errors": 0, "fallbacks": 0, "ttft_ms_p50": 200.0},
        {"deployment": "remote/gpu-2", "requests": 2, "errors": 1, "fallbacks": 1, "ttft_ms_p50": 900.0},
    ]
    assert "remote/gpu-2" in page and "900 ms" in page
