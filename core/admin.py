"""Webhooks in the admin: endpoints (a generated secret is shown once), deliveries with their attempts.

Every operator action is recorded in the admin log.
"""

from __future__ import annotations

import os

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from . import webhooks
from .models import WebhookAttempt, WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint

SECRET_TEMPLATE = "admin/core/webhookendpoint/secret.html"  # noqa: S105 (a template name)


def _masked(secret: str) -> str:
    """``whsec_…`` and the last 4 characters: enough to tell two secrets apart, far too little to use."""
    return f"{webhooks.SECRET_PREFIX}…{secret[-4:]}" if secret else "–"


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(label="URL", max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(webhooks.ALL_EVENTS, "* (all events, present and future)")]
        + [(name, f"{name}: {meaning}") for name, meaning in webhooks.EVENT_TYPES.items()],
        widget=forms.CheckboxSelectMultiple,
        help_text="The events POSTed to this URL.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "secret_env", "is_enabled"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Endpoints: a new one gets a generated secret, shown once; the list shows it masked."""

    form = WebhookEndpointForm
    list_display = ["url", "description", "events", "is_enabled", "signing_secret", "deliveries_link", "created_at"]
    list_filter = ["is_enabled"]
    search_fields = ["url", "description"]
    readonly_fields = ["signing_secret", "created_at"]
    actions = ["send_test_event", "rotate_secret"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                failed_count=Count("deliveries", filter=Q(deliveries__status=WebhookDeliveryStatus.FAILED)),
                delivery_count=Count("deliveries"),
            )
        )

    @admin.display(description="events")
    def events(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.event_types) or "none"

    @admin.display(description="signing secret")
    def signing_secret(self, endpoint: WebhookEndpoint) -> str:
        if endpoint.secret_env:
            state = "set" if os.environ.get(endpoint.secret_env) else "NOT SET in this process"
            return f"from ${endpoint.secret_env} ({state})"
        return _masked(endpoint.secret)

    @admin.display(description="deliveries")
    def deliveries_link(self, endpoint: WebhookEndpoint) -> str:
        url = reverse("admin:core_webhookdelivery_changelist") + f"?endpoint__id__exact={endpoint.pk}"
        total = getattr(endpoint, "delivery_count", 0)
        failed = getattr(endpoint, "failed_count", 0)
        return format_html('<a href="{}">{} ({} failed)</a>', url, total, failed)

    def save_model(self, request, obj: WebhookEndpoint, form, change: bool) -> None:
        # A variable replaces the stored secret (nothing secret stays in the database); an endpoint
        # with neither gets a generated one, shown once.
        if obj.secret_env:
            obj.secret = ""
        elif not obj.secret:
            obj.secret = webhooks.webhook_secret_generate()
            request._webhook_secrets = [(obj, obj.secret)]
        super().save_model(request, obj, form, change)

    def _secret_page(self, request, shown: list[tuple[WebhookEndpoint, str]]) -> TemplateResponse:
        """The page that shows new secrets once (never cached; the secrets appear nowhere else)."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Copy the signing secret now",
            "shown": shown,
            "changelist_url": reverse("admin:core_webhookendpoint_changelist"),
        }
        response = TemplateResponse(request, SECRET_TEMPLATE, context)
        add_never_cache_headers(response)
        return response

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(request, "_webhook_secrets", None):
            return self._secret_page(request, request._webhook_secrets)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        if getattr(request, "_webhook_secrets", None):
            return self._secret_page(request, request._webhook_secrets)
        return super().response_change(request, obj)

    @admin.action(description="Send a test event (webhook.test) to the selected endpoints", permissions=["change"])
    def send_test_event(self, request, queryset):
        sent = 0
        for endpoint in queryset:
            delivery = webhooks.webhook_test_send(endpoint=endpoint)
            self.log_change(request, endpoint, f"Test event {delivery.event_id} queued")
            sent += 1
        url = reverse("admin:core_webhookdelivery_changelist") + f"?event_type={webhooks.TEST_EVENT}"
        self.message_user(
            request,
            format_html('Queued {} test event(s): see <a href="{}">their deliveries</a>.', sent, url),
            messages.SUCCESS,
        )

    @admin.action(description="Generate a new signing secret (shown once)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        shown = []
        for endpoint in queryset:
            shown.append((endpoint, webhooks.webhook_endpoint_secret_rotate(endpoint=endpoint)))
            self.log_change(request, endpoint, "New signing secret generated")
        return self._secret_page(request, shown)


class WebhookAttemptInline(admin.TabularInline):
    """Every attempt of a delivery, read-only."""

    model = WebhookAttempt
    fields = ["number", "attempted_at", "status_code", "latency_ms", "error", "response_excerpt"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Deliveries, read-only, with their attempts; the action re-sends the selected ones now."""

    list_display = [
        "event_type",
        "event_id",
        "endpoint",
        "status",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["status", "event_type", "endpoint"]
    search_fields = ["event_id", "event_type", "endpoint__url"]
    list_select_related = ["endpoint"]
    date_hierarchy = "created_at"
    fields = [
        "endpoint",
        "event_type",
        "event_id",
        "status",
        "attempt_count",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "created_at",
        "payload",
    ]
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Read-only pages; the re-send action asks for the endpoint's change permission instead.
        return False

    def has_resend_permission(self, request) -> bool:
        return request.user.has_perm("core.change_webhookendpoint")

    @admin.action(description="Re-send the selected deliveries now", permissions=["resend"])
    def resend(self, request, queryset):
        count = webhooks.webhook_deliveries_resend(delivery_ids=list(queryset.values_list("pk", flat=True)))
        for delivery in queryset:
            self.log_change(request, delivery, "Re-sent")
        self.message_user(request, f"Queued {count} deliveries to be sent again.", messages.SUCCESS)
