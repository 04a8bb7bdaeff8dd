"""Routing: which deployment serves a request, with state every process shares in Redis.

A model config is served by its deployments (:class:`~inference.models.Deployment`), or, with none, by
its own provider fields as one implicit deployment named ``default``. A :class:`Router` gives one
request its attempts, in order: the model's deployments that are not drained, cooling down or full,
ordered by the model's ``routing_strategy``; then each fallback model's (``ModelConfig.fallbacks``,
in order). The pipeline (:meth:`inference.pipeline.Generation._live`) moves to the next attempt only
before the first token.

State lives in the ``default`` Redis (``REDIS_URL``), so every Daphne process and Celery worker sees
the same; each change is one Lua script (atomic). Keys, under ``<REDIS_KEY_PREFIX>:limits:routing:<model
id>:<deployment id or 0>:``:

- ``inflight``: sorted set, request id → expiry (ms since the epoch). A process renews its requests'
  entries while they stream; a crashed process's entries lapse after ``ROUTING_INFLIGHT_TTL_SECONDS``.
- ``rpm:<minute>`` / ``tpm:<minute>``: requests and tokens (prompt estimate at the start, completion
  tokens added at the end) of the current UTC minute (fixed windows), expiring after two minutes.
- ``failures``: sorted set of failure times (ms), pruned to ``ROUTING_COOLDOWN_WINDOW_SECONDS``.
- ``cooldown``: the cooldown's end (ms since the epoch), expiring then.
- ``ttft``: list of the last :data:`TTFT_SAMPLES` times to first token (ms), newest first, for 1 h.
- ``error`` / ``ok``: the last error (text) and the time of the last success (ms), for 1 h.
- ``unhealthy``: set when the deployment turns unhealthy (cooling down, or a lone deployment with
  ``ROUTING_COOLDOWN_FAILURES`` failures in the window), by the one process that emits
  ``deployment.unhealthy`` for it (:mod:`core.events`); kept while failures go on (for 1 h after the
  last), cleared by a success once healthy again, which emits ``deployment.recovered``.

When Redis is down routing fails open (:mod:`accounts.limits_store`): deployments are tried in
their order without limits or cooldowns.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.limits_store import limits_key, run, run_script
from core.events import event_emit

from .images import accepts_images
from .models import Deployment, ModelConfig, RoutingStrategy
from .providers import (
    ContextLengthExceeded,
    InferenceError,
    ModelBusy,
    ModelTimeout,
    ModelUnavailable,
    UpstreamRateLimited,
    image_count,
    prompt_chars,
)
from .providers.openai_compatible import CHARS_PER_TOKEN  # a prompt's tokens, estimated before any tokenizer

logger = logging.getLogger(__name__)

TTFT_SAMPLES = 20  # recent times to first token kept per deployment, for lowest_latency
STATE_TTL_SECONDS = 3600  # how long the last error, last success and TTFT samples are kept
# Upstream statuses that say "this deployment cannot serve now" (misconfigured, overloaded or down),
# as opposed to "this request is wrong" (other 4xx), which another deployment would refuse too.
FAILOVER_STATUSES = {401, 403, 404, 408, 409, 429}


def implicit_deployment(config: ModelConfig) -> Deployment:
    """Return the unsaved deployment that stands for ``config``'s own provider fields (a model with none)."""
    return Deployment(
        config=config,
        name="default",
        provider=config.provider,
        model=config.model,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
    )


def model_deployments(config: ModelConfig) -> list[Deployment]:
    """Return ``config``'s deployments in their order, or its implicit one when it has none (database)."""
    deployments = list(config.deployments.all())
    for deployment in deployments:
        deployment.config = config  # no query per label
    return deployments or [implicit_deployment(config)]


def prompt_tokens_estimate(messages: list[dict[str, str]]) -> int:
    """Return an estimate of the prompt tokens of ``messages``: characters / :data:`CHARS_PER_TOKEN`, rounded up,
    each image counted as :data:`inference.images.IMAGE_PROMPT_TOKENS`."""
    return math.ceil(prompt_chars(messages) / CHARS_PER_TOKEN)


