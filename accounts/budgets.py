"""Money budgets per user, group and API key: enforced at admission in Redis, settled from usage records.

A :class:`~accounts.models.Budget` limits what its subject spends on priced models per UTC day, week
(from Monday) or month. Every budget that applies to a request (the user's, each of the user's
groups', the API key's) is checked and reserved by one Lua script, atomic across processes, in the
same admission step as the token quota (:class:`accounts.metering.Admission`):

- a request is **refused** (429 ``budget_exceeded``, ``Retry-After`` and ``resets_at``: the period's
  end) while ``spent + reserved >= amount`` for any of them;
- otherwise it **reserves** its maximum cost (prompt price x prompt token estimate + completion
  price x ``max_tokens``) on each, released when it finishes (:func:`budget_release`), when its
  actual cost has been added to the counters (:func:`budget_spend_add`, from
  ``accounts.services.usage_record``). A request whose maximum cost is 0 (a model priced 0, such as
  the bundled GGUF) is never refused nor reserved by a money budget.

Like the token quota, concurrent requests see each other's reservations, so together they overshoot a
budget by at most one request's cost. Amounts are held in micro-USD integers. Keys:
``limits:budget:<id>:<period start, epoch s>`` (spent), ``...:held`` (hash: generation id →
``"<micro-USD>:<expiry ms>"``) and ``limits:budget:gen:<generation id>`` (the held hashes a generation
reserved on, so any process can release it). A missing spent counter (Redis restarted, a new period)
is seeded from the period's :class:`~accounts.models.UsageRecord` costs. A reservation left by a
crashed process lapses after :data:`HOLD_SECONDS`; a chat turn running longer renews its own
(:func:`budget_renew`, from :meth:`accounts.metering.Admission.keepalive`). Redis down: admitted (limits fail open).

Soft limits: when settled spend crosses ``threshold_percent`` of the amount, ``budget.threshold`` is
emitted (:func:`core.events.event_emit`), and ``budget.exceeded`` at 100%, each once per period: a
:class:`~accounts.models.BudgetAlert` row (unique per budget, period and kind) decides which process
announces it.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from http import HTTPStatus

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from core.errors import ParleyError
from core.events import event_emit

from .limits_store import limits_key, run_script
from .models import Budget, BudgetAlert, BudgetAlertKind, BudgetPeriod, UsageRecord

MICRO = Decimal(1_000_000)  # micro-USD per USD
# Seconds a reservation outlives its admission when nobody releases it (a crashed process): longer
# than any generation's timeouts allow, short enough that a crash does not block a budget for long.
HOLD_SECONDS = 3600
# Seconds a spent counter outlives its period: requests finishing just after the period ends.
COUNTER_GRACE_SECONDS = 2 * 86400

# KEYS: the generation's record, then for each budget its spent counter and its held hash.
# ARGV: generation id, micro-USD to reserve, hold ms, then for each budget: amount (micro-USD),
#       counter seed ("": unknown), counter TTL (s).
# Return {1} admitted and reserved, {-2, i, spent + held} budget i is used up, {-3, i} seed counter i.
ADMIT_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local n = (#KEYS - 1) / 2
for i = 1, n do
  local counter, held = KEYS[2 * i], KEYS[2 * i + 1]
  local amount, seed, ttl = tonumber(ARGV[3 * i + 1]), ARGV[3 * i + 2], tonumber(ARGV[3 * i + 3])
  local spent = redis.call('GET', counter)
  if not spent then
    if seed == '' then return {-3, i} end
    redis.call('SET', counter, seed, 'EX', ttl)
    spent = seed
  end
  local total = tonumber(spent)
  local entries = redis.call('HGETALL', held)
  for j = 1, #entries, 2 do
    local value = entries[j + 1]
    local sep = string.find(value, ':', 1, true)
    if tonumber(string.sub(value, sep + 1)) <= now then
      redis.call('HDEL', held, entries[j])
    else
      total = total + tonumber(string.sub(value, 1, sep - 1))
    end
  end
  if total >= amount then return {-2, i, total} end
end
local hold = tonumber(ARGV[3])
local entry = ARGV[2] .. ':' .. (now + hold)
local names = {}
for i = 1, n do
  redis.call('HSET', KEYS[2 * i + 1], ARGV[1], entry)
  redis.call('PEXPIRE', KEYS[2 * i + 1], hold)
  table.insert(names, KEYS[2 * i + 1])
end
redis.call('SET', KEYS[1], table.concat(names, ' '), 'PX', hold)
return {1}
"""

