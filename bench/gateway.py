"""Measure what Parley adds in front of a fast OpenAI-compatible upstream, from outside: /v1 and WebSocket chats.

Run with ``make bench``, or ``python -m core.launcher run -- python bench/gateway.py --rounds 5``
(embedded PostgreSQL and Valkey are started for it). Loopback only; it stops by itself.

Two processes are started: the upstream (``bench/upstream.py``: aiohttp, canned chunks ``--pace-ms``
apart, as many as the request's ``max_tokens``) and Parley as the Procfile runs it (Daphne,
``config.asgi:application``) with production settings (``config.settings.production``: DEBUG off; no
HTTPS redirect on loopback, pooled database connections), rate limits, generation slots and quotas
out of the way, and no embedding model preloaded (no bench user has documents or memories, so no
turn embeds). Parley reaches the upstream through a ModelConfig ``bench-gateway`` (provider
``openai_compatible``, response cache ``never``: every request reaches the upstream). Users
``bench-gateway-NN`` are made afresh each run, one per concurrent client, each with an API key (for
/v1) and a logged-in session (for the WebSocket), and deleted at the end with their data.

Each round measures, direct to the upstream and through Parley (the order swaps every round, so
machine noise hits both sides; one unmeasured warm-up round first):

(a) ``POST /v1/chat/completions``, not streamed: ``--clients`` concurrent clients each send
    ``--requests`` requests one after another (``--v1-max-tokens`` chunks: ~160 ms upstream).
    Latency is request to whole response; requests/s is the side's completed requests / wall time.
    Added latency: Parley's p50 (p95) minus direct's, over every request of every round.
(b) ``--streams`` concurrent streamed answers (``--stream-max-tokens`` chunks: ~2 s upstream).
    Direct: SSE from the upstream (``stream_options.include_usage``, as Parley's provider asks),
    done at ``data: [DONE]``. Parley: one WebSocket chat each (``/ws/chat/<conversation_id>/``, a
    new conversation per round, the socket open before the clock starts): ``message.send``, then
    ``token`` events until ``generation.completed``.
    - TTFT: from sending to the first token event.
    - Rate (the tokens/s ratio): characters after the first token event / seconds from the first
      token event to the last; each chunk is one token, and both sides get the same text. Also
      shown from the request: all characters / seconds from sending to the last token event,
      which counts the TTFT in.
    - Max gap: the longest wait between two token events of a stream; p95 over streams. Parley
      batches deltas for up to ``CHAT_TOKEN_BATCH_MS`` (50 ms), so ~50 ms is its floor.
    - Complete: ``generation.completed`` (``[DONE]``) within ``--stream-timeout`` s. A stream that
      is not (or ends in an ``error`` event) is counted, not waited for, and adds no rate or gap.
    After each Parley round the bench waits (up to ``--stream-timeout`` s) for every turn to be
    stored, so none runs on into the next measurement, and counts the answers stored ``complete``
    and the streams missing text: a token ``offset`` past the text received so far, or a final
    answer longer than it (token events lost on the way).

Targets: /v1 added p50 <= 10 ms and requests/s >= 0.9x direct; WebSocket rate >= 0.95x direct, TTFT
added p50 <= 25 ms, and every stream of every round complete. The last line of output is the
summary as JSON, with ``met`` per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import psutil
from harness import BASE_DIR, PROMPT, daphne, django_setup, free_port, server_process, session_cookie

MODEL_SLUG = "bench-gateway"
UPSTREAM_MODEL = "bench-upstream"
USERNAME = "bench-gateway-{:02d}"
SIDES = ("direct", "parley")
TARGET_V1_ADDED_P50_MS = 10.0
TARGET_V1_RPS_RATIO = 0.9
TARGET_WS_RATE_RATIO = 0.95
TARGET_WS_TTFT_ADDED_P50_MS = 25.0
WS_CLOSE_TIMEOUT = 10.0  # seconds the bench waits for its sockets' closing handshakes

# Parley's environment (Daphne inherits it): production settings that work on plain-HTTP loopback,
# and every per-user limit out of the way: the bench measures the pipeline, not the limits' refusals
# (their Redis checks still run on every request, as in production).
PARLEY_ENV = {
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "RATE_LIMIT_USER": "1000000/min",
    "RATE_LIMIT_WS": "1000000/min",
    "GENERATION_CONCURRENCY": "0",  # no limit
    # production.py pools database connections (DATABASE_POOL, psycopg_pool), as Django advises under
    # ASGI; its connections are what each request's threads borrow.
    "QUOTA_DAILY_TOKENS": "0",  # unlimited
    "EMBEDDING_PRELOAD": "false",
    # The benches talk to their own upstream: loading and warming the bundled llama.cpp model would
    # take CPU from the process measured (its warm-up generation runs in the first seconds).
    "MODEL_PRELOAD": "false",
}


# --- Measuring ----------------------------------------------------------------------------------


@dataclass
class Stream:
    """One streamed answer as the client saw it: times (perf_counter s) and sizes of its token events."""

    started: float
    times: list[float] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    completed: bool = False
    error: str | None = None
    lost_chars: int = 0  # Parley only: characters of the answer never received as token events

    def add(self, delta: str) -> None:
        self.times.append(time.perf_counter())
        self.chars.append(len(delta))

    @property
    def ttft_ms(self) -> float | None:
        return (self.times[0] - self.started) * 1000 if self.times else None

    @property
    def chars_per_s(self) -> float | None:
        """Characters after the first token event / seconds from the first token event to the last."""
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return None
        return sum(self.chars[1:]) / (self.times[-1] - self.times[0])

    @property
    def e2e_chars_per_s(self) -> float | None:
        """Characters / seconds from the request to the last token event (TTFT included)."""
        return sum(self.chars) / (self.times[-1] - self.started) if self.times else None

    @property
    def max_gap_ms(self) -> float | None:
        if len(self.times) < 2:
            return None
        return max(b - a for a, b in zip(self.times, self.times[1:], strict=False)) * 1000


async def v1_client(session, url: str, *, headers: dict, body: dict, requests: int, latencies: list, errors: list):
    """Send ``requests`` chat completions one after another; append latencies (ms) and errors (text)."""
    for _ in range(requests):
        started = time.perf_counter()
        try:
            async with session.post(url, json=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200 or not json.loads(payload).get("choices"):
                    errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                    continue
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: a body that is not JSON
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append((time.perf_counter() - started) * 1000)


async def v1_round(url: str, *, keys: list[str], body: dict, requests: int, timeout: float) -> dict:
    """(a): ``len(keys)`` concurrent clients (``keys``: Bearer tokens, or "" for none); latencies, errors, req/s."""
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=len(keys))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                v1_client(
                    session,
                    url,
                    headers={"Authorization": f"Bearer {key}"} if key else {},
                    body=body,
                    requests=requests,
                    latencies=latencies,
                    errors=errors,
                )
                for key in keys
            )
        )
        wall = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "rps": len(latencies) / wall}


async def sse_stream(session, url: str, *, body: dict, timeout: float) -> Stream:
    """Read one streamed chat completion from the upstream until ``data: [DONE]`` or ``timeout`` s."""
    stream = Stream(started=time.perf_counter())
    try:
        async with asyncio.timeout(timeout), session.post(url, json=body) as response:
            if response.status != 200:
                stream.error = f"HTTP {response.status}"
                return stream
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    stream.completed = True
                    break
                for choice in json.loads(data).get("choices") or []:
                    if content := (choice.get("delta") or {}).get("content"):
                        stream.add(content)
    except TimeoutError:
        pass
    except aiohttp.ClientError as exc:
        stream.error = type(exc).__name__
    return stream


async def direct_streams(url: str, *, body: dict, count: int, timeout: float) -> list[Stream]:
    """(b) direct: ``count`` concurrent SSE streams from the upstream."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count)) as session:
        return list(await asyncio.gather(*(sse_stream(session, url, body=body, timeout=timeout) for _ in range(count))))


