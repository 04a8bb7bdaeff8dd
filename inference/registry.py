"""The model registry as an operator runs it: register models, switch the default, and measure them.

These are the write paths behind ``manage.py models``. Errors a user can cause are
:class:`ParleyError` (or :class:`InferenceError` for generations) with a stable ``code``.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.services import audit_record
from core.errors import ParleyError

from .models import Deployment, ModelConfig, Provider
from .providers import GenerationParams
from .providers.llama_cpp import PACKAGE_PREFIX, resolve_model_path
from .services import provider_for, tokens_per_second

# Cap on the context window registered for a local GGUF when none is given: the KV cache grows
# with it (and is allocated up front by llama.cpp), and small CPU models rarely need more.
LOCAL_CONTEXT_WINDOW_CAP = 4096
# The first four bytes of every GGUF file (GGUF spec, "File Structure").
GGUF_MAGIC = b"GGUF"

CHECK_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
BENCH_MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


@dataclass(frozen=True)
class GGUFMetadata:
    """What a GGUF file says about its model.

    ``context_length`` is in tokens (None when the file does not say); ``quantization`` is the
    llama.cpp file type name, e.g. ``"Q4_K_M"``; ``size_bytes`` is the file size in bytes.
    """

    path: Path
    architecture: str
    context_length: int | None
    has_chat_template: bool
    quantization: str
    size_bytes: int


@dataclass(frozen=True)
class Probe:
    """One measured generation.

    ``ttft_ms`` is milliseconds from the request to the first text delta (loading the model
    included, the first time a process uses it). ``tokens_per_s`` is the decode rate, see
    :func:`model_config_probe`; None when fewer than two completion tokens were sampled.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_s: float | None


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def _quantization_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"file type {file_type}"
    # "MOSTLY_Q4_K_M" -> "Q4_K_M", "ALL_F32" -> "F32", the names llama.cpp's quantize tool uses.
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def gguf_metadata(*, path: Path) -> GGUFMetadata:
    """Read the metadata of the GGUF file at ``path`` with ``gguf.GGUFReader``.

    Slow for large vocabularies: the reader parses every metadata array (about 20 s for Gemma 3's
    262k tokens on two cores). Raise :class:`ParleyError` ``invalid_model`` when the file is not
    GGUF, or is damaged or of an unsupported GGUF version.
    """
    with path.open("rb") as file:
        if file.read(4) != GGUF_MAGIC:
            raise ParleyError(
                f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r}).", code="invalid_model"
            )
    try:
        reader = gguf.GGUFReader(path)
        architecture = _field(reader, "general.architecture") or "unknown"
        context_length = _field(reader, f"{architecture}.context_length")
        has_chat_template = bool(_field(reader, "tokenizer.chat_template"))
        file_type = _field(reader, "general.file_type")
    except (ValueError, IndexError, OSError) as exc:
        raise ParleyError(f"{path} is a damaged or unsupported GGUF file: {exc}", code="invalid_model") from exc
    return GGUFMetadata(
        path=path,
        architecture=str(architecture),
        context_length=int(context_length) if context_length is not None else None,
        has_chat_template=has_chat_template,
        quantization=_quantization_name(int(file_type) if file_type is not None else None),
        size_bytes=path.stat().st_size,
    )


def default_slug(name: str) -> str:
    """Return a slug for a model file stem or model name: ``"org/Model-1.5B.Q4_1"`` -> ``"org-model-1-5b-q4_1"``."""
    return slugify(re.sub(r"[/.:]+", "-", name)).strip("-_")[:64]


def model_config_by_slug(*, slug: str, for_update: bool = False) -> ModelConfig:
    """Return the model ``slug``, enabled or not; row-locked with ``for_update`` (inside a transaction).

    Raise :class:`ParleyError` ``model_not_found`` (404).
    """
    configs = ModelConfig.objects.select_for_update() if for_update else ModelConfig.objects.all()
    config = configs.filter(slug=slug).first()
    if config is None:
        raise ParleyError(f"No model {slug!r}.", code="model_not_found", status_code=404)
    return config


def _unset_default() -> None:
    # Call inside transaction.atomic, before setting the new default: the partial unique index
    # inference_one_default_model is checked row by row, so two defaults may never coexist.
    for old in ModelConfig.objects.select_for_update().filter(is_default=True):
        old.is_default = False
        old.save(update_fields=["is_default", "updated_at"])
        audit_record(action="model.change", target=old, changes={"is_default": [True, False]})


