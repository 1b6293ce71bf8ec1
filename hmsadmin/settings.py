"""Settings for HMS Bus Admin, read from the environment with safe local defaults.

Every variable is listed here, once, with its default and what it does (a test checks that
each one the settings read is). App modules read ``django.conf.settings`` when they run,
never at import time.

Environment:
- ``SECRET_KEY``: required when ``DEBUG`` is off.
- ``DEBUG``: ``1`` for local development (the default), ``0`` in production.
- ``ALLOWED_HOSTS``: comma-separated host names.
- ``VAR_DIR``: where local state lives: the SQLite database, a local Redis (default ``var/`` in the checkout).
- ``DATABASE_URL``: default SQLite under ``VAR_DIR``; PostgreSQL in production
  (``postgres://user@host:5432/name``).
- ``DATABASE_POOL_SIZE``: PostgreSQL connections a process keeps open (default 20; 0 turns the pool off).
- ``DATABASE_PREPARED_STATEMENTS``: PostgreSQL only: ``0`` turns server-side prepared statements off (default on;
  off only behind a pooler in transaction mode that cannot keep them, such as PgBouncer before 1.21).
- ``DATABASE_CONN_MAX_AGE``: seconds Django keeps a connection without the pool (default 0: one per request).
- ``SQLITE_WAL_AUTOCHECKPOINT``: SQLite only: WAL pages before a writer checkpoints itself (default 10,000;
  the bus worker checkpoints every second, so publishers rarely do).
- ``LOG_LEVEL``: the ``busapp`` loggers' level (default ``INFO``).
- ``REDIS_URL``: the bus (default ``redis://127.0.0.1:6379/0``).
- ``CHANNEL_LAYER_URL``: the Redis of the Channels layer, Pub/Sub (default: ``REDIS_URL`` with database 1).
- ``REDIS_SENTINELS``: comma-separated ``host:port`` of Redis Sentinels (default none). When set, the bus
  and the Channels layer ask them for the master of ``REDIS_SENTINEL_MASTER`` and follow it through a
  failover; the host and port of ``REDIS_URL`` and ``CHANNEL_LAYER_URL`` are then not used, their
  database number, user name and password are.
- ``REDIS_SENTINEL_MASTER``: the service name the Sentinels monitor (``sentinel monitor <name> ...``);
  required with ``REDIS_SENTINELS``.
- ``BUS_STREAM_MAXLEN``: events a new topic keeps in its Redis stream (``XADD MAXLEN ~``; default 100,000).
- ``BUS_CLAIM_IDLE_MS``: a bus worker's stream entries left unacknowledged this long are taken over by
  another worker (default 60,000: a stopped worker's share is recorded about a minute late, never lost).
- ``BUS_RELAY_GRACE_SECONDS``: how long the web's own send has before the relay may send an event too
  (default 5).
- ``BUS_SENT_MARK_SECONDS``: how long Redis remembers, at least, that an event was sent, so a resend
  publishes nothing (default 3600).
- ``BUS_BATCH_CONCURRENCY``: batch API requests a web process serves at once; more wait their turn
  (default 2).
- ``BUS_STORE``: how the app writes its hot rows (``busapp/store``): ``sql`` (the default) runs each
  database's own statements, ``orm`` plain Django, the slower oracle the tests compare them with.
- ``AXES_ENABLED``: sign-in throttling on ``/accounts/login/`` and ``/admin/login/`` (django-axes), on by default;
  ``0`` turns it off (only for a test setup that signs in with wrong passwords on purpose).
- ``AXES_FAILURE_LIMIT``: failed sign-ins for one account, or from one address, before sign-in is refused there
  (default 10).
- ``AXES_COOLOFF_MINUTES``: how long a lock-out lasts after the last failed attempt (default 15).
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

import datetime as dt
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
import django_stubs_ext
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url as parse_redis_url

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


def _redis_sentinels(value: str) -> list[tuple[str, int]]:
    """Parse ``REDIS_SENTINELS`` (``host:port,host:port``, IPv6 as ``[::1]:26379``) into (host, port) pairs."""
    sentinels = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            parts = urlsplit(f"//{item}")
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or port is None:
            raise ImproperlyConfigured(f"REDIS_SENTINELS: {item!r} is not host:port (e.g. 10.0.0.5:26379)")
        sentinels.append((host, port))
    return sentinels


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

# Django's generic classes (ModelAdmin[Topic], ModelForm[...]) subscriptable at run time, as django-stubs types them.
django_stubs_ext.monkeypatch()

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
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "busapp",
]

# Scripts and styles come only from our own static files (django-csp): an event payload that
# smuggles markup into a page can neither run script nor load anything. The Django admin keeps
# its own (inline) ways, so its pages are left as Django serves them. SecurityMiddleware adds
# Referrer-Policy: same-origin and X-Content-Type-Options: nosniff (Django's defaults).
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/admin/"],
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

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
    "csp.middleware.CSPMiddleware",
    "busapp.middleware.RefusedWriteAuditMiddleware",
    # Last, as django-axes asks: it turns a sign-in it refused into the lock-out page.
    "axes.middleware.AxesMiddleware",
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
    # The bus worker checkpoints the WAL every second; a writer does it itself only once the WAL
    # holds SQLITE_WAL_AUTOCHECKPOINT pages (SQLite's default, 1,000, made every 55th publish
    # pay for a checkpoint and its two fsyncs: bench/README.md).
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
    # Django then has the pool check a connection (a round trip) before a request gets it: one whose
    # session was terminated (a PostgreSQL restart or failover, pg_terminate_backend) is replaced,
    # not handed over to fail that request with a 500.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
_postgresql = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if _postgresql and _env_bool("DATABASE_PREPARED_STATEMENTS", True):
    # Django turns psycopg's prepared statements off; the store's hot statements ask for them
    # (planning the publish's lookup cost 0.27 ms, more than running it: bench/README.md).
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
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
    # First: it refuses a locked-out account or address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# Sign-in throttling (django-axes): AXES_FAILURE_LIMIT failed sign-ins for one account, or from one
# address (either alone), and sign-in is refused there, with a page saying when to try again, until
# AXES_COOLOFF_MINUTES pass without another failure. Each lock-out is written to the audit log
# (busapp.signin). The address is REMOTE_ADDR: behind a proxy, uvicorn's --proxy-headers sets it from
# X-Forwarded-For for the proxies --forwarded-allow-ips trusts.
AXES_ENABLED = _env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = _env_int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = dt.timedelta(minutes=_env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_LOCKOUT_CALLABLE = "busapp.views.signin.locked_out"
# A success does not clear the failures counted: otherwise signing in to one's own account between
# guesses would reset an address's count of failures on other accounts.
AXES_RESET_ON_SUCCESS = False
# The audit log is the product's trail; axes keeps only the failures it counts, not every sign-in.
AXES_DISABLE_ACCESS_LOG = True
# Deleting a counted attempt there would lift a lock-out with no audit entry; it ends by itself.
AXES_ENABLE_ADMIN = False

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
REDIS_SENTINELS = _redis_sentinels(os.environ.get("REDIS_SENTINELS", ""))
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "")
if REDIS_SENTINELS and not REDIS_SENTINEL_MASTER:
    raise ImproperlyConfigured("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: set the service name")
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
if REDIS_SENTINELS:
    # channels-redis builds a Sentinel connection pool from "sentinels" and "master_name"; the
    # rest of the host's keys (database, credentials, timeouts) go to each connection it makes.
    _layer_url = parse_redis_url(CHANNEL_LAYER_URL)
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [  # type: ignore[index]
        {
            "sentinels": REDIS_SENTINELS,
            "master_name": REDIS_SENTINEL_MASTER,
            "db": _layer_url.get("db", 0),
            "username": _layer_url.get("username"),
            "password": _layer_url.get("password"),
            "socket_timeout": 10,
            # Each Sentinel asked once (redis-py's default retries one that is down for 4 s).
            "sentinel_kwargs": {"socket_connect_timeout": 1, "socket_timeout": 1, "retry": AsyncRetry(NoBackoff(), 0)},
        }
    ]
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
# How long Redis remembers, at least, that an event was sent (its mark, a field of the hash
# ``hms:sent:<period>``, about 120 bytes; marks are kept one to two periods): a resend within this
# time publishes nothing. It must outlast the longest a sender can wait for a
# reply it then loses, plus the relay's retries (seconds to a minute); an hour leaves room for an
# operator to restore a stalled Redis. Memory: at most about 240 bytes x events per second x this.
BUS_SENT_MARK_SECONDS = _env_int("BUS_SENT_MARK_SECONDS", 3600)
# Batch requests a process serves at once; more wait their turn. Python runs one thread at a
# time, so 8 at once only fought over it (the writer holding SQLite's lock was slowed most);
# one at a time left the process idle while its batch waited on the database or Redis. Two
# published the most with 8 API clients (bench/README.md, api.py).
BUS_BATCH_CONCURRENCY = _env_int("BUS_BATCH_CONCURRENCY", 2)
BUS_STORE = os.environ.get("BUS_STORE", "sql")
if BUS_STORE not in ("sql", "orm"):
    raise ImproperlyConfigured(f"BUS_STORE must be sql or orm, not {BUS_STORE!r}")

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
    # Events, dead letters and receipts each have a "status": each choice set gets its own component name.
    "ENUM_NAME_OVERRIDES": {
        "EventStatusEnum": "busapp.models.EventStatus",
        "DeadLetterStatusEnum": "busapp.models.DeadLetterStatus",
        "ReceiptStatusEnum": "busapp.models.ReceiptStatus",
        # The registry's event types (model fields) and its bodies (choice fields) share these.
        "CompatibilityModeEnum": "busapp.models.CompatibilityMode",
        "CompatibilityPolicyEnum": "busapp.models.CompatibilityPolicy",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"busapp": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")}},
}
