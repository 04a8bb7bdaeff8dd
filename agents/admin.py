from django.contrib import admin, messages
from django.db.models import QuerySet

from accounts.admin_audit import AuditedAdmin

from .models import Chunk, Document, DocumentStatus, Memory
from .services import document_delete, document_retry


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
