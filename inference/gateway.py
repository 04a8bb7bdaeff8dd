"""OpenAI-compatible gateway under ``/v1/``: models, chat completions (streamed or not) and embeddings.

Any OpenAI client works against Parley unchanged: ``openai.OpenAI(base_url=".../v1", api_key="pk_...")``.
Requests are authenticated by per-user API keys only, and every error has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, not Parley's. Wire format:
https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import APIKeyAuthentication
from accounts.models import UsageSource, UsageStatus
from accounts.quotas import GenerationKeepalive, generation_admit, generation_release, quota_check
from accounts.services import usage_record
from core.errors import ParleyError, payload_too_large

from .cache import answer_entry, replay_deltas
from .cache import layer as cache_layer
from .embeddings import embed_texts
from .models import ModelConfig
from .providers import Chunk, GenerationParams, ModelTimeout, ModelUnavailable, Usage
from .selectors import model_config_get, model_config_list
from .services import cache_allowed, generation_params, llm_cache_key, provider_for, usage_cost

logger = logging.getLogger(__name__)

# --- Errors -----------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape, with an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_type(status_code: int) -> str:
    """Return OpenAI's error ``type`` for an HTTP status."""
    if status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def _from_parley(exc: ParleyError, param: str | None = None) -> OpenAIError:
    """Map a Parley (inference) error to its OpenAI equivalent, keeping its status and code.

    ``model_busy``/``model_unavailable`` → 503 (``Retry-After`` when known), ``upstream_rate_limited``
    and Parley's own ``rate_limited`` → 429 ``rate_limit_exceeded``, ``model_timeout`` → 504,
    ``context_length_exceeded`` → 400 of that code.
    """
    code = "rate_limit_exceeded" if exc.code in ("upstream_rate_limited", "rate_limited") else exc.code
    return OpenAIError(
        exc.detail,
        status_code=exc.status_code,
        type=_error_type(exc.status_code),
        param=param,
        code=code,
        retry_after=exc.retry_after,
    )


def _validation_param(detail, prefix: str = "") -> tuple[str | None, str]:
    """Return ``(param, message)`` of the first error in a DRF ``ValidationError.detail``.

    ``param`` is a path in OpenAI's style: ``messages[0].role``.
    """
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        if key == "non_field_errors":
            return _validation_param(value, prefix)
        if isinstance(key, int):
            return _validation_param(value, f"{prefix}[{key}]")
        return _validation_param(value, f"{prefix}.{key}" if prefix else str(key))
    if isinstance(detail, list) and detail:
        return _validation_param(detail[0], prefix)
    return prefix or None, str(detail)


def openai_exception_handler(exc, context) -> Response | None:
    """Render errors of the ``/v1/`` views in OpenAI's shape; leave unexpected ones to a 500."""
    if isinstance(exc, RequestDataTooBig):
        exc = payload_too_large()
    if isinstance(exc, ParleyError):
        exc = _from_parley(exc)
    elif isinstance(exc, Http404):
        exc = OpenAIError("Not found.", status_code=404, code="not_found")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.ValidationError):
        param, message = _validation_param(exc.detail)
        exc = OpenAIError(f"{param}: {message}" if param else message, param=param, code="invalid_value")
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        message = (
            "Invalid or revoked API key."
            if isinstance(exc, exceptions.AuthenticationFailed)
            else "You didn't provide an API key. Send it as 'Authorization: Bearer pk_...'."
        )
        exc = OpenAIError(message, status_code=401, code="invalid_api_key")
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        wait = getattr(exc, "wait", None)
        exc = OpenAIError(
            str(exc.detail),
            status_code=exc.status_code,
            type=_error_type(exc.status_code),
            code=codes if isinstance(codes, str) else None,
            retry_after=math.ceil(wait) if wait else None,
        )
    if not isinstance(exc, OpenAIError):
        return None
    response = Response(exc.body(), status=exc.status_code)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    if exc.status_code == 401:
        response["WWW-Authenticate"] = APIKeyAuthentication().authenticate_header(context.get("request"))
    return response


