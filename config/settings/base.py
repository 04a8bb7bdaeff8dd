"""Settings shared by every environment. The environment is read only here, through django-environ.

Every variable is documented in README.md ("Settings").
"""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from core.launcher import ServicesNotRunning, running_services

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

# local.py and test.py give a development default; production.py requires it.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

PARLEY_DATA_DIR = Path(env("PARLEY_DATA_DIR", default=str(BASE_DIR / "var")))

# DATABASE_URL and REDIS_URL, when unset, are those of the embedded services a running
# `python -m core.launcher run` (`make run`) recorded under PARLEY_DATA_DIR: so a plain
# `python manage.py ...` works on the data of the running Parley. With neither, the settings raise
# ServicesNotRunning, which manage.py prints as one line saying how to start Parley.
_RUNNING = {} if env("DATABASE_URL", default="") and env("REDIS_URL", default="") else running_services(PARLEY_DATA_DIR)
for _variable in ("DATABASE_URL", "REDIS_URL"):
    if not env(_variable, default="") and _variable not in _RUNNING:
        raise ServicesNotRunning(_variable, PARLEY_DATA_DIR)

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
    "csp",  # Content-Security-Policy (CONTENT_SECURITY_POLICY below)
    "channels",
    "django_prometheus",
    # Single sign-on through OpenID Connect providers (OIDC_PROVIDERS below; accounts.sso).
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "core",
    "accounts",
    "inference",
    "chat",
    "agents",
]

MIDDLEWARE = [
    "core.log.request_id_middleware",  # first: every later log record carries the request id
    # PostgreSQL unreachable: a 503 (page, or the API error shape) rather than a 500.
    "core.handlers.DatabaseUnavailableMiddleware",
    # Who acts and from where, for the audit events the services write (accounts.audit).
    "accounts.middleware.audit_context_middleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "core.static.AsyncWhiteNoiseMiddleware",  # WhiteNoise, without a thread hop per request
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",  # django-allauth's (single sign-on)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# The middleware of the OpenAI-compatible /v1/ endpoints under ASGI (config.asgi): the request id,
# and the security headers; no sessions, CSRF, messages, static files or django-prometheus request metrics
# (/v1 requests are counted by parley_llm_requests_total).
GATEWAY_MIDDLEWARE = [
    "core.log.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
]

# Content-Security-Policy (django-csp) on every response: scripts only from this site's own files
# (no inline script, no eval, no CDN), nothing loaded from elsewhere. Styles may be inline: the
# admin, Swagger UI and ReDoc set style attributes and <style> elements. ReDoc's search runs in a
# worker made from a blob: URL; Swagger UI's icons are data: images. Sockets connect to 'self'.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],  # as X-Frame-Options: DENY
    }
}

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

# Database: PostgreSQL with pgvector. `python -m core.launcher run` supplies an embedded one
# when DATABASE_URL is unset (README, "How it fits together").
DATABASES = {"default": env.db_url_config(env("DATABASE_URL", default="") or _RUNNING["DATABASE_URL"])}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
# A connection reused across requests (CONN_MAX_AGE, or one lent by the production pool) is checked
# before use, so after PostgreSQL restarts the first request opens a new one instead of failing.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Seconds to wait for PostgreSQL to accept a connection: with it unreachable, requests fail fast
# (503 database_unavailable) instead of hanging on the operating system's TCP timeout.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=3)
)
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
# Off (the default): only the operator creates accounts (admin, manage.py); on: anyone may, at
# /signup/, each account with its own quota, so sign-ups are limited per client IP.
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=False)
# New accounts wait, inactive, for an operator to approve them (tick Active in the admin).
SIGNUP_APPROVAL = env.bool("SIGNUP_APPROVAL", default=False)
RATE_LIMIT_SIGNUP = env("RATE_LIMIT_SIGNUP", default="5/hour")
# Off: passwords are refused everywhere (/login/, /admin/login/, the JWT token endpoint) and sign-up
# is closed; people sign in with single sign-on only. Sessions already open go on.
LOCAL_LOGIN_ENABLED = env.bool("LOCAL_LOGIN_ENABLED", default=True)
AUTHENTICATION_BACKENDS = [
    "accounts.backends.LocalLoginSwitch",  # refuses passwords while LOCAL_LOGIN_ENABLED is off
    "django.contrib.auth.backends.ModelBackend",
]

