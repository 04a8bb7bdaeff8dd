"""Run one chat turn: stream the model's answer to the conversation's channel-layer group, then store it.

Events go to the group ``conversation.<id>``; every WebSocket (on any Daphne process) of that
conversation relays them. A generation is stopped by a ``generation.stop`` message on the group
``conversation.<id>.control``, which the process running the turn listens to, so a stop works
whichever process the stopping client is connected to. A client that disconnects does not stop it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from accounts.quotas import GenerationKeepalive
from agents.graph import turn_graph_run
from inference.cache import answer_entry, canonical_key, replay_deltas, semantic_lookup, semantic_store
from inference.cache import layer as cache_layer
from inference.providers import Chunk, GenerationParams, InferenceError, ModelTimeout, Usage
from inference.services import (
    cache_allowed,
    llm_cache_key,
    model_fingerprint,
    orchestrate,
    provider_for,
    tokens_per_second,
    usage_cost,
)

from .memory import memory_after_turn
from .models import Message, MessageStatus
from .selectors import model_messages
from .serializers import MessageOutputSerializer
from .services import Turn, message_finalize, message_partial_save, turn_usage_record

logger = logging.getLogger(__name__)

STOPPED_BY_USER = "Stopped by the user."
STOP_POLL_SECONDS = 0.25  # longest a stop waits to be noticed while no token arrives
STOP_GRACE_SECONDS = 1.0  # how long a stopped provider may take to end with its usage
PARTIAL_SAVE_SECONDS = 1.0  # how often a streaming answer's text so far is stored

# Strong references to running turns: asyncio keeps only weak ones, and a turn must outlive the
# socket that started it.
_running_turns: set[asyncio.Task] = set()


def conversation_group(conversation_id) -> str:
    """Return the channel-layer group that receives a conversation's events."""
    return f"conversation.{conversation_id}"


def control_group(conversation_id) -> str:
    """Return the channel-layer group that the process generating in a conversation listens to."""
    return f"conversation.{conversation_id}.control"


async def send_event(conversation_id, event: dict) -> None:
    """Send one protocol event (DESIGN.md) to every client of the conversation.

    Never raises: when Redis (the channel layer) is down, the turn still runs and is stored, and
    REST clients still get their answer; sockets simply see nothing until it is back.
    """
    try:
        await get_channel_layer().group_send(
            conversation_group(conversation_id), {"type": "chat.event", "event": event}
        )
    except Exception as exc:
        logger.warning("Channel layer unavailable (%s); event %s not relayed", type(exc).__name__, event["type"])


async def generation_stop(conversation_id) -> None:
    """Ask whichever process is generating in this conversation to stop; its partial text is kept."""
    await get_channel_layer().group_send(control_group(conversation_id), {"type": "generation.stop"})


_DONE = object()


async def _orchestrate(turn: Turn, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict]:
    """Run the executor model's orchestrator (see inference.services.orchestrate) within its timeout.

    On timeout the raw request goes through. Sends ``node`` events around the step.
    """
    conversation_id = turn.assistant_message.conversation_id
    orchestrator = turn.model.orchestrator
    await send_event(conversation_id, {"type": "node", "name": "orchestrate", "status": "start"})
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(
            asyncio.to_thread(orchestrate, executor=turn.model, messages=messages), timeout=orchestrator.ttft_timeout
        )
    except TimeoutError:
        raw = messages[-1]["content"]
        metadata = {"model": orchestrator.slug, "raw_prompt": raw, "prompt": raw, "status": "timeout"}
        metadata["ms"] = round((time.perf_counter() - started) * 1000)
        result = messages, metadata
    await send_event(conversation_id, {"type": "node", "name": "orchestrate", "status": "end"})
    return result


@dataclass
class _Outcome:
    content: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    ttft_ms: int | None = None
    cached: bool = False


async def _replay(turn: Turn, cached: dict, started: float) -> _Outcome:
    """Send a cached answer through the same token events as a live one; return its outcome."""
    conversation_id = turn.assistant_message.conversation_id
    message_id = str(turn.assistant_message.pk)
    content = cached["content"]
    ttft_ms = round((time.perf_counter() - started) * 1000)
    for delta in replay_deltas(content):
        await send_event(conversation_id, {"type": "token", "message_id": message_id, "delta": delta})
    usage = Usage(prompt_tokens=cached.get("prompt_tokens", 0), completion_tokens=cached.get("completion_tokens", 0))
    return _Outcome(
        content=content, usage=usage, finish_reason=cached.get("finish_reason", "stop"), ttft_ms=ttft_ms, cached=True
    )