class GatewayApi(APIView):
    """Base of the ``/v1/`` views: API keys only, OpenAI's error shape, left out of Parley's OpenAPI schema."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [IsAuthenticated]

    def get_exception_handler(self):
        return openai_exception_handler


def _validated(serializer_class: type[serializers.Serializer], data) -> dict:
    if not isinstance(data, dict):
        raise OpenAIError("The request body must be a JSON object.")
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _model_get(slug: str) -> ModelConfig:
    """Return the enabled model ``slug``; raise a 404 ``model_not_found`` otherwise."""
    try:
        return model_config_get(slug=slug)
    except ModelUnavailable:
        raise OpenAIError(
            f"The model '{slug}' does not exist or is not enabled.",
            status_code=404,
            param="model",
            code="model_not_found",
        ) from None


# --- Models -----------------------------------------------------------------------------------


@extend_schema(exclude=True)
class ModelListGateway(GatewayApi):
    """``GET /v1/models``: the enabled models, as OpenAI model objects (``id`` is the slug)."""

    def get(self, request):
        data = [
            {"id": config.slug, "object": "model", "created": int(config.created_at.timestamp()), "owned_by": "parley"}
            for config in model_config_list()
        ]
        return Response({"object": "list", "data": data})


# --- Chat completions -------------------------------------------------------------------------


class _ContentField(serializers.Field):
    """A message's ``content``: a string, or a list of ``{"type": "text", "text"}`` parts (joined)."""

    default_error_messages = {"invalid": "Must be a string or a list of text content parts."}

    def to_internal_value(self, data) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in data
        ):
            return "".join(part["text"] for part in data)
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _StopField(serializers.Field):
    """``stop``: null, a string or a list of up to 4 strings; always a list inside."""

    default_error_messages = {"invalid": "Must be a string or a list of up to 4 non-empty strings."}

    def to_internal_value(self, data) -> list[str]:
        if isinstance(data, str) and data:
            return [data]
        if isinstance(data, list) and len(data) <= 4 and all(isinstance(s, str) and s for s in data):
            return data
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _StrictBooleanField(serializers.BooleanField):
    """A JSON boolean only (DRF's also takes ``"yes"``, ``1``, ...)."""

    def to_internal_value(self, data) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class _StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class _StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


