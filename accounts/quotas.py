"""Concurrent generations and daily token quotas per user, held in Redis and shared by all processes.

A generation (a chat turn, a ``/v1/chat/completions`` request) is admitted by :func:`generation_admit`
before anything is stored. One Lua script, atomic across processes, checks and takes both:

- a **slot**: at most ``GENERATION_CONCURRENCY`` generations per user at once (0: no limit). A slot is
  a lease of ``GENERATION_LEASE_SECONDS`` renewed while the generation runs
  (:class:`GenerationKeepalive`), so a crashed process frees its slots on its own, and the lease tells
  whether a generation is still running anywhere (:func:`generation_live`, :func:`generations_lapsed`:
  how chat finds answers orphaned by a dead process);
- a **reservation** of the request's ``max_tokens`` against the user's daily token quota
  (:func:`quota_limit`; prompt + completion tokens per UTC day).

Keys, per user: ``limits:gen:<user>`` (sorted set: generation id → lease expiry, ms, Redis clock),
``limits:gen:<user>:tokens`` (hash: generation id → reserved tokens) and ``limits:quota:<user>:<day>``
(tokens used that day, added by :func:`quota_add` from ``accounts.services.usage_record``, the one
place every request passes). A missing day counter (a Redis restart, a new day) is rebuilt from
:class:`~accounts.models.UsageDaily`.

Quota rule: a request is admitted while ``used + reserved < quota``, and then reserves its
``max_tokens``; concurrent requests see each other's reservations, so together they overshoot the
quota by at most one request's tokens. (Refusing whenever ``used + reserved + max_tokens`` would pass
the quota would refuse every request of a user whose quota is smaller than the model's ``max_tokens``.)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone
from rest_framework import status

from core.errors import ParleyError

from .limits_store import limits_key, run, run_script
from .models import UsageDaily, User

# Seconds a client refused for too many generations is told to wait: an answer usually takes a few.
GENERATION_RETRY_AFTER = 5
# Seconds a day counter outlives its day: long enough for requests finishing after midnight.
DAY_COUNTER_TTL = 2 * 86400

# KEYS: slots (zset), reserved tokens (hash), today's counter.
# ARGV: generation id, max slots (0: none), lease ms, quota (0: none), tokens to reserve,
#       counter seed ("": unknown), take a slot (1) or only check the quota (0), day counter TTL,
#       the tokens must fit in what is left (1: a request whose size is known) or not (0).
# Return {1} admitted, {-1} too many generations, {-2, used} over quota, {-3} counter unknown: seed it,
# {-4, used} the request's tokens do not fit in what is left.
ADMIT_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
end
local take = ARGV[7] == '1'
local max_slots = tonumber(ARGV[2])
if take and max_slots > 0 and redis.call('ZCARD', KEYS[1]) >= max_slots then
  return {-1}
end
local quota = tonumber(ARGV[4])
if quota > 0 then
  local used = redis.call('GET', KEYS[3])
  if not used then
    if ARGV[6] == '' then return {-3} end
    redis.call('SET', KEYS[3], ARGV[6], 'EX', tonumber(ARGV[8]))
    used = ARGV[6]
  end
  local held = 0
  for _, tokens in ipairs(redis.call('HVALS', KEYS[2])) do held = held + tonumber(tokens) end
  if tonumber(used) + held >= quota then return {-2, tonumber(used) + held} end
  if ARGV[9] == '1' and tonumber(used) + held + tonumber(ARGV[5]) > quota then return {-4, tonumber(used) + held} end
end
if take then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {1}
"""

# KEYS: slots, reserved tokens, the generation's "released" mark. ARGV: generation id, lease ms.
# Extend the lease; a lease lost although the generation was never released (Redis restarted or
# flushed, or down when it was admitted) is taken again, so a live generation is never mistaken for a
# dead one for longer than one renewal. Return 1 if held, 0 once released.
RENEW_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: slots, reserved tokens, the generation's "released" mark. ARGV: generation id, lease ms.
# The mark outlives any renewal in flight, which must not take a finished generation's slot again.
RELEASE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 1
"""

# The lease store's age: KEYS[n] "epoch" holds the Redis time (ms) at which a check first found it
# missing, so it is as old as this Redis's leases (it goes with them when Redis restarts empty or is
# flushed). A lease missing while the epoch is younger than SETTLE_MS (settle_ms(): a lease period and
# CACHE_RETRY_AFTER_ERROR) proves nothing: a live generation takes a lost lease again at its next
# renewal, a third of a lease period later, or once its process has rested after meeting the restart.
# EPOCH_LUA sets `now` and `settled`.
EPOCH_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local epoch = tonumber(redis.call('GET', EPOCH_KEY) or '')
if not epoch then
  redis.call('SET', EPOCH_KEY, now)
  epoch = now
end
local settled = now - epoch >= SETTLE_MS
"""

