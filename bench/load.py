"""Measure the relay's capacity curve: concurrent WebSocket chats through 1 and through 2 Daphne processes.

Run with ``make bench``, or ``python -m core.launcher run -- python bench/load.py --ks 10,50,100``
(embedded PostgreSQL and Valkey are started for it). Loopback only; it stops by itself. The whole
curve of issue 19 (K up to 200, memory over 1,000 turns) is
``python -m core.launcher run -- python bench/load.py --ks 10,50,100,200 --memory-turns 1000``:
about 4 minutes more than the default on an idle 2-core machine (the 1,000 short turns take ~2-3).

Processes started: the upstream (``bench/upstream.py``, canned chunks ``--pace-ms`` apart, default
50 ms = 20 tokens/s per stream) and Parley under Daphne (``config.asgi:application``) with
production settings and every per-user limit out of the way (``bench/gateway.py``'s environment),
``INFERENCE_EXECUTION=inline`` (each turn runs in the web process that took the message). First one
Daphne process, then two, on the same PostgreSQL and the same Redis channel layer. Each Daphne
process is pinned to one CPU (process i to CPU i modulo the CPUs this bench may use), so "one
process" means one core, as the issue's target says.

For each process count and each K of ``--ks`` (default 10,50,100): K users ``bench-load-NNN`` (made
afresh, one logged-in session each, deleted at the end) each open a WebSocket to a new conversation,
spread evenly over the processes (client i to process i modulo the count); once every socket is
open, each sends one ``message.send`` for an answer of ``--max-tokens`` chunks (default 100: 5 s at
50 ms) and reads ``token`` events until ``generation.completed`` (``bench/gateway.py``'s
``ws_chat``). One unmeasured warm-up round of 10 chats per process count comes first. Figures:

- completed: streams that ended in ``generation.completed`` within ``--stream-timeout`` s;
- max gap p95: each complete stream's longest wait between two token events, p95 over streams
  (Parley batches deltas for up to ``CHAT_TOKEN_BATCH_MS``, 50 ms, so a stream at 20 tokens/s
  sees ~50 ms gaps when nothing is late);
- tokens/s per process: the tokens received (characters received, at the canned text's characters
  per chunk) through that process / the round's wall time (first send to last token event);
- CPU s per process: Daphne's user + system CPU seconds during the round; CPU ms per token: their
  sum / the tokens delivered (the turns run inline, so it holds their setup, generation and relay);
- stored complete, characters lost (token offsets past the text received, or a final answer longer
  than the text received) and the channel-layer messages the processes dropped for sockets that fell
  behind (``parley_channel_layer_dropped_total`` from their /metrics); such a socket still gets its
  ``generation.completed``, from the stored answer (``chat.consumers``).

With ``--relay-only`` no turn runs: once the sockets are open, a publisher process of the bench's
own (``bench/load.py --publish``, as a Celery worker would) publishes each conversation's answer
(``generation.started``, the same canned deltas at the same pace, ``generation.completed``) through
``chat.turns.send_event``, so the Daphne processes only relay, as a web process does with
``INFERENCE_EXECUTION=celery`` (its turns run in workers). Comparing the two runs splits a process's
cost between the turns (setup, generation, storing) and the relay. The publisher reports how late
its publishes were against their schedule (p95, ms): a late publisher, not the relay, would show as
gaps. The clients and the publisher run on the CPUs not given to Daphne, where there are any (and
so does Redis): with 2 CPUs, one process has a core of its own, two share theirs with the load.

Then, per process count, the largest K where p95 gap <= 100 ms and every stream completed, and
the ratio 2 processes' largest K / 1's (a lower bound when 1 process passed the largest K tried).
Targets (issue 19): ratio >= 1.8; one process carries >= 100 streams within the gap limit.

Memory (``--memory-turns`` N, default 300; 0 skips): one fresh Daphne process runs N short turns
(``--memory-max-tokens`` chunks, 10 at a time); its RSS after N/10 turns and after N. Target: growth
< 10%. The issue asks 1,000 vs 100; 300 keeps the run short.

The figures are noisy on a shared machine (another test run at the same time shifts the gaps).
The last line of output is the summary as JSON, with ``met`` per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import urllib.request
import uuid
from contextlib import ExitStack
from urllib.parse import urlsplit

import aiohttp
import psutil
from gateway import (
    PARLEY_ENV,
    Stream,
    cpu_seconds,
    daphne_process,
    fmt,
    percentile,
    ratio,
    rounded,
    targets_report,
    turns_settle,
    ws_chat,
)
from harness import BASE_DIR, PROMPT, daphne, django_setup, free_port, server_process, session_cookie
from upstream import canned_deltas

MODEL_SLUG = "bench-load"
UPSTREAM_MODEL = "bench-upstream"
USERNAME = "bench-load-{:03d}"
GAP_LIMIT_MS = 100.0
TARGET_RATIO = 1.8
TARGET_ONE_PROCESS_STREAMS = 100
TARGET_MEMORY_GROWTH = 0.10
WARM_UP_STREAMS = 10
MEMORY_BATCH = 10
WS_CLOSE_TIMEOUT = 10.0
# The CPUs this bench may use, read before it pins anything (itself included).
ALLOWED_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
CONNECTING_AT_ONCE = 25  # WebSocket handshakes in flight at once


# --- Parley's side: users, conversations -------------------------------------------------------


def users_create(count: int) -> list[dict]:
    """Create ``count`` fresh bench users (old ones deleted); return each one's user and session cookie."""
    from accounts.models import User

    users_delete()
    made = []
    for i in range(count):
        user = User.objects.create_user(username=USERNAME.format(i))
        made.append({"user": user, "cookie": session_cookie(user)})
    return made