# Roles a chat model reads; OpenAI's newer "developer" role means "system" here.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatCompletionGateway(GatewayApi):
    """``POST /v1/chat/completions``: one answer from an enabled model, whole or as server-sent events.

    Takes OpenAI's ``model``, ``messages`` (roles system/developer/user/assistant, text content),
    ``stream``, ``stream_options.include_usage``, ``max_tokens`` (or ``max_completion_tokens``),
    ``temperature`` (0 to 2), ``stop`` and ``n`` (1 only); other OpenAI parameters are ignored.
    The model's system prompt goes first when the messages have no system message. Answers that the
    model's cache policy allows (e.g. at temperature 0) are served from and stored in the ``llm``
    cache layer, under the same keys as chat turns.
    """

    class InputSerializer(serializers.Serializer):
        class MessageSerializer(serializers.Serializer):
            role = serializers.ChoiceField(choices=sorted(ROLES))
            content = _ContentField()

        class StreamOptionsSerializer(serializers.Serializer):
            include_usage = _StrictBooleanField(required=False, default=False)

        model = serializers.CharField()
        messages = serializers.ListField(child=MessageSerializer(), min_length=1)
        stream = _StrictBooleanField(required=False, default=False, allow_null=True)
        stream_options = StreamOptionsSerializer(required=False, allow_null=True)
        max_tokens = _StrictIntegerField(required=False, allow_null=True, min_value=1)
        max_completion_tokens = _StrictIntegerField(required=False, allow_null=True, min_value=1)
        temperature = _StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
        stop = _StopField(required=False, allow_null=True)
        n = _StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)

    @extend_schema(exclude=True)
    def post(self, request):
        data = _validated(self.InputSerializer, request.data)
        config = _model_get(data["model"])
        messages = [{"role": ROLES[m["role"]], "content": m["content"]} for m in data["messages"]]
        if config.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        params = self._params(config, data)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        # 429 too_many_generations / quota_exceeded here, before any work; recorded once it ends.
        self.meter = meter = _Meter(user=request.user, config=config, generation_id=completion_id, params=params)

        llm = cache_layer("llm")
        key = None
        cached = None
        lease = None
        if cache_allowed(config=config, params=params):
            key = llm_cache_key(config=config, params=params, messages=messages)
            # Single flight: of concurrent identical misses one generates (holding the lease), the
            # others wait for its answer, as chat turns do.
            cached, lease = _cache_lookup(llm, key, config)

        if data.get("stream"):
            include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
            chunks = _replay(cached) if cached is not None else _generate(config, messages, params)
            chunks = _metered(chunks, meter, cached=cached is not None)
            if cached is None:
                # Wait for the first chunk here, so a model that is busy, missing or too slow is an
                # HTTP error (503, 504, ...) rather than an error event in a 200 stream.
                try:
                    first = next(chunks, None)
                except BaseException:
                    _release(lease)
                    raise
                chunks = _chain(first, chunks)
            events = _sse(
                chunks,
                completion_id=completion_id,
                created=created,
                model=config.slug,
                include_usage=include_usage,
                store=(lambda answer: llm.set(key, answer)) if key is not None and cached is None else None,
            )
            response = StreamingHttpResponse(
                _served(request, _holding(events, lease)), content_type="text/event-stream"
            )
            # A stream never read (the client left at once) still frees its slot and is recorded.
            response._resource_closers.append(lambda: meter.finish(status=UsageStatus.CANCELLED))
            if lease is not None:
                # Also when the stream is never read (the client left at once): Django closes every response.
                response._resource_closers.append(lease.release)
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
            return response

        if cached is not None:
            text = cached["content"]
            finish_reason = cached.get("finish_reason", "stop")
            usage = Usage(cached.get("prompt_tokens", 0), cached.get("completion_tokens", 0))
            meter.finish(status=UsageStatus.COMPLETE, usage=usage, cached=True)
        else:
            parts: list[str] = []
            last = Chunk()
            try:
                for chunk in _metered(_generate(config, messages, params), meter):
                    parts.append(chunk.delta)
                    last = chunk
                text, finish_reason, usage = "".join(parts), last.finish_reason, last.usage or Usage()
                if key is not None and finish_reason in ("stop", "length") and text:
                    llm.set(key, _cache_entry(text, finish_reason, usage))
            finally:
                _release(lease)
        return Response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": config.slug,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": _finish_reason(finish_reason),
                    }
                ],
                "usage": _usage(usage),
            }
        )

    meter: _Meter | None = None

    def handle_exception(self, exc):
        # Any failure after admission frees the generation slot and is recorded as an error (once).
        if self.meter is not None:
            self.meter.finish(status=UsageStatus.ERROR)
        return super().handle_exception(exc)

    @staticmethod
    def _params(config: ModelConfig, data: dict) -> GenerationParams:
        overrides = {}
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        if max_tokens is not None:
            if max_tokens > config.context_window:
                param = "max_completion_tokens" if data.get("max_completion_tokens") else "max_tokens"
                raise OpenAIError(
                    f"{param} is too large: {max_tokens}. "
                    f"The model's context window is {config.context_window} tokens.",
                    param=param,
                    code="invalid_value",
                )
            overrides["max_tokens"] = max_tokens
        if data.get("temperature") is not None:
            overrides["temperature"] = data["temperature"]
        try:
            params = generation_params(model=config, overrides=overrides)
        except ParleyError as exc:  # already validated above; kept so a future rule still answers 400
            raise _from_parley(exc) from exc
        params.stop = data.get("stop") or []
        return params


def _cache_entry(text: str, finish_reason: str | None, usage: Usage) -> dict:
    return answer_entry(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )


SINGLE_FLIGHT_POLL_SECONDS = 0.05


