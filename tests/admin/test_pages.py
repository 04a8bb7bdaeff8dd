"""Every admin page renders for staff (superusers) and is refused to everyone else."""

from decimal import Decimal

import pytest
from django.contrib import admin
from django.urls import reverse

from accounts.budgets import budget_alerts_check, period_bounds
from accounts.models import UsageDaily, UsageRecord
from accounts.services import api_key_create, budget_set, usage_record
from agents.models import Memory
from agents.services import memory_note_create
from chat.models import Message
from chat.services import import_job_create, import_job_run
from conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def populated(user, chats, local_model):
    """One row of every model the admin pages show, so change pages have something to render."""
    api_key_create(user=user, name="laptop")
    usage_record(
        user=user,
        model_slug=local_model.slug,
        provider="llama_cpp",
        source="chat",
        status="complete",
        prompt_tokens=10,
        completion_tokens=5,
        ttft_ms=40,
        latency_ms=300,
    )
    memory_note_create(owner=user, content="I prefer metric units.")
    job = import_job_create(owner=user, data=b'[{"title": "<b>x</b>", "mapping": {}}]', enqueue=False)
    import_job_run(job_id=job.pk)  # a report to render (one skipped conversation)
    budget = budget_set(user=user, amount=Decimal("1.00"))
    budget_alerts_check(
        budget=budget, spent=Decimal("0.90"), start=period_bounds("month")[0], end=period_bounds("month")[1]
    )
    return chats


def admin_pages() -> list[str]:
    """The URL of every changelist and add page registered, plus a change page per model with a row."""
    urls = [reverse("admin:index"), reverse("admin_metrics"), reverse("admin_cache")]
    urls += [f"{reverse('admin_metrics')}?window={w}" for w in ("1h", "24h", "7d")]
    urls += [f"{reverse('admin_spend')}?period={p}" for p in ("day", "week", "month")]
    for model in admin.site._registry:
        info = model._meta.app_label, model._meta.model_name
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        obj = model._default_manager.first()
        if obj is not None:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
    urls.append(reverse("admin:accounts_user_add"))
    urls.append(reverse("admin:chat_message_changelist") + "?status__exact=error")
    return urls


def test_every_admin_page_renders_for_a_superuser(admin_client, populated):
    for url in admin_pages():
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_every_admin_page_is_refused_to_users_and_anonymous_visitors(client, user, populated):
    pages = admin_pages()
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    client.force_login(user)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url


def test_staff_without_permissions_see_no_model_pages(client, staff_user, populated):
    client.force_login(staff_user)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("admin:chat_conversation_changelist")).status_code == 403
    assert client.get(reverse("admin:accounts_user_changelist")).status_code == 403


def test_the_index_links_the_metrics_and_cache_pages(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("admin_metrics")}"' in page
    assert f'href="{reverse("admin_cache")}"' in page


def test_failed_answers_are_listed_with_their_reason(admin_client, chats):
    page = admin_client.get(reverse("admin:chat_message_changelist") + "?status__exact=error").content.decode()
    assert "model crashed" in page
    assert "Sunny with clouds" not in page
    assert Message.objects.filter(status="error").count() == 1


def test_the_user_page_shows_role_quota_usage_and_keys(admin_client, user, populated):
    page = admin_client.get(reverse("admin:accounts_user_change", args=[user.pk])).content.decode()
    assert "daily_token_quota" in page and "memory_enabled" in page
    # usage_record above: 1 request, 10 + 5 tokens today (UsageDaily).
    assert "1 requests (0 errors), 15 tokens (10 prompt + 5 completion)" in page
    assert "laptop" in page
    assert UsageRecord.objects.count() == 1 and UsageDaily.objects.count() == 1


def test_operators_see_a_users_memories_read_only_and_may_delete_them(admin_client, user, populated):
    note = Memory.objects.get(owner=user)
    memory_note_create(owner=make_user("bob"), content="Bob likes jazz.")
    page = admin_client.get(reverse("admin:accounts_user_change", args=[user.pk])).content.decode()
    listing = reverse("admin:agents_memory_changelist") + f"?owner__id__exact={user.pk}"
    assert f'href="{listing}"' in page

    theirs = admin_client.get(listing).content.decode()
    assert "I prefer metric units." in theirs and "Bob likes jazz." not in theirs

    change = reverse("admin:agents_memory_change", args=[note.pk])
    response = admin_client.post(change, {"content": "Rewritten by an operator"})
    assert response.status_code == 403
    note.refresh_from_db()
    assert note.content == "I prefer metric units."

    response = admin_client.post(reverse("admin:agents_memory_delete", args=[note.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Memory.objects.filter(pk=note.pk).exists()
