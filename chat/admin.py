"""Conversations, messages and feedback in the admin: browse, debug, export. Read-only: every write goes
through chat.services; every operator action (exports included) is recorded in the admin log."""

import json

from django.contrib import admin
from django.db.models import Count, Exists, OuterRef, Subquery
from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin_audit import AuditedAdmin

from .models import Conversation, Feedback, ImportJob, Message, MessageStatus, Prompt, SharedConversation
from .selectors import message_tree_nodes
from .services import conversations_export, share_revoke

TOOL_RESULT_ADMIN_CHARS = 500  # of each result shown in a conversation; the message's page shows it whole


def tool_calls_html(message: Message, *, limit: int | None = TOOL_RESULT_ADMIN_CHARS) -> str:
    """Return the answer's tool calls (``metadata.tool_calls``) as an escaped HTML list, or "–"."""
    calls = (message.metadata or {}).get("tool_calls") or []
    if not isinstance(calls, list) or not calls:
        return "–"
    rows = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        result = str(call.get("result", ""))
        if limit is not None and len(result) > limit:
            result = result[:limit] + "…"
        status = "ok" if call.get("ok") else f"failed ({call.get('error') or 'error'})"
        if call.get("cached"):
            status += ", cached"
        where = f" on {call['server']}" if call.get("server") else ""
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        rows.append((call.get("tool", ""), where, status, call.get("ms", "?"), arguments, result))
    items = format_html_join(
        "",
        "<li><code>{}</code>{}: {}, {} ms<br>arguments: <code>{}</code><br>result: <pre>{}</pre></li>",
        rows,
    )
    return format_html("<ol class='tool-calls'>{}</ol>", items)


def images_html(message: Message) -> str:
    """Return the message's images as linked thumbnails (served to staff by the attachment API), or "–"."""
    attachments = list(message.attachments.all())
    if not attachments:
        return "–"
    items = format_html_join(
        " ",
        '<a href="{}" target="_blank" rel="noopener"><img src="{}" alt="{}" height="64" loading="lazy"></a>',
        (
            (
                reverse("api_attachment_content", args=[a.pk]),
                reverse("api_attachment_thumbnail", args=[a.pk]),
                f"Image {a.width}x{a.height}",
            )
            for a in attachments
        ),
    )
    return format_html("<span class='message-images'>{}</span>", items)


