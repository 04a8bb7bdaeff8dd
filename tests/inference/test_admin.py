"""Model configs in the admin: the loaded state and the operator actions."""

import re

import pytest
from django.contrib.admin.models import LogEntry

from inference.models import ModelConfig
from inference.services import model_is_loaded, model_unload

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/inference/modelconfig/"


def act(admin_client, action, *configs):
    return admin_client.post(CHANGELIST, {"action": action, "_selected_action": [c.pk for c in configs]}, follow=True)


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_test_action_shows_ttft_tokens_per_second_and_the_answer(admin_client, local_model):
    response = act(admin_client, "test_models", local_model)
    [message] = page_messages(response)
    assert message.startswith("smollm2-135m: first token ")
    assert "tokens/s" in message and re.search(r"tokens: ['\"]", message), "the answer is quoted after the counts"
    assert LogEntry.objects.filter(object_id=str(local_model.pk), change_message="Tested").exists()


def test_test_action_reports_a_broken_model(admin_client, local_model):
    broken = ModelConfig.objects.create(slug="broken", display_name="Broken", model="/missing.gguf")
    [message] = page_messages(act(admin_client, "test_models", broken))
    assert message.startswith("broken: model_unavailable:")


def test_load_and_unload_change_the_loaded_state(admin_client, local_model):
    model_unload(config=local_model)
    assert model_is_loaded(config=local_model) is False
    act(admin_client, "load_models", local_model)
    assert model_is_loaded(config=local_model) is True
    page = admin_client.get(CHANGELIST).content.decode()
    assert 'alt="True"' in page
    act(admin_client, "unload_models", local_model)
    assert model_is_loaded(config=local_model) is False
    actions = set(LogEntry.objects.values_list("change_message", flat=True))
    assert {"Loaded", "Unloaded"} <= actions


def test_set_as_default_moves_the_default(admin_client, local_model):
    other = ModelConfig.objects.create(slug="other", display_name="Other", model="/x.gguf")
    act(admin_client, "set_as_default", other)
    assert list(ModelConfig.objects.filter(is_default=True).values_list("slug", flat=True)) == ["other"]


def test_the_api_key_itself_is_never_shown(admin_client, local_model, monkeypatch):
    monkeypatch.setenv("PARLEY_TEST_REMOTE_KEY", "sk-canary-1234567890")
    remote = ModelConfig.objects.create(
        slug="remote",
        display_name="Remote",
        provider="openai_compatible",
        model="gpt",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="PARLEY_TEST_REMOTE_KEY",
    )
    page = admin_client.get(f"{CHANGELIST}{remote.pk}/change/").content.decode()
    assert "PARLEY_TEST_REMOTE_KEY" in page
    assert "sk-canary-1234567890" not in page


def test_model_pages_are_staff_only(client, user, local_model):
    client.force_login(user)
    assert client.get(CHANGELIST).status_code == 302
