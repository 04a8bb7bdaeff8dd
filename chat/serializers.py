"""Output shapes shared by the REST API and the WebSocket events (one shape for both)."""

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import (
    Attachment,
    Conversation,
    CustomInstructions,
    Feedback,
    ImportJob,
    Message,
    Prompt,
    Role,
    SharedConversation,
)


class AttachmentOutputSerializer(serializers.ModelSerializer):
    """An image of a message: ``url`` (the image) and ``thumbnail_url`` are paths under ``/api/v1/``,
    readable by its owner (session, JWT or API key) and by staff."""

    message = serializers.UUIDField(source="message_id", read_only=True, allow_null=True)
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Attachment
        fields = [
            "id",
            "message",
            "content_type",
            "width",
            "height",
            "size_bytes",
            "filename",
            "url",
            "thumbnail_url",
            "created_at",
        ]

    def get_url(self, attachment: Attachment) -> str:
        return reverse("api_attachment_content", args=[attachment.pk])

    def get_thumbnail_url(self, attachment: Attachment) -> str:
        return reverse("api_attachment_thumbnail", args=[attachment.pk])


class MessageOutputSerializer(serializers.ModelSerializer):
    # Strings and floats only: the same data goes over the channel layer (msgpack has no Decimal).
    cost = serializers.FloatField(read_only=True, allow_null=True)
    # A string, not a UUID object: the same data goes over the channel layer (msgpack).
    conversation = serializers.UUIDField(source="conversation_id", read_only=True)
    parent_id = serializers.UUIDField(
        read_only=True, allow_null=True, help_text="The message this one follows; null for a first message."
    )
    usage = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "parent_id",
            "role",
            "content",
            "attachments",
            "status",
            "client_id",
            "model_slug",
            "usage",
            "ttft_ms",
            "latency_ms",
            "tokens_per_s",
            "cost",
            "cached",
            "citations",
            "error",
            "metadata",
            "created_at",
            "finished_at",
        ]

    @extend_schema_field(AttachmentOutputSerializer(many=True))
    def get_attachments(self, message: Message) -> list[dict]:
        # Only user messages hold images: an answer costs no query (answers are serialized on the event loop).
        if message.role != Role.USER:
            return []
        return AttachmentOutputSerializer(message.attachments.all(), many=True).data

    def get_usage(self, message: Message) -> dict | None:
        if message.prompt_tokens is None and message.completion_tokens is None:
            return None
        return {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens}


class MessageNodeOutputSerializer(MessageOutputSerializer):
    """A message with its place among its siblings (the other versions of it: edits, regenerations).

    The messages must carry ``sibling_ids`` (:func:`chat.selectors.message_siblings_attach`).
    """

    sibling_ids = serializers.SerializerMethodField(
        help_text="The ids of the messages with the same parent (this one included), oldest first."
    )
    sibling_index = serializers.SerializerMethodField(help_text="This message's place in `sibling_ids`, from 0.")
    sibling_count = serializers.SerializerMethodField(help_text="How many versions: 1 when it has no siblings.")

    class Meta(MessageOutputSerializer.Meta):
        fields = [*MessageOutputSerializer.Meta.fields, "sibling_ids", "sibling_index", "sibling_count"]

    def get_sibling_ids(self, message: Message) -> list[str]:
        return [str(pk) for pk in message.sibling_ids]

    def get_sibling_index(self, message: Message) -> int:
        return message.sibling_ids.index(message.pk)

    def get_sibling_count(self, message: Message) -> int:
        return len(message.sibling_ids)


class ConversationOutputSerializer(serializers.ModelSerializer):
    # null until the conversation's first answer picks a model.
    model = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    archived = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = ["id", "title", "model", "archived", "archived_at", "created_at", "updated_at"]

    def get_archived(self, conversation: Conversation) -> bool:
        return conversation.archived_at is not None


class FeedbackOutputSerializer(serializers.ModelSerializer):
    message = serializers.UUIDField(source="message_id", read_only=True)

    class Meta:
        model = Feedback
        fields = ["id", "message", "rating", "comment", "created_at", "updated_at"]


class ShareOutputSerializer(serializers.ModelSerializer):
    """A share link as its owner sees it: ``url`` is the absolute public address (``/s/<token>/``)."""

    conversation = serializers.UUIDField(source="conversation_id", read_only=True, allow_null=True)
    url = serializers.SerializerMethodField()
    active = serializers.SerializerMethodField()
    message_count = serializers.SerializerMethodField()

    class Meta:
        model = SharedConversation
        fields = [
            "id",
            "conversation",
            "title",
            "url",
            "active",
            "message_count",
            "created_at",
            "expires_at",
            "revoked_at",
        ]

    def get_url(self, share: SharedConversation) -> str:
        request = self.context.get("request")
        path = share.get_absolute_url()
        return request.build_absolute_uri(path) if request is not None else path

    def get_active(self, share: SharedConversation) -> bool:
        return share.is_active()

    def get_message_count(self, share: SharedConversation) -> int:
        return len(share.messages)


class PromptOutputSerializer(serializers.ModelSerializer):
    """A library prompt: ``variables`` are the ``{{names}}`` in its text; ``mine``: the user owns it."""

    owner = serializers.CharField(source="owner.username", read_only=True)
    groups = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    variables = serializers.SerializerMethodField()
    mine = serializers.SerializerMethodField()

    class Meta:
        model = Prompt
        fields = [
            "id",
            "title",
            "text",
            "variables",
            "visibility",
            "groups",
            "owner",
            "mine",
            "created_at",
            "updated_at",
        ]

    def get_variables(self, prompt: Prompt) -> list[str]:
        return prompt.variables()

    def get_mine(self, prompt: Prompt) -> bool:
        request = self.context.get("request")
        return request is not None and prompt.owner_id == request.user.pk


class CustomInstructionsOutputSerializer(serializers.ModelSerializer):
    """A user's custom instructions; ``updated_at`` is null until they are first saved."""

    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = CustomInstructions
        fields = ["about_me", "how_to_answer", "enabled", "updated_at"]


class ImportReportEntrySerializer(serializers.Serializer):
    title = serializers.CharField()
    status = serializers.ChoiceField(choices=["imported", "skipped"])
    reason = serializers.CharField(help_text="Why it was skipped, or what was left out of it.")
    messages = serializers.IntegerField(help_text="Messages of its active branch that are text.")
    conversation = serializers.UUIDField(allow_null=True, help_text="The new conversation, when imported.")


class ImportJobOutputSerializer(serializers.ModelSerializer):
    """An import job: ``processed`` of ``total`` conversations so far, and the report of each."""

    processed = serializers.IntegerField(read_only=True)
    report = ImportReportEntrySerializer(many=True, read_only=True)

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "status",
            "source",
            "filename",
            "size_bytes",
            "total",
            "processed",
            "imported",
            "skipped",
            "error",
            "report",
            "created_at",
            "started_at",
            "finished_at",
        ]