class _Lease:
    """This request's single-flight lease on an ``llm`` key: renewed in a thread until released.

    Renewed every third of ``CACHE_SINGLE_FLIGHT_LEASE``, so a waiter takes over only if this
    process dies. :meth:`release` is idempotent.
    """

    def __init__(self, llm, key: str, token: str):
        self.llm, self.key, self.token = llm, key, token
        self._done = threading.Event()
        threading.Thread(target=self._renew, name="gateway-lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._done.wait(settings.CACHE_SINGLE_FLIGHT_LEASE / 3):
            self.llm.renew(self.key, self.token)

    def release(self) -> None:
        if not self._done.is_set():
            self._done.set()
            self.llm.release(self.key, self.token)


def _release(lease: _Lease | None) -> None:
    if lease is not None:
        lease.release()


def _cache_lookup(llm, key: str, config: ModelConfig) -> tuple[dict | None, _Lease | None]:
    """Return ``(answer, None)`` from the ``llm`` layer, or ``(None, lease)``: generate, store, then release.

    While another request holds the lease on ``key`` (it is generating this very answer), wait for
    its answer, polling every ``SINGLE_FLIGHT_POLL_SECONDS``; take over if its lease lapses or it
    stored nothing (it failed). Count a hit or a miss. Raise :class:`ModelTimeout` after waiting the
    model's ``ttft_timeout`` (seconds). When Redis is down every request gets a lease (no caching).
    """
    cached = llm.get(key, count=False)
    wait_until = time.monotonic() + config.ttft_timeout
    while cached is None:
        token = llm.acquire(key)
        if token is not None:
            # The holder may have stored its answer and released just before this acquire.
            cached = llm.get(key, count=False)
            if cached is not None:
                llm.release(key, token)
                break
            llm.record("misses")
            return None, _Lease(llm, key, token)
        time.sleep(SINGLE_FLIGHT_POLL_SECONDS)
        cached = llm.get(key, count=False)
        if cached is None and time.monotonic() > wait_until:
            raise ModelTimeout(f"Waited {config.ttft_timeout:g} s for an identical request's answer.")
    llm.record("hits")
    return cached, None


class _Meter:
    """One ``/v1`` chat completion, admitted and metered (accounts.quotas, accounts.services.usage_record).

    Creating it takes a generation slot and reserves ``params.max_tokens`` of the user's daily quota,
    or raises 429 ``too_many_generations`` / ``quota_exceeded``. :meth:`finish` (idempotent) frees
    the slot and records the request (source ``gateway``) with its usage, TTFT and latency.
    """

    def __init__(self, *, user, config: ModelConfig, generation_id: str, params: GenerationParams):
        generation_admit(user=user, generation_id=generation_id, reserve_tokens=params.max_tokens)
        self.user, self.config, self.generation_id = user, config, generation_id
        self.started = time.perf_counter()
        self.ttft_ms: int | None = None
        self._finished = False
        self._lock = threading.Lock()
        self._keepalive = GenerationKeepalive(user_id=user.pk, generation_id=generation_id)

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self.started) * 1000)

    def finish(self, *, status: UsageStatus, usage: Usage | None = None, cached: bool = False) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._keepalive.stop()
        generation_release(user_id=self.user.pk, generation_id=self.generation_id)
        usage = usage or Usage()
        try:
            usage_record(
                user=self.user,
                model_slug=self.config.slug,
                provider=self.config.provider,
                source=UsageSource.GATEWAY,
                status=status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=None
                if cached
                else usage_cost(
                    model=self.config, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
                ),
                ttft_ms=self.ttft_ms,
                latency_ms=round((time.perf_counter() - self.started) * 1000),
                cached=cached,
            )
        except Exception:  # the answer matters more than its bookkeeping
            logger.exception("Could not record usage of %s", self.generation_id)


def _metered(chunks: Iterator[Chunk], meter: _Meter, *, cached: bool = False) -> Iterator[Chunk]:
    """Yield ``chunks``, then finish ``meter``: complete, error (an exception) or cancelled (closed early).

    Without usage from the provider (a stream cut short) the completion tokens are counted as the
    deltas received: one token each, as llama.cpp and OpenAI-compatible servers stream them.
    """
    status, last, deltas = UsageStatus.ERROR, Chunk(), 0
    try:
        for chunk in chunks:
            if chunk.delta:
                meter.first_token()
                deltas += 1
            last = chunk
            yield chunk
        status = UsageStatus.COMPLETE
    except GeneratorExit:
        status = UsageStatus.CANCELLED
        raise
    finally:
        chunks.close()
        meter.finish(status=status, usage=last.usage or Usage(0, deltas), cached=cached)


