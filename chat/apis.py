"""Chat REST API under /api/v1/ (session auth for now)."""

import tempfile

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import Group
from django.http import FileResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from redis.exceptions import RedisError
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import APIKey
from core.errors import ParleyError
from core.schema import ErrorSerializer
from inference.images import ImageTooLarge, data_url_decode
from inference.providers import ModelBusy, ModelUnavailable
from inference.providers.llama_cpp import BUSY_RETRY_AFTER
from inference.sse import event_stream_response

from . import services, sse, turns
from .models import PromptVisibility, Rating
from .selectors import (
    attachment_get,
    conversation_export_list,
    conversation_get,
    conversation_list,
    custom_instructions_get,
    generation_active,
    import_job_get,
    import_job_list,
    message_get,
    message_path,
    message_tree_nodes,
    prompt_get,
    prompt_list,
    share_get,
    share_list,
)
from .serializers import (
    AttachmentOutputSerializer,
    ConversationOutputSerializer,
    CustomInstructionsOutputSerializer,
    FeedbackOutputSerializer,
    ImportJobOutputSerializer,
    MessageNodeOutputSerializer,
    MessageOutputSerializer,
    PromptOutputSerializer,
    ShareOutputSerializer,
)

CONVERSATION_EXAMPLE = {
    "id": "5d6f3c1e-8a2b-4c7d-9e0f-1a2b3c4d5e6f",
    "title": "Trip to Lyon",
    "model": "smollm2-135m",
    "archived": False,
    "archived_at": None,
    "created_at": "2026-01-05T09:30:00Z",
    "updated_at": "2026-01-05T09:31:12Z",
}


USER_MESSAGE_EXAMPLE = {
    "id": "6a1d2f0e-4b3c-4d5e-8f70-1a2b3c4d5e6f",
    "conversation": CONVERSATION_EXAMPLE["id"],
    "parent_id": None,
    "role": "user",
    "content": "What is the capital of France?",
    "status": "complete",
    "client_id": "c-1",
    "model_slug": "",
    "usage": None,
    "ttft_ms": None,
    "latency_ms": None,
    "tokens_per_s": None,
    "cost": None,
    "cached": False,
    "citations": [],
    "error": "",
    "metadata": {},
    "created_at": "2026-01-05T09:31:00Z",
    "finished_at": None,
}
ANSWER_EXAMPLE = {
    **USER_MESSAGE_EXAMPLE,
    "id": "0b8f7c52-3d1e-4f6a-9b2c-7e5d4a3f2c10",
    "parent_id": USER_MESSAGE_EXAMPLE["id"],
    "role": "assistant",
    "content": "The capital of France is Paris.",
    "client_id": "",
    "model_slug": "smollm2-135m",
    "usage": {"prompt_tokens": 31, "completion_tokens": 8},
    "ttft_ms": 42,
    "latency_ms": 180,
    "tokens_per_s": 57.1,
    "cost": 0.0,
    "created_at": "2026-01-05T09:31:00Z",
    "finished_at": "2026-01-05T09:31:01Z",
}


# A message as the message list and the tree give it: with its versions (edits, regenerations).
ANSWER_NODE_EXAMPLE = {
    **ANSWER_EXAMPLE,
    "sibling_ids": ["3f0e9d8c-7b6a-4594-8372-615049382716", ANSWER_EXAMPLE["id"]],
    "sibling_index": 1,
    "sibling_count": 2,
}
USER_NODE_EXAMPLE = {
    **USER_MESSAGE_EXAMPLE,
    "sibling_ids": [USER_MESSAGE_EXAMPLE["id"]],
    "sibling_index": 0,
    "sibling_count": 1,
}

_ANSWER_EVENTS = [
    {
        "type": "generation.started",
        "message_id": ANSWER_EXAMPLE["id"],
        "model": "smollm2-135m",
        "parent_id": USER_MESSAGE_EXAMPLE["id"],
    },
    {"type": "token", "message_id": ANSWER_EXAMPLE["id"], "delta": "The capital"},
    {"type": "token", "message_id": ANSWER_EXAMPLE["id"], "delta": " of France is Paris."},
    {"type": "generation.completed", "message": ANSWER_EXAMPLE},
]
SEND_STREAM_RESPONSE = sse.event_stream_response_schema(
    description="`Accept: text/event-stream`: the turn's events as server-sent events (see the description).",
    events=[{"type": "message.created", "message": USER_MESSAGE_EXAMPLE}, *_ANSWER_EVENTS],
)
REGENERATE_STREAM_RESPONSE = sse.event_stream_response_schema(
    description="`Accept: text/event-stream`: the new answer's events as server-sent events.", events=_ANSWER_EVENTS
)


def _error_example(status_code: int, code: str, detail: str) -> OpenApiExample:
    return OpenApiExample(
        code, value={"error": {"code": code, "detail": detail}}, status_codes=[status_code], response_only=True
    )


GENERATION_IN_PROGRESS = OpenApiResponse(
    ErrorSerializer, description="A generation is already running (`generation_in_progress`)."
)