# KEYS: the generation's record. ARGV: generation id. Free its reservations; 0 when it held none.
RELEASE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
for key in string.gmatch(held, '%S+') do redis.call('HDEL', key, ARGV[1]) end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: the generation's record. ARGV: generation id, hold ms. Push its reservations' expiry to now +
# hold (a generation still running past HOLD_SECONDS keeps them); 0 when it holds none.
RENEW_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local hold = tonumber(ARGV[2])
for key in string.gmatch(held, '%S+') do
  local value = redis.call('HGET', key, ARGV[1])
  if value then
    local sep = string.find(value, ':', 1, true)
    redis.call('HSET', key, ARGV[1], string.sub(value, 1, sep - 1) .. ':' .. (now + hold))
    redis.call('PEXPIRE', key, hold)
  end
end
redis.call('PEXPIRE', KEYS[1], hold)
return 1
"""

# Add micro-USD to a spent counter that exists and return the new total; a missing one stays missing.
ADD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


def period_bounds(period: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Return ``(start, end)`` (UTC, end exclusive) of the ``period`` (day/week/month) holding ``now``.

    Weeks start on Monday (ISO 8601).
    """
    now = (now or timezone.now()).astimezone(UTC)
    day = now.date()
    if period == BudgetPeriod.DAY:
        start, end = day, day + timedelta(days=1)
    elif period == BudgetPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(end, time.min, tzinfo=UTC)


def micro_usd(usd: Decimal) -> int:
    """Return ``usd`` in micro-USD, rounded up (a priced request never reserves 0)."""
    return int((Decimal(usd) * MICRO).to_integral_value(rounding=ROUND_CEILING))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def budgets_applicable(*, user_id: int, api_key_id=None) -> list[Budget]:
    """Return the budgets a request of ``user_id`` (made with API key ``api_key_id``, if any) counts against.

    The user's own, those of each of the user's groups, and the key's.
    """
    subjects = Q(user_id=user_id) | Q(group__user__id=user_id)
    if api_key_id is not None:
        subjects |= Q(api_key_id=api_key_id)
    return list(Budget.objects.filter(subjects).select_related("user", "group", "api_key").distinct())


def budget_usage(*, budget: Budget) -> QuerySet[UsageRecord]:
    """Return the usage records that count against ``budget`` (any period)."""
    if budget.user_id:
        return UsageRecord.objects.filter(user_id=budget.user_id)
    if budget.group_id:
        return UsageRecord.objects.filter(user__groups=budget.group_id)
    return UsageRecord.objects.filter(api_key_id=budget.api_key_id)


def budget_spent_stored(*, budget: Budget, start: datetime, end: datetime) -> Decimal:
    """Return the USD cost of ``budget``'s subject's requests recorded in ``[start, end)``."""
    total = (
        budget_usage(budget=budget)
        .filter(created_at__gte=start, created_at__lt=end)
        .aggregate(total=Sum("cost"))["total"]
    )
    return total or Decimal(0)


def _keys(budget: Budget, start: datetime) -> tuple[str, str]:
    counter = limits_key("budget", budget.pk, int(start.timestamp()))
    return counter, f"{counter}:held"


def _gen_key(generation_id: str) -> str:
    return limits_key("budget", "gen", generation_id)


