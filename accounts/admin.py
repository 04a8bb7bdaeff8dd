from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin

from . import services
from .models import APIKey, User

admin.site.register(User, UserAdmin)


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """API keys by prefix. Keys are made by their owners (``POST /api/v1/keys/``), never here, and
    the stored hash is never shown."""

    list_display = ["name", "prefix", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    fields = ["id", "user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
