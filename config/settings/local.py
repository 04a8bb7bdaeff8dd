"""Settings for running Parley on one machine: `make run` (and `make dev`, with DEBUG on)."""

import os
import secrets
from pathlib import Path

from .base import *  # noqa: F403
from .base import LOGGING, PARLEY_DATA_DIR, env, log_format

# Off unless asked for (`make dev` or DJANGO_DEBUG=true): debug pages show settings, paths and
# code to anyone who reaches an error.
DEBUG = env.bool("DJANGO_DEBUG", default=False)


def installation_secret_key(path: Path) -> str:
    """Return the secret key kept in ``path``, creating it (50 random bytes, mode 0600) the first time.

    Every process of the installation (web, worker, beat, manage.py) reads the same key; processes
    starting together race safely: the key is written to a private temporary file and linked into
    place, which fails if another process got there first, and then that key is read.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(50))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip()


# DJANGO_SECRET_KEY when set; otherwise one generated for this installation, under the data dir.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="") or installation_secret_key(PARLEY_DATA_DIR / "secret_key")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# Serve static files from the app folders without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# A terminal, not a log collector: one readable line a record (LOG_FORMAT=json for JSON).
LOG_FORMAT = log_format("console")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT
