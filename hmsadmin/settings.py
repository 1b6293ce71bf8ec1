"""Settings for HMS Bus Admin, read from the environment with safe local defaults.

Environment:
- ``SECRET_KEY``: required when ``DEBUG`` is off.
- ``DEBUG``: ``1`` for local development (the default), ``0`` in production.
- ``ALLOWED_HOSTS``: comma-separated host names.
- ``DATABASE_URL``: default SQLite under ``var/``; PostgreSQL in production
- ``DATABASE_POOL_SIZE``: PostgreSQL connections a process keeps open (default 20; 0 turns the pool off)
  (``postgres://user@host:5432/name``).
- ``REDIS_URL``: the bus (default ``redis://127.0.0.1:6379/0``).
- ``CHANNEL_LAYER_URL``: the Redis of the Channels layer, Pub/Sub (default: ``REDIS_URL`` with database 1).
- ``BUS_STREAM_MAXLEN``: events a new topic keeps in its Redis stream (``XADD MAXLEN ~``).
- ``CSRF_TRUSTED_ORIGINS``: comma-separated origins (``https://bus.example.gov``, scheme, host and port) other
  than the page's own from which forms may be posted and websockets opened.
- ``METRICS_TOKEN``: every ``/metrics`` scraper presents it (``Authorization: Bearer ...``), on this machine too.
- ``METRICS_ALLOW_LOOPBACK``: ``1`` serves ``/metrics`` to 127.0.0.1/::1 without a token (default: on only
  with ``DEBUG=1`` and no ``METRICS_TOKEN``; refused together with a token). Behind a proxy on the same
  machine every request is loopback: use a token.
- ``SECURE_HSTS_SECONDS``: Strict-Transport-Security max-age on HTTPS responses (default 31536000 with
  ``DEBUG=0``, 0 with ``DEBUG=1``).
- ``SECURE_HSTS_INCLUDE_SUBDOMAINS``, ``SECURE_HSTS_PRELOAD``: the header's ``includeSubDomains`` and
  ``preload`` (default on with ``DEBUG=0``; set ``0`` if a subdomain still serves plain HTTP).
- ``SECURE_SSL_REDIRECT``: ``1`` redirects plain HTTP to HTTPS (default off: the proxy usually does).
- ``SECURE_PROXY_SSL_HEADER``: the header a TLS-ending proxy sets to ``https``, as Django's META names it
  (``HTTP_X_FORWARDED_PROTO``); set it only if the proxy always sets or strips that header.
- ``USE_X_FORWARDED_HOST``: ``1`` takes the host from the proxy's ``X-Forwarded-Host`` (default off).
"""

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(exist_ok=True)


def _env_bool(name: str, default: bool) -> bool:
    """Read a boolean from the environment: 1/true/yes/on are true."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    """Read an integer from the environment, naming the variable when it is not one."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None


