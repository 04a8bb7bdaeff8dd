from django.contrib import admin

from .models import Conversation, Feedback, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = [
        "created_at",
        "role",
        "status",
        "content",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "error",
        "superseded_by",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "model", "created_at", "updated_at", "archived_at"]
    list_filter = ["model", "created_at", "archived_at"]
    search_fields = ["title", "owner__username", "messages__content"]
    readonly_fields = ["id", "owner", "created_at", "updated_at"]
    list_select_related = ["owner", "model"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["__str__", "conversation", "role", "status", "model_slug", "completion_tokens", "created_at"]
    list_filter = ["status", "role", "model_slug", "created_at"]
    search_fields = ["content", "conversation__title", "conversation__owner__username"]
    readonly_fields = [f.name for f in Message._meta.fields]
    list_select_related = ["conversation"]

    def has_add_permission(self, request):
        # Messages are written only through chat.services.
        return False


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "rating", "comment", "updated_at"]
    list_filter = ["rating", "updated_at"]
    search_fields = ["comment", "user__username", "message__content"]
    readonly_fields = [f.name for f in Feedback._meta.fields]
    list_select_related = ["user"]

    def has_add_permission(self, request):
        # Feedback is written only through chat.services.
        return False
