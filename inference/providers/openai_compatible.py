"""Remote models behind any OpenAI-compatible server (vLLM, OpenAI, OpenRouter, Ollama, llama.cpp server).

Uses the official ``openai`` SDK (its own retries off: retries here happen only before the first
token, so streamed text is never duplicated). The API key is read from the environment variable the
model config names; it is never stored or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator

# The openai SDK's HTTP layer (a dependency of it): its timeouts, limits and transport errors.
import httpx2
import openai

from .base import (
    Chunk,
    Completion,
    ContextLengthExceeded,
    GenerationParams,
    InferenceError,
    ModelTimeout,
    ModelUnavailable,
    Provider,
    UpstreamRateLimited,
    Usage,
    prompt_chars,
)

logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.5  # seconds before the first retry
BACKOFF_CAP = 8.0  # longest wait between two tries, seconds
# Characters per token, to estimate prompt tokens when a server reports no usage: OpenAI's rule of
# thumb for English text ("about 4 characters per token", help.openai.com, "What are tokens").
CHARS_PER_TOKEN = 4


@functools.lru_cache(maxsize=64)
def _client(base_url: str, api_key: str, connect_timeout: float, read_timeout: float) -> openai.OpenAI:
    """Return a shared client per server, key and timeouts: building one costs ~30 ms, and a shared
    one keeps its HTTP connections alive between turns. (The SDK's clients are thread-safe.)"""
    timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
    # Servers without auth (llama.cpp, vLLM, Ollama) accept any key; the SDK insists on one.
    return openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=0)


# One AsyncOpenAI client per event loop and server: its HTTP connection pool belongs to the loop it
# was first used on. Daphne runs one loop per process, so a server process keeps one client per server.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _async_client(base_url: str, api_key: str, connect_timeout: float, read_timeout: float) -> openai.AsyncOpenAI:
    """Return the running loop's shared async client for a server, key and timeouts (see :func:`_client`)."""
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    key = (base_url, api_key, connect_timeout, read_timeout)
    if key not in clients:
        timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=100)
        clients[key] = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits),
        )
    return clients[key]


@contextlib.contextmanager
def _stream_errors():
    """Translate errors met while reading a stream that has started (no retry then: the caller keeps
    the text so far) into Parley's error codes."""
    try:
        yield
    except openai.APIError as exc:
        raise translate_error(exc) from exc
    except httpx2.TimeoutException as exc:
        raise translate_error(openai.APITimeoutError(request=exc.request)) from exc
    except (httpx2.HTTPError, ValueError) as exc:  # a broken connection, or a body that is not JSON
        raise InferenceError(f"The model server's stream broke off: {exc}") from exc


class _EventData:
    """Turn the lines of a server-sent event stream into each event's ``data``.

    https://html.spec.whatwg.org/multipage/server-sent-events.html: lines ``data: ...`` (several
    join with newlines) end with a blank line; comments (``:``) and other fields are skipped.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line; return the event's data when ``line`` ends an event, else None."""
        if line.startswith("data:"):
            self._lines.append(line[5:].removeprefix(" "))
        elif not line and self._lines:
            data, self._lines = "\n".join(self._lines), []
            return data
        return None


def backoff_delay(attempt: int) -> float:
    """Return seconds to wait before retry ``attempt`` (0-based): exponential backoff, full jitter.

    ``uniform(0, min(cap, base * 2**attempt))`` ("Exponential Backoff And Jitter", AWS Architecture
    Blog, 2015): spreads retries of many clients so they do not hit a recovering server together.
    """
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))  # noqa: S311 (not crypto)


def _retry_after(exc: openai.APIStatusError) -> int | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return max(0, int(float(value))) if value else None
    except ValueError:
        return None


