"""Staff REST API for operators: ``GET /api/v1/admin/metrics/`` (the admin Metrics page's figures)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from . import metrics


class MetricsPercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class MetricsTopUserSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField(help_text="Prompt + completion tokens in the window.")


class MetricsBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    tokens = serializers.IntegerField()


class MetricsCacheLayerSerializer(serializers.Serializer):
    layer = serializers.CharField()
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_ratio = serializers.FloatField(allow_null=True, help_text="hits / (hits + misses); null before any lookup.")


class MetricsCacheSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded"])
    layers = MetricsCacheLayerSerializer(many=True, help_text="Counts since the layer's stats were last reset.")


class AdminMetricsApi(APIView):
    """``GET ?window=1h|24h|7d`` (staff): requests, errors, tokens, tokens/s, TTFT and latency
    percentiles, top users and a per-bucket series over the window, plus live cache hit ratios per
    layer, open WebSockets and Celery queue depth. The same figures as /admin/metrics/."""

    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        window = serializers.ChoiceField(choices=list(metrics.WINDOWS), default=metrics.DEFAULT_WINDOW)

    class OutputSerializer(serializers.Serializer):
        window = serializers.ChoiceField(choices=list(metrics.WINDOWS))
        since = serializers.DateTimeField()
        until = serializers.DateTimeField()
        bucket_seconds = serializers.IntegerField(help_text="Width of each `series` bucket, in seconds.")
        requests = serializers.IntegerField(help_text="Model requests (chat turns and /v1 calls).")
        errors = serializers.IntegerField()
        cancelled = serializers.IntegerField()
        cached_requests = serializers.IntegerField(help_text="Requests answered from a response cache.")
        error_rate = serializers.FloatField(allow_null=True, help_text="errors / requests (0..1).")
        prompt_tokens = serializers.IntegerField()
        completion_tokens = serializers.IntegerField()
        cost = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=False, help_text="USD.")
        tokens_per_s = serializers.FloatField(
            allow_null=True, help_text="Completion tokens per second of generation (after the first token)."
        )
        ttft_ms = MetricsPercentilesSerializer(help_text="Time to first token, milliseconds.")
        latency_ms = MetricsPercentilesSerializer(help_text="Whole request, milliseconds.")
        top_users = MetricsTopUserSerializer(many=True)
        series = MetricsBucketSerializer(many=True)
        cache = MetricsCacheSerializer()
        ws_connections = serializers.IntegerField(help_text="Open chat WebSockets, all processes.")
        celery_queue_depth = serializers.IntegerField(allow_null=True, help_text="Tasks waiting; null: broker down.")

    @extend_schema(
        summary="Operations metrics (staff)",
        parameters=[
            OpenApiParameter("window", str, enum=list(metrics.WINDOWS), default=metrics.DEFAULT_WINDOW),
        ],
        responses=OutputSerializer,
    )
    def get(self, request):
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = metrics.operations_metrics(window=params.validated_data["window"])
        return Response(self.OutputSerializer(data).data)