# Single sign-on (README, "Single sign-on"): OpenID Connect providers through django-allauth, each
# named in OIDC_PROVIDERS (ids: letters, digits, -) and configured by OIDC_<ID>_* variables (the id
# upper-cased, - as _): NAME (on the button), DISCOVERY_URL (the issuer, or its
# /.well-known/openid-configuration), CLIENT_ID, CLIENT_SECRET, SCOPES.
OIDC_PROVIDERS = env.list("OIDC_PROVIDERS", default=[])
# A person signing in for the first time gets an account (on), or is refused with a message and a
# log line (off: only people who have signed in before may).
OIDC_AUTO_CREATE = env.bool("OIDC_AUTO_CREATE", default=True)
# The claim (ID token or userinfo) that lists the user's groups, synced to Django groups at every
# sign-in (added and removed). Empty: groups are not synced.
OIDC_GROUPS_CLAIM = env("OIDC_GROUPS_CLAIM", default="groups")
# A value of the groups claim that makes the user staff (the admin), synced at every sign-in. Empty: none.
OIDC_STAFF_GROUP = env("OIDC_STAFF_GROUP", default="")


def _oidc_app(provider_id: str) -> dict:
    prefix = "OIDC_" + provider_id.upper().replace("-", "_") + "_"
    missing = [name for name in ("DISCOVERY_URL", "CLIENT_ID") if not env(prefix + name, default="")]
    if missing:
        names = ", ".join(prefix + name for name in missing)
        raise ImproperlyConfigured(f"OIDC_PROVIDERS lists {provider_id!r}: set {names}.")
    return {
        "provider_id": provider_id,
        "name": env(prefix + "NAME", default=provider_id),
        "client_id": env(prefix + "CLIENT_ID"),
        "secret": env(prefix + "CLIENT_SECRET", default=""),
        "settings": {
            "server_url": env(prefix + "DISCOVERY_URL"),
            "scope": env.list(prefix + "SCOPES", default=["openid", "email", "profile"]),
            "fetch_userinfo": True,
        },
    }


_OIDC_APPS = [_oidc_app(provider_id) for provider_id in OIDC_PROVIDERS]
# The login page's "Sign in with" forms post here, and the answer redirects to the provider: the
# Content-Security-Policy's form-action must allow the providers' origins (browsers check redirects).
CONTENT_SECURITY_POLICY["DIRECTIVES"]["form-action"] += sorted(
    {"{0.scheme}://{0.netloc}".format(urlsplit(app["settings"]["server_url"])) for app in _OIDC_APPS}
)
SOCIALACCOUNT_PROVIDERS = {
    # PKCE (S256) on every authorization request; state is checked by django-allauth, the ID token's
    # signature, issuer, audience and expiry by accounts.sso.
    "openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": _OIDC_APPS}
}
SOCIALACCOUNT_ADAPTER = "accounts.sso.SocialAccountAdapter"
ACCOUNT_ADAPTER = "accounts.sso.AccountAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_LOGIN_ON_GET = False  # the login page POSTs (with its CSRF token) to start a sign-in
SOCIALACCOUNT_STORE_TOKENS = False  # Parley calls no provider API: no tokens kept
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # never log into an existing account by a matching email
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# Redis: cache, channel layer and Celery broker.
REDIS_URL = env("REDIS_URL", default="") or _RUNNING["REDIS_URL"]
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

# Redis connections of the channel layer per Daphne process (Pub/Sub needs two per event loop: one
# subscribed, one publishing), and seconds a join, leave or event waits for a free one before failing.
CHANNEL_LAYER_MAX_CONNECTIONS = env.int("CHANNEL_LAYER_MAX_CONNECTIONS", default=100)
CHANNEL_LAYER_POOL_TIMEOUT = env.float("CHANNEL_LAYER_POOL_TIMEOUT", default=10.0)