def _key(deployment: Deployment, *parts) -> str:
    return limits_key("routing", deployment.config_id, deployment.pk or 0, *parts)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class DeploymentState:
    """What every process knows of a deployment: requests in flight, this minute's requests and tokens,
    the cooldown's end (epoch seconds, None when not cooling down), failures in the window, recent
    TTFT (mean ms, None without samples), last error and last success (epoch seconds)."""

    in_flight: int = 0
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    cooldown_until: float | None = None
    recent_failures: int = 0
    ttft_ms: float | None = None
    ttft_samples: list[int] = field(default_factory=list)
    last_error: str = ""
    last_success: float | None = None

    @property
    def status(self) -> str:
        """``cooling_down``, ``failing`` (failures in the window, or a last error newer than the last
        success), ``healthy`` or ``unknown`` (never used in the last hour)."""
        if self.cooldown_until is not None:
            return "cooling_down"
        if self.recent_failures or (self.last_error and self.last_success is None):
            return "failing"
        return "healthy" if self.last_success is not None else "unknown"

    @property
    def p50_ttft_ms(self) -> float | None:
        """Median of the recent TTFT samples (ms), None without samples."""
        return statistics.median(self.ttft_samples) if self.ttft_samples else None

    def summary(self, deployment: Deployment | None = None, tokens_per_s: float | None = None) -> str:
        """Return one line for operators, e.g. ``cooling down until 12:05:09 UTC; 2 in flight; p50 TTFT 180 ms;
        42.0 tokens/s; last error: upstream_error: ...`` (``drained`` first for a drained ``deployment``;
        ``tokens_per_s`` as given, e.g. :func:`inference.selectors.deployment_tokens_per_s`)."""
        parts = ["drained"] if deployment is not None and deployment.is_drained else []
        if self.cooldown_until is not None:
            until = datetime.fromtimestamp(self.cooldown_until, tz=UTC).strftime("%H:%M:%S UTC")
            parts.append(f"cooling down until {until}")
        else:
            parts.append(self.status)
        parts.append(f"{self.in_flight} in flight")
        if self.requests_this_minute:
            parts.append(f"{self.requests_this_minute} requests / {self.tokens_this_minute} tokens this minute")
        if self.p50_ttft_ms is not None:
            parts.append(f"p50 TTFT {self.p50_ttft_ms:.0f} ms")
        if tokens_per_s is not None:
            parts.append(f"{tokens_per_s:.1f} tokens/s")
        if self.last_error and self.status != "healthy":
            parts.append(f"last error: {self.last_error[:200]}")
        return "; ".join(parts)


def deployment_states(deployments: list[Deployment]) -> list[DeploymentState]:
    """Return the shared state of each deployment (one Redis round trip); empty states when Redis is down."""
    now = _now_ms()
    minute = now // 60_000
    window_start = now - int(settings.ROUTING_COOLDOWN_WINDOW_SECONDS * 1000)

    def read(connection) -> list[DeploymentState]:
        pipe = connection.pipeline(transaction=False)
        for deployment in deployments:
            pipe.zcount(_key(deployment, "inflight"), now, "+inf")
            pipe.get(_key(deployment, "rpm", minute))
            pipe.get(_key(deployment, "tpm", minute))
            pipe.get(_key(deployment, "cooldown"))
            pipe.zcount(_key(deployment, "failures"), window_start, "+inf")
            pipe.lrange(_key(deployment, "ttft"), 0, -1)
            pipe.get(_key(deployment, "error"))
            pipe.get(_key(deployment, "ok"))
        values = pipe.execute()
        states = []
        for i in range(len(deployments)):
            inflight, rpm, tpm, cooldown, failures, ttft, error, ok = values[i * 8 : i * 8 + 8]
            samples = [int(v) for v in ttft]
            cooldown_ms = int(cooldown) if cooldown else 0
            states.append(
                DeploymentState(
                    in_flight=inflight,
                    requests_this_minute=int(rpm or 0),
                    tokens_this_minute=int(tpm or 0),
                    cooldown_until=cooldown_ms / 1000 if cooldown_ms > now else None,
                    recent_failures=failures,
                    ttft_ms=sum(samples) / len(samples) if samples else None,
                    ttft_samples=samples,
                    last_error=error.decode() if error else "",
                    last_success=int(ok) / 1000 if ok else None,
                )
            )
        return states

    return run(read, default=[DeploymentState() for _ in deployments], what="routing state")


