# The default is a callable reading MEMORY_DEFAULT_ENABLED when a user is created: nothing changes in
# the database (Django sets defaults in Python), and existing users keep their value.

from django.db import migrations, models

import accounts.models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_usage_quota_memory"),
    ]

    operations = [
        migrations.AlterField(
            model_name="user",
            name="memory_enabled",
            field=models.BooleanField(
                default=accounts.models.memory_enabled_default,
                help_text="Finished answers are embedded and recalled, with the user's own notes, in their other "
                "conversations. New users: MEMORY_DEFAULT_ENABLED.",
                verbose_name="memory",
            ),
        ),
    ]