CHANNEL_LAYERS = {
    "default": {
        # channels-redis's Redis Pub/Sub layer, with bounded channels, drops counted and Redis outages
        # told to the consumers (core.channel_layer).
        "BACKEND": "core.channel_layer.RedisChannelLayer",
        "CONFIG": {
            # Events one channel (a socket, an SSE stream) holds in its process while it is not read;
            # past that the oldest is dropped, counted, and the socket catches up from the stored
            # answer. A socket of a busy turn gets a token batch every 50 ms: 1,000 is ~50 s of lag.
            "capacity": env.int("CHANNEL_LAYER_CAPACITY", default=1000),
            # redis-py 8 reads with a 5 s socket timeout by default; the subscribed connection waits
            # longer than that between events of a quiet process.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 15,
                    "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                    "timeout": CHANNEL_LAYER_POOL_TIMEOUT,
                }
            ],
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
# Seconds before a task taken by a worker that died without acknowledging it is delivered again
# (acks_late); longer than any task runs, or a slow task would be run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
# Workers log through LOGGING below (JSON, request ids, redaction), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Document ingestion runs on its own queue, so one user's upload never waits in front of chat's
# memory and summary tasks or the sweeps (the Procfile's `ingest` worker consumes it).
CELERY_TASK_ROUTES = {"agents.document_ingest": {"queue": "ingestion"}}
KB_INGEST_SOFT_TIME_LIMIT = env.int("KB_INGEST_SOFT_TIME_LIMIT", default=600)  # seconds: then `failed`
KB_INGEST_HARD_TIME_LIMIT = env.int("KB_INGEST_HARD_TIME_LIMIT", default=KB_INGEST_SOFT_TIME_LIMIT + 60)  # killed
CELERY_TASK_ANNOTATIONS = {
    "agents.document_ingest": {
        "soft_time_limit": KB_INGEST_SOFT_TIME_LIMIT,
        "time_limit": KB_INGEST_HARD_TIME_LIMIT,
    }
}
# The ingest worker's child memory cap is its --max-memory-per-child (Procfile), not a setting here:
# a worker running chat turns (INFERENCE_EXECUTION=celery) holds a model that may be bigger.
# An ingestion records a sign of life this often (seconds); one silent for KB_INGEST_STALL_SECONDS lost
# its worker and is queued again (at most KB_INGEST_MAX_ATTEMPTS runs) by a sweep every
# DOCUMENTS_REQUEUE_SECONDS, which also queues documents uploaded while the broker was down.
KB_INGEST_HEARTBEAT_SECONDS = env.float("KB_INGEST_HEARTBEAT_SECONDS", default=15)
KB_INGEST_STALL_SECONDS = env.float("KB_INGEST_STALL_SECONDS", default=60)
KB_INGEST_MAX_ATTEMPTS = env.int("KB_INGEST_MAX_ATTEMPTS", default=3)
DOCUMENTS_REQUEUE_SECONDS = env.int("DOCUMENTS_REQUEUE_SECONDS", default=60)
# Seconds between two sweeps for answers orphaned by a dead process (Celery beat).
ORPHAN_SWEEP_SECONDS = env.int("ORPHAN_SWEEP_SECONDS", default=30)
# Seconds a new answer is never taken for an orphan (its lease is taken before it is stored; clocks differ).
GENERATION_ORPHAN_GRACE_SECONDS = env.float("GENERATION_ORPHAN_GRACE_SECONDS", default=10)
# Celery beat (the `beat` process): nightly usage retention (manage.py usage prune), orphaned answers.
CELERY_BEAT_SCHEDULE = {
    "usage-prune-nightly": {"task": "accounts.tasks.usage_prune_task", "schedule": crontab(hour=3, minute=30)},
    # Audit events older than AUDIT_RETENTION_DAYS (README, "Audit log"): the only way they are deleted.
    "audit-prune-nightly": {"task": "accounts.audit_prune", "schedule": crontab(hour=3, minute=45)},
    # Answers left streaming by a dead process (README, "Crashes and outages"). A run queued behind
    # a busy worker expires rather than piling up: the next one does the same work.
    # Documents uploaded while the broker was down, or whose worker died (README, "Crashes and outages").
    "documents-requeue": {
        "task": "agents.documents_requeue",
        "schedule": DOCUMENTS_REQUEUE_SECONDS,
        "options": {"expires": DOCUMENTS_REQUEUE_SECONDS},
    },
    "orphans-finalize": {
        "task": "chat.orphans_finalize",
        "schedule": ORPHAN_SWEEP_SECONDS,
        "options": {"expires": ORPHAN_SWEEP_SECONDS},
    },
}

# Reverse proxies in front of Parley. Above 0, /metrics also needs METRICS_TOKEN from loopback.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

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
    "EXCEPTION_HANDLER": "core.handlers.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    # Throttle state lives in the default cache (Redis), shared by every process.
    "DEFAULT_THROTTLE_RATES": {"login": env("RATE_LIMIT_LOGIN", default="10/min")},
    # RATE_LIMIT_USER per user, RATE_LIMIT_ANON per anonymous IP, on every view (accounts.throttling).
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.RequestRateThrottle"],
    # DRF's parsers, honouring DATA_UPLOAD_MAX_MEMORY_SIZE (413 payload_too_large beyond it).
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.JSONParser",
        "core.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # X-Forwarded-For is trusted only behind this many proxies; 0 uses the peer address (REMOTE_ADDR).
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}
# Arrays and objects nested deeper than this in a JSON body or WebSocket frame are refused (400
# parse_error; an error frame). Python's decoder fails at ~1,000 levels with a 500; Parley's own
# requests nest under 10, OpenAI's tool schemas rarely past 20.
REQUEST_JSON_MAX_DEPTH = env.int("REQUEST_JSON_MAX_DEPTH", default=64)

