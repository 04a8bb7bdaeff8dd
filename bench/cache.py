"""Measure the response cache: cached against generated answers, django-redis against raw redis-py, stampedes.

Run with ``python -m core.launcher run -- python bench/cache.py --runs 3 --hits 5 --gets 2000``
(embedded PostgreSQL and Valkey are started for it; Valkey is new and empty each time).

Three measurements in one run, on the bundled model (ModelConfig ``smollm2-135m``, llama.cpp in this
process, loaded by a warm-up turn first) at temperature 0, which its ``deterministic`` cache policy
lets the ``llm`` layer serve:

(a) Cached vs uncached answer. Each run flushes the ``llm`` layer, then sends a conversation's first
    message (a miss: it is generated, ``max_tokens`` tokens, and stored), then the same first message
    ``--hits`` times in new conversations (hits: replayed from the cache). Turns are
    ``chat.services.message_send`` then ``chat.turns.turn_run``; latency is the stored message's
    ``latency_ms`` (start of the turn to the stored answer). Ratio: median hit latency / median miss
    latency (target <= 0.05): what a cached answer costs as a share of generating it.
(b) django-redis vs redis-py. The same ``--payload-bytes`` JSON-able dict (an answer's shape) is
    stored with ``caches["llm"].set`` and, as JSON, with a raw ``SET`` on the same connection pool
    (``django_redis.get_redis_connection("llm")``). ``--gets`` reads each way, in ``--blocks``
    alternating blocks; the per-read time is the median over blocks, in microseconds. Ratio:
    django/raw (target <= 1.5): the cost of django-redis's key making and unpickling over one bare
    ``GET``. Two more rows, not in the ratio: the raw ``GET`` plus ``json.loads`` (what any client
    must do to get a dict back), and ``inference.cache.layer("llm").get``, the lookup turns make,
    which also reads the layer's namespace version (a second round trip).
(c) Stampede. After a flush, ``--concurrency`` users (``bench-stampede-NN``, one new conversation
    each) send the same first message at once (threads released by a barrier) through the REST API
    (``POST /api/v1/conversations/<id>/messages/`` with ``django.test.Client``). Single flight should
    let one of them generate and the rest wait for its answer: generations (answers with
    ``cached`` false) / concurrency, target 1/concurrency. Answers are cached per user unless the
    model shares its cache, so the model's ``cache_shared`` is on for this part (and restored after).

Latencies are medians: the machine may be busy with other work. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from harness import PROMPT, bench_user, django_setup

MODEL_SLUG = "smollm2-135m"
STAMPEDE_PROMPT = "Describe a lighthouse at night in two sentences."
STAMPEDE_USER = "bench-stampede-{:02d}"
TARGET_CACHED_RATIO = 0.05
TARGET_CLIENT_RATIO = 1.5


def turn(*, user, content: str, max_tokens: int, cache: bool, conversation_ids: list):
    """Send ``content`` as a new conversation's first message and run the turn; return the stored answer.

    Appends the conversation's id to ``conversation_ids``, for clean-up.
    """
    from asgiref.sync import async_to_sync

    from chat.models import MessageStatus
    from chat.services import conversation_create, message_send
    from chat.turns import turn_run

    conversation = conversation_create(owner=user)
    conversation_ids.append(conversation.pk)
    sent = message_send(
        conversation=conversation,
        content=content,
        model_slug=MODEL_SLUG,
        params={"max_tokens": max_tokens, "temperature": 0},
        cache=cache,
    )
    message = async_to_sync(turn_run)(sent)
    if message.status != MessageStatus.COMPLETE:
        raise RuntimeError(f"The turn ended {message.status}: {message.error}")
    return message


def cached_vs_uncached(*, user, runs: int, hits: int, max_tokens: int, conversation_ids: list) -> dict:
    """(a): return median miss and hit latency and TTFT (ms), the answers' tokens, and hits/misses seen."""
    from inference.cache import flush

    misses, cached = [], []
    for _ in range(runs):
        flush(["llm"])
        miss = turn(user=user, content=PROMPT, max_tokens=max_tokens, cache=True, conversation_ids=conversation_ids)
        if miss.cached:
            raise RuntimeError("The first turn after a flush was a cache hit.")
        misses.append(miss)
        for _ in range(hits):
            hit = turn(user=user, content=PROMPT, max_tokens=max_tokens, cache=True, conversation_ids=conversation_ids)
            if not hit.cached or hit.content != miss.content:
                raise RuntimeError("A repeated identical turn was not answered from the cache.")
            cached.append(hit)
    return {
        "miss_latency_ms": statistics.median(m.latency_ms for m in misses),
        "hit_latency_ms": statistics.median(m.latency_ms for m in cached),
        "miss_ttft_ms": statistics.median(m.ttft_ms for m in misses),
        "hit_ttft_ms": statistics.median(m.ttft_ms for m in cached),
        "completion_tokens": statistics.median(m.completion_tokens for m in misses),
        "misses": len(misses),
        "hits": len(cached),
    }