def users_delete() -> None:
    """Delete the bench users, and with them their conversations and usage records."""
    from accounts.models import User

    User.objects.filter(username__regex=r"^bench-load-\d+$").delete()


# --- Measuring ---------------------------------------------------------------------------------


async def turns_stand_in(conversation_ids: list, *, max_tokens: int, pace_ms: float) -> list[float]:
    """Publish, for each conversation, the events of one answer as a turn's relay sends them, and no turn.

    ``generation.started``, ``max_tokens`` ``token`` events (the upstream's canned deltas, one every
    ``pace_ms``, scheduled from the start), ``generation.completed``: the messages
    :func:`chat.turns.send_event` publishes (the channel layer's serialisation, to each conversation's
    group), so the Daphne processes only relay (``--relay-only``). The events due at the same time go
    out in one Redis pipeline: this process stands in for many workers, and must not be the
    bottleneck it measures. Return how late (ms) each round of token events was published.
    """
    from channels.layers import get_channel_layer
    from redis.asyncio import Redis

    from chat.turns import conversation_group

    layer = get_channel_layer()
    inner = layer._get_layer()  # channels-redis's per-loop layer: the groups' Pub/Sub channel names
    channels = [inner._get_group_channel_name(conversation_group(c)) for c in conversation_ids]
    deltas = canned_deltas(max_tokens)
    message_ids = [str(uuid.uuid4()) for _ in conversation_ids]
    late: list[float] = []
    redis = Redis.from_url(layer._kwargs["hosts"][0]["address"])

    async def publish_all(event_of) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for channel, message_id in zip(channels, message_ids, strict=True):
                pipe.publish(channel, layer.serialize({"type": "chat.event", "event": event_of(message_id)}))
            await pipe.execute()

    loop = asyncio.get_running_loop()
    await publish_all(lambda mid: {"type": "generation.started", "message_id": mid, "model": MODEL_SLUG})
    start, offset = loop.time(), 0
    for number, delta in enumerate(deltas, start=1):
        due = start + number * pace_ms / 1000
        await asyncio.sleep(max(0.0, due - loop.time()))
        late.append((loop.time() - due) * 1000)
        await publish_all(
            lambda mid, delta=delta, offset=offset: {
                "type": "token",
                "message_id": mid,
                "delta": delta,
                "offset": offset,
            }
        )
        offset += len(delta)
    text = "".join(deltas)
    await publish_all(
        lambda mid: {"type": "generation.completed", "message": {"id": mid, "content": text, "status": "complete"}}
    )
    await redis.aclose()
    return late


def publish_main(spec: str) -> None:
    """``--publish SPEC``: the publisher process. Print ``ready``, wait for a line on stdin, publish, print how late.

    ``SPEC`` is JSON: ``{"conversation_ids": [...], "max_tokens": n, "pace_ms": ms}``. The last line
    printed is ``{"late_p95_ms": ...}``.
    """
    job = json.loads(spec)
    django_setup(settings=os.environ["DJANGO_SETTINGS_MODULE"], migrate=False)
    print("ready", flush=True)
    sys.stdin.readline()
    late = asyncio.run(turns_stand_in(job["conversation_ids"], max_tokens=job["max_tokens"], pace_ms=job["pace_ms"]))
    print(json.dumps({"late_p95_ms": percentile(late, 95)}), flush=True)


