"""Layered response caches on django-redis: ``llm``, ``tool``, ``intent`` and ``semantic``.

Each layer is a django-redis cache alias (``CACHES`` in settings, TTL per layer). Keys are the
SHA-256 of canonical JSON (sorted keys, no spaces, UTF-8) of what determines the answer, and are
stored under the layer's *namespace version* with Django's cache versioning: flushing a layer is one
``INCR`` of its version (O(1), no SCAN); the old keys are never read again and expire with their TTL.
Each layer counts hits, misses, sets and errors in a Redis hash.

A cache never breaks a request: every Redis error is counted, logged once and answered as a miss,
and the caches then rest for ``CACHE_RETRY_AFTER_ERROR`` seconds before trying Redis again, so a
Redis outage costs one short timeout, not one per request. When Redis is back, caching resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db.models import Q
from django.utils import timezone
from django_redis import get_redis_connection
from pgvector.django import CosineDistance

from core import prometheus

from .embeddings import embed_text
from .models import SemanticCacheEntry
from .providers import InferenceError

logger = logging.getLogger(__name__)

LAYERS = ("llm", "tool", "intent", "semantic")
STAT_FIELDS = ("hits", "misses", "sets", "errors")


def canonical_key(payload: Any) -> str:
    """Return the SHA-256 hex digest (64 chars) of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Breaker:
    """After a Redis error, skip the caches for a while instead of timing out on every request."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.local_errors = 0  # errors seen by this process, also while Redis could not count them
        self._pending: dict[str, int] = {}  # per layer: errors to add to the Redis stats when it is back

    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self, exc: Exception, where: str) -> None:
        """Record a Redis error at ``where`` ("<layer> <operation>") and rest the caches a while."""
        layer_name = where.split()[0]
        with self._lock:
            self.local_errors += 1
            if layer_name in LAYERS:
                self._pending[layer_name] = self._pending.get(layer_name, 0) + 1
            first = self.available()
            self._open_until = time.monotonic() + settings.CACHE_RETRY_AFTER_ERROR
        if first:
            logger.warning("Cache unavailable (%s: %s); serving without it", where, type(exc).__name__)

    def take_pending(self, layer_name: str) -> int:
        """Return and forget the errors of ``layer_name`` not yet counted in Redis (it was down)."""
        with self._lock:
            return self._pending.pop(layer_name, 0)


breaker = _Breaker()


class CacheLayer:
    """One cache layer. Every method answers as a miss (never raises) when Redis fails."""

    def __init__(self, name: str):
        if name not in LAYERS:
            raise ValueError(f"Unknown cache layer {name!r}; layers: {', '.join(LAYERS)}")
        self.name = name

    @property
    def cache(self):
        return caches[self.name]

    @property
    def redis(self):
        return get_redis_connection(self.name)

    def _meta_key(self, what: str) -> str:
        return f"{settings.REDIS_KEY_PREFIX}:cachemeta:{self.name}:{what}"

    def enabled(self) -> bool:
        return settings.CACHE_ENABLED and breaker.available()

    def version(self) -> int:
        """Return the layer's namespace version: 1 + the number of flushes. Raise Redis errors."""
        return 1 + int(self.redis.get(self._meta_key("flushes")) or 0)

    def current_version(self) -> int | None:
        """Return :meth:`version`, or None when the cache is off or Redis fails."""
        if not self.enabled():
            return None
        try:
            return self.version()
        except Exception as exc:
            breaker.trip(exc, f"{self.name} version")
            return None

    def _count(self, field: str, amount: int = 1) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self._meta_key("stats"), field, amount)
        errors = breaker.take_pending(self.name)
        if errors:  # errors met while Redis was down, counted now that it answers again
            pipe.hincrby(self._meta_key("stats"), "errors", errors)
        pipe.execute()
        if field in ("hits", "misses"):  # the same lookups, for Prometheus (per process, summed by /metrics)
            prometheus.cache_lookup_observe(layer=self.name, hit=field == "hits")

    def get(self, key: str, *, count: bool = True) -> Any | None:
        """Return the value stored under ``key`` (a :func:`canonical_key`), or None on a miss."""
        if not self.enabled():
            return None
        try:
            value = self.cache.get(key, version=self.version())
            if count:
                self._count("hits" if value is not None else "misses")
            return value
        except Exception as exc:  # any Redis failure is a miss
            breaker.trip(exc, f"{self.name} get")
            return None

    def set(self, key: str, value: Any, *, ttl: int | None = None) -> bool:
        """Store ``value`` for the layer's TTL (or ``ttl`` seconds). Return whether it was stored."""
        if not self.enabled():
            return False
        try:
            self.cache.set(
                key, value, timeout=ttl if ttl is not None else self.cache.default_timeout, version=self.version()
            )
            self._count("sets")
            return True
        except Exception as exc:
            breaker.trip(exc, f"{self.name} set")
            return False

    def record(self, field: str) -> None:
        """Count a hit, miss, set or error decided by the caller; never raises."""
        if not self.enabled():
            return
        try:
            self._count(field)
        except Exception as exc:
            breaker.trip(exc, f"{self.name} stats")

    def flush(self) -> int:
        """Invalidate every key of this layer at once (O(1)); return the new version.

        Raise Redis errors: a flush an operator asked for must not silently do nothing.
        """
        return 1 + int(self.redis.incr(self._meta_key("flushes")))

    def stats(self) -> dict:
        """Return ``{"layer", "hits", "misses", "sets", "errors", "hit_ratio", "keys", "version"}``.

        ``hit_ratio`` is hits / (hits + misses), None before any lookup; ``keys`` counts the live keys
        of the current version (a SCAN: for operators, not for request paths). Raise Redis errors.
        """
        raw = self.redis.hgetall(self._meta_key("stats"))
        counts = {f: int(raw.get(f.encode(), 0)) for f in STAT_FIELDS}
        lookups = counts["hits"] + counts["misses"]
        version = self.version()
        keys = sum(1 for _ in self.cache.iter_keys("*", version=version)) if self.name != "semantic" else None
        return {
            "layer": self.name,
            **counts,
            "hit_ratio": round(counts["hits"] / lookups, 4) if lookups else None,
            "keys": keys,
            "version": version,
        }

    def reset_stats(self) -> None:
        self.redis.delete(self._meta_key("stats"))

    # Single flight: one generation for concurrent identical misses.

    def _lock_key(self, key: str) -> str:
        return f"{settings.REDIS_KEY_PREFIX}:cachelock:{self.name}:{key}"

    def acquire(self, key: str) -> str | None:
        """Try to become the one computing ``key``; return a lease token, or None if another holds it.

        The lease lasts ``CACHE_SINGLE_FLIGHT_LEASE`` seconds; the holder renews it while working, so
        if the holder dies a waiter can take over once it lapses. When Redis fails, return a token:
        without a cache every request computes its own answer.
        """
        token = secrets.token_hex(8)
        if not self.enabled():
            return token
        try:
            lease_ms = int(settings.CACHE_SINGLE_FLIGHT_LEASE * 1000)
            return token if self.redis.set(self._lock_key(key), token, nx=True, px=lease_ms) else None
        except Exception as exc:
            breaker.trip(exc, f"{self.name} lock")
            return token

    def renew(self, key: str, token: str) -> None:
        """Extend the lease of ``token`` on ``key`` by ``CACHE_SINGLE_FLIGHT_LEASE`` seconds, if still held."""
        try:
            if self.redis.get(self._lock_key(key)) == token.encode():
                self.redis.pexpire(self._lock_key(key), int(settings.CACHE_SINGLE_FLIGHT_LEASE * 1000))
        except Exception as exc:
            breaker.trip(exc, f"{self.name} renew")

    def release(self, key: str, token: str) -> None:
        """Give up the lease on ``key`` if ``token`` still holds it."""
        try:
            # Compare-and-delete in one step, so a lease that lapsed and went to another is kept.
            self.redis.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1,
                self._lock_key(key),
                token,
            )
        except Exception as exc:
            breaker.trip(exc, f"{self.name} release")

    def locked(self, key: str) -> bool:
        """Return whether someone holds the lease on ``key`` (False when Redis fails)."""
        try:
            return bool(self.redis.exists(self._lock_key(key)))
        except Exception as exc:
            breaker.trip(exc, f"{self.name} lock check")
            return False