async def ws_chat(ws, *, payload: dict | None, timeout: float) -> Stream:
    """Send ``payload`` (a ``message.send``; None: the events come from elsewhere) and read events until
    ``generation.completed`` or ``timeout`` s."""
    stream = Stream(started=time.perf_counter())
    if payload is not None:
        await ws.send_str(json.dumps(payload))
    received = 0  # where the answer's text received so far ends, in characters
    try:
        # One deadline for the whole stream: receive(timeout=...) restarts its timer after each ping
        # it answers, and Daphne pings every 20 s, so a stream that never ends would be waited for forever.
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    stream.error = f"socket {message.type.name.lower()}"
                    break
                event = json.loads(message.data)
                if event["type"] == "token":
                    stream.add(event["delta"])
                    # Each token event says where its delta starts in the answer: a jump is text lost on the way.
                    offset = event.get("offset", received)
                    stream.lost_chars += max(0, offset - received)
                    received = max(received, offset) + len(event["delta"])
                elif event["type"] == "generation.completed":
                    stream.completed = True
                    stream.lost_chars += max(0, len(event["message"].get("content") or "") - received)
                    break
                elif event["type"] == "error":
                    stream.error = event.get("code") or "error"
                    break
    except TimeoutError:
        pass
    return stream


async def parley_streams(
    port: int, *, cookies: list[str], conversation_ids: list, payload: dict, timeout: float
) -> list[Stream]:
    """(b) Parley: one WebSocket chat per conversation, all sockets opened first, then every message sent at once."""
    origin = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(timeout):
            sockets = await asyncio.gather(
                *(
                    session.ws_connect(
                        f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/", origin=origin, headers={"Cookie": cookie}
                    )
                    for cookie, conversation_id in zip(cookies, conversation_ids, strict=True)
                )
            )
        try:
            return list(await asyncio.gather(*(ws_chat(ws, payload=payload, timeout=timeout) for ws in sockets)))
        finally:
            try:
                # A closing handshake waits for Parley's answer, which may queue behind events still on their
                # way; past this, closing the session drops the connections.
                async with asyncio.timeout(WS_CLOSE_TIMEOUT):
                    await asyncio.gather(*(ws.close() for ws in sockets))
            except TimeoutError:
                pass


