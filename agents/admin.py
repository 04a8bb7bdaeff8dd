from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet

from accounts.admin_audit import AuditedAdmin

from .mcp import McpError, mcp_tools_list_sync
from .models import Chunk, Document, DocumentStatus, McpServer, Memory
from .services import document_delete, document_retry, mcp_server_allow_tools


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ["index", "token_count", "content"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    max_num = 0  # read-only: chunks come from ingestion

    def get_queryset(self, request):
        return super().get_queryset(request).defer("embedding")


@admin.register(Document)
class DocumentAdmin(AuditedAdmin, admin.ModelAdmin):
    """Operators see every user's documents, why an ingestion failed, and can retry it."""

    list_display = ["title", "owner", "content_type", "size_bytes", "status", "chunk_count", "attempts", "created_at"]
    list_filter = ["status", "content_type"]
    search_fields = ["title", "filename", "owner__username", "failure_reason"]
    list_select_related = ["owner"]
    readonly_fields = [
        "id",
        "owner",
        "filename",
        "file",
        "content_type",
        "size_bytes",
        "sha256",
        "status",
        "failure_reason",
        "chunk_count",
        "embedding_model",
        "attempts",
        "created_at",
        "updated_at",
        "ingested_at",
    ]
    fields = ["title", *readonly_fields]
    inlines = [ChunkInline]
    actions = ["retry_ingestion", "delete_documents"]

    def has_add_permission(self, request) -> bool:
        return False  # documents come from uploads and `manage.py kb import`

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # delete through the service: it removes the files too
        return actions

    def delete_model(self, request, obj: Document) -> None:
        # The service removes the file too, and records the document.delete event itself.
        document_delete(document=obj)

    @admin.action(description="Retry ingestion")
    def retry_ingestion(self, request, queryset: QuerySet[Document]):
        retried = 0
        for document in queryset:
            if document.status == DocumentStatus.PROCESSING:
                self.message_user(request, f"{document.title}: already being ingested.", messages.WARNING)
                continue
            document_retry(document=document)
            self.log_change(request, document, "Retried ingestion")
            retried += 1
        if retried:
            self.message_user(request, f"Ingestion queued again for {retried} document(s).", messages.SUCCESS)

    @admin.action(description="Delete selected documents (with their files)")
    def delete_documents(self, request, queryset: QuerySet[Document]):
        documents = list(queryset)
        self.log_deletions(request, documents)
        for document in documents:
            document_delete(document=document)
        self.message_user(request, f"Deleted {len(documents)} document(s).", messages.SUCCESS)


@admin.register(Memory)
class MemoryAdmin(AuditedAdmin, admin.ModelAdmin):
    """Every user's memories, read-only; operators may delete them. One user's: ``?owner__id__exact=<id>``
    (linked from the user's page)."""

    list_display = ["__str__", "owner", "kind", "conversation", "created_at"]
    list_filter = ["kind"]
    search_fields = ["content", "owner__username"]
    list_select_related = ["owner", "conversation"]
    readonly_fields = ["id", "owner", "conversation", "message", "kind", "pairs", "content", "created_at"]
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("embedding")

    def has_add_permission(self, request) -> bool:
        return False  # memories come from finished answers and the users' own notes

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# Fields that say where a server is and what secrets reach it: only superusers set them. A stdio
# command runs on the server's machine, and whoever picks the URL and the environment variables
# could send any secret of the process's environment anywhere.
MCP_CONNECTION_FIELDS = [
    "transport",
    "url",
    "command",
    "args",
    "env_passthrough",
    "bearer_token_env",
    "header_envs",
]


@admin.register(McpServer)
class McpServerAdmin(AuditedAdmin, admin.ModelAdmin):
    """MCP tool servers: where they are (superusers), which tools may run, for which groups; Test lists their tools."""

    list_display = ["slug", "name", "transport", "target", "enabled", "allowed", "group_names", "shared"]
    list_filter = ["transport", "enabled", "shared"]
    search_fields = ["slug", "name", "url", "command"]
    filter_horizontal = ["groups"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "enabled"]}),
        (
            "Connection (superusers only)",
            {
                "fields": MCP_CONNECTION_FIELDS + ["timeout_seconds"],
                "description": "Secrets are never stored: name the environment variables that hold them.",
            },
        ),
        ("Tools and who may use them", {"fields": ["allow_all_tools", "allowed_tools", "groups"]}),
        ("Results", {"fields": ["shared", "cache_results"]}),
        (None, {"fields": ["id", "created_at", "updated_at"]}),
    ]
    actions = ["test_servers", "allow_listed_tools"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def get_readonly_fields(self, request, obj=None):
        readonly = ["id", "created_at", "updated_at"]
        if not request.user.is_superuser:
            readonly += MCP_CONNECTION_FIELDS
        return readonly

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser  # a new server needs its connection, which only superusers set

    @admin.display(description="where")
    def target(self, server: McpServer) -> str:
        return server.target

    @admin.display(description="allowed tools")
    def allowed(self, server: McpServer) -> str:
        if server.allow_all_tools:
            return "all"
        return ", ".join(server.allowed_tools) or "none"

    @admin.display(description="groups")
    def group_names(self, server: McpServer) -> str:
        return ", ".join(group.name for group in server.groups.all()) or "everyone"

    @admin.action(description="Test: connect and list the tools", permissions=["view"])
    def test_servers(self, request, queryset: QuerySet[McpServer]):
        for server in queryset:
            try:
                tools = mcp_tools_list_sync(server)
            except McpError as exc:
                self.message_user(request, f"{server.slug}: {exc}", messages.ERROR)
                continue
            names = [f"{t.name} (allowed)" if server.tool_allowed(t.name) else t.name for t in tools]
            listed = ", ".join(names) or "no tools"
            self.message_user(request, f"{server.slug}: {len(tools)} tool(s): {listed}.", messages.SUCCESS)

    @admin.action(description="Allow every tool the server lists now", permissions=["change"])
    def allow_listed_tools(self, request, queryset: QuerySet[McpServer]):
        for server in queryset:
            try:
                tools = mcp_tools_list_sync(server)
            except McpError as exc:
                self.message_user(request, f"{server.slug}: {exc} The allow-list is unchanged.", messages.ERROR)
                continue
            mcp_server_allow_tools(server=server, tools=[t.name for t in tools])
            self.log_change(request, server, f"Allowed tools: {', '.join(server.allowed_tools) or 'none'}")
            self.message_user(
                request, f"{server.slug}: allowed {', '.join(server.allowed_tools) or 'no tools'}.", messages.SUCCESS
            )
