"""Remote models behind any OpenAI-compatible server (vLLM, OpenAI, OpenRouter, Ollama, llama.cpp server).

Uses the official ``openai`` SDK. The API key is read from the environment variable the model
config names; it is never stored or logged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import openai

from .base import Chunk, ContextLengthExceeded, GenerationParams, InferenceError, ModelUnavailable, Provider, Usage


class OpenAICompatibleProvider(Provider):
    """Stream chat completions from ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``) for model ``model``."""

    def __init__(self, *, model: str, base_url: str, api_key: str | None, timeout: float = 60.0):
        self.model = model
        # Servers without auth (llama.cpp, vLLM, Ollama) accept any key; the SDK insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=0)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        usage = Usage()
        finish_reason = None
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stop=params.stop or None,
                stream=True,
                stream_options={"include_usage": True},
            )
            with stream:
                for part in stream:
                    if part.usage is not None:
                        usage = Usage(
                            prompt_tokens=part.usage.prompt_tokens or 0,
                            completion_tokens=part.usage.completion_tokens or 0,
                        )
                    for choice in part.choices:
                        if choice.delta and choice.delta.content:
                            yield Chunk(delta=choice.delta.content)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                    if cancel is not None and cancel.is_set():
                        finish_reason = "cancelled"
                        break
        except openai.APIConnectionError as exc:
            raise ModelUnavailable(f"Could not reach the model server: {exc}") from exc
        except openai.BadRequestError as exc:
            if "context" in str(exc).lower():
                raise ContextLengthExceeded(str(exc.message)) from exc
            raise InferenceError(f"The model server refused the request: {exc.message}") from exc
        except openai.APIError as exc:
            raise InferenceError(f"The model server failed: {exc.message}") from exc
        yield Chunk(finish_reason=finish_reason or "stop", usage=usage)
