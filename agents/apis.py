"""Knowledge-base REST API under /api/v1/documents/: upload, list, read and delete one's own documents."""

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
from .models import Document
from .selectors import document_get, document_list

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
