"""Money budgets per user, group and API key, against real Redis, PostgreSQL, processes and HTTP servers.

Priced models are served by ``tests.servers.ScriptedServer``, which reports 7 prompt + 3 completion
tokens an answer; at $100,000 per million tokens (10 cents a token) one answer costs exactly $1.00.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django_redis import get_redis_connection

from accounts import budgets
from accounts.budgets import budget_admit, budget_release, budget_renew, budget_status, period_bounds
from accounts.metering import Admission
from accounts.models import AuditEvent, Budget, BudgetAlert, UsageRecord, UsageSource, UsageStatus
from accounts.services import api_key_create, budget_set, usage_record
from chat.models import Message, MessageStatus
from chat.services import conversation_create
from config.asgi import application
from conftest import clear_limits, make_user, ws_headers
from core.errors import ParleyError
from core.models import WebhookDelivery
from core.webhooks import webhook_deliver
from inference.models import ModelConfig, Provider
from tests.core.test_webhooks import Receiver, endpoint_for
from tests.servers import ScriptedServer, wait_for

from .conftest import bearer_client, session_client
from .test_throttling import finish_processes, start_processes

pytestmark = pytest.mark.django_db(transaction=True)  # /v1 and turns use pool threads: committed rows only

TEN_CENTS_A_TOKEN = Decimal(100_000)  # USD per million tokens
QUESTION = "Capital of France?"


def priced_model(base_url: str, slug: str = "priced") -> ModelConfig:
    return ModelConfig.objects.create(
        slug=slug,
        display_name=slug.title(),
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=base_url,
        cache_policy="never",
        max_retries=0,
        price_input_per_mtok=TEN_CENTS_A_TOKEN,
        price_output_per_mtok=TEN_CENTS_A_TOKEN,
    )


def spend(user, usd: str, api_key_id=None) -> None:
    """Record a finished request of ``user`` costing ``usd``, as a chat turn or a /v1 call would."""
    usage_record(
        user=user,
        model_slug="priced",
        source=UsageSource.GATEWAY if api_key_id else UsageSource.CHAT,
        status=UsageStatus.COMPLETE,
        prompt_tokens=7,
        completion_tokens=3,
        cost=Decimal(usd),
        api_key_id=api_key_id,
    )


def send(client, conversation, model="priced"):
    return client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": QUESTION, "model": model, "params": {"max_tokens": 8}},
        format="json",
    )


def chat_completion(client, model="priced", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, **extra}
    return client.post("/v1/chat/completions", body, format="json")


def month_end() -> str:
    return period_bounds("month")[1].isoformat().replace("+00:00", "Z")


def assert_refused_with_reset(response) -> None:
    assert response.status_code == 429, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["resets_at"] == month_end()
    seconds_left = (period_bounds("month")[1] - datetime.now(UTC)).total_seconds()
    # The server counted the seconds to the period's end when it answered, a moment before this
    # line (seconds, on a loaded machine): at least what is left now, and not much more.
    assert seconds_left - 1 <= int(response["Retry-After"]) <= seconds_left + 60


def assert_refused_openai(response) -> None:
    assert response.status_code == 429, response.content[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert month_end() in error["message"]
    assert int(response["Retry-After"]) > 0


# Refusal on every path


def test_over_budget_a_rest_send_and_a_regenerate_are_429_with_resets_at_and_nothing_is_stored(user):
    with ScriptedServer(["ok"]) as server:
        priced_model(server.base_url)
        budget_set(user=user, amount=Decimal("1.50"))
        conversation = conversation_create(owner=user)
        client = session_client(user)
        first = send(client, conversation)
        assert first.status_code == 201 and first.json()["assistant_message"]["cost"] == pytest.approx(1.0)
        second = send(client, conversation)  # $1.00 spent < $1.50: still admitted
        assert second.status_code == 201
        answer_id = second.json()["assistant_message"]["id"]

        assert_refused_with_reset(send(client, conversation))
        regenerate = client.post(
            f"/api/v1/conversations/{conversation.pk}/messages/{answer_id}/regenerate/", {}, format="json"
        )
        assert_refused_with_reset(regenerate)
        sse = client.post(
            f"/api/v1/conversations/{conversation.pk}/messages/",
            {"content": QUESTION, "model": "priced"},
            format="json",
            HTTP_ACCEPT="text/event-stream",
        )
        assert_refused_with_reset(sse)
    assert Message.objects.filter(conversation=conversation).count() == 4  # two questions, two answers
    assert len(server.requests) == 2


def test_over_budget_v1_chat_streamed_or_not_and_embeddings_are_429_insufficient_quota(user, api_key, settings):
    settings.EMBEDDING_PRICE_PER_MTOK = Decimal(1)
    budget_set(user=user, amount=Decimal("2.00"))
    spend(user, "2.00")
    client = bearer_client(api_key)
    with ScriptedServer(["ok"]) as server:
        priced_model(server.base_url)
        assert_refused_openai(chat_completion(client))
        assert_refused_openai(chat_completion(client, stream=True))
        assert_refused_openai(client.post("/v1/embeddings", {"input": "Hi"}, format="json"))
    assert server.requests == []


def test_the_bundled_model_priced_zero_is_never_blocked_nor_reserved(user, api_key, local_model):
    budget_set(user=user, amount=Decimal("0"))  # $0: every priced request is refused
    conversation = conversation_create(owner=user)
    response = session_client(user).post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Hi", "params": {"max_tokens": 4}},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["assistant_message"]["status"] == "complete"
    completion = chat_completion(bearer_client(api_key), model="smollm2-135m", max_tokens=4)
    assert completion.status_code == 200
    with ScriptedServer(["ok"]) as server:
        priced_model(server.base_url)
        assert_refused_openai(chat_completion(bearer_client(api_key)))
    # Nothing was reserved for the free requests: no budget keys but the spent counter the priced check seeded.
    connection = get_redis_connection("default")
    assert not list(connection.scan_iter("*:limits:budget:gen:*"))


def test_a_cached_answer_costs_nothing_and_moves_no_budget(user, api_key, settings):
    settings.CACHE_ENABLED = True
    budget = budget_set(user=user, amount=Decimal("1.50"))
    with ScriptedServer(["ok"]) as server:
        ModelConfig.objects.filter(pk=priced_model(server.base_url).pk).update(cache_policy="always")
        client = bearer_client(api_key)
        assert chat_completion(client).status_code == 200  # $1.00
        for _ in range(3):  # the same question again: answered from the llm cache, for free
            assert chat_completion(client).status_code == 200
    assert len(server.requests) == 1
    assert sorted(UsageRecord.objects.values_list("cached", "cost")) == [(False, Decimal(1))] + [(True, 0)] * 3
    assert budget_status(budget=budget).spent == Decimal(1)


# Across processes

ADMIT = """
import os, sys, time
from decimal import Decimal
import django
django.setup()
from accounts.budgets import budget_admit
from accounts.models import Budget, User
from core.errors import ParleyError
go, budget_id, user_id, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Not read from the database (the test's is not this process's): only Redis is shared here.
budget = Budget(pk=budget_id, user=User(pk=user_id, username="alice"), amount=Decimal("10.00"), period="month")
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
admitted, codes = 0, set()
for i in range(10):
    try:
        budget_admit(user_id=user_id, generation_id=f"{tag}-{i}", reserve_usd=Decimal("1"), budgets=[budget])
        admitted += 1
    except ParleyError as exc:
        codes.add(exc.code)
