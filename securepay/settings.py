"""All settings, read from the environment in this one place.

With no variable set this is the embedded demo profile: SQLite in the checkout,
in-memory channel layer, Celery eager, in-process vault and media worker,
sandbox gateway, console e-mail. The production profile is chosen by the
variables themselves: DEBUG=0 plus DATABASE_URL, REDIS_URL, SECRET_KEY, ...
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default) or default


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", True)

# A demo key is only ever acceptable in DEBUG; production must bring its own.
SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "demo-only-insecure-key-" + "x" * 40

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
SITE_URL = envstr("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Redoc served from our static files: nothing loads from a CDN
    "tenants",
    "securepay",
    "gateways",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.middleware.TenantMiddleware",
    "tenants.middleware.IdleSessionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "securepay.urls"
ASGI_APPLICATION = "securepay.asgi.application"

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
                "django.template.context_processors.i18n",
                "tenants.context_processors.tenant",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DB_CONN_MAX_AGE", 0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, vault, cache, Celery -------------------------------
REDIS_URL = envstr("REDIS_URL")

if REDIS_URL:
    # RedisPubSubChannelLayer, not RedisChannelLayer: the latter silently drops
    # group messages past its per-channel capacity (measured ~600 msg/s); the
    # pub/sub layer carried our load with no loss. Every masked-state message
    # also carries the whole state and a sequence number, so a loss would heal.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "securepay",
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
# No broker: run tasks in the calling process (demo and plain unit tests).
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"  # never pickle: a Card refuses pickling anyway
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # a crashed worker's task is redelivered, not lost
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# Keep Django's LOGGING (and its card-data filter) in workers: Celery would replace the root handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 300)}

# --- vault --------------------------------------------------------------------
# 32-byte AES-256-GCM key, urlsafe base64. Only media workers and gateway
# workers need it; the web tier never reads the vault.
# Deliberately not required at start-up: Daphne processes run without it.
VAULT_KEY = envstr("VAULT_KEY")
VAULT_TTL_SECONDS = min(envint("VAULT_TTL_SECONDS", 600), 900)

# --- gateways and webhooks -------------------------------------------------------
# Fernet key for gateway credentials at rest; derived from SECRET_KEY in DEBUG only.
GATEWAY_CREDENTIALS_KEY = envstr("GATEWAY_CREDENTIALS_KEY")
# Pauses between in-process retries of one gateway call (the card stays in memory only).
GATEWAY_RETRY_DELAYS = tuple(float(v) for v in envlist("GATEWAY_RETRY_DELAYS", "0.5,1,2"))
GATEWAY_RECONCILE_RETRY_SECONDS = float(envstr("GATEWAY_RECONCILE_RETRY_SECONDS", "30"))
WEBHOOK_RETRY_BASE_SECONDS = float(envstr("WEBHOOK_RETRY_BASE_SECONDS", "30"))
# Callback URLs that resolve to private, loopback or link-local addresses are refused
# in production (a tenant must not make our workers probe our own network).
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = envbool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", DEBUG)
# Recovery sweep (gateways.recovery): unfinished work older than this is presumed to
# have lost its Celery message and is sent again. Longer than a charge takes, and
# shorter than VAULT_TTL_SECONDS so a lost charge still finds its card.
RECOVERY_STALE_SECONDS = envint("RECOVERY_STALE_SECONDS", 120)
RECOVERY_SWEEP_SECONDS = envint("RECOVERY_SWEEP_SECONDS", 60)
# For `celery -A securepay beat`; a sweep not started within its period is superseded by the next.
CELERY_BEAT_SCHEDULE = {
    "recover-stuck-work": {
        "task": "gateways.tasks.recover_stuck_work",
        "schedule": float(RECOVERY_SWEEP_SECONDS),
        "options": {"expires": float(RECOVERY_SWEEP_SECONDS)},
    },
}

# --- auth -------------------------------------------------------------------
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
LOGIN_FAILURE_WINDOW_SECONDS = envint("LOGIN_FAILURE_WINDOW_SECONDS", 900)
AGENT_IDLE_TIMEOUT_SECONDS = envint("AGENT_IDLE_TIMEOUT_SECONDS", 1800)
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", 12 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- security (production profile) ----------------------------------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- i18n -------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

# --- static -----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- e-mail and SMS -------------------------------------------------------------
EMAIL_BACKEND = envstr(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if envstr("EMAIL_HOST")
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "SecurePay <no-reply@securepay.invalid>")

# --- media worker ---------------------------------------------------------------
# "inprocess": the demo runs the media worker inside the ASGI process.
MEDIA_WORKER_MODE = envstr("MEDIA_WORKER_MODE", "inprocess" if DEBUG and not REDIS_URL else "external")
MEDIA_RTP_HOST = envstr("MEDIA_RTP_HOST", "127.0.0.1")
MEDIA_RTP_PORT_MIN = envint("MEDIA_RTP_PORT_MIN", 40000)
MEDIA_RTP_PORT_MAX = envint("MEDIA_RTP_PORT_MAX", 49999)
# Which worker the control API sends calls to (channel media.worker.<id>), and how
# long a call may go without RTP before it is torn down and its session unsecured.
MEDIA_WORKER_ID = envstr("MEDIA_WORKER_ID", "main")
MEDIA_RTP_TIMEOUT_SECONDS = envint("MEDIA_RTP_TIMEOUT_SECONDS", 30)
# A media worker that has not signed of life for this long is gone: the recovery sweep
# ends its calls and unsecures its sessions (workers beat every few seconds).
MEDIA_WORKER_LOST_SECONDS = envint("MEDIA_WORKER_LOST_SECONDS", 60)
# A worker gets no new call while its process used this share of a core (measured
# between its beats), nor past this many live calls (0: no cap). Near a full core
# every call's audio is late (bench/media_worker.py: p99 over 40 ms past ~80%).
MEDIA_WORKER_MAX_LOAD = float(envstr("MEDIA_WORKER_MAX_LOAD", "0.7"))
if not 0 < MEDIA_WORKER_MAX_LOAD <= 1:
    raise ImproperlyConfigured("MEDIA_WORKER_MAX_LOAD is a share of one core: above 0, at most 1 (e.g. 0.7)")
MEDIA_WORKER_MAX_CALLS = envint("MEDIA_WORKER_MAX_CALLS", 0)
if MEDIA_WORKER_MAX_CALLS < 0:
    raise ImproperlyConfigured("MEDIA_WORKER_MAX_CALLS is a number of calls, 0 for no cap")
# The keypad simulator stands in for a phone; it is never routed in production.
# Never in production, whatever the environment says: it types digits into sessions.
KEYPAD_SIMULATOR_ENABLED = DEBUG and envbool("KEYPAD_SIMULATOR_ENABLED", True)

# --- REST API -------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.api_auth.IsTenantMember"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SecurePay API",
    "DESCRIPTION": "Agent-assisted phone payments. Authenticate with `Authorization: Bearer <api key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
}

# --- logging ------------------------------------------------------------------
LOG_LEVEL = envstr("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"card_data": {"()": "securepay.log_filters.CardDataFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["card_data"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # stripe-python logs whole request bodies (card fields included) at DEBUG: never below WARNING.
        "stripe": {"level": "WARNING"},
    },
}