# --- Parley's side: users, model, turns ---------------------------------------------------------


def users_create(count: int) -> list[dict]:
    """Create ``count`` fresh bench users (old ones deleted); return each one's user, API key and cookie."""
    from accounts.models import User
    from accounts.services import api_key_create

    users_delete()
    made = []
    for i in range(count):
        user = User.objects.create_user(username=USERNAME.format(i))
        made.append({"user": user, "key": api_key_create(user=user, name="bench")[1], "cookie": session_cookie(user)})
    return made


def users_delete() -> None:
    """Delete the bench users, and with them their conversations, keys and usage records."""
    from accounts.models import User

    User.objects.filter(username__regex=r"^bench-gateway-\d+$").delete()


def turns_settle(conversation_ids: list, *, timeout: float) -> int:
    """Wait up to ``timeout`` s while an answer in ``conversation_ids`` is streaming; return how many are complete.

    So that a slow turn of one round does not run on into the next one's measurements.
    """
    from chat.models import Message, MessageStatus, Role

    answers = Message.objects.filter(conversation_id__in=conversation_ids, role=Role.ASSISTANT)
    deadline = time.monotonic() + timeout
    while answers.filter(status=MessageStatus.STREAMING).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if answers.filter(status=MessageStatus.STREAMING).exists():
        print(f"warning: answers still streaming {timeout:g} s after the round", file=sys.stderr)
    return answers.filter(status=MessageStatus.COMPLETE).count()


