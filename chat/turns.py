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
from dataclasses import asdict

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from accounts.quotas import redis_epoch, settle_ms
from agents.graph import turn_graph_stream, turn_knowledge, turn_report
from inference.pipeline import Outcome
from inference.providers import InferenceError
from inference.services import tokens_per_second

from .memory import memory_after_turn
from .models import Message, MessageStatus
from .selectors import custom_instructions_prompt, model_messages
from .serializers import MessageOutputSerializer
from .services import INTERRUPTED, Turn, message_finalize, message_partial_save
from .tasks import turn_run_task, turn_taken

logger = logging.getLogger(__name__)

STOPPED_BY_USER = "Stopped by the user."
PARTIAL_SAVE_SECONDS = 1.0  # how often a streaming answer's text so far is stored

# Strong references to running turns: asyncio keeps only weak ones, and a turn must outlive the
# socket that started it.
_running_turns: set[asyncio.Task] = set()
# The cancel events of the answers this process is generating (any caller: socket, SSE, REST, Celery),
# by message id; and the ids of those the server stopped (turns_interrupt) rather than a user.
_generating: dict[str, threading.Event] = {}
_interrupted: set[str] = set()


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


def branch_switched_event(*, leaf: Message, message: Message) -> dict:
    """Return the ``branch.switched`` event: the branch through ``message`` is shown now, up to ``leaf``.

    Clients read the new active path over REST (``GET .../messages/``).
    """
    return {"type": "branch.switched", "message_id": str(message.pk), "leaf_id": str(leaf.pk)}


def end_events(message: Message) -> list[dict]:
    """Return the events that end the stream of the stored answer ``message``, as its turn sent them.

    Its ``error`` (when it failed: ``metadata["error_code"]``, with ``retry_after`` in seconds when
    stored), then its ``generation.completed``. For clients that missed them (SSE with Redis down, a
    socket that fell behind).
    """
    events = []
    if message.metadata.get("error_code"):
        error = {"type": "error", "code": message.metadata["error_code"], "detail": message.error}
        error["message_id"] = str(message.pk)
        if message.metadata.get("retry_after") is not None:
            error["retry_after"] = message.metadata["retry_after"]
        events.append(error)
    events.append({"type": "generation.completed", "message": MessageOutputSerializer(message).data})
    return events


async def generation_stop(conversation_id) -> None:
    """Ask whichever process is generating in this conversation to stop; its partial text is kept."""
    await get_channel_layer().group_send(control_group(conversation_id), {"type": "generation.stop"})