# KEYS: slots, epoch. ARGV: generation id, settle ms. Return 1 held, 0 lapsed, -1 unknown (the
# lease is missing but the store is younger than the settle ms).
LIVE_SCRIPT = (
    "local EPOCH_KEY, SETTLE_MS = KEYS[2], tonumber(ARGV[2])"
    + EPOCH_LUA
    + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > now then return 1 end
if settled then return 0 end
return -1
"""
)

# KEYS: the suspects hash (generation id -> first ms seen without a lease), the epoch, then one slots
# key per generation. ARGV: confirm ms, hash TTL ms, settle ms, then the generation ids (in KEYS' order
# from KEYS[3]). A generation is lapsed once its lease has been missing for confirm ms (seen missing on
# two runs at least that far apart) in a store that has held leases for the settle ms. The hash is
# rebuilt from this run's generations, so it never grows.
LAPSED_SCRIPT = (
    "local EPOCH_KEY, SETTLE_MS = KEYS[2], tonumber(ARGV[3])"
    + EPOCH_LUA
    + """
local confirm = tonumber(ARGV[1])
local suspects = {}
local lapsed = {}
for i = 3, #KEYS do
  local id = ARGV[i + 1]
  local expiry = redis.call('ZSCORE', KEYS[i], id)
  if not expiry or tonumber(expiry) <= now then
    local first = tonumber(redis.call('HGET', KEYS[1], id) or now)
    if settled and now - first >= confirm then table.insert(lapsed, id) else table.insert(suspects, {id, first}) end
  end
end
redis.call('DEL', KEYS[1])
for _, entry in ipairs(suspects) do redis.call('HSET', KEYS[1], entry[1], entry[2]) end
if #suspects > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return lapsed
"""
)

# Add tokens to a day counter that exists; a missing one is rebuilt from the database when needed.
ADD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


def quota_limit(*, user: User) -> int:
    """Return ``user``'s daily token quota: ``daily_token_quota``, else ``QUOTA_DAILY_TOKENS``; 0 = unlimited."""
    return user.daily_token_quota if user.daily_token_quota is not None else settings.QUOTA_DAILY_TOKENS


def quota_resets_at(now: datetime | None = None) -> datetime:
    """Return the next UTC midnight after ``now`` (default: now), when daily quotas reset."""
    now = (now or timezone.now()).astimezone(UTC)
    return datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=UTC)


def _today() -> date:
    return timezone.now().astimezone(UTC).date()


def quota_used_stored(*, user_id: int, day: date) -> int:
    """Return the prompt + completion tokens of ``user_id``'s requests on ``day`` (UTC), from :class:`UsageDaily`."""
    total = UsageDaily.objects.filter(user_id=user_id, day=day).aggregate(
        total=Sum(F("prompt_tokens") + F("completion_tokens"))
    )["total"]
    return int(total or 0)


def _keys(user_id: int, day: date) -> list[str]:
    return [limits_key("gen", user_id), limits_key("gen", user_id, "tokens"), limits_key("quota", user_id, day)]


def _lease_keys(user_id: int, generation_id: str) -> list[str]:
    """Return the slots, reserved tokens and "released" mark keys of one generation."""
    released = limits_key("gen", user_id, "released", generation_id)
    return [limits_key("gen", user_id), limits_key("gen", user_id, "tokens"), released]


def _quota_error(*, quota: int, now: datetime | None = None, detail: str = "") -> ParleyError:
    resets_at = quota_resets_at(now)
    seconds = max(1, math.ceil((resets_at - (now or timezone.now())).total_seconds()))
    detail = detail or f"Your daily quota of {quota:,} tokens is used up"
    return ParleyError(
        f"{detail}; it resets at {resets_at:%H:%M} UTC ({resets_at.isoformat().replace('+00:00', 'Z')}).",
        code="quota_exceeded",
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        retry_after=seconds,
        extra={"resets_at": resets_at.isoformat().replace("+00:00", "Z")},
    )


def _admit(*, user: User, generation_id: str, reserve_tokens: int, take: bool, must_fit: bool = False) -> None:
    quota = quota_limit(user=user)
    day = _today()
    args = [
        generation_id,
        settings.GENERATION_CONCURRENCY,
        settings.GENERATION_LEASE_SECONDS * 1000,
        quota,
        max(0, int(reserve_tokens)),
        "",
        int(take),
        DAY_COUNTER_TTL,
        int(must_fit),
    ]
    result = run_script(ADMIT_SCRIPT, _keys(user.pk, day), args, default=[1], what="generation limits")
    if result[0] == -3:  # no counter for today yet: seed it from the database, atomically with the check
        args[5] = quota_used_stored(user_id=user.pk, day=day)
        result = run_script(ADMIT_SCRIPT, _keys(user.pk, day), args, default=[1], what="generation limits")
    if result[0] == -1:
        raise ParleyError(
            f"You already have {settings.GENERATION_CONCURRENCY} answers being generated; "
            "wait for one to finish or stop it.",
            code="too_many_generations",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            retry_after=GENERATION_RETRY_AFTER,
        )
    if result[0] == -2:
        raise _quota_error(quota=quota)
    if result[0] == -4:
        left = max(0, quota - int(result[1]))
        raise _quota_error(
            quota=quota,
            detail=f"This request needs about {int(reserve_tokens):,} tokens, more than the {left:,} left "
            f"of your daily quota of {quota:,}",
        )


