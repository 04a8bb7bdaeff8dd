"""Settings shared by every environment. The environment is read only here, through django-environ.

Every variable is documented in README.md ("Settings").
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

# local.py and test.py give a development default; production.py requires it.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

PARLEY_DATA_DIR = Path(env("PARLEY_DATA_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's with an ASGI one.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "channels",
    "django_prometheus",
    "accounts",
    "inference",
    "chat",
    "agents",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL with pgvector. `python -m config.services run` supplies an embedded one
# when DATABASE_URL is unset (README, "Running").
DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# Redis: cache, channel layer and Celery broker.
REDIS_URL = env("REDIS_URL")
REDIS_KEY_PREFIX = env("REDIS_KEY_PREFIX", default="parley")

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s socket timeout by default, the same as channels-redis's
            # 5 s blocking pop: give the read more time than the pop, or idle receives fail.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": f"{REDIS_KEY_PREFIX}:asgi",
        },
    }
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
}

# Inference
LLM_DEFAULT_MODEL = env("LLM_DEFAULT_MODEL", default="")
LLAMA_MODEL_PATH = env("LLAMA_MODEL_PATH", default="")
LLAMA_N_THREADS = env.int("LLAMA_N_THREADS", default=0)  # 0: one per core, as llama.cpp decides
LLAMA_N_CTX = env.int("LLAMA_N_CTX", default=0)  # 0: use each ModelConfig's context window
LLAMA_MAX_LOADED_MODELS = env.int("LLAMA_MAX_LOADED_MODELS", default=2)  # per process, least recently used out
INFERENCE_EXECUTION = env("INFERENCE_EXECUTION", default="inline")  # inline | celery

# Chat
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=32_000)
# Token batching on the channel layer: a batch is sent when its first delta is this old...
CHAT_TOKEN_BATCH_MS = env.int("CHAT_TOKEN_BATCH_MS", default=50)
# ...or when it holds this many deltas, whichever comes first.
CHAT_TOKEN_BATCH_SIZE = env.int("CHAT_TOKEN_BATCH_SIZE", default=16)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# Embeddings
# "local" (all-MiniLM-L6-v2, bundled, on CPU) or a model name on the OpenAI-compatible EMBEDDING_BASE_URL.
EMBEDDING_MODEL = env("EMBEDDING_MODEL", default="local")
EMBEDDING_BASE_URL = env("EMBEDDING_BASE_URL", default="")  # e.g. http://127.0.0.1:8080/v1
EMBEDDING_API_KEY_ENV = env("EMBEDDING_API_KEY_ENV", default="")  # NAME of the variable holding the key
EMBEDDING_DIMENSIONS = env.int("EMBEDDING_DIMENSIONS", default=384)  # vector length; 384 for "local"
