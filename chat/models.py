import re
import uuid
from pathlib import PurePath

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class Conversation(models.Model):
    """A thread of messages between one user and a model. Written only through chat.services."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.ForeignKey(
        "inference.ModelConfig", on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    archived_at = models.DateTimeField(
        null=True, blank=True, help_text="When the owner archived it: hidden from the list unless asked for."
    )
    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text='Imported: {"imported_from": "chatgpt"|"parley", "original_id": str, "import_job": str}.',
    )
    active_leaf = models.ForeignKey(
        "Message",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The last message of the branch shown and sent to the model: the active path is it and its "
        "ancestors. Empty until the first message.",
    )

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or "New conversation"

    def get_absolute_url(self) -> str:
        return reverse("chat:conversation", args=[self.id])


class Role(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class MessageStatus(models.TextChoices):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


class Message(models.Model):
    """One message of a conversation. Written only through chat.services.

    An assistant message is created ``streaming`` before any model work and always finalised as
    ``complete``, ``error`` or ``cancelled``, keeping whatever text was generated.

    The messages of a conversation form a tree through ``parent`` (``None`` for a first message):
    editing a question or regenerating an answer adds a sibling, nothing is overwritten. The branch
    shown and sent to the model is ``Conversation.active_leaf`` and its ancestors.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=MessageStatus.choices, default=MessageStatus.COMPLETE)
    client_id = models.CharField(max_length=64, blank=True, help_text="Client-chosen id, echoed back.")
    model_slug = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField("TTFT (ms)", null=True, blank=True, help_text="Time to first token.")
    latency_ms = models.PositiveIntegerField("latency (ms)", null=True, blank=True)
    tokens_per_s = models.FloatField("tokens/s", null=True, blank=True, help_text="Completion tokens per second.")
    cost = models.DecimalField("cost (USD)", max_digits=12, decimal_places=6, null=True, blank=True)
    cached = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True)
    citations = models.JSONField(default=list, blank=True)
    error = models.TextField("error text", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        help_text="The message this one follows; empty for a first message. Siblings: an edit or a regeneration.",
    )

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            # The admin's failed-answers list (?status__exact=error): small, as errors are rare.
            models.Index(fields=["-created_at"], condition=Q(status="error"), name="chat_message_errors"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(role="assistant") | Q(status="complete"), name="chat_only_assistant_messages_stream"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


def attachment_upload_to(attachment: "Attachment", filename: str) -> str:
    """Store images under a generated name in the private prefix: ``private/attachments/<owner id>/<uuid><suffix>``.

    Nothing under ``private/`` is served directly (``MEDIA_URL`` is not routed); images are read
    through :class:`chat.apis.AttachmentContentApi`, which checks who asks.
    """
    suffix = PurePath(filename).suffix.lower()[:10]
    return f"private/attachments/{attachment.owner_id}/{uuid.uuid4().hex}{suffix}"


class Attachment(models.Model):
    """An image attached to a user's message. Written only through chat.services.

    Uploaded first (``message`` empty) and attached when the message is sent, or created with the
    message. ``file`` is the clean image (:func:`inference.images.image_clean`: type from its bytes,
    EXIF and other metadata stripped); ``thumbnail`` a small WebP of it. Both live in
    ``STORAGES["default"]`` under a private prefix and are read only through the API.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="attachments")
    file = models.FileField(upload_to=attachment_upload_to, max_length=255)
    thumbnail = models.FileField(upload_to=attachment_upload_to, max_length=255)
    content_type = models.CharField(max_length=32, help_text="Sniffed from the bytes: image/png, jpeg, webp or gif.")
    width = models.PositiveIntegerField(help_text="Pixels.")
    height = models.PositiveIntegerField(help_text="Pixels.")
    size_bytes = models.PositiveIntegerField()
    sha256 = models.CharField("SHA-256", max_length=64)
    filename = models.CharField("original file name", max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["owner", "message"], name="chat_attachment_owner_message")]
        constraints = [
            models.CheckConstraint(
                condition=Q(content_type__in=["image/png", "image/jpeg", "image/webp", "image/gif"]),
                name="chat_attachment_image_type",
            ),
        ]

    def __str__(self) -> str:
        return self.filename or f"{self.content_type} {self.width}x{self.height}"


class Rating(models.TextChoices):
    UP = "up"
    DOWN = "down"


class Feedback(models.Model):
    """A user's thumbs up or down, and optional comment, on an assistant message. One per user and message.

    Written only through chat.services.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["message", "user"], name="chat_one_feedback_per_user_and_message"),
            models.CheckConstraint(condition=Q(rating__in=["up", "down"]), name="chat_feedback_rating_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.rating} on {self.message_id}"


class SharedConversation(models.Model):
    """A read-only link to a snapshot of a conversation, opened at ``/s/<token>/``. Written only through
    chat.services.

    ``messages`` is a copy taken when the link was made, so later edits, regenerations or deletions
    in the conversation never change what the link shows. Its shape (``snapshot_version`` 1):
    ``[{"role": "user"|"assistant", "content": str, "model": str, "created_at": ISO 8601 str}]``,
    oldest first. The link works until it is revoked (``revoked_at``) or ``expires_at`` passes; the
    row is kept either way, for the owner's list and the admin.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token = models.CharField(max_length=64, unique=True, editable=False, help_text="The link's secret part.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shared_conversations")
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="shares",
        help_text="The conversation it was taken from (kept empty once that is deleted; the snapshot stays).",
    )
    title = models.CharField(max_length=200, blank=True)
    messages = models.JSONField(default=list, blank=True)
    snapshot_version = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: the link never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("created_at")),
                name="chat_share_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        # Never the token: this is what the admin log and audit events show.
        return self.title or "Shared conversation"

    def get_absolute_url(self) -> str:
        return reverse("chat:shared_conversation", args=[self.token])

    def is_active(self, *, now=None) -> bool:
        """Return whether the link still opens: not revoked and not expired (at ``now``, default now)."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class PromptVisibility(models.TextChoices):
    PRIVATE = "private", "Only me"
    GROUPS = "groups", "My groups"
    EVERYONE = "everyone", "Everyone"


# {{name}} in a prompt's text: a letter, digit or _ first, then letters, digits, _, - or spaces, trimmed.
# The same pattern as static/js/prompts.js.
PROMPT_VARIABLE = re.compile(r"\{\{\s*(\w[\w \-]{0,62}?)\s*\}\}")


class Prompt(models.Model):
    """A saved prompt of the prompt library, inserted with ``/`` in the composer. Written only through
    chat.services.

    ``text`` may hold ``{{variables}}`` (:meth:`variables`), filled in when it
    is inserted. Its owner alone changes it; others see it when ``visibility`` is ``everyone``, or
    ``groups`` and they are in one of ``groups``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompts")
    title = models.CharField(max_length=120)
    text = models.TextField()
    visibility = models.CharField(max_length=16, choices=PromptVisibility.choices, default=PromptVisibility.PRIVATE)
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="prompts", help_text="Who sees it when visibility is groups."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]
        indexes = [models.Index(fields=["owner", "title"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(visibility__in=["private", "groups", "everyone"]), name="chat_prompt_visibility_valid"
            ),
            models.CheckConstraint(condition=~Q(title=""), name="chat_prompt_title_not_empty"),
        ]

    def __str__(self) -> str:
        return self.title

    def variables(self) -> list[str]:
        """Return the ``{{variables}}`` of the text, each once, in order of first appearance."""
        return list(dict.fromkeys(m.group(1) for m in PROMPT_VARIABLE.finditer(self.text)))


class CustomInstructions(models.Model):
    """A user's custom instructions, added to the system prompt of their chat turns. Written only through
    chat.services (``/settings/`` and ``/api/v1/me/instructions/``)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="custom_instructions"
    )
    about_me = models.TextField("about me", blank=True, help_text="What the model should know about the user.")
    how_to_answer = models.TextField(blank=True, help_text="How the user wants to be answered.")
    enabled = models.BooleanField(default=True, help_text="Off: kept, but not sent to the model.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "custom instructions"

    def __str__(self) -> str:
        return f"Custom instructions of {self.user_id}"


class ImportSource(models.TextChoices):
    CHATGPT = "chatgpt", "ChatGPT"
    PARLEY = "parley", "Parley"


class ImportStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ImportJob(models.Model):
    """An upload of conversations to import (ChatGPT's or Parley's export), run as a Celery job.
    Written only through chat.services.

    ``data`` holds the uploaded file until the job ends (kept in the database, so any worker of a
    cluster can read it), then is emptied. ``report`` lists one entry per conversation of the file,
    in its order: ``{"title": str, "status": "imported"|"skipped", "reason": str, "messages": int,
    "conversation": uuid str|None}``; its length is how far the job got, so a job run again resumes
    after the last conversation it wrote.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="import_jobs")
    status = models.CharField(max_length=16, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    source = models.CharField(max_length=16, choices=ImportSource.choices, blank=True, help_text="Found in the file.")
    filename = models.CharField(max_length=255, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    data = models.BinaryField(null=True, blank=True, editable=False)
    total = models.PositiveIntegerField(default=0, help_text="Conversations in the file.")
    imported = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, help_text="Why the job failed, for the user.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed"]), name="chat_import_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(imported__lte=models.F("total") - models.F("skipped")),
                name="chat_import_counts_within_total",
            ),
        ]

    def __str__(self) -> str:
        return self.filename or "Import"

    @property
    def processed(self) -> int:
        """Conversations handled so far (imported or skipped)."""
        return self.imported + self.skipped
