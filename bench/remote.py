"""Measure a remote model's throughput: Parley's turns against the ``openai`` client, to one llama.cpp server.

Run with ``python -m core.launcher run -- python bench/remote.py --runs 5 --max-tokens 150``
(embedded PostgreSQL and Valkey are started for it).

One ``python -m llama_cpp.server`` with the bundled SmolLM2 (``tests.servers.llama_cpp_server``,
model alias ``smollm2``, 2 threads) serves both sides the same request: PROMPT as the only user
message, ``max_tokens``, temperature 0, streamed, so both generate the same text:

- direct: ``openai.OpenAI(base_url=...).chat.completions.create(stream=True)`` in this process;
  tokens are the server's ``usage.completion_tokens`` (the content chunks when it sends no usage).
- Parley: a ModelConfig ``bench-remote`` (provider ``openai_compatible``) and a real turn,
  ``chat.services.message_send`` then ``chat.turns.turn_run``, in a new conversation of user
  ``bench`` that opts out of the response cache (``cache=False``), so every answer is generated.
  Tokens, TTFT and latency are the stored message's ``completion_tokens``, ``ttft_ms`` and
  ``latency_ms``, which Parley times from the start of the turn.

tokens/s is tokens / seconds from the request to the last token; TTFT is the time to the first one.
After one warm-up each, direct and Parley runs alternate (and swap which goes first) so machine
noise hits both, never concurrently; medians are reported. The ratio parley/direct is the share of
the server's speed that survives Parley's provider, turn loop, channel-layer events and database
writes (target >= 0.95); "TTFT added" is the median over runs of Parley's TTFT minus the direct
TTFT of the same run, in ms. "wall tokens/s" also counts ``message_send`` and the final write, which
the message's own timings leave out. The last line of output is the same summary as JSON.

Run it on an otherwise idle machine: llama.cpp's threads wait for each other at every step, so any
other busy process slows generation several-fold. A wide min-max range of tokens/s is the sign.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from harness import PROMPT, bench_user, django_setup

MODEL_SLUG = "bench-remote"
SERVER_MODEL = "smollm2"  # the alias llama_cpp_server() gives the bundled model
TARGET_RATIO = 0.95


def direct_run(client, *, max_tokens: int) -> dict:
    """Stream one answer straight from the server; return tokens, tokens/s, TTFT (ms) and text."""
    started = time.perf_counter()
    first = last = None
    parts: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model=SERVER_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},  # as Parley's provider asks
    )
    with stream:
        for part in stream:
            if part.usage is not None:
                usage = part.usage
            for choice in part.choices:
                if choice.delta and choice.delta.content:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(choice.delta.content)
    tokens = usage.completion_tokens if usage is not None and usage.completion_tokens else len(parts)
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / (last - started),
        "ttft_ms": (first - started) * 1000,
        "text": "".join(parts),
    }


def parley_run(*, user, max_tokens: int, conversation_ids: list) -> dict:
    """Run one uncached turn of PROMPT on ``bench-remote``; return tokens, tokens/s, TTFT (ms) and text.

    Appends the new conversation's id to ``conversation_ids``, for clean-up.
    """
    from asgiref.sync import async_to_sync

    from chat.models import MessageStatus
    from chat.services import conversation_create, message_send
    from chat.turns import turn_run

    # A fresh conversation each time, so the model sees exactly the direct side's messages.
    conversation = conversation_create(owner=user)
    conversation_ids.append(conversation.pk)
    started = time.perf_counter()
    turn = message_send(
        conversation=conversation,
        content=PROMPT,
        model_slug=MODEL_SLUG,
        params={"max_tokens": max_tokens, "temperature": 0},
        cache=False,  # measure generation, not a replay from the response cache
    )
    message = async_to_sync(turn_run)(turn)
    wall_s = time.perf_counter() - started
    if message.status != MessageStatus.COMPLETE:
        raise RuntimeError(f"Parley's turn ended {message.status}: {message.error}")
    if message.cached:
        raise RuntimeError("Parley answered from its response cache; the run measured no generation.")
    tokens = message.completion_tokens
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / (message.latency_ms / 1000),
        "ttft_ms": message.ttft_ms,
        "wall_tokens_per_s": tokens / wall_s,
        "text": message.content,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side, after one warm-up (default 5)")
    parser.add_argument("--max-tokens", type=int, default=150, help="completion tokens per answer (default 150)")
    args = parser.parse_args()

    django_setup()
    import openai

    from chat.models import Conversation
    from inference.models import ModelConfig, Provider
    from tests.servers import llama_cpp_server

    user = bench_user()
    conversation_ids: list = []
    direct: list[dict] = []
    parley: list[dict] = []
    with llama_cpp_server(alias=SERVER_MODEL) as base_url:
        # update_or_create: a crashed run may have left the config behind, with another port.
        ModelConfig.objects.update_or_create(
            slug=MODEL_SLUG,
            defaults={
                "display_name": "SmolLM2 (bench, llama.cpp server)",
                "provider": Provider.OPENAI_COMPATIBLE,
                "model": SERVER_MODEL,
                "base_url": base_url,
                "is_enabled": True,
            },
        )
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        try:
            for run in range(args.runs + 1):  # run 0 is the warm-up
                sides = [
                    lambda: direct_run(client, max_tokens=args.max_tokens),
                    lambda: parley_run(user=user, max_tokens=args.max_tokens, conversation_ids=conversation_ids),
                ]
                order = (0, 1) if run % 2 == 0 else (1, 0)
                results = {side: sides[side]() for side in order}
                if run:
                    direct.append(results[0])
                    parley.append(results[1])
        finally:
            client.close()
            Conversation.objects.filter(pk__in=conversation_ids).delete()
            ModelConfig.objects.filter(slug=MODEL_SLUG).delete()

    keys = ("tokens", "tokens_per_s", "ttft_ms")
    medians = {
        name: {key: statistics.median(result[key] for result in results) for key in keys}
        for name, results in (("direct", direct), ("parley", parley))
    }
    ratio = medians["parley"]["tokens_per_s"] / medians["direct"]["tokens_per_s"]
    ttft_added_ms = statistics.median(p["ttft_ms"] - d["ttft_ms"] for p, d in zip(parley, direct, strict=True))
    wall_tokens_per_s = statistics.median(p["wall_tokens_per_s"] for p in parley)
    same_text = all(p["text"] == d["text"] for p, d in zip(parley, direct, strict=True))
    print(f"\n{PROMPT!r}, max_tokens={args.max_tokens}, temperature 0, llama.cpp server, median of {args.runs}")
    print(f"{'':8}{'tokens':>8}{'tokens/s':>10}{'min-max':>13}{'TTFT ms':>9}")
    for name, results in (("direct", direct), ("parley", parley)):
        m, speeds = medians[name], [result["tokens_per_s"] for result in results]
        spread = f"{min(speeds):.1f}-{max(speeds):.1f}"
        print(f"{name:8}{m['tokens']:>8.0f}{m['tokens_per_s']:>10.1f}{spread:>13}{m['ttft_ms']:>9.0f}")
    print(f"parley wall tokens/s (message_send to stored answer): {wall_tokens_per_s:.1f}")
    print(f"ratio parley/direct: {ratio:.3f} (target >= {TARGET_RATIO}); same text: {'yes' if same_text else 'NO'}")
    print(f"TTFT added by Parley (p50 of parley - direct): {ttft_added_ms:.0f} ms")
    summary = {
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        **{f"{name}_{key}": round(value, 1) for name, m in medians.items() for key, value in m.items()},
        "parley_wall_tokens_per_s": round(wall_tokens_per_s, 1),
        "ratio": round(ratio, 3),
        "ttft_added_ms": round(ttft_added_ms, 1),
        "same_text": same_text,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
