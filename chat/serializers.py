"""Output shapes shared by the REST API and the WebSocket events (one shape for both)."""

from rest_framework import serializers

from .models import Conversation, Feedback, Message, SharedConversation


class MessageOutputSerializer(serializers.ModelSerializer):
    # Strings and floats only: the same data goes over the channel layer (msgpack has no Decimal).
    cost = serializers.FloatField(read_only=True, allow_null=True)
    # A string, not a UUID object: the same data goes over the channel layer (msgpack).
    conversation = serializers.UUIDField(source="conversation_id", read_only=True)
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "role",
            "content",
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

    def get_usage(self, message: Message) -> dict | None:
        if message.prompt_tokens is None and message.completion_tokens is None:
            return None
        return {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens}


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
