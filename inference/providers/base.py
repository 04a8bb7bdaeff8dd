"""The provider interface: stream a chat completion as text and tool-call deltas, then report usage.

Every provider turns a list of chat messages into a stream of :class:`Chunk`. A message is OpenAI's
shape, reduced to what models read::

    {"role": "system" | "user", "content": str}
    {"role": "assistant", "content": str | None, "tool_calls"?: [ToolCall, ...]}
    {"role": "tool", "tool_call_id": str, "content": str}

A user message with images has OpenAI's list content instead of a string: ``[{"type": "text",
"text": str}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}, ...]``
(:mod:`inference.images`); :func:`content_text` reads the text of either.

where a ``ToolCall`` is ``{"id": str, "type": "function", "function": {"name": str, "arguments": str}}``
(``arguments``: a JSON object as a string, as the model wrote it). Chat turns send only the first and
plain assistant messages; ``/v1/chat/completions`` may send all of them.

Each chunk carries a text delta and/or tool-call deltas; the last one has an empty delta, the
``finish_reason`` and the :class:`Usage`, as OpenAI's ``stream_options.include_usage`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rest_framework import status

from core.errors import ParleyError

# Prompt tokens one image is estimated at before a model counts them (routing, budget reservations):
# OpenAI's high-detail count for a 1024 x 1024 image, 85 + 4 tiles x 170.
IMAGE_PROMPT_TOKENS = 765


def content_text(content) -> str:
    """Return the text of a message's content: a string, or its text parts joined with newlines."""
    if isinstance(content, str) or content is None:
        return content or ""
    return "\n".join(part.get("text") or "" for part in content if part.get("type") == "text")


def content_images(content) -> list[dict]:
    """Return the ``image_url`` parts of a message's content (none for string content)."""
    if isinstance(content, str) or content is None:
        return []
    return [part for part in content if part.get("type") == "image_url"]


def image_count(messages: list[dict]) -> int:
    """Return how many images ``messages`` hold."""
    return sum(len(content_images(m.get("content"))) for m in messages)


def prompt_chars(messages: list[dict]) -> int:
    """Return the characters of ``messages``' text, each image counted as the characters of
    :data:`IMAGE_PROMPT_TOKENS` at 4 a token: what estimates of prompt tokens start from."""
    return sum(len(content_text(m.get("content"))) for m in messages) + image_count(messages) * IMAGE_PROMPT_TOKENS * 4


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


class UnsupportedParameter(InferenceError):
    """A request parameter the model (its config, or its provider) cannot honour; ``param`` names it."""

    code = "unsupported_parameter"
    status_code = status.HTTP_400_BAD_REQUEST
    upstream_status = 400  # the request is wrong, not the deployment: routing does not fail over

    def __init__(self, detail: str, *, param: str):
        super().__init__(detail)
        self.param = param


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
    """One step of a stream: a text delta and/or tool-call deltas, or (last) the finish reason and usage.

    ``tool_calls`` are OpenAI's streamed delta shape: ``[{"index": int, "id"?: str, "type"?: "function",
    "function": {"name"?: str, "arguments"?: str}}]``; the first delta of a call carries its id and
    name, later ones fragments of its arguments to append (:class:`ToolCallAssembler` joins them).
    ``logprobs`` are OpenAI's ``choices[].logprobs.content`` entries of this delta's tokens:
    ``[{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]``, when asked for.
    """

    delta: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" | "cancelled"
    usage: Usage | None = None
    tool_calls: list[dict] | None = None
    logprobs: list[dict] | None = None


@dataclass
class GenerationParams:
    """Sampling parameters. ``max_tokens`` counts completion tokens; ``temperature`` is 0..2.

    The rest are OpenAI's, None when the request did not send them (chat turns never do), and reach
    only models whose config says they support them (the ``/v1`` gateway refuses the others):
    ``tools`` ``[{"type": "function", "function": {"name", "description"?, "parameters"?: JSON schema}}]``;
    ``tool_choice`` ``"none"|"auto"|"required"`` or ``{"type": "function", "function": {"name"}}``;
    ``parallel_tool_calls``; ``response_format`` ``{"type": "text"|"json_object"}`` or
    ``{"type": "json_schema", "json_schema": {"name", "schema"?, "strict"?}}``; ``seed``; ``top_p``
    (0..1); ``logprobs`` and ``top_logprobs`` (0..20).
    """

    max_tokens: int
    temperature: float
    stop: list[str] = field(default_factory=list)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    seed: int | None = None
    top_p: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def extras(self) -> dict[str, Any]:
        """Return the OpenAI parameters beyond max_tokens/temperature/stop that were set (not None), by name."""
        names = (
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "seed",
            "top_p",
            "logprobs",
            "top_logprobs",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class ToolCallAssembler:
    """Join streamed tool-call deltas (:attr:`Chunk.tool_calls`) into whole calls.

    :meth:`add` takes each chunk's deltas; :attr:`calls` is the list of whole calls so far, in index
    order: ``[{"id", "type": "function", "function": {"name", "arguments": str}}]``.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict] = {}

    def add(self, deltas: list[dict] | None) -> None:
        for delta in deltas or ():
            index = delta.get("index", 0)
            empty = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            call = self._calls.setdefault(index, empty)
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    @property
    def calls(self) -> list[dict]:
        return [self._calls[index] for index in sorted(self._calls)]


def tool_call_deltas(calls: list[dict]) -> list[dict]:
    """Return whole ``calls`` as the streamed deltas of one chunk (each with its index, id and whole arguments)."""
    return [
        {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
        }
        for index, call in enumerate(calls)
    ]


@dataclass
class Completion:
    """A whole (non-streamed) answer; ``tool_calls`` the whole calls (see :class:`ToolCallAssembler`)."""

    text: str
    finish_reason: str | None
    usage: Usage
    tool_calls: list[dict] = field(default_factory=list)


class Provider:
    """A way to run a model. Subclasses implement :meth:`stream`."""

    def stream(
        self, messages: list[dict], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Yield text and tool-call deltas as :class:`Chunk` objects, ending with one that carries usage.

        Blocking: call from a worker thread, not an event loop. When ``cancel`` is set the stream
        ends early with ``finish_reason="cancelled"``. Raise :class:`InferenceError` subclasses.
        """
        raise NotImplementedError

    def complete(self, messages: list[dict], params: GenerationParams) -> Completion:
        """Return the whole answer at once. Blocking; same errors as :meth:`stream`."""
        parts, last, calls = [], Chunk(), ToolCallAssembler()
        for chunk in self.stream(messages, params):
            parts.append(chunk.delta)
            calls.add(chunk.tool_calls)
            last = chunk
        return Completion(
            text="".join(parts), finish_reason=last.finish_reason, usage=last.usage or Usage(), tool_calls=calls.calls
        )