class MessageInline(admin.TabularInline):
    model = Message
    fields = [
        "created_at",
        "role",
        "status",
        "content",
        "images",
        "model_slug",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "latency_ms",
        "cost",
        "cached",
        "error",
        "tool_calls",
        "parent",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("attachments")

    @admin.display(description="tool calls")
    def tool_calls(self, message: Message) -> str:
        return tool_calls_html(message)

    @admin.display(description="images")
    def images(self, message: Message) -> str:
        return images_html(message)


def _last_message_status():
    return Subquery(Message.objects.filter(conversation=OuterRef("pk")).order_by("-created_at").values("status")[:1])


class LastMessageStatusFilter(admin.SimpleListFilter):
    """The status of a conversation's latest message: e.g. the ones whose last answer failed."""

    title = "status of last message"
    parameter_name = "last_status"

    def lookups(self, request, model_admin):
        return MessageStatus.choices

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(last_status=self.value())
        return queryset


class HasErrorFilter(admin.SimpleListFilter):
    """Conversations with (or without) any message that ended in an error."""

    title = "any message with an error"
    parameter_name = "has_error"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        errors = Message.objects.filter(conversation=OuterRef("pk"), status=MessageStatus.ERROR)
        if self.value() == "yes":
            return queryset.filter(Exists(errors))
        if self.value() == "no":
            return queryset.exclude(Exists(errors))
        return queryset


def _download(content: str, *, content_type: str, extension: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="parley-conversations-{stamp}.{extension}"'
    return response


@admin.register(Conversation)
class ConversationAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = [
        "__str__",
        "owner",
        "model",
        "message_count",
        "last_status",
        "created_at",
        "updated_at",
        "archived_at",
    ]
    list_filter = ["model", LastMessageStatusFilter, HasErrorFilter, "created_at", "updated_at", "archived_at"]
    search_fields = ["title", "owner__username", "owner__email", "messages__content"]
    search_help_text = "Title, owner's username or email, or text of any message."
    fields = ["id", "title", "owner", "model", "created_at", "updated_at", "archived_at", "branches"]
    readonly_fields = fields
    list_select_related = ["owner", "model"]
    date_hierarchy = "created_at"
    inlines = [MessageInline]
    actions = ["export_json", "export_markdown"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(message_total=Count("messages", distinct=True), last_status=_last_message_status())
        )

    def has_add_permission(self, request):
        # Conversations are written only through chat.services (the owner renames and archives them).
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, conversation) -> int:
        return conversation.message_total

    @admin.display(description="message tree")
    def branches(self, conversation) -> str:
        """Every message, indented under the one it follows; "n / m" where it has other versions
        (edits, regenerations), and ★ on the branch the user sees (the active path)."""
        messages, path = message_tree_nodes(conversation=conversation)
        if not messages:
            return "–"
        by_id = {m.pk: m for m in messages}
        depth: dict = {}
        for message in messages:  # oldest first: a parent's depth is known before its children's
            depth[message.pk] = depth[message.parent_id] + 1 if message.parent_id in by_id else 0
        active = set(path)
        # Depth-first, so that each branch reads as a block under its fork.
        children: dict = {}
        for message in messages:
            children.setdefault(message.parent_id if message.parent_id in by_id else None, []).append(message)
        rows, stack = [], list(reversed(children.get(None, [])))
        while stack:
            message = stack.pop()
            count = len(message.sibling_ids)
            rows.append(
                (
                    "\u00a0" * 4 * depth[message.pk],
                    "★ " if message.pk in active else "",
                    message.role,
                    message.content[:80],
                    message.status,
                    f" · version {message.sibling_ids.index(message.pk) + 1} / {count}" if count > 1 else "",
                    message.pk,
                )
            )
            stack.extend(reversed(children.get(message.pk, [])))
        items = format_html_join("", "<li><code>{}</code>{}<b>{}</b>: {} <i>({}{})</i> <small>{}</small></li>", rows)
        return format_html("<ul class='message-tree' style='list-style: none; padding: 0'>{}</ul>", items)

    @admin.display(description="last message", ordering="last_status")
    def last_status(self, conversation) -> str:
        return conversation.last_status or "–"

    def _export(self, request, queryset, *, kind: str, format: str, content_type: str, extension: str):
        content = conversations_export(conversations=queryset, format=format)
        for conversation in queryset:
            self.log_change(request, conversation, f"Exported as {kind}")
        return _download(content, content_type=content_type, extension=extension)

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        return self._export(
            request,
            queryset,
            kind="JSON",
            format="json",
            content_type="application/json; charset=utf-8",
            extension="json",
        )

    @admin.action(description="Export selected conversations as Markdown", permissions=["view"])
    def export_markdown(self, request, queryset):
        return self._export(
            request,
            queryset,
            kind="Markdown",
            format="markdown",
            content_type="text/markdown; charset=utf-8",
            extension="md",
        )


@admin.register(Message)
class MessageAdmin(AuditedAdmin, admin.ModelAdmin):
    """All messages, for debugging: ``?status__exact=error`` lists the failed answers with their reason."""

    list_display = [
        "__str__",
        "conversation",
        "owner",
        "role",
        "status",
        "model_slug",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "cached",
        "error",
        "created_at",
    ]
    list_filter = ["status", "role", "cached", "model_slug", "created_at"]
    search_fields = ["content", "error", "conversation__title", "conversation__owner__username"]
    readonly_fields = [f.name for f in Message._meta.fields] + ["images", "tool_calls"]
    list_select_related = ["conversation", "conversation__owner"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        # Messages are written only through chat.services.
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, message):
        return message.conversation.owner

    @admin.display(description="tool calls")
    def tool_calls(self, message: Message) -> str:
        return tool_calls_html(message, limit=None)

    @admin.display(description="images")
    def images(self, message: Message) -> str:
        return images_html(message)


@admin.register(Feedback)
class FeedbackAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["__str__", "user", "rating", "comment", "updated_at"]
    list_filter = ["rating", "updated_at"]
    search_fields = ["comment", "user__username", "message__content"]
    readonly_fields = [f.name for f in Feedback._meta.fields]
    list_select_related = ["user"]

    def has_add_permission(self, request):
        # Feedback is written only through chat.services.
        return False


class ShareStateFilter(admin.SimpleListFilter):
    """Whether a share link still opens: active, expired or revoked."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


@admin.register(SharedConversation)
class SharedConversationAdmin(AuditedAdmin, admin.ModelAdmin):
    """Share links with their read-only snapshot; "Revoke" goes through chat.services (audited there)."""

    audit_name = "share"
    list_display = ["__str__", "owner", "message_count", "state", "created_at", "expires_at", "revoked_at"]
    list_filter = [ShareStateFilter, "created_at", "expires_at"]
    search_fields = ["title", "owner__username", "owner__email"]
    # The token (the link's secret) is not shown: an operator can revoke a link without being able to open it.
    fields = ["id", "title", "owner", "conversation", "created_at", "expires_at", "revoked_at", "snapshot"]
    readonly_fields = fields
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Share links are written only through chat.services (by their owner).
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="messages")
    def message_count(self, share: SharedConversation) -> int:
        return len(share.messages)

    @admin.display(description="state")
    def state(self, share: SharedConversation) -> str:
        if share.revoked_at:
            return "revoked"
        return "active" if share.is_active() else "expired"

    @admin.display(description="snapshot")
    def snapshot(self, share: SharedConversation) -> str:
        rows = [
            (m.get("role", ""), m.get("model") or "", m.get("created_at", ""), m.get("content", ""))
            for m in share.messages
        ]
        items = format_html_join("", "<li><strong>{}</strong> {} <small>{}</small><pre>{}</pre></li>", rows)
        return format_html("<ol class='share-snapshot'>{}</ol>", items)

    @admin.action(description="Revoke selected share links", permissions=["view"])
    def revoke(self, request, queryset):
        revoked = 0
        for share in queryset.filter(revoked_at__isnull=True):
            share_revoke(share=share)
            self.log_change(request, share, "Revoked")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} share link{'' if revoked == 1 else 's'}.")


@admin.register(Prompt)
class PromptAdmin(AuditedAdmin, admin.ModelAdmin):
    """Library prompts: read-only here (their owners change them); an operator may delete one (audited)."""

    list_display = ["title", "owner", "visibility", "updated_at"]
    list_filter = ["visibility", "updated_at"]
    search_fields = ["title", "text", "owner__username"]
    readonly_fields = ["id", "title", "text", "owner", "visibility", "groups", "created_at", "updated_at"]
    fields = readonly_fields
    list_select_related = ["owner"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ImportJob)
class ImportJobAdmin(AuditedAdmin, admin.ModelAdmin):
    """Users' conversation imports with their reports, read-only (written only through chat.services)."""

    audit_name = "import_job"
    list_display = ["__str__", "owner", "status", "source", "total", "imported", "skipped", "created_at"]
    list_filter = ["status", "source", "created_at"]
    search_fields = ["filename", "owner__username", "owner__email"]
    # The uploaded file itself (data) is not shown: it is the user's conversations.
    fields = [
        "id",
        "owner",
        "filename",
        "size_bytes",
        "source",
        "status",
        "error",
        "total",
        "imported",
        "skipped",
        "created_at",
        "started_at",
        "finished_at",
        "report_table",
    ]
    readonly_fields = fields
    list_select_related = ["owner"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        return super().get_queryset(request).defer("data")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="report")
    def report_table(self, job: ImportJob) -> str:
        rows = [
            (e.get("status", ""), e.get("title", ""), e.get("messages", ""), e.get("reason", "")) for e in job.report
        ]
        items = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<table>{}</table>", items)
