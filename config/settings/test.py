"""Settings for the test suite: `make test`. Real PostgreSQL, Redis and llama.cpp, as in production."""

from urllib.parse import urlsplit, urlunsplit

from .base import *  # noqa: F403
from .base import CACHES, CHANNEL_LAYERS, REDIS_URL, env

DEBUG = False
SECRET_KEY = env("DJANGO_SECRET_KEY", default="parley-test-key-not-for-production")
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; tests only
WHITENOISE_USE_FINDERS = True

# Keep test keys apart from anything else on a shared Redis.
REDIS_KEY_PREFIX = env("REDIS_KEY_PREFIX", default="parley-test")
for _alias, _cache in CACHES.items():
    _cache["KEY_PREFIX"] = REDIS_KEY_PREFIX if _alias == "default" else f"{REDIS_KEY_PREFIX}:{_alias}"
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_KEY_PREFIX}:asgi"
# Celery's queues take no key prefix: the suite queues its tasks in Redis database 1, so that on a
# Redis shared with a running Parley (`make test` next to `make run` reuses its Valkey) the server's
# workers never take them.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=urlunsplit(urlsplit(REDIS_URL)._replace(path="/1")))

# Small, fast generations from the real bundled model.
LLAMA_N_THREADS = env.int("LLAMA_N_THREADS", default=2)

# The suite loads the embedding model where a test needs it, not in every Daphne it starts.
EMBEDDING_PRELOAD = env.bool("EMBEDDING_PRELOAD", default=False)
MODEL_PRELOAD = env.bool("MODEL_PRELOAD", default=False)
