"""The prompt library (owner-scoped REST, visibility, the settings page) and custom instructions
(REST, the settings page, and the system prompt a model really receives)."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from chat.models import Prompt
from chat.selectors import custom_instructions_prompt
from chat.services import conversation_create, custom_instructions_set, prompt_create
from conftest import make_user
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

TRANSLATE = "Translate into {{language}}:\n\n{{ text }}\n\n({{language}} again)"


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def titles(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [p["title"] for p in response.json()]


@pytest.mark.django_db
def test_owner_creates_changes_and_deletes_a_prompt_that_stays_private(user):
    alice, bob = api(user), api(make_user("bob"))
    created = alice.post("/api/v1/prompts/", {"title": "Translate", "text": TRANSLATE}, format="json")
    assert created.status_code == 201, created.content
    prompt = created.json()
    assert prompt["variables"] == ["language", "text"]
    assert prompt["visibility"] == "private" and prompt["mine"] is True and prompt["owner"] == "alice"
    assert titles(alice.get("/api/v1/prompts/")) == ["Translate"]
    assert titles(alice.get("/api/v1/prompts/", {"q": "TRANS"})) == ["Translate"]
    assert titles(alice.get("/api/v1/prompts/", {"q": "summary"})) == []

    url = f"/api/v1/prompts/{prompt['id']}/"
    assert titles(bob.get("/api/v1/prompts/")) == []
    for call in (bob.get(url), bob.patch(url, {"title": "Mine now"}, format="json"), bob.delete(url)):
        assert call.status_code == 404
    assert Prompt.objects.get().title == "Translate"

    changed = alice.patch(url, {"title": "Translation", "text": "Say {{x}}"}, format="json")
    assert changed.status_code == 200 and changed.json()["variables"] == ["x"]
    empty = alice.patch(url, {"title": "   "}, format="json")
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid"
    assert alice.delete(url).status_code == 204
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_a_prompt_shared_with_a_group_or_everyone_is_listed_for_them_and_changed_only_by_its_owner(user):
    support, sales = Group.objects.create(name="support"), Group.objects.create(name="sales")
    user.groups.add(support)
    member, outsider = make_user("bob"), make_user("carol")
    member.groups.add(support)
    alice = api(user)

    # Only groups the owner is in.
    refused = alice.post(
        "/api/v1/prompts/", {"title": "T", "text": "x", "visibility": "groups", "groups": ["sales"]}, format="json"
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid"
    assert sales.prompts.count() == 0

    team = alice.post(
        "/api/v1/prompts/",
        {"title": "Ticket reply", "text": "Dear {{name}},", "visibility": "groups", "groups": ["support"]},
        format="json",
    ).json()
    alice.post("/api/v1/prompts/", {"title": "Everybody's", "text": "Hi", "visibility": "everyone"}, format="json")
    alice.post("/api/v1/prompts/", {"title": "Secret", "text": "mine"}, format="json")

    assert titles(api(member).get("/api/v1/prompts/")) == ["Everybody's", "Ticket reply"]
    assert titles(api(outsider).get("/api/v1/prompts/")) == ["Everybody's"]
    assert api(outsider).get(f"/api/v1/prompts/{team['id']}/").status_code == 404
    shown = api(member).get(f"/api/v1/prompts/{team['id']}/").json()
    assert shown["mine"] is False and shown["owner"] == "alice" and shown["groups"] == ["support"]
    assert api(member).patch(f"/api/v1/prompts/{team['id']}/", {"text": "x"}, format="json").status_code == 404
    assert api(member).delete(f"/api/v1/prompts/{team['id']}/").status_code == 404

    # Made private again: the group no longer sees it.
    alice.patch(f"/api/v1/prompts/{team['id']}/", {"visibility": "private"}, format="json")
    assert titles(api(member).get("/api/v1/prompts/")) == ["Everybody's"]


@pytest.mark.django_db
def test_custom_instructions_over_rest(user):
    alice = api(user)
    assert alice.get("/api/v1/me/instructions/").json() == {
        "about_me": "",
        "how_to_answer": "",
        "enabled": True,
        "updated_at": None,
    }
    saved = alice.patch("/api/v1/me/instructions/", {"about_me": " I am a nurse in Lyon. "}, format="json")
    assert saved.status_code == 200 and saved.json()["about_me"] == "I am a nurse in Lyon."
    alice.patch("/api/v1/me/instructions/", {"how_to_answer": "Briefly."}, format="json")
    got = alice.get("/api/v1/me/instructions/").json()
    assert (got["about_me"], got["how_to_answer"], got["enabled"]) == ("I am a nurse in Lyon.", "Briefly.", True)
    too_long = alice.patch("/api/v1/me/instructions/", {"about_me": "x" * 1501}, format="json")
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid"
    assert api(make_user("bob")).get("/api/v1/me/instructions/").json()["about_me"] == ""


@pytest.mark.django_db
def test_the_settings_page_edits_instructions_and_the_prompt_library(user):
    client = Client()
    client.force_login(user)
    response = client.post(
        "/settings/instructions/", {"about_me": "I live in Lyon.", "how_to_answer": "In French.", "enabled": "on"}
    )
    assert response.status_code == 302
    page = client.get("/settings/").content.decode()
    assert "I live in Lyon." in page and "In French." in page

    assert client.post("/settings/prompts/", {"title": "", "text": "x", "visibility": "private"}).status_code == 400
    client.post("/settings/prompts/", {"title": "Summarise", "text": "Summarise {{text}}", "visibility": "private"})
    prompt = Prompt.objects.get(owner=user)
    assert "Summarise {{text}}" in client.get("/settings/").content.decode()
    other = Client()
    other.force_login(make_user("bob"))
    assert other.post(f"/settings/prompts/{prompt.pk}/delete/").status_code == 404
    client.post(f"/settings/prompts/{prompt.pk}/delete/")
    assert not Prompt.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_custom_instructions_reach_the_models_system_prompt_only_while_on(user, local_model):
    with ScriptedServer(["ok"]) as server:
        ModelConfig.objects.create(
            slug="remote",
            display_name="Remote",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            system_prompt="You are Parley.",
        )
        custom_instructions_set(user=user, about_me="I am a nurse in Lyon.", how_to_answer="Answer in French.")
        conversation = conversation_create(owner=user)
        alice = api(user)

        def ask(content):
            response = alice.post(
                f"/api/v1/conversations/{conversation.pk}/messages/",
                {"content": content, "model": "remote", "cache": False},
                format="json",
            )
            assert response.status_code == 201, response.content
            return server.requests[-1]["messages"]

        messages = ask("Where do I renew my licence?")
        system = messages[0]
        assert system["role"] == "system"
        assert system["content"].startswith("You are Parley.")
        assert "I am a nurse in Lyon." in system["content"] and "Answer in French." in system["content"]
        assert messages[-1] == {"role": "user", "content": "Where do I renew my licence?"}

        custom_instructions_set(user=user, enabled=False)
        messages = ask("And the opening hours?")
        assert messages[0] == {"role": "system", "content": "You are Parley."}


@pytest.mark.django_db
def test_other_users_instructions_never_reach_your_turns(user):
    bob = make_user("bob")
    custom_instructions_set(user=bob, about_me="Bob's secret.")
    assert custom_instructions_prompt(user_id=user.pk) == ""
    assert "Bob's secret." in custom_instructions_prompt(user_id=bob.pk)
    prompt_create(owner=bob, title="Bob's prompt", text="x")
    assert titles(api(user).get("/api/v1/prompts/")) == []