REPLAY_WORDS = 8  # a cached answer is sent again in pieces of this many words


def answer_entry(
    *,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: list[dict] | None = None,
) -> dict:
    """Return the ``llm`` layer value of a whole answer, the one shape chat turns, the /v1 gateway and
    ``cache warm`` store and replay: ``{"content", "finish_reason", "prompt_tokens", "completion_tokens",
    "tool_calls"?}``; ``tool_calls`` (whole calls, see :class:`inference.providers.ToolCallAssembler`)
    only when the model called tools."""
    entry = {
        "content": text,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    if tool_calls:
        entry["tool_calls"] = tool_calls
    return entry


def replay_deltas(content: str) -> list[str]:
    """Split a cached answer into deltas of ``REPLAY_WORDS`` words (whitespace kept) that join to ``content``."""
    words = re.findall(r"\S+\s*|\s+", content)
    return ["".join(words[i : i + REPLAY_WORDS]) for i in range(0, len(words), REPLAY_WORDS)]


def layer(name: str) -> CacheLayer:
    """Return the cache layer ``name`` (one of :data:`LAYERS`); raise ValueError for others."""
    return CacheLayer(name)


def flush(names: list[str]) -> dict[str, int]:
    """Flush the named layers; return ``{layer: new version}``. Raise Redis errors."""
    return {name: layer(name).flush() for name in names}


@dataclass
class Health:
    status: str  # "ok" | "degraded"
    ping_ms: float | None
    used_memory_bytes: int | None
    detail: str = ""


def health() -> Health:
    """Ping the cache Redis and read its memory use; ``degraded`` when it does not answer."""
    try:
        redis = get_redis_connection("llm")
        started = time.perf_counter()
        redis.ping()
        ping_ms = round((time.perf_counter() - started) * 1000, 3)
        memory = redis.info("memory").get("used_memory")
    except Exception as exc:
        breaker.trip(exc, "health")
        return Health(status="degraded", ping_ms=None, used_memory_bytes=None, detail=f"Redis: {exc}")
    if not settings.CACHE_ENABLED:
        return Health(status="ok", ping_ms=ping_ms, used_memory_bytes=memory, detail="caching is switched off")
    return Health(status="ok", ping_ms=ping_ms, used_memory_bytes=memory)


# The semantic layer: similar first questions, matched by embedding in pgvector.


def _embedding(text: str) -> list[float] | None:
    """Embed ``text`` for the semantic layer; None (logged) when the embedding model fails."""
    try:
        return embed_text(text)
    except InferenceError as exc:
        logger.warning("Semantic cache skipped: embeddings failed (%s: %s)", exc.code, exc.detail)
        return None


@dataclass
class SemanticHit:
    response: dict  # {"content", "prompt_tokens", "completion_tokens"}
    similarity: float  # cosine similarity, 0..1
    prompt: str


def semantic_lookup(*, scope: str, owner_id: int | None, prompt: str) -> SemanticHit | None:
    """Return the most similar cached first question for ``scope`` and ``owner_id`` above the threshold.

    ``scope`` is a model fingerprint hash; ``owner_id`` None means the shared pool. Similarity is
    cosine similarity of all-MiniLM-L6-v2 embeddings (1 - pgvector cosine distance), compared with
    ``CACHE_SEMANTIC_THRESHOLD``. Counts a hit or a miss. Return None on a miss or any failure.
    """
    semantic = layer("semantic")
    version = semantic.current_version()
    embedding = _embedding(prompt) if version is not None else None
    if embedding is None:
        return None
    entry = (
        SemanticCacheEntry.objects.filter(
            scope=scope, owner_id=owner_id, version=version, expires_at__gt=timezone.now()
        )
        .annotate(distance=CosineDistance("embedding", embedding))
        .order_by("distance")
        .first()
    )
    similarity = 1 - entry.distance if entry is not None else None
    hit = similarity is not None and similarity >= settings.CACHE_SEMANTIC_THRESHOLD
    semantic.record("hits" if hit else "misses")
    return SemanticHit(response=entry.response, similarity=round(similarity, 4), prompt=entry.prompt) if hit else None


def semantic_store(*, scope: str, owner_id: int | None, prompt: str, response: dict) -> bool:
    """Remember ``response`` for first question ``prompt`` for ``CACHE_SEMANTIC_TTL`` seconds."""
    semantic = layer("semantic")
    version = semantic.current_version()
    embedding = _embedding(prompt) if version is not None else None
    if embedding is None:
        return False
    SemanticCacheEntry.objects.create(
        scope=scope,
        owner_id=owner_id,
        version=version,
        prompt=prompt,
        embedding=embedding,
        response=response,
        expires_at=timezone.now() + timedelta(seconds=settings.CACHE_SEMANTIC_TTL),
    )
    semantic.record("sets")
    return True


def semantic_prune() -> int:
    """Delete semantic entries that expired or belong to a flushed version; return how many."""
    version = layer("semantic").version()
    deleted, _ = SemanticCacheEntry.objects.filter(Q(expires_at__lte=timezone.now()) | ~Q(version=version)).delete()
    return deleted


def report() -> tuple[Health, list[dict]]:
    """Return the cache Redis health and :meth:`CacheLayer.stats` of every layer (none when degraded)."""
    status = health()
    if status.status != "ok":
        return status, []
    try:
        return status, [layer(name).stats() for name in LAYERS]
    except Exception as exc:
        breaker.trip(exc, "stats")
        return Health(status="degraded", ping_ms=None, used_memory_bytes=None, detail=f"Redis: {exc}"), []