class Publisher:
    """The publisher process of one round (:func:`publish_main`), started ahead so Django is loaded when it goes."""

    def __init__(self, conversation_ids: list, *, max_tokens: int, pace_ms: float, cpus: list[int] | None):
        spec = json.dumps({"conversation_ids": [str(c) for c in conversation_ids], "max_tokens": max_tokens,
                           "pace_ms": pace_ms})  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 (our own command)
            [sys.executable, str(BASE_DIR / "bench" / "load.py"), "--publish", spec],
            cwd=BASE_DIR, env=os.environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if cpus:
            os.sched_setaffinity(self.process.pid, cpus)
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise RuntimeError("The publisher process did not start.")

    def run(self) -> float | None:
        """Start publishing, wait until done; return the p95 lateness (ms) of its publishes."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        out, _ = self.process.communicate(timeout=600)
        return json.loads(out.strip().splitlines()[-1])["late_p95_ms"]


async def chats(
    ports: list[int],
    *,
    cookies: list[str],
    conversation_ids: list,
    payload: dict | None,
    timeout: float,
    stand_in: Publisher | None = None,
):
    """One WebSocket chat per conversation, client i on ``ports[i % len(ports)]``; all sockets open first.

    With ``stand_in`` (a :class:`Publisher`) no message is sent: that process publishes the answers'
    events. Returns (streams, the process index of each stream, the publisher's p95 lateness in ms or None).
    """
    where = [i % len(ports) for i in range(len(cookies))]
    # Twisted listens with a backlog of 50: more handshakes at once than that get connections reset.
    handshakes = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def connect(session, port: int, cookie: str, conversation_id):
        async with handshakes:
            return await session.ws_connect(
                f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/",
                origin=f"http://127.0.0.1:{port}",
                headers={"Cookie": cookie},
            )

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with asyncio.timeout(timeout):
            sockets = await asyncio.gather(
                *(
                    connect(session, ports[p], cookie, conversation_id)
                    for p, cookie, conversation_id in zip(where, cookies, conversation_ids, strict=True)
                )
            )
        late = None
        try:
            reading = asyncio.gather(*(ws_chat(ws, payload=payload, timeout=timeout) for ws in sockets))
            if stand_in is not None:
                await asyncio.sleep(0.2)  # every socket is reading before the first event
                late = await asyncio.to_thread(stand_in.run)
            streams = await reading
        finally:
            try:
                async with asyncio.timeout(WS_CLOSE_TIMEOUT):
                    await asyncio.gather(*(ws.close() for ws in sockets))
            except TimeoutError:
                pass
    return list(streams), where, late


def round_run(
    ports, servers, users, *, config, k: int, max_tokens: int, timeout: float, relay_only: bool = False, pace_ms=50.0
) -> dict:  # fmt: skip
    """Run K concurrent chats over ``ports``; return the round's figures (see the module's docstring)."""
    from chat.services import conversation_create

    chatters = users[:k]
    conversation_ids = [conversation_create(owner=u["user"], model=config).pk for u in chatters]
    payload = {"type": "message.send", "content": PROMPT, "model": MODEL_SLUG, "cache": False}
    payload["params"] = {"max_tokens": max_tokens}
    publisher = None
    if relay_only:
        publisher = Publisher(conversation_ids, max_tokens=max_tokens, pace_ms=pace_ms, cpus=load_cpus(servers))
    cpu = [cpu_seconds(s) for s in servers]
    drops = dropped(ports)
    streams, where, late = asyncio.run(
        chats(
            ports,
            cookies=[u["cookie"] for u in chatters],
            conversation_ids=conversation_ids,
            payload=None if relay_only else payload,
            timeout=timeout,
            stand_in=publisher,
        )
    )
    cpu = [cpu_seconds(s) - before for s, before in zip(servers, cpu, strict=True)]
    stored_complete = None if relay_only else turns_settle(conversation_ids, timeout=timeout)
    drops = dropped(ports) - drops
    chars_per_token = len("".join(canned_deltas(max_tokens))) / max_tokens
    started = min(s.started for s in streams)
    ended = max((s.times[-1] for s in streams if s.times), default=started)
    wall = max(ended - started, 1e-9)
    tokens_per_s = [
        sum(sum(s.chars) for s, p in zip(streams, where, strict=True) if p == i) / chars_per_token / wall
        for i in range(len(ports))
    ]
    tokens_per_s_sum = sum(tokens_per_s)
    done: list[Stream] = [s for s in streams if s.completed]
    gap_p95 = percentile([s.max_gap_ms for s in done if s.max_gap_ms is not None], 95)
    return {
        "processes": len(ports),
        "k": k,
        "completed": len(done),
        "stored_complete": stored_complete,
        "max_gap_p95_ms": rounded(gap_p95),
        "tokens_per_s_per_process": [rounded(t) for t in tokens_per_s],
        "cpu_s_per_process": [rounded(c, 2) for c in cpu],
        # Daphne's CPU per token delivered (turns run inline: generation, relay and the turns' setup).
        "cpu_ms_per_token": rounded(sum(cpu) * 1000 / max(tokens_per_s_sum * wall, 1e-9), 2),
        "errors": sorted({s.error for s in streams if s.error}),
        "lost_chars": sum(s.lost_chars for s in streams),
        "channel_layer_dropped": int(drops),
        "publish_late_p95_ms": rounded(late),
        "ok": len(done) == k and gap_p95 is not None and gap_p95 <= GAP_LIMIT_MS,
    }


def dropped(ports: list[int]) -> float:
    """Channel-layer messages the processes on ``ports`` have dropped so far (their /metrics, from loopback)."""
    total = 0.0
    # With PROMETHEUS_MULTIPROC_DIR set, a scrape of any process reports the whole host: scrape one.
    for port in ports[:1] if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310 (loopback)
            for line in response.read().decode().splitlines():
                if line.startswith("parley_channel_layer_dropped_total"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def pin(servers: list[psutil.Process]) -> list[int | None]:
    """Pin server i to CPU i modulo the CPUs allowed here; return each one's CPU (None where unsupported)."""
    if ALLOWED_CPUS is None:  # no CPU affinity on this platform
        return [None] * len(servers)
    allowed = ALLOWED_CPUS
    cpus = []
    for i, server in enumerate(servers):
        cpu = allowed[i % len(allowed)]
        # Every thread (sched_setaffinity takes one thread's id): Daphne's threads run the sync parts.
        for thread in server.threads():
            os.sched_setaffinity(thread.id, [cpu])
        cpus.append(cpu)
    return cpus


