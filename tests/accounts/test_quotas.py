"""Concurrent generations and daily token quotas: REST, WebSocket and /v1, against real Redis and real processes."""

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django_redis import get_redis_connection

from accounts import quotas
from accounts.limits_store import limits_key
from accounts.services import usage_record
from chat.models import Message
from chat.services import conversation_create, message_finalize, message_send
from config.asgi import application
from conftest import make_user, ws_headers
from core.errors import ParleyError

from .conftest import bearer_client, session_client
from .test_throttling import finish_processes, start_processes

pytestmark = pytest.mark.django_db


def send(client, conversation, content="Hello?"):
    return client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": content, "params": {"max_tokens": 8}},
        format="json",
    )


def hold_generations(user, count: int) -> list[str]:
    """Take ``count`` generation slots of ``user`` as running answers elsewhere would."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for generation_id in ids:
        quotas.generation_admit(user=user, generation_id=generation_id, reserve_tokens=0)
    return ids


def use_tokens(user, tokens: int) -> None:
    usage_record(user=user, model_slug="smollm2-135m", source="chat", status="complete", prompt_tokens=tokens)


def next_midnight() -> datetime:
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


# Concurrent generations


def test_a_third_generation_is_refused_before_anything_is_stored(user, conversation, settings):
    settings.GENERATION_CONCURRENCY = 2
    hold_generations(user, 2)
    response = send(session_client(user), conversation)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_generations"
    assert int(response["Retry-After"]) > 0
    assert not conversation.messages.exists()  # nothing half-stored: the client can simply retry


def test_a_finished_generation_frees_its_slot(user, local_model, settings):
    settings.GENERATION_CONCURRENCY = 1
    first = conversation_create(owner=user)
    turn = message_send(conversation=first, content="One")
    with pytest.raises(ParleyError) as refused:
        message_send(conversation=conversation_create(owner=user), content="Two")
    assert refused.value.code == "too_many_generations"
    message_finalize(message_id=turn.assistant_message.pk, content="Done", status="complete")
    message_send(conversation=conversation_create(owner=user), content="Three")  # admitted now


def test_slots_are_per_user(user, other_user, local_model, settings):
    settings.GENERATION_CONCURRENCY = 1
    hold_generations(user, 1)
    message_send(conversation=conversation_create(owner=other_user), content="Mine")


def test_a_refused_send_in_a_busy_conversation_gives_its_slot_back(user, conversation, settings):
    settings.GENERATION_CONCURRENCY = 2
    message_send(conversation=conversation, content="First")
    with pytest.raises(ParleyError) as refused:
        message_send(conversation=conversation, content="Second")
    assert refused.value.code == "generation_in_progress"
    assert quotas.generations_running(user_id=user.pk) == 1


def test_a_crashed_process_slot_frees_when_its_lease_lapses(user, settings):
    settings.GENERATION_CONCURRENCY = 1
    settings.GENERATION_LEASE_SECONDS = 1
    hold_generations(user, 1)  # never renewed nor released, as after a crash
    with pytest.raises(ParleyError):
        hold_generations(user, 1)
    time.sleep(1.1)
    hold_generations(user, 1)


def test_a_running_generation_keeps_its_slot_past_the_lease(user, settings):
    settings.GENERATION_CONCURRENCY = 1
    settings.GENERATION_LEASE_SECONDS = 1
    [generation_id] = hold_generations(user, 1)
    with quotas.GenerationKeepalive(user_id=user.pk, generation_id=generation_id):
        time.sleep(1.5)
        assert quotas.generations_running(user_id=user.pk) == 1


@pytest.mark.django_db(transaction=True)  # /v1 authenticates in a pool thread: committed rows only
def test_the_gateway_refuses_a_generation_over_the_limit_in_openai_shape(user, api_key, local_model, settings):
    settings.GENERATION_CONCURRENCY = 1
    hold_generations(user, 1)
    response = bearer_client(api_key).post(
        "/v1/chat/completions",
        {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        format="json",
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_generations"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert int(response["Retry-After"]) > 0


# Daily token quotas


def test_over_quota_a_send_is_a_429_with_the_reset_time(user, conversation, settings):
    settings.QUOTA_DAILY_TOKENS = 100
    use_tokens(user, 100)
    response = send(session_client(user), conversation)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["resets_at"] == next_midnight().isoformat().replace("+00:00", "Z")
    assert "UTC" in error["detail"]
    seconds = (next_midnight() - datetime.now(UTC)).total_seconds()
    assert abs(int(response["Retry-After"]) - math.ceil(seconds)) <= 2
    assert not conversation.messages.exists()


@pytest.mark.django_db(transaction=True)  # the counter follows committed usage (transaction.on_commit)
def test_over_quota_a_regenerate_is_refused_and_the_answer_kept(user, conversation, settings):
    settings.QUOTA_DAILY_TOKENS = 100
    turn = message_send(conversation=conversation, content="Hello?")
    message_finalize(message_id=turn.assistant_message.pk, content="Hi!", status="complete")
    use_tokens(user, 100)
    response = session_client(user).post(
        f"/api/v1/conversations/{conversation.pk}/messages/{turn.assistant_message.pk}/regenerate/", {}, format="json"
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    answer = Message.objects.get(pk=turn.assistant_message.pk)
    assert answer.content == "Hi!"
    conversation.refresh_from_db()
    assert conversation.active_leaf_id == answer.pk  # still the answer shown: no branch was made
    assert conversation.messages.count() == 2


def test_under_quota_a_request_is_admitted_and_reserves_its_max_tokens(user, settings):
    settings.QUOTA_DAILY_TOKENS = 1000
    settings.GENERATION_CONCURRENCY = 0  # no slot limit: only the quota decides
    use_tokens(user, 400)
    quotas.generation_admit(user=user, generation_id="a", reserve_tokens=500)  # 400 + 0 < 1000
    quotas.generation_admit(user=user, generation_id="b", reserve_tokens=500)  # 400 + 500 < 1000
    with pytest.raises(ParleyError) as refused:
        quotas.generation_admit(user=user, generation_id="c", reserve_tokens=500)  # 400 + 1000 >= 1000
    assert refused.value.code == "quota_exceeded"
    quotas.generation_release(user_id=user.pk, generation_id="a")
    quotas.generation_admit(user=user, generation_id="c", reserve_tokens=500)


def test_a_users_own_quota_beats_the_default(user, other_user, local_model, settings):
    settings.QUOTA_DAILY_TOKENS = 1_000_000
    user.daily_token_quota = 50
    user.save(update_fields=["daily_token_quota"])
    use_tokens(user, 50)
    use_tokens(other_user, 50)
    with pytest.raises(ParleyError) as refused:
        message_send(conversation=conversation_create(owner=user), content="Hi")
    assert refused.value.code == "quota_exceeded"
    message_send(conversation=conversation_create(owner=other_user), content="Hi")


def test_a_quota_of_zero_is_unlimited(user, local_model, settings):
    settings.QUOTA_DAILY_TOKENS = 10
    user.daily_token_quota = 0
    user.save(update_fields=["daily_token_quota"])
    use_tokens(user, 10_000)
    message_send(conversation=conversation_create(owner=user), content="Hi")


@pytest.mark.django_db(transaction=True)  # the counter follows committed usage (transaction.on_commit)
def test_the_counter_is_rebuilt_from_stored_usage_after_a_redis_restart(user, settings):
    settings.QUOTA_DAILY_TOKENS = 100
    use_tokens(user, 60)
    quotas.quota_check(user=user)  # builds the counter: 60
    use_tokens(user, 40)  # the counter follows: 100
    counter = limits_key("quota", user.pk, datetime.now(UTC).date())
    assert int(get_redis_connection("default").get(counter)) == 100
    get_redis_connection("default").delete(counter)  # Redis lost it
    with pytest.raises(ParleyError):
        quotas.quota_check(user=user)
    assert int(get_redis_connection("default").get(counter)) == 100


@pytest.mark.django_db(transaction=True)  # /v1 authenticates in a pool thread: committed rows only
def test_the_gateway_refuses_over_quota_in_openai_shape(user, api_key, local_model, settings):
    settings.QUOTA_DAILY_TOKENS = 10
    use_tokens(user, 10)
    client = bearer_client(api_key)
    response = client.post(
        "/v1/chat/completions",
        {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]},
        format="json",
    )
    assert response.status_code == 429
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "quota_exceeded"
    assert "resets at" in error["message"]
    assert int(response["Retry-After"]) > 0
    embeddings = client.post("/v1/embeddings", {"input": "Hi"}, format="json")
    assert embeddings.status_code == 429
    assert embeddings.json()["error"]["code"] == "quota_exceeded"


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_says_quota_exceeded_and_too_many_generations(local_model, settings):
    settings.QUOTA_DAILY_TOKENS = 10
    user = await database_sync_to_async(make_user)("alice")
    conversation = await database_sync_to_async(conversation_create)(owner=user)
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(user))
    assert (await communicator.connect(timeout=10))[0]

    await database_sync_to_async(use_tokens)(user, 10)
    await communicator.send_json_to({"type": "message.send", "content": "Hello"})
    frame = await communicator.receive_json_from(timeout=10)
    assert frame["type"] == "error"
    assert frame["code"] == "quota_exceeded"
    assert frame["resets_at"] == next_midnight().isoformat().replace("+00:00", "Z")
    assert frame["retry_after"] > 0

    settings.QUOTA_DAILY_TOKENS = 0
    settings.GENERATION_CONCURRENCY = 1
    await database_sync_to_async(hold_generations)(user, 1)
    await communicator.send_json_to({"type": "message.send", "content": "Hello"})
    frame = await communicator.receive_json_from(timeout=10)
    assert frame["code"] == "too_many_generations"
    assert frame["retry_after"] > 0
    await communicator.disconnect()
    assert not await database_sync_to_async(Message.objects.filter(conversation=conversation).exists)()


# Two processes

ADMIT = """
import os, sys, time
import django
django.setup()
from accounts.models import User
from accounts.quotas import generation_admit
from core.errors import ParleyError
go, user_id, quota, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
user = User(pk=user_id, daily_token_quota=quota)  # not read from the database: only Redis is shared here
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
admitted, codes = 0, set()
for i in range(10):
    try:
        generation_admit(user=user, generation_id=f"{tag}-{i}", reserve_tokens=100)
        admitted += 1
    except ParleyError as exc:
        codes.add(exc.code)
