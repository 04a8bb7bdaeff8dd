"""API keys with scopes: allowed models, an expiry date, a rate limit of their own (issue 16, item 4)."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create
from chat.models import Message
from chat.services import conversation_create
from conftest import make_user
from inference.models import ModelConfig
from inference.registry import model_config_access_set

# Committed: /v1/chat/completions admits a request in a thread of its own, with its own connection.
pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def second_model(local_model) -> ModelConfig:
    return ModelConfig.objects.create(
        slug="second", display_name="Second", model=local_model.model, provider=local_model.provider
    )


def v1(key: str, path: str = "/v1/models"):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def v1_complete(key: str, model: str):
    return Client().post(
        "/v1/chat/completions",
        {"model": model, "messages": QUESTION, "max_tokens": 2},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def create(user, **body):
    client = APIClient()
    client.force_authenticate(user)
    return client.post("/api/v1/keys/", {"name": "scoped", **body}, format="json")


def test_a_key_made_for_some_models_lists_and_uses_only_those(alice, local_model, second_model):
    response = create(alice, allowed_models=["second"])
    assert response.status_code == 201 and response.json()["allowed_models"] == ["second"]
    key = response.json()["key"]

    assert [m["id"] for m in v1(key).json()["data"]] == ["second"]
    refused = v1_complete(key, "smollm2-135m")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    rest = APIClient().get("/api/v1/models/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert [row["slug"] for row in rest.json()] == ["second"]
    # An unscoped key of the same user has both.
    _, full = api_key_create(user=alice, name="full")
    assert sorted(m["id"] for m in v1(full).json()["data"]) == ["second", "smollm2-135m"]


def test_a_key_cannot_reach_beyond_its_owner_and_loses_what_its_owner_loses(alice, local_model, second_model):
    eng = Group.objects.create(name="eng")
    model_config_access_set(configs=[second_model], groups=[eng], mode="set")
    # Naming a model the owner may not use grants nothing.
    key = create(alice, allowed_models=["second"]).json()["key"]
    assert v1(key).json()["data"] == []
    assert v1_complete(key, "second").status_code == 404

    alice.groups.add(eng)
    assert [m["id"] for m in v1(key).json()["data"]] == ["second"]
    alice.groups.remove(eng)
    assert v1(key).json()["data"] == []  # never widened to "all models" by losing its only one
    assert v1_complete(key, "smollm2-135m").status_code == 404


def test_an_expired_key_is_refused_with_401_in_each_shape(alice, local_model):
    key = create(alice, expires_at=(timezone.now() + timedelta(hours=1)).isoformat()).json()["key"]
    assert v1(key).status_code == 200
    APIKey.objects.filter(user=alice).update(expires_at=timezone.now() - timedelta(seconds=1))

    openai_shape = v1(key)
    assert openai_shape.status_code == 401
    assert openai_shape.json()["error"]["code"] == "invalid_api_key"
    assert "expired" in openai_shape.json()["error"]["message"]
    assert v1_complete(key, "smollm2-135m").status_code == 401
    parley_shape = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert parley_shape.status_code == 401
    assert parley_shape.json()["error"]["code"] == "invalid_api_key"


def test_a_key_with_its_own_rate_limit_is_refused_over_it_while_the_user_is_not(alice, local_model, settings):
    settings.RATE_LIMIT_USER = "1000/min"
    limited = create(alice, rate_limit="2/min").json()["key"]
    _, other = api_key_create(user=alice, name="other")
    assert [v1(limited).status_code for _ in range(2)] == [200, 200]
    over = v1(limited)
    assert over.status_code == 429 and int(over["Retry-After"]) > 0
    assert over["X-RateLimit-Limit"] == "2"
    assert v1_complete(limited, "smollm2-135m").status_code == 429  # the chat completions path counts it too
    assert v1(other).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"allowed_models": ["not a slug!"]}, "allowed_models"),
        ({"allowed_models": "second"}, "allowed_models"),
    ],
)
def test_bad_scopes_are_400_naming_the_field(alice, body, field):
    response = create(alice, **body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not APIKey.objects.filter(user=alice).exists()


def test_a_key_cannot_make_or_widen_keys(alice, local_model):
    key = create(alice, allowed_models=["smollm2-135m"]).json()["key"]
    response = APIClient().post("/api/v1/keys/", {"name": "wider"}, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 403
    assert APIKey.objects.filter(user=alice).count() == 1


def test_the_user_api_cannot_give_oneself_a_group(alice):
    eng = Group.objects.create(name="eng")
    client = APIClient()
    client.force_authenticate(alice)
    for method in ("patch", "put"):
        getattr(client, method)("/api/v1/me/", {"groups": [eng.pk], "is_staff": True}, format="json")
    alice.refresh_from_db()
    assert not alice.groups.exists() and not alice.is_staff


def test_a_scoped_key_cannot_chat_over_rest_with_another_model(alice, local_model, second_model):
    key = create(alice, allowed_models=["second"]).json()["key"]
    conversation = conversation_create(owner=alice)
    response = APIClient().post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "hi", "model": "smollm2-135m"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_unavailable"
    assert not Message.objects.filter(conversation=conversation).exists()