def strategy_order(
    strategy: str, deployments: list[Deployment], states: list[DeploymentState], rng: random.Random | None = None
) -> list[Deployment]:
    """Return ``deployments`` in the order ``strategy`` tries them.

    ``least_busy``: fewest requests in flight first (ties in random order, so idle deployments share
    the load). ``weighted_random``: a random order where each deployment comes first with probability
    weight / total weight, by sorting on ``u ** (1 / weight)`` for uniform ``u`` (Efraimidis and
    Spirakis, "Weighted random sampling with a reservoir", 2006). ``lowest_latency``: lowest mean
    recent TTFT first; deployments with no samples first of all, so they get measured.
    """
    rng = rng or random.Random()  # noqa: S311 (load spreading, not crypto)
    pairs = list(zip(deployments, states, strict=True))
    if strategy == RoutingStrategy.WEIGHTED_RANDOM:
        pairs.sort(key=lambda pair: -(rng.random() ** (1 / max(1, pair[0].weight))))
    elif strategy == RoutingStrategy.LOWEST_LATENCY:
        pairs.sort(key=lambda pair: (pair[1].ttft_ms is not None, pair[1].ttft_ms or 0, rng.random()))
    else:
        pairs.sort(key=lambda pair: (pair[1].in_flight, rng.random()))
    return [deployment for deployment, _ in pairs]


_ACQUIRE = """
-- Take a slot on one of several candidate deployments, atomically: checking every process's counts
-- and counting the request happen in one step, so a burst of requests cannot all pick the same one.
-- KEYS: 4 per candidate (inflight, cooldown, rpm, tpm). ARGV: now ms, request id, TTL ms, tokens,
-- mode ("least": the candidate with the fewest requests in flight, ties to the earlier one; "first":
-- the first that can take it), then 3 per candidate: max concurrent, rpm limit, tpm limit (0: none).
-- Return {index of the chosen candidate (1-based; 0: none), why each candidate cannot take it ('' if it can)}.
local now, tokens, least = tonumber(ARGV[1]), tonumber(ARGV[4]), ARGV[5] == 'least'
local n = #KEYS / 4
local best, best_count = 0, nil
local out = {0}
for i = 1, n do
  local k, a = (i - 1) * 4, 5 + (i - 1) * 3
  local reason = ''
  if tonumber(redis.call('GET', KEYS[k + 2]) or '0') > now then
    reason = 'cooling_down'
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now)
    local count = redis.call('ZCARD', KEYS[k + 1])
    local max, rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local used = tonumber(redis.call('GET', KEYS[k + 4]) or '0')
    if max > 0 and count >= max then
      reason = 'at_capacity'
    elseif rpm > 0 and tonumber(redis.call('GET', KEYS[k + 3]) or '0') >= rpm then
      reason = 'rpm_limit'
    elseif tpm > 0 and used > 0 and used + tokens > tpm then
      reason = 'tpm_limit'
    elseif best == 0 or (least and count < best_count) then
      best, best_count = i, count
    end
  end
  out[i + 1] = reason
end
if best > 0 then
  local k = (best - 1) * 4
  redis.call('ZADD', KEYS[k + 1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[k + 1], 2 * tonumber(ARGV[3]))
  redis.call('INCR', KEYS[k + 3])
  redis.call('EXPIRE', KEYS[k + 3], 120)
  redis.call('INCRBY', KEYS[k + 4], tokens)
  redis.call('EXPIRE', KEYS[k + 4], 120)
end
out[1] = best
return out
"""

_RENEW = """
-- KEYS: inflight. ARGV: now ms, request id, TTL ms. Push the request's expiry on, if it is still counted.
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
end
return 0
"""

_FAILURE = """
-- KEYS: failures, cooldown, error. ARGV: now ms, window ms, failures that cool, cooldown ms,
-- Retry-After ms (0: none), failure id, error text, may cool (1/0). Return the cooldown's end (ms) or 0.
local now = tonumber(ARGV[1])
redis.call('SET', KEYS[3], ARGV[7], 'EX', 3600)
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[8] ~= '1' then return 0 end
local cool = tonumber(ARGV[5])
if cool <= 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then cool = tonumber(ARGV[4]) end
if cool <= 0 then return 0 end
local ends = now + cool
if ends > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], ends, 'PX', cool)
end
redis.call('DEL', KEYS[1])
return ends
"""


