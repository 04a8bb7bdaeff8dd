from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inference", "0007_bundled_model_caches_answers")]

    operations = [
        migrations.AddField(
            model_name="modelconfig",
            name="supports_logprobs",
            field=models.BooleanField(
                default=False,
                help_text="logprobs and top_logprobs, passed through to a server that returns them (not on llama.cpp).",
                verbose_name="supports logprobs",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="supports_response_format",
            field=models.BooleanField(
                default=True,
                help_text="JSON mode (json_object, json_schema). Passed through to a server; a grammar on llama.cpp.",
                verbose_name="supports response_format",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="supports_tools",
            field=models.BooleanField(
                default=True,
                help_text="tools, tool_choice, parallel_tool_calls and tool messages. Passed through to a server; "
                "on llama.cpp a grammar makes the model write the call.",
                verbose_name="supports tools",
            ),
        ),
    ]