def load_cpus(servers: list[psutil.Process]) -> list[int] | None:
    """The CPUs allowed here that no server is pinned to (None: there are none, or no affinity here)."""
    if ALLOWED_CPUS is None:
        return None
    try:
        taken = {cpu for server in servers for cpu in server.cpu_affinity() if len(server.cpu_affinity()) == 1}
    except psutil.Error:
        return None
    return sorted(set(ALLOWED_CPUS) - taken) or None


def pin_load(servers: list[psutil.Process], redis_port: int | None) -> list[int] | None:
    """Pin this process (the clients) and the Redis on ``redis_port`` to :func:`load_cpus` (or unpin); return those."""
    cpus = load_cpus(servers)
    every = ALLOWED_CPUS
    targets = [psutil.Process()]
    if redis_port is not None:
        targets += [
            p for p in psutil.process_iter(["name", "cmdline"])
            if "valkey" in (p.info["name"] or "") or "redis-server" in (p.info["name"] or "")
            if any(f":{redis_port}" in part or part == str(redis_port) for part in p.info["cmdline"] or [])
        ]  # fmt: skip
    for process in targets:
        try:
            for thread in process.threads():
                os.sched_setaffinity(thread.id, cpus or every)
        except (AttributeError, OSError, psutil.Error):  # no affinity here, or not ours to pin
            pass
    return cpus


