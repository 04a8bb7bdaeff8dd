"""Chat REST API under /api/v1/ (session auth for now)."""

from asgiref.sync import async_to_sync
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.providers import ModelBusy
from inference.providers.llama_cpp import BUSY_RETRY_AFTER

from . import services, turns
from .selectors import conversation_get, conversation_list, message_list
from .serializers import ConversationOutputSerializer, MessageOutputSerializer


class ConversationListApi(APIView):
    """``GET``: the user's conversations, most recent first. ``POST {"title"?}``: a new conversation."""

    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    def get(self, request):
        conversations = conversation_list(user=request.user)
        return Response(ConversationOutputSerializer(conversations, many=True).data)

    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_create(owner=request.user, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class MessageListApi(APIView):
    """``GET``: a conversation's messages, oldest first.

    ``POST {"content", "model"?, "params"?: {"temperature", "max_tokens"}, "client_id"?}``: send a
    message and wait for the whole answer; returns ``{"user_message", "assistant_message"}`` (201).
    The answer also streams to the conversation's open WebSockets.
    """

    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(trim_whitespace=False, allow_blank=True)
        model = serializers.SlugField(required=False, allow_blank=True)
        params = serializers.DictField(required=False)
        client_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")

    def get(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        return Response(MessageOutputSerializer(message_list(conversation=conversation), many=True).data)

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
