"""Staff model information at /api/v1/admin/model/info/."""

import pytest
from rest_framework.test import APIClient

from conftest import make_user
from inference.models import ModelConfig, Provider
from inference.services import model_load

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    client = APIClient()
    client.force_login(make_user("root", is_staff=True))
    return client


def test_staff_see_every_enabled_model_its_limits_and_load_state(staff_client, local_model):
    ModelConfig.objects.create(
        slug="remote",
        display_name="Remote",
        provider=Provider.OPENAI_COMPATIBLE,
        model="gpt-4o-mini",
        base_url="http://127.0.0.1:9/v1",
        context_window=128000,
        max_tokens=1024,
    )
    ModelConfig.objects.create(slug="off", display_name="Off", model="x.gguf", is_enabled=False)
    model_load(config=local_model)  # loaded in this process, which answers the request

    body = staff_client.get("/api/v1/admin/model/info/").json()

    assert body["default_model"] == "smollm2-135m"
    assert [m["slug"] for m in body["models"]] == ["smollm2-135m", "remote"]  # default first, enabled only
    local, remote = body["models"]
    assert local["provider"] == "llama_cpp"
    assert local["context_window"] == 4096
    assert local["max_tokens"] == 512
    assert local["cache_policy"] == "deterministic"
    assert local["is_default"] is True
    assert local["loaded"] is True
    assert remote["loaded"] is None  # served elsewhere
    assert remote["model"] == "gpt-4o-mini"
    assert "base_url" not in remote and "api_key_env" not in remote
    assert body["embedding"]["model"] == "all-MiniLM-L6-v2"
    assert body["embedding"]["dimensions"] == 384


def test_with_no_enabled_model_there_is_no_default(staff_client):
    ModelConfig.objects.update(is_default=False, is_enabled=False)  # a migration seeds the bundled model
    body = staff_client.get("/api/v1/admin/model/info/").json()
    assert body["default_model"] is None
    assert body["models"] == []