def memory_run(users, *, config, turns: int, max_tokens: int, timeout: float) -> dict:
    """One fresh Daphne process runs ``turns`` turns, MEMORY_BATCH at a time; RSS (MB) after turns/10 and after all."""
    from chat.services import conversation_create

    payload = {"type": "message.send", "content": PROMPT, "model": MODEL_SLUG, "cache": False}
    payload["params"] = {"max_tokens": max_tokens}
    checkpoint = max(1, turns // 10)
    rss: dict[int, float] = {}
    done = completed = 0
    with daphne() as port:
        server = daphne_process(port)
        pin([server])
        while done < turns:
            batch = users[: min(MEMORY_BATCH, turns - done)]
            conversation_ids = [conversation_create(owner=u["user"], model=config).pk for u in batch]
            streams, _, _ = asyncio.run(
                chats(
                    [port],
                    cookies=[u["cookie"] for u in batch],
                    conversation_ids=conversation_ids,
                    payload=payload,
                    timeout=timeout,
                )
            )
            turns_settle(conversation_ids, timeout=timeout)
            done += len(batch)
            completed += sum(s.completed for s in streams)
            if done >= checkpoint * (len(rss) + 1):  # about every tenth of the turns
                rss[done] = server.memory_info().rss / 2**20
        rss[turns] = server.memory_info().rss / 2**20
    checkpoint = min(rss)
    growth = rss[turns] / rss[checkpoint] - 1
    return {
        "turns": turns,
        "completed": completed,
        "rss_mb_early": rounded(rss[checkpoint]),
        "early_turns": checkpoint,
        "rss_mb_end": rounded(rss[turns]),
        "growth": round(growth, 3),
        "rss_mb_every_tenth": {turns_done: rounded(mb) for turns_done, mb in sorted(rss.items())},
    }


def largest_ok(rounds: list[dict], processes: int) -> int | None:
    """The largest K that met the gap limit with every stream complete, for ``processes``."""
    return max((r["k"] for r in rounds if r["processes"] == processes and r["ok"]), default=None)


# --- Running -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ks", default="10,50,100", help="concurrent chats per round, comma-separated (default 10,50,100)"
    )
    parser.add_argument("--max-tokens", type=int, default=100, help="chunks per answer (default 100)")
    parser.add_argument("--pace-ms", type=float, default=50.0, help="upstream ms between chunks (default 50)")
    parser.add_argument("--stream-timeout", type=float, default=60.0, help="s a round's streams may take (default 60)")
    parser.add_argument("--memory-turns", type=int, default=300, help="turns of the memory run (default 300; 0 skips)")
    parser.add_argument(
        "--relay-only",
        action="store_true",
        help="no turns: the bench publishes each answer's events itself, so Daphne only relays them",
    )
    parser.add_argument("--memory-max-tokens", type=int, default=10, help="chunks per memory-run answer (default 10)")
    parser.add_argument("--publish", metavar="SPEC", help=argparse.SUPPRESS)  # the publisher process (internal)
    args = parser.parse_args()
    if args.publish:
        publish_main(args.publish)
        return
    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        parser.error("--ks must be comma-separated integers")
    if not ks or min(ks) < 1 or args.max_tokens < 1:
        parser.error("--ks and --max-tokens must be at least 1")

    # A key made for this run: sessions made here must be valid in Daphne, which inherits it.
    env = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), **PARLEY_ENV, "INFERENCE_EXECUTION": "inline"}
    django_setup(settings="config.settings.production", env=env)
    from inference.models import CachePolicy, ModelConfig, Provider

    upstream_port = free_port()
    upstream_command = [sys.executable, str(BASE_DIR / "bench" / "upstream.py"), "--port", str(upstream_port)]
    upstream_command += ["--pace-ms", str(args.pace_ms), "--model", UPSTREAM_MODEL]
    users = users_create(max(ks + [WARM_UP_STREAMS, MEMORY_BATCH]))
    config, _ = ModelConfig.objects.update_or_create(  # a crashed run may have left it, with another port
        slug=MODEL_SLUG,
        defaults={
            "display_name": "Bench upstream (canned chunks)",
            "provider": Provider.OPENAI_COMPATIBLE,
            "model": UPSTREAM_MODEL,
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "cache_policy": CachePolicy.NEVER,
            "semantic_cache": False,
            "context_window": 4096,
            "max_tokens": max(512, args.max_tokens),
            "is_enabled": True,
        },
    )
    rounds: list[dict] = []
    memory = None
    cpus_used: dict[int, list] = {}
    load_on: dict[int, list | None] = {}  # the CPUs of the clients, the publisher and Redis, per process count
    try:
        with server_process(upstream_command, port=upstream_port, name="upstream"):
            for processes in (1, 2):
                with ExitStack() as stack:
                    ports = [stack.enter_context(daphne()) for _ in range(processes)]
                    servers = [daphne_process(port) for port in ports]
                    cpus_used[processes] = pin(servers)
                    load_on[processes] = pin_load(servers, urlsplit(os.environ.get("REDIS_URL", "")).port)
                    print(f"{processes} process(es) on CPU {cpus_used[processes]}: warm-up...", file=sys.stderr)
                    round_run(
                        ports, servers, users, config=config, k=WARM_UP_STREAMS, max_tokens=10,
                        timeout=args.stream_timeout,
                    )  # fmt: skip
                    for k in ks:
                        result = round_run(
                            ports, servers, users, config=config, k=k, max_tokens=args.max_tokens,
                            timeout=args.stream_timeout, relay_only=args.relay_only, pace_ms=args.pace_ms,
                        )  # fmt: skip
                        rounds.append(result)
                        print(
                            f"  K={k}: {result['completed']}/{k} complete, gap p95 {result['max_gap_p95_ms']} ms",
                            file=sys.stderr,
                            flush=True,
                        )
            if args.memory_turns > 0:
                print(f"memory: {args.memory_turns} turns through one process...", file=sys.stderr, flush=True)
                memory = memory_run(
                    users, config=config, turns=args.memory_turns, max_tokens=args.memory_max_tokens,
                    timeout=args.stream_timeout,
                )  # fmt: skip
    finally:
        users_delete()
        ModelConfig.objects.filter(slug=MODEL_SLUG).delete()

    report(args, ks, rounds, memory, cpus_used, load_on)


