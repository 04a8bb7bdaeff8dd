from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Provider(models.TextChoices):
    LLAMA_CPP = "llama_cpp", "llama.cpp (local GGUF)"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"


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