_UNHEALTHY = """
-- Did this failure turn the deployment unhealthy? Unhealthy: cooling down, or (a deployment that is
-- never cooled) as many failures within the window as would cool it. Set the flag only on the turn
-- (SET NX: one process announces it); while failures go on, keep it. Return 1 on the turn, else 0.
-- KEYS: cooldown, failures, unhealthy. ARGV: now ms, window ms, failures that cool, flag TTL s.
local now = tonumber(ARGV[1])
local cooling = tonumber(redis.call('GET', KEYS[1]) or '0') > now
if not cooling and redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[2]), '+inf') < tonumber(ARGV[3]) then
  return 0
end
if redis.call('SET', KEYS[3], now, 'NX', 'EX', tonumber(ARGV[4])) then return 1 end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
return 0
"""

_RECOVERED = """
-- After a success: clear the unhealthy flag if the deployment is healthy again (no cooldown, fewer
-- failures in the window than would cool it). Return 1 when this cleared it, else 0.
-- KEYS: cooldown, failures, unhealthy. ARGV: now ms, window ms, failures that cool.
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local now = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') > now then return 0 end
if redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[2]), '+inf') >= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[3])
return 1
"""


def _health_keys(deployment: Deployment) -> list[str]:
    return [_key(deployment, "cooldown"), _key(deployment, "failures"), _key(deployment, "unhealthy")]


def _health_event(event_type: str, deployment: Deployment, **data) -> None:
    """Emit ``deployment.unhealthy`` / ``deployment.recovered`` (README, "Webhooks")."""
    event_emit(
        event_type,
        {
            "model": deployment.config.slug,
            "deployment": deployment.label,
            "deployment_id": deployment.pk,
            "provider": deployment.provider,
            **data,
        },
    )


def slot_acquire(
    *, candidates: list[Deployment], request_id: str, tokens: int, least_busy: bool = False
) -> tuple[Deployment | None, dict[str, str]]:
    """Count ``request_id`` in flight on one of ``candidates`` (atomically: one Lua script).

    Take the first candidate that can take it, or with ``least_busy`` the one with the fewest
    requests in flight across every process (ties: the earlier). ``tokens`` is the request's prompt
    estimate, added to this minute's tokens. Return ``(the chosen deployment or None, {label: why it
    cannot take it})`` with reasons ``cooling_down``, ``at_capacity`` (``max_concurrent``),
    ``rpm_limit`` and ``tpm_limit``. When Redis is down, the first candidate is taken, unchecked.
    """
    minute = _now_ms() // 60_000
    keys, limits = [], []
    for deployment in candidates:
        keys += [
            _key(deployment, "inflight"),
            _key(deployment, "cooldown"),
            _key(deployment, "rpm", minute),
            _key(deployment, "tpm", minute),
        ]
        limits += [deployment.max_concurrent or 0, deployment.rpm_limit or 0, deployment.tpm_limit or 0]
    args = [_now_ms(), request_id, int(settings.ROUTING_INFLIGHT_TTL_SECONDS * 1000), tokens]
    args.append("least" if least_busy else "first")
    result = run_script(_ACQUIRE, keys=keys, args=args + limits, default=[1], what="deployment routing")
    chosen = int(result[0])
    reasons = {
        deployment.label: reason.decode() if isinstance(reason, bytes) else str(reason)
        for deployment, reason in zip(candidates, result[1:], strict=False)
        if reason
    }
    return (candidates[chosen - 1] if chosen else None), reasons


def slot_renew(*, deployment: Deployment, request_id: str) -> None:
    """Keep ``request_id`` counted in flight for another ``ROUTING_INFLIGHT_TTL_SECONDS``."""
    run_script(
        _RENEW,
        keys=[_key(deployment, "inflight")],
        args=[_now_ms(), request_id, int(settings.ROUTING_INFLIGHT_TTL_SECONDS * 1000)],
        default=0,
        what="deployment routing",
    )