class EventRelay:
    """Send one turn's events to its conversation's group, in order, without making the turn wait.

    The turn hands events over (:meth:`send`, :meth:`deltas`) and goes on; one task sends them. Token
    deltas are batched: the first goes out at once (batching is for throughput, not for the TTFT),
    later ones at most every ``CHAT_TOKEN_BATCH_MS`` or when ``CHAT_TOKEN_BATCH_SIZE`` have gathered,
    and while sending falls behind (a busy channel layer) waiting deltas are merged into one event.
    Every ``token`` event carries ``offset``, the characters of the answer before its ``delta``, so a
    client that missed events (a full channel, a reconnect) places the next ones after fetching the
    stored text, which is saved about every ``PARTIAL_SAVE_SECONDS``.
    """

    def __init__(self, *, conversation_id, message_id: str):
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.text: list[str] = []  # the answer so far, every delta handed over
        self._pending: list[dict | str] = []  # events, or deltas (str) not yet sent
        self._pending_deltas = 0
        self._sent_chars = 0  # characters of the answer sent so far: the next token event's offset
        self._saved_chars = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    def send(self, event: dict) -> None:
        """Queue one protocol event (after every delta handed over before it)."""
        self._pending.append(event)
        self._wake.set()

    def deltas(self, deltas: list[str]) -> None:
        """Queue text deltas of the answer."""
        deltas = [d for d in deltas if d]
        if deltas:
            self.text.extend(deltas)
            self._pending.extend(deltas)
            self._pending_deltas += len(deltas)
            self._wake.set()

    async def close(self) -> None:
        """Send what is queued, then end the relay task."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch_seconds = settings.CHAT_TOKEN_BATCH_MS / 1000
        last_tokens_at = -math.inf  # when the last token event went out
        last_save_at = loop.time()
        while True:
            # Text sent but not stored yet: wake when its save is due, even if nothing else comes (a stall).
            unsaved = self._sent_chars > self._saved_chars
            try:
                async with asyncio.timeout(last_save_at + PARTIAL_SAVE_SECONDS - loop.time() if unsaved else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            # Deltas alone: let more gather until the batch is due, unless the batch is full.
            only_deltas = all(isinstance(item, str) for item in self._pending)
            if only_deltas and not self._closing and self._pending_deltas < settings.CHAT_TOKEN_BATCH_SIZE:
                due = last_tokens_at + batch_seconds
                if self._sent_chars and loop.time() < due:
                    try:
                        async with asyncio.timeout(due - loop.time()):
                            while self._pending_deltas < settings.CHAT_TOKEN_BATCH_SIZE and not self._closing:
                                await self._wake.wait()
                                self._wake.clear()
                                if not all(isinstance(item, str) for item in self._pending):
                                    break
                    except TimeoutError:
                        pass
            pending, self._pending, self._pending_deltas = self._pending, [], 0
            run: list[str] = []
            for item in [*pending, None]:
                if isinstance(item, str):
                    run.append(item)
                    continue
                if run:
                    delta = "".join(run)
                    run = []
                    await send_event(
                        self.conversation_id,
                        {"type": "token", "message_id": self.message_id, "delta": delta, "offset": self._sent_chars},
                    )
                    self._sent_chars += len(delta)
                    last_tokens_at = loop.time()
                if item is not None:
                    await send_event(self.conversation_id, item)
            if self._sent_chars > self._saved_chars and loop.time() - last_save_at >= PARTIAL_SAVE_SECONDS:
                # A client that reconnects mid-answer reads the text so far over REST, then merges later
                # tokens by their offset, so no text is lost or repeated.
                self._saved_chars, last_save_at = self._sent_chars, loop.time()
                text = "".join(self.text)[: self._sent_chars]
                try:
                    await database_sync_to_async(message_partial_save)(message_id=self.message_id, content=text)
                except Exception:  # the final save stores the whole text; a lost partial save costs nothing
                    logger.warning("Could not store the partial text of %s", self.message_id, exc_info=True)
            if self._closing and not self._pending:
                return


async def _listen_for_stop(layer, channel: str, cancel: threading.Event) -> None:
    """Set ``cancel`` when a ``generation.stop`` reaches ``channel``."""
    while True:
        try:
            event = await layer.receive(channel)
        except Exception:  # Redis down: try again shortly
            await asyncio.sleep(1)
            continue
        if event.get("type") == "generation.stop":
            cancel.set()
            return


def _turn_prepare(turn: Turn) -> tuple[list[dict[str, str]], dict]:
    """Return the turn's chat messages and what its retrieval can search.

    The system prompt is the model's, followed by the owner's custom instructions (if any).
    """
    message = turn.assistant_message
    owner_id = message.conversation.owner_id
    system_prompt = "\n\n".join(
        part for part in (turn.model.system_prompt, custom_instructions_prompt(user_id=owner_id)) if part
    )
    # The path to this answer, not the branch shown now: a switch meanwhile cannot change its history.
    messages = model_messages(conversation=message.conversation, system_prompt=system_prompt, leaf=message)
    return messages, turn_knowledge(user_id=owner_id)


def _turn_finish(
    turn: Turn, *, outcome: Outcome, status: MessageStatus, error: str, metadata: dict, citations
) -> Message:
    """Store the answer, free its generation slot and record its usage: the turn's one database call at the end."""
    latency_ms = round((time.perf_counter() - turn.started) * 1000)
    usage = outcome.usage
    message = message_finalize(
        message_id=turn.assistant_message.pk,
        content=outcome.content,
        status=status,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        ttft_ms=outcome.ttft_ms,
        latency_ms=latency_ms,
        tokens_per_s=tokens_per_second(
            completion_tokens=usage.completion_tokens if usage else 0, ttft_ms=outcome.ttft_ms, latency_ms=latency_ms
        ),
        cost=outcome.cost(turn.model),
        cached=outcome.cached,
        error=error,
        metadata=metadata,
        citations=citations,
    )
    turn.admission.finish(
        model_slug=turn.model.slug,
        provider=outcome.route.get("provider") or turn.model.provider,
        deployment=outcome.route.get("deployment", ""),
        route=outcome.route.get("reason", ""),
        status=message.status,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        cost=message.cost,
        ttft_ms=message.ttft_ms,
        latency_ms=message.latency_ms,
        cached=message.cached,
    )
    if status == MessageStatus.COMPLETE:
        try:  # remember the exchange (Celery); never fails the turn
            memory_after_turn(message_id=message.pk)
        except Exception:
            logger.exception("Could not queue memory for message %s", message.pk)
    return message