def translate_error(exc: Exception) -> InferenceError:
    """Map an ``openai`` SDK error to Parley's stable error codes."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(f"The model server did not answer in time: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(f"Could not reach the model server: {exc}")
    if isinstance(exc, openai.RateLimitError):
        return UpstreamRateLimited(
            f"The model server is rate limiting requests: {exc.message}", retry_after=_retry_after(exc)
        )
    if isinstance(exc, openai.APIStatusError):
        message = exc.message or str(exc)
        if exc.status_code in (400, 413) and "context" in message.lower():
            return ContextLengthExceeded(message)
        error = InferenceError(f"The model server answered {exc.status_code}: {message}")
        error.upstream_status = exc.status_code  # routing tells a failing server from a bad request by it
        return error
    return InferenceError(f"The model server failed: {exc}")


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)


def _retry_delay(exc: openai.APIError, attempt: int, max_retries: int) -> float:
    """Return seconds to wait before trying again after ``exc`` on try ``attempt`` (0-based).

    Raise the translated error (see :func:`translate_error`) when it must not be retried or the
    tries are used up. A server's ``Retry-After`` is honoured up to ``BACKOFF_CAP``.
    """
    if attempt == max_retries or not _retryable(exc):
        raise translate_error(exc) from exc
    delay = backoff_delay(attempt)
    if isinstance(exc, openai.APIStatusError):
        delay = max(delay, min(BACKOFF_CAP, _retry_after(exc) or 0))
    logger.warning("Model server error (%s); retry %d in %.2f s", type(exc).__name__, attempt + 1, delay)
    return delay


class _StreamState:
    """What a stream has told so far: usage, finish reason, content chunks and characters."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.parts = 0

    def read_event(self, data: str, request) -> list[Chunk] | None:
        """Return the text chunks of one event's ``data`` (a JSON ``chat.completion.chunk``), or None at ``[DONE]``.

        Raise ``openai.APIError`` for an error event, as OpenAI's own client does. The chunk is read as
        JSON: building a typed ``ChatCompletionChunk`` per chunk was about two thirds of the CPU a
        streamed token cost Parley (cProfile of a 2,000-chunk turn: 0.66 of 1.03 s in
        ``openai._models.construct``).
        """
        if data == "[DONE]":
            return None
        part = json.loads(data)
        if part.get("error"):
            error = part["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise openai.APIError(message or "error", request, body=error)
        return self.read_data(part)

    def read_data(self, part: dict) -> list[Chunk]:
        """Return the text chunks of one chunk decoded from JSON, noting its usage and finish reason."""
        chunks = []
        usage = part.get("usage")
        if usage:
            self.usage = Usage(
                prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0
            )
        for choice in part.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content") or ""
            # (A server that sends a single call may leave out its index; OpenAI's shape has it.)
            tool_calls = [{"index": 0, **call} for call in delta.get("tool_calls") or ()] or None
            logprobs = (choice.get("logprobs") or {}).get("content") or None
            if content or tool_calls or logprobs:
                self.parts += 1
                chunks.append(Chunk(delta=content, tool_calls=tool_calls, logprobs=logprobs))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return chunks

    def last(self, messages: list[dict[str, str]]) -> Chunk:
        usage = self.usage or estimate_usage(messages, completion_chunks=self.parts)
        return Chunk(finish_reason=self.finish_reason or "stop", usage=usage)


class OpenAICompatibleProvider(Provider):
    """Chat completions from ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``) for model ``model``.

    ``connect_timeout`` and ``read_timeout`` are seconds (the read timeout bounds the wait for each
    piece of the response, so it covers both time to first token and idle time between tokens);
    ``max_retries`` retries connection errors, 429 and 5xx before the first token only.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str | None,
        stop: list[str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_retries: int = 2,
    ):
        self.model = model
        self.stop = stop or []
        self.max_retries = max_retries
        self.client_args = (base_url, api_key or "", connect_timeout, read_timeout)
        self.client = _client(*self.client_args)

    def _arguments(self, messages, params: GenerationParams, *, stream: bool) -> dict:
        """The request body: Parley's messages and parameters, with OpenAI's optional ones (tools,
        response_format, seed, top_p, logprobs, ...) passed through as sent when set."""
        return {
            "model": self.model,
            "messages": [wire_message(m) for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stop": (self.stop + params.stop) or None,
            **params.extras(),
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }

    def _request(self, messages, params: GenerationParams):
        """Send a whole (non-streamed) request, retrying what is safe to retry."""
        for attempt in range(self.max_retries + 1):
            try:
                return self.client.chat.completions.create(**self._arguments(messages, params, stream=False))
            except openai.APIError as exc:
                time.sleep(_retry_delay(exc, attempt, self.max_retries))
        raise AssertionError("unreachable")

    def stream(
        self, messages: list[dict], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        arguments = self._arguments(messages, params, stream=True)
        state, events = _StreamState(), _EventData()
        with contextlib.ExitStack() as stack:
            for attempt in range(self.max_retries + 1):
                try:
                    response = stack.enter_context(
                        self.client.chat.completions.with_streaming_response.create(**arguments)
                    )
                    break
                except openai.APIError as exc:
                    time.sleep(_retry_delay(exc, attempt, self.max_retries))
            with _stream_errors():
                for line in response.iter_lines():
                    data = events.feed(line)
                    chunks = state.read_event(data, response.http_request) if data is not None else []
                    if chunks is None:
                        break
                    yield from chunks
                    if cancel is not None and cancel.is_set():
                        state.finish_reason = "cancelled"
                        break
        yield state.last(messages)

    async def astream(
        self, messages: list[dict], params: GenerationParams, cancel: threading.Event | None = None
    ) -> AsyncIterator[Chunk]:
        """See :meth:`stream`; on the event loop, with the loop's shared ``AsyncOpenAI`` client."""
        client = _async_client(*self.client_args)
        arguments = self._arguments(messages, params, stream=True)
        state, events = _StreamState(), _EventData()
        async with contextlib.AsyncExitStack() as stack:
            for attempt in range(self.max_retries + 1):
                try:
                    response = await stack.enter_async_context(
                        client.chat.completions.with_streaming_response.create(**arguments)
                    )
                    break
                except openai.APIError as exc:
                    await asyncio.sleep(_retry_delay(exc, attempt, self.max_retries))
            with _stream_errors():
                async for line in response.iter_lines():
                    data = events.feed(line)
                    chunks = state.read_event(data, response.http_request) if data is not None else []
                    if chunks is None:
                        break
                    for chunk in chunks:
                        yield chunk
                    if cancel is not None and cancel.is_set():
                        state.finish_reason = "cancelled"
                        break
        yield state.last(messages)

    def complete(self, messages: list[dict], params: GenerationParams) -> Completion:
        response = self._request(messages, params)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice and choice.message else "") or ""
        tool_calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in ((choice.message.tool_calls if choice and choice.message else None) or [])
            if getattr(call, "function", None) is not None
        ]
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens or 0,
                completion_tokens=response.usage.completion_tokens or 0,
            )
        else:
            usage = estimate_usage(messages, completion_chunks=max(1, len(text) // CHARS_PER_TOKEN))
        return Completion(
            text=text, finish_reason=choice.finish_reason if choice else None, usage=usage, tool_calls=tool_calls
        )


def wire_message(message: dict) -> dict:
    """Return a Parley message (see :mod:`inference.providers.base`) as OpenAI's wire sends it: an
    assistant message that only calls tools has ``content`` null."""
    if message.get("tool_calls") and not message.get("content"):
        return {**message, "content": None}
    return message


def estimate_usage(messages: list[dict[str, str]], *, completion_chunks: int) -> Usage:
    """Estimate usage for a server that reports none.

    OpenAI-compatible servers stream one token per chunk, so completion tokens are the content chunks
    counted; prompt tokens are estimated at ``CHARS_PER_TOKEN`` characters per token (an image as
    ``IMAGE_PROMPT_TOKENS``).
    """
    return Usage(prompt_tokens=max(1, prompt_chars(messages) // CHARS_PER_TOKEN), completion_tokens=completion_chunks)
