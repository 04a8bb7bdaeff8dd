"""Measure routing from outside: one Parley model served by one saturated upstream, then by two, then losing one.

Run with ``make bench``, or ``python -m core.launcher run -- python bench/routing.py`` (embedded
PostgreSQL and Valkey are started for it). Loopback only; it stops by itself in about a minute.

Three processes are started: two upstreams A and B (``bench/upstream.py --max-concurrent C``: each
answers at most C requests at once, the others wait for a slot, as a saturated vLLM does; ``--tokens``
chunks ``--pace-ms`` apart, so an answer takes ``tokens x pace`` once it has a slot) and Parley under
Daphne with production settings and every per-user limit out of the way (``bench/gateway.py``'s
environment). One model config ``bench-routing`` (``least_busy`` routing, response cache ``never``)
has deployment ``a`` (upstream A), and in the "both" runs also deployment ``b`` (upstream B); neither
has a ``max_concurrent`` of its own, so Parley sends every request on and the upstreams queue them.
One bench user with one API key drives ``POST /v1/chat/completions`` streamed (SSE), with K
concurrent clients (``--clients``, default 3C). K = 2C fills both upstreams only if Parley added no
time between one answer and the client's next request; with 3C both keep a queue, as saturated
servers do, so the ratio measures the routing rather than Parley's time per request.

Phase 1, ``--rounds`` rounds (the order of "one" and "both" swaps every round, after one unmeasured
warm-up): for ``--seconds`` seconds, each client sends requests one after another. Requests/s is the
completed requests over the wall time from the start to the last answer. Target: both / one >= 1.8x
(2x is the ceiling: twice the upstream slots).

Phase 2 (both deployments): a fixed run of ``--kill-requests`` requests per client; once half of them
have ended, and half an answer's time later (so that B is streaming some and queueing others),
upstream B is killed (SIGKILL: a crash, no goodbye). Counted:
- ``failed_after_kill``: requests that failed before their first token (target 0: Parley must move
  them to A, whether they were waiting in B's queue, sent to B after the crash, or refused by it);
- ``cut_mid_stream``: requests that were streaming from B when it died. Parley never switches
  deployments after the first token (the answer ends with an error event and its partial text), so
  these are expected: at most C, and not counted against the target.
- p95 latency (request to ``[DONE]``) and p95 TTFT of the run, and what they add to phase 1's "both".
  After the kill only A's C slots remain, so waiting for them dominates the added latency; the
  TTFT of requests started within a second after the kill shows the failover itself.

The last line of output is the summary as JSON, with ``met`` per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass

import aiohttp
import psutil
from gateway import PARLEY_ENV, cpu_seconds, daphne_process, fmt, percentile, ratio, rounded, targets_report
from harness import BASE_DIR, PROMPT, bench_user, daphne, django_setup, free_port, server_process
from upstream import canned_deltas

MODEL_SLUG = "bench-routing"
UPSTREAM_MODEL = "bench-upstream"
USERNAME = "bench-routing"
TARGET_RATIO = 1.8
TARGET_FAILED_AFTER_KILL = 0


@dataclass
class Request:
    """One streamed request as the client saw it (times: perf_counter seconds)."""

    started: float
    first_token: float | None = None
    ended: float | None = None
    completed: bool = False  # ``data: [DONE]`` after the whole answer and no error event
    error: str | None = None
    text: str = ""

    @property
    def latency_ms(self) -> float | None:
        return (self.ended - self.started) * 1000 if self.completed and self.ended else None

    @property
    def ttft_ms(self) -> float | None:
        return (self.first_token - self.started) * 1000 if self.first_token else None


async def streamed_request(session, url: str, *, headers: dict, body: dict, timeout: float) -> Request:
    """Send one streamed chat completion and read it to ``data: [DONE]``, an error event or ``timeout`` s.

    Complete only with the whole of the upstream's canned answer of ``body["max_tokens"]`` chunks."""
    expected = "".join(canned_deltas(body["max_tokens"]))
    request = Request(started=time.perf_counter())
    try:
        async with asyncio.timeout(timeout), session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                request.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return request
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    if request.error is None and request.text != expected:
                        # The bench's upstream always sends the same text: anything else is an answer cut short.
                        request.error = f"answer cut short: {len(request.text)} of {len(expected)} characters"
                    request.completed = request.error is None
                    break
                event = json.loads(data)
                if "error" in event:
                    request.error = f"error event: {event['error'].get('code')}"
                    continue
                for choice in event.get("choices") or []:
                    if content := (choice.get("delta") or {}).get("content"):
                        request.first_token = request.first_token or time.perf_counter()
                        request.text += content
            else:
                request.error = request.error or "stream ended without [DONE]"
    except TimeoutError:
        request.error = "timeout"
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an event that is not JSON
        request.error = f"{type(exc).__name__}: {exc}"
    finally:
        request.ended = time.perf_counter()
    return request


