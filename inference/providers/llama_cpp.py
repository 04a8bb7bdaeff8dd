"""Local GGUF models on llama.cpp (llama-cpp-python).

A model is loaded once per process and kept; llama.cpp contexts are not thread-safe, so each loaded
model has a lock held for the whole of a generation. The prompt is formatted with the chat template
stored in the GGUF metadata (``tokenizer.chat_template``), the same one llama-cpp-python's own chat
handler uses, so that prompt tokens can be counted exactly and history trimmed to the context window.
"""

from __future__ import annotations

import atexit
import importlib.resources
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Chunk, ContextLengthExceeded, GenerationParams, ModelUnavailable, Provider, Usage

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
REPEAT_PENALTY = 1.1


def resolve_model_path(model: str) -> Path:
    """Return the GGUF file for ``model``: a path, or ``package:<package>/<file>`` inside an installed package.

    Raise :class:`ModelUnavailable` when the file or package does not exist.
    """
    if model.startswith(PACKAGE_PREFIX):
        package, _, name = model[len(PACKAGE_PREFIX) :].partition("/")
        try:
            path = Path(str(importlib.resources.files(package).joinpath(name)))
        except ModuleNotFoundError as exc:
            raise ModelUnavailable(f"Model package {package!r} is not installed.") from exc
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"Model file {path} does not exist.")
    return path


@dataclass
class LoadedModel:
    llama: object  # llama_cpp.Llama
    formatter: object  # llama_cpp.llama_chat_format.Jinja2ChatFormatter
    lock: threading.Lock
    n_ctx: int


_loaded: dict[tuple[str, int, int], LoadedModel] = {}
_loading_lock = threading.Lock()


def load_model(path: Path, *, n_ctx: int, n_threads: int) -> LoadedModel:
    """Load ``path`` once per process for this context size and thread count, and return it.

    ``n_threads=0`` lets llama.cpp choose. Raise :class:`ModelUnavailable` when loading fails.
    """
    key = (str(path), n_ctx, n_threads)
    with _loading_lock:
        if key in _loaded:
            return _loaded[key]
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        started = time.perf_counter()
        try:
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or None, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(f"Could not load {path.name}: {exc}") from exc
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelUnavailable(f"{path.name} has no chat template in its GGUF metadata.")
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        logger.info("Loaded %s (n_ctx=%d) in %.2f s", path.name, n_ctx, time.perf_counter() - started)
        _loaded[key] = LoadedModel(llama=llama, formatter=formatter, lock=threading.Lock(), n_ctx=n_ctx)
        return _loaded[key]


@atexit.register
def unload_all() -> None:
    """Free every loaded model (llama.cpp memory) and forget it."""
    with _loading_lock:
        for loaded in _loaded.values():
            # A daemon thread may still be generating at exit: don't wait for it forever.
            if loaded.lock.acquire(timeout=5):
                try:
                    loaded.llama.close()
                finally:
                    loaded.lock.release()
        _loaded.clear()


class LlamaCppProvider(Provider):
    """Run a GGUF model in this process.

    ``model`` is a path or ``package:<package>/<file>``; ``n_ctx`` is the context window in tokens.
    """

    def __init__(self, *, model: str, n_ctx: int, n_threads: int = 0):
        self.path = resolve_model_path(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads

    def _prompt_tokens(self, loaded: LoadedModel, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        response = loaded.formatter(messages=messages)
        tokens = loaded.llama.tokenize(
            response.prompt.encode("utf-8"), add_bos=not response.added_special, special=True
        )
        stop = response.stop if isinstance(response.stop, list) else [response.stop] if response.stop else []
        return tokens, stop

    def fit_messages(
        self, loaded: LoadedModel, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[list[int], list[str], int]:
        """Drop the oldest non-system messages until prompt + ``max_tokens`` fits the context window.

        The system prompt and the newest message are always kept. Return ``(prompt tokens, stop
        strings, completion budget)``; the budget is ``max_tokens`` or what room is left, if less.
        Raise :class:`ContextLengthExceeded` when the system prompt and newest message alone do not
        leave room for at least one completion token.
        """
        system = [m for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        while True:
            tokens, stop = self._prompt_tokens(loaded, system + rest)
            if len(tokens) + max_tokens <= loaded.n_ctx:
                return tokens, stop, max_tokens
            if len(rest) > 1:
                rest = rest[1:]
                # A conversation sent to a chat template starts with a user turn.
                while len(rest) > 1 and rest[0]["role"] != "user":
                    rest = rest[1:]
                continue
            room = loaded.n_ctx - len(tokens)
            if room >= 1:
                return tokens, stop, room
            raise ContextLengthExceeded(
                f"The message is {len(tokens)} tokens long with the prompt; this model's context "
                f"window is {loaded.n_ctx} tokens. Shorten the message."
            )

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        from llama_cpp import LogitsProcessorList

        loaded = load_model(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        sampled = 0

        def count_samples(input_ids, scores):
            # Called once per sampled token: an exact completion-token count for streamed output,
            # which llama-cpp-python does not report when streaming.
            nonlocal sampled
            sampled += 1
            return scores

        with loaded.lock:
            tokens, stop, budget = self.fit_messages(loaded, messages, params.max_tokens)
            finish_reason = "length"
            stream = loaded.llama.create_completion(
                prompt=tokens,
                max_tokens=budget,
                temperature=params.temperature,
                # llama.cpp's long-standing CLI default; without it small models such as the
                # bundled 135M one fall into loops ("la femme, la femme, ...") within a sentence.
                repeat_penalty=REPEAT_PENALTY,
                stop=stop + params.stop,
                stream=True,
                logits_processor=LogitsProcessorList([count_samples]),
            )
            try:
                for part in stream:
                    choice = part["choices"][0]
                    if choice["text"]:
                        yield Chunk(delta=choice["text"])
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if cancel is not None and cancel.is_set():
                        finish_reason = "cancelled"
                        break
            finally:
                stream.close()
        yield Chunk(finish_reason=finish_reason, usage=Usage(prompt_tokens=len(tokens), completion_tokens=sampled))
