"""Settings shared by every environment. The environment is read only here, through django-environ.

Every variable is documented in README.md ("Settings").
"""

from datetime import timedelta
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
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc assets served locally: no CDN, works offline
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

CACHE_REDIS_URL = env("CACHE_REDIS_URL", default=REDIS_URL)  # the response caches may live on their own Redis


def redis_cache(location: str, key_prefix: str, timeout: int | None = 300) -> dict:
    """A django-redis cache definition. Short socket timeouts: a cache must never stall a request."""
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "KEY_PREFIX": key_prefix,
        "TIMEOUT": timeout,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    }


# Layered response caches (inference.cache), one django-redis alias per layer; TTLs in seconds.
CACHE_ENABLED = env.bool("CACHE_ENABLED", default=True)
CACHE_LLM_TTL = env.int("CACHE_LLM_TTL", default=3600)
CACHE_TOOL_TTL = env.int("CACHE_TOOL_TTL", default=1800)
CACHE_INTENT_TTL = env.int("CACHE_INTENT_TTL", default=7200)
CACHE_SEMANTIC_TTL = env.int("CACHE_SEMANTIC_TTL", default=3600)
CACHE_SEMANTIC_THRESHOLD = env.float("CACHE_SEMANTIC_THRESHOLD", default=0.95)  # cosine similarity
CACHE_SINGLE_FLIGHT_LEASE = env.float("CACHE_SINGLE_FLIGHT_LEASE", default=15.0)  # seconds a leader holds its lock
CACHE_RETRY_AFTER_ERROR = env.float(
    "CACHE_RETRY_AFTER_ERROR", default=5.0
)  # seconds the caches rest after a Redis error

CACHES = {
    "default": redis_cache(REDIS_URL, REDIS_KEY_PREFIX),
    "llm": redis_cache(CACHE_REDIS_URL, f"{REDIS_KEY_PREFIX}:llm", CACHE_LLM_TTL),
    "tool": redis_cache(CACHE_REDIS_URL, f"{REDIS_KEY_PREFIX}:tool", CACHE_TOOL_TTL),
    "intent": redis_cache(CACHE_REDIS_URL, f"{REDIS_KEY_PREFIX}:intent", CACHE_INTENT_TTL),
    "semantic": redis_cache(CACHE_REDIS_URL, f"{REDIS_KEY_PREFIX}:semantic", CACHE_SEMANTIC_TTL),
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
    # API keys first: a ``Bearer pk_...`` token is an API key, any other Bearer token a JWT. The first
    # class also supplies the WWW-Authenticate header, which makes DRF answer 401 (not 403) when a
    # request carries no credentials.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.APIKeyAuthentication",
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    # Throttle state lives in the default cache (Redis), shared by every process.
    "DEFAULT_THROTTLE_RATES": {"login": env("RATE_LIMIT_LOGIN", default="10/min")},
    # X-Forwarded-For is trusted only behind this many proxies; 0 uses the peer address (REMOTE_ADDR).
    "NUM_PROXIES": env.int("TRUSTED_PROXY_COUNT", default=0),
}

# Inference
LLM_DEFAULT_MODEL = env("LLM_DEFAULT_MODEL", default="")
LLAMA_MODEL_PATH = env("LLAMA_MODEL_PATH", default="")
# 0: llama-cpp-python decides (half the cores for generation, all of them for the prompt)
LLAMA_N_THREADS = env.int("LLAMA_N_THREADS", default=0)
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

# Authentication and API keys (README, "Authentication and API keys")
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_ACCESS_TOKEN_LIFETIME", default=15 * 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_REFRESH_TOKEN_LIFETIME", default=24 * 60 * 60)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    # Tokens carry a hash of the password hash: changing the password ends every token issued before.
    "CHECK_REVOKE_TOKEN": True,
}

# Health checks (/health/ready/)
# Seconds to wait for a Celery worker to answer a ping.
HEALTH_CELERY_TIMEOUT = env.float("HEALTH_CELERY_TIMEOUT", default=1.0)
# Whether readiness fails without a Celery worker: by default only when turns run in Celery.
HEALTH_CELERY_REQUIRED = env.bool("HEALTH_CELERY_REQUIRED", default=INFERENCE_EXECUTION == "celery")

# OpenAPI (drf-spectacular): /api/schema/, /api/docs/, /api/redoc/
SPECTACULAR_SETTINGS = {
    "TITLE": "Parley API",
    "DESCRIPTION": (
        "REST API of Parley, a self-hostable LLM chat platform. Authenticate with a JWT "
        "(`POST /api/v1/auth/token/`), a per-user API key (`Authorization: Bearer pk_...`) or the "
        'browser session. Every error has the shape `{"error": {"code", "detail", "fields"?}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Choice sets that share a field name ("status") get names of their own.
    "ENUM_NAME_OVERRIDES": {"CacheStatusEnum": ["ok", "degraded"]},
}