# Rate limits and quotas (README, "Rate limits and quotas"); rates as DRF's "N/s", "N/min", "N/hour", "N/day"
RATE_LIMIT_USER = env("RATE_LIMIT_USER", default="600/min")  # requests per authenticated user
RATE_LIMIT_ANON = env("RATE_LIMIT_ANON", default="200/min")  # requests per anonymous client IP
RATE_LIMIT_WS = env("RATE_LIMIT_WS", default="30/min")  # WebSocket message.send frames per user
# Open WebSockets (chat and /ws/documents/) per user across all processes; one more is closed
# at once with code 4429 (core.websocket). 0: no limit.
WS_MAX_CONNECTIONS_PER_USER = env.int("WS_MAX_CONNECTIONS_PER_USER", default=20)
GENERATION_CONCURRENCY = env.int("GENERATION_CONCURRENCY", default=2)  # generations per user at once; 0: no limit
GENERATION_LEASE_SECONDS = env.int("GENERATION_LEASE_SECONDS", default=60)  # a crashed process's slots free after
# An answer whose lease has been missing this long (seen on two sweeps) was orphaned by a dead
# process and is finalised (chat.tasks.orphans_finalize_task, every ORPHAN_SWEEP_SECONDS in beat).
# Longer than one renewal plus the Redis breaker's rest, so a live turn that lost its lease to a
# Redis restart has taken it again by then.
GENERATION_ORPHAN_CONFIRM_SECONDS = env.float(
    "GENERATION_ORPHAN_CONFIRM_SECONDS", default=GENERATION_LEASE_SECONDS / 3 + CACHE_RETRY_AFTER_ERROR
)
# Routing between a model's deployments (inference.routing): a deployment that fails
# ROUTING_COOLDOWN_FAILURES times (429, 5xx, connection errors, TTFT timeouts) within
# ROUTING_COOLDOWN_WINDOW_SECONDS is skipped by every process for ROUTING_COOLDOWN_SECONDS (a 429's
# Retry-After, when given, sets the cooldown at once). A request's in-flight entry lapses
# ROUTING_INFLIGHT_TTL_SECONDS after its process stopped renewing it (a crash).
ROUTING_COOLDOWN_FAILURES = env.int("ROUTING_COOLDOWN_FAILURES", default=3)
ROUTING_COOLDOWN_WINDOW_SECONDS = env.float("ROUTING_COOLDOWN_WINDOW_SECONDS", default=60.0)
ROUTING_COOLDOWN_SECONDS = env.float("ROUTING_COOLDOWN_SECONDS", default=30.0)
ROUTING_INFLIGHT_TTL_SECONDS = env.float("ROUTING_INFLIGHT_TTL_SECONDS", default=30.0)
# Seconds between two health probes of every deployment (Celery beat, inference.probes: GET /models
# of each OpenAI-compatible server; a failure counts towards the cooldown). 0: no probes.
ROUTING_PROBE_SECONDS = env.int("ROUTING_PROBE_SECONDS", default=60)
if ROUTING_PROBE_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["deployments-probe"] = {
        "task": "inference.deployments_probe",
        "schedule": ROUTING_PROBE_SECONDS,
        "options": {"expires": ROUTING_PROBE_SECONDS},
    }