def slot_release(*, deployment: Deployment, request_id: str, completion_tokens: int = 0) -> None:
    """Stop counting ``request_id`` in flight; add its ``completion_tokens`` to this minute's tokens."""

    def release(connection) -> None:
        pipe = connection.pipeline(transaction=False)
        pipe.zrem(_key(deployment, "inflight"), request_id)
        if completion_tokens:
            tpm = _key(deployment, "tpm", _now_ms() // 60_000)
            pipe.incrby(tpm, completion_tokens)
            pipe.expire(tpm, 120)
        pipe.execute()

    run(release, default=None, what="deployment routing")


def deployment_failure(
    *, deployment: Deployment, error: str, retry_after: float | None = None, may_cool: bool = True
) -> float | None:
    """Record a failure of ``deployment``; return the end of the cooldown it started (epoch seconds) or None.

    ``ROUTING_COOLDOWN_FAILURES`` failures within ``ROUTING_COOLDOWN_WINDOW_SECONDS`` cool it down
    for ``ROUTING_COOLDOWN_SECONDS``; a ``retry_after`` (seconds, from a 429) cools it at once for
    that long. ``may_cool`` False (a model with nothing else to serve it) only records the failure.
    A failure that turns the deployment unhealthy (see the module docstring) emits
    ``deployment.unhealthy``, once across all processes until it has recovered.
    """
    now = _now_ms()
    ends = run_script(
        _FAILURE,
        keys=[_key(deployment, "failures"), _key(deployment, "cooldown"), _key(deployment, "error")],
        args=[
            now,
            int(settings.ROUTING_COOLDOWN_WINDOW_SECONDS * 1000),
            settings.ROUTING_COOLDOWN_FAILURES,
            int(settings.ROUTING_COOLDOWN_SECONDS * 1000),
            int((retry_after or 0) * 1000),
            f"{now}:{uuid.uuid4().hex[:8]}",
            error[:500],
            int(may_cool),
        ],
        default=0,
        what="deployment cooldown",
    )
    turned = run_script(
        _UNHEALTHY,
        keys=_health_keys(deployment),
        args=[
            now,
            int(settings.ROUTING_COOLDOWN_WINDOW_SECONDS * 1000),
            settings.ROUTING_COOLDOWN_FAILURES,
            STATE_TTL_SECONDS,
        ],
        default=0,
        what="deployment health",
    )
    if turned:
        cooldown_until = datetime.fromtimestamp(int(ends) / 1000, tz=UTC).isoformat() if ends else None
        _health_event("deployment.unhealthy", deployment, error=error[:500], cooldown_until=cooldown_until)
    if ends:
        logger.warning("Deployment %s cools down for %.1f s after: %s", deployment.label, (ends - now) / 1000, error)
        return int(ends) / 1000
    return None


def deployment_success(*, deployment: Deployment, ttft_ms: int | None) -> None:
    """Record a served request and its time to first token (ms, from the deployment's own start).

    The first success of an unhealthy deployment that is healthy again emits ``deployment.recovered``.
    """

    def record(connection) -> bool:
        now = _now_ms()
        pipe = connection.pipeline(transaction=False)
        pipe.set(_key(deployment, "ok"), now, ex=STATE_TTL_SECONDS)
        if ttft_ms is not None:
            pipe.lpush(_key(deployment, "ttft"), ttft_ms)
            pipe.ltrim(_key(deployment, "ttft"), 0, TTFT_SAMPLES - 1)
            pipe.expire(_key(deployment, "ttft"), STATE_TTL_SECONDS)
        window = int(settings.ROUTING_COOLDOWN_WINDOW_SECONDS * 1000)
        pipe.eval(_RECOVERED, 3, *_health_keys(deployment), now, window, settings.ROUTING_COOLDOWN_FAILURES)
        return bool(pipe.execute()[-1])

    if run(record, default=False, what="deployment state"):
        _health_event("deployment.recovered", deployment)


def failure_kind(exc: Exception) -> str | None:
    """Return how the router treats ``exc``, raised before the first token: ``"deployment"`` (this
    deployment cannot serve now: try another, count the failure), ``"busy"`` (this process's local
    queue is full: try another, no failure), ``"context"`` (the prompt is too long for this model:
    try a fallback with a larger context window) or None (the request itself is wrong: raise it)."""
    if isinstance(exc, ContextLengthExceeded):
        return "context"
    if isinstance(exc, ModelBusy):
        return "busy"
    if isinstance(exc, (ModelUnavailable, ModelTimeout, UpstreamRateLimited)):
        return "deployment"
    if isinstance(exc, InferenceError):
        status = getattr(exc, "upstream_status", None)
        return "deployment" if status is None or status >= 500 or status in FAILOVER_STATUSES else None
    return None


@dataclass
class Attempt:
    """One try of a request: ``deployment`` of model ``config`` (the public model or a fallback),
    counted in flight under ``request_id``; ``started`` is its ``time.perf_counter()``."""

    config: ModelConfig
    deployment: Deployment
    request_id: str
    started: float = field(default_factory=time.perf_counter)


class Router:
    """The attempts of one request of ``config`` for ``messages``; see the module docstring.

    Call :meth:`load` (database) first, then :meth:`next` until it returns None; report each attempt
    with :meth:`failed` or :meth:`succeeded`, and always free its slot (:func:`slot_release`). :attr:`route` says what
    served the request: ``{"model": slug, "deployment": "<model>/<name>", "provider", "reason":
    "routed"|"fallback:<reason>", "tried"?: [{"deployment", "code"}]}`` where reason is the first
    failure's error code, ``context_window``, ``cooling_down``, ``drained`` or ``at_capacity``.
    """

    def __init__(self, *, config: ModelConfig, messages: list[dict[str, str]]):
        self.config = config
        self.tokens = prompt_tokens_estimate(messages)
        self.images = image_count(messages)
        self.groups: list[tuple[ModelConfig, list[Deployment]]] = []
        self.tried: list[dict] = []
        self.skipped: dict[str, str] = {}  # deployment label -> why it was not tried
        self.cooldown_ends: list[float] = []
        self.first_problem: str | None = None  # why the first choice did not serve
        self.min_context = 0  # after a context error: fallbacks must have a larger window than this
        self.route: dict = {}
        self.last_error: Exception | None = None  # of the last try that failed, set by the caller
        self._group = -1
        self._queue: list[Deployment] = []

    def load(self) -> None:
        """Read the deployments of the model and of its fallbacks (blocking: the database)."""
        fallbacks = [link.fallback for link in self.config.fallback_links.select_related("fallback")]
        for config in [self.config, *(f for f in fallbacks if f.is_enabled)]:
            self.groups.append((config, model_deployments(config)))

    # Thread-sensitive, as the pipeline's other database calls: each request (Django's ASGI handler)
    # and each chat turn (chat.turns) has a sync thread of its own, so this does not queue behind others.
    aload = database_sync_to_async(load)

    @property
    def alternatives(self) -> bool:
        """Whether more than one deployment could serve: only then do failures cool deployments down
        and do tries move on at once (a lone deployment keeps its provider's own retries)."""
        return sum(len(deployments) for _, deployments in self.groups) > 1

    def _problem(self, reason: str) -> None:
        if self.first_problem is None:
            self.first_problem = reason

    def _next_group(self) -> bool:
        """Move to the next model that may serve; fill the queue with its usable deployments in order."""
        while self._group + 1 < len(self.groups):
            self._group += 1
            config, deployments = self.groups[self._group]
            is_primary = self._group == 0
            if config.context_window < self.min_context:
                continue
            if self.images and not is_primary and not accepts_images(config):
                continue  # a fallback that would refuse the images cannot serve this request
            if is_primary and self.tokens > config.context_window and self._fits_a_fallback():
                self._problem("context_window")
                self.min_context = self.tokens
                continue
            states = deployment_states(deployments)
            usable = []
            for deployment, state in zip(deployments, states, strict=True):
                if deployment.is_drained:
                    self.skipped[deployment.label] = "drained"
                elif state.cooldown_until is not None:
                    self.skipped[deployment.label] = "cooling_down"
                    self.cooldown_ends.append(state.cooldown_until)
                else:
                    usable.append((deployment, state))
            if not usable:
                self._problem(self._why_none(deployments))
                continue
            self._queue = strategy_order(config.routing_strategy, *map(list, zip(*usable, strict=True)))
            return True
        return False

    def _fits_a_fallback(self) -> bool:
        return any(config.context_window >= self.tokens for config, _ in self.groups[1:])

    def _why_none(self, deployments: list[Deployment]) -> str:
        reasons = {self.skipped.get(d.label) for d in deployments}
        return "cooling_down" if "cooling_down" in reasons else next(iter(reasons - {None}), "drained")

    def next(self) -> Attempt | None:
        """Return the next attempt, its slot taken (blocking: Redis), or None when nothing is left."""
        while True:
            if self._queue:
                config = self.groups[self._group][0]
                request_id = uuid.uuid4().hex
                deployment, reasons = slot_acquire(
                    candidates=self._queue,
                    request_id=request_id,
                    tokens=self.tokens,
                    least_busy=config.routing_strategy == RoutingStrategy.LEAST_BUSY,
                )
                self.skipped.update(reasons)
                self._queue = [d for d in self._queue if d is not deployment and d.label not in reasons]
                if deployment is not None:
                    return Attempt(config=config, deployment=deployment, request_id=request_id)
                if self._group == 0:
                    self._problem(self._why_none(self.groups[0][1]))
            if not self._next_group():
                return None

    def failed(self, attempt: Attempt, exc: Exception, *, started_streaming: bool) -> bool:
        """Record that ``attempt`` failed with ``exc``; return whether to try the next attempt (blocking)."""
        kind = failure_kind(exc)
        code = getattr(exc, "code", type(exc).__name__)
        self.tried.append({"deployment": attempt.deployment.label, "code": code})
        if kind == "deployment":
            retry_after = exc.retry_after if isinstance(exc, UpstreamRateLimited) else None
            ends = deployment_failure(
                deployment=attempt.deployment,
                error=f"{code}: {getattr(exc, 'detail', exc)}",
                retry_after=retry_after,
                may_cool=self.alternatives,
            )
            if ends is not None:
                self.cooldown_ends.append(ends)
        if started_streaming or kind is None:
            return False
        self._problem("context_window" if kind == "context" else code)
        if kind == "context":
            self.min_context = attempt.config.context_window + 1
            self._queue = []  # the model's other deployments have the same window
        return True

    def succeeded(self, attempt: Attempt, *, ttft_ms: int | None) -> None:
        """Record that ``attempt`` served the request (TTFT in ms from the attempt's start) and set :attr:`route`."""
        deployment_success(deployment=attempt.deployment, ttft_ms=ttft_ms)
        self.route = self._route(attempt)

    def gave_up(self, attempt: Attempt | None) -> None:
        """Set :attr:`route` for a request that failed: on ``attempt`` (its last try), or on none."""
        if attempt is not None:
            self.route = self._route(attempt)
        else:
            self.route = {"reason": "unavailable", "skipped": dict(self.skipped)}
            if self.tried:
                self.route["tried"] = list(self.tried)

    def _route(self, attempt: Attempt) -> dict:
        reason = "routed" if self.first_problem is None else f"fallback:{self.first_problem}"
        route = {
            "model": attempt.config.slug,
            "deployment": attempt.deployment.label,
            "provider": attempt.deployment.provider,
            "reason": reason,
        }
        if self.tried:
            route["tried"] = list(self.tried)
        return route

    def unavailable(self) -> InferenceError:
        """Return the error for a request no deployment took: 503 ``model_unavailable`` with ``Retry-After``
        (seconds to the soonest cooldown end), or ``model_busy`` (``retry_after`` 1) when one or more was
        at its limits (requests in flight, per minute) and the others drained or cooling down."""
        summary = ", ".join(f"{label}: {why}" for label, why in self.skipped.items()) or "none configured"
        # A deployment at its limits frees up soonest (a request ends, a minute turns): say "busy".
        if set(self.skipped.values()) & {"at_capacity", "rpm_limit", "tpm_limit"}:
            return ModelBusy(f"{self.config.display_name} is busy ({summary}).", retry_after=1)
        if self.cooldown_ends:
            wait = max(1, math.ceil(min(self.cooldown_ends) - time.time()))
        else:
            wait = max(1, math.ceil(settings.ROUTING_COOLDOWN_SECONDS))
        return ModelUnavailable(
            f"No deployment of {self.config.display_name} can take requests now ({summary}).", retry_after=wait
        )


async def renew_while_running(attempt: Attempt) -> None:
    """Renew ``attempt``'s in-flight entry every third of ``ROUTING_INFLIGHT_TTL_SECONDS`` until cancelled."""
    while True:
        await asyncio.sleep(settings.ROUTING_INFLIGHT_TTL_SECONDS / 3)
        await asyncio.to_thread(slot_renew, deployment=attempt.deployment, request_id=attempt.request_id)
