"""One access rule for models (accounts.access.visible_to), the same on every path (issue 16, item 3).

A model open only to the group "eng" is missing from every list a user outside it sees (the UI
picker, REST, /v1) and refused on every way to use it (the home form, REST, SSE, the WebSocket,
/v1: 404 model_not_found, never another model); joining the group opens it everywhere at the next
request, and leaving closes it again.
"""

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from accounts.services import api_key_create
from chat.models import Message
from chat.services import conversation_create
from config.asgi import application
from conftest import make_user, ws_headers
from inference.models import ModelConfig
from inference.registry import model_config_access_set

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def eng(db) -> Group:
    return Group.objects.create(name="eng")


@pytest.fixture
def eng_model(local_model, eng) -> ModelConfig:
    config = ModelConfig.objects.create(
        slug="eng-only", display_name="Engineering model", model=local_model.model, provider=local_model.provider
    )
    model_config_access_set(configs=[config], groups=[eng], mode="set")
    return config


@pytest.fixture
def alice(db):
    return make_user("alice")


def picker(user) -> list[str]:
    client = Client()
    client.force_login(user)
    return [config.slug for config in client.get("/").context["models"]]


def rest_list(user) -> list[str]:
    client = APIClient()
    client.force_authenticate(user)
    return [row["slug"] for row in client.get("/api/v1/models/").json()]


def v1_list(key: str) -> list[str]:
    response = Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")
    return [row["id"] for row in response.json()["data"]]


def v1_complete(key: str, model: str):
    return Client().post(
        "/v1/chat/completions",
        {"model": model, "messages": QUESTION, "max_tokens": 2, "temperature": 0},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


async def ws_send(user, conversation, model: str) -> dict:
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers=await ws_headers(user))
    connected, _ = await socket.connect(timeout=10)
    assert connected
    await socket.send_json_to({"type": "message.send", "content": "hi", "model": model})
    frame = await socket.receive_json_from(timeout=10)
    await socket.disconnect()
    return frame


def every_list(user, key) -> dict[str, bool]:
    return {
        "picker": "eng-only" in picker(user),
        "rest": "eng-only" in rest_list(user),
        "v1": "eng-only" in v1_list(key),
    }


def test_a_model_closed_to_the_user_is_in_no_list_and_refused_on_every_path(alice, eng_model):
    _, key = api_key_create(user=alice, name="script")
    conversation = conversation_create(owner=alice)
    assert every_list(alice, key) == {"picker": False, "rest": False, "v1": False}
    assert "smollm2-135m" in picker(alice) and v1_list(key) == ["smollm2-135m"]

    # The home form (the UI's first message).
    client = Client()
    client.force_login(alice)
    home = client.post("/", {"content": "hi", "model": "eng-only"})
    assert home.status_code == 400
    # REST and SSE.
    api = APIClient()
    api.force_authenticate(alice)
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    rest = api.post(url, {"content": "hi", "model": "eng-only"}, format="json")
    sse = api.post(url, {"content": "hi", "model": "eng-only"}, format="json", HTTP_ACCEPT="text/event-stream")
    for response in (rest, sse):
        assert response.status_code == 400 and response.json()["error"]["code"] == "model_unavailable"
    # The WebSocket.
    import asyncio

    frame = asyncio.run(ws_send(alice, conversation, "eng-only"))
    assert frame["type"] == "error" and frame["code"] == "model_unavailable"
    # /v1: the same 404 as a model that does not exist, and no answer from another model.
    forbidden, missing = v1_complete(key, "eng-only"), v1_complete(key, "no-such-model")
    assert forbidden.status_code == missing.status_code == 404
    assert forbidden.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"
    assert not Message.objects.filter(conversation=conversation).exists()


def test_joining_the_group_opens_it_everywhere_and_leaving_closes_it_again(alice, eng, eng_model):
    _, key = api_key_create(user=alice, name="script")
    alice.groups.add(eng)
    assert every_list(alice, key) == {"picker": True, "rest": True, "v1": True}
    completion = v1_complete(key, "eng-only")
    assert completion.status_code == 200 and completion.json()["model"] == "eng-only"

    alice.groups.remove(eng)
    assert every_list(alice, key) == {"picker": False, "rest": False, "v1": False}
    assert v1_complete(key, "eng-only").status_code == 404


def test_a_superuser_may_use_every_model(eng_model):
    operator = make_user("operator", is_staff=True, is_superuser=True)
    assert "eng-only" in rest_list(operator)


def test_the_default_model_closed_to_a_user_gives_them_their_first_open_one(alice, local_model, eng):
    open_model = ModelConfig.objects.create(
        slug="for-all", display_name="For all", model=local_model.model, provider=local_model.provider
    )
    model_config_access_set(configs=[local_model], groups=[eng], mode="set")
    assert rest_list(alice) == ["for-all"]
    client = Client()
    client.force_login(alice)
    assert client.get("/").context["current_model"] == open_model.slug


def test_the_admin_gives_many_models_to_a_group_at_once_and_filters_by_group(alice, local_model, eng):
    second = ModelConfig.objects.create(
        slug="second", display_name="Second", model=local_model.model, provider=local_model.provider
    )
    operator = make_user("operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    url = "/admin/inference/modelconfig/"
    ids = [str(local_model.pk), str(second.pk)]
    page = client.post(url, {"action": "set_access", "_selected_action": ids})
    assert page.status_code == 200 and b"Who may use these models" in page.content
    done = client.post(
        url, {"action": "set_access", "_selected_action": ids, "apply": "Apply", "mode": "set", "groups": [eng.pk]}
    )
    assert done.status_code == 302
    assert {c.slug for c in ModelConfig.objects.filter(groups=eng)} == {"smollm2-135m", "second"}
    assert rest_list(alice) == []

    open_one = ModelConfig.objects.create(
        slug="open", display_name="Open", model=local_model.model, provider=local_model.provider
    )
    sales = Group.objects.create(name="sales")
    listed = client.get(url, {"usable_by": sales.pk}).context["cl"].result_list
    assert [c.slug for c in listed] == [open_one.slug]
    listed = client.get(url, {"usable_by": eng.pk}).context["cl"].result_list
    assert {c.slug for c in listed} == {"smollm2-135m", "second", "open"}