# Webhooks (core.webhooks; README, "Webhooks"). Seconds between a failed attempt and the next:
# Standard Webhooks' suggested schedule (spec, "Retry schedule", from Svix: 5 s, 5 min, 30 min, 2 h,
# 5 h, 10 h, 10 h after the first attempt), no attempt later than WEBHOOK_RETRY_WINDOW_SECONDS after
# the first (the last is pulled in to it): 8 attempts over 24 h.
WEBHOOK_RETRY_SCHEDULE = env.list(
    "WEBHOOK_RETRY_SCHEDULE", cast=float, default=[5, 300, 1800, 7200, 18000, 36000, 36000]
)
WEBHOOK_RETRY_WINDOW_SECONDS = env.float("WEBHOOK_RETRY_WINDOW_SECONDS", default=86400)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10)  # per connect, write and read
# Seconds between two sweeps queueing due deliveries (Celery beat); retries sooner than this are
# Celery countdowns, later ones wait for a sweep.
WEBHOOK_SWEEP_SECONDS = env.int("WEBHOOK_SWEEP_SECONDS", default=60)
# Days a finished (succeeded or failed) delivery and its attempts are kept; the sweep deletes older ones.
WEBHOOK_DELIVERY_RETENTION_DAYS = env.int("WEBHOOK_DELIVERY_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE["webhooks-sweep"] = {
    "task": "core.webhooks_sweep",
    "schedule": WEBHOOK_SWEEP_SECONDS,
    "options": {"expires": WEBHOOK_SWEEP_SECONDS},
}
# A password change (any path: the user's page, the admin, a script) revokes the user's API keys,
# so a key minted from a stolen session does not outlive the reset (accounts.signals).
API_KEYS_REVOKE_ON_PASSWORD_CHANGE = env.bool("API_KEYS_REVOKE_ON_PASSWORD_CHANGE", default=True)
QUOTA_DAILY_TOKENS = env.int("QUOTA_DAILY_TOKENS", default=200_000)  # per user per UTC day; 0: unlimited

# Inference
LLM_DEFAULT_MODEL = env("LLM_DEFAULT_MODEL", default="")
LLAMA_MODEL_PATH = env("LLAMA_MODEL_PATH", default="")
# 0: llama-cpp-python decides (half the cores for generation, all of them for the prompt)
LLAMA_N_THREADS = env.int("LLAMA_N_THREADS", default=0)
LLAMA_N_CTX = env.int("LLAMA_N_CTX", default=0)  # 0: use each ModelConfig's context window
LLAMA_MAX_LOADED_MODELS = env.int("LLAMA_MAX_LOADED_MODELS", default=2)  # per process, least recently used out
INFERENCE_EXECUTION = env("INFERENCE_EXECUTION", default="inline")  # inline | celery
# Load and warm up the default local model in the background when the web server starts (inline only).
MODEL_PRELOAD = env.bool("MODEL_PRELOAD", default=True)
# With INFERENCE_EXECUTION=celery: how long a REST send waits for the worker's answer (seconds).
TURN_WAIT_SECONDS = env.int("TURN_WAIT_SECONDS", default=600)

