"""The generation pipeline: one model answer, the same way for every caller.

Chat turns (WebSocket, SSE, REST, Celery execution), ``/v1/chat/completions`` (streamed or not) and
``cache warm`` all produce an answer through :class:`Generation`. It owns, in one place:

- the ``llm`` response cache with single flight: of concurrent identical misses one generates (holding
  a lease in Redis, renewed while it works), the others wait for its answer and replay it; a request
  that wins the lease reads the cache once more, since the holder may have stored its answer and
  released just before;
- the ``semantic`` layer (models that opt in): a first question matched by embedding similarity;
- replay of a cached answer as chunks of a few words, as a live answer streams;
- routing (:mod:`inference.routing`): the deployment of the model that serves the answer, by the
  model's strategy and the state every process shares in Redis; before the first token only, a
  failing deployment hands the request to the next one, then to the model's fallback models;
- the provider stream: async providers (``astream``, e.g. the OpenAI-compatible one on
  ``openai.AsyncOpenAI``) run on the event loop; blocking ones (llama.cpp) in a worker thread that hands
  chunks to the loop without blocking it, waking it only when it waits for them;
- time to first token (TTFT) and idle timeouts, stop (the text so far kept), and the outcome: text,
  usage, finish reason, TTFT and whether it came from a cache.

Admission and metering (rate limits, slots, quota, usage records) are the caller's, through
:mod:`accounts.metering`, since only the caller knows who asks and through which path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings

from .cache import CacheLayer, answer_entry, canonical_key, replay_deltas, semantic_lookup, semantic_store
from .cache import layer as cache_layer
from .images import messages_for_model
from .models import ModelConfig
from .providers import (
    Chunk,
    GenerationParams,
    ModelTimeout,
    ToolCallAssembler,
    Usage,
    content_text,
    image_count,
    tool_call_deltas,
)
from .routing import Router, renew_while_running, slot_release
from .services import (
    cache_allowed,
    cache_owner,
    generation_params,
    llm_cache_key,
    model_fingerprint,
    provider_for,
    usage_cost,
)

logger = logging.getLogger(__name__)

SINGLE_FLIGHT_POLL_SECONDS = 0.05  # how often a request waiting for an identical one looks for its answer
STOP_GRACE_SECONDS = 1.0  # how long a stopped provider may take to end with its usage
STOP_POLL_SECONDS = 0.25  # longest a stop waits to be noticed while no chunk arrives


@dataclass
class Outcome:
    """What a generation produced. ``ttft_ms`` counts from the caller's ``started`` (milliseconds);
    ``finish_reason`` is ``stop``, ``length``, ``tool_calls`` or ``cancelled``; ``tool_calls`` the whole
    tool calls the model made (``[{"id", "type": "function", "function": {"name", "arguments": str}}]``,
    see :class:`inference.providers.ToolCallAssembler`; empty for a text answer); ``logprobs`` the
    answer's token logprobs when asked for (OpenAI's ``logprobs.content`` entries); ``cache`` describes
    the cache lookup:
    ``{"layer": "llm"|"semantic", "key"?: first 16 hex chars, "hit": bool, "waited"?: bool, "similarity"?: float}``;
    ``route`` says which deployment served a live answer and why (:attr:`inference.routing.Router.route`;
    empty for a cached one); ``served_by`` is the model config that answered (the model or a fallback)."""

    content: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list[dict] | None = None
    ttft_ms: int | None = None
    cached: bool = False
    cache: dict = field(default_factory=dict)
    route: dict = field(default_factory=dict)
    served_by: ModelConfig | None = field(default=None, repr=False)

    def cost(self, config: ModelConfig) -> Decimal | None:
        """Return the USD cost of this answer at the prices of the model that served it (``config``, or
        the fallback model that answered for it); None for a cached answer (it cost nothing)."""
        if self.cached or self.usage is None:
            return None
        return usage_cost(
            model=self.served_by or config,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
        )


_DONE = object()


class _LinkedEvent(threading.Event):
    """An event that also counts as set while ``parent`` is: one try's stop, linked to the generation's."""

    def __init__(self, parent: threading.Event):
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()


class _Feed:
    """Chunks handed from a producer (a worker thread or a task) to the consumer on the event loop.

    The producer wakes the loop only when the consumer waits for chunks (it is "armed"): while the
    consumer is busy, chunks gather and are taken together, so a fast producer costs one wake-up per
    batch, not per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._armed = False

    def _add(self, item) -> bool:
        with self._lock:
            self._items.append(item)
            wake, self._armed = self._armed, False
        return wake

    def put(self, item) -> None:
        """Add ``item`` from a task on the loop."""
        if self._add(item):
            self.event.set()

    def put_threadsafe(self, item) -> None:
        """Add ``item`` from another thread. Return quietly if the loop has closed (its consumer is gone)."""
        if self._add(item):
            try:
                self.loop.call_soon_threadsafe(self.event.set)
            except RuntimeError:  # the loop closed: nobody is listening any more
                pass

    def take(self) -> list:
        """Return every item so far and arm the wake-up when there were none (on the loop)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._armed = not items
            if not items:
                self.event.clear()
        return items

    def wake(self) -> None:
        """Wake the consumer now (on the loop): e.g. a stop."""
        self.event.set()


class Generation:
    """One answer of ``config`` to ``messages``: from a response cache when allowed and possible, else the provider.

    ``messages`` are chat messages (``[{"role", "content"}]``, with tool calls and results from ``/v1``:
    see :mod:`inference.providers.base`) ending with the user's (or a tool result); ``params`` the
    sampling parameters; ``use_cache`` False bypasses the caches; ``user_id`` is who asks: the caches
    serve them only their own answers, unless the model shares its cache (``cache_shared``, see
    :func:`inference.services.cache_owner`; None: the shared pool); ``semantic_prompt`` is the
    question to match in the semantic layer (None: not eligible, e.g. not a conversation's first
    question); ``started`` is the
    ``time.perf_counter()`` from which TTFT counts (default: now).

    Iterate :meth:`batches`; afterwards :attr:`outcome` holds the result. :meth:`stop` ends it early,
    keeping the text so far (``finish_reason="cancelled"``). Errors raised while iterating are
    :class:`~inference.providers.InferenceError` subclasses with the text so far as ``partial``.
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        messages: list[dict[str, str]],
        params: GenerationParams,
        use_cache: bool = True,
        user_id: int | None = None,
        semantic_prompt: str | None = None,
        started: float | None = None,
        cancel: threading.Event | None = None,
    ):
        self.config = config
        self.messages = messages
        self.params = params
        self.use_cache = use_cache
        self.owner_id = cache_owner(config=config, user_id=user_id)
        self.semantic_prompt = semantic_prompt
        self.started = started if started is not None else time.perf_counter()
        self.cancel = cancel or threading.Event()
        self.outcome = Outcome()
        self._feed: _Feed | None = None

    def stop(self) -> None:
        """Stop generating (on the event loop, or any thread): the answer ends ``cancelled`` with its text so far."""
        self.cancel.set()
        feed = self._feed
        if feed is not None:
            try:
                feed.loop.call_soon_threadsafe(feed.wake)
            except RuntimeError:  # the loop closed
                pass

    async def batches(self, *, batch_seconds: float = 0.0) -> AsyncIterator[list[Chunk]]:
        """Yield lists of chunks as they arrive (every chunk that came since the last yield), then end.

        With ``batch_seconds`` > 0, after the first text (sent at once: batching is for throughput,
        not the TTFT) a batch is yielded at most every ``batch_seconds``: one wake-up of the caller per
        batch, not per token, which is most of a streamed token's CPU when tokens come one by one.
        Text deltas come first; the last chunk has the finish reason and usage. A cached answer is
        replayed in deltas of a few words. Raise :class:`ModelTimeout` when no first chunk comes within
        the model's ``ttft_timeout`` or no next one within its ``idle_timeout`` (seconds), or while
        waiting longer than ``ttft_timeout`` for an identical request's answer; raise the provider's
        errors as they come.
        """
        if not cache_allowed(config=self.config, params=self.params, requested=self.use_cache):
            async for batch in self._live(batch_seconds):
                yield batch
            return
        llm = cache_layer("llm")
        key = llm_cache_key(config=self.config, params=self.params, messages=self.messages, owner_id=self.owner_id)
        self.outcome.cache = {"layer": "llm", "key": key[:16]}
        cached, token, waited = await self._single_flight(llm, key)
        if cached is not None:
            self.outcome.cache.update(hit=True, waited=waited)
            for batch in self._replay(cached):
                yield batch
            return
        if token is None:  # stopped while waiting for an identical request: nothing was generated
            self.outcome.finish_reason = "cancelled"
            return
        renewer = asyncio.create_task(_renew_lease(llm, key, token))
        try:
            scope = canonical_key(model_fingerprint(config=self.config, params=self.params))
            if self.semantic_prompt is not None and self.config.semantic_cache:
                hit = await database_sync_to_async(semantic_lookup)(
                    scope=scope, owner_id=self.owner_id, prompt=self.semantic_prompt
                )
                if hit is not None:
                    self.outcome.cache = {"layer": "semantic", "hit": True, "similarity": hit.similarity}
                    for batch in self._replay(hit.response):
                        yield batch
                    return
            self.outcome.cache["hit"] = False
            async for batch in self._live(batch_seconds):
                yield batch
            await self._store(llm, key, scope)
        finally:
            renewer.cancel()
            await asyncio.to_thread(llm.release, key, token)

    async def run(self) -> Outcome:
        """Generate the whole answer without streaming it; return :attr:`outcome`. Errors as :meth:`batches`."""
        async for _ in self.batches():
            pass
        return self.outcome

    async def _single_flight(self, llm: CacheLayer, key: str) -> tuple[dict | None, str | None, bool]:
        """Return ``(cached answer, None, waited)`` or ``(None, lease token, waited)``; count a hit or a miss.

        A token of None with no answer means the generation was stopped while waiting.
        """
        cached = await asyncio.to_thread(llm.get, key, count=False)
        waited = False
        wait_until = time.monotonic() + self.config.ttft_timeout
        while cached is None:
            token = await asyncio.to_thread(llm.acquire, key)
            if token is not None:
                # The holder may have stored its answer and released just before this acquire.
                cached = await asyncio.to_thread(llm.get, key, count=False)
                if cached is None:
                    await asyncio.to_thread(llm.record, "misses")
                    return None, token, waited
                await asyncio.to_thread(llm.release, key, token)
                break
            # Another request is generating this very answer: wait for it rather than generate it again.
            waited = True
            await asyncio.sleep(SINGLE_FLIGHT_POLL_SECONDS)
            cached = await asyncio.to_thread(llm.get, key, count=False)
            if cached is None and self.cancel.is_set():
                return None, None, waited
            if cached is None and time.monotonic() > wait_until:
                raise ModelTimeout(f"Waited {self.config.ttft_timeout:g} s for an identical request's answer.")
        await asyncio.to_thread(llm.record, "hits")
        return cached, None, waited

    def _replay(self, cached: dict) -> list[list[Chunk]]:
        """Return a cached answer (see :func:`inference.cache.answer_entry`) as batches; fill the outcome."""
        outcome = self.outcome
        outcome.ttft_ms = round((time.perf_counter() - self.started) * 1000)
        outcome.content = cached["content"]
        outcome.usage = Usage(cached.get("prompt_tokens", 0), cached.get("completion_tokens", 0))
        outcome.finish_reason = cached.get("finish_reason") or "stop"
        outcome.tool_calls = cached.get("tool_calls") or []
        outcome.cached = True
        deltas = [Chunk(delta=delta) for delta in replay_deltas(outcome.content)]
        if outcome.tool_calls:
            deltas.append(Chunk(tool_calls=tool_call_deltas(outcome.tool_calls)))
        return [deltas, [Chunk(finish_reason=outcome.finish_reason, usage=outcome.usage)]]

    async def _store(self, llm: CacheLayer, key: str, scope: str) -> None:
        """Store a finished answer in the ``llm`` layer (and the semantic one when eligible)."""
        outcome = self.outcome
        if outcome.finish_reason not in ("stop", "length", "tool_calls") or not (outcome.content or outcome.tool_calls):
            return
        usage = outcome.usage or Usage()
        answer = answer_entry(
            text=outcome.content,
            finish_reason=outcome.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            tool_calls=outcome.tool_calls,
        )
        await asyncio.to_thread(llm.set, key, answer)
        if self.semantic_prompt is not None and self.config.semantic_cache:
            await database_sync_to_async(semantic_store)(
                scope=scope, owner_id=self.owner_id, prompt=self.semantic_prompt, response=answer
            )

    async def _live(self, batch_seconds: float = 0.0) -> AsyncIterator[list[Chunk]]:
        """Stream from a deployment the router picks (:mod:`inference.routing`); see :meth:`batches`.

        Before the first chunk, a deployment that fails (connection refused, 429, 5xx, TTFT timeout, a
        full local queue) hands the request to the next one: the model's other deployments, then its
        fallback models; a prompt too long for the model goes to a fallback whose context window fits.
        After the first chunk there is no switch: the error is raised with the text so far. Raise
        :class:`ModelUnavailable` (``retry_after``: seconds to the soonest cooldown end) when no
        deployment could take the request, or the last deployment's error when every one tried failed.
        """
        router = Router(config=self.config, messages=self.messages)
        await router.aload()
        try:
            while not self.cancel.is_set():
                attempt = await asyncio.to_thread(router.next)
                if attempt is None:
                    router.gave_up(None)
                    self.outcome.route = router.route
                    # Every deployment tried failed: its error says more than "unavailable" does.
                    raise router.last_error or router.unavailable()
                renewer = asyncio.create_task(renew_while_running(attempt))
                streamed, ttft_ms = False, None
                try:
                    provider = provider_for(
                        config=attempt.config,
                        deployment=attempt.deployment,
                        max_retries=0 if router.alternatives else None,
                    )
                    async for batch in self._stream(provider, attempt.config, batch_seconds):
                        if not streamed:
                            streamed, ttft_ms = True, round((time.perf_counter() - attempt.started) * 1000)
                        yield batch
                except Exception as exc:
                    retry = await asyncio.to_thread(router.failed, attempt, exc, started_streaming=streamed)
                    if not retry or self.cancel.is_set():
                        router.gave_up(attempt)
                        self.outcome.route = router.route
                        raise
                    logger.warning("%s failed before its first token (%s)", attempt.deployment.label, exc)
                    router.last_error = exc
                    continue
                finally:
                    renewer.cancel()
                    usage = self.outcome.usage
                    await asyncio.to_thread(
                        slot_release,
                        deployment=attempt.deployment,
                        request_id=attempt.request_id,
                        completion_tokens=usage.completion_tokens if usage else 0,
                    )
                await asyncio.to_thread(router.succeeded, attempt, ttft_ms=ttft_ms)
                self.outcome.route, self.outcome.served_by = router.route, attempt.config
                return
            self.outcome.finish_reason = "cancelled"  # stopped between two tries: nothing was generated
            self.outcome.usage = Usage(0, 0)
        finally:
            self.cancel.set()  # a no-op after a finished generation; stops an abandoned one

    async def _stream(self, provider, config: ModelConfig, batch_seconds: float) -> AsyncIterator[list[Chunk]]:
        """Stream one try from ``provider`` (serving ``config``); see :meth:`batches`."""
        outcome = self.outcome
        loop = asyncio.get_running_loop()
        feed = self._feed = _Feed(loop)
        # The try's own stop: set when this try ends (failed or abandoned) without stopping the
        # whole generation, which may go on with the next deployment; set too by the generation's stop.
        cancel = _LinkedEvent(self.cancel)
        producer: asyncio.Task | None = None
        messages = self.messages
        if image_count(messages):
            # Each model (the requested one, or a fallback) reads the images at its own caps, or
            # without them (a note in their place) when it cannot see them; decoding is not for the loop.
            messages = await asyncio.to_thread(messages_for_model, config=config, messages=messages)
        astream = getattr(provider, "astream", None)
        if astream is not None:

            async def produce_async() -> None:
                try:
                    async for chunk in astream(messages, self.params, cancel):
                        feed.put(chunk)
                except Exception as exc:  # handed to the consumer, which raises it with the text so far
                    feed.put(exc)
                finally:
                    feed.put(_DONE)

            producer = asyncio.create_task(produce_async())
        else:

            def produce_blocking() -> None:
                try:
                    for chunk in provider.stream(messages, self.params, cancel):
                        feed.put_threadsafe(chunk)
                except BaseException as exc:
                    feed.put_threadsafe(exc)
                finally:
                    feed.put_threadsafe(_DONE)

            # llama.cpp blocks for the whole generation: it gets a thread of its own, not the event loop.
            threading.Thread(target=produce_blocking, name="generate", daemon=True).start()

        parts: list[str] = []
        calls = ToolCallAssembler()
        logprobs: list[dict] = []
        stall_deadline = loop.time() + config.ttft_timeout
        stop_deadline: float | None = None
        next_batch_at = 0.0  # with batch_seconds: when the next batch of text may go out
        try:
            while True:
                if next_batch_at > loop.time() and not self.cancel.is_set():
                    # Let the text gather; the producer's chunks wait in the feed without waking this.
                    await asyncio.sleep(next_batch_at - loop.time())
                items = feed.take()
                if not items:
                    if self.cancel.is_set() and stop_deadline is None:
                        stop_deadline = loop.time() + STOP_GRACE_SECONDS
                    wake_at = stall_deadline if stop_deadline is None else min(stall_deadline, stop_deadline)
                    # A stop may come from another task or process (Generation.stop, a shared ``cancel``):
                    # look at it at least this often, even while the model sends nothing.
                    wake_at = min(wake_at, loop.time() + STOP_POLL_SECONDS)
                    try:
                        async with asyncio.timeout(max(0.0, wake_at - loop.time())):
                            await feed.event.wait()
                    except TimeoutError:
                        if stop_deadline is not None and loop.time() >= stop_deadline:
                            # A stopped provider that sends nothing (a stalled server) is not waited for:
                            # the text so far is kept, its completion tokens counted as the deltas received.
                            outcome.finish_reason, outcome.usage = "cancelled", Usage(0, len(parts))
                            break
                        if stop_deadline is None and loop.time() >= stall_deadline:
                            waited = "first token" if outcome.ttft_ms is None else "next token"
                            limit = config.ttft_timeout if outcome.ttft_ms is None else config.idle_timeout
                            raise ModelTimeout(f"No {waited} from {config.display_name} within {limit:g} s.") from None
                    continue
                batch: list[Chunk] = []
                done = False
                for item in items:
                    if item is _DONE:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise item
                    if item.delta or item.tool_calls:
                        if outcome.ttft_ms is None:
                            outcome.ttft_ms = round((time.perf_counter() - self.started) * 1000)
                        parts.append(item.delta)
                        calls.add(item.tool_calls)
                    if item.logprobs:
                        logprobs.extend(item.logprobs)
                    if item.usage is not None:
                        outcome.usage, outcome.finish_reason = item.usage, item.finish_reason
                    batch.append(item)
                stall_deadline = loop.time() + config.idle_timeout
                if batch:
                    if batch_seconds and any(chunk.delta or chunk.tool_calls for chunk in batch):
                        next_batch_at = loop.time() + batch_seconds
                    yield batch
                if done:
                    break
        except BaseException as exc:
            exc.partial = "".join(parts)
            if outcome.usage is None and parts:
                # Failed or abandoned (a /v1 client that went away) after text came: what was produced
                # is charged, counted as the deltas received, as for a stopped answer.
                outcome.usage = Usage(0, len(parts))
            raise
        finally:
            cancel.set()  # a no-op after a finished try; stops an abandoned or failed one
            self._feed = None
            if producer is not None and not producer.done():
                producer.cancel()
            outcome.content = "".join(parts)
            outcome.tool_calls = calls.calls
            outcome.logprobs = logprobs if self.params.logprobs else None
        if outcome.finish_reason is None:
            outcome.finish_reason = "stop"
        if outcome.usage is None:
            outcome.usage = Usage(0, len(parts))