def budget_error(*, budget: Budget, spent: Decimal, now: datetime | None = None) -> ParleyError:
    """Return the 429 ``budget_exceeded`` error of ``budget`` (``retry_after`` and ``resets_at``: the period's end)."""
    now = now or timezone.now()
    _, end = period_bounds(budget.period, now)
    return ParleyError(
        f"The {budget.get_period_display().split(' ')[0].lower()} budget of ${budget.amount} of "
        f"{budget.subject_label} is used up (${spent.quantize(Decimal('0.01'))} spent or reserved); "
        f"it resets at {_iso(end)}.",
        code="budget_exceeded",
        status_code=HTTPStatus.TOO_MANY_REQUESTS,
        retry_after=max(1, math.ceil((end - now).total_seconds())),
        extra={"resets_at": _iso(end)},
    )


def budget_admit(
    *,
    user_id: int,
    generation_id: str,
    reserve_usd: Decimal,
    api_key_id=None,
    budgets: list[Budget] | None = None,
) -> None:
    """Check every budget applying to the request and reserve ``reserve_usd`` (its maximum cost) on each.

    ``budgets``: the applicable budgets when already known (else :func:`budgets_applicable`). Call
    in the admission step, before anything is stored; end with :func:`budget_release`. Raise
    :class:`ParleyError` 429 ``budget_exceeded`` (``retry_after``: seconds until the period's end;
    ``extra["resets_at"]``) when a budget's spent + reserved reaches its amount. A request of
    maximum cost 0 (a model priced 0) is never checked. Redis down: admitted.
    """
    if reserve_usd <= 0:
        return
    if budgets is None:
        budgets = budgets_applicable(user_id=user_id, api_key_id=api_key_id)
    if not budgets:
        return
    now = timezone.now()
    bounds = [period_bounds(budget.period, now) for budget in budgets]
    keys = [_gen_key(generation_id)]
    args: list = [generation_id, micro_usd(reserve_usd), HOLD_SECONDS * 1000]
    for budget, (start, end) in zip(budgets, bounds, strict=True):
        keys.extend(_keys(budget, start))
        ttl = math.ceil((end - now).total_seconds()) + COUNTER_GRACE_SECONDS
        args.extend([micro_usd(budget.amount), "", ttl])
    result = run_script(ADMIT_SCRIPT, keys, args, default=[1], what="budgets")
    if result[0] == -3:  # a counter is missing: seed them all from the database and check again
        for i, (budget, (start, end)) in enumerate(zip(budgets, bounds, strict=True)):
            args[3 + 3 * i + 1] = micro_usd(budget_spent_stored(budget=budget, start=start, end=end))
        result = run_script(ADMIT_SCRIPT, keys, args, default=[1], what="budgets")
    if result[0] == -2:
        raise budget_error(budget=budgets[int(result[1]) - 1], spent=Decimal(int(result[2])) / MICRO, now=now)


def budget_release(*, generation_id: str) -> None:
    """Free the reservations :func:`budget_admit` took for ``generation_id`` (a no-op when none)."""
    run_script(RELEASE_SCRIPT, [_gen_key(generation_id)], [generation_id], default=None, what="budget release")


def budget_renew(*, generation_id: str) -> None:
    """Keep the reservations of a generation still running for another :data:`HOLD_SECONDS` (none: a no-op)."""
    keys, args = [_gen_key(generation_id)], [generation_id, HOLD_SECONDS * 1000]
    run_script(RENEW_SCRIPT, keys, args, default=None, what="budget renewal")


def budget_spend_add(*, user_id: int, cost: Decimal, api_key_id=None, at: datetime | None = None) -> None:
    """Add a recorded request's ``cost`` (USD) to the spent counters of the budgets it counts against.

    Call once the request's :class:`UsageRecord` is committed (``accounts.services.usage_record``
    does). A missing counter is left missing (it is seeded from the records, which hold this cost,
    at the next admission). Then emit ``budget.threshold`` / ``budget.exceeded`` for each budget
    whose spend reached its threshold / amount, once per period (:func:`budget_alerts_check`).
    """
    if not cost or cost <= 0:
        return
    at = at or timezone.now()
    for budget in budgets_applicable(user_id=user_id, api_key_id=api_key_id):
        start, end = period_bounds(budget.period, at)
        counter, _ = _keys(budget, start)
        total = run_script(ADD_SCRIPT, [counter], [micro_usd(cost)], default=None, what="budget spend")
        spent = Decimal(int(total)) / MICRO if total else budget_spent_stored(budget=budget, start=start, end=end)
        budget_alerts_check(budget=budget, spent=spent, start=start, end=end)