# Chat
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=32_000)
# Images in chat and /v1 (README, "Images in chat"; each model's own caps are in its config).
IMAGE_MAX_BYTES = env.int("IMAGE_MAX_BYTES", default=10 * 1024 * 1024)  # one image as sent or uploaded, bytes
# Width x height of one image, read from its header before decoding: a decompression bomb is refused.
IMAGE_MAX_PIXELS = env.int("IMAGE_MAX_PIXELS", default=50_000_000)
IMAGE_MAX_PER_MESSAGE = env.int("IMAGE_MAX_PER_MESSAGE", default=8)
# /v1 image_url parts with http(s) URLs: fetched only when on; public addresses only, unless in the networks below.
IMAGE_URL_FETCH = env.bool("IMAGE_URL_FETCH", default=False)
IMAGE_URL_FETCH_TIMEOUT = env.float("IMAGE_URL_FETCH_TIMEOUT", default=10.0)  # seconds for the whole download
# CIDRs that may be fetched although private (e.g. an internal image host): "10.0.0.0/8,192.168.1.0/24".
IMAGE_URL_FETCH_ALLOWED_NETWORKS = env.list("IMAGE_URL_FETCH_ALLOWED_NETWORKS", default=[])
# A request body read into memory (JSON, form fields; files spool to disk): room for a base64 image
# of IMAGE_MAX_BYTES in a /v1 request or a message (base64 is 4/3 of the bytes). Django's default is 2.5 MiB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=16 * 1024 * 1024)
# Token batching on the channel layer: a batch is sent when its first delta is this old...
CHAT_TOKEN_BATCH_MS = env.int("CHAT_TOKEN_BATCH_MS", default=50)
# ...or when it holds this many deltas, whichever comes first.
CHAT_TOKEN_BATCH_SIZE = env.int("CHAT_TOKEN_BATCH_SIZE", default=16)
# Share links (/s/<token>/): true lets anyone with the link read it without logging in; false (the
# default) asks anonymous visitors to log in first (any logged-in user may then read it).
SHARE_PUBLIC = env.bool("SHARE_PUBLIC", default=False)
# Conversation imports (ChatGPT's export, Parley's own): the largest file accepted (bytes; a larger
# upload is refused with 413 before it is read), and the most messages one conversation may hold
# (a longer one is skipped, with the reason in the job's report).
IMPORT_MAX_BYTES = env.int("IMPORT_MAX_BYTES", default=50 * 1024 * 1024)
IMPORT_MAX_MESSAGES = env.int("IMPORT_MAX_MESSAGES", default=5_000)

# Logs: one readable line a record (LOG_FORMAT=console; local.py's default) or one JSON object a line
# (json; the default elsewhere, for log collectors), each record with the request id (core.log),
# secrets redacted before any handler writes (README, "Logs and metrics").
LOG_FORMATS = ("console", "json")


def log_format(default: str) -> str:
    """Return LOG_FORMAT (``console`` | ``json``; ``plain``, its former name, is ``console``), else ``default``.

    Raise ImproperlyConfigured for any other value.
    """
    value = env("LOG_FORMAT", default=default).strip().lower()
    value = "console" if value == "plain" else value
    if value not in LOG_FORMATS:
        raise ImproperlyConfigured(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {value!r}.")
    return value


LOG_FORMAT = log_format("json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "core.log.RequestIdFilter"},
        "redact": {"()": "core.log.RedactSecretsFilter"},
    },
    "formatters": {
        "console": {"()": "core.log.ConsoleFormatter"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id", "redact"]}
    },
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # The MCP SDK logs its session manager starting and stopping at INFO: /mcp runs one per request.
        "mcp": {"level": "WARNING"},
    },
}

