"""Chat REST API under /api/v1/ (session auth for now)."""

from asgiref.sync import async_to_sync
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.schema import ErrorSerializer
from inference.providers import ModelBusy
from inference.providers.llama_cpp import BUSY_RETRY_AFTER

from . import services, turns
from .selectors import conversation_get, conversation_list, message_list
from .serializers import ConversationOutputSerializer, MessageOutputSerializer


class ConversationListApi(APIView):
    """``GET``: the user's conversations, most recent first. ``POST {"title"?}``: a new conversation."""

    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(
        summary="List conversations",
        responses=ConversationOutputSerializer(many=True),
        examples=[
            OpenApiExample(
                "conversations",
                value=[
                    {
                        "id": "5d6f3c1e-8a2b-4c7d-9e0f-1a2b3c4d5e6f",
                        "title": "Trip to Lyon",
                        "model": "smollm2-135m",
                        "created_at": "2026-01-05T09:30:00Z",
                        "updated_at": "2026-01-05T09:31:12Z",
                    }
                ],
            )
        ],
    )
    def get(self, request):
        conversations = conversation_list(user=request.user)
        return Response(ConversationOutputSerializer(conversations, many=True).data)

    @extend_schema(
        summary="Create a conversation",
        request=InputSerializer,
        responses={201: ConversationOutputSerializer},
        examples=[OpenApiExample("title", value={"title": "Trip to Lyon"}, request_only=True)],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_create(owner=request.user, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class MessageListApi(APIView):
    """``GET``: a conversation's messages, oldest first.

    ``POST {"content", "model"?, "params"?: {"temperature", "max_tokens"}, "client_id"?, "cache"?}``: send a
    message and wait for the whole answer; returns ``{"user_message", "assistant_message"}`` (201).
    The answer also streams to the conversation's open WebSockets.
    """

    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(trim_whitespace=False, allow_blank=True)
        model = serializers.SlugField(required=False, allow_blank=True)
        params = serializers.DictField(required=False)
        client_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
        cache = serializers.BooleanField(required=False, default=True)

    @extend_schema(summary="List a conversation's messages", responses=MessageOutputSerializer(many=True))
    def get(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        return Response(MessageOutputSerializer(message_list(conversation=conversation), many=True).data)

    @extend_schema(
        summary="Send a message and wait for the answer",
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "MessageSendResult",
                fields={"user_message": MessageOutputSerializer(), "assistant_message": MessageOutputSerializer()},
            ),
            409: OpenApiResponse(
                ErrorSerializer, description="A generation is already running (`generation_in_progress`)."
            ),
            413: OpenApiResponse(ErrorSerializer, description="The message is too long (`message_too_long`)."),
            503: OpenApiResponse(
                ErrorSerializer, description="The model is busy (`model_busy`, with `Retry-After`) or unavailable."
            ),
        },
        examples=[
            OpenApiExample(
                "question",
                value={"content": "What is the capital of France?", "params": {"temperature": 0.2, "max_tokens": 64}},
                request_only=True,
            )
        ],
    )
    def post(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        turn = services.message_send(
            conversation=conversation,
            content=data["content"],
            client_id=data["client_id"],
            model_slug=data.get("model") or None,
            params=data.get("params"),
            cache=data["cache"],
        )
        async_to_sync(turns.send_event)(
            conversation.pk, {"type": "message.created", "message": MessageOutputSerializer(turn.user_message).data}
        )
        assistant_message = async_to_sync(turns.turn_run)(turn)
        if assistant_message.metadata.get("error_code") == ModelBusy.code:
            # Nothing was generated because the model's queue was full: say so the HTTP way. The
            # user's message and the failed answer stay stored, as for any failure.
            raise ModelBusy(assistant_message.error, retry_after=BUSY_RETRY_AFTER)
        return Response(
            {
                "user_message": MessageOutputSerializer(turn.user_message).data,
                "assistant_message": MessageOutputSerializer(assistant_message).data,
            },
            status=status.HTTP_201_CREATED,
        )
