import hashlib
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q


class User(AbstractUser):
    """A person using Parley. Quotas attach here (later issues); API keys in :class:`APIKey`."""


# Every API key starts with this, so a Bearer token is told apart from a JWT (which never starts so).
API_KEY_PREFIX = "pk_"
# Characters of the key kept in clear as its public prefix ("pk_" + 8): enough to recognise a key in a
# list, far too few to guess the rest (the key carries 256 random bits after it).
API_KEY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8


def api_key_hash(key: str) -> str:
    """Return the SHA-256 of ``key`` as 64 lowercase hex characters.

    A fast, unsalted hash is the standard for high-entropy tokens (GitHub and Stripe tokens work
    the same way): a key is 32 random bytes, so there is nothing to brute-force or look up in a
    rainbow table, and one indexed lookup per request stays cheap. Passwords, which people choose,
    need a slow salted hash instead (Django's PBKDF2); keys do not.
    """
    return hashlib.sha256(key.encode()).hexdigest()


class APIKey(models.Model):
    """A per-user secret for scripts and apps: ``Authorization: Bearer pk_...`` on /api/v1/ and /v1/.

    Only the SHA-256 of the key is stored (:func:`api_key_hash`); the key is shown once, when made.
    A revoked key (``revoked_at`` set) never authenticates again and is kept for the record.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, to recognise it.")
    key_hash = models.CharField("key hash (SHA-256)", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Updated at most once a minute.")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(key_hash__regex=r"^[0-9a-f]{64}$"), name="api_key_hash_is_sha256_hex"),
        ]
        indexes = [models.Index(fields=["user", "revoked_at"], name="api_key_user_active")]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
