"""Switching a conversation between two real local models: SmolLM2 (chat) and Gemma 3 270M (base)."""

import pytest
from rest_framework.test import APIClient

from chat.services import conversation_create
from inference.models import ModelConfig
from inference.providers.llama_cpp import manager

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_conversation_switches_models_and_the_old_one_is_unloaded(user, local_model, gemma_gguf, settings):
    settings.LLAMA_MAX_LOADED_MODELS = 1
    ModelConfig.objects.create(
        slug="gemma-270m", display_name="Gemma 3 270M", model=str(gemma_gguf), context_window=1024
    )
    api = APIClient()
    api.force_login(user)
    conversation = conversation_create(owner=user)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"

    first = api.post(url, {"content": "Hi!", "params": {"max_tokens": 8}}, format="json").json()["assistant_message"]
    second = api.post(
        url, {"content": "What is 2 + 2?", "model": "gemma-270m", "params": {"max_tokens": 8}}, format="json"
    ).json()["assistant_message"]
    # Without "model", the conversation keeps the model it was last switched to.
    third = api.post(url, {"content": "And 3 + 3?", "params": {"max_tokens": 8}}, format="json").json()[
        "assistant_message"
    ]

    assert [m["model_slug"] for m in (first, second, third)] == ["smollm2-135m", "gemma-270m", "gemma-270m"]
    assert all(m["status"] == "complete" and m["content"] for m in (first, second, third))
    conversation.refresh_from_db()
    assert conversation.model.slug == "gemma-270m"
    assert [m.key.path for m in manager.loaded()] == [str(gemma_gguf)]
