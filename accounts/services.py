"""Writes for accounts."""

import secrets

from django.db import transaction

from .models import User


@transaction.atomic
def operator_ensure(*, username: str = "admin", email: str = "") -> tuple[User | None, str | None]:
    """Create an operator (superuser) with a generated password when no superuser exists.

    Return ``(user, password)`` for a new operator, or ``(None, None)`` when one already exists.
    The password is 16 random bytes, URL-safe base64 (``secrets.token_urlsafe``); it is returned
    once and stored only hashed.
    """
    if User.objects.filter(is_superuser=True).exists():
        return None, None
    password = secrets.token_urlsafe(16)
    user = User.objects.create_superuser(username=username, email=email, password=password)
    return user, password