def report(args, ks: list[int], rounds: list[dict], memory: dict | None, cpus_used: dict, load_on: dict) -> None:
    """Print the table, the targets, and the summary as JSON on the last line."""
    print(
        f"\nWebSocket chats of {args.max_tokens} chunks at {args.pace_ms:g} ms "
        f"({1000 / args.pace_ms:.0f} tokens/s each), "
        f"{'relay only (the bench publishes the events)' if args.relay_only else 'turns inline'}; "
        f"gap limit {GAP_LIMIT_MS:g} ms; "
        f"{os.cpu_count()} CPUs, Daphne pinned: {cpus_used}, clients/publisher/Redis on: {load_on}"
    )
    print(
        f"{'procs':>5}{'K':>6}{'complete':>10}{'gap p95 ms':>12}{'tokens/s per proc':>22}{'CPU s per proc':>18}"
        f"{'CPU ms/token':>14}  ok"
    )
    for r in rounds:
        late = "" if r["publish_late_p95_ms"] is None else f", publisher late p95 {fmt(r['publish_late_p95_ms'])} ms"
        tps = "/".join(fmt(t) for t in r["tokens_per_s_per_process"])
        cpu = "/".join(fmt(c, ".1f") for c in r["cpu_s_per_process"])
        complete = f"{r['completed']}/{r['k']}"
        print(
            f"{r['processes']:>5}{r['k']:>6}{complete:>10}{fmt(r['max_gap_p95_ms']):>12}{tps:>22}{cpu:>18}"
            f"{fmt(r['cpu_ms_per_token'], '.2f'):>14}"
            f"  {'yes' if r['ok'] else 'no'}  stored {r['stored_complete']}, lost chars {r['lost_chars']}, "
            f"dropped {r['channel_layer_dropped']}"
            f"{late}"
            f"{'  errors: ' + ', '.join(r['errors']) if r['errors'] else ''}"
        )
    one, two = largest_ok(rounds, 1), largest_ok(rounds, 2)
    scale = ratio(two, one) if one else None
    capped = one is not None and one == max(ks)
    print(f"largest K within the limit: 1 process {one}, 2 processes {two}; ratio {fmt(scale, '.2f')}")
    if capped:
        print(f"(1 process passed the largest K tried, {max(ks)}: the ratio is a lower bound; try larger --ks)")
    if memory:
        print(
            f"memory: RSS {memory['rss_mb_early']} MB after {memory['early_turns']} turns, "
            f"{memory['rss_mb_end']} MB after {memory['turns']} ({memory['growth']:+.1%}); "
            f"{memory['completed']}/{memory['turns']} complete"
        )

    targets = {
        "ratio_2_to_1": (scale, ">=", TARGET_RATIO),
        "one_process_streams": (one, ">=", TARGET_ONE_PROCESS_STREAMS),
    }
    if memory:
        targets["memory_growth"] = (memory["growth"], "<", TARGET_MEMORY_GROWTH)
    summary_targets = targets_report(targets, width=22)
    print("(noisy: measured on a shared machine; the gaps move with whatever else runs)")

    summary = {
        "ks": ks,
        "max_tokens": args.max_tokens,
        "pace_ms": args.pace_ms,
        "relay_only": args.relay_only,
        "gap_limit_ms": GAP_LIMIT_MS,
        "pinned_cpus": {str(k): v for k, v in cpus_used.items()},
        "load_cpus": {str(k): v for k, v in load_on.items()},
        "rounds": rounds,
        "largest_k_1_process": one,
        "largest_k_2_processes": two,
        "ratio_is_lower_bound": capped,
        "memory": memory,
        "targets": summary_targets,
        "met": all(target["met"] for target in summary_targets.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
