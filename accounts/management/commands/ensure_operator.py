import os

from django.core.exceptions import ValidationError
from django.core.management import CommandError

from accounts.audit import AuditedCommand
from accounts.services import operator_ensure


class Command(AuditedCommand):
    help = (
        "Create an operator account when no superuser exists: from DJANGO_SUPERUSER_USERNAME and "
        "DJANGO_SUPERUSER_PASSWORD (and DJANGO_SUPERUSER_EMAIL, optional) when both are set, as Django's "
        "createsuperuser reads them; otherwise 'admin' with a generated password printed once."
    )

    def handle(self, *args, **options):
        # The names Django's createsuperuser --noinput reads; unlike it, the email may be left out.
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        try:
            if username and password:
                user, _ = operator_ensure(username=username, email=email, password=password)
                if user is not None:
                    self.stdout.write(f"Created operator {user.username!r}.")
                return
            user, generated = operator_ensure(email=email)
        except ValidationError as exc:
            details = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(f"The operator account was not created ({details}).") from exc
        if user is not None:
            self.stdout.write(
                self.style.WARNING(
                    f"Created operator {user.username!r} with password {generated}\n"
                    "It is shown only this once: change it at /admin/password_change/."
                )
            )