# Prometheus: /metrics answers `Authorization: Bearer <METRICS_TOKEN>`; unset, only loopback.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# Usage retention (manage.py usage prune, nightly in Celery beat), in days.
USAGE_RECORD_RETENTION_DAYS = env.int("USAGE_RECORD_RETENTION_DAYS", default=30)
USAGE_DAILY_RETENTION_DAYS = env.int("USAGE_DAILY_RETENTION_DAYS", default=400)
# Audit events (accounts.AuditEvent) are deleted this many days after they happen (nightly, Celery beat).
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=365)

# Embeddings
# "local" (all-MiniLM-L6-v2, bundled, on CPU) or a model name on the OpenAI-compatible EMBEDDING_BASE_URL.
EMBEDDING_MODEL = env("EMBEDDING_MODEL", default="local")
EMBEDDING_BASE_URL = env("EMBEDDING_BASE_URL", default="")  # e.g. http://127.0.0.1:8080/v1
EMBEDDING_API_KEY_ENV = env("EMBEDDING_API_KEY_ENV", default="")  # NAME of the variable holding the key
EMBEDDING_DIMENSIONS = env.int("EMBEDDING_DIMENSIONS", default=384)  # vector length; 384 for "local"
# Load the local embedding model in the background when the web server starts (~13 s, ~0.5 GB).
EMBEDDING_PRELOAD = env.bool("EMBEDDING_PRELOAD", default=True)
# USD per million input tokens of /v1/embeddings requests, counted against money budgets (0: free).
EMBEDDING_PRICE_PER_MTOK = Decimal(env("EMBEDDING_PRICE_PER_MTOK", default="0"))

# Knowledge base and agents (agents app; README, "Knowledge base, memory and tools")
MEDIA_URL = "media/"  # uploads are never served directly: documents are read through the API
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(PARLEY_DATA_DIR / "media")))
# Uploaded files go through Django's storage API (default_storage, FileField): local disk under
# MEDIA_ROOT for one machine; with STORAGE_S3_BUCKET, an S3-compatible bucket (django-storages) that
# every web and worker machine reads, so none needs a shared disk (README, "Running on several machines").
STORAGE_S3_BUCKET = env("STORAGE_S3_BUCKET", default="")


def s3_storage(bucket: str) -> dict:
    """Return the ``STORAGES`` entry of ``bucket`` on S3 or an S3-compatible server (MinIO, Ceph, R2, ...).

    Objects are private (``STORAGE_S3_DEFAULT_ACL``, empty for servers without ACLs); a URL of one,
    were any made, is a pre-signed one that expires (``querystring_auth``), never a public custom
    domain. Credentials unset: boto3's own chain (``AWS_*`` variables, an instance role).
    """
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": env("STORAGE_S3_ENDPOINT_URL", default="") or None,
            "region_name": env("STORAGE_S3_REGION", default="") or None,
            "access_key": env("STORAGE_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env("STORAGE_S3_SECRET_ACCESS_KEY", default="") or None,
            "addressing_style": env("STORAGE_S3_ADDRESSING_STYLE", default="") or None,  # "path" | "virtual"
            "location": env("STORAGE_S3_PREFIX", default=""),  # a key prefix inside the bucket
            "default_acl": env("STORAGE_S3_DEFAULT_ACL", default="private") or None,
            "querystring_auth": True,
            "querystring_expire": env.int("STORAGE_S3_URL_EXPIRE_SECONDS", default=300),
            "custom_domain": None,
            "file_overwrite": False,  # names are generated; never replace an object silently
        },
    }