# Seconds between tries of a turn's final save (about 30 s in all): a database that restarts or fails
# over for a few seconds must not cost an answer its text or its clients their end event.
FINAL_SAVE_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
NOT_STORED = "The answer could not be stored: the database did not answer. Its text so far is shown here only."


async def _turn_finish_retried(turn: Turn, **fields) -> Message:
    """Run :func:`_turn_finish`, trying again while the database fails (``FINAL_SAVE_DELAYS``).

    Return the stored message; if every try failed, the assistant message as it was (``streaming``)
    with the answer's text, so the clients can still be told how it ended (the orphan sweep
    finalises the stored row once the database is back).
    """
    for delay in (*FINAL_SAVE_DELAYS, None):
        try:
            return await database_sync_to_async(_turn_finish)(turn, **fields)
        except Exception:
            if delay is None:
                logger.exception("Could not store the answer %s; giving up", turn.assistant_message.pk)
                break
            logger.warning("Could not store the answer %s; trying again in %g s", turn.assistant_message.pk, delay)
            await asyncio.sleep(delay)
    # Its generation slot is in Redis, not the database: free it now rather than when its lease lapses.
    await asyncio.to_thread(turn.admission.release)
    message = turn.assistant_message
    message.content = fields["outcome"].content
    return message


async def turn_run(turn: Turn) -> Message:
    """See :func:`_turn_run`; the turn's database calls run on a thread of its own.

    A WebSocket consumer has no thread-sensitive context, so without one every turn of the process
    would queue its database calls on asgiref's one shared thread. Inside a request (SSE) or under
    ``async_to_sync`` (a REST send, a Celery task), the enclosing context's thread is used as before.
    """
    async with ThreadSensitiveContext():
        return await _turn_run(turn)


