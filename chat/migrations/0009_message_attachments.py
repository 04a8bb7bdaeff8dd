import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import chat.models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0008_message_tree"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Attachment",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("file", models.FileField(max_length=255, upload_to=chat.models.attachment_upload_to)),
                ("thumbnail", models.FileField(max_length=255, upload_to=chat.models.attachment_upload_to)),
                (
                    "content_type",
                    models.CharField(help_text="Sniffed from the bytes: image/png, jpeg, webp or gif.", max_length=32),
                ),
                ("width", models.PositiveIntegerField(help_text="Pixels.")),
                ("height", models.PositiveIntegerField(help_text="Pixels.")),
                ("size_bytes", models.PositiveIntegerField()),
                ("sha256", models.CharField(max_length=64, verbose_name="SHA-256")),
                ("filename", models.CharField(blank=True, max_length=255, verbose_name="original file name")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "message",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="attachments",
                        to="chat.message",
                    ),
                ),
                (
                    "owner",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="attachments",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["created_at"],
                "indexes": [models.Index(fields=["owner", "message"], name="chat_attachment_owner_message")],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(content_type__in=["image/png", "image/jpeg", "image/webp", "image/gif"]),
                        name="chat_attachment_image_type",
                    )
                ],
            },
        ),
    ]
