"""Admission and metering of one generation: the one step every path takes (chat turns, REST, ``/v1``).

:meth:`Admission.admit` takes a generation slot and reserves the request's ``max_tokens`` of the user's
daily quota (:func:`accounts.quotas.generation_admit`: 429 ``too_many_generations`` /
``quota_exceeded``) and its maximum cost on every applicable money budget
(:func:`accounts.budgets.budget_admit`: 429 ``budget_exceeded``) before anything is stored or
generated; :meth:`Admission.keepalive` renews the slot's lease while the generation runs (a task on
the event loop: no thread); :meth:`Admission.finish` frees the slot, records the request's usage
(:func:`accounts.services.usage_record`, which settles its cost on the budgets) and then frees its
budget reservations, once.
An admission can be finished by another process than the one that admitted it (a chat turn admitted
by the web process and run by a Celery worker): it is only a user, a generation id and an API key id.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from .budgets import HOLD_SECONDS, budget_admit, budget_release, budget_renew
from .models import APIKey, UsageSource, UsageStatus, User
from .quotas import generation_admit, generation_release, generation_renew
from .services import usage_record

logger = logging.getLogger(__name__)


@dataclass
class Admission:
    """A generation admitted for ``user`` under ``generation_id`` (e.g. the assistant message's id)."""

    user: User
    generation_id: str
    source: UsageSource
    api_key_id: object = None  # the APIKey's id of a /v1 request made with one
    _finished: bool = field(default=False, repr=False)

    @classmethod
    def admit(
        cls,
        *,
        user: User,
        generation_id: str,
        reserve_tokens: int,
        source: UsageSource,
        must_fit: bool = False,
        reserve_cost: Decimal = Decimal(0),
        api_key: APIKey | None = None,
    ) -> Admission:
        """Admit a generation; raise 429 ``too_many_generations`` / ``quota_exceeded`` (see generation_admit)
        or ``budget_exceeded`` (see :func:`accounts.budgets.budget_admit`).

        ``must_fit``: ``reserve_tokens`` is the request's known size (embeddings), refused when it is
        more than what is left of the quota. ``reserve_cost``: the request's maximum cost in USD
        (:func:`inference.services.cost_estimate`), reserved on the budgets of the user, the user's
        groups and ``api_key``; 0 (a model priced 0) is never refused by a budget. Blocking (Redis);
        call before storing anything for the request.
        """
        generation_admit(user=user, generation_id=generation_id, reserve_tokens=reserve_tokens, must_fit=must_fit)
        api_key_id = api_key.pk if api_key is not None else None
        try:
            budget_admit(user_id=user.pk, api_key_id=api_key_id, generation_id=generation_id, reserve_usd=reserve_cost)
        except BaseException:
            generation_release(user_id=user.pk, generation_id=generation_id)
            raise
        return cls(user=user, generation_id=generation_id, source=source, api_key_id=api_key_id)

    async def keepalive(self) -> None:
        """Renew the slot's lease every third of ``GENERATION_LEASE_SECONDS`` until cancelled or lost, and
        the budget reservations every third of :data:`accounts.budgets.HOLD_SECONDS`.

        Run as a task beside the generation; a crashed process stops renewing and its slot lapses.
        """
        loop = asyncio.get_running_loop()
        budgets_renewed = loop.time()
        while True:
            await asyncio.sleep(settings.GENERATION_LEASE_SECONDS / 3)
            held = await asyncio.to_thread(generation_renew, user_id=self.user.pk, generation_id=self.generation_id)
            if not held:
                return
            if loop.time() - budgets_renewed >= HOLD_SECONDS / 3:  # a long turn keeps its budget reservations
                budgets_renewed = loop.time()
                await asyncio.to_thread(budget_renew, generation_id=self.generation_id)

    def release(self) -> None:
        """Free the slot, its quota and budget reservations without recording anything (nothing was generated)."""
        generation_release(user_id=self.user.pk, generation_id=self.generation_id)
        budget_release(generation_id=self.generation_id)

    def finish(
        self,
        *,
        model_slug: str,
        provider: str,
        status: UsageStatus | str,
        prompt_tokens: int | None = 0,
        completion_tokens: int | None = 0,
        cost: Decimal | None = None,
        ttft_ms: int | None = None,
        latency_ms: int | None = None,
        cached: bool = False,
        deployment: str = "",
        route: str = "",
    ) -> None:
        """Free the slot and record the request (tokens, USD ``cost``, milliseconds); only the first call counts.

        ``deployment`` and ``route``: what served it and why (see :func:`accounts.services.usage_record`).

        Blocking. Never raises: the answer matters more than its bookkeeping (failures are logged).
        """
        if self._finished:
            return
        self._finished = True
        try:
            generation_release(user_id=self.user.pk, generation_id=self.generation_id)
            # Recorded before the budget reservation goes: its cost is added to the budgets' spent
            # counters once the record commits, so no moment counts it neither spent nor reserved.
            usage_record(
                user=self.user,
                model_slug=model_slug,
                provider=provider,
                source=self.source,
                status=status,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
                ttft_ms=ttft_ms,
                latency_ms=latency_ms,
                cached=cached,
                deployment=deployment,
                route=route,
                api_key_id=self.api_key_id,
            )
        except Exception:
            logger.exception("Could not record usage of generation %s", self.generation_id)
        finally:
            try:
                budget_release(generation_id=self.generation_id)
            except Exception:
                logger.exception("Could not release the budgets of generation %s", self.generation_id)


__all__ = ["Admission", "UsageSource", "UsageStatus"]