async def _turn_run(turn: Turn) -> Message:
    """Generate the answer for ``turn``, streaming events to the conversation, and finalise the message.

    The agent workflow (:func:`agents.graph.turn_graph_stream`) runs the steps and the generation;
    this relays what it streams: ``generation.started``, ``node`` events, ``token``..., ``error`` (on
    failure, with its code), ``generation.completed``. Always finalises the assistant message:
    ``complete``; ``cancelled`` (stopped, partial text kept); or ``error`` with the reason (partial
    text kept). Return the stored message.
    """
    message = turn.assistant_message
    conversation_id = message.conversation_id
    message_id = str(message.pk)
    layer = get_channel_layer()
    cancel = threading.Event()
    relay = EventRelay(conversation_id=conversation_id, message_id=message_id)
    outcome = Outcome()
    state: dict = {}  # what the workflow's steps added, merged: known even when generation fails
    status, error, error_code = MessageStatus.COMPLETE, "", ""
    retry_after = None

    # A channel of its own, not layer.new_channel(): process-specific channels share one Redis key
    # per process, and cancelling a receive on it at the end of the turn could swallow an event
    # meant for a WebSocket consumer of this process.
    control_channel = f"generation.{message.pk}"
    listener = None
    try:
        await layer.group_add(control_group(conversation_id), control_channel)
        listener = asyncio.create_task(_listen_for_stop(layer, control_channel, cancel))
    except Exception as exc:  # Redis down: the turn runs, it just cannot be stopped from elsewhere
        logger.warning("Channel layer unavailable (%s); generation.stop will not reach this turn", exc)
    keepalive = asyncio.create_task(turn.admission.keepalive())
    _generating[message_id] = cancel
    try:
        parent_id = str(message.parent_id) if message.parent_id else None  # the question: clients place it there
        relay.send(
            {"type": "generation.started", "message_id": message_id, "model": turn.model.slug, "parent_id": parent_id}
        )
        messages, knowledge = await database_sync_to_async(_turn_prepare)(turn)
        async for kind, payload in turn_graph_stream(
            messages=messages,
            user_id=message.conversation.owner_id,
            conversation_id=conversation_id,
            model=turn.model,
            params=turn.params,
            use_cache=turn.use_cache,
            started=turn.started,
            cancel=cancel,
            knowledge=knowledge,
        ):
            if kind == "update":
                state.update(payload)
            elif payload["type"] == "chunks":
                relay.deltas([chunk.delta for chunk in payload["chunks"]])
            else:
                relay.send(payload)
        outcome = state.get("outcome") or outcome
        if outcome.finish_reason == "cancelled" and message_id in _interrupted:
            status, error, error_code = MessageStatus.ERROR, INTERRUPTED, "server_stopped"
        elif outcome.finish_reason == "cancelled":
            status, error = MessageStatus.CANCELLED, STOPPED_BY_USER
    except InferenceError as exc:
        status, error, error_code = MessageStatus.ERROR, exc.detail, exc.code
        retry_after = exc.retry_after
    except Exception:
        logger.exception("Generation failed for message %s", message.pk)
        status, error, error_code = MessageStatus.ERROR, "The model failed unexpectedly.", "upstream_error"
    finally:
        _generating.pop(message_id, None)
        _interrupted.discard(message_id)
        keepalive.cancel()
        if listener is not None:
            listener.cancel()
            try:
                await layer.group_discard(control_group(conversation_id), control_channel)
            except Exception:  # noqa: S110 (Redis down: the group entry expires on its own)
                pass
    if status != MessageStatus.COMPLETE and not outcome.content:
        # Failed or stopped midway: keep what was generated (every delta the relay got).
        outcome.content = "".join(relay.text)
    citations, metadata = turn_report(state)
    if outcome.cache:
        metadata["cache"] = outcome.cache
    if outcome.route:
        metadata["route"] = outcome.route
    if error_code:
        metadata["error_code"] = error_code
    if retry_after is not None:
        metadata["retry_after"] = retry_after  # seconds; the REST API sends it as Retry-After
    message = await _turn_finish_retried(
        turn, outcome=outcome, status=status, error=error, metadata=metadata, citations=citations
    )
    if message.status == MessageStatus.STREAMING:  # never stored: the database stayed away
        status, error, error_code = MessageStatus.ERROR, NOT_STORED, "service_unavailable"
        message.status, message.error = status, error
    if error_code:
        event = {"type": "error", "code": error_code, "detail": error, "message_id": message_id}
        if retry_after is not None:
            event["retry_after"] = retry_after  # seconds, as the consumer's own error frames carry it
        relay.send(event)
    relay.send({"type": "generation.completed", "message": MessageOutputSerializer(message).data})
    await relay.close()
    return message


TURN_WAIT_POLL_SECONDS = 0.2  # how often a caller waiting for a turn in a worker looks at its message
EPOCH_CHECK_SECONDS = 1.0  # how often it looks whether Redis restarted (accounts.quotas.redis_epoch)