print(admitted, ",".join(sorted(codes)), flush=True)
"""


def test_a_budget_holds_across_two_processes(tmp_path, user):
    budget = budget_set(user=user, amount=Decimal("10.00"))
    spend(user, "3.00")
    # Seed the month's counter ($3.00) from the test database, then give the reservation back.
    budget_admit(user_id=user.pk, generation_id="seed", reserve_usd=Decimal("0.01"))
    budget_release(generation_id="seed")
    go = tmp_path / "go"
    processes = [
        *start_processes(ADMIT, 1, go, str(budget.pk), str(user.pk), "p1"),
        *start_processes(ADMIT, 1, go, str(budget.pk), str(user.pk), "p2"),
    ]
    total, codes = 0, set()
    for out in finish_processes(processes, go):
        admitted, _, process_codes = out.partition(" ")
        total += int(admitted)
        codes |= set(filter(None, process_codes.split(",")))
    # Admitted while spent + reserved < $10: 3 + 7 x 1 = 10, so exactly 7 of 20 attempts.
    assert total == 7
    assert codes == {"budget_exceeded"}


def test_a_finished_request_gives_back_its_reservation_and_counts_its_actual_cost(user, settings):
    settings.GENERATION_CONCURRENCY = 0  # only the budget limits
    budget_set(user=user, amount=Decimal("10.00"))
    admissions = [
        Admission.admit(
            user=user, generation_id=str(uuid.uuid4()), reserve_tokens=8, source="chat", reserve_cost=Decimal(4)
        )
        for _ in range(3)  # 0 + 4 + 4 = 8 < 10: the third is admitted, with 12 reserved
    ]
    with pytest.raises(ParleyError) as refused:
        Admission.admit(user=user, generation_id="4th", reserve_tokens=8, source="chat", reserve_cost=Decimal(4))
    assert refused.value.code == "budget_exceeded"
    for admission in admissions:  # each cost $1, not the $4 reserved
        admission.finish(model_slug="priced", provider="openai_compatible", status="complete", cost=Decimal(1))
    assert budget_status(budget=Budget.objects.get()).spent == Decimal(3)
    Admission.admit(user=user, generation_id="5th", reserve_tokens=8, source="chat", reserve_cost=Decimal(4))


def test_a_crashed_requests_reservation_lapses_and_a_running_one_renews_its_own(user, monkeypatch):
    monkeypatch.setattr(budgets, "HOLD_SECONDS", 1)
    budget_set(user=user, amount=Decimal("1.00"))

    def admitted(generation_id: str) -> bool:
        try:
            budget_admit(user_id=user.pk, generation_id=generation_id, reserve_usd=Decimal(1))
        except ParleyError:
            return False
        return True

    assert admitted("crashed")  # never released: its process died
    assert not admitted("next")
    time.sleep(1.2)
    assert admitted("running")  # the crashed one's reservation lapsed
    time.sleep(0.6)
    budget_renew(generation_id="running")
    time.sleep(0.6)
    assert not admitted("after")  # still held: renewed while running


def test_the_counter_is_rebuilt_from_usage_records_after_a_redis_restart(user):
    budget_set(user=user, amount=Decimal("5.00"))
    spend(user, "3.00")
    Admission.admit(user=user, generation_id="a", reserve_tokens=8, source="chat", reserve_cost=Decimal(1)).release()
    clear_limits()  # Redis lost everything
    spend(user, "2.00")
    with pytest.raises(ParleyError) as refused:
        Admission.admit(user=user, generation_id="b", reserve_tokens=8, source="chat", reserve_cost=Decimal(1))
    assert refused.value.code == "budget_exceeded"


# Charged for what was produced


@pytest.fixture
def alice_key(user) -> str:
    return api_key_create(user=user, name="sse")[1]


def test_a_streamed_answer_stopped_halfway_is_charged_its_tokens(daphne_url, user, alice_key):
    import httpx

    from tests.chat.test_sse import stream

    words = tuple(f" w{i}" for i in range(40))
    with ScriptedServer(["ok"], words=words, word_delay=0.05, send_usage=False) as server:
        priced_model(server.base_url)
        budget = budget_set(user=user, amount=Decimal("100.00"))
        conversation = conversation_create(owner=user)
        stopped, tokens = [], []

        def stop_after_some_tokens(event):
            if event.get("event") == "token":
                tokens.append(event)
            if len(tokens) >= 3 and not stopped:
                stopped.append(
                    httpx.post(
                        f"{daphne_url}/api/v1/conversations/{conversation.pk}/stop/",
                        headers={"Authorization": f"Bearer {alice_key}"},
                        timeout=30,
                    ).status_code
                )

        _, events = stream(
            daphne_url,
            alice_key,
            f"/api/v1/conversations/{conversation.pk}/messages/",
            {"content": QUESTION, "model": "priced", "params": {"max_tokens": 64}, "cache": False},
            on_event=stop_after_some_tokens,
        )
    assert stopped == [202]
    message = events[-1]["data"]["message"]
    assert message["status"] == MessageStatus.CANCELLED
    completion_tokens = message["usage"]["completion_tokens"]
    assert 0 < completion_tokens < len(words)
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.CANCELLED
    assert record.completion_tokens == completion_tokens
    assert record.cost == Decimal("0.1") * (record.prompt_tokens + completion_tokens) > 0
    assert budget_status(budget=budget).spent == record.cost


def test_a_v1_client_that_disconnects_mid_stream_is_charged_what_it_was_sent(daphne_url, user, alice_key):
    words = tuple(f" w{i}" for i in range(60))
    with ScriptedServer(["ok"], words=words, word_delay=0.05, send_usage=False) as server:
        priced_model(server.base_url)
        budget = budget_set(api_key=user.api_keys.get(), amount=Decimal("100.00"))
        client = openai.OpenAI(base_url=daphne_url + "/v1", api_key=alice_key, max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model="priced", messages=[{"role": "user", "content": QUESTION}], max_tokens=64, stream=True
        )
        received = ""
        for chunk in stream:
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if received.count(" w") >= 3:
                break
        stream.close()
        record = wait_for(lambda: UsageRecord.objects.first(), timeout=30, what="the request's usage record")
    assert record.status == UsageStatus.CANCELLED
    assert record.api_key_id == budget.api_key_id
    assert 3 <= record.completion_tokens < len(words)
    assert record.cost == Decimal("0.1") * record.completion_tokens
    assert budget_status(budget=budget).spent == record.cost


# Subjects


def test_a_group_budget_is_shared_by_its_members_and_only_them(user):
    bob, carol = make_user("bob"), make_user("carol")
    team = Group.objects.create(name="research")
    user.groups.add(team)
    bob.groups.add(team)
    budget_set(group=team, amount=Decimal("2.50"))
    spend(user, "1.50")
    spend(bob, "1.00")  # the team: $2.50 of $2.50
    spend(carol, "5.00")  # not a member: not counted
    for member in (user, bob):
        with pytest.raises(ParleyError) as refused:
            Admission.admit(user=member, generation_id=str(uuid.uuid4()), reserve_tokens=8, source="chat",
                            reserve_cost=Decimal("0.01"))  # fmt: skip
        assert refused.value.code == "budget_exceeded"
        assert "group research" in refused.value.detail
    Admission.admit(user=carol, generation_id="c", reserve_tokens=8, source="chat", reserve_cost=Decimal(1)).release()

    me = session_client(bob).get("/api/v1/me/").json()
    (status,) = me["budgets"]
    assert (status["subject_type"], status["subject"], status["period"]) == ("group", "research", "month")
    assert (Decimal(status["amount"]), Decimal(status["spent"]), Decimal(status["remaining"])) == (
        Decimal("2.50"),
        Decimal("2.50"),
        Decimal(0),
    )
    assert status["resets_at"] == month_end()


def test_a_key_budget_limits_only_that_key(user, api_key):
    other_key = api_key_create(user=user, name="other")[1]
    limited = user.api_keys.get(name="script")
    budget_set(api_key=limited, amount=Decimal("1.00"))
    spend(user, "1.00", api_key_id=limited.pk)
    with ScriptedServer(["ok"]) as server:
        priced_model(server.base_url)
        assert_refused_openai(chat_completion(bearer_client(api_key)))
        assert chat_completion(bearer_client(other_key)).status_code == 200
        conversation = conversation_create(owner=user)
        assert send(session_client(user), conversation).status_code == 201  # chat uses no key
    # The other key's request was recorded against it, not against the limited one.
    assert UsageRecord.objects.filter(api_key__name="other", cost=Decimal(1)).count() == 1

    keys = {k["name"]: k for k in session_client(user).get("/api/v1/keys/").json()}
    assert keys["other"]["budgets"] == []
    (status,) = keys["script"]["budgets"]
    assert (status["subject_type"], status["subject"]) == ("api_key", limited.prefix)
    assert Decimal(status["spent"]) == Decimal(1) and Decimal(status["remaining"]) == 0
    assert api_key not in json.dumps(keys)


# Alerts


def deliver_all(event_type: str) -> list[WebhookDelivery]:
    deliveries = list(WebhookDelivery.objects.filter(event_type=event_type).order_by("created_at"))
    for delivery in deliveries:
        webhook_deliver(delivery_id=delivery.pk)
    return deliveries


def test_the_threshold_webhook_fires_once_per_period_and_again_after_the_period_resets(user):
    budget = budget_set(user=user, amount=Decimal("10.00"), period="day", threshold_percent=80)
    with Receiver(secret="") as receiver:
        _, receiver.secret = endpoint_for(receiver.url, ["budget.threshold", "budget.exceeded"])
        spend(user, "7.99")
        assert deliver_all("budget.threshold") == []  # 79.9%
        spend(user, "0.01")  # 80%
        spend(user, "1.00")  # 90%: already announced this period
        (first,) = deliver_all("budget.threshold")
        assert not WebhookDelivery.objects.filter(event_type="budget.exceeded").exists()

        # The day ends: today's spend becomes yesterday's, and today's counter starts from nothing.
        UsageRecord.objects.update(created_at=F("created_at") - timedelta(days=1))
        BudgetAlert.objects.update(
            period_start=F("period_start") - timedelta(days=1), period_end=F("period_end") - timedelta(days=1)
        )
        clear_limits()
        spend(user, "5.00")
        assert WebhookDelivery.objects.filter(event_type="budget.threshold").count() == 1
        spend(user, "3.00")  # 80% of today's budget again
        deliveries = deliver_all("budget.threshold")
    assert len(deliveries) == 2
    assert [r["verify_error"] for r in receiver.requests] == ["", ""]  # svix verified both signatures
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    start, end = period_bounds("day")
    assert bodies[1]["data"] == {
        "budget_id": budget.pk,
        "subject": {"type": "user", "id": str(user.pk), "name": "alice"},
        "amount": "10.00",
        "spent": "8.000000",
        "period": "day",
        "period_start": start.isoformat().replace("+00:00", "Z"),
        "period_end": end.isoformat().replace("+00:00", "Z"),
        "threshold_percent": 80,
    }
    assert first.payload["data"]["spent"] == "8.000000"  # the spend that crossed 80% the first day


def test_the_admin_shows_alerts_and_the_spend_page(user, admin_client):
    budget_set(user=user, amount=Decimal("1.00"))
    spend(user, "1.00")
    changelist = admin_client.get(reverse("admin:accounts_budget_changelist")).content.decode()
    assert "threshold reached" in changelist and "exceeded" in changelist
    alerts = admin_client.get(reverse("admin:accounts_budgetalert_changelist")).content.decode()
    assert alerts.count("user alice: $1.00 per month") == 2
    page = admin_client.get("/admin/spend/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "$1.0000" in html and "alice" in html and "priced" in html
    assert 'href="/admin/spend/"' in admin_client.get("/admin/").content.decode()
    assert Client().get("/admin/spend/").status_code == 302  # to the login: staff only


# Audit


def test_a_budget_raised_in_the_admin_is_audited_with_who_did_it(user):
    ops = make_user("ops", is_staff=True, is_superuser=True)
    budget = budget_set(user=user, amount=Decimal("5.00"))
    client = Client()
    client.force_login(ops)
    response = client.post(
        reverse("admin:accounts_budget_change", args=[budget.pk]),
        {"user": user.pk, "group": "", "api_key": "", "amount": "20.00", "period": "month", "threshold_percent": 80},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="budget.change")
    assert (event.actor, event.source, event.target_id) == (ops, "admin", str(budget.pk))
    assert event.changes == {"amount": ["5.00", "20.00"]}


def test_a_budget_needs_exactly_one_subject(user):
    team = Group.objects.create(name="research")
    ops = make_user("ops", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(ops)
    response = client.post(
        reverse("admin:accounts_budget_add"),
        {"user": user.pk, "group": team.pk, "api_key": "", "amount": "20.00", "period": "month"},
    )
    assert response.status_code == 200
    assert "exactly one of" in response.content.decode()
    assert not Budget.objects.exists()


# The story of issue 17


async def refused_on_the_websocket(user, conversation) -> dict:
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(user))
    assert (await communicator.connect(timeout=10))[0]
    await communicator.send_json_to({"type": "message.send", "content": QUESTION, "model": "priced"})
    frame = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    return frame


def test_story_a_group_budget_moves_alerts_at_80_percent_refuses_past_100_and_its_raise_is_audited(settings):
    """An operator sets a monthly $ budget on a group, sees spend move as its members chat, gets a signed
    webhook at 80%, the 101st percent is refused on every path, and the audit log shows who raised it."""
    settings.EMBEDDING_PRICE_PER_MTOK = Decimal(1000)
    ops = make_user("ops", is_staff=True, is_superuser=True)
    alice, bob = make_user("alice"), make_user("bob")
    team = Group.objects.create(name="research")
    alice.groups.add(team)
    bob.groups.add(team)
    operator = Client()
    operator.force_login(ops)
    alice_key = api_key_create(user=alice, name="notebook")[1]

    with ScriptedServer(["ok"]) as server, Receiver(secret="") as receiver:
        priced_model(server.base_url)
        _, receiver.secret = endpoint_for(receiver.url, ["budget.threshold", "budget.exceeded"])
        created = operator.post(
            reverse("admin:accounts_budget_add"),
            {"user": "", "group": team.pk, "api_key": "", "amount": "5.00", "period": "month", "threshold_percent": 80},
        )
        assert created.status_code == 302
        budget = Budget.objects.get(group=team)

        # Members chat (each answer $1.00); the operator sees the spend move.
        conversations = {member: conversation_create(owner=member) for member in (alice, bob)}
        for turn, member in enumerate([alice, bob, alice, bob], start=1):
            assert send(session_client(member), conversations[member]).status_code == 201
            assert f"${turn}.0000" in operator.get("/admin/spend/").content.decode()
        page = operator.get("/admin/spend/").content.decode()
        assert "<td>research</td><td>4</td><td>4.0000</td>" in page  # the group's row: 4 requests, $4
        me = session_client(bob).get("/api/v1/me/").json()["budgets"][0]
        assert (Decimal(me["spent"]), Decimal(me["remaining"])) == (Decimal(4), Decimal(1))

        # 80%: one signed webhook.
        (threshold,) = deliver_all("budget.threshold")
        assert threshold.payload["data"]["subject"] == {"type": "group", "id": str(team.pk), "name": "research"}
        assert [r["verify_error"] for r in receiver.requests] == [""]

        # The fifth dollar is admitted (spent $4 < $5) and reaches 100%.
        assert chat_completion(bearer_client(alice_key)).status_code == 200
        deliver_all("budget.exceeded")
        assert [json.loads(r["body"])["type"] for r in receiver.requests] == ["budget.threshold", "budget.exceeded"]

        # Past 100%: refused on every path, before anything reaches the model.
        requests_before = len(server.requests)
        assert_refused_with_reset(send(session_client(alice), conversations[alice]))
        answer = Message.objects.filter(conversation=conversations[bob], role="assistant").latest("created_at")
        assert_refused_with_reset(
            session_client(bob).post(
                f"/api/v1/conversations/{conversations[bob].pk}/messages/{answer.pk}/regenerate/", {}, format="json"
            )
        )
        frame = async_to_sync(refused_on_the_websocket)(bob, conversations[bob])
        assert (frame["type"], frame["code"], frame["resets_at"]) == ("error", "budget_exceeded", month_end())
        assert frame["retry_after"] > 0
        assert_refused_openai(chat_completion(bearer_client(alice_key)))
        assert_refused_openai(chat_completion(bearer_client(alice_key), stream=True))
        assert_refused_openai(bearer_client(alice_key).post("/v1/embeddings", {"input": "Hi"}, format="json"))
        assert len(server.requests) == requests_before

        # The operator raises it; the audit log says who, and the members chat again.
        raised = operator.post(
            reverse("admin:accounts_budget_change", args=[budget.pk]),
            {"user": "", "group": team.pk, "api_key": "", "amount": "8.00", "period": "month", "threshold_percent": 80},
        )
        assert raised.status_code == 302
        assert send(session_client(alice), conversations[alice]).status_code == 201
    (event,) = AuditEvent.objects.filter(action="budget.change", target_id=str(budget.pk))
    assert event.actor == ops and event.changes == {"amount": ["5.00", "8.00"]}
    log = operator.get(reverse("admin:accounts_auditevent_changelist") + "?action=budget.change").content.decode()
    assert "ops" in log and "budget.change" in log
    assert list(budget.alerts.values_list("kind", flat=True).order_by("kind")) == ["exceeded", "threshold"]
