"""Single flight on /v1/chat/completions: concurrent identical cacheable requests generate once."""

import threading
import time

import openai
import pytest

from accounts.models import User
from accounts.services import api_key_create
from conftest import make_user
from inference import cache
from inference.services import generation_params, llm_cache_key

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Write a short story about a dragon who learns to bake bread."}]
MAX_TOKENS = 96  # long enough (~2 s on SmolLM2) for the second request to arrive during the first


@pytest.fixture
def client(daphne_url, local_model) -> openai.OpenAI:
    _, key = api_key_create(user=make_user("alice"), name="single flight")
    return openai.OpenAI(base_url=daphne_url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_an_identical_request_during_a_generation_waits_for_it_instead_of_generating(client, local_model):
    llm = cache.layer("llm")
    params = generation_params(model=local_model, overrides={"max_tokens": MAX_TOKENS, "temperature": 0})
    user_id = User.objects.get(username="alice").pk
    key = llm_cache_key(config=local_model, params=params, messages=QUESTION, owner_id=user_id)
    kwargs = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0}
    results = {}

    def first():
        chunks = client.chat.completions.create(**kwargs, stream=True)
        results["first"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    thread = threading.Thread(target=first)
    thread.start()
    # The second request starts only once the first holds the lease, i.e. is generating.
    deadline = time.monotonic() + 60
    while not llm.locked(key) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert llm.locked(key), "the first request finished before the second could start"
    second = client.chat.completions.create(**kwargs)
    thread.join(120)

    assert second.choices[0].message.content == results["first"]
    assert second.choices[0].message.content
    stats = llm.stats()
    assert (stats["misses"], stats["hits"], stats["sets"]) == (1, 1, 1)  # generated once
    assert not llm.locked(key)  # the lease is released once the stream ended