def budget_event_data(*, budget: Budget, spent: Decimal, start: datetime, end: datetime) -> dict:
    """Return the ``data`` of a ``budget.threshold`` / ``budget.exceeded`` event (USD as decimal strings)."""
    subject = budget.user or budget.group or budget.api_key
    name = subject.prefix if budget.api_key_id else str(subject)  # a key's prefix, never the key
    return {
        "budget_id": budget.pk,
        "subject": {"type": budget.subject_type, "id": str(subject.pk), "name": name},
        "amount": str(budget.amount),
        "spent": str(spent.quantize(Decimal("0.000001"))),
        "period": budget.period,
        "period_start": _iso(start),
        "period_end": _iso(end),
        "threshold_percent": budget.threshold_percent,
    }


def budget_alerts_check(*, budget: Budget, spent: Decimal, start: datetime, end: datetime) -> list[BudgetAlert]:
    """Record and announce the alerts ``spent`` (USD, this period) reaches for ``budget``; return the new ones.

    ``threshold``: spent >= ``threshold_percent`` % of the amount; ``exceeded``: spent >= amount.
    Each is created at most once per budget and period (a unique constraint: concurrent processes
    cannot both announce it), and emits ``budget.<kind>`` with :func:`budget_event_data`.
    """
    kinds = []
    if budget.threshold_percent and spent * 100 >= budget.amount * budget.threshold_percent:
        kinds.append(BudgetAlertKind.THRESHOLD)
    if spent >= budget.amount:
        kinds.append(BudgetAlertKind.EXCEEDED)
    created = []
    for kind in kinds:
        if BudgetAlert.objects.filter(budget=budget, period_start=start, kind=kind).exists():
            continue
        try:
            with transaction.atomic():
                alert = BudgetAlert.objects.create(
                    budget=budget, kind=kind, period_start=start, period_end=end, spent=spent
                )
                event_emit(f"budget.{kind}", budget_event_data(budget=budget, spent=spent, start=start, end=end))
        except IntegrityError:  # another process announced it first
            continue
        created.append(alert)
    return created


@dataclass
class BudgetStatus:
    """One budget as its subject sees it: USD ``amount``, ``spent`` and ``remaining`` this period (from
    the stored usage of finished requests), the period and when it resets."""

    id: int
    subject_type: str
    subject: str
    amount: Decimal
    spent: Decimal
    remaining: Decimal
    period: str
    period_start: datetime
    resets_at: datetime
    threshold_percent: int | None


def budget_status(*, budget: Budget, now: datetime | None = None) -> BudgetStatus:
    """Return ``budget``'s state in the current period."""
    start, end = period_bounds(budget.period, now)
    spent = budget_spent_stored(budget=budget, start=start, end=end)
    subject = budget.api_key.prefix if budget.api_key_id else str(budget.user or budget.group)
    return BudgetStatus(
        id=budget.pk,
        subject_type=budget.subject_type,
        subject=subject,
        amount=budget.amount,
        spent=spent,
        remaining=max(Decimal(0), budget.amount - spent),
        period=budget.period,
        period_start=start,
        resets_at=end,
        threshold_percent=budget.threshold_percent,
    )


def budget_statuses(*, user_id: int, api_key_id=None, keys_only: bool = False) -> list[BudgetStatus]:
    """Return the state of every budget applying to ``user_id`` (and API key ``api_key_id``).

    ``keys_only``: only the key's budgets (the API key list).
    """
    if keys_only:
        budgets = list(Budget.objects.filter(api_key_id=api_key_id).select_related("api_key"))
    else:
        budgets = budgets_applicable(user_id=user_id, api_key_id=api_key_id)
    return [budget_status(budget=budget) for budget in budgets]