def generation_admit(*, user: User, generation_id: str, reserve_tokens: int, must_fit: bool = False) -> None:
    """Take a generation slot for ``user`` and reserve ``reserve_tokens`` of their daily quota.

    Call before storing anything for the request; end with :func:`generation_release` (chat: when
    the answer is finalised). ``generation_id`` names the generation (e.g. the assistant message id)
    and must be unique. Raise :class:`ParleyError` 429 ``too_many_generations`` (``retry_after``
    :data:`GENERATION_RETRY_AFTER` s) when ``GENERATION_CONCURRENCY`` generations are running, or
    429 ``quota_exceeded`` (``retry_after``: seconds until UTC midnight; ``extra["resets_at"]``) when
    the quota is used up. ``must_fit``: for a request whose tokens are known in advance (embeddings),
    also 429 ``quota_exceeded`` when ``reserve_tokens`` is more than what is left. Redis down:
    admitted, unlimited.
    """
    _admit(user=user, generation_id=generation_id, reserve_tokens=reserve_tokens, take=True, must_fit=must_fit)


def quota_check(*, user: User) -> None:
    """Raise ``quota_exceeded`` (see :func:`generation_admit`) if ``user``'s daily quota is used up.

    For requests that take no generation slot (embeddings).
    """
    _admit(user=user, generation_id="", reserve_tokens=0, take=False)


def generation_renew(*, user_id: int, generation_id: str) -> bool:
    """Extend a generation's lease by ``GENERATION_LEASE_SECONDS``; return False once it was released.

    A lease lost without a release (Redis restarted, flushed, or down at admission) is taken again.
    """
    lease_ms = settings.GENERATION_LEASE_SECONDS * 1000
    keys = _lease_keys(user_id, generation_id)
    return bool(run_script(RENEW_SCRIPT, keys, [generation_id, lease_ms], default=1, what="generation lease"))


def generation_release(*, user_id: int, generation_id: str) -> None:
    """Free a generation's slot and its quota reservation (a no-op when already free).

    A released generation's lease is never renewed again (see :func:`generation_renew`).
    """
    lease_ms = settings.GENERATION_LEASE_SECONDS * 1000
    keys = _lease_keys(user_id, generation_id)
    run_script(RELEASE_SCRIPT, keys, [generation_id, 2 * lease_ms], default=None, what="generation release")


EPOCH_SCRIPT = "local EPOCH_KEY, SETTLE_MS = KEYS[1], 0" + EPOCH_LUA + "return epoch"


def settle_ms() -> int:
    """Milliseconds after a Redis restart (or flush) during which a missing lease proves nothing.

    A live generation renews every third of ``GENERATION_LEASE_SECONDS``, but a process that met the
    restart rests ``CACHE_RETRY_AFTER_ERROR`` seconds before it talks to Redis again
    (:mod:`accounts.limits_store`): a lease period and that rest cover both.
    """
    return int((settings.GENERATION_LEASE_SECONDS + settings.CACHE_RETRY_AFTER_ERROR) * 1000)


def redis_epoch() -> int | None:
    """Return the Redis time (ms) since which the limits' Redis has held its data; None when Redis is down.

    It changes when Redis restarts empty or is flushed (see :data:`EPOCH_LUA`): what was kept there
    (leases, queued Celery tasks on the same server) may be gone.
    """
    return run_script(EPOCH_SCRIPT, [limits_key("epoch")], [], default=None, what="Redis epoch")


def generation_live(*, user_id: int, generation_id: str) -> bool | None:
    """Return whether generation ``generation_id`` of ``user_id`` holds an unexpired lease; None if unknown.

    Unknown: Redis is down, or the lease is missing from a Redis that has held leases for less than
    :func:`settle_ms` (restarted empty or flushed: a live generation takes its lease again at its next
    renewal; see :data:`LIVE_SCRIPT`).
    """
    keys = [limits_key("gen", user_id), limits_key("epoch")]
    found = run_script(LIVE_SCRIPT, keys, [generation_id, settle_ms()], default=None, what="generation lease check")
    return None if found is None or found == -1 else bool(found)