STORAGES = {
    "default": (
        s3_storage(STORAGE_S3_BUCKET)
        if STORAGE_S3_BUCKET
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
KB_MAX_UPLOAD_MB = env.int("KB_MAX_UPLOAD_MB", default=10)  # per uploaded document, MiB
# Budgets per document: characters of extracted text, and passages (each one embedded).
KB_MAX_DOCUMENT_CHARS = env.int("KB_MAX_DOCUMENT_CHARS", default=1_000_000)  # 0: no limit
KB_MAX_DOCUMENT_CHUNKS = env.int("KB_MAX_DOCUMENT_CHUNKS", default=2_000)  # 0: no limit
KB_DAILY_DOCUMENTS = env.int("KB_DAILY_DOCUMENTS", default=50)  # uploads per user per UTC day; 0: no limit
KB_CHUNK_TOKENS = env.int("KB_CHUNK_TOKENS", default=200)  # MiniLM word pieces per chunk (it reads 256 at most)
KB_CHUNK_OVERLAP = env.int("KB_CHUNK_OVERLAP", default=40)  # word pieces shared by consecutive chunks
KB_TOP_K = env.int("KB_TOP_K", default=4)  # passages retrieved per question
KB_MIN_SIMILARITY = env.float("KB_MIN_SIMILARITY", default=0.3)  # cosine; below it a passage is not used or cited
KB_HNSW_EF_SEARCH = env.int("KB_HNSW_EF_SEARCH", default=64)  # HNSW candidate list size at query time
AGENTS_INTENT_MODEL = env("AGENTS_INTENT_MODEL", default="")  # model slug classifying what rules cannot; "" = rules
AGENTS_MAX_TOOL_CALLS = env.int("AGENTS_MAX_TOOL_CALLS", default=3)  # per turn
AGENTS_MEMORY_TOP_K = env.int("AGENTS_MEMORY_TOP_K", default=3)  # memories recalled per question
# Whether NEW users start with memory on (accounts.models.memory_enabled_default); existing users keep
# theirs. Off by default: recalled memories change the prompt, so repeated questions miss the llm cache.
MEMORY_DEFAULT_ENABLED = env.bool("MEMORY_DEFAULT_ENABLED", default=False)
AGENTS_SUMMARY_EVERY_PAIRS = env.int("AGENTS_SUMMARY_EVERY_PAIRS", default=10)  # 0: no summaries
AGENTS_SUMMARY_MAX_TOKENS = env.int("AGENTS_SUMMARY_MAX_TOKENS", default=200)
# MCP tool servers (agents.mcp): seconds a server's tool list is kept per process; characters of a
# tool result given to the model and stored (longer ones are cut, with a note).
MCP_TOOLS_CACHE_SECONDS = env.int("MCP_TOOLS_CACHE_SECONDS", default=60)
MCP_RESULT_MAX_CHARS = env.int("MCP_RESULT_MAX_CHARS", default=8000)

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
# /health/ready/ probes the backends at most once per this many seconds per process, and answers
# anonymous callers at most RATE_LIMIT_HEALTH times per client IP per process (empty: no limit).
HEALTH_READY_CACHE_SECONDS = env.float("HEALTH_READY_CACHE_SECONDS", default=1.0)
RATE_LIMIT_HEALTH = env("RATE_LIMIT_HEALTH", default="60/min")
HEALTH_CELERY_TIMEOUT = env.float("HEALTH_CELERY_TIMEOUT", default=1.0)
# Whether readiness fails without a Celery worker: by default only when turns run in Celery.
HEALTH_CELERY_REQUIRED = env.bool("HEALTH_CELERY_REQUIRED", default=INFERENCE_EXECUTION == "celery")
# Seconds a web process given SIGTERM (python -m config.web) lets its running turns and requests
# finish before it ends the turns left with their partial text and exits (README, "Stopping").
WEB_STOP_GRACE_SECONDS = env.float("WEB_STOP_GRACE_SECONDS", default=25.0)

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
    # No badge from the online validator (validator.swagger.io): the page loads nothing off-site.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Choice sets that share a field name ("status") get names of their own.
    "ENUM_NAME_OVERRIDES": {
        "CacheStatusEnum": ["ok", "degraded"],
        # A message's status, in MessageOutput and MessageNodeOutput alike: one enum, its name from before.
        "MessageOutputStatusEnum": "chat.models.MessageStatus",
    },
    # An example for every request and response body (core.schema_examples), after the enum hook.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema_examples.add_missing_examples",
    ],
}