# --- Figures ------------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float | None:
    """Return the ``q``-th percentile of ``values`` (inclusive method), None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


# Comparison operators a target may use.
TARGET_OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t}


def targets_report(targets: dict[str, tuple[float | None, str, float]], *, width: int = 28) -> dict[str, dict]:
    """Print each target as met / NOT MET; return ``{name: {"value", "target", "met"}}`` for the JSON summary.

    ``targets``: ``{name: (value, op, target)}`` with ``op`` one of :data:`TARGET_OPS`; a value of
    None (nothing measured) is not met. Values are rounded to 3 decimals in the summary.
    """
    print("\ntargets")
    report = {}
    for name, (value, op, target) in targets.items():
        met = value is not None and TARGET_OPS[op](value, target)
        report[name] = {"value": rounded(value, 3), "target": f"{op} {target:g}", "met": met}
        print(f"  {name:{width}}{fmt(value, '.2f'):>10} {op} {target:<8g}{'met' if met else 'NOT MET'}")
    return report


def v1_figures(results: dict[str, list[dict]]) -> dict:
    """Pool every round's latencies per side; requests/s is the median over rounds."""
    figures = {}
    for side in SIDES:
        latencies = [ms for result in results[side] for ms in result["latencies"]]
        figures[side] = {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "rps": statistics.median(result["rps"] for result in results[side]),
            "ok": len(latencies),
            "errors": sum(len(result["errors"]) for result in results[side]),
        }
    return figures


def ws_figures(results: dict[str, list[list[Stream]]]) -> dict:
    """Pool every round's streams per side; medians of TTFT and rate, p95 of each stream's max gap."""
    figures = {}
    for side in SIDES:
        streams = [stream for round_streams in results[side] for stream in round_streams]
        done = [stream for stream in streams if stream.completed]
        figures[side] = {
            "ttft_p50": percentile([s.ttft_ms for s in streams if s.ttft_ms is not None], 50),
            "chars_per_s": percentile([s.chars_per_s for s in done if s.chars_per_s is not None], 50),
            "e2e_chars_per_s": percentile([s.e2e_chars_per_s for s in done if s.e2e_chars_per_s is not None], 50),
            "max_gap_p95": percentile([s.max_gap_ms for s in done if s.max_gap_ms is not None], 95),
            "completed_min": min(sum(s.completed for s in round_streams) for round_streams in results[side]),
            "completed": len(done),
            "streams": len(streams),
            "errors": sorted({s.error for s in streams if s.error}),
            "missing_text": sum(s.lost_chars > 0 for s in streams),
            "lost_chars": sum(s.lost_chars for s in streams),
        }
    return figures


# --- Running ------------------------------------------------------------------------------------


def daphne_process(port: int) -> psutil.Process:
    """Return the Daphne child process of this bench that listens on ``port``."""
    for child in psutil.Process().children(recursive=True):
        if "config.web" in child.cmdline() and str(port) in child.cmdline():
            return child
    raise RuntimeError(f"No Daphne process on port {port}.")