async def run_clients(
    url: str | list[str], *, key: str, body: dict, clients: int, timeout: float, until=None, count=None, on_end=None
):
    """``clients`` concurrent clients, each sending requests one after another to ``url`` (or, given a
    list, client i to the i-th URL modulo its length): until ``until``
    (perf_counter s) passes, or ``count`` each. ``on_end(request)`` is called as each one ends.
    Return ``(requests, wall seconds from the start to the last end)``."""
    headers = {"Authorization": f"Bearer {key}"}
    done: list[Request] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(url: str) -> None:
            sent = 0
            while (until is None or time.perf_counter() < until) and (count is None or sent < count):
                sent += 1
                request = await streamed_request(session, url, headers=headers, body=body, timeout=timeout)
                done.append(request)
                if on_end is not None:
                    on_end(request)

        started = time.perf_counter()
        urls = [url] if isinstance(url, str) else url
        await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(clients)))
    return done, max((r.ended for r in done), default=started) - started


def upstream_process(port: int) -> psutil.Process:
    """Return this bench's upstream child process that listens on ``port``."""
    for child in psutil.Process().children(recursive=True):
        if "upstream.py" in " ".join(child.cmdline()) and str(port) in child.cmdline():
            return child
    raise RuntimeError(f"No upstream process on port {port}.")


def served_since(user, last_id: int) -> tuple[dict[str, int], int]:
    """Return ``({"<deployment> <route>": requests}, newest id)`` of ``user``'s usage records after ``last_id``."""
    from django.db.models import Count, Max

    from accounts.models import UsageRecord

    records = UsageRecord.objects.filter(user=user, pk__gt=last_id)
    counts = {
        f"{row['deployment'].rsplit('/', 1)[-1]} {row['route']}": row["n"]
        for row in records.values("deployment", "route").annotate(n=Count("pk")).order_by("deployment", "route")
    }
    return counts, records.aggregate(last=Max("pk"))["last"] or last_id