async def _renew_lease(llm: CacheLayer, key: str, token: str) -> None:
    """Keep the single-flight lease while this process generates (every third of the lease)."""
    while True:
        await asyncio.sleep(settings.CACHE_SINGLE_FLIGHT_LEASE / 3)
        await asyncio.to_thread(llm.renew, key, token)


def cache_warm(*, config: ModelConfig, prompt: str, user_id: int | None = None) -> str:
    """Precompute the answer to ``prompt`` as a conversation's first message, into the ``llm`` layer.

    Uses the model's default parameters and system prompt, so the key is the one a real first turn
    computes (models with an orchestrator rewrite requests first, so they cannot be warmed), and the
    same :class:`Generation` as every request. Answers go to ``user_id``'s cache, or to the shared
    pool of a model with ``cache_shared`` (a model without it and no user is skipped). Return
    ``"cached"``, ``"already"`` or ``"skipped: <reason>"``. Blocking. Raise :class:`InferenceError`
    when the model fails, and Redis errors when the cache is down.
    """
    params = generation_params(model=config)
    if config.orchestrator_id:
        return "skipped: the model has an orchestrator"
    if not cache_allowed(config=config, params=params):
        return f"skipped: cache policy {config.cache_policy!r} at temperature {params.temperature:g}"
    if user_id is None and not config.cache_shared:
        return "skipped: the model caches answers per user; name a user, or share its cache"
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    messages.append({"role": "user", "content": prompt})
    cache_layer("llm").version()  # raises when Redis is down, instead of warming nothing quietly
    generation = Generation(config=config, messages=messages, params=params, user_id=user_id)
    outcome = async_to_sync(generation.run)()
    return "already" if outcome.cached else "cached"


def first_question(messages: list[dict[str, str]]) -> str | None:
    """Return the user's question when ``messages`` is a conversation's first turn with nothing added, else None.

    Only such questions may be matched in the semantic layer: an answer that depends on earlier turns
    or on context the agent workflow added (passages, tool results) is not the answer to the question alone.
    Nor is a question about an image: its text alone would match a question about another image.
    """
    if image_count(messages):
        return None
    turns = [m for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        return None
    return content_text(turns[0]["content"]) if len(turns) == 1 and turns[0]["role"] == "user" else None
