"""The default model is loaded while the web server starts, not inside the first user's turn."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from inference.models import ModelConfig, Provider
from inference.services import model_is_loaded, model_preload, model_unload

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_preload_loads_the_default_local_model(local_model):
    model_unload(config=local_model)
    assert model_is_loaded(config=local_model) is False

    seconds = model_preload()

    assert seconds is not None and seconds > 0
    assert model_is_loaded(config=local_model) is True


@pytest.mark.django_db
def test_preload_leaves_a_server_model_alone(local_model):
    ModelConfig.objects.filter(pk=local_model.pk).update(is_default=False)
    ModelConfig.objects.create(
        slug="remote",
        display_name="Remote",
        provider=Provider.OPENAI_COMPATIBLE,
        model="some-model",
        base_url="http://127.0.0.1:9/v1",  # discard port: a request would fail, and none is made
        is_default=True,
        is_enabled=True,
    )
    assert model_preload() is None


@pytest.mark.django_db
def test_a_missing_model_file_is_logged_not_raised(local_model, caplog):
    ModelConfig.objects.filter(pk=local_model.pk).update(model="/nonexistent/model.gguf")

    assert model_preload() is None
    assert "not preloaded" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_web_process_preloads_in_the_background(local_model):
    """Importing the ASGI application returns at once; the model is loaded by a thread meanwhile."""
    url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # The subprocess reads this test's database, where the local model is the default.
        "DATABASE_URL": urlunsplit(url._replace(path="/" + connection.settings_dict["NAME"])),
        "MODEL_PRELOAD": "true",
    }
    script = textwrap.dedent(
        """
        import threading
        import config.asgi  # noqa: F401  (starts the preload)
        preload = [t for t in threading.enumerate() if t.name == "model-preload"]
        from inference.selectors import model_config_get
        from inference.services import model_is_loaded
        config = model_config_get()
        print("thread", bool(preload))
        preload[0].join(120)
        print("loaded", model_is_loaded(config=config))
        """
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert "thread True" in result.stdout
    assert "loaded True" in result.stdout