def summary_of(requests: list[Request], wall: float) -> dict:
    latencies = [r.latency_ms for r in requests if r.latency_ms is not None]
    return {
        "ok": len(latencies),
        "failed": sum(not r.completed for r in requests),
        "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "ttft_p95": percentile([r.ttft_ms for r in requests if r.ttft_ms is not None], 95),
        "errors": sorted({r.error for r in requests if r.error})[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-concurrent", type=int, default=4, help="C: requests each upstream serves at once (4)")
    parser.add_argument("--clients", type=int, default=0, help="K: concurrent clients (default 0: 3C)")
    parser.add_argument("--tokens", type=int, default=50, help="N: chunks per answer (default 50)")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="upstream ms between chunks (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="phase 1: seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="phase 1: rounds of one + both (default 2)")
    parser.add_argument("--kill-requests", type=int, default=8, help="phase 2: requests per client (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="s a request may take (default 60)")
    args = parser.parse_args()
    clients = args.clients or 3 * args.max_concurrent
    if min(args.max_concurrent, clients, args.tokens, args.rounds, args.kill_requests) < 1 or args.seconds <= 0:
        parser.error("every count must be at least 1 and --seconds positive")

    django_setup(
        settings="config.settings.production", env={"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), **PARLEY_ENV}
    )
    from accounts.services import api_key_create
    from inference.models import CachePolicy, Deployment, ModelConfig, Provider, RoutingStrategy
    from inference.routing import deployment_states

    ports = {name: free_port() for name in ("a", "b")}
    urls = {name: f"http://127.0.0.1:{port}/v1" for name, port in ports.items()}

    def upstream_command(name: str) -> list[str]:
        command = [sys.executable, str(BASE_DIR / "bench" / "upstream.py"), "--port", str(ports[name])]
        return command + ["--pace-ms", str(args.pace_ms), "--max-concurrent", str(args.max_concurrent)]

    user = bench_user(USERNAME)
    key = api_key_create(user=user, name="bench-routing")[1]
    ModelConfig.objects.filter(slug=MODEL_SLUG).delete()  # a crashed run may have left it, with other ports
    config = ModelConfig.objects.create(
        slug=MODEL_SLUG,
        display_name="Bench routing (two saturated upstreams)",
        provider=Provider.OPENAI_COMPATIBLE,
        model=UPSTREAM_MODEL,
        base_url=urls["a"],
        cache_policy=CachePolicy.NEVER,
        semantic_cache=False,
        context_window=4096,
        max_tokens=max(512, args.tokens),
        routing_strategy=RoutingStrategy.LEAST_BUSY,
        is_enabled=True,
    )
    Deployment.objects.create(config=config, name="a", model=UPSTREAM_MODEL, base_url=urls["a"], order=0)

    def deployments(both: bool) -> None:
        if both:
            Deployment.objects.get_or_create(
                config=config, name="b", defaults={"model": UPSTREAM_MODEL, "base_url": urls["b"], "order": 1}
            )
        else:
            Deployment.objects.filter(config=config, name="b").delete()

    body = {
        "model": MODEL_SLUG,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.tokens,
        "stream": True,
    }
    phase1: dict[str, list[tuple[list[Request], float]]] = {"one": [], "both": []}
    cpu_share: dict[str, list[float]] = {}  # Daphne's CPU seconds per wall second, per run
    try:
        with (
            server_process(upstream_command("a"), port=ports["a"], name="upstream A"),
            server_process(upstream_command("b"), port=ports["b"], name="upstream B"),
            daphne() as port,
        ):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"

            server = daphne_process(port)
            last_id = 0

            def run(label: str, **kwargs) -> tuple[list[Request], float]:
                """One run; print where its requests went (usage records) and Daphne's CPU use during it."""
                nonlocal last_id
                cpu = cpu_seconds(server)
                result = asyncio.run(
                    run_clients(url, key=key, body=body, clients=clients, timeout=args.timeout, **kwargs)
                )
                cpu = cpu_seconds(server) - cpu
                time.sleep(0.5)  # the last usage records are written after the last answers end
                counts, last_id = served_since(user, last_id)
                where = ", ".join(f"{k}: {v}" for k, v in counts.items())
                # The router's own TTFT samples (from the attempt's start: the upstream's queue and first
                # chunk, without Parley's work before routing), last 20 per deployment.
                routed = list(config.deployments.all())
                ttfts = ", ".join(
                    f"{d.name} {fmt(state.p50_ttft_ms)} ms"
                    for d, state in zip(routed, deployment_states(routed), strict=True)
                )
                print(
                    f"  served by {where or '-'}; router TTFT p50 (last 20) {ttfts}; "
                    f"Daphne CPU {100 * cpu / result[1]:.0f}% of a core, "
                    f"{1000 * cpu / max(1, len(result[0])):.0f} ms per request",
                    file=sys.stderr,
                    flush=True,
                )
                cpu_share.setdefault(label, []).append(cpu / result[1])
                return result

            print("warm-up...", file=sys.stderr, flush=True)
            deployments(both=True)
            run("warm-up", count=1)
            for round_number in range(args.rounds):
                for side in ("one", "both") if round_number % 2 == 0 else ("both", "one"):
                    deployments(both=side == "both")
                    phase1[side].append(run(side, until=time.perf_counter() + args.seconds))
                    s = summary_of(*phase1[side][-1])
                    print(
                        f"round {round_number + 1}/{args.rounds} {side}: {s['rps']:.2f} req/s, {s['failed']} failed",
                        file=sys.stderr,
                        flush=True,
                    )

            # The machine's ceiling, no Parley: half the clients straight to A, half to B, for as long.
            direct = asyncio.run(
                run_clients(
                    [f"{urls['a']}/chat/completions", f"{urls['b']}/chat/completions"],
                    key="",
                    body={**body, "model": UPSTREAM_MODEL},
                    clients=clients,
                    timeout=args.timeout,
                    until=time.perf_counter() + args.seconds,
                )
            )
            print(f"direct to A and B: {summary_of(*direct)['rps']:.2f} req/s", file=sys.stderr, flush=True)

            # Phase 2: both, B killed once half the run's requests have ended.
            deployments(both=True)
            total = clients * args.kill_requests
            upstream_ms = args.tokens * args.pace_ms
            b_process = upstream_process(ports["b"])
            killed_at: list[float] = []

            def kill_b() -> None:
                b_process.kill()
                killed_at.append(time.perf_counter())

            def on_end(_request: Request) -> None:
                ended.append(None)
                if len(ended) == total // 2:
                    # Half an answer later, so that B is streaming answers (and queueing others) when it dies:
                    # the clients' requests run in waves, and right at the end of one nothing is on B yet.
                    asyncio.get_running_loop().call_later(upstream_ms / 2000, kill_b)

            ended: list[None] = []
            kill_requests, kill_wall = run("kill", count=args.kill_requests, on_end=on_end)
    finally:
        ModelConfig.objects.filter(slug=MODEL_SLUG).delete()
        user.delete()

    one = summary_of([r for rs, _ in phase1["one"] for r in rs], sum(w for _, w in phase1["one"]))
    both = summary_of([r for rs, _ in phase1["both"] for r in rs], sum(w for _, w in phase1["both"]))
    # requests/s: the median over rounds, as bench/gateway.py does; latencies pooled over rounds.
    one["rps"] = statistics.median(summary_of(*run_)["rps"] for run_ in phase1["one"])
    both["rps"] = statistics.median(summary_of(*run_)["rps"] for run_ in phase1["both"])
    kill = summary_of(kill_requests, kill_wall)
    direct_both = summary_of(*direct)
    kill_time = killed_at[0] if killed_at else None
    failed_before_token = [r for r in kill_requests if not r.completed and r.first_token is None]
    cut_mid_stream = [r for r in kill_requests if not r.completed and r.first_token is not None]
    in_flight_at_kill = [r for r in kill_requests if kill_time is not None and r.started < kill_time < r.ended]
    right_after = [
        r.ttft_ms
        for r in kill_requests
        if kill_time is not None and kill_time <= r.started < kill_time + 1 and r.ttft_ms is not None
    ]
    both_ttft_p50 = percentile([r.ttft_ms for rs, _ in phase1["both"] for r in rs if r.ttft_ms is not None], 50)
    upstream_ms = args.tokens * args.pace_ms
    rps_ratio = ratio(both["rps"], one["rps"])

    print(
        f"\nphase 1: {clients} clients, streamed /v1, {args.tokens} chunks ({upstream_ms:.0f} ms upstream), "
        f"each upstream {args.max_concurrent} at once; {args.rounds} rounds of {args.seconds:g} s"
    )
    print(f"{'':6}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'TTFT p95':>10}{'ok':>6}{'failed':>8}")
    for name, s in (("one", one), ("both", both), ("kill", kill), ("direct", direct_both)):
        print(
            f"{name:6}{fmt(s['rps'], '.2f'):>8}{fmt(s['p50']):>9}{fmt(s['p95']):>9}{fmt(s['ttft_p95']):>10}"
            f"{s['ok']:>6}{s['failed']:>8}"
        )
        if s["errors"]:
            print(f"  {name} errors: {'; '.join(s['errors'])}")
    print(
        f"ratio both/one: x{fmt(rps_ratio, '.2f')} (ceiling x2.00); direct to A and B, no Parley: "
        f"{direct_both['rps']:.2f} req/s (ideal {2 * args.max_concurrent * 1000 / upstream_ms:.2f}), "
        f"x{fmt(ratio(direct_both['rps'], one['rps']), '.2f')} Parley's one"
    )
    print(
        f"phase 2: {total} requests, B killed {upstream_ms / 2:.0f} ms after {total // 2} ended: "
        f"{len(failed_before_token)} failed before their first token, {len(cut_mid_stream)} cut mid-stream "
        f"(streaming from B, at most {args.max_concurrent}); "
        f"TTFT p50 of the {len(right_after)} requests started within 1 s after the kill "
        f"{fmt(percentile(right_after, 50))} ms (phase 1 both: {fmt(both_ttft_p50)} ms); "
        f"B killed: {'yes' if killed_at else 'NO'} ({'still running!' if b_process.is_running() else 'gone'}), "
        f"with {len(in_flight_at_kill)} requests in flight through Parley"
    )

    targets = {
        "ratio": (rps_ratio, ">=", TARGET_RATIO),
        "failed_after_kill": (len(failed_before_token), "<=", TARGET_FAILED_AFTER_KILL),
    }
    summary_targets = targets_report(targets, width=20)

    summary = {
        "rps_one": rounded(one["rps"], 2),
        "rps_both": rounded(both["rps"], 2),
        "rps_direct_both": rounded(direct_both["rps"], 2),
        "p95_ms_direct_both": rounded(direct_both["p95"]),
        "ratio": rounded(rps_ratio, 3),
        "failed_after_kill": len(failed_before_token),
        "cut_mid_stream": len(cut_mid_stream),
        "kill_requests": total,
        "kill_failed_total": kill["failed"],
        "p95_ms_one": rounded(one["p95"]),
        "p95_ms_both": rounded(both["p95"]),
        "p95_ms_kill": rounded(kill["p95"]),
        "p95_ms_added": rounded(None if kill["p95"] is None or both["p95"] is None else kill["p95"] - both["p95"]),
        "ttft_p95_ms_both": rounded(both["ttft_p95"]),
        "ttft_p95_ms_kill": rounded(kill["ttft_p95"]),
        "ttft_p50_ms_after_kill_1s": rounded(percentile(right_after, 50)),
        **{
            f"daphne_cpu_pct_{name}": rounded(100 * statistics.mean(cpu_share[name]))
            for name in ("one", "both", "kill")
        },
        "errors_one": one["errors"],
        "errors_both": both["errors"],
        "errors_kill": kill["errors"],
        "clients": clients,
        "max_concurrent": args.max_concurrent,
        "tokens": args.tokens,
        "pace_ms": args.pace_ms,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "targets": summary_targets,
        "met": all(target["met"] for target in summary_targets.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