def _model_config_create(**fields) -> ModelConfig:
    slug = fields["slug"]
    if ModelConfig.objects.filter(slug=slug).exists():
        raise ParleyError(f"A model with slug {slug!r} already exists.", code="slug_taken", status_code=409)
    config = ModelConfig(**fields)
    try:
        with transaction.atomic():
            if config.is_default:
                _unset_default()
            config.full_clean()
            config.save()
            audit_record(
                action="model.create",
                target=config,
                changes={f: getattr(config, f) for f in ("provider", "model", "base_url", "is_default")},
            )
    except ValidationError as exc:
        detail = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
        raise ParleyError(f"Invalid model: {detail}", code="invalid_model") from exc
    except IntegrityError as exc:
        # Another process took the slug or the default between the checks and the insert.
        raise ParleyError(f"Could not register {slug!r}: {exc}", code="conflict", status_code=409) from exc
    return config


def model_config_add_local(
    *,
    model: str,
    slug: str = "",
    display_name: str = "",
    context_window: int | None = None,
    is_default: bool = False,
) -> tuple[ModelConfig, GGUFMetadata]:
    """Register a local GGUF (``llama_cpp``) from a path or ``package:<package>/<file>``.

    ``slug`` defaults to :func:`default_slug` of the file stem, ``display_name`` to the stem, and
    ``context_window`` (tokens) to the model's context length capped at
    ``LOCAL_CONTEXT_WINDOW_CAP`` (4096). With ``is_default``, the old default is unset in the same
    transaction. Return the new config and the file's metadata.

    Raise :class:`ModelUnavailable` for a missing file, and :class:`ParleyError` ``slug_taken`` for
    a duplicate slug, ``invalid_model`` for a file that is not GGUF, a context window larger than
    the model's, or any invalid field.
    """
    path = resolve_model_path(model)
    slug = slug or default_slug(path.stem)
    # Checked before reading the file, which can take many seconds.
    if ModelConfig.objects.filter(slug=slug).exists():
        raise ParleyError(f"A model with slug {slug!r} already exists.", code="slug_taken", status_code=409)
    metadata = gguf_metadata(path=path)
    if context_window is None:
        context_window = min(metadata.context_length or LOCAL_CONTEXT_WINDOW_CAP, LOCAL_CONTEXT_WINDOW_CAP)
    elif metadata.context_length and context_window > metadata.context_length:
        raise ParleyError(
            f"The context window {context_window} is larger than the model's context length "
            f"({metadata.context_length} tokens).",
            code="invalid_model",
        )
    config = _model_config_create(
        slug=slug,
        display_name=display_name or path.stem,
        provider=Provider.LLAMA_CPP,
        # A package reference stays portable across machines; a plain path is stored absolute.
        model=model if model.startswith(PACKAGE_PREFIX) else str(path.resolve()),
        context_window=context_window,
        is_default=is_default,
    )
    return config, metadata


def model_config_add_remote(
    *,
    name: str,
    base_url: str,
    api_key_env: str = "",
    slug: str = "",
    display_name: str = "",
    context_window: int | None = None,
    is_default: bool = False,
) -> ModelConfig:
    """Register model ``name`` served by an OpenAI-compatible server at ``base_url``.

    ``api_key_env`` names the environment variable holding the key (the key is never stored).
    ``slug`` defaults to :func:`default_slug` of ``name``; ``context_window`` (tokens) to the
    model field's default. Nothing is sent to the server. Raise :class:`ParleyError`
    ``slug_taken`` or ``invalid_model``.
    """
    fields = {}
    if context_window is not None:
        fields["context_window"] = context_window
    return _model_config_create(
        slug=slug or default_slug(name),
        display_name=display_name or name,
        provider=Provider.OPENAI_COMPATIBLE,
        model=name,
        base_url=base_url,
        api_key_env=api_key_env,
        is_default=is_default,
        **fields,
    )


def model_config_set_default(*, slug: str) -> ModelConfig:
    """Make model ``slug`` the default, unsetting the old default in the same transaction.

    Raise :class:`ParleyError` ``model_not_found``, or ``model_disabled`` when the model is disabled
    (the database requires the default model to be enabled).
    """
    try:
        with transaction.atomic():
            config = model_config_by_slug(slug=slug, for_update=True)
            if not config.is_enabled:
                raise ParleyError(
                    f"Model {slug!r} is disabled; enable it before making it the default.", code="model_disabled"
                )
            if not config.is_default:
                _unset_default()
                config.is_default = True
                config.save(update_fields=["is_default", "updated_at"])
                audit_record(action="model.change", target=config, changes={"is_default": [False, True]})
    except IntegrityError as exc:
        raise ParleyError(
            "The default model was changed at the same time; try again.", code="conflict", status_code=409
        ) from exc
    return config