def _raise_if_not_taken(message) -> None:
    """Say the HTTP way (503 with ``Retry-After``) that nothing was generated for ``message`` because the
    model could not take the request: its queue was full (``model_busy``), or every deployment was
    drained or cooling down (``model_unavailable`` with the seconds to the soonest cooldown end)."""
    code, retry_after = message.metadata.get("error_code"), message.metadata.get("retry_after")
    if code == ModelBusy.code:
        raise ModelBusy(message.error, retry_after=retry_after or BUSY_RETRY_AFTER)
    if code == ModelUnavailable.code and retry_after:
        raise ModelUnavailable(message.error, retry_after=retry_after)


class ConversationPagination(PageNumberPagination):
    """``?page=`` (from 1) and ``?page_size=`` (default 20, at most 100)."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class ConversationListApi(APIView):
    """``GET ?q=&archived=&page=&page_size=``: the user's conversations, most recent first, paginated.

    ``POST {"title"?}``: a new conversation.
    """

    pagination_class = ConversationPagination

    class FilterSerializer(serializers.Serializer):
        q = serializers.CharField(
            required=False,
            default="",
            allow_blank=True,
            max_length=500,
            help_text='Full-text search over titles and message content: words, `"a phrase"`, `or`, `-word`.',
        )
        archived = serializers.BooleanField(
            required=False, default=False, help_text="`true`: the archived conversations instead of the others."
        )

    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(
        summary="List or search conversations",
        parameters=[FilterSerializer],
        responses={
            200: ConversationOutputSerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description="An invalid `archived`, `q` or `page_size`."),
        },
        examples=[OpenApiExample("conversations", value=CONVERSATION_EXAMPLE, response_only=True)],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        conversations = conversation_list(
            user=request.user, query=filters.validated_data["q"], archived=filters.validated_data["archived"]
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(conversations, request, view=self)
        return paginator.get_paginated_response(ConversationOutputSerializer(page, many=True).data)

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


def _turn_response(view, request, turn):
    """Answer a request that started ``turn`` (a send or an edit): its events as SSE when asked,
    else wait for the answer and return 201 ``{"user_message", "assistant_message"}``."""
    created = {"type": "message.created", "message": MessageOutputSerializer(turn.user_message).data}
    if view.wants_event_stream(request):
        return event_stream_response(sse.turn_events(turn, announce=created))
    async_to_sync(turns.send_event)(turn.user_message.conversation_id, created)
    assistant_message = async_to_sync(turns.turn_execute)(turn)
    # The user's message and the failed answer stay stored, as for any failure.
    _raise_if_not_taken(assistant_message)
    return Response(
        {
            "user_message": MessageOutputSerializer(turn.user_message).data,
            "assistant_message": MessageOutputSerializer(assistant_message).data,
        },
        status=status.HTTP_201_CREATED,
    )


MESSAGE_SEND_RESULT = inline_serializer(
    "MessageSendResult",
    fields={"user_message": MessageOutputSerializer(), "assistant_message": MessageOutputSerializer()},
)


@extend_schema_field(OpenApiTypes.STR)
class ImageInputField(serializers.Field):
    """An image sent with a request: an uploaded file (multipart) or a base64 data URL (JSON).

    Returns ``(bytes, file name)``. A file over ``IMAGE_MAX_BYTES`` is refused (413) before it is read.
    """

    default_error_messages = {"invalid": "Must be an image file (multipart) or a data URL: data:image/png;base64,..."}

    def to_internal_value(self, data) -> tuple[bytes, str]:
        if isinstance(data, str):
            return data_url_decode(data), ""
        if hasattr(data, "read") and hasattr(data, "size"):
            if data.size > settings.IMAGE_MAX_BYTES:
                raise ImageTooLarge(
                    f"The image is {data.size:,} bytes; the limit is {settings.IMAGE_MAX_BYTES:,} (IMAGE_MAX_BYTES)."
                )
            return data.read(), data.name or ""
        self.fail("invalid")

    def to_representation(self, value):
        return None


class AttachmentListApi(APIView):
    """``POST`` (multipart ``file``, or JSON ``{"url": "data:image/png;base64,..."}``): upload an image to
    attach to a message; 201 with it. Send its ``id`` in the ``attachments`` of a message (REST or the
    WebSocket's ``message.send``). PNG, JPEG, WebP and GIF, told by their bytes; EXIF and other
    metadata are stripped before the image is stored.
    """

    class InputSerializer(serializers.Serializer):
        file = ImageInputField(required=False, help_text="The image (multipart).")
        url = ImageInputField(required=False, help_text="Or the image as a base64 data URL (JSON).")

        def validate(self, data):
            if ("file" in data) == ("url" in data):
                raise serializers.ValidationError("Send either file or url.")
            return data

    @extend_schema(
        summary="Upload an image to attach to a message",
        request={"multipart/form-data": InputSerializer, "application/json": InputSerializer},
        responses={
            201: AttachmentOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Not a readable image (`invalid_image`)."),
            413: OpenApiResponse(
                ErrorSerializer,
                description="Over `IMAGE_MAX_BYTES` (`image_too_large`) or `IMAGE_MAX_PIXELS` "
                "(`image_too_many_pixels`).",
            ),
            415: OpenApiResponse(ErrorSerializer, description="Not PNG, JPEG, WebP or GIF (`unsupported_image_type`)."),
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        blob, name = serializer.validated_data.get("file") or serializer.validated_data["url"]
        attachment = services.attachment_create(owner=request.user, data=blob, filename=name)
        return Response(AttachmentOutputSerializer(attachment).data, status=status.HTTP_201_CREATED)


class AttachmentContentApi(APIView):
    """``GET``: the image itself (its stored bytes and type), to its owner and to staff who may view
    messages; a 404 for anyone else, as for a missing one."""

    thumbnail = False

    @extend_schema(
        summary="Get an attached image",
        responses={(200, "image/*"): OpenApiResponse(description="The image."), 404: ErrorSerializer},
    )
    def get(self, request, attachment_id):
        attachment = attachment_get(user=request.user, attachment_id=attachment_id)
        stored = attachment.thumbnail if self.thumbnail else attachment.file
        try:
            file = stored.open("rb")
        except (FileNotFoundError, OSError):
            raise ParleyError("The image's file is missing from storage.", code="not_found", status_code=404) from None
        response = FileResponse(file, content_type="image/webp" if self.thumbnail else attachment.content_type)
        # Never changes (a new image gets a new id); only for this browser, not shared caches.
        response["Cache-Control"] = "private, max-age=86400, immutable"
        response["Content-Disposition"] = "inline"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class AttachmentThumbnailApi(AttachmentContentApi):
    """``GET``: a WebP thumbnail of the image (longest side 256 px); who may see it as for the image."""

    thumbnail = True

    @extend_schema(
        summary="Get an attached image's thumbnail",
        responses={(200, "image/webp"): OpenApiResponse(description="The thumbnail."), 404: ErrorSerializer},
    )
    def get(self, request, attachment_id):
        return super().get(request, attachment_id)


class MessageListApi(sse.EventStreamMixin, APIView):
    """``GET``: a conversation's active path (the branch shown), oldest first, each message with its
    ``parent_id`` and its versions (``sibling_ids``, ``sibling_index``, ``sibling_count``).

    ``POST {"content", "model"?, "params"?: {"temperature", "max_tokens"}, "client_id"?, "cache"?,
    "attachments"?: [image ids], "images"?: [data URLs]}`` (JSON, or multipart with ``images`` files):
    send a message and wait for the whole answer; returns ``{"user_message", "assistant_message"}`` (201).
    With ``Accept: text/event-stream``: 200 and the WebSocket protocol's events as they happen
    (chat.sse), from ``message.created`` to ``generation.completed``. The answer also streams to the
    conversation's open WebSockets.
    """

    renderer_classes = [JSONRenderer, sse.EventStreamRenderer]
    schema = sse.EventStreamAutoSchema()

    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(trim_whitespace=False, allow_blank=True)
        model = serializers.SlugField(required=False, allow_blank=True)
        params = serializers.DictField(required=False)
        client_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
        cache = serializers.BooleanField(required=False, default=True)
        attachments = serializers.ListField(
            child=serializers.UUIDField(), required=False, help_text="Ids of images uploaded to /attachments/."
        )
        images = serializers.ListField(
            child=ImageInputField(), required=False, help_text="Images: files (multipart) or base64 data URLs."
        )

    @extend_schema(
        summary="List a conversation's messages (the branch shown)",
        description="The active path only; `GET .../messages/tree/` has every branch.",
        responses=MessageNodeOutputSerializer(many=True),
        examples=[OpenApiExample("messages", value=[USER_NODE_EXAMPLE, ANSWER_NODE_EXAMPLE], response_only=True)],
    )
    def get(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        # A client catching up after a crash reads the answer as ended, not as still streaming.
        services.conversation_orphans_finalize(conversation=conversation)
        return Response(MessageNodeOutputSerializer(message_path(conversation=conversation), many=True).data)

    @extend_schema(
        summary="Send a message and wait for the answer (JSON), or stream it (SSE)",
        description=(
            "With `Accept: application/json` (the default): 201 once the answer is complete. With "
            "`Accept: text/event-stream`: 200 at once, then the WebSocket protocol's events as they "
            "happen (`event: <type>`, `data: <JSON>`): `message.created`, `generation.started`, "
            "`node`, `token` (deltas that join to the answer), `error` (on failure), "
            "`generation.completed` (then the stream ends), and `: ping` comments every 15 s of "
            "silence. The user's message is stored before any model work; closing the stream does "
            "not stop the generation (`POST .../stop/` does)."
        ),
        request=InputSerializer,
        responses={
            (201, "application/json"): MESSAGE_SEND_RESULT,
            (200, sse.MEDIA_TYPE): SEND_STREAM_RESPONSE,
            409: GENERATION_IN_PROGRESS,
            413: OpenApiResponse(
                ErrorSerializer, description="The message is too long (`message_too_long`), or an image too large."
            ),
            503: OpenApiResponse(
                ErrorSerializer, description="The model is busy (`model_busy`, with `Retry-After`) or unavailable."
            ),
        },
        examples=[
            OpenApiExample(
                "question",
                value={"content": "What is the capital of France?", "params": {"temperature": 0.2, "max_tokens": 64}},
                request_only=True,
            ),
            OpenApiExample(
                "answered",
                value={"user_message": USER_MESSAGE_EXAMPLE, "assistant_message": ANSWER_EXAMPLE},
                response_only=True,
                status_codes=[201],
                media_type="application/json",
            ),
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
            attachments=data.get("attachments"),
            images=data.get("images"),
            api_key=request.auth if isinstance(request.auth, APIKey) else None,
        )
        return _turn_response(self, request, turn)


class MessageTreeApi(APIView):
    """``GET``: every message of a conversation, all branches, and which of them form the active path."""

    @extend_schema(
        summary="Get a conversation's message tree (every branch)",
        responses=inline_serializer(
            "MessageTree",
            fields={
                "active_leaf": serializers.UUIDField(allow_null=True, help_text="The last message of the active path."),
                "active_path": serializers.ListField(
                    child=serializers.UUIDField(), help_text="The ids of the active path, first message first."
                ),
                "messages": MessageNodeOutputSerializer(many=True, help_text="Every message, oldest first."),
            },
        ),
        examples=[
            OpenApiExample(
                "tree",
                value={
                    "active_leaf": ANSWER_NODE_EXAMPLE["id"],
                    "active_path": [USER_NODE_EXAMPLE["id"], ANSWER_NODE_EXAMPLE["id"]],
                    "messages": [
                        USER_NODE_EXAMPLE,
                        {**ANSWER_NODE_EXAMPLE, "id": ANSWER_NODE_EXAMPLE["sibling_ids"][0], "sibling_index": 0},
                        ANSWER_NODE_EXAMPLE,
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        services.conversation_orphans_finalize(conversation=conversation)
        messages, path = message_tree_nodes(conversation=conversation)
        return Response(
            {
                "active_leaf": str(path[-1]) if path else None,
                "active_path": [str(pk) for pk in path],
                "messages": MessageNodeOutputSerializer(messages, many=True).data,
            }
        )


class MessageEditApi(sse.EventStreamMixin, APIView):
    """``POST {"content", "model"?, "params"?, "client_id"?, "cache"?}``: ask one of your messages again,
    changed, as a new branch, and wait for its answer.

    The edited message and what followed it are kept on their own branch; the new message is its
    sibling (same ``parent_id``) and the new branch is the one shown. Answers as sending does:
    201 ``{"user_message", "assistant_message"}``, or with ``Accept: text/event-stream`` 200 and the
    events. 400 ``not_editable`` for an answer (regenerate it instead).
    """

    renderer_classes = [JSONRenderer, sse.EventStreamRenderer]
    schema = sse.EventStreamAutoSchema()

    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(trim_whitespace=False, allow_blank=True)
        model = serializers.SlugField(required=False, allow_blank=True)
        params = serializers.DictField(required=False)
        client_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
        cache = serializers.BooleanField(required=False, default=True)

    @extend_schema(
        summary="Edit a message: a new branch from it (JSON), or stream its answer (SSE)",
        description=(
            "As sending a message, from the edited message's place: the events with "
            "`Accept: text/event-stream` are `message.created` (the new message, with its `parent_id`), "
            "`generation.started`, `token`..., `generation.completed`."
        ),
        request=InputSerializer,
        responses={
            (201, "application/json"): MESSAGE_SEND_RESULT,
            (200, sse.MEDIA_TYPE): SEND_STREAM_RESPONSE,
            400: OpenApiResponse(ErrorSerializer, description="Not a user message (`not_editable`), or empty."),
            409: GENERATION_IN_PROGRESS,
            413: OpenApiResponse(ErrorSerializer, description="The message is too long (`message_too_long`)."),
            503: OpenApiResponse(
                ErrorSerializer, description="The model is busy (`model_busy`, with `Retry-After`) or unavailable."
            ),
        },
        examples=[
            OpenApiExample("reworded", value={"content": "What is the capital of Italy?"}, request_only=True),
            OpenApiExample(
                "answered",
                value={"user_message": USER_MESSAGE_EXAMPLE, "assistant_message": ANSWER_EXAMPLE},
                response_only=True,
                status_codes=[201],
                media_type="application/json",
            ),
            _error_example(400, "not_editable", "Only your own messages can be edited; regenerate an answer instead."),
        ],
    )
    def post(self, request, conversation_id, message_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        message = message_get(conversation=conversation, message_id=message_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        turn = services.message_edit(
            conversation=conversation,
            message=message,
            content=data["content"],
            client_id=data["client_id"],
            model_slug=data.get("model") or None,
            params=data.get("params"),
            cache=data["cache"],
            api_key=request.auth if isinstance(request.auth, APIKey) else None,
        )
        return _turn_response(self, request, turn)


class MessageActivateApi(APIView):
    """``POST``: show the branch through this message (a "‹ 2 / 3 ›" switch); return the new active path.

    The path follows the newest message under it. Nothing is created or deleted; the next message
    sent continues this branch. Open pages of the conversation get a ``branch.switched`` event.
    409 ``generation_in_progress`` while an answer is being generated.
    """

    @extend_schema(
        summary="Switch to the branch through a message",
        request=None,
        responses={
            200: MessageNodeOutputSerializer(many=True),
            409: GENERATION_IN_PROGRESS,
        },
        examples=[OpenApiExample("path", value=[USER_NODE_EXAMPLE, ANSWER_NODE_EXAMPLE], response_only=True)],
    )
    def post(self, request, conversation_id, message_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        message = message_get(conversation=conversation, message_id=message_id)
        leaf = services.conversation_switch_branch(conversation=conversation, message=message)
        async_to_sync(turns.send_event)(conversation.pk, turns.branch_switched_event(leaf=leaf, message=message))
        return Response(MessageNodeOutputSerializer(message_path(conversation=conversation), many=True).data)


class ConversationDetailApi(APIView):
    """``GET``: one conversation. ``PATCH {"title"?, "archived"?}``: rename, archive or unarchive.

    ``DELETE``: delete it with its messages (204; 409 while an answer is being generated).
    """

    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True)
        archived = serializers.BooleanField(required=False)

    @extend_schema(
        summary="Get a conversation",
        responses=ConversationOutputSerializer,
        examples=[OpenApiExample("conversation", value=CONVERSATION_EXAMPLE, response_only=True)],
    )
    def get(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(
        summary="Rename or archive a conversation",
        request=InputSerializer,
        responses=ConversationOutputSerializer,
        examples=[
            OpenApiExample("rename and archive", value={"title": "Lyon, May 2026", "archived": True}, request_only=True)
        ],
    )
    def patch(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_update(conversation=conversation, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(
        summary="Delete a conversation",
        responses={204: None, 409: GENERATION_IN_PROGRESS},
        examples=[
            _error_example(
                409,
                "generation_in_progress",
                "An answer is still being generated in this conversation; stop it or wait.",
            )
        ],
    )
    def delete(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        services.conversation_delete(conversation=conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationStopApi(APIView):
    """``POST``: ask the running generation of a conversation to stop; its partial text is kept.

    202 ``{"stopping": true}``: the answer is finalised as ``cancelled`` shortly after (whichever
    process generates it). 409 ``no_generation`` when nothing is being generated; an answer whose
    process died is finalised ``error`` on the way (see :func:`chat.services.conversation_orphans_finalize`).
    """

    @extend_schema(
        summary="Stop the running generation",
        request=None,
        responses={
            202: inline_serializer("GenerationStopResult", fields={"stopping": serializers.BooleanField()}),
            409: OpenApiResponse(ErrorSerializer, description="Nothing is being generated (`no_generation`)."),
            503: OpenApiResponse(ErrorSerializer, description="Redis is unreachable (`service_unavailable`)."),
        },
        examples=[OpenApiExample("stopping", value={"stopping": True}, response_only=True, status_codes=[202])],
    )
    def post(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        services.conversation_orphans_finalize(conversation=conversation)
        if generation_active(conversation=conversation) is None:
            raise ParleyError(
                "Nothing is being generated in this conversation.",
                code="no_generation",
                status_code=status.HTTP_409_CONFLICT,
            )
        try:
            async_to_sync(turns.generation_stop)(conversation.pk)
        except (RedisError, OSError) as exc:  # the stop travels over the channel layer (Redis)
            raise ParleyError(
                "The stop could not be delivered right now; try again shortly.",
                code="service_unavailable",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            ) from exc
        return Response({"stopping": True}, status=status.HTTP_202_ACCEPTED)


class MessageRegenerateApi(sse.EventStreamMixin, APIView):
    """``POST {"model"?, "params"?, "cache"?}``: answer a question again and wait for the new answer.

    Any answer to a question can be regenerated (400 ``not_regenerable`` for other messages). The
    old answer is kept, with what followed it, on its own branch: the new one is its sibling, and
    its branch is the one shown and sent to the model. ``cache`` defaults to false. Returns the new answer (201), which
    also streams to the conversation's open WebSockets; with ``Accept: text/event-stream``, 200 and
    its events as they happen (chat.sse), from ``generation.started`` to ``generation.completed``.
    """

    renderer_classes = [JSONRenderer, sse.EventStreamRenderer]
    schema = sse.EventStreamAutoSchema()

    class InputSerializer(serializers.Serializer):
        model = serializers.SlugField(required=False, allow_blank=True)
        params = serializers.DictField(required=False)
        cache = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        summary="Regenerate an answer as a new branch (JSON), or stream it (SSE)",
        description=(
            "With `Accept: text/event-stream`: 200 and the events of the new answer as they happen, "
            "as for sending a message (without `message.created`)."
        ),
        request=InputSerializer,
        responses={
            (201, "application/json"): MessageOutputSerializer,
            (200, sse.MEDIA_TYPE): REGENERATE_STREAM_RESPONSE,
            409: GENERATION_IN_PROGRESS,
            503: OpenApiResponse(
                ErrorSerializer, description="The model is busy (`model_busy`, with `Retry-After`) or unavailable."
            ),
        },
        examples=[
            OpenApiExample("warmer", value={"params": {"temperature": 0.8, "max_tokens": 128}}, request_only=True),
            OpenApiExample(
                "answer", value=ANSWER_EXAMPLE, response_only=True, status_codes=[201], media_type="application/json"
            ),
        ],
    )
    def post(self, request, conversation_id, message_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        message = message_get(conversation=conversation, message_id=message_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        turn = services.message_regenerate(
            conversation=conversation,
            message=message,
            model_slug=data.get("model") or None,
            params=data.get("params"),
            cache=data["cache"],
            api_key=request.auth if isinstance(request.auth, APIKey) else None,
        )
        if self.wants_event_stream(request):
            return event_stream_response(sse.turn_events(turn))
        assistant_message = async_to_sync(turns.turn_execute)(turn)
        _raise_if_not_taken(assistant_message)
        return Response(MessageOutputSerializer(assistant_message).data, status=status.HTTP_201_CREATED)


class MessageFeedbackApi(APIView):
    """``POST {"rating": "up"|"down", "comment"?}``: rate an assistant answer.

    One feedback per user and answer: 201 the first time, 200 when it replaces the earlier one
    (rating and comment both). 400 ``not_an_answer`` for other messages.
    """

    class InputSerializer(serializers.Serializer):
        rating = serializers.ChoiceField(choices=Rating.choices)
        comment = serializers.CharField(
            max_length=services.FEEDBACK_COMMENT_LENGTH, required=False, allow_blank=True, default=""
        )

    @extend_schema(
        summary="Rate an answer",
        request=InputSerializer,
        responses={201: FeedbackOutputSerializer, 200: FeedbackOutputSerializer},
        examples=[
            OpenApiExample(
                "thumbs down", value={"rating": "down", "comment": "Lyon is not the capital."}, request_only=True
            )
        ],
    )
    def post(self, request, conversation_id, message_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        message = message_get(conversation=conversation, message_id=message_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        feedback, created = services.feedback_set(message=message, user=request.user, **serializer.validated_data)
        return Response(
            FeedbackOutputSerializer(feedback).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


SHARE_EXAMPLE = {
    "id": "9c2e4b1a-7d3f-4e5a-8b6c-0d1e2f3a4b5c",
    "conversation": CONVERSATION_EXAMPLE["id"],
    "title": "Trip to Lyon",
    "url": "https://parley.example/s/Xq3v9kP0bT2mW7yZr5LcN8aH1sJd4FgE/",
    "active": True,
    "message_count": 4,
    "created_at": "2026-01-05T09:40:00Z",
    "expires_at": "2026-01-12T09:40:00Z",
    "revoked_at": None,
}


class ConversationShareApi(APIView):
    """``POST {"expires_in_days"?}``: a read-only link to a snapshot of the conversation as it is now (201).

    Later messages, edits and deletions do not change what the link shows. ``expires_in_days``:
    1 to 365; absent or null: the link never expires (until revoked).
    """

    class InputSerializer(serializers.Serializer):
        expires_in_days = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=1, max_value=services.SHARE_MAX_DAYS
        )

    @extend_schema(
        summary="Share a snapshot of a conversation",
        request=InputSerializer,
        responses={
            201: ShareOutputSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="No finished message to share yet (`nothing_to_share`), or a bad `expires_in_days`.",
            ),
        },
        examples=[
            OpenApiExample("a week", value={"expires_in_days": 7}, request_only=True),
            OpenApiExample("share", value=SHARE_EXAMPLE, response_only=True, status_codes=[201]),
        ],
    )
    def post(self, request, conversation_id):
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        share = services.share_create(conversation=conversation, **serializer.validated_data)
        return Response(ShareOutputSerializer(share, context={"request": request}).data, status=status.HTTP_201_CREATED)


class ShareListApi(APIView):
    """``GET``: the user's share links, newest first (active, expired and revoked), paginated."""

    pagination_class = ConversationPagination

    @extend_schema(
        summary="List your share links",
        responses=ShareOutputSerializer(many=True),
        examples=[OpenApiExample("shares", value=SHARE_EXAMPLE, response_only=True)],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(share_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(
            ShareOutputSerializer(page, many=True, context={"request": request}).data
        )


class ShareDetailApi(APIView):
    """``GET``: one of the user's share links. ``DELETE``: revoke it (204): the link answers 404 from then on.

    A revoked link stays listed (with ``revoked_at``); revoking it again is a no-op.
    """

    @extend_schema(
        summary="Get a share link",
        responses=ShareOutputSerializer,
        examples=[OpenApiExample("share", value=SHARE_EXAMPLE, response_only=True)],
    )
    def get(self, request, share_id):
        share = share_get(user=request.user, share_id=share_id)
        return Response(ShareOutputSerializer(share, context={"request": request}).data)

    @extend_schema(summary="Revoke a share link", responses={204: None})
    def delete(self, request, share_id):
        services.share_revoke(share=share_get(user=request.user, share_id=share_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


PROMPT_EXAMPLE = {
    "id": "3f1e2d4c-5b6a-4789-8a0b-1c2d3e4f5a6b",
    "title": "Translate",
    "text": "Translate into {{language}}:\n\n{{text}}",
    "variables": ["language", "text"],
    "visibility": "groups",
    "groups": ["support"],
    "owner": "alice",
    "mine": True,
    "created_at": "2026-01-05T09:00:00Z",
    "updated_at": "2026-01-05T09:00:00Z",
}


class PromptInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=120)
    text = serializers.CharField(max_length=services.PROMPT_TEXT_MAX_CHARS, help_text="May hold `{{variables}}`.")
    visibility = serializers.ChoiceField(choices=PromptVisibility.choices, default=PromptVisibility.PRIVATE)
    groups = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Group.objects.all(),
        many=True,
        required=False,
        help_text="With visibility `groups`: names of groups you are in.",
    )


class PromptListApi(APIView):
    """``GET ?q=``: the library prompts you may use (yours and those shared with you), by title.

    ``POST {"title", "text", "visibility"?, "groups"?}``: add a prompt to your library (201).
    """

    class FilterSerializer(serializers.Serializer):
        q = serializers.CharField(required=False, default="", allow_blank=True, max_length=120)

    @extend_schema(
        summary="List the prompts you may use",
        parameters=[FilterSerializer],
        responses=PromptOutputSerializer(many=True),
        examples=[OpenApiExample("prompts", value=[PROMPT_EXAMPLE], response_only=True)],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        prompts = prompt_list(user=request.user, query=filters.validated_data["q"])
        return Response(PromptOutputSerializer(prompts, many=True, context={"request": request}).data)

    @extend_schema(
        summary="Add a prompt to your library",
        request=PromptInputSerializer,
        responses={201: PromptOutputSerializer},
        examples=[
            OpenApiExample(
                "translate",
                value={"title": "Translate", "text": "Translate into {{language}}:\n\n{{text}}"},
                request_only=True,
            )
        ],
    )
    def post(self, request):
        serializer = PromptInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        prompt = services.prompt_create(owner=request.user, **serializer.validated_data)
        return Response(
            PromptOutputSerializer(prompt, context={"request": request}).data, status=status.HTTP_201_CREATED
        )


class PromptDetailApi(APIView):
    """``GET``: a prompt you may use. ``PATCH``/``DELETE``: change or delete one of yours (another's: 404)."""

    @extend_schema(
        summary="Get a prompt",
        responses=PromptOutputSerializer,
        examples=[OpenApiExample("prompt", value=PROMPT_EXAMPLE, response_only=True)],
    )
    def get(self, request, prompt_id):
        prompt = prompt_get(user=request.user, prompt_id=prompt_id)
        return Response(PromptOutputSerializer(prompt, context={"request": request}).data)

    @extend_schema(
        summary="Change one of your prompts",
        request=PromptInputSerializer(partial=True),
        responses=PromptOutputSerializer,
        examples=[OpenApiExample("share", value={"visibility": "everyone"}, request_only=True)],
    )
    def patch(self, request, prompt_id):
        prompt = prompt_get(user=request.user, prompt_id=prompt_id, owned=True)
        serializer = PromptInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        prompt = services.prompt_update(prompt=prompt, **serializer.validated_data)
        return Response(PromptOutputSerializer(prompt, context={"request": request}).data)

    @extend_schema(summary="Delete one of your prompts", responses={204: None})
    def delete(self, request, prompt_id):
        services.prompt_delete(prompt=prompt_get(user=request.user, prompt_id=prompt_id, owned=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class CustomInstructionsApi(APIView):
    """``GET``: your custom instructions. ``PATCH {"about_me"?, "how_to_answer"?, "enabled"?}``: change them.

    While ``enabled``, the non-empty ones are added to the system prompt of your chat turns.
    """

    class InputSerializer(serializers.Serializer):
        about_me = serializers.CharField(
            required=False, allow_blank=True, max_length=services.CUSTOM_INSTRUCTIONS_MAX_CHARS
        )
        how_to_answer = serializers.CharField(
            required=False, allow_blank=True, max_length=services.CUSTOM_INSTRUCTIONS_MAX_CHARS
        )
        enabled = serializers.BooleanField(required=False)

    @extend_schema(summary="Get your custom instructions", responses=CustomInstructionsOutputSerializer)
    def get(self, request):
        return Response(CustomInstructionsOutputSerializer(custom_instructions_get(user=request.user)).data)

    @extend_schema(
        summary="Change your custom instructions",
        request=InputSerializer,
        responses=CustomInstructionsOutputSerializer,
        examples=[
            OpenApiExample(
                "instructions",
                value={"about_me": "I am a nurse in Lyon.", "how_to_answer": "Briefly, in French."},
                request_only=True,
            )
        ],
    )
    def patch(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        instructions = services.custom_instructions_set(user=request.user, **serializer.validated_data)
        return Response(CustomInstructionsOutputSerializer(instructions).data)


class ConversationExportApi(APIView):
    """``GET ?id=&id=``: a zip of the user's conversations (all of them, archived too, or those of the
    ``id`` parameters): ``conversations.json`` (Parley's export format, which ``POST /imports/`` reads
    back) and one Markdown file per conversation. Each conversation exported is audited
    (``conversation.export``)."""

    class FilterSerializer(serializers.Serializer):
        id = serializers.ListField(
            child=serializers.UUIDField(), required=False, default=list, help_text="Only these conversations."
        )

    @extend_schema(
        summary="Export conversations as a zip",
        parameters=[FilterSerializer],
        responses={(200, "application/zip"): OpenApiResponse(description="The zip file.")},
    )
    def get(self, request):
        filters = self.FilterSerializer(data={"id": request.query_params.getlist("id")})
        filters.is_valid(raise_exception=True)
        conversations = conversation_export_list(user=request.user, ids=filters.validated_data["id"])
        out = tempfile.TemporaryFile()  # closed by FileResponse once sent
        services.conversations_export_zip(conversations=conversations, out=out)
        out.seek(0)
        name = f"parley-export-{timezone.now():%Y-%m-%d}.zip"
        return FileResponse(out, as_attachment=True, filename=name, content_type="application/zip")


IMPORT_JOB_EXAMPLE = {
    "id": "8c0d6b1a-2e3f-4a5b-9c7d-0e1f2a3b4c5d",
    "status": "done",
    "source": "chatgpt",
    "filename": "chatgpt-export.zip",
    "size_bytes": 48213,
    "total": 2,
    "processed": 2,
    "imported": 1,
    "skipped": 1,
    "error": "",
    "report": [
        {
            "title": "Trip to Lyon",
            "status": "imported",
            "reason": "1 system, hidden, tool, empty or non-text parts left out.",
            "messages": 6,
            "conversation": CONVERSATION_EXAMPLE["id"],
        },
        {
            "title": "Empty chat",
            "status": "skipped",
            "reason": "No text messages (only system, tool, hidden or non-text content, or none at all).",
            "messages": 0,
            "conversation": None,
        },
    ],
    "created_at": "2026-01-05T09:30:00Z",
    "started_at": "2026-01-05T09:30:01Z",
    "finished_at": "2026-01-05T09:30:02Z",
}

# Room for the multipart framing around the file in a request's Content-Length (bytes).
MULTIPART_SLACK = 64 * 1024


def import_upload_refuse_early(request) -> None:
    """Raise 413 ``file_too_large`` when a request declares a body too big for an import, before it is read."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.IMPORT_MAX_BYTES + MULTIPART_SLACK:
        raise services.import_too_large(size=declared)


class ImportJobListApi(APIView):
    """``GET``: the user's import jobs, newest first, paginated.

    ``POST`` (multipart, ``file``): import ChatGPT's export (``conversations.json`` or the zip
    ChatGPT emails) or Parley's own (``GET /conversations/export/``): 202 with the job, ``queued``;
    a Celery worker imports it. Poll ``GET /imports/<id>/`` for its progress and report. A file
    over ``IMPORT_MAX_BYTES`` is refused with 413 before it is read (by its Content-Length).
    """

    pagination_class = ConversationPagination

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True, help_text="conversations.json, or a zip holding it.")

    def initial(self, request, *args, **kwargs):
        if request.method == "POST":  # before authentication, which may read the body (CSRF)
            import_upload_refuse_early(request)
        super().initial(request, *args, **kwargs)

    @extend_schema(
        summary="List your import jobs",
        responses=ImportJobOutputSerializer(many=True),
        examples=[OpenApiExample("jobs", value=IMPORT_JOB_EXAMPLE, response_only=True)],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(import_job_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(ImportJobOutputSerializer(page, many=True).data)

    @extend_schema(
        summary="Import conversations (ChatGPT or Parley export)",
        request={"multipart/form-data": InputSerializer},
        responses={
            202: ImportJobOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="No file, or an empty one (`empty_file`)."),
            413: OpenApiResponse(ErrorSerializer, description="Over `IMPORT_MAX_BYTES` (`file_too_large`)."),
        },
        examples=[
            OpenApiExample(
                "queued",
                value={
                    **IMPORT_JOB_EXAMPLE,
                    "status": "queued",
                    "total": 0,
                    "processed": 0,
                    "imported": 0,
                    "skipped": 0,
                    "report": [],
                    "started_at": None,
                    "finished_at": None,
                },
                response_only=True,
                status_codes=[202],
            ),
            _error_example(
                413, "file_too_large", "The file is 60.0 MiB; the import limit is 50.0 MiB (IMPORT_MAX_BYTES)."
            ),
        ],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        if upload.size > settings.IMPORT_MAX_BYTES:  # refuse before reading it into memory
            raise services.import_too_large(size=upload.size)
        job = services.import_job_create(owner=request.user, data=upload.read(), filename=upload.name or "")
        return Response(ImportJobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ImportJobDetailApi(APIView):
    """``GET``: one of the user's import jobs: status, progress counts and the per-conversation report.

    Another user's job is a 404, as a missing one is.
    """

    @extend_schema(
        summary="Get an import job",
        responses={200: ImportJobOutputSerializer, 404: ErrorSerializer},
        examples=[OpenApiExample("job", value=IMPORT_JOB_EXAMPLE, response_only=True)],
    )
    def get(self, request, import_job_id):
        return Response(ImportJobOutputSerializer(import_job_get(user=request.user, job_id=import_job_id)).data)