def payload(size: int) -> dict:
    """Return an ``llm`` answer-shaped dict whose compact JSON is about ``size`` bytes."""
    answer = {"content": "", "finish_reason": "stop", "prompt_tokens": 31, "completion_tokens": 64}
    filler = "The keeper climbs the stairs at dusk and lights the lamp. "
    overhead = len(json.dumps(answer, separators=(",", ":")))
    answer["content"] = (filler * (size // len(filler) + 1))[: max(0, size - overhead)]
    return answer


def client_overhead(*, gets: int, blocks: int, size: int) -> dict:
    """(b): return microseconds per read for each way, the stored sizes (bytes) and the ratio django/raw."""
    from django.core.cache import caches
    from django_redis import get_redis_connection

    from inference.cache import canonical_key, layer

    cache = caches["llm"]
    redis = get_redis_connection("llm")  # the pool django-redis itself reads through
    llm = layer("llm")
    value = payload(size)
    key = canonical_key({"bench": "client_overhead", "size": size})
    raw_key = f"bench:raw:{key}"
    encoded = json.dumps(value, separators=(",", ":")).encode()
    cache.set(key, value, timeout=600)
    redis.set(raw_key, encoded, ex=600)
    llm.set(key, value, ttl=600)
    if cache.get(key) != value or json.loads(redis.get(raw_key)) != value or llm.get(key, count=False) != value:
        raise RuntimeError("A stored payload did not read back equal.")
    sizes = {"django": redis.strlen(cache.make_key(key)), "raw": redis.strlen(raw_key)}

    ways = {
        "django-redis get": lambda: cache.get(key),
        "raw GET": lambda: redis.get(raw_key),
        "raw GET + json.loads": lambda: json.loads(redis.get(raw_key)),
        'layer("llm").get': lambda: llm.get(key, count=False),
    }
    per_block = max(1, gets // blocks)
    timings: dict[str, list[float]] = {name: [] for name in ways}
    for block in range(blocks):
        names = list(ways) if block % 2 == 0 else list(reversed(ways))  # alternate the order too
        for name in names:
            read = ways[name]
            started = time.perf_counter()
            for _ in range(per_block):
                read()
            timings[name].append((time.perf_counter() - started) / per_block * 1e6)
    redis.delete(raw_key)
    cache.delete(key)
    us = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "us": us,
        "sizes": sizes,
        "reads": per_block * blocks,
        "ratio": us["django-redis get"] / us["raw GET"],
    }


def stampede(*, concurrency: int, max_tokens: int) -> dict:
    """(c): return how many of ``concurrency`` concurrent identical first turns generated, and their latencies."""

    from inference.models import ModelConfig

    shared = ModelConfig.objects.get(slug=MODEL_SLUG).cache_shared
    ModelConfig.objects.filter(slug=MODEL_SLUG).update(cache_shared=True)  # many users, one shared answer
    try:
        return _stampede(concurrency=concurrency, max_tokens=max_tokens)
    finally:
        ModelConfig.objects.filter(slug=MODEL_SLUG).update(cache_shared=shared)


def _stampede(*, concurrency: int, max_tokens: int) -> dict:
    from django.db import connections
    from django.test import Client

    from chat.services import conversation_create
    from inference.cache import flush, layer

    users = [bench_user(STAMPEDE_USER.format(i)) for i in range(concurrency)]
    conversations = [conversation_create(owner=user) for user in users]
    clients = []
    for user in users:
        client = Client(HTTP_HOST="localhost")  # local settings do not allow the test host "testserver"
        client.force_login(user)
        clients.append(client)
    flush(["llm"])
    layer("llm").reset_stats()
    answers: list[dict | None] = [None] * concurrency
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency)

    def ask(i: int) -> None:
        try:
            barrier.wait()
            response = clients[i].post(
                f"/api/v1/conversations/{conversations[i].pk}/messages/",
                {
                    "content": STAMPEDE_PROMPT,
                    "model": MODEL_SLUG,
                    "params": {"max_tokens": max_tokens, "temperature": 0},
                },
                content_type="application/json",
            )
            if response.status_code != 201:
                raise RuntimeError(f"HTTP {response.status_code}: {response.content[:300]!r}")
            answers[i] = response.json()["assistant_message"]
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's database connections

    threads = [threading.Thread(target=ask, args=(i,), name=f"stampede-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_ms = (time.perf_counter() - started) * 1000
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrency} stampede requests failed") from errors[0]
    generations = [a for a in answers if not a["cached"]]
    waited = [a for a in answers if a["cached"] and a["metadata"].get("cache", {}).get("waited")]
    stats = layer("llm").stats()
    return {
        "generations": len(generations),
        "waited": len(waited),
        "same_content": len({a["content"] for a in answers}) == 1,
        "generation_latency_ms": statistics.median(a["latency_ms"] for a in generations) if generations else None,
        "waiter_latency_ms": statistics.median(a["latency_ms"] for a in answers if a["cached"])
        if len(generations) < concurrency
        else None,
        "wall_ms": wall_ms,
        "stats": {field: stats[field] for field in ("hits", "misses", "sets", "errors")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="(a) flushes, each one miss then the hits (default 3)")
    parser.add_argument("--hits", type=int, default=5, help="(a) identical turns after each miss (default 5)")
    parser.add_argument("--max-tokens", type=int, default=64, help="(a), (c) completion tokens (default 64)")
    parser.add_argument("--gets", type=int, default=2000, help="(b) reads per way (default 2000)")
    parser.add_argument("--blocks", type=int, default=10, help="(b) alternating blocks the reads are split in")
    parser.add_argument("--payload-bytes", type=int, default=2048, help="(b) payload size as JSON (default 2048)")
    parser.add_argument("--concurrency", type=int, default=16, help="(c) concurrent identical turns (default 16)")
    args = parser.parse_args()

    django_setup()
    from django.contrib.auth import get_user_model

    from chat.models import Conversation

    user = bench_user()
    conversation_ids: list = []
    stampede_users = [STAMPEDE_USER.format(i) for i in range(args.concurrency)]
    try:
        # Warm-up: load the model into this process, outside the cache (cache=False stores nothing).
        turn(user=user, content=PROMPT, max_tokens=args.max_tokens, cache=False, conversation_ids=conversation_ids)
        a = cached_vs_uncached(
            user=user, runs=args.runs, hits=args.hits, max_tokens=args.max_tokens, conversation_ids=conversation_ids
        )
        b = client_overhead(gets=args.gets, blocks=args.blocks, size=args.payload_bytes)
        c = stampede(concurrency=args.concurrency, max_tokens=args.max_tokens)
    finally:
        Conversation.objects.filter(pk__in=conversation_ids).delete()
        # Their conversations go with them.
        get_user_model().objects.filter(username__in=stampede_users).delete()

    cached_ratio = a["hit_latency_ms"] / a["miss_latency_ms"]
    print(f"\n(a) {PROMPT!r}, max_tokens={args.max_tokens}, temperature 0, {MODEL_SLUG}")
    print(f"{'':22}{'turns':>7}{'latency ms':>12}{'TTFT ms':>9}")
    print(f"{'uncached (miss)':22}{a['misses']:>7}{a['miss_latency_ms']:>12.0f}{a['miss_ttft_ms']:>9.0f}")
    print(f"{'cached (hit)':22}{a['hits']:>7}{a['hit_latency_ms']:>12.0f}{a['hit_ttft_ms']:>9.0f}")
    print(f"{a['completion_tokens']:.0f} completion tokens per answer")
    print(f"ratio cached/uncached: {cached_ratio:.3f} (target <= {TARGET_CACHED_RATIO})")

    sizes = b["sizes"]
    print(f"\n(b) payload {sizes['raw']} B as JSON, {sizes['django']} B pickled by django-redis; ", end="")
    print(f"{b['reads']} reads each way, median of {args.blocks} blocks")
    print(f"{'':22}{'us/read':>9}")
    for name, value in b["us"].items():
        print(f"{name:22}{value:>9.1f}")
    print(f"ratio django/raw: {b['ratio']:.2f} (target <= {TARGET_CLIENT_RATIO})")

    stats = c["stats"]
    print(f"\n(c) {args.concurrency} concurrent identical first turns after a flush, max_tokens={args.max_tokens}")
    print(f"generations: {c['generations']}/{args.concurrency} (target 1/{args.concurrency}); ", end="")
    print(f"waited for the leader: {c['waited']}; same answer: {'yes' if c['same_content'] else 'NO'}")
    print(f"llm layer: {stats['misses']} misses, {stats['hits']} hits, {stats['sets']} sets, {stats['errors']} errors")
    generation_ms = c["generation_latency_ms"]
    waiter_ms = c["waiter_latency_ms"]
    print(
        f"latency ms (median): generating {generation_ms if generation_ms is not None else '-'}, "
        f"waiting {waiter_ms if waiter_ms is not None else '-'}; all {args.concurrency} done in {c['wall_ms']:.0f} ms"
    )

    summary = {
        "max_tokens": args.max_tokens,
        "completion_tokens": a["completion_tokens"],
        "miss_latency_ms": a["miss_latency_ms"],
        "hit_latency_ms": a["hit_latency_ms"],
        "cached_ratio": round(cached_ratio, 4),
        "payload_bytes": b["sizes"],
        "django_get_us": round(b["us"]["django-redis get"], 1),
        "raw_get_us": round(b["us"]["raw GET"], 1),
        "layer_get_us": round(b["us"]['layer("llm").get'], 1),
        "client_ratio": round(b["ratio"], 3),
        "concurrency": args.concurrency,
        "generations": c["generations"],
        "generations_ratio": round(c["generations"] / args.concurrency, 4),
        "stampede_same_content": c["same_content"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