def generations_lapsed(*, generations: list[tuple[int, str]], confirm_seconds: float) -> list[str] | None:
    """Return the ids of ``generations`` (``(user id, generation id)`` pairs) whose lease is gone for good.

    A generation counts as lapsed once it has been seen without an unexpired lease on two calls at
    least ``confirm_seconds`` apart (a live one takes its lost lease again within a third of
    ``GENERATION_LEASE_SECONDS``, see :func:`generation_renew`), and only once Redis has held leases for
    :func:`settle_ms` (after a restart or flush, no lease proves anything until then). Pass every
    candidate on each call: suspicions of generations left out are forgotten. Return None, deciding
    nothing, when Redis is down.
    """
    if not generations:
        return []
    keys = [limits_key("gen", "lapse-suspects"), limits_key("epoch")]
    keys += [limits_key("gen", user_id) for user_id, _ in generations]
    args = [int(confirm_seconds * 1000), int(max(confirm_seconds, 1) * 10_000), settle_ms()]
    args += [gid for _, gid in generations]
    lapsed = run_script(LAPSED_SCRIPT, keys, args, default=None, what="generation lapse check")
    return None if lapsed is None else [gid.decode() if isinstance(gid, bytes) else gid for gid in lapsed]


def generations_running(*, user_id: int) -> int:
    """Return how many generations of ``user_id`` hold a live slot (leases not lapsed)."""

    def count(connection) -> int:
        now_s, now_us = connection.time()
        return connection.zcount(limits_key("gen", user_id), now_s * 1000 + now_us // 1000, "+inf")

    return run(count, default=0, what="generation count")


def quota_add(*, user_id: int, day: date, tokens: int) -> None:
    """Add ``tokens`` used by ``user_id`` on ``day`` (UTC) to the quota counter, when it exists.

    A missing counter is left missing: it is rebuilt from :class:`UsageDaily`, which already holds
    these tokens, at the next admission.
    """
    if tokens:
        run_script(ADD_SCRIPT, [limits_key("quota", user_id, day)], [int(tokens)], default=None, what="quota")


# KEYS: the day's document counter. ARGV: limit, TTL s. Return the count with this one, or -1 when full.
INGEST_SCRIPT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return -1 end
count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return count
"""


def ingestion_admit(*, user: User) -> None:
    """Count one more document uploaded by ``user`` today (UTC), within ``KB_DAILY_DOCUMENTS`` (0: no limit).

    Counted in Redis at upload, so deleting documents does not give the quota back. Raise
    :class:`ParleyError` 429 ``ingestion_quota_exceeded`` (``retry_after``: seconds until UTC
    midnight) when the day's documents are used up. Redis down: admitted.
    """
    limit = settings.KB_DAILY_DOCUMENTS
    if not limit:
        return
    key = limits_key("ingest", user.pk, _today())
    if run_script(INGEST_SCRIPT, [key], [limit, DAY_COUNTER_TTL], default=0, what="ingestion quota") != -1:
        return
    resets_at = quota_resets_at()
    raise ParleyError(
        f"You have uploaded your {limit:,} documents for today; more can be uploaded after {resets_at:%H:%M} UTC.",
        code="ingestion_quota_exceeded",
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        retry_after=max(1, math.ceil((resets_at - timezone.now()).total_seconds())),
        extra={"resets_at": resets_at.isoformat().replace("+00:00", "Z")},
    )


@dataclass
class QuotaStatus:
    """``daily_tokens``: the quota (None: unlimited); ``used``/``remaining`` tokens today; ``resets_at`` UTC."""

    daily_tokens: int | None
    used: int
    remaining: int | None
    resets_at: datetime


def quota_status(*, user: User) -> QuotaStatus:
    """Return ``user``'s quota for today (UTC), from the stored usage of finished requests."""
    quota = quota_limit(user=user)
    used = quota_used_stored(user_id=user.pk, day=_today())
    return QuotaStatus(
        daily_tokens=quota or None,
        used=used,
        remaining=max(0, quota - used) if quota else None,
        resets_at=quota_resets_at(),
    )


class GenerationKeepalive:
    """Renew a generation's lease every third of ``GENERATION_LEASE_SECONDS`` from a daemon thread until :meth:`stop`.

    Usable as a context manager. The thread only talks to Redis, so it works the same beside an
    event loop (chat turns) or a blocking request (the gateway).
    """

    def __init__(self, *, user_id: int, generation_id: str):
        self.user_id = user_id
        self.generation_id = generation_id
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{generation_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(settings.GENERATION_LEASE_SECONDS / 3):
            if not generation_renew(user_id=self.user_id, generation_id=self.generation_id):
                return

    def stop(self) -> None:
        self._stopped.set()

    def __enter__(self) -> GenerationKeepalive:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
