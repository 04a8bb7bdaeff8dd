from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """A person using Parley. Quotas and API keys attach here (later issues)."""
