import uuid
from pathlib import PurePath

from django.conf import settings
from django.db import models
from django.db.models import Q
from pgvector.django import HnswIndex, VectorField

EMBEDDING_DIMENSIONS = 384  # all-MiniLM-L6-v2; a model of another width needs a migration of these columns


class DocumentStatus(models.TextChoices):
    PENDING = "pending"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class DocumentType(models.TextChoices):
    TEXT = "text/plain", "Plain text"
    MARKDOWN = "text/markdown", "Markdown"
    HTML = "text/html", "HTML"
    PDF = "application/pdf", "PDF"
    JSONL = "application/jsonl", "JSONL question/answer pairs"


def document_upload_to(document: "Document", filename: str) -> str:
    """Store uploads under a generated name: ``documents/<owner id>/<uuid><suffix>``.

    The client's name is kept in ``Document.filename`` only: it never reaches the file system.
    """
    suffix = PurePath(filename).suffix.lower()[:10]
    return f"documents/{document.owner_id}/{uuid.uuid4().hex}{suffix}"


class Document(models.Model):
    """A file of a user's knowledge base, split into embedded chunks. Written only through agents.services.

    ``status`` goes ``pending`` → ``processing`` → ``ready`` or ``failed`` (with ``failure_reason``);
    a retry starts it again at ``pending``. A ``pending`` document without ``enqueued_at``, or a
    ``processing`` one whose ``heartbeat_at`` went stale (its worker died), is queued again by
    :func:`agents.services.documents_requeue`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=200)
    filename = models.CharField("original file name", max_length=255, blank=True)
    file = models.FileField(upload_to=document_upload_to, max_length=255)
    content_type = models.CharField(max_length=32, choices=DocumentType.choices)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField("SHA-256", max_length=64)
    status = models.CharField(max_length=16, choices=DocumentStatus.choices, default=DocumentStatus.PENDING)
    failure_reason = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    embedding_model = models.CharField(max_length=128, blank=True, help_text="The model that embedded its chunks.")
    attempts = models.PositiveIntegerField(default=0, help_text="Ingestion runs started.")
    # Null while its ingestion is not known to be queued (the broker was down): beat queues it again.
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When its ingestion was last queued.")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the ingestion running it (every few seconds)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "processing", "ready", "failed"]),
                name="agents_document_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A passage of a document with its embedding. ``index`` orders a document's chunks from 0.

    ``owner`` repeats the document's, so retrieval filters on one column of this table.
    """

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    index = models.PositiveIntegerField()
    content = models.TextField()
    token_count = models.PositiveIntegerField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)

    class Meta:
        ordering = ["document", "index"]
        constraints = [
            # Ingestion may run twice (a redelivered task): never two copies of a chunk.
            models.UniqueConstraint(fields=["document", "index"], name="agents_chunk_unique_index"),
        ]
        indexes = [
            models.Index(fields=["owner"]),
            HnswIndex(
                name="agents_chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document_id} #{self.index}"


class MemoryKind(models.TextChoices):
    EXCHANGE = "exchange", "Question and answer"
    SUMMARY = "summary", "Conversation summary"
    NOTE = "note", "Your note"


class Memory(models.Model):
    """Something recalled in a user's conversations, embedded: from their past conversations, or their own note.

    ``exchange``: one question and its answer (``message`` is the answer). ``summary``: a summary of
    a conversation's first ``pairs`` question/answer pairs. ``note``: words the user asked to be
    remembered ("I prefer metric units"), from no conversation. All are recalled the same way, only
    while the owner has memory on. Written only through agents.services.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memories")
    conversation = models.ForeignKey(
        "chat.Conversation", on_delete=models.CASCADE, null=True, blank=True, related_name="memories"
    )
    message = models.ForeignKey(
        "chat.Message", on_delete=models.CASCADE, null=True, blank=True, related_name="memories"
    )
    kind = models.CharField(max_length=16, choices=MemoryKind.choices)
    pairs = models.PositiveIntegerField(null=True, blank=True, help_text="Pairs a summary covers.")
    content = models.TextField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "memories"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["message"], condition=Q(kind="exchange"), name="agents_memory_one_per_answer"
            ),
            models.UniqueConstraint(
                fields=["conversation", "pairs"], condition=Q(kind="summary"), name="agents_memory_one_summary_per_size"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["exchange", "summary", "note"]), name="agents_memory_kind_valid"
            ),
            # Exchanges and summaries come from a conversation; a note from none.
            models.CheckConstraint(
                condition=Q(kind="note", conversation__isnull=True) | (~Q(kind="note") & Q(conversation__isnull=False)),
                name="agents_memory_conversation_unless_note",
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            HnswIndex(
                name="agents_memory_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.content[:60]