def cpu_seconds(process: psutil.Process) -> float:
    """Return the user + system CPU seconds ``process`` has used so far."""
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds, after one warm-up (default 5)")
    parser.add_argument("--clients", type=int, default=16, help="(a) concurrent /v1 clients (default 16)")
    parser.add_argument("--requests", type=int, default=10, help="(a) requests per client per round (default 10)")
    parser.add_argument("--v1-max-tokens", type=int, default=16, help="(a) chunks per answer (default 16)")
    parser.add_argument("--streams", type=int, default=20, help="(b) concurrent streams (default 20)")
    parser.add_argument("--stream-max-tokens", type=int, default=200, help="(b) chunks per answer (default 200)")
    parser.add_argument("--pace-ms", type=float, default=10.0, help="upstream ms between chunks (default 10)")
    parser.add_argument("--stream-timeout", type=float, default=30.0, help="(b) s a stream may take (default 30)")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="(a) s a request may take (default 60)")
    args = parser.parse_args()
    if min(args.rounds, args.clients, args.requests, args.streams) < 1:
        parser.error("--rounds, --clients, --requests and --streams must be at least 1")

    # A key made for this run: sessions made here must be valid in Daphne, which inherits it.
    django_setup(
        settings="config.settings.production", env={"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), **PARLEY_ENV}
    )
    from chat.services import conversation_create
    from inference.models import CachePolicy, ModelConfig, Provider

    upstream_port = free_port()
    upstream_command = [sys.executable, str(BASE_DIR / "bench" / "upstream.py"), "--port", str(upstream_port)]
    upstream_command += ["--pace-ms", str(args.pace_ms), "--model", UPSTREAM_MODEL]
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    users = users_create(max(args.clients, args.streams))
    config, _ = ModelConfig.objects.update_or_create(  # a crashed run may have left it, with another port
        slug=MODEL_SLUG,
        defaults={
            "display_name": "Bench upstream (canned chunks)",
            "provider": Provider.OPENAI_COMPATIBLE,
            "model": UPSTREAM_MODEL,
            "base_url": upstream,
            "cache_policy": CachePolicy.NEVER,
            "semantic_cache": False,
            "context_window": 4096,
            "max_tokens": max(512, args.stream_max_tokens),
            "is_enabled": True,
        },
    )
    messages = [{"role": "user", "content": PROMPT}]
    v1: dict[str, list[dict]] = {side: [] for side in SIDES}
    ws: dict[str, list[list[Stream]]] = {side: [] for side in SIDES}
    stored_complete = 0
    ws_cpu: list[float] = []  # Daphne's CPU seconds per Parley WebSocket round (warm-up first)
    try:
        with server_process(upstream_command, port=upstream_port, name="upstream"), daphne() as port:
            parley = f"http://127.0.0.1:{port}/v1"
            server = daphne_process(port)

            def v1_side(side: str, requests: int) -> dict:
                base, model, keys = (
                    (upstream, UPSTREAM_MODEL, [""] * args.clients)
                    if side == "direct"
                    else (parley, MODEL_SLUG, [u["key"] for u in users[: args.clients]])
                )
                body = {"model": model, "messages": messages, "max_tokens": args.v1_max_tokens}
                url = f"{base}/chat/completions"
                cpu = cpu_seconds(server)
                result = asyncio.run(
                    v1_round(url, keys=keys, body=body, requests=requests, timeout=args.request_timeout)
                )
                result["server_cpu_s"] = cpu_seconds(server) - cpu
                return result

            def ws_side(side: str, max_tokens: int) -> tuple[list[Stream], int]:
                if side == "direct":
                    body = {"model": UPSTREAM_MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True}
                    body["stream_options"] = {"include_usage": True}
                    streams = direct_streams(
                        f"{upstream}/chat/completions", body=body, count=args.streams, timeout=args.stream_timeout
                    )
                    return asyncio.run(streams), 0
                chatters = users[: args.streams]
                conversation_ids = [conversation_create(owner=u["user"], model=config).pk for u in chatters]
                payload = {"type": "message.send", "content": PROMPT, "model": MODEL_SLUG, "cache": False}
                payload["params"] = {"max_tokens": max_tokens}
                streams = parley_streams(
                    port,
                    cookies=[u["cookie"] for u in chatters],
                    conversation_ids=conversation_ids,
                    payload=payload,
                    timeout=args.stream_timeout,
                )
                cpu = cpu_seconds(server)
                result = asyncio.run(streams)
                settled = turns_settle(conversation_ids, timeout=args.stream_timeout)
                ws_cpu.append(cpu_seconds(server) - cpu)
                return result, settled

            print("warm-up round...", file=sys.stderr, flush=True)
            for side in SIDES:
                v1_side(side, 1)
                ws_side(side, args.v1_max_tokens)
            for round_number in range(args.rounds):
                order = SIDES if round_number % 2 == 0 else SIDES[::-1]
                for side in order:
                    v1[side].append(v1_side(side, args.requests))
                for side in order:
                    streams, complete = ws_side(side, args.stream_max_tokens)
                    ws[side].append(streams)
                    stored_complete += complete
                a, b = v1["parley"][-1], ws["parley"][-1]
                print(
                    f"round {round_number + 1}/{args.rounds}: /v1 {a['rps']:.1f} req/s "
                    f"({len(a['errors'])} errors); WebSocket {sum(s.completed for s in b)}/{len(b)} complete",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        users_delete()
        ModelConfig.objects.filter(slug=MODEL_SLUG).delete()

    # What the Daphne process itself spent (user + system CPU): a cost per request that the machine's
    # other load does not distort as much as latency. The warm-up round is left out.
    v1_parley = v1["parley"]
    cpu = {
        "v1_server_cpu_ms_per_request": round(
            1000 * sum(r["server_cpu_s"] for r in v1_parley) / max(1, sum(len(r["latencies"]) for r in v1_parley)), 2
        ),
        "ws_server_cpu_ms_per_stream": round(1000 * sum(ws_cpu[1:]) / max(1, (len(ws_cpu) - 1) * args.streams), 1),
    }
    print(
        f"Daphne CPU: {cpu['v1_server_cpu_ms_per_request']} ms per /v1 request, "
        f"{cpu['ws_server_cpu_ms_per_stream']} ms per WebSocket answer of {args.stream_max_tokens} chunks"
    )
    report(args, v1_figures(v1), ws_figures(ws), stored_complete=stored_complete, v1_results=v1, extra=cpu)


def report(args, a: dict, b: dict, *, stored_complete: int, v1_results: dict, extra: dict | None = None) -> None:
    """Print the tables, the targets, and the summary as JSON on the last line."""
    added_p50 = difference(a["parley"]["p50"], a["direct"]["p50"])
    added_p95 = difference(a["parley"]["p95"], a["direct"]["p95"])
    rps_ratio = ratio(a["parley"]["rps"], a["direct"]["rps"])
    ttft_added = difference(b["parley"]["ttft_p50"], b["direct"]["ttft_p50"])
    rate_ratio = ratio(b["parley"]["chars_per_s"], b["direct"]["chars_per_s"])
    e2e_ratio = ratio(b["parley"]["e2e_chars_per_s"], b["direct"]["e2e_chars_per_s"])
    upstream_ms = args.v1_max_tokens * args.pace_ms

    print(
        f"\n(a) /v1/chat/completions, not streamed: {args.clients} clients x {args.requests} requests, "
        f"{args.v1_max_tokens} chunks ({upstream_ms:.0f} ms upstream), {args.rounds} rounds"
    )
    print(f"{'':8}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>9}{'ok':>6}{'errors':>8}")
    for side in SIDES:
        f = a[side]
        print(f"{side:8}{fmt(f['p50']):>9}{fmt(f['p95']):>9}{fmt(f['rps'], '.1f'):>9}{f['ok']:>6}{f['errors']:>8}")
    print(f"{'added':8}{fmt(added_p50):>9}{fmt(added_p95):>9}{'x' + fmt(rps_ratio, '.2f'):>9}")
    for side in SIDES:
        errors = sorted({error for result in v1_results[side] for error in result["errors"]})
        if errors:
            print(f"{side} errors: {'; '.join(errors[:3])}")

    print(
        f"\n(b) {args.streams} concurrent streams of {args.stream_max_tokens} chunks "
        f"({args.stream_max_tokens * args.pace_ms / 1000:.1f} s upstream), {args.rounds} rounds: "
        "direct SSE vs Parley WebSocket chats"
    )
    print("chars/s: p50 over complete streams, after the first token (the target) and from the request")
    print(
        f"{'':8}{'TTFT p50 ms':>12}{'chars/s':>9}{'from req':>10}{'max gap p95 ms':>16}"
        f"{'complete':>10}{'min/round':>11}"
    )
    for side in SIDES:
        f = b[side]
        complete = f"{f['completed']}/{f['streams']}"
        print(
            f"{side:8}{fmt(f['ttft_p50']):>12}{fmt(f['chars_per_s']):>9}{fmt(f['e2e_chars_per_s']):>10}"
            f"{fmt(f['max_gap_p95']):>16}{complete:>10}{f['completed_min']:>11}"
        )
    print(f"{'added':8}{fmt(ttft_added):>12}{'x' + fmt(rate_ratio, '.2f'):>9}{'x' + fmt(e2e_ratio, '.2f'):>10}")
    print(
        f"Parley: answers stored complete {stored_complete}/{b['parley']['streams']}; "
        f"streams missing text {b['parley']['missing_text']} ({b['parley']['lost_chars']} characters); "
        f"errors {', '.join(b['parley']['errors']) or 'none'}"
    )

    targets = {
        "v1_added_p50_ms": (added_p50, "<=", TARGET_V1_ADDED_P50_MS),
        "v1_rps_ratio": (rps_ratio, ">=", TARGET_V1_RPS_RATIO),
        "ws_rate_ratio": (rate_ratio, ">=", TARGET_WS_RATE_RATIO),
        "ws_ttft_added_p50_ms": (ttft_added, "<=", TARGET_WS_TTFT_ADDED_P50_MS),
        "ws_completed_min_per_round": (b["parley"]["completed_min"], ">=", args.streams),
    }
    summary_targets = targets_report(targets)

    summary = {
        **(extra or {}),
        "rounds": args.rounds,
        "pace_ms": args.pace_ms,
        "v1_clients": args.clients,
        "v1_requests_per_client": args.requests,
        "v1_max_tokens": args.v1_max_tokens,
        **{f"v1_{side}_{key}_ms": rounded(a[side][key]) for side in SIDES for key in ("p50", "p95")},
        "v1_added_p50_ms": rounded(added_p50),
        "v1_added_p95_ms": rounded(added_p95),
        **{f"v1_{side}_rps": rounded(a[side]["rps"]) for side in SIDES},
        "v1_rps_ratio": rounded(rps_ratio, 3),
        **{f"v1_{side}_errors": a[side]["errors"] for side in SIDES},
        "ws_streams": args.streams,
        "ws_max_tokens": args.stream_max_tokens,
        **{f"ws_{side}_ttft_p50_ms": rounded(b[side]["ttft_p50"]) for side in SIDES},
        "ws_ttft_added_p50_ms": rounded(ttft_added),
        **{f"ws_{side}_chars_per_s": rounded(b[side]["chars_per_s"]) for side in SIDES},
        "ws_rate_ratio": rounded(rate_ratio, 3),
        **{f"ws_{side}_e2e_chars_per_s": rounded(b[side]["e2e_chars_per_s"]) for side in SIDES},
        "ws_e2e_rate_ratio": rounded(e2e_ratio, 3),
        **{f"ws_{side}_max_gap_p95_ms": rounded(b[side]["max_gap_p95"]) for side in SIDES},
        **{f"ws_{side}_completed": b[side]["completed"] for side in SIDES},
        **{f"ws_{side}_completed_min_per_round": b[side]["completed_min"] for side in SIDES},
        "ws_streams_total": b["parley"]["streams"],
        "ws_parley_stored_complete": stored_complete,
        "ws_parley_streams_missing_text": b["parley"]["missing_text"],
        "ws_parley_lost_chars": b["parley"]["lost_chars"],
        "ws_parley_errors": b["parley"]["errors"],
        "targets": summary_targets,
        "met": all(target["met"] for target in summary_targets.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