def _holding(events: Iterator[bytes], lease: _Lease | None) -> Iterator[bytes]:
    """Yield ``events``, then release ``lease`` (also when the client goes away midway)."""
    try:
        yield from events
    finally:
        _release(lease)


_END = object()


async def _pulled(events: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield ``events`` (a blocking iterator) to an async server, one item at a time.

    Each ``next()`` runs in the request's own sync thread (``thread_sensitive``: the one Django's
    ASGI handler gives the request, so database connections stay in one thread). Closing early (the
    client left) closes ``events`` there too, which cancels the generation.
    """
    pull = sync_to_async(next, thread_sensitive=True)
    try:
        while (event := await pull(events, _END)) is not _END:
            yield event
    finally:
        await sync_to_async(events.close, thread_sensitive=True)()


def _served(request, events: Iterator[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """Return ``events`` as the server streams them: async under ASGI (Daphne), as is under WSGI.

    Django's ASGI handler reads a sync iterator whole before sending anything (with a warning), so
    a streamed answer would arrive in one piece at the end; and a WSGI server cannot stream an async one.
    """
    # DRF's Request hands attribute reads to Django's: only an ASGIRequest has an ASGI ``scope``.
    return _pulled(events) if getattr(request, "scope", None) is not None else events


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


_DONE = object()


def _generate(config: ModelConfig, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
    """Yield the provider's chunks, generated in a worker thread (providers block), as chat turns do.

    Raise :class:`ModelTimeout` when no first chunk comes within the model's ``ttft_timeout``, or no
    next one within its ``idle_timeout`` (seconds), and the provider's errors as they come. Closing
    the iterator (a streaming client went away) cancels the generation.
    """
    provider = provider_for(config=config)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    cancel = threading.Event()

    def produce() -> None:
        try:
            for chunk in provider.stream(messages, params, cancel):
                inbox.put(chunk)
        except BaseException as exc:  # handed to the request thread, which raises it
            inbox.put(exc)
        finally:
            inbox.put(_DONE)

    threading.Thread(target=produce, name="gateway-generate", daemon=True).start()
    first = True
    try:
        while True:
            timeout = config.ttft_timeout if first else config.idle_timeout
            try:
                item = inbox.get(timeout=timeout)
            except queue.Empty:
                what = "first" if first else "next"
                raise ModelTimeout(f"No {what} token from {config.display_name} within {timeout:g} s.") from None
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            first = False
            yield item
    finally:
        cancel.set()  # a no-op after a finished generation; stops an abandoned one


def _replay(cached: dict) -> Iterator[Chunk]:
    """Yield a cached answer as chunks of a few words (as chat turns replay it), then finish reason and usage."""
    for delta in replay_deltas(cached["content"]):
        yield Chunk(delta=delta)
    usage = Usage(cached.get("prompt_tokens", 0), cached.get("completion_tokens", 0))
    yield Chunk(finish_reason=cached.get("finish_reason", "stop"), usage=usage)


def _chain(first: Chunk | None, rest: Iterator[Chunk]) -> Iterator[Chunk]:
    """Yield ``first`` (already taken from ``rest``; None when ``rest`` was empty), then ``rest``."""
    try:
        if first is not None:
            yield first
        yield from rest
    finally:
        rest.close()


def _event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _sse(
    chunks: Iterator[Chunk], *, completion_id: str, created: int, model: str, include_usage: bool, store
) -> Iterator[bytes]:
    """Yield OpenAI ``chat.completion.chunk`` server-sent events, then ``data: [DONE]``.

    The first chunk carries ``delta.role``, the last choice chunk the ``finish_reason``; with
    ``include_usage`` a final chunk with empty ``choices`` carries the usage. An error after the
    stream started is sent as an ``{"error": ...}`` event (OpenAI's clients raise it). ``store`` (when
    given) receives the cache entry of a complete answer.
    """
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def choice_chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    yield choice_chunk({"role": "assistant", "content": ""})
    parts: list[str] = []
    last = Chunk()
    try:
        for chunk in chunks:
            if chunk.delta:
                parts.append(chunk.delta)
                yield choice_chunk({"content": chunk.delta})
            last = chunk
    except ParleyError as exc:
        yield _event(_from_parley(exc).body())
        yield _event("[DONE]")
        return
    finally:
        chunks.close()
    usage = last.usage or Usage()
    text = "".join(parts)
    if store is not None and last.finish_reason in ("stop", "length") and text:
        store(_cache_entry(text, last.finish_reason, usage))
    yield choice_chunk({}, _finish_reason(last.finish_reason))
    if include_usage:
        yield _event({**base, "choices": [], "usage": _usage(usage)})
    yield _event("[DONE]")


# --- Embeddings -------------------------------------------------------------------------------

LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit of inputs per request
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text: ~4 characters a token


class EmbeddingGateway(GatewayApi):
    """``POST /v1/embeddings``: one vector per input text, from the embedding model (``EMBEDDING_MODEL``).

    ``model`` may be left out, or name the served model: ``all-MiniLM-L6-v2`` (or ``local``) for the
    bundled one, else the ``EMBEDDING_MODEL`` name; anything else is 404 ``model_not_found``.
    ``encoding_format`` is ``float`` (lists of floats) or ``base64`` (little-endian float32, which
    OpenAI's Python client asks for by default). Token counts are approximate: characters / 4,
    rounded up per input, since no tokenizer is run for them.
    """

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(required=False, allow_null=True)
        input = serializers.JSONField()
        encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")

        def validate_input(self, value) -> list[str]:
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise serializers.ValidationError(
                    "Must be a string or a list of strings (token arrays are not supported)."
                )
            if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
                raise serializers.ValidationError(f"Must hold 1 to {MAX_EMBEDDING_INPUTS} inputs.")
            if not all(texts):
                raise serializers.ValidationError("Inputs must not be empty strings.")
            return texts

    @extend_schema(exclude=True)
    def post(self, request):
        data = _validated(self.InputSerializer, request.data)
        served = LOCAL_EMBEDDING_MODEL if settings.EMBEDDING_MODEL == "local" else settings.EMBEDDING_MODEL
        if data.get("model") and data["model"] not in {served, settings.EMBEDDING_MODEL}:
            raise OpenAIError(
                f"The embedding model '{data['model']}' does not exist; this server embeds with '{served}'.",
                status_code=404,
                param="model",
                code="model_not_found",
            )
        texts = data["input"]
        quota_check(user=request.user)  # 429 quota_exceeded when today's tokens are used up
        tokens = sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts)
        started = time.perf_counter()
        provider = "local" if settings.EMBEDDING_MODEL == "local" else "openai_compatible"
        try:
            vectors = embed_texts(texts)
        except BaseException:
            _embedding_usage(request.user, served, provider, UsageStatus.ERROR, 0, started)
            raise
        _embedding_usage(request.user, served, provider, UsageStatus.COMPLETE, tokens, started)
        base64_encoded = data["encoding_format"] == "base64"
        return Response(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": _base64(vector) if base64_encoded else vector,
                    }
                    for i, vector in enumerate(vectors)
                ],
                "model": served,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _embedding_usage(user, model: str, provider: str, status: UsageStatus, tokens: int, started: float) -> None:
    """Record one ``/v1/embeddings`` request (source ``gateway``; ``tokens`` are prompt tokens)."""
    try:
        usage_record(
            user=user,
            model_slug=model,
            provider=provider,
            source=UsageSource.GATEWAY,
            status=status,
            prompt_tokens=tokens,
            completion_tokens=0,
            latency_ms=round((time.perf_counter() - started) * 1000),
        )
    except Exception:  # the vectors matter more than their bookkeeping
        logger.exception("Could not record usage of an embeddings request")


def _base64(vector: list[float]) -> str:
    """Return ``vector`` as base64 of little-endian float32s, OpenAI's ``encoding_format="base64"``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
