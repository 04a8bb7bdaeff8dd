import os

from django.core.management import BaseCommand, call_command

from accounts.models import User
from accounts.services import operator_ensure


class Command(BaseCommand):
    help = (
        "Create an operator account when no superuser exists: from DJANGO_SUPERUSER_USERNAME, "
        "DJANGO_SUPERUSER_PASSWORD and DJANGO_SUPERUSER_EMAIL when set (Django's createsuperuser "
        "reads them), otherwise 'admin' with a generated password printed once."
    )

    def handle(self, *args, **options):
        if User.objects.filter(is_superuser=True).exists():
            return
        # Django's own createsuperuser --noinput reads these variables; only check they are there.
        if os.environ.get("DJANGO_SUPERUSER_USERNAME") and os.environ.get("DJANGO_SUPERUSER_PASSWORD"):
            call_command("createsuperuser", interactive=False, verbosity=0)
            self.stdout.write(f"Created operator {os.environ['DJANGO_SUPERUSER_USERNAME']!r}.")
            return
        user, password = operator_ensure()
        if user is not None:
            self.stdout.write(
                self.style.WARNING(
                    f"Created operator {user.username!r} with password {password}\n"
                    "It is shown only this once: change it at /admin/password_change/."
                )
            )
