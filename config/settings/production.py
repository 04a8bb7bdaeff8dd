"""Settings for production: every secret and URL comes from the environment.

Passes `manage.py check --deploy` with no warnings (tests/test_deploy.py).
"""

from .base import *  # noqa: F403
from .base import LOGGING, STORAGES, env, log_format

DEBUG = False
SECRET_KEY = env("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# One JSON object a line, for a log collector (LOG_FORMAT=console for readable lines).
LOG_FORMAT = log_format("json")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT

# Under ASGI, Django advises a connection pool over persistent connections: every thread that
# touches the database (request threads, turns, the pool behind async views) borrows a connection
# for one call instead of opening one (psycopg_pool through Django's "pool" option; CONN_MAX_AGE 0).
if env.bool("DATABASE_POOL", default=True):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {  # noqa: F405
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        # Seconds to wait for a free connection; with PostgreSQL down, how long a request waits before its 503.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=5.0),
        # Seconds the pool keeps retrying to open a connection while PostgreSQL is down before giving up
        # on that attempt (a later request starts another): psycopg_pool's default is 5 minutes.
        "reconnect_timeout": env.float("DATABASE_POOL_RECONNECT_TIMEOUT", default=10.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)  # noqa: F405

# Uploads: base.py's STORAGES["default"] (MEDIA_ROOT, or the S3 bucket of STORAGE_S3_BUCKET).
STORAGES["staticfiles"] = {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}
