"""Knowledge-base and memory REST API: one's own documents (/api/v1/documents/) and memories (/api/v1/memories/)."""

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ParleyError
from core.schema import ErrorSerializer

from . import services
from .models import Document, Memory
from .selectors import document_get, document_list, memory_get, memory_list

DOCUMENT_EXAMPLE = {
    "id": "0b7c1f5e-2d4a-4f3b-9a61-7e2c9d1b3a55",
    "title": "Handbook",
    "filename": "handbook.pdf",
    "content_type": "application/pdf",
    "size_bytes": 183422,
    "status": "ready",
    "failure_reason": "",
    "chunk_count": 42,
    "created_at": "2026-01-05T09:30:00Z",
    "updated_at": "2026-01-05T09:30:07Z",
    "ingested_at": "2026-01-05T09:30:07Z",
}


class DocumentOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "filename",
            "content_type",
            "size_bytes",
            "status",
            "failure_reason",
            "chunk_count",
            "created_at",
            "updated_at",
            "ingested_at",
        ]


class DocumentPagination(PageNumberPagination):
    """``?page=`` (from 1) and ``?page_size=`` (default 50, at most 200)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class DocumentListApi(APIView):
    """``GET``: the user's documents, newest first. ``POST`` (multipart ``file``, ``title``?): upload one.

    An upload is stored at once (``pending``, 201) and ingested in the background; its ``status``
    then goes ``processing`` → ``ready`` or ``failed`` (with ``failure_reason``). Progress events go
    to the channel-layer group ``user.<id>.documents`` (README, "Knowledge base").
    """

    parser_classes = [MultiPartParser, FormParser]
    pagination_class = DocumentPagination

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True, help_text="A .txt, .md, .html or .pdf file.")
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(summary="List your documents", responses=DocumentOutputSerializer(many=True))
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(document_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(DocumentOutputSerializer(page, many=True).data)

    @extend_schema(
        summary="Upload a document to your knowledge base",
        request={"multipart/form-data": InputSerializer},
        responses={
            201: DocumentOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="No file, or an empty one (`empty_file`)."),
            413: OpenApiResponse(ErrorSerializer, description="Over `KB_MAX_UPLOAD_MB` (`file_too_large`)."),
            415: OpenApiResponse(
                ErrorSerializer, description="Not text, Markdown, HTML or PDF (`unsupported_media_type`)."
            ),
        },
        examples=[OpenApiExample("uploaded", value={**DOCUMENT_EXAMPLE, "status": "pending"}, response_only=True)],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        limit = settings.KB_MAX_UPLOAD_MB * 1024 * 1024
        if upload.size > limit:  # refuse before reading it into memory
            raise ParleyError(
                f"The file is {upload.size / 1048576:.1f} MiB; the limit is {settings.KB_MAX_UPLOAD_MB} MiB.",
                code="file_too_large",
                status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        document = services.document_create(
            owner=request.user,
            data=upload.read(),
            filename=upload.name or "",
            title=serializer.validated_data["title"],
        )
        return Response(DocumentOutputSerializer(document).data, status=status.HTTP_201_CREATED)


class DocumentDetailApi(APIView):
    """``GET``: one of the user's documents. ``DELETE``: delete it, its passages and its file (204).

    Another user's document is a 404, as a missing one is.
    """

    @extend_schema(summary="Get a document", responses={200: DocumentOutputSerializer, 404: ErrorSerializer})
    def get(self, request, document_id):
        return Response(DocumentOutputSerializer(document_get(user=request.user, document_id=document_id)).data)

    @extend_schema(summary="Delete a document", responses={204: None, 404: ErrorSerializer})
    def delete(self, request, document_id):
        services.document_delete(document=document_get(user=request.user, document_id=document_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


MEMORY_EXAMPLE = {
    "id": "5d1c8a2e-7b3f-4c19-a0d4-9e6f2b8c1a77",
    "kind": "note",
    "content": "I prefer metric units.",
    "conversation_id": None,
    "created_at": "2026-01-05T09:30:00Z",
}


class MemoryOutputSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField(
        allow_null=True, read_only=True, help_text="The conversation it comes from; null for a note."
    )

    class Meta:
        model = Memory
        fields = ["id", "kind", "content", "conversation_id", "created_at"]
        extra_kwargs = {
            "kind": {"help_text": "`exchange` (a question and its answer), `summary` (of a conversation), `note`."}
        }


class MemoryPagination(DocumentPagination):
    """``?page=`` (from 1) and ``?page_size=`` (default 50, at most 200)."""


class MemoryListApi(APIView):
    """``GET``: the user's memories, newest first. ``POST {"content"}``: add a note. ``DELETE``: delete them all.

    Memories are recalled into the user's conversations only while ``memory_enabled`` is on
    (``PATCH /api/v1/me/``); a note may be added while it is off, and is recalled once it is on.
    """

    pagination_class = MemoryPagination

    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(
            max_length=services.MEMORY_NOTE_MAX_CHARS,
            help_text="What to remember, in your own words (surrounding whitespace is removed).",
        )

    class DeleteOutputSerializer(serializers.Serializer):
        deleted = serializers.IntegerField(help_text="Memories deleted.")

    @extend_schema(summary="List your memories", responses=MemoryOutputSerializer(many=True))
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(memory_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(MemoryOutputSerializer(page, many=True).data)

    @extend_schema(
        summary="Add a memory in your own words",
        request=InputSerializer,
        responses={201: MemoryOutputSerializer},
        examples=[
            OpenApiExample("note", value={"content": "I prefer metric units."}, request_only=True),
            OpenApiExample("stored", value=MEMORY_EXAMPLE, response_only=True, status_codes=["201"]),
        ],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        memory = services.memory_note_create(owner=request.user, content=serializer.validated_data["content"])
        return Response(MemoryOutputSerializer(memory).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="memories_destroy_all",
        summary="Delete all your memories",
        responses={200: DeleteOutputSerializer},
        examples=[OpenApiExample("deleted", value={"deleted": 12}, response_only=True)],
    )
    def delete(self, request):
        deleted = services.memory_delete_all(owner=request.user)
        return Response(self.DeleteOutputSerializer({"deleted": deleted}).data)


class MemoryDetailApi(APIView):
    """``GET``: one of the user's memories. ``DELETE``: delete it (204); it is never recalled again.

    Another user's memory is a 404, as a missing one is.
    """

    @extend_schema(summary="Get a memory", responses={200: MemoryOutputSerializer, 404: ErrorSerializer})
    def get(self, request, memory_id):
        return Response(MemoryOutputSerializer(memory_get(user=request.user, memory_id=memory_id)).data)

    @extend_schema(summary="Delete a memory", responses={204: None, 404: ErrorSerializer})
    def delete(self, request, memory_id):
        services.memory_delete(memory=memory_get(user=request.user, memory_id=memory_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