async def turn_execute(turn: Turn, *, until_taken: bool = False) -> Message:
    """Run ``turn`` where ``INFERENCE_EXECUTION`` says and return its assistant message.

    ``inline``: here, with :func:`turn_run`; the message returned is final. ``celery``: in a Celery
    worker (``chat.turn_run``), whose events reach the conversation's group as an inline turn's do;
    this waits for the stored result, up to ``TURN_WAIT_SECONDS``, then returns the message as it is
    (still ``streaming``). With ``until_taken`` it returns as soon as a worker has taken the turn (or
    it has ended): for callers whose clients follow the turn through the channel layer (a WebSocket),
    so a web process neither polls the database for the whole answer nor waits for it when it stops.
    """
    if settings.INFERENCE_EXECUTION != "celery":
        return await turn_run(turn)
    message_id = turn.assistant_message.pk
    task_args = (str(message_id), asdict(turn.params), turn.use_cache)
    epoch = await sync_to_async(redis_epoch, thread_sensitive=False)()
    await sync_to_async(turn_run_task.delay)(*task_args)
    deadline = time.monotonic() + settings.TURN_WAIT_SECONDS
    # Hold the lease while the turn waits in the queue, so a turn queued behind a busy worker is not
    # taken for an orphan; stop once a worker has taken it (the worker renews it while it runs).
    keepalive = asyncio.create_task(turn.admission.keepalive())
    restarted_at = None  # when Redis was seen restarted (empty) while the turn was not taken
    next_epoch_check = time.monotonic() + EPOCH_CHECK_SECONDS
    try:
        while True:
            message = await Message.objects.select_related("conversation").aget(pk=message_id)
            if message.status not in (MessageStatus.PENDING, MessageStatus.STREAMING) or time.monotonic() > deadline:
                return message
            if not keepalive.done() and await sync_to_async(turn_taken, thread_sensitive=False)(str(message_id)):
                keepalive.cancel()  # the worker holds the lease now: if it dies, the lease lapses with it
                if until_taken:
                    return message
            if keepalive.done() or time.monotonic() < next_epoch_check:
                pass
            elif restarted_at is None:
                next_epoch_check = time.monotonic() + EPOCH_CHECK_SECONDS
                now_epoch = await sync_to_async(redis_epoch, thread_sensitive=False)()
                if now_epoch is not None and epoch is not None and now_epoch != epoch:
                    restarted_at, epoch = time.monotonic(), now_epoch
            elif time.monotonic() - restarted_at > settle_ms() / 1000:
                # Redis restarted empty with the turn in the broker's queue (or received by a worker
                # but not started: kombu's restore of it is lost too), and no worker has marked it
                # taken since, in the time a worker that had it takes to mark it again (a lease
                # period and the limits' rest, as for leases): queue it again. A worker that had it
                # after all keeps it (turn_run_task takes a turn once).
                logger.warning("Turn %s was lost from the queue by a Redis restart; queued again", message_id)
                await sync_to_async(turn_run_task.delay)(*task_args)
                restarted_at = None
            await asyncio.sleep(TURN_WAIT_POLL_SECONDS)
    finally:
        keepalive.cancel()


def turn_start(turn: Turn, *, until_taken: bool = False) -> asyncio.Task:
    """Run :func:`turn_execute` (with ``until_taken``) in the background of the current event loop; return its task.

    The task is not tied to the caller: it finishes even if the socket that started it closes.
    """
    task = asyncio.get_running_loop().create_task(turn_execute(turn, until_taken=until_taken))
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


def turns_interrupt() -> int:
    """Stop every answer this process is generating because the server is stopping; return how many.

    Each ends as a stop does, its partial text kept, but ``error`` with :data:`~chat.services.INTERRUPTED`
    (code ``server_stopped``) rather than ``cancelled``: the user did not stop it. Call from the
    event loop the turns run on; they finish on their own afterwards (wait with :func:`turns_drain`).
    """
    for message_id, cancel in list(_generating.items()):
        _interrupted.add(message_id)
        cancel.set()
    return len(_generating)
