"""Inference REST API under /api/v1/."""

from dataclasses import asdict

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import APIKey
from core.errors import ParleyError
from core.schema import ErrorSerializer

from . import cache
from .selectors import model_config_get, model_config_list
from .services import cache_flush


class ModelListApi(APIView):
    """``GET``: the enabled models a user can pick (``"model": slug`` in a message), default first."""

    class OutputSerializer(serializers.Serializer):
        slug = serializers.SlugField()
        display_name = serializers.CharField()
        provider = serializers.CharField()
        context_window = serializers.IntegerField()
        is_default = serializers.BooleanField()

    @extend_schema(
        summary="List models",
        responses=OutputSerializer(many=True),
        examples=[
            OpenApiExample(
                "models",
                value=[
                    {
                        "slug": "smollm2-135m",
                        "display_name": "SmolLM2 135M Instruct (local)",
                        "provider": "llama_cpp",
                        "context_window": 4096,
                        "is_default": True,
                    }
                ],
            )
        ],
    )
    def get(self, request):
        # The models this user (and the API key the request came with, if any) may use.
        api_key = request.auth if isinstance(request.auth, APIKey) else None
        configs = list(model_config_list(user=request.user, api_key=api_key))
        default_slug = model_config_get(user=request.user, api_key=api_key).slug if configs else None
        rows = [
            {
                "slug": c.slug,
                "display_name": c.display_name,
                "provider": c.provider,
                "context_window": c.context_window,
                "is_default": c.slug == default_slug,
            }
            for c in sorted(configs, key=lambda c: (c.slug != default_slug, c.display_name))
        ]
        return Response(self.OutputSerializer(rows, many=True).data)


CACHE_HEALTH = inline_serializer(
    "CacheHealth",
    fields={
        "status": serializers.ChoiceField(choices=["ok", "degraded"]),
        "ping_ms": serializers.FloatField(allow_null=True),
        "used_memory_bytes": serializers.IntegerField(allow_null=True),
        "detail": serializers.CharField(allow_blank=True),
    },
)


class CacheHealthApi(APIView):
    """``GET`` (staff): ``{"status": "ok"|"degraded", "ping_ms", "used_memory_bytes", "detail"}``."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Cache health (staff)",
        responses=CACHE_HEALTH,
        examples=[
            OpenApiExample("ok", value={"status": "ok", "ping_ms": 0.31, "used_memory_bytes": 1048576, "detail": ""})
        ],
    )
    def get(self, request):
        return Response(asdict(cache.health()))


class CacheStatsApi(APIView):
    """``GET`` (staff): ``{"health": {...}, "layers": {layer: {...}}}``.

    Each layer: ``hits``, ``misses``, ``sets``, ``errors``, ``hit_ratio``, ``keys``, ``version``.
    """

    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Cache statistics per layer (staff)",
        responses=inline_serializer(
            "CacheStats",
            fields={
                "health": CACHE_HEALTH,
                "layers": serializers.DictField(
                    child=inline_serializer(
                        "CacheLayerStats",
                        fields={
                            "layer": serializers.CharField(),
                            "hits": serializers.IntegerField(),
                            "misses": serializers.IntegerField(),
                            "sets": serializers.IntegerField(),
                            "errors": serializers.IntegerField(),
                            "hit_ratio": serializers.FloatField(allow_null=True),
                            "keys": serializers.IntegerField(allow_null=True),
                            "version": serializers.IntegerField(),
                        },
                    )
                ),
            },
        ),
    )
    def get(self, request):
        health, layers = cache.report()
        return Response({"health": asdict(health), "layers": {row["layer"]: row for row in layers}})


class CacheFlushApi(APIView):
    """``DELETE`` (staff) ``/cache/<layer>/`` with layer ``llm|tool|intent|semantic|all``: O(1) flush.

    Returns ``{"flushed": {layer: new version}}``; 404 for an unknown layer; 503 when Redis is down.
    """

    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Flush a cache layer (staff)",
        parameters=[OpenApiParameter("layer", str, OpenApiParameter.PATH, enum=[*cache.LAYERS, "all"])],
        responses={
            200: inline_serializer(
                "CacheFlushResult", fields={"flushed": serializers.DictField(child=serializers.IntegerField())}
            ),
            503: OpenApiResponse(ErrorSerializer, description="Redis is unavailable (`cache_unavailable`)."),
        },
        examples=[OpenApiExample("flushed", value={"flushed": {"llm": 3}})],
    )
    def delete(self, request, layer):
        names = list(cache.LAYERS) if layer == "all" else [layer]
        if not set(names) <= set(cache.LAYERS):
            raise ParleyError(
                f"Unknown cache layer {layer!r}; use one of {', '.join(cache.LAYERS)} or all.",
                code="not_found",
                status_code=status.HTTP_404_NOT_FOUND,
            )
        try:
            versions = cache_flush(names=names)
        except Exception as exc:
            raise ParleyError(
                f"Redis is unavailable: {exc}",
                code="cache_unavailable",
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            ) from exc
        return Response({"flushed": versions})