print(admitted, ",".join(sorted(codes)), flush=True)
"""


def run_admissions(tmp_path, user, quota: int) -> tuple[int, set[str]]:
    go = tmp_path / "go"
    processes = [
        *start_processes(ADMIT, 1, go, str(user.pk), str(quota), "p1"),
        *start_processes(ADMIT, 1, go, str(user.pk), str(quota), "p2"),
    ]
    total, codes = 0, set()
    for out in finish_processes(processes, go):
        admitted, _, process_codes = out.partition(" ")
        total += int(admitted)
        codes |= set(filter(None, process_codes.split(",")))
    return total, codes


def test_the_concurrency_limit_holds_across_two_processes(tmp_path, user, monkeypatch):
    monkeypatch.setenv("GENERATION_CONCURRENCY", "3")  # read by the processes' settings
    total, codes = run_admissions(tmp_path, user, quota=0)  # quota 0: unlimited, only slots count
    # 2 processes x 10 attempts, none released: exactly 3 slots taken, whatever the interleaving.
    assert total == 3
    assert codes == {"too_many_generations"}


def test_the_quota_holds_across_two_processes(tmp_path, user, monkeypatch):
    monkeypatch.setenv("GENERATION_CONCURRENCY", "0")  # only the quota limits
    use_tokens(user, 300)
    user.daily_token_quota = 1000
    quotas.quota_check(user=user)  # seed today's counter (300) from the test database
    total, codes = run_admissions(tmp_path, user, quota=1000)
    # Admitted while used + reserved < 1000: 300 + 7 x 100 = 1000, so exactly 7 of 20 attempts.
    assert total == 7
    assert codes == {"quota_exceeded"}
