import re
import uuid
from pathlib import PurePath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
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


class McpTransport(models.TextChoices):
    HTTP = "http", "Streamable HTTP"
    SSE = "sse", "SSE (older servers)"
    STDIO = "stdio", "stdio (a local command)"


ENV_NAME = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and _.")
MCP_SLUG = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{0,29}$", "Lower-case letters, digits, - and _ (at most 30), starting with a letter or digit."
)


class McpServer(models.Model):
    """An MCP tool server an operator registered: where it is, which of its tools may run, and for whom.

    Operator-set only (the admin, superusers for stdio commands): nothing here is ever built from a
    user's input. Secrets are never stored: ``bearer_token_env`` and ``header_envs`` name the
    environment variables that hold them, read when connecting. A turn offers a user the tools of the
    enabled servers whose ``groups`` include one of the user's groups (no groups: everyone), and of
    those only ``allowed_tools`` (or all when ``allow_all_tools``), named ``<slug>__<tool>``.
    Written only through the admin and agents.services.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(
        max_length=30,
        unique=True,
        validators=[MCP_SLUG],
        help_text="Short name; its tools reach the model as <slug>__<tool>.",
    )
    name = models.CharField(max_length=100)
    transport = models.CharField(max_length=8, choices=McpTransport.choices, default=McpTransport.HTTP)
    url = models.URLField(
        "URL", max_length=500, blank=True, help_text="http and sse: the endpoint, e.g. http://127.0.0.1:8001/mcp."
    )
    command = models.CharField(
        max_length=500, blank=True, help_text="stdio: the executable to start (superusers only), e.g. /usr/bin/python3."
    )
    args = models.JSONField(default=list, blank=True, help_text="stdio: its arguments, a JSON list of strings.")
    env_passthrough = models.JSONField(
        "environment passed through",
        default=list,
        blank=True,
        help_text='stdio: names of environment variables given to the command, e.g. ["GITHUB_TOKEN"].',
    )
    bearer_token_env = models.CharField(
        "bearer token variable",
        max_length=100,
        blank=True,
        validators=[ENV_NAME],
        help_text="Name of the environment variable holding a bearer token (sent as Authorization).",
    )
    header_envs = models.JSONField(
        "headers from variables",
        default=dict,
        blank=True,
        help_text='Extra HTTP headers, each from an environment variable: {"X-Api-Key": "SEARCH_API_KEY"}.',
    )
    timeout_seconds = models.FloatField(
        default=10.0,
        validators=[MinValueValidator(0.5), MaxValueValidator(300)],
        help_text="Seconds one listing or tool call may take, connecting included.",
    )
    enabled = models.BooleanField(default=True)
    allow_all_tools = models.BooleanField(
        default=False, help_text="Offer every tool the server lists, now and later; otherwise only the allowed tools."
    )
    allowed_tools = models.JSONField(
        default=list, blank=True, help_text='Tool names that may run, e.g. ["search", "fetch"]. Empty: none.'
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="mcp_servers", help_text="Who may use it; none selected: everyone."
    )
    shared = models.BooleanField(
        default=False,
        help_text="Results do not depend on who asks: cache them across users (otherwise per user).",
    )
    cache_results = models.BooleanField(
        default=True,
        help_text="Keep results in the tool cache (CACHE_TOOL_TTL); off for tools with side effects or live data.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "MCP server"
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(transport__in=["http", "sse", "stdio"]), name="agents_mcpserver_transport_valid"
            ),
            models.CheckConstraint(
                condition=Q(transport="stdio", command__gt="") | (~Q(transport="stdio") & Q(url__gt="")),
                name="agents_mcpserver_target_set",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.slug

    def clean(self) -> None:
        errors = {}
        if self.transport == McpTransport.STDIO:
            if not self.command:
                errors["command"] = "A stdio server needs a command."
        elif not self.url:
            errors["url"] = "An http or sse server needs a URL."
        elif not self.url.startswith(("http://", "https://")):
            errors["url"] = "Use an http:// or https:// URL."
        if not _strings(self.args):
            errors["args"] = "A JSON list of strings."
        if not _strings(self.allowed_tools):
            errors["allowed_tools"] = "A JSON list of tool names."
        if not _strings(self.env_passthrough) or not all(_is_env_name(n) for n in self.env_passthrough):
            errors["env_passthrough"] = "A JSON list of environment variable names."
        if not isinstance(self.header_envs, dict) or not all(
            isinstance(k, str) and HEADER_NAME.match(k) and isinstance(v, str) and _is_env_name(v)
            for k, v in self.header_envs.items()
        ):
            errors["header_envs"] = 'A JSON object of header name → environment variable name: {"X-Api-Key": "KEY"}.'
        if errors:
            raise ValidationError(errors)

    @property
    def target(self) -> str:
        """Where it is, for lists: the URL, or the stdio command line."""
        if self.transport == McpTransport.STDIO:
            return " ".join([self.command, *map(str, self.args or [])])
        return self.url

    def tool_allowed(self, name: str) -> bool:
        """Return whether this server's tool ``name`` may be offered and run."""
        return self.allow_all_tools or name in (self.allowed_tools or [])


HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")  # RFC 9110 token


def _is_env_name(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) is not None


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