def _redis_url_with_db(url: str, db: int) -> str:
    """Return the Redis URL with its database index replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


DEBUG = _env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is not set: set it in the environment (DEBUG=0)")
    SECRET_KEY = "django-insecure-local-development-only-set-SECRET_KEY-in-production"  # noqa: S105

ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin.strip() for origin in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if origin.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "guardian",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "busapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "busapp.middleware.NulInAddressMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "busapp.middleware.ContentSecurityPolicyMiddleware",
    "busapp.middleware.RefusedWriteAuditMiddleware",
]

ROOT_URLCONF = "hmsadmin.urls"
WSGI_APPLICATION = "hmsadmin.wsgi.application"
ASGI_APPLICATION = "hmsadmin.asgi.application"

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
                "busapp.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=_env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the bus worker write at once: WAL lets readers run beside the
    # writer, IMMEDIATE takes the write lock at BEGIN (no lock-upgrade deadlocks, and
    # it serializes the audit chain), and the timeout waits instead of failing.
    # Threads of one process queue for the write lock instead of polling for it (hmsadmin/sqlite).
    # The bus worker checkpoints the WAL every second; a writer does it itself only once the WAL
    # holds SQLITE_WAL_AUTOCHECKPOINT pages (SQLite's default, 1,000, made every 55th publish
    # pay for a checkpoint and its two fsyncs: bench/README.md).
    DATABASES["default"]["ENGINE"] = "hmsadmin.sqlite"
    DATABASES["default"]["OPTIONS"] = {
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            f"PRAGMA wal_autocheckpoint={_env_int('SQLITE_WAL_AUTOCHECKPOINT', 10_000)};"
        ),
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and _env_int("DATABASE_POOL_SIZE", 20):
    # Under ASGI every request runs in a thread of its own, so a connection never outlives its
    # request whatever CONN_MAX_AGE says: each request started a new PostgreSQL backend (about
    # 10 ms of server CPU). psycopg's pool keeps them open (bench/README.md, api.py).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool, not Django, keeps connections
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": _env_int("DATABASE_POOL_SIZE", 20),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# Per-topic rights belong to signed-in people and service tokens, never to anonymous.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# Locally the app serves static files straight from their folders; production runs
# collectstatic once and serves hashed, compressed copies (cached forever by browsers).
STATICFILES_BACKEND = (
    "django.contrib.staticfiles.storage.StaticFilesStorage"
    if DEBUG
    else "whitenoise.storage.CompressedManifestStaticFilesStorage"
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": STATICFILES_BACKEND},
}
WHITENOISE_USE_FINDERS = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG

# HTTPS in production (DEBUG=0). Django sends HSTS on HTTPS responses only; behind a proxy that
# ends TLS, SECURE_PROXY_SSL_HEADER is how it knows a request came in over HTTPS.
SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
# Off unless asked: the proxy in front usually redirects, and Django redirecting without knowing
# the proxy's scheme (SECURE_PROXY_SSL_HEADER) would send every request round in a loop.
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", False)
_proxy_ssl_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_ssl_header and not re.fullmatch(r"HTTP_[A-Z0-9_]+", _proxy_ssl_header):
    raise ImproperlyConfigured(
        f"SECURE_PROXY_SSL_HEADER={_proxy_ssl_header!r}: name the header as Django's request.META does,"
        " e.g. HTTP_X_FORWARDED_PROTO for X-Forwarded-Proto"
    )
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header, "https") if _proxy_ssl_header else None
USE_X_FORWARDED_HOST = _env_bool("USE_X_FORWARDED_HOST", False)

# The bus.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYER_URL = os.environ.get("CHANNEL_LAYER_URL", _redis_url_with_db(REDIS_URL, 1))
CHANNEL_LAYERS = {
    "default": {
        # Pub/Sub: a group message is one PUBLISH, read once per web process and handed to its
        # sockets in memory. The list-based layer wrote a copy per socket and each process read
        # them one BZPOPMIN at a time: 50 live pages of a topic meant 50 copies and 50 reads per
        # batch, and the last page heard of it tens of ms after the first (bench/README.md,
        # live.py). A message sent while Redis is away is lost either way; history has it.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Upper case, which topic names never are: no layer channel can be a topic's channel. A
        # Redis that has not answered in 10 s is taken for gone (the connection is made again).
        "CONFIG": {"hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 10}], "prefix": "HMS.live."},
    }
}
BUS_STREAM_MAXLEN = _env_int("BUS_STREAM_MAXLEN", 100_000)
BUS_MAX_PAYLOAD_BYTES = 64 * 1024
# A worker's stream entries left unacknowledged this long are taken over by another.
BUS_CLAIM_IDLE_MS = _env_int("BUS_CLAIM_IDLE_MS", 60_000)
# /metrics: with a token, every scraper presents it (Authorization: Bearer ...), loopback too;
# a peer's address proves nothing behind a proxy on the same machine.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
METRICS_ALLOW_LOOPBACK = _env_bool("METRICS_ALLOW_LOOPBACK", DEBUG and not METRICS_TOKEN)
if METRICS_TOKEN and METRICS_ALLOW_LOOPBACK:
    raise ImproperlyConfigured(
        "METRICS_ALLOW_LOOPBACK=1 and METRICS_TOKEN are both set: with a token every scraper presents it;"
        " unset one of them"
    )
# How long the web's own after-commit send has before the relay may send an event too.
BUS_RELAY_GRACE_SECONDS = _env_int("BUS_RELAY_GRACE_SECONDS", 5)
# Batch requests a process serves at once; more wait their turn. Python runs one thread at a
# time, so 8 at once only fought over it (the writer holding SQLite's lock was slowed most);
# one at a time left the process idle while its batch waited on the database or Redis. Two
# published the most with 8 API clients (bench/README.md, api.py).
BUS_BATCH_CONCURRENCY = _env_int("BUS_BATCH_CONCURRENCY", 2)

# The JSON API under /api/: services send a bearer token, browsers their session (with CSRF).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First: its WWW-Authenticate header makes a request without credentials a 401.
        "busapp.api.authentication.ServiceTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["busapp.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "busapp.api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HMS Bus Admin API",
    "DESCRIPTION": "Publish events to the HMS event bus over HTTP and read its topics and schemas.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from the installed sidecar package, not a CDN: the pages' CSP allows only 'self'.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Events and dead letters both have a "status": each choice set gets its own component name.
    "ENUM_NAME_OVERRIDES": {
        "EventStatusEnum": "busapp.models.EventStatus",
        "DeadLetterStatusEnum": "busapp.models.DeadLetterStatus",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"busapp": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")}},
}
