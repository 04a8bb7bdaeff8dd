import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inference", "0008_model_capabilities")]

    operations = [
        migrations.AddField(
            model_name="modelconfig",
            name="supports_vision",
            field=models.BooleanField(
                default=False,
                help_text="Reads images (OpenAI image_url content parts). A llama.cpp model needs its vision projector.",
                verbose_name="supports vision",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="image_max_pixels",
            field=models.PositiveIntegerField(
                default=2048,
                help_text="Longer images are resized to this longest side, aspect ratio kept; smaller ones are sent "
                "as they are.",
                validators=[django.core.validators.MinValueValidator(64)],
                verbose_name="image size cap (px, longest side)",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="image_max_bytes",
            field=models.PositiveIntegerField(
                default=5242880,
                help_text="Bytes of one image as sent; a larger one is re-encoded as JPEG, and refused if still larger.",
                validators=[django.core.validators.MinValueValidator(1024)],
                verbose_name="image byte cap",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="text_only_images",
            field=models.CharField(
                choices=[
                    ("refuse", "Refuse the request (400 model_not_vision_capable)"),
                    ("omit", "Answer without the images, told where each was omitted"),
                ],
                default="refuse",
                help_text="When the model does not support vision: refuse, or answer with a note where each image was.",
                max_length=8,
                verbose_name="images sent to a text-only model",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="vision_projector",
            field=models.CharField(
                blank=True,
                help_text="llama.cpp only: the GGUF's mmproj file (path or package:<package>/<file>), for a vision "
                "model.",
                max_length=512,
                verbose_name="vision projector (mmproj)",
            ),
        ),
        migrations.AddField(
            model_name="modelconfig",
            name="vision_chat_handler",
            field=models.CharField(
                blank=True,
                default="mtmd",
                help_text="llama.cpp only: llama-cpp-python's chat handler for the projector: mtmd (llama.cpp's "
                "libmtmd with the GGUF's own chat template: most models), or llava-1-5, llava-1-6, moondream2, "
                "nanollava, llama-3-vision-alpha, minicpm-v-2.6, qwen2.5-vl.",
                max_length=32,
                verbose_name="vision chat handler",
            ),
        ),
    ]