def model_config_set_enabled(*, slug: str, enabled: bool) -> ModelConfig:
    """Enable or disable model ``slug`` (disabled models are hidden from users and refused).

    Raise :class:`ParleyError` ``model_not_found``, or ``default_model`` when disabling the default
    model (the database requires the default model to be enabled).
    """
    with transaction.atomic():
        config = model_config_by_slug(slug=slug, for_update=True)
        if not enabled and config.is_default:
            raise ParleyError(
                f"Model {slug!r} is the default model and cannot be disabled; make another model the default first.",
                code="default_model",
            )
        if config.is_enabled != enabled:
            audit_record(action="model.change", target=config, changes={"is_enabled": [config.is_enabled, enabled]})
            config.is_enabled = enabled
            config.save(update_fields=["is_enabled", "updated_at"])
    return config


ACCESS_MODES = ("set", "add", "remove", "everyone")


@transaction.atomic
def model_config_access_set(*, configs: list[ModelConfig], groups: list, mode: str = "set") -> int:
    """Change who may use each of ``configs`` (:func:`accounts.access.visible_to`); return how many changed.

    ``mode``: ``set`` (exactly ``groups``; none: everyone), ``add`` or ``remove`` (``groups`` to or
    from each model's list), ``everyone`` (clear the list). One ``model.change`` audit event per model
    that changed, with the group names before and after. Raise ``ValueError`` for another mode.
    Users' next requests (every path) follow the new lists; nothing else needs to happen.
    """
    if mode not in ACCESS_MODES:
        raise ValueError(f"Unknown access mode {mode!r}.")
    changed = 0
    for config in configs:
        before = set(config.groups.all())
        after = {
            "set": set(groups),
            "add": before | set(groups),
            "remove": before - set(groups),
            "everyone": set(),
        }[mode]
        if after == before:
            continue
        config.groups.set(after)
        audit_record(
            action="model.change",
            target=config,
            changes={"groups": [sorted(g.name for g in before), sorted(g.name for g in after)]},
        )
        changed += 1
    return changed


def model_config_probe(
    *,
    config: ModelConfig,
    messages: list[dict[str, str]] = CHECK_MESSAGES,
    max_tokens: int = 8,
    deployment: Deployment | None = None,
) -> Probe:
    """Generate up to ``max_tokens`` completion tokens at temperature 0 from ``config`` (on ``deployment``
    when given, else its own fields) and time it; no routing, retries or fallbacks.

    ``tokens_per_s`` is the decode rate of :func:`inference.services.tokens_per_second`.
    Raise :class:`InferenceError` (``.code``, ``.detail``) when the model cannot be loaded or run.
    """
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    last = None
    provider = provider_for(config=config, deployment=deployment, max_retries=0 if deployment else None)
    for chunk in provider.stream(messages, GenerationParams(max_tokens=max_tokens, temperature=0.0)):
        if chunk.delta:
            if first is None:
                first = time.perf_counter()
            parts.append(chunk.delta)
        last = chunk
    ended = time.perf_counter()
    usage = last.usage if last is not None else None
    completion_tokens = usage.completion_tokens if usage else 0
    ttft_ms = ((first if first is not None else ended) - started) * 1000
    return Probe(
        text="".join(parts),
        finish_reason=last.finish_reason if last is not None else None,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=completion_tokens,
        ttft_ms=ttft_ms,
        tokens_per_s=tokens_per_second(
            completion_tokens=completion_tokens,
            ttft_ms=ttft_ms if first is not None else None,
            latency_ms=(ended - started) * 1000,
        ),
    )


def model_config_bench(*, config: ModelConfig, runs: int = 5, max_tokens: int = 64) -> dict:
    """Measure ``runs`` generations of up to ``max_tokens`` tokens, after one warm-up that loads the model.

    Return ``{"model": slug, "runs": int, "ttft_ms": {"p50", "max"}, "tokens_per_s": {"p50", "min"},
    "completion_tokens": int}``: milliseconds and tokens per second (see :func:`model_config_probe`;
    None when no run sampled two tokens), rounded to 0.1; ``completion_tokens`` is the total over
    the measured runs. Raise :class:`InferenceError` as :func:`model_config_probe` does.
    """
    model_config_probe(config=config, messages=BENCH_MESSAGES, max_tokens=1)
    probes = [model_config_probe(config=config, messages=BENCH_MESSAGES, max_tokens=max_tokens) for _ in range(runs)]
    ttfts = [p.ttft_ms for p in probes]
    rates = [p.tokens_per_s for p in probes if p.tokens_per_s is not None]
    return {
        "model": config.slug,
        "runs": runs,
        "ttft_ms": {"p50": round(statistics.median(ttfts), 1), "max": round(max(ttfts), 1)},
        "tokens_per_s": {
            "p50": round(statistics.median(rates), 1) if rates else None,
            "min": round(min(rates), 1) if rates else None,
        },
        "completion_tokens": sum(p.completion_tokens for p in probes),
    }