def _first_question(messages: list[dict[str, str]]) -> str | None:
    """Return the user's question when ``messages`` is a conversation's first turn, else None."""
    turns = [m for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        # Context the agent graph added (passages, tool results): the answer depends on more than the question.
        return None
    return turns[0]["content"] if len(turns) == 1 and turns[0]["role"] == "user" else None


async def _answer(turn: Turn, messages, cancel: threading.Event, started: float, metadata: dict) -> _Outcome:
    """Answer from the response caches when allowed and possible, otherwise generate (see :func:`_stream`).

    ``llm`` layer: exact match on model fingerprint + messages, with single flight: concurrent
    identical misses produce one generation; the others wait for its answer (and take over if its
    lease lapses). ``semantic`` layer (models that opt in): a conversation's first question matched by
    embedding similarity. Fills ``metadata["cache"]``.
    """
    config = turn.model
    if not cache_allowed(config=config, params=turn.params, requested=turn.use_cache):
        return await _stream(turn, messages, turn.params, cancel, started)
    llm = cache_layer("llm")
    fingerprint = model_fingerprint(config=config, params=turn.params)
    key = llm_cache_key(config=config, params=turn.params, messages=messages)
    metadata["cache"] = {"layer": "llm", "key": key[:16]}

    cached = await asyncio.to_thread(llm.get, key, count=False)
    token = None
    waited = False
    wait_until = time.monotonic() + config.ttft_timeout
    while cached is None:
        token = await asyncio.to_thread(llm.acquire, key)
        if token is not None:
            break
        # Another turn is generating this very answer: wait for it rather than generate it again.
        waited = True
        await asyncio.sleep(SINGLE_FLIGHT_POLL_SECONDS)
        cached = await asyncio.to_thread(llm.get, key, count=False)
        if cached is None and cancel.is_set():  # stopped while waiting: nothing was generated
            return _Outcome(finish_reason="cancelled")
        if cached is None and time.monotonic() > wait_until:
            raise ModelTimeout(f"Waited {config.ttft_timeout:g} s for an identical request's answer.")
    if cached is not None:
        await asyncio.to_thread(llm.record, "hits")
        metadata["cache"].update(hit=True, waited=waited)
        return await _replay(turn, cached, started)

    try:
        await asyncio.to_thread(llm.record, "misses")
        scope = canonical_key(fingerprint)
        owner_id = None if config.semantic_cache_shared else turn.assistant_message.conversation.owner_id
        question = _first_question(messages) if config.semantic_cache else None
        if question is not None:
            hit = await database_sync_to_async(semantic_lookup)(scope=scope, owner_id=owner_id, prompt=question)
            if hit is not None:
                metadata["cache"] = {"layer": "semantic", "hit": True, "similarity": hit.similarity}
                return await _replay(turn, hit.response, started)
        renewer = asyncio.create_task(_renew_lease(llm, key, token))
        try:
            outcome = await _stream(turn, messages, turn.params, cancel, started)
        finally:
            renewer.cancel()
        metadata["cache"]["hit"] = False
        if outcome.finish_reason in ("stop", "length") and outcome.content:
            answer = answer_entry(
                text=outcome.content,
                finish_reason=outcome.finish_reason,
                prompt_tokens=outcome.usage.prompt_tokens if outcome.usage else 0,
                completion_tokens=outcome.usage.completion_tokens if outcome.usage else 0,
            )
            await asyncio.to_thread(llm.set, key, answer)
            if question is not None:
                await database_sync_to_async(semantic_store)(
                    scope=scope, owner_id=owner_id, prompt=question, response=answer
                )
        return outcome
    finally:
        await asyncio.to_thread(llm.release, key, token)


SINGLE_FLIGHT_POLL_SECONDS = 0.05


async def _renew_lease(llm, key: str, token: str) -> None:
    """Keep the single-flight lease while this process generates (every third of the lease)."""
    while True:
        await asyncio.sleep(settings.CACHE_SINGLE_FLIGHT_LEASE / 3)
        await asyncio.to_thread(llm.renew, key, token)


class _Inbox:
    """Chunks handed from the generating thread to the event loop, waking the loop only when needed.

    Waking the loop for every token costs the generating thread CPU and GIL time (measured: a
    few percent of tokens/s with llama.cpp using every core). The loop asks to be woken for the
    first chunk of a batch only; later ones wait in the inbox until the batch deadline. Errors and
    the end of the stream always wake it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, cancel: threading.Event):
        self.loop = loop
        self.cancel = cancel
        self.event = asyncio.Event()
        self._items: list = []
        self._lock = threading.Lock()
        self._armed = True

    def put(self, item, *, urgent: bool = False) -> None:
        """Add ``item`` (from the generating thread); wake the loop if it asked to be, or ``urgent``."""
        with self._lock:
            self._items.append(item)
            wake, self._armed = self._armed or urgent, False
        if wake:
            try:
                self.loop.call_soon_threadsafe(self.event.set)
            except RuntimeError:  # the loop closed: the turn gave up (timeout) and its caller is gone
                self.cancel.set()

    def take(self) -> list:
        """Return every item so far (on the loop). Until :meth:`arm`, only urgent items wake the loop."""
        with self._lock:
            items, self._items, self._armed = self._items, [], False
        self.event.clear()
        return items

    def arm(self) -> None:
        """Wake the loop for the next item (on the loop): at once if one is already waiting."""
        with self._lock:
            if self._items:
                self.event.set()
            else:
                self._armed = True


async def _stream(turn: Turn, messages, params: GenerationParams, cancel: threading.Event, started: float) -> _Outcome:
    """Run the provider in a thread and relay its deltas in batches; return what was generated.

    The first delta is sent at once; then a batch is sent when its first delta is
    ``CHAT_TOKEN_BATCH_MS`` old or it holds ``CHAT_TOKEN_BATCH_SIZE`` deltas. Each delta is sent
    exactly once, in order. Raise :class:`ModelTimeout` when no first token comes within the model's
    ``ttft_timeout`` or no next one within its ``idle_timeout`` (seconds). Re-raise the provider's
    errors, with the text so far as ``partial``.
    """
    provider = provider_for(config=turn.model)
    loop = asyncio.get_running_loop()
    inbox = _Inbox(loop, cancel)

    def produce() -> None:
        try:
            for chunk in provider.stream(messages, params, cancel):
                inbox.put(chunk, urgent=chunk.usage is not None)
                if cancel.is_set() and loop.is_closed():
                    return
        except BaseException as exc:  # relayed to the event loop, which decides
            inbox.put(exc, urgent=True)
        finally:
            inbox.put(_DONE, urgent=True)

    # llama.cpp blocks for the whole generation: give it its own thread, not the event loop's.
    threading.Thread(target=produce, name=f"generate-{turn.assistant_message.pk}", daemon=True).start()

    outcome = _Outcome()
    parts: list[str] = []
    batch: list[str] = []
    deadline: float | None = None
    batch_seconds = settings.CHAT_TOKEN_BATCH_MS / 1000
    # Whatever the provider does (a queue, a stalled server), the user is not left waiting forever.
    stall_deadline = loop.time() + turn.model.ttft_timeout
    message_id = str(turn.assistant_message.pk)
    conversation_id = turn.assistant_message.conversation_id

    stop_deadline: float | None = None  # set when a stop is seen: when to stop waiting for the provider
    sent = 0  # characters sent so far: each token event's offset into the answer
    saved, saved_at = 0, loop.time()  # characters stored so far (message_partial_save), and when

    async def flush() -> None:
        nonlocal batch, deadline, sent
        if batch:
            delta, batch, deadline = "".join(batch), [], None
            event = {"type": "token", "message_id": message_id, "delta": delta, "offset": sent}
            await send_event(conversation_id, event)
            sent += len(delta)

    async def save_partial() -> None:
        # A client that reconnects mid-answer reads the text so far over REST, then merges later
        # tokens by their offset, so no text is lost or repeated.
        nonlocal saved, saved_at
        if sent > saved and loop.time() - saved_at >= PARTIAL_SAVE_SECONDS:
            saved, saved_at = sent, loop.time()
            await database_sync_to_async(message_partial_save)(message_id=message_id, content="".join(parts)[:sent])

    try:
        done = False
        while not done:
            wake_at = stall_deadline if deadline is None else min(deadline, stall_deadline)
            # A stop sets ``cancel`` from another task; look at it at least this often, so a stop
            # takes effect even while the model sends nothing (a stalled server, a long prompt).
            wake_at = min(wake_at, loop.time() + STOP_POLL_SECONDS, stop_deadline or math.inf)
            try:
                # Event.wait is safe to time out: nothing is taken from the inbox unless it returns.
                await asyncio.wait_for(inbox.event.wait(), timeout=max(0.0, wake_at - loop.time()))
            except TimeoutError:
                pass
            items = inbox.take()
            for item in items:
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, BaseException):
                    await flush()
                    item.partial = "".join(parts)
                    raise item
                chunk: Chunk = item
                if chunk.delta:
                    if outcome.ttft_ms is None:
                        outcome.ttft_ms = round((time.perf_counter() - started) * 1000)
                    parts.append(chunk.delta)
                    batch.append(chunk.delta)
                    stall_deadline = loop.time() + turn.model.idle_timeout
                    if deadline is None:
                        deadline = loop.time() + batch_seconds
                    # The first delta goes out at once: batching is for throughput, not for the TTFT.
                    if len(batch) >= settings.CHAT_TOKEN_BATCH_SIZE or len(parts) == 1:
                        await flush()
                if chunk.usage is not None:
                    outcome.usage, outcome.finish_reason = chunk.usage, chunk.finish_reason
                    stall_deadline = loop.time() + turn.model.idle_timeout
            if done:
                break
            if cancel.is_set():
                # Stopped: the provider ends at its next token, with its usage. One that sends
                # nothing (a stalled server) is not waited for beyond a short grace: the text so far
                # is kept, its completion tokens counted as the deltas received (one token each).
                if stop_deadline is None:
                    stop_deadline = loop.time() + STOP_GRACE_SECONDS
                elif loop.time() >= stop_deadline:
                    outcome.finish_reason, outcome.usage = "cancelled", Usage(0, len(parts))
                    break
            if deadline is not None and loop.time() >= deadline:
                await flush()
            await save_partial()
            if not items and loop.time() >= stall_deadline:
                await flush()
                waited = "first token" if outcome.ttft_ms is None else "next token"
                limit = turn.model.ttft_timeout if outcome.ttft_ms is None else turn.model.idle_timeout
                error = ModelTimeout(f"No {waited} from {turn.model.display_name} within {limit:g} s.")
                error.partial = "".join(parts)
                raise error
            # With a batch open, let tokens gather until its deadline; otherwise wake for the next one.
            if deadline is None:
                inbox.arm()
        await flush()
    finally:
        cancel.set()  # if this coroutine is cancelled, the thread stops at its next token
    outcome.content = "".join(parts)
    return outcome


async def turn_run(turn: Turn) -> Message:
    """Generate the answer for ``turn``, streaming events to the conversation, and finalise the message.

    Always finalises the assistant message: ``complete``; ``cancelled`` (stopped, partial text kept);
    or ``error`` with the reason (partial text kept). Events: ``generation.started``, ``token``...,
    ``error`` (on failure, with its code), ``generation.completed``. Return the stored message.
    """
    started = time.perf_counter()
    message = turn.assistant_message
    conversation_id = message.conversation_id
    layer = get_channel_layer()
    cancel = threading.Event()
    # A channel of its own, not layer.new_channel(): process-specific channels share one Redis key
    # per process, and cancelling a receive on it at the end of the turn could swallow an event
    # meant for a WebSocket consumer of this process (channels-redis hands messages to whichever
    # receive is popping).
    control_channel = f"generation.{message.pk}"
    try:
        await layer.group_add(control_group(conversation_id), control_channel)
    except Exception as exc:  # Redis down: the turn runs, it just cannot be stopped from elsewhere
        logger.warning("Channel layer unavailable (%s); generation.stop will not reach this turn", exc)

    async def listen_for_stop() -> None:
        while True:
            try:
                event = await layer.receive(control_channel)
            except Exception:  # Redis down: try again shortly
                await asyncio.sleep(1)
                continue
            if event.get("type") == "generation.stop":
                cancel.set()
                return

    listener = asyncio.create_task(listen_for_stop())
    # Hold the generation slot (accounts.quotas) while generating; message_finalize frees it.
    keepalive = GenerationKeepalive(user_id=message.conversation.owner_id, generation_id=str(message.pk))
    status, error, error_code = MessageStatus.COMPLETE, "", ""
    outcome = _Outcome()
    metadata: dict = {}
    agents_report: dict = {}  # citations and agents metadata, filled by the graph
    try:
        await send_event(
            conversation_id, {"type": "generation.started", "message_id": str(message.pk), "model": turn.model.slug}
        )
        messages = await database_sync_to_async(model_messages)(
            conversation=message.conversation, system_prompt=turn.model.system_prompt
        )
        if turn.model.orchestrator_id and turn.model.orchestrator.is_enabled:
            messages, metadata["orchestrator"] = await _orchestrate(turn, messages)
        # The agent workflow (agents.graph): classify_intent → retrieve → tools → generate, where
        # generate is this module's _answer with the gathered context in the messages.
        outcome = await turn_graph_run(
            messages=messages,
            user_id=message.conversation.owner_id,
            conversation_id=conversation_id,
            emit=lambda event: send_event(conversation_id, event),
            generate=lambda final: _answer(turn, final, cancel, started, metadata),
            report=agents_report,
        )
        if outcome.finish_reason == "cancelled":
            status, error = MessageStatus.CANCELLED, STOPPED_BY_USER
    except InferenceError as exc:
        outcome.content = getattr(exc, "partial", "")
        status, error, error_code = MessageStatus.ERROR, exc.detail, exc.code
    except Exception as exc:
        logger.exception("Generation failed for message %s", message.pk)
        outcome.content = getattr(exc, "partial", "")
        status, error, error_code = MessageStatus.ERROR, "The model failed unexpectedly.", "upstream_error"
    finally:
        listener.cancel()
        keepalive.stop()
        try:
            await layer.group_discard(control_group(conversation_id), control_channel)
        except Exception:  # noqa: S110 (Redis down: the group entry expires on its own)
            pass

    latency_ms = round((time.perf_counter() - started) * 1000)
    usage = outcome.usage
    if error_code:
        metadata["error_code"] = error_code
    message = await database_sync_to_async(message_finalize)(
        message_id=message.pk,
        content=outcome.content,
        status=status,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        ttft_ms=outcome.ttft_ms,
        latency_ms=latency_ms,
        tokens_per_s=tokens_per_second(
            completion_tokens=usage.completion_tokens if usage else 0, ttft_ms=outcome.ttft_ms, latency_ms=latency_ms
        ),
        # A cached answer cost nothing to produce.
        cost=usage_cost(model=turn.model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if usage and not outcome.cached
        else None,
        cached=outcome.cached,
        error=error,
        metadata={**metadata, **agents_report.get("metadata", {})},
        citations=agents_report.get("citations", []),
    )
    try:  # usage and quotas (accounts.services.usage_record); never fails the turn
        await database_sync_to_async(turn_usage_record)(turn=turn, message=message)
    except Exception:
        logger.exception("Could not record usage for message %s", message.pk)
    if status == MessageStatus.COMPLETE:
        try:  # remember the exchange (Celery); never fails the turn
            await database_sync_to_async(memory_after_turn)(message_id=message.pk)
        except Exception:
            logger.exception("Could not queue memory for message %s", message.pk)
    if error_code:
        await send_event(
            conversation_id, {"type": "error", "code": error_code, "detail": error, "message_id": str(message.pk)}
        )
    await send_event(
        conversation_id, {"type": "generation.completed", "message": MessageOutputSerializer(message).data}
    )
    return message


TURN_WAIT_POLL_SECONDS = 0.2  # how often a caller waiting for a turn in a worker looks at its message


async def turn_execute(turn: Turn) -> Message:
    """Run ``turn`` where ``INFERENCE_EXECUTION`` says and return its finalised assistant message.

    ``inline``: here, with :func:`turn_run`. ``celery``: in a Celery worker (``chat.turn_run``),
    whose events reach the conversation's group as an inline turn's do; this waits for the stored
    result, up to ``TURN_WAIT_SECONDS``, then returns the message as it is (still ``streaming``).
    """
    if settings.INFERENCE_EXECUTION != "celery":
        return await turn_run(turn)
    from .tasks import turn_run_task

    message_id = turn.assistant_message.pk
    await sync_to_async(turn_run_task.delay)(str(message_id), asdict(turn.params), turn.use_cache)
    deadline = time.monotonic() + settings.TURN_WAIT_SECONDS
    while True:
        message = await Message.objects.select_related("conversation").aget(pk=message_id)
        if message.status not in (MessageStatus.PENDING, MessageStatus.STREAMING) or time.monotonic() > deadline:
            return message
        await asyncio.sleep(TURN_WAIT_POLL_SECONDS)


def turn_start(turn: Turn) -> asyncio.Task:
    """Run :func:`turn_execute` in the background of the current event loop and return its task.

    The task is not tied to the caller: it finishes even if the socket that started it closes.
    """
    task = asyncio.get_running_loop().create_task(turn_execute(turn))
    _running_turns.add(task)
    task.add_done_callback(_running_turns.discard)
    return task


async def turns_drain(*, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for the turns this process started on this loop to finish.

    A turn outlives its socket and keeps writing (message, usage, memory) after the message turns
    ``complete``; wait here before tearing down what it writes to. Return how many are still running.
    """
    loop = asyncio.get_running_loop()
    pending = {task for task in _running_turns if task.get_loop() is loop}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    return len(pending)
