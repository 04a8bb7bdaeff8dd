"""The one generation pipeline (inference.pipeline.Generation) on the real model and the real Redis."""

import pytest

from inference.cache import CacheLayer, answer_entry, layer
from inference.pipeline import Generation
from inference.providers import GenerationParams
from inference.services import llm_cache_key

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Name one colour of the rainbow."}]


async def test_a_request_that_wins_the_lease_just_after_the_leader_stored_its_answer_replays_it(
    local_model, user, monkeypatch
):
    params = GenerationParams(max_tokens=8, temperature=0.0)
    key = llm_cache_key(config=local_model, params=params, messages=QUESTION, owner_id=user.pk)
    leader_answer = answer_entry(
        text="Violet, from the leader.", finish_reason="stop", prompt_tokens=9, completion_tokens=5
    )
    acquire = CacheLayer.acquire

    def acquire_after_the_leader_finished(self, name):
        # The interleaving under test: this request read the cache (a miss), then the request holding
        # the lease stored its answer and released it, then this one acquires the free lease. Two real
        # requests hit that window too rarely for a test, so the leader's store (a real Redis write)
        # happens here, just before the real acquire.
        self.set(name, leader_answer)
        return acquire(self, name)

    monkeypatch.setattr(CacheLayer, "acquire", acquire_after_the_leader_finished)
    outcome = await Generation(config=local_model, messages=QUESTION, params=params, user_id=user.pk).run()

    assert outcome.cached, "the leader's answer is replayed, not generated a second time"
    assert outcome.content == "Violet, from the leader."
    assert outcome.cache["hit"] is True
    assert layer("llm").stats()["hits"] == 1 and layer("llm").stats()["misses"] == 0
    assert layer("llm").get(key, count=False)["content"] == "Violet, from the leader."


async def test_a_stopped_generation_keeps_its_text_and_ends_cancelled(local_model):
    generation = Generation(
        config=local_model,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        params=GenerationParams(max_tokens=300, temperature=0.0),
        use_cache=False,
    )
    text = ""
    async for batch in generation.batches():
        text += "".join(chunk.delta for chunk in batch)
        if len(text) > 20:
            generation.stop()
    outcome = generation.outcome
    assert outcome.finish_reason == "cancelled"
    assert outcome.content == text and len(text) > 20
    assert outcome.usage.completion_tokens < 300
    assert outcome.ttft_ms is not None and not outcome.cached


async def test_cached_answers_are_each_users_own_unless_the_model_shares_them(local_model, user, other_user):
    params = GenerationParams(max_tokens=8, temperature=0.0)

    async def ask(who) -> bool:
        return (await Generation(config=local_model, messages=QUESTION, params=params, user_id=who.pk).run()).cached

    assert not await ask(user)
    assert await ask(user), "the same user asking again is served from the cache"
    assert not await ask(other_user), "another user's identical question is not answered from it"

    local_model.cache_shared = True
    await local_model.asave(update_fields=["cache_shared"])
    assert not await ask(user)  # the shared pool starts empty
    assert await ask(other_user), "with a shared cache, one user's answer serves the others"
