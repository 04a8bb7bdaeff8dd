"""Measure what Parley adds to MCP, both ways, against the official SDK talking to the same servers.

Run with ``make bench``, or ``python -m core.launcher run -- python bench/mcp_latency.py --calls 50``
(embedded PostgreSQL and Valkey are started for it). Loopback only; it stops by itself.

(a) **Parley as an MCP client** (``agents.mcp``: what a chat turn and ``manage.py mcp`` use). The
    server is ``tests/agents/mcp_server.py`` (the SDK's ``MCPServer`` over Streamable HTTP), tool
    ``add``. Baseline: one SDK ``ClientSession`` kept open, ``--calls`` calls one after another.
    Parley: ``mcp_tool_call`` the same number of times. Parley opens a session per call (connect,
    ``initialize``, call, close: no session outlives a turn step, so a dead server never holds one),
    which is what the ratio prices.
(b) **Parley as an MCP server** (``/mcp`` under Daphne, production settings, a ``pk_`` key). One SDK
    session each, kept open: ``tools/list`` and ``tools/call`` of Parley's ``documents_list`` (a
    database query for the key's owner) against ``tools/list`` and ``add`` on the bare SDK server:
    what Parley's authentication, rate limit and owner-scoped query add to the protocol's own cost.
    ``GET /v1/models`` with the same key is shown as Parley's cheapest authenticated request.

Latencies are p50 / p95 over the calls in ms, after ``--warmup`` unmeasured calls per side. No
targets: the figures are reported as measured. The last line is the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import httpx2
from harness import BASE_DIR, daphne, django_setup, free_port, server_process

PARLEY_ENV = {
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "RATE_LIMIT_USER": "1000000/min",
    "EMBEDDING_PRELOAD": "false",
}
USERNAME = "bench-mcp"


def percentiles(values: list[float]) -> dict:
    """Return ``{"p50", "p95"}`` of ``values`` (ms), rounded to 0.01 ms."""
    if len(values) == 1:
        return {"p50": round(values[0], 2), "p95": round(values[0], 2)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(statistics.median(values), 2), "p95": round(cuts[94], 2)}


async def timed(count: int, warmup: int, call) -> list[float]:
    """Await ``call()`` ``warmup`` times unmeasured, then ``count`` times; return each latency (ms)."""
    for _ in range(warmup):
        await call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def sdk_session_latencies(
    url: str, *, headers: dict, calls: list[tuple[str, dict | None]], count: int, warmup: int
):
    """One SDK session on ``url``; for each ``(tool or "tools/list", arguments)``, its latencies (ms)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    results = {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for name, arguments in calls:
            if name == "tools/list":

                async def call():
                    await session.list_tools()
            else:

                async def call(name=name, arguments=arguments):
                    result = await session.call_tool(name, arguments)
                    if result.is_error:
                        raise RuntimeError(f"{name} failed: {result.content}")

            results[name] = await timed(count, warmup, call)
    return results


async def parley_client_latencies(url: str, *, count: int, warmup: int) -> list[float]:
    """(a) Parley's client: ``mcp_tool_call`` of ``add`` on ``url``, a session per call (ms)."""
    from agents.mcp import McpServerSpec, mcp_tool_call

    spec = McpServerSpec(
        id="bench",
        slug="bench",
        name="bench",
        transport="streamable_http",
        url=url,
        command="",
        args=(),
        env_passthrough=(),
        bearer_token_env="",
        header_envs=(),
        timeout=30,
        allow_all_tools=True,
        allowed_tools=(),
        shared=True,
        cache_results=False,
        version="",
    )

    async def call():
        outcome = await mcp_tool_call(spec, name="add", arguments={"a": 2, "b": 3})
        if not outcome.ok or outcome.text.strip() != "5":
            raise RuntimeError(f"add failed: {outcome}")

    return await timed(count, warmup, call)


def models_latencies(base: str, key: str, *, count: int, warmup: int) -> list[float]:
    """``GET /v1/models`` with ``key`` over one keep-alive connection (ms)."""
    latencies = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for i in range(warmup + count):
            started = time.perf_counter()
            client.get(f"{base}/v1/models").raise_for_status()
            if i >= warmup:
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="measured calls per side (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured calls per side first (default 5)")
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2")

    django_setup(
        settings="config.settings.production", env={"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), **PARLEY_ENV}
    )
    from accounts.models import User
    from accounts.services import api_key_create

    User.objects.filter(username=USERNAME).delete()
    user = User.objects.create_user(username=USERNAME)
    key = api_key_create(user=user, name="bench")[1]
    port = free_port()
    record = Path(tempfile.mkdtemp()) / "calls.jsonl"
    command = [sys.executable, str(BASE_DIR / "tests" / "agents" / "mcp_server.py"), "--transport", "streamable-http"]
    command += ["--port", str(port), "--record", str(record)]
    bare_url = f"http://127.0.0.1:{port}/mcp"
    n, w = args.calls, args.warmup
    try:
        with server_process(command, port=port, name="MCP server"), daphne() as parley_port:
            parley = f"http://127.0.0.1:{parley_port}"
            bare = asyncio.run(
                sdk_session_latencies(
                    bare_url, headers={}, calls=[("tools/list", None), ("add", {"a": 2, "b": 3})], count=n, warmup=w
                )
            )
            client = asyncio.run(parley_client_latencies(bare_url, count=n, warmup=w))
            served = asyncio.run(
                sdk_session_latencies(
                    parley + "/mcp",
                    headers={"Authorization": f"Bearer {key}"},
                    calls=[("tools/list", None), ("documents_list", {})],
                    count=n,
                    warmup=w,
                )
            )
            models = models_latencies(parley, key, count=n, warmup=w)
    finally:
        User.objects.filter(username=USERNAME).delete()

    figures = {
        "sdk_session_call_add": percentiles(bare["add"]),
        "parley_client_call_add": percentiles(client),
        "sdk_server_tools_list": percentiles(bare["tools/list"]),
        "parley_server_tools_list": percentiles(served["tools/list"]),
        "parley_server_call_documents_list": percentiles(served["documents_list"]),
        "parley_v1_models": percentiles(models),
    }

    def p50_ratio(a: str, b: str) -> float:
        return round(figures[a]["p50"] / figures[b]["p50"], 2)

    ratios = {
        "client_call_vs_sdk_session": p50_ratio("parley_client_call_add", "sdk_session_call_add"),
        "server_tools_list_vs_sdk_server": p50_ratio("parley_server_tools_list", "sdk_server_tools_list"),
        "server_call_vs_sdk_server_call": p50_ratio("parley_server_call_documents_list", "sdk_session_call_add"),
    }
    print(f"{args.calls} calls per side after {args.warmup} warm-up calls; latencies in ms")
    print(f"{'':36}{'p50':>9}{'p95':>9}")
    for name, value in figures.items():
        print(f"{name:36}{value['p50']:>9.2f}{value['p95']:>9.2f}")
    print("ratios (p50): " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    print(json.dumps({"calls": args.calls, **{f"{k}_ms": v for k, v in figures.items()}, "ratios": ratios}))


if __name__ == "__main__":
    main()
