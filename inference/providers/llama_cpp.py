"""Local GGUF models on llama.cpp (llama-cpp-python).

A model is loaded once per process and kept; llama.cpp contexts are not thread-safe, so each loaded
model has a lock held for the whole of a generation. The prompt is formatted with the chat template
stored in the GGUF metadata (``tokenizer.chat_template``), the same one llama-cpp-python's own chat
handler uses, so that prompt tokens can be counted exactly and history trimmed to the context window.

Structured output and tools are grammars (GBNF, llama.cpp's constrained sampling), which hold any
model, however small, to the shape asked for:

- ``response_format`` ``json_object``: any JSON object (llama-cpp-python's ``JSON_GBNF``);
  ``json_schema``: a grammar built from the schema (``LlamaGrammar.from_json_schema``, llama.cpp's
  converter: objects, arrays, enum/const, anyOf/oneOf, string and number constraints).
- ``tools``: the functions are described in the system message, and the answer is held to one call
  ``{"name": <a tool's name>, "arguments": <its parameters schema>}``: with ``tool_choice``
  ``"required"`` or a named function the answer must be that call; with ``"auto"`` (the default) it
  may be that call or text (text may not start with ``{``). A call is returned as one tool call
  (``finish_reason`` ``tool_calls``); a model here makes at most one call per answer. ``"none"``:
  no tools offered. Earlier assistant ``tool_calls`` and ``tool`` results go into the prompt as text.
- Images (OpenAI ``image_url`` parts) need a vision model: the GGUF with its projector (``mmproj``)
  loaded through one of llama-cpp-python's multimodal chat handlers (:data:`VISION_CHAT_HANDLERS`),
  which formats the prompt and embeds the images itself (``create_chat_completion``); such a
  request takes neither tools nor a response format. A model without a projector refuses images.
- ``seed`` and ``top_p`` are llama.cpp's own; ``logprobs`` is refused (``unsupported_parameter``):
  llama-cpp-python computes them only for a model loaded with ``logits_all``, which costs memory per
  token of context for every request.
"""

from __future__ import annotations

import atexit
import importlib.resources
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from .base import (
    Chunk,
    ContextLengthExceeded,
    GenerationParams,
    ModelBusy,
    ModelTimeout,
    ModelUnavailable,
    Provider,
    UnsupportedParameter,
    Usage,
    content_text,
    image_count,
)

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
REPEAT_PENALTY = 1.1
BUSY_RETRY_AFTER = 5  # seconds a client is told to wait when a model's queue is full
# ModelConfig.vision_chat_handler -> llama-cpp-python's handler class (llama_cpp.llama_chat_format).
VISION_CHAT_HANDLERS = {
    "mtmd": "MTMDChatHandler",  # llama.cpp's libmtmd, with the GGUF's own chat template
    "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler",
    "moondream2": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
}


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


class TranscriptFormatter:
    """A plain-text chat format for GGUF files without a chat template (base models).

    Renders ``System:/User:/Assistant:`` paragraphs ending with an open ``Assistant:`` turn, and
    stops when the model starts writing the user's next turn.
    """

    labels = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}

    def __call__(self, *, messages: list[dict], **kwargs):
        from llama_cpp.llama_chat_format import ChatFormatterResponse

        turns = [f"{self.labels.get(m['role'], m['role'])}: {m['content']}" for m in messages]
        prompt = "\n\n".join([*turns, "Assistant:"])
        return ChatFormatterResponse(prompt=prompt, stop=["\nUser:"], added_special=False)


@dataclass(frozen=True)
class ModelKey:
    """What makes two loads of a GGUF the same llama.cpp context."""

    path: str
    n_ctx: int
    n_threads: int = 0  # 0: llama.cpp chooses
    n_gpu_layers: int = 0  # -1: all layers
    projector: str = ""  # a vision model's mmproj file ("" for text only)
    chat_handler: str = ""  # a key of VISION_CHAT_HANDLERS, with a projector


@dataclass
class LoadedModel:
    key: ModelKey
    llama: object  # llama_cpp.Llama
    formatter: object  # llama_cpp.llama_chat_format.Jinja2ChatFormatter
    # Held for the whole of a generation: a llama.cpp context is not thread-safe, and a new request
    # must never interrupt a running stream (it waits its turn instead).
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0  # generations running or waiting for the lock; guarded by ModelManager._lock
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    closed: bool = False  # unloaded: generations still queued on it must not touch it


