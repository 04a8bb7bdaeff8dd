"""Measure streaming throughput: raw llama-cpp-python against Parley's WebSocket, in one run.

Run with ``make bench`` (embedded PostgreSQL and Valkey are started for it), or
``python -m core.launcher run -- python bench/stream.py --threads 2 --runs 3 --max-tokens 200``.

Both sides use the bundled model (ModelConfig ``smollm2-135m``), the same prompt, ``max_tokens``,
temperature 0, repeat penalty and llama.cpp thread count, so both generate the same text:

- raw: ``llama_cpp.Llama.create_chat_completion(stream=True)`` in this process; tokens are the
  streamed content chunks.
- Parley: a real Daphne server (subprocess) and a WebSocket client logged in as user ``bench``;
  tokens are ``usage.completion_tokens`` from ``generation.completed``. Each run is a new
  conversation and opts out of the response cache, so every answer is generated.

tokens/s is tokens / seconds from the request (call or ``message.send``) to the last token as the
client sees it; TTFT is the time to the first one. After one warm-up each, raw and Parley runs
alternate so machine noise hits both, never concurrently; medians are reported. The ratio
parley/raw is the share of llama.cpp's own speed that reaches the browser through Django, Channels
and Redis (target >= 0.95). The last line of output is the same summary as JSON.

Run it on an otherwise idle machine: llama.cpp's threads wait for each other at every step, so any
other busy process slows generation several-fold. A wide min-max range of tokens/s is the sign.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from harness import PROMPT, bench_user, daphne, django_setup, session_cookie

MODEL_SLUG = "smollm2-135m"
TARGET_RATIO = 0.95


def raw_run(llama, *, max_tokens: int, repeat_penalty: float) -> dict:
    """Stream one answer straight from llama-cpp-python; return tokens, tokens/s, TTFT (ms) and text."""
    messages = [{"role": "user", "content": PROMPT}]
    started = time.perf_counter()
    first = last = None
    parts: list[str] = []
    for chunk in llama.create_chat_completion(
        messages, stream=True, max_tokens=max_tokens, temperature=0, repeat_penalty=repeat_penalty
    ):
        delta = chunk["choices"][0]["delta"].get("content")
        if delta:
            last = time.perf_counter()
            first = first or last
            parts.append(delta)
    return {
        "tokens": len(parts),
        "tokens_per_s": len(parts) / (last - started),
        "ttft_ms": (first - started) * 1000,
        "text": "".join(parts),
    }


async def parley_run(*, port: int, conversation_id, cookie: str, max_tokens: int) -> dict:
    """Send PROMPT over Parley's WebSocket; return tokens, tokens/s, TTFT (ms) and text as the client sees them."""
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/"
    async with connect(url, origin=f"http://127.0.0.1:{port}", additional_headers={"Cookie": cookie}) as ws:
        # "cache": false: measure generation, not a replay from the response cache (temperature 0 is cacheable).
        send = {"type": "message.send", "content": PROMPT, "model": MODEL_SLUG, "cache": False}
        send["params"] = {"max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        await ws.send(json.dumps(send))
        first = last = None
        async for frame in ws:
            event = json.loads(frame)
            if event["type"] == "token":
                last = time.perf_counter()
                first = first or last
            elif event["type"] == "error":
                raise RuntimeError(f"Parley sent an error: {event}")
            elif event["type"] == "generation.completed":
                message = event["message"]
                break
    if message.get("cached"):
        raise RuntimeError("Parley answered from its response cache; the run measured no generation.")
    tokens = message["usage"]["completion_tokens"]
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / (last - started),
        "ttft_ms": (first - started) * 1000,
        "text": message["content"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, both sides (0: its default)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side, after one warm-up (default 3)")
    parser.add_argument("--max-tokens", type=int, default=200, help="completion tokens per answer (default 200)")
    args = parser.parse_args()

    # Set before Django reads its settings; Daphne inherits the same environment.
    django_setup(env={"LLAMA_N_THREADS": str(args.threads)})
    import llama_cpp

    from chat.models import Conversation
    from chat.services import conversation_create
    from inference.models import ModelConfig
    from inference.providers.llama_cpp import REPEAT_PENALTY, resolve_model_path

    user = bench_user()
    cookie = session_cookie(user)
    model = ModelConfig.objects.get(slug=MODEL_SLUG)
    llama = llama_cpp.Llama(
        model_path=str(resolve_model_path(model.model)),
        n_ctx=model.context_window,
        n_threads=args.threads or None,  # as Parley's provider passes it: None lets llama-cpp-python choose
        verbose=False,
    )

    raw: list[dict] = []
    parley: list[dict] = []
    with daphne() as port:
        for run in range(args.runs + 1):  # run 0 is the warm-up (Daphne loads the model then)
            # Parley's provider samples with REPEAT_PENALTY; so must the baseline, to generate the same text.
            raw_result = raw_run(llama, max_tokens=args.max_tokens, repeat_penalty=REPEAT_PENALTY)
            # A fresh conversation each time, so the prompt is exactly the raw one.
            conversation = conversation_create(owner=user)
            parley_result = asyncio.run(
                parley_run(port=port, conversation_id=conversation.pk, cookie=cookie, max_tokens=args.max_tokens)
            )
            if run:
                raw.append(raw_result)
                parley.append(parley_result)
    Conversation.objects.filter(owner=user).delete()  # this run's; a failed run's go with the next one

    keys = ("tokens", "tokens_per_s", "ttft_ms")
    medians = {
        name: {key: statistics.median(result[key] for result in results) for key in keys}
        for name, results in (("raw", raw), ("parley", parley))
    }
    ratio = medians["parley"]["tokens_per_s"] / medians["raw"]["tokens_per_s"]
    same_text = all(p["text"] == r["text"] for p, r in zip(parley, raw, strict=True))
    print(f"\n{PROMPT!r}, max_tokens={args.max_tokens}, temperature 0, {args.threads} threads, median of {args.runs}")
    print(f"{'':8}{'tokens':>8}{'tokens/s':>10}{'min-max':>11}{'TTFT ms':>9}")
    for name, results in (("raw", raw), ("parley", parley)):
        m, speeds = medians[name], [result["tokens_per_s"] for result in results]
        spread = f"{min(speeds):.1f}-{max(speeds):.1f}"
        print(f"{name:8}{m['tokens']:>8.0f}{m['tokens_per_s']:>10.1f}{spread:>11}{m['ttft_ms']:>9.0f}")
    print(f"ratio parley/raw: {ratio:.3f} (target >= {TARGET_RATIO}); same text: {'yes' if same_text else 'NO'}")
    summary = {
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        **{f"{name}_{key}": round(value, 1) for name, m in medians.items() for key, value in m.items()},
        "ratio": round(ratio, 3),
        "same_text": same_text,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
