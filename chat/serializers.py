"""Output shapes shared by the REST API and the WebSocket events (one shape for both)."""

from rest_framework import serializers

from .models import Conversation, Feedback, Message


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
