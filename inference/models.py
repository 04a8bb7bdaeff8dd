from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from pgvector.django import HnswIndex, VectorField


class Provider(models.TextChoices):
    LLAMA_CPP = "llama_cpp", "llama.cpp (local GGUF)"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"


class RoutingStrategy(models.TextChoices):
    LEAST_BUSY = "least_busy", "Least busy (fewest requests in flight)"
    WEIGHTED_RANDOM = "weighted_random", "Weighted random (by each deployment's weight)"
    LOWEST_LATENCY = "lowest_latency", "Lowest recent time to first token"


class CachePolicy(models.TextChoices):
    DETERMINISTIC = "deterministic", "Only deterministic requests (temperature 0)"
    ALWAYS = "always", "Every request (answers repeat even at temperature > 0)"
    NEVER = "never", "Never"


class TextOnlyImages(models.TextChoices):
    REFUSE = "refuse", "Refuse the request (400 model_not_vision_capable)"
    OMIT = "omit", "Answer without the images, told where each was omitted"


class ModelConfig(models.Model):
    """A language model users can chat with: a local GGUF on llama.cpp or a remote OpenAI-compatible one.

    ``model`` is a GGUF path for ``llama_cpp`` (or ``package:<python package>/<file>``, resolved
    inside that installed package at run time) and a model name for ``openai_compatible``. Open to
    everyone, or only to the members of ``groups`` (:func:`accounts.access.visible_to`).
    """

    slug = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=128)
    provider = models.CharField(max_length=32, choices=Provider.choices, default=Provider.LLAMA_CPP)
    model = models.CharField(
        "model path or name",
        max_length=512,
        help_text="GGUF path (or package:<package>/<file>) for llama.cpp; the model name for a server.",
    )
    base_url = models.URLField("base URL", max_length=512, blank=True)
    api_key_env = models.CharField(
        "API-key environment variable",
        max_length=128,
        blank=True,
        help_text="Name of the environment variable holding the key; the key itself is never stored.",
    )
    context_window = models.PositiveIntegerField(
        default=2048, validators=[MinValueValidator(256)], help_text="Tokens (prompt + completion)."
    )
    max_tokens = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(1)], help_text="Completion tokens per answer."
    )
    temperature = models.FloatField(default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    system_prompt = models.TextField(blank=True)
    stop = models.JSONField(
        "stop sequences", default=list, blank=True, help_text='Extra strings that end an answer, e.g. ["###"].'
    )
    # llama.cpp only
    n_threads = models.PositiveSmallIntegerField(
        "threads", null=True, blank=True, help_text="CPU threads; empty: LLAMA_N_THREADS."
    )
    n_gpu_layers = models.SmallIntegerField(
        "GPU layers", default=0, validators=[MinValueValidator(-1)], help_text="Layers offloaded to a GPU; -1: all."
    )
    # Limits
    connect_timeout = models.FloatField(
        "connect timeout (s)", default=5.0, validators=[MinValueValidator(0.1)], help_text="Seconds."
    )
    ttft_timeout = models.FloatField(
        "time-to-first-token timeout (s)",
        default=60.0,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds from the request (queueing included) to the first token.",
    )
    idle_timeout = models.FloatField(
        "idle timeout (s)", default=30.0, validators=[MinValueValidator(0.1)], help_text="Seconds between tokens."
    )
    max_retries = models.PositiveSmallIntegerField(
        default=2, help_text="Retries of connection errors, 429 and 5xx, only before the first token."
    )
    max_queue = models.PositiveSmallIntegerField(
        "queue size",
        default=8,
        validators=[MinValueValidator(1)],
        help_text="Generations running or waiting for this model per process; more are refused (model_busy).",
    )
    # Pricing, for usage reports: 0 for local models.
    price_input_per_mtok = models.DecimalField(
        "input price (USD / 1M tokens)", max_digits=10, decimal_places=4, default=0
    )
    price_output_per_mtok = models.DecimalField(
        "output price (USD / 1M tokens)", max_digits=10, decimal_places=4, default=0
    )
    orchestrator = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="executors",
        help_text="Optional model that rewrites each request into a focused prompt for this one.",
    )
    # Caching (inference.cache)
    cache_policy = models.CharField(
        "response cache", max_length=16, choices=CachePolicy.choices, default=CachePolicy.DETERMINISTIC
    )
    semantic_cache = models.BooleanField(
        default=False, help_text="Answer a conversation's first question from a similar earlier one."
    )
    cache_shared = models.BooleanField(
        "share cached answers between users",
        default=False,
        help_text=(
            "Serve one user's cached answers (exact and semantic) to other users who ask the same. Otherwise each "
            "user has their own. Sharing tells a user that someone asked that exact question, and what was answered."
        ),
    )
    # Capabilities: what /v1/chat/completions may ask of this model; a request using one it lacks is a 400
    # unsupported_parameter naming the parameter, never silently dropped.
    supports_tools = models.BooleanField(
        "supports tools",
        default=True,
        help_text="tools, tool_choice, parallel_tool_calls and tool messages. Passed through to a server; "
        "on llama.cpp a grammar makes the model write the call.",
    )
    supports_response_format = models.BooleanField(
        "supports response_format",
        default=True,
        help_text="JSON mode (json_object, json_schema). Passed through to a server; a grammar on llama.cpp.",
    )
    supports_logprobs = models.BooleanField(
        "supports logprobs",
        default=False,
        help_text="logprobs and top_logprobs, passed through to a server that returns them (not on llama.cpp).",
    )
    # Images (inference.images): what this model does with images in a request.
    supports_vision = models.BooleanField(
        "supports vision",
        default=False,
        help_text="Reads images (OpenAI image_url content parts). A llama.cpp model needs its vision projector.",
    )
    image_max_pixels = models.PositiveIntegerField(
        "image size cap (px, longest side)",
        default=2048,
        validators=[MinValueValidator(64)],
        help_text="Longer images are resized to this longest side, aspect ratio kept; smaller ones are sent "
        "as they are.",
    )
    image_max_bytes = models.PositiveIntegerField(
        "image byte cap",
        default=5 * 1024 * 1024,
        validators=[MinValueValidator(1024)],
        help_text="Bytes of one image as sent; a larger one is re-encoded as JPEG, and refused if still larger.",
    )
    text_only_images = models.CharField(
        "images sent to a text-only model",
        max_length=8,
        choices=TextOnlyImages.choices,
        default=TextOnlyImages.REFUSE,
        help_text="When the model does not support vision: refuse, or answer with a note where each image was.",
    )
    vision_projector = models.CharField(
        "vision projector (mmproj)",
        max_length=512,
        blank=True,
        help_text="llama.cpp only: the GGUF's mmproj file (path or package:<package>/<file>), for a vision model.",
    )
    vision_chat_handler = models.CharField(
        "vision chat handler",
        max_length=32,
        blank=True,
        default="mtmd",
        help_text="llama.cpp only: llama-cpp-python's chat handler for the projector: mtmd (llama.cpp's libmtmd "
        "with the GGUF's own chat template: most models), or llava-1-5, llava-1-6, moondream2, nanollava, "
        "llama-3-vision-alpha, minicpm-v-2.6, qwen2.5-vl.",
    )
    # Routing (inference.routing): which deployment serves a request, and what serves it when none can.
    routing_strategy = models.CharField(
        max_length=16, choices=RoutingStrategy.choices, default=RoutingStrategy.LEAST_BUSY
    )
    fallbacks = models.ManyToManyField(
        "self",
        through="ModelFallback",
        through_fields=("model", "fallback"),
        symmetrical=False,
        related_name="fallback_for",
        blank=True,
    )
    # Who may use it (accounts.access.visible_to): the UI picker, REST, the WebSocket, SSE and /v1 alike.
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="model_configs",
        help_text="Who may use it; none selected: everyone.",
    )
    is_default = models.BooleanField(default=False)
    is_enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_default", "display_name"]
        verbose_name = "model config"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="inference_one_default_model"
            ),
            models.CheckConstraint(
                condition=Q(is_default=False) | Q(is_enabled=True), name="inference_default_model_enabled"
            ),
            models.CheckConstraint(
                condition=~Q(provider="openai_compatible") | ~Q(base_url=""),
                name="inference_remote_model_has_base_url",
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    def clean(self) -> None:
        if self.supports_vision and self.provider == Provider.LLAMA_CPP and not self.vision_projector:
            raise ValidationError(
                {"vision_projector": "A llama.cpp model that supports vision needs its projector (mmproj) file."}
            )


class Deployment(models.Model):
    """One server (or local GGUF) that serves a model config; a model may have several (replicas, overflow).

    ``provider``, ``model``, ``base_url`` and ``api_key_env`` mean what they mean on
    :class:`ModelConfig`; everything else (timeouts, stop sequences, threads, prices) is the model's.
    A model with no deployments is served by its own fields, as one implicit deployment named
    ``default`` (:func:`inference.routing.model_deployments`). ``weight`` counts for the
    ``weighted_random`` strategy; ``max_concurrent`` (requests in flight, across every process),
    ``rpm_limit`` (requests per minute) and ``tpm_limit`` (prompt + completion tokens per minute)
    are empty for no limit. A drained deployment takes no new requests; running ones finish.
    """

    config = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="deployments")
    name = models.SlugField(max_length=64, help_text="Shown in metrics and message metadata, e.g. gpu-1.")
    provider = models.CharField(max_length=32, choices=Provider.choices, default=Provider.OPENAI_COMPATIBLE)
    model = models.CharField(
        "model path or name",
        max_length=512,
        help_text="GGUF path (or package:<package>/<file>) for llama.cpp; the model name for a server.",
    )
    base_url = models.URLField("base URL", max_length=512, blank=True)
    api_key_env = models.CharField(
        "API-key environment variable",
        max_length=128,
        blank=True,
        help_text="Name of the environment variable holding the key; the key itself is never stored.",
    )
    weight = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    max_concurrent = models.PositiveIntegerField(
        "max concurrent requests", null=True, blank=True, validators=[MinValueValidator(1)]
    )
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    is_drained = models.BooleanField("drained", default=False, help_text="Take no new requests; running ones finish.")
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["order", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["config", "name"], name="inference_deployment_unique_name"),
            models.CheckConstraint(
                condition=~Q(provider="openai_compatible") | ~Q(base_url=""),
                name="inference_remote_deployment_has_base_url",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.config.slug}/{self.name}" if self.config_id else self.name

    @property
    def label(self) -> str:
        """``<model slug>/<deployment name>``: how metrics, usage records and metadata name it."""
        return f"{self.config.slug}/{self.name}"


class ModelFallback(models.Model):
    """``fallback`` serves ``model``'s requests, in ``order``, when none of ``model``'s deployments can."""

    model = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="fallback_links")
    fallback = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="+")
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["order", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["model", "fallback"], name="inference_fallback_unique"),
            models.CheckConstraint(condition=~Q(model=models.F("fallback")), name="inference_fallback_not_self"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} -> {self.fallback_id}"


class SemanticCacheEntry(models.Model):
    """A single-turn answer, found again for a similar first question (cosine similarity of embeddings).

    ``scope`` is the model fingerprint (model, generation parameters, system prompt) hashed;
    ``owner`` is the user it belongs to, or empty for a model marked shared. Entries of an older
    ``version`` (the layer was flushed) or past ``expires_at`` are ignored and pruned later.
    """

    scope = models.CharField(max_length=64, db_index=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True)
    version = models.PositiveIntegerField()
    prompt = models.TextField()
    embedding = VectorField(dimensions=384)
    response = models.JSONField(help_text='{"content", "prompt_tokens", "completion_tokens"}')
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name_plural = "semantic cache entries"
        indexes = [
            HnswIndex(
                name="semantic_cache_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            )
        ]

    def __str__(self) -> str:
        return self.prompt[:60]
