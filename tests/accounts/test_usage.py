"""Usage recording (chat turns and /v1 calls), the me/ usage and quota, and the 413 and 503 error answers."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.conf import settings as django_settings

from accounts import quotas
from accounts.models import UsageDaily, UsageRecord
from chat.services import conversation_create, message_send
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

from .conftest import bearer_client, session_client

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hello."}]


def scripted_model(base_url: str, **fields) -> ModelConfig:
    """A remote model on the scripted server, whose usage is exact: 7 prompt tokens, one completion token a word."""
    return ModelConfig.objects.create(
        slug="scripted",
        display_name="Scripted",
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=base_url,
        max_retries=0,
        cache_policy="never",
        price_input_per_mtok=Decimal(1000),
        price_output_per_mtok=Decimal(2000),
        **fields,
    )


def test_a_chat_turn_leaves_a_usage_record_and_daily_totals(user, local_model):
    client = session_client(user)
    with ScriptedServer(["ok"]) as server:
        scripted_model(server.base_url)
        conversation = conversation_create(owner=user)
        response = client.post(
            f"/api/v1/conversations/{conversation.pk}/messages/",
            {"content": "Say hello.", "model": "scripted"},
            format="json",
        )
        assert response.status_code == 201, response.content
        client.post(
            f"/api/v1/conversations/{conversation.pk}/messages/",
            {"content": "Again.", "model": "scripted"},
            format="json",
        )
    answer = response.json()["assistant_message"]
    assert quotas.generations_running(user_id=user.pk) == 0  # each turn gave its slot back
    records = list(UsageRecord.objects.filter(user=user).order_by("created_at"))
    assert len(records) == 2
    record = records[0]
    assert (record.source, record.status, record.model_slug, record.provider) == (
        "chat",
        "complete",
        "scripted",
        "openai_compatible",
    )
    assert (record.prompt_tokens, record.completion_tokens) == (7, 3)
    assert record.cost == Decimal("0.013000")  # (7 x 1000 + 3 x 2000) / 1,000,000 USD
    assert record.ttft_ms == answer["ttft_ms"] and record.latency_ms == answer["latency_ms"]
    assert record.cached is False
    daily = UsageDaily.objects.get(user=user, model_slug="scripted")
    assert (daily.requests, daily.prompt_tokens, daily.completion_tokens) == (2, 14, 6)
    assert daily.cost == Decimal("0.026000")

    me = client.get("/api/v1/me/").json()
    assert me["usage_today"] == {
        "requests": 2,
        "prompt_tokens": 14,
        "completion_tokens": 6,
        "total_tokens": 20,
        "cost": "0.026000",
    }


def test_a_failed_turn_is_recorded_as_an_error(user, local_model):
    with ScriptedServer([500]) as server:
        scripted_model(server.base_url)
        response = session_client(user).post(
            f"/api/v1/conversations/{conversation_create(owner=user).pk}/messages/",
            {"content": "Say hello.", "model": "scripted"},
            format="json",
        )
    assert response.json()["assistant_message"]["status"] == "error"
    record = UsageRecord.objects.get(user=user)
    assert record.status == "error"
    assert UsageDaily.objects.get(user=user).errors == 1


def test_gateway_calls_are_recorded_streamed_or_not(user, api_key, local_model, daphne_url):
    headers = {"Authorization": f"Bearer {api_key}"}
    url = daphne_url + "/v1/chat/completions"
    with ScriptedServer(["ok"]) as server:
        scripted_model(server.base_url)
        whole = httpx.post(url, json={"model": "scripted", "messages": QUESTION}, headers=headers, timeout=30)
        assert whole.status_code == 200, whole.content
        streamed = {"model": "scripted", "messages": QUESTION, "stream": True}
        body = httpx.post(url, json=streamed, headers=headers, timeout=30).text
    assert "[DONE]" in body
    assert quotas.generations_running(user_id=user.pk) == 0
    records = list(UsageRecord.objects.filter(user=user).order_by("created_at"))
    assert [(r.source, r.status, r.model_slug, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("gateway", "complete", "scripted", 7, 3),
        ("gateway", "complete", "scripted", 7, 3),
    ]
    assert records[1].ttft_ms is not None
    daily = UsageDaily.objects.get(user=user, model_slug="scripted")
    assert (daily.requests, daily.prompt_tokens, daily.completion_tokens) == (2, 14, 6)


def test_an_embeddings_call_is_recorded(user, api_key):
    response = bearer_client(api_key).post("/v1/embeddings", {"input": ["abcdefgh", "abcd"]}, format="json")
    assert response.status_code == 200
    record = UsageRecord.objects.get(user=user)
    assert (record.source, record.status, record.model_slug) == ("gateway", "complete", "all-MiniLM-L6-v2")
    assert record.prompt_tokens == response.json()["usage"]["prompt_tokens"] == 3


def test_me_shows_the_quota_and_what_is_left(user, settings):
    settings.QUOTA_DAILY_TOKENS = 1000
    client = session_client(user)
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    fresh = client.get("/api/v1/me/").json()
    assert fresh["usage_today"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost": "0.000000",
    }
    assert fresh["quota"] == {
        "daily_tokens": 1000,
        "used": 0,
        "remaining": 1000,
        "resets_at": midnight.isoformat().replace("+00:00", "Z"),
    }
    from accounts.services import usage_record

    usage_record(user=user, model_slug="m", source="chat", status="complete", prompt_tokens=250, completion_tokens=50)
    assert client.get("/api/v1/me/").json()["quota"]["remaining"] == 700
    user.daily_token_quota = 0
    user.save(update_fields=["daily_token_quota"])
    unlimited = client.get("/api/v1/me/").json()["quota"]
    assert unlimited["daily_tokens"] is None and unlimited["remaining"] is None and unlimited["used"] == 300


def test_the_me_schema_documents_usage_and_quota(db):
    from django.test import Client

    schema = Client().get("/api/schema/?format=json").json()
    me = schema["components"]["schemas"]["MeOutput"]["properties"]
    assert {"usage_today", "quota"} <= set(me)


# 413 and 503


def test_an_oversized_body_is_a_413_in_each_error_shape(user, api_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"title": "x" * 2000})
    response = session_client(user).post("/api/v1/conversations/", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "1,000 bytes" in response.json()["error"]["detail"]

    gateway = bearer_client(api_key).post(
        "/v1/chat/completions",
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}),
        content_type="application/json",
    )
    assert gateway.status_code == 413
    assert gateway.json()["error"]["code"] == "payload_too_large"
    assert set(gateway.json()["error"]) == {"message", "type", "param", "code"}


def test_stop_is_a_503_when_redis_is_down(user, local_model, settings):
    conversation = conversation_create(owner=user)
    message_send(conversation=conversation, content="Hello?")  # a generation in progress
    layers = json.loads(json.dumps(django_settings.CHANNEL_LAYERS))
    layers["default"]["CONFIG"]["hosts"] = [{"address": "redis://127.0.0.1:1/0", "socket_timeout": 1}]
    settings.CHANNEL_LAYERS = layers  # a port nothing listens on
    response = session_client(user).post(f"/api/v1/conversations/{conversation.pk}/stop/")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
