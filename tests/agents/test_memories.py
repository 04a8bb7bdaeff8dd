"""Memory as the user's choice: /api/v1/memories/, the me/ toggle, and what memory does to turns and the llm cache.

Real PostgreSQL+pgvector, the real embedding model, the real bundled model and Redis; queued memory
tasks run inline (``eager_celery``) so a finished turn leaves its memory before the next request.
"""

import pytest
from rest_framework.test import APIClient

from agents.models import Memory, MemoryKind
from agents.selectors import memory_search
from agents.services import MEMORY_NOTE_MAX_CHARS, memory_exchange_store
from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create
from inference import cache
from inference.embeddings import embed_text

QUESTION = "What is the capital of France?"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def exchange(owner, question="Where do I live?", answer="You live in Porto."):
    """Store a question and its answer as ``owner``'s exchange memory, without running the model."""
    conversation = conversation_create(owner=owner, title="Moving house")
    Message.objects.create(conversation=conversation, role=Role.USER, content=question)
    reply = Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, content=answer, status=MessageStatus.COMPLETE
    )
    return memory_exchange_store(
        owner_id=owner.pk, conversation_id=conversation.pk, message_id=reply.pk, question=question, answer=answer
    )


def ask(client, content=QUESTION) -> dict:
    """Ask ``content`` in a new conversation of the client's user, through the REST API; return the answer."""
    conversation = client.post("/api/v1/conversations/", {}, format="json").json()
    response = client.post(
        f"/api/v1/conversations/{conversation['id']}/messages/",
        {"content": content, "params": {"max_tokens": 8}},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["assistant_message"]


def set_memory(client, enabled: bool) -> dict:
    response = client.patch("/api/v1/me/", {"memory_enabled": enabled}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db
class TestApi:
    def test_a_note_is_stored_stripped_embedded_and_listed_first(self, user, local_model):
        older = exchange(user)
        api = client_for(user)
        response = api.post("/api/v1/memories/", {"content": "  I prefer metric units.\n"}, format="json")
        assert response.status_code == 201, response.content
        note = response.json()
        assert (note["kind"], note["content"], note["conversation_id"]) == ("note", "I prefer metric units.", None)
        stored = Memory.objects.get(pk=note["id"])
        assert stored.owner == user and len(stored.embedding) == 384

        listed = api.get("/api/v1/memories/").json()
        assert listed["count"] == 2
        assert [m["id"] for m in listed["results"]] == [note["id"], str(older.pk)]
        assert listed["results"][1]["kind"] == "exchange"
        assert listed["results"][1]["conversation_id"] == str(older.conversation_id)

    def test_the_note_is_what_a_close_question_finds(self, user, local_model):
        exchange(user)
        client_for(user).post("/api/v1/memories/", {"content": "I prefer metric units."}, format="json")
        hits = memory_search(user_id=user.pk, embedding=embed_text("Which units do I like?"), top_k=1)
        assert hits[0].kind == "note" and hits[0].content == "I prefer metric units."

    def test_the_list_is_paginated(self, user, local_model):
        api = client_for(user)
        for n in range(3):
            api.post("/api/v1/memories/", {"content": f"Note {n}"}, format="json")
        page = api.get("/api/v1/memories/?page_size=2&page=2").json()
        assert page["count"] == 3 and [m["content"] for m in page["results"]] == ["Note 0"]
        assert api.get("/api/v1/memories/?page=9").status_code == 404

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"content": ""}, "content"),
            ({"content": " \n\t "}, "content"),
            ({"content": "x" * (MEMORY_NOTE_MAX_CHARS + 1)}, "content"),
            ({"content": None}, "content"),
            ({}, "content"),
        ],
        ids=["empty", "only whitespace", "too long", "null", "missing"],
    )
    def test_bad_content_is_a_400_in_the_error_shape_and_stores_nothing(self, user, body, field):
        response = client_for(user).post("/api/v1/memories/", body, format="json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid" and field in error["fields"]
        assert not Memory.objects.exists()

    def test_the_longest_note_allowed_is_stored(self, user):
        response = client_for(user).post("/api/v1/memories/", {"content": "y" * MEMORY_NOTE_MAX_CHARS}, format="json")
        assert response.status_code == 201, response.content

    def test_someone_elses_memory_is_a_404_and_stays(self, user, other_user, local_model):
        theirs = exchange(other_user)
        api = client_for(user)
        for method in ("get", "delete"):
            response = getattr(api, method)(f"/api/v1/memories/{theirs.pk}/")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        assert api.get("/api/v1/memories/").json()["count"] == 0
        assert Memory.objects.filter(pk=theirs.pk).exists()

    def test_deleting_one_and_then_all(self, user, other_user, local_model):
        first, second = exchange(user), exchange(user, question="My dog?", answer="Rex.")
        theirs = exchange(other_user)
        api = client_for(user)
        assert api.get(f"/api/v1/memories/{first.pk}/").json()["content"] == first.content
        assert api.delete(f"/api/v1/memories/{first.pk}/").status_code == 204
        assert api.get(f"/api/v1/memories/{first.pk}/").status_code == 404
        assert [m["id"] for m in api.get("/api/v1/memories/").json()["results"]] == [str(second.pk)]

        api.post("/api/v1/memories/", {"content": "I am vegetarian."}, format="json")
        response = api.delete("/api/v1/memories/")
        assert response.status_code == 200 and response.json() == {"deleted": 2}
        assert list(Memory.objects.values_list("pk", flat=True)) == [theirs.pk]

    def test_anonymous_callers_get_a_401(self, db):
        response = APIClient().get("/api/v1/memories/")
        assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"

    def test_me_shows_and_patch_switches_memory(self, user):
        api = client_for(user)
        assert api.get("/api/v1/me/").json()["memory_enabled"] is False
        assert set_memory(api, True)["memory_enabled"] is True
        user.refresh_from_db()
        assert user.memory_enabled is True
        assert set_memory(api, False)["memory_enabled"] is False
        user.refresh_from_db()
        assert user.memory_enabled is False

    @pytest.mark.parametrize("value", [None, "maybe", [True]])
    def test_a_bad_memory_enabled_is_a_400(self, user, value):
        response = client_for(user).patch("/api/v1/me/", {"memory_enabled": value}, format="json")
        assert response.status_code == 400, response.content
        assert "memory_enabled" in response.json()["error"]["fields"]
        user.refresh_from_db()
        assert user.memory_enabled is False


@pytest.mark.django_db(transaction=True)
class TestTurns:
    def test_with_memory_off_a_repeated_question_in_a_new_chat_is_an_llm_cache_hit(
        self, user, local_model, eager_celery
    ):
        assert user.memory_enabled is False  # MEMORY_DEFAULT_ENABLED is off
        api = client_for(user)
        first = ask(api)
        again = ask(api)
        assert (first["cached"], again["cached"]) == (False, True)
        assert again["metadata"]["cache"]["layer"] == "llm" and again["metadata"]["cache"]["hit"] is True
        assert again["content"] == first["content"]
        # Nothing remembered from either turn (their memory tasks ran), nothing recalled.
        assert not Memory.objects.exists()
        assert again["metadata"]["memories"] == [] and "retrieve" not in again["metadata"]["agents_used"]
        stats = cache.layer("llm").stats()
        assert (stats["hits"], stats["misses"]) == (1, 1)

    def test_with_memory_on_recalled_memories_change_the_prompt_so_the_same_question_misses(
        self, user, local_model, eager_celery
    ):
        api = client_for(user)
        ask(api)  # memory off: cached for next time, nothing remembered
        set_memory(api, True)
        remembered = ask(api)  # nothing to recall yet: the same prompt, a hit; this answer is remembered
        assert remembered["cached"] is True
        memory = Memory.objects.get(owner=user, kind=MemoryKind.EXCHANGE)
        assert QUESTION in memory.content

        recalled = ask(api)  # the memory joins the prompt: another key, a miss
        assert recalled["cached"] is False
        assert [m["memory_id"] for m in recalled["metadata"]["memories"]] == [str(memory.pk)]
        assert "retrieve" in recalled["metadata"]["agents_used"]

        set_memory(api, False)  # off again: the first prompt again, answered from the cache
        plain = ask(api)
        assert plain["cached"] is True and plain["metadata"]["memories"] == []
        assert Memory.objects.filter(owner=user).count() == 2  # the two turns with memory on; none since

    def test_a_note_added_with_memory_off_waits_and_is_recalled_once_memory_is_on(
        self, user, other_user, local_model, eager_celery
    ):
        api = client_for(user)
        response = api.post("/api/v1/memories/", {"content": "My favourite colour is teal."}, format="json")
        assert response.status_code == 201
        note_id = response.json()["id"]
        assert ask(api, "What is my favourite colour?")["metadata"]["memories"] == []

        set_memory(api, True)
        recalled = ask(api, "What is my favourite colour?")["metadata"]["memories"]
        assert [m["memory_id"] for m in recalled] == [note_id]
        assert recalled[0]["conversation_id"] is None

        # Another user with memory on never gets it.
        client_for(other_user).patch("/api/v1/me/", {"memory_enabled": True}, format="json")
        assert ask(client_for(other_user), "What is my favourite colour?")["metadata"]["memories"] == []


@pytest.mark.django_db(transaction=True)
def test_the_bundled_model_as_installed_answers_a_repeated_question_from_the_cache(user, local_model, eager_celery):
    """A fresh install's bundled model (temperature 0.2, as migration 0002 creates it) caches its answers."""
    from importlib import import_module

    from django.apps import apps

    from inference.models import CachePolicy, ModelConfig

    # The bundled config as 0002 created it, then the migration that makes it cache.
    ModelConfig.objects.filter(pk=local_model.pk).update(temperature=0.2, cache_policy=CachePolicy.DETERMINISTIC)
    import_module("inference.migrations.0007_bundled_model_caches_answers").forwards(apps, None)
    local_model.refresh_from_db()
    assert (local_model.cache_policy, local_model.temperature) == (CachePolicy.ALWAYS, 0.2)

    api = client_for(user)
    first = ask(api)
    again = ask(api)
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["content"] == first["content"]
