"""The provider interface: stream a chat completion as text deltas, then report usage.

Every provider turns a list of chat messages (``[{"role": "system"|"user"|"assistant", "content": str}]``)
into a stream of :class:`Chunk`. Each chunk carries a text delta; the last one has an empty delta,
the ``finish_reason`` and the :class:`Usage`, as OpenAI's ``stream_options.include_usage`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from rest_framework import status

from core.errors import ParleyError


class InferenceError(ParleyError):
    """A generation that could not run or finish. ``code`` is one of the stable codes below."""

    code = "upstream_error"
    status_code = status.HTTP_502_BAD_GATEWAY


class ModelUnavailable(InferenceError):
    code = "model_unavailable"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE


class ContextLengthExceeded(InferenceError):
    code = "context_length_exceeded"
    status_code = status.HTTP_400_BAD_REQUEST


class ModelTimeout(InferenceError):
    """No first token, or no next token, within the model's timeouts."""

    code = "model_timeout"
    status_code = status.HTTP_504_GATEWAY_TIMEOUT


class ModelBusy(InferenceError):
    """The model's queue in this process is full; try again after ``retry_after`` seconds."""

    code = "model_busy"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE


class UpstreamRateLimited(InferenceError):
    """The remote server answered 429 on every try."""

    code = "upstream_rate_limited"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS


@dataclass
class Usage:
    """Token counts of one generation: prompt tokens read, completion tokens sampled."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Chunk:
    """One step of a stream: a text delta, or (last) the finish reason and usage."""

    delta: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    usage: Usage | None = None


@dataclass
class GenerationParams:
    """Sampling parameters. ``max_tokens`` counts completion tokens; ``temperature`` is 0..2."""

    max_tokens: int
    temperature: float
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    finish_reason: str | None
    usage: Usage


class Provider:
    """A way to run a model. Subclasses implement :meth:`stream`."""

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Yield text deltas as :class:`Chunk` objects, ending with one that carries usage.

        Blocking: call from a worker thread, not an event loop. When ``cancel`` is set the stream
        ends early with ``finish_reason="cancelled"``. Raise :class:`InferenceError` subclasses.
        """
        raise NotImplementedError

    def complete(self, messages: list[dict[str, str]], params: GenerationParams) -> Completion:
        """Return the whole answer at once. Blocking; same errors as :meth:`stream`."""
        parts, last = [], Chunk()
        for chunk in self.stream(messages, params):
            parts.append(chunk.delta)
            last = chunk
        return Completion(text="".join(parts), finish_reason=last.finish_reason, usage=last.usage or Usage())
