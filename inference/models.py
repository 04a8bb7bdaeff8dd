from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from pgvector.django import HnswIndex, VectorField


class Provider(models.TextChoices):
    LLAMA_CPP = "llama_cpp", "llama.cpp (local GGUF)"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"


class CachePolicy(models.TextChoices):
    DETERMINISTIC = "deterministic", "Only deterministic requests (temperature 0)"
    ALWAYS = "always", "Every request (answers repeat even at temperature > 0)"
    NEVER = "never", "Never"


class ModelConfig(models.Model):
    """A language model users can chat with: a local GGUF on llama.cpp or a remote OpenAI-compatible one.

    ``model`` is a GGUF path for ``llama_cpp`` (or ``package:<python package>/<file>``, resolved
    inside that installed package at run time) and a model name for ``openai_compatible``.
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
