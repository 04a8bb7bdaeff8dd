"""Webhook endpoints and deliveries in the admin, audited.

``core`` owns webhooks and cannot import ``accounts`` (apps depend one way), so the audit log is
added here: core's admins are registered again with :class:`~accounts.admin_audit.AuditedAdmin`
mixed in, and the actions that change state without a form (a new signing secret, a re-send) each
record an event. Imported by ``accounts.admin``, after ``core.admin`` has registered its classes.
"""

from __future__ import annotations

from django.contrib import admin

from core.admin import WebhookDeliveryAdmin, WebhookEndpointAdmin
from core.models import WebhookDelivery, WebhookEndpoint

from .admin_audit import AuditedAdmin
from .services import audit_record

admin.site.unregister(WebhookEndpoint)
admin.site.unregister(WebhookDelivery)


@admin.register(WebhookEndpoint)
class AuditedWebhookEndpointAdmin(AuditedAdmin, WebhookEndpointAdmin):
    audit_name = "webhook_endpoint"

    @admin.action(description="Generate a new signing secret (shown once)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        response = super().rotate_secret(request, queryset)
        for endpoint in queryset:
            # Which endpoint got a new secret, never the secret itself.
            audit_record(action="webhook_endpoint.secret_rotate", target=endpoint)
        return response


@admin.register(WebhookDelivery)
class AuditedWebhookDeliveryAdmin(WebhookDeliveryAdmin):
    @admin.action(description="Re-send the selected deliveries now", permissions=["resend"])
    def resend(self, request, queryset):
        deliveries = list(queryset)
        super().resend(request, queryset)
        for delivery in deliveries:
            audit_record(action="webhook_delivery.resend", target=delivery)