class ModelManager:
    """The llama.cpp models loaded in this process: an LRU cache with a bounded queue per model.

    At most ``LLAMA_MAX_LOADED_MODELS`` models stay loaded; loading one more unloads the least
    recently used idle one. Each model admits at most ``max_queue`` generations (running or waiting)
    at a time; one more raises :class:`ModelBusy`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _models and every LoadedModel.active
        self._load_lock = threading.Lock()  # one load at a time: loading is CPU- and memory-heavy
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()

    def loaded(self) -> list[LoadedModel]:
        """Return the loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def is_loaded(self, key: ModelKey) -> bool:
        with self._lock:
            return key in self._models

    def get(self, key: ModelKey) -> LoadedModel:
        """Return the model for ``key``, loading it (and evicting an idle one) when needed.

        Raise :class:`ModelUnavailable` when llama.cpp cannot load the file or it has no chat template.
        """
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self._evict_over_limit()  # the limit is a setting: it may have been lowered
                return self._models[key]
        with self._load_lock:
            with self._lock:  # another thread may have loaded it while this one waited
                if key in self._models:
                    return self._models[key]
            loaded = self._load(key)
            with self._lock:
                self._models[key] = loaded
                self._evict_over_limit()
            return loaded

    def unload(self, key: ModelKey, *, log: bool = True) -> bool:
        """Unload ``key`` once its running generation (if any) ends. Return whether it was loaded."""
        with self._lock:
            loaded = self._models.pop(key, None)
        if loaded is None:
            return False
        with loaded.lock:  # waits for a running generation to finish
            loaded.closed = True
            loaded.llama.close()
        if log:
            logger.info("Unloaded %s", Path(key.path).name)
        return True

    def unload_all(self) -> None:
        """Unload every model. Runs at interpreter exit, when logging may already be shut down."""
        for key in [m.key for m in self.loaded()]:
            self.unload(key, log=False)

    @contextmanager
    def admit(self, loaded: LoadedModel, *, max_queue: int, wait_seconds: float):
        """Hold ``loaded``'s lock for one generation, queueing behind running ones.

        Raise :class:`ModelBusy` at once when ``max_queue`` generations are already running or
        waiting, and :class:`ModelTimeout` when the lock is not free within ``wait_seconds``.
        """
        with self._lock:
            if loaded.active >= max_queue:
                raise ModelBusy(
                    f"{Path(loaded.key.path).name} is busy: {loaded.active} generations running or "
                    f"queued (limit {max_queue}). Try again shortly.",
                    retry_after=BUSY_RETRY_AFTER,
                )
            loaded.active += 1
        try:
            if not loaded.lock.acquire(timeout=wait_seconds):
                raise ModelTimeout(f"Waited {wait_seconds:g} s in the queue for {Path(loaded.key.path).name}.")
            try:
                if loaded.closed:
                    raise ModelUnavailable(f"{Path(loaded.key.path).name} was unloaded by an operator; send again.")
                yield loaded
            finally:
                loaded.lock.release()
        finally:
            with self._lock:
                loaded.active -= 1

    def _evict_over_limit(self) -> None:
        # Call while holding self._lock.
        limit = max(1, settings.LLAMA_MAX_LOADED_MODELS)
        for key in list(self._models):
            if len(self._models) <= limit:
                return
            candidate = self._models[key]
            if candidate.active == 0 and key is not next(reversed(self._models)):
                del self._models[key]
                # Nothing can be generating: active is 0 and admission needs self._lock.
                candidate.closed = True
                candidate.llama.close()
                logger.info("Evicted %s (least recently used)", Path(key.path).name)

    def _load(self, key: ModelKey) -> LoadedModel:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        name = Path(key.path).name
        started = time.perf_counter()
        extra = {}
        try:
            if key.projector:
                from llama_cpp import llama_chat_format

                handler = VISION_CHAT_HANDLERS.get(key.chat_handler)
                if handler is None or not hasattr(llama_chat_format, handler):
                    raise ModelUnavailable(
                        f"Unknown vision chat handler {key.chat_handler!r}; one of {', '.join(VISION_CHAT_HANDLERS)}."
                    )
                extra["chat_handler"] = getattr(llama_chat_format, handler)(
                    clip_model_path=key.projector, verbose=False
                )
            llama = Llama(
                model_path=key.path,
                n_ctx=key.n_ctx,
                n_threads=key.n_threads or None,
                n_gpu_layers=key.n_gpu_layers,
                verbose=False,
                **extra,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(f"Could not load {name}: {exc}") from exc
        template = llama.metadata.get("tokenizer.chat_template")
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        if not template:
            logger.warning("%s has no chat template: using a plain User/Assistant transcript", name)
            seconds = time.perf_counter() - started
            return LoadedModel(key=key, llama=llama, formatter=TranscriptFormatter(), load_seconds=seconds)
        # The same formatter llama-cpp-python builds from the GGUF template for its own chat handler.
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        seconds = time.perf_counter() - started
        logger.info("Loaded %s (n_ctx=%d) in %.2f s", name, key.n_ctx, seconds)
        return LoadedModel(key=key, llama=llama, formatter=formatter, load_seconds=seconds)


manager = ModelManager()
atexit.register(manager.unload_all)


def load_model(path: Path, *, n_ctx: int, n_threads: int = 0, n_gpu_layers: int = 0) -> LoadedModel:
    """Return the loaded model for these parameters (see :meth:`ModelManager.get`)."""
    return manager.get(ModelKey(str(path), n_ctx, n_threads, n_gpu_layers))


TOOLS_PROMPT = (
    "You can call these functions:\n{tools}\n"
    'To call one, answer with only a JSON object: {{"name": <function name>, "arguments": <its arguments>}}.'
)
TOOLS_REQUIRED = " You must call one of them now."
# Text that is not a tool call: anything not starting with "{" (nor blank, which could lead to one).
TEXT_RULE = r"""text ::= [^{ \t\n] [^\x00]*"""


def _call_schema(tools: list[dict]) -> dict:
    """Return the JSON schema of one call of any of ``tools``: ``{"name": const, "arguments": parameters}``."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool["function"]["name"]},
                    "arguments": tool["function"].get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for tool in tools
        ]
    }


@dataclass
class Plan:
    """How one request is run: its messages for the chat template, the grammar (GBNF text, or None)
    and whether the answer is (``"required"``) or may be (``"auto"``) a tool call (``None``: text)."""

    messages: list[dict]
    grammar: str | None = None
    tool_mode: str | None = None


def _schema_grammar(schema: dict, param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare exceptions for schemas it cannot express
        raise UnsupportedParameter(f"{param}: this schema cannot be turned into a grammar: {exc}", param=param) from exc


def plan_request(messages: list[dict], params: GenerationParams, *, tool_role: bool) -> Plan:
    """Return the :class:`Plan` of ``messages`` under ``params`` (see the module docstring).

    ``tool_role``: whether the chat template knows the ``tool`` role (else tool results are sent as
    user messages). Raise :class:`UnsupportedParameter` for ``logprobs``, for a schema the grammar
    converter cannot express, and for ``response_format`` together with tools offered.
    """
    from llama_cpp.llama_grammar import JSON_GBNF

    if params.logprobs:
        raise UnsupportedParameter("logprobs: local llama.cpp models do not return logprobs.", param="logprobs")
    plan = Plan(messages=[_template_message(m, tool_role=tool_role) for m in messages])
    tools = params.tools if params.tool_choice != "none" else None
    if tools and params.response_format:
        raise UnsupportedParameter(
            "response_format: a local model answers either with a tool call or in a response format, not both.",
            param="response_format",
        )
    if tools:
        choice = params.tool_choice or "auto"
        if isinstance(choice, dict):
            tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
        described = [
            {key: t["function"][key] for key in ("name", "description", "parameters") if key in t["function"]}
            for t in tools
        ]
        prompt = TOOLS_PROMPT.format(tools=json.dumps(described, ensure_ascii=False))
        if choice != "auto":
            prompt += TOOLS_REQUIRED
        system = [m for m in plan.messages if m["role"] == "system"]
        if system:
            system[0]["content"] = f"{system[0]['content']}\n\n{prompt}"
        else:
            plan.messages.insert(0, {"role": "system", "content": prompt})
        grammar = _schema_grammar(_call_schema(tools), "tools")
        if choice == "auto":
            grammar = grammar.replace("root ::=", "call ::=", 1) + f"\nroot ::= call | text\n{TEXT_RULE}\n"
            plan.tool_mode = "auto"
        else:
            plan.tool_mode = "required"
        plan.grammar = grammar
    elif params.response_format:
        if params.response_format["type"] == "json_schema":
            schema = (params.response_format.get("json_schema") or {}).get("schema")
            plan.grammar = _schema_grammar(schema, "response_format") if schema else JSON_GBNF
        elif params.response_format["type"] == "json_object":
            plan.grammar = JSON_GBNF
    return plan


def _template_message(message: dict, *, tool_role: bool) -> dict:
    """Return ``message`` as a chat template reads it (``{"role", "content": str}``): an assistant's
    tool calls written after its text as the JSON it answered with; a tool result as a ``tool``
    message, or a user one for a template without that role."""
    content = content_text(message.get("content"))
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            try:
                arguments = json.loads(call["function"]["arguments"] or "{}")
            except ValueError:
                arguments = call["function"]["arguments"]
            calls.append(json.dumps({"name": call["function"]["name"], "arguments": arguments}, ensure_ascii=False))
        content = "\n".join([content, *calls] if content else calls)
    if message["role"] == "tool" and not tool_role:
        return {"role": "user", "content": f"Result of {message.get('tool_call_id', 'the call')}: {content}"}
    return {"role": message["role"], "content": content}


def parse_tool_call(text: str, tools: list[dict]) -> dict | None:
    """Return ``text`` as a whole tool call (``{"id", "type", "function": {"name", "arguments"}}``) when
    it is one JSON call of one of ``tools``, else None (e.g. cut off by ``max_tokens``)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    names = {t["function"]["name"] for t in tools}
    if not isinstance(value, dict) or value.get("name") not in names or not isinstance(value.get("arguments"), dict):
        return None
    arguments = json.dumps(value["arguments"], ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": value["name"], "arguments": arguments},
    }


class LlamaCppProvider(Provider):
    """Run a GGUF model in this process.

    ``model`` is a path or ``package:<package>/<file>``; ``n_ctx`` is the context window in tokens;
    ``stop`` extra stop strings; ``max_queue`` and ``queue_timeout`` (seconds) bound the wait for a
    model that is busy with other generations. ``projector`` (a path or ``package:...``) is a vision
    model's mmproj file, read by ``chat_handler`` (a key of :data:`VISION_CHAT_HANDLERS`); raise
    :class:`ModelUnavailable` when the model or projector file is missing.
    """

    def __init__(
        self,
        *,
        model: str,
        n_ctx: int,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        stop: list[str] | None = None,
        max_queue: int = 8,
        queue_timeout: float = 60.0,
        projector: str = "",
        chat_handler: str = "mtmd",
    ):
        self.path = resolve_model_path(model)
        if projector:  # one load serves text and images: the model is loaded with its projector
            try:
                projector = str(resolve_model_path(projector))
            except ModelUnavailable as exc:
                raise ModelUnavailable(f"The vision projector (mmproj) cannot be found: {exc.detail}") from exc
        self.key = ModelKey(
            str(self.path), n_ctx, n_threads, n_gpu_layers, projector, (chat_handler or "mtmd") if projector else ""
        )
        self.n_ctx = n_ctx
        self.stop = stop or []
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout

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
            if len(tokens) + max_tokens <= loaded.key.n_ctx:
                return tokens, stop, max_tokens
            if len(rest) > 1:
                rest = rest[1:]
                # A conversation sent to a chat template starts with a user turn.
                while len(rest) > 1 and rest[0]["role"] != "user":
                    rest = rest[1:]
                continue
            room = loaded.key.n_ctx - len(tokens)
            if room >= 1:
                return tokens, stop, room
            raise ContextLengthExceeded(
                f"The message is {len(tokens)} tokens long with the prompt; this model's context "
                f"window is {loaded.key.n_ctx} tokens. Shorten the message."
            )

    def stream(
        self, messages: list[dict], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        if image_count(messages):
            yield from self._stream_vision(messages, params, cancel)
            return
        loaded = manager.get(self.key)
        template = getattr(loaded.formatter, "template", None)
        plan = plan_request(messages, params, tool_role=template is None or "tool" in template)
        messages = plan.messages
        grammar = LlamaGrammar.from_string(plan.grammar) if plan.grammar else None
        extra = {"seed": params.seed} if params.seed is not None else {}
        if params.top_p is not None:
            extra["top_p"] = params.top_p
        held: list[str] | None = [] if plan.tool_mode == "required" else None  # a call's text, held back
        undecided = plan.tool_mode == "auto"  # an "auto" answer is a call when its first character is "{"
        sampled = 0

        def count_samples(input_ids, scores):
            # Called once per sampled token: an exact completion-token count for streamed output,
            # which llama-cpp-python does not report when streaming.
            nonlocal sampled
            sampled += 1
            return scores

        with manager.admit(loaded, max_queue=self.max_queue, wait_seconds=self.queue_timeout):
            tokens, stop, budget = self.fit_messages(loaded, messages, params.max_tokens)
            finish_reason = "length"
            stream = loaded.llama.create_completion(
                prompt=tokens,
                max_tokens=budget,
                temperature=params.temperature,
                # llama.cpp's long-standing CLI default; without it small models such as the
                # bundled 135M one fall into loops ("la femme, la femme, ...") within a sentence.
                repeat_penalty=REPEAT_PENALTY,
                stop=stop + self.stop + params.stop,
                stream=True,
                logits_processor=LogitsProcessorList([count_samples]),
                grammar=grammar,
                **extra,
            )
            try:
                for part in stream:
                    choice = part["choices"][0]
                    text = choice["text"]
                    if text and undecided:
                        held, undecided = ([] if text.startswith("{") else None), False
                    if text and held is not None:
                        held.append(text)
                    elif text:
                        yield Chunk(delta=text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if cancel is not None and cancel.is_set():
                        finish_reason = "cancelled"
                        break
            finally:
                stream.close()
        if held is not None:
            call = parse_tool_call("".join(held), params.tools or []) if finish_reason != "cancelled" else None
            if call is not None:
                finish_reason = "tool_calls"
                yield Chunk(tool_calls=[{"index": 0, **call}])
            elif held:  # not a whole call (cut off by max_tokens, or stopped): the text as it is
                yield Chunk(delta="".join(held))
        yield Chunk(finish_reason=finish_reason, usage=Usage(prompt_tokens=len(tokens), completion_tokens=sampled))

    def _stream_vision(
        self, messages: list[dict], params: GenerationParams, cancel: threading.Event | None
    ) -> Iterator[Chunk]:
        """Stream an answer to messages with images through the model's multimodal chat handler.

        The handler formats the prompt with the images embedded (so the history is not trimmed to
        the context window here: llama.cpp raises when it does not fit, a ``context_length_exceeded``).
        """
        from llama_cpp import LogitsProcessorList

        for param in ("tools", "response_format", "logprobs"):
            if getattr(params, param):
                raise UnsupportedParameter(
                    f"{param}: a local model answering about images takes no {param}.", param=param
                )
        if not self.key.projector:
            raise ModelUnavailable(
                f"{self.path.name} has no vision projector (mmproj) configured, so it cannot read images: set "
                "the model's vision projector, or turn its vision support off."
            )
        loaded = manager.get(self.key)
        extra = {"seed": params.seed} if params.seed is not None else {}
        if params.top_p is not None:
            extra["top_p"] = params.top_p
        sampled = 0

        def count_samples(input_ids, scores):
            nonlocal sampled
            sampled += 1
            return scores

        finish_reason = "length"
        with manager.admit(loaded, max_queue=self.max_queue, wait_seconds=self.queue_timeout):
            try:
                stream = loaded.llama.create_chat_completion(
                    messages=messages,
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    repeat_penalty=REPEAT_PENALTY,
                    stop=self.stop + params.stop,
                    stream=True,
                    logits_processor=LogitsProcessorList([count_samples]),
                    **extra,
                )
                for part in stream:
                    choice = part["choices"][0]
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        yield Chunk(delta=text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if cancel is not None and cancel.is_set():
                        finish_reason = "cancelled"
                        break
            except ValueError as exc:  # llama-cpp-python: "Requested tokens (...) exceed context window of ..."
                if "context window" in str(exc):
                    raise ContextLengthExceeded(str(exc)) from exc
                raise
            prompt_tokens = max(0, loaded.llama.n_tokens - sampled)
        yield Chunk(finish_reason=finish_reason, usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=sampled))
