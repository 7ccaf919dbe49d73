"""Django settings for the CuteMarkets gateway, read from the environment (12-factor).

Every deployment-specific value comes from an environment variable with a safe local default, and a
misconfigured production setting raises ``ImproperlyConfigured`` at start-up rather than at the first request.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from cutemarkets import redis_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}.")


def env_float(name: str, default: float, allow_zero: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}.") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ImproperlyConfigured(f"{name} must be {'zero or ' if allow_zero else ''}positive, got {raw!r}.")
    return value


def env_port(name: str, default: int) -> int:
    """A TCP port number; 0 lets the system pick a free one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 65535:
        raise ImproperlyConfigured(f"{name} must be a port number from 0 to 65535, got {raw!r}.")
    return int(raw)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def is_strong_secret_key(key: str) -> bool:
    """Django's own rule for a secret key (``check --deploy``'s security.W009), from its own constants: a weak key
    makes signed sessions, password reset links and CSRF tokens guessable."""
    return (
        len(key) >= SECRET_KEY_MIN_LENGTH
        and len(set(key)) >= SECRET_KEY_MIN_UNIQUE_CHARACTERS
        and not key.startswith(SECRET_KEY_INSECURE_PREFIX)
    )


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(for local development set DJANGO_DEBUG=1, as `make run` does)."
        )
    SECRET_KEY = "insecure-local-development-key-never-use-in-production"
elif not DEBUG and not is_strong_secret_key(SECRET_KEY):
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY is too weak for DJANGO_DEBUG off: it needs at least {SECRET_KEY_MIN_LENGTH} characters, "
        f"at least {SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them distinct, and must not start with "
        f"{SECRET_KEY_INSECURE_PREFIX!r} (generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is set but empty.")

# DJANGO_HTTPS declares that TLS ends at a proxy that sends X-Forwarded-Proto; without it (local runs) plain HTTP is
# served as it is. The probes need no SECURE_REDIRECT_EXEMPT: cutemarkets.probes answers them before
# SecurityMiddleware, so they never redirect and work over plain HTTP.
HTTPS = env_bool("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = int(env_float("DJANGO_HSTS_SECONDS", 365 * 24 * 3600, allow_zero=True))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "accounts",
    "streaming",
]

MIDDLEWARE = [
    "cutemarkets.probes.OperatorEndpointsMiddleware",  # /healthz, /readyz, /metrics: before the Host check
    "django.middleware.security.SecurityMiddleware",
    "cutemarkets.static_files.AsgiWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires: turns a lockout into its page
]

ROOT_URLCONF = "cutemarkets.urls"
ASGI_APPLICATION = "cutemarkets.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

LOCAL_DATA_DIR = BASE_DIR / "var"  # SQLite files and collected static files of a local checkout (git-ignored).

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{LOCAL_DATA_DIR / 'db.sqlite3'}",
        # Persistent: the gateway reads the database from a few worker threads, and a new connection per cold key
        # cost more than the query (PostgreSQL: a TCP and auth handshake). Checked before reuse.
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # End-to-end tests run daphne in a child process: the test database must be a file both can open.
    LOCAL_DATA_DIR.mkdir(exist_ok=True)
    # One file per test run (named by the pytest process), so that concurrent runs in one checkout never collide.
    DATABASES["default"]["TEST"] = {"NAME": str(LOCAL_DATA_DIR / f"test-db-{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: a locked-out login is refused before its password is checked
    "django.contrib.auth.backends.ModelBackend",
]

# Admin login lockouts (django-axes, attempts in the database): AXES_FAILURE_LIMIT failed logins for one username from
# one address lock that pair out for the cool-off, which each further attempt restarts; the same username from other
# addresses, and other usernames, still log in. The address is REMOTE_ADDR as daphne reports it (axes' own default):
# the peer's, or behind the balancer (--proxy-headers, deploy/entrypoint.sh) the forwarded one, the same address the
# stream's per-address budgets count.
AXES_FAILURE_LIMIT = int(env_float("AXES_FAILURE_LIMIT", 5))
AXES_COOLOFF_TIME = timedelta(minutes=env_float("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a login clears that pair's earlier failures
AXES_ENABLE_ACCESS_FAILURE_LOG = True  # every failure stays on record after its lockout is cleared
AXES_LOCKOUT_TEMPLATE = "accounts/lockout.html"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or LOCAL_DATA_DIR / "static")
# Production serves collected, hashed and compressed files itself (WhiteNoise); debug serves them from the apps.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # empty until collectstatic; WhiteNoise warns about a missing one

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
# Set REDIS_SENTINELS (and REDIS_SENTINEL_MASTER) to follow a Sentinel-monitored master instead of REDIS_URL.
REDIS_SENTINEL = redis_config.sentinel_from_env(os.environ)

# Redis reads block for up to 5 s in channels-redis (BRPOP); redis-py would time such reads out at 5 s by default.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 30.0)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": redis_config.cache_location(REDIS_URL, REDIS_SENTINEL),
        "KEY_PREFIX": "cm",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
            **redis_config.cache_options(REDIS_SENTINEL),
        },
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [redis_config.channel_layer_host(REDIS_URL, REDIS_SENTINEL, REDIS_SOCKET_TIMEOUT)],
            "prefix": "cm:layer:",
            "capacity": 500,
            "expiry": 30,
        },
    }
}

LOG_FORMAT = os.environ.get("LOG_FORMAT") or "plain"
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', got {LOG_FORMAT!r}.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "cutemarkets.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # daphne logs every request line with its query string, which can carry a browser's api_key.
        "django.channels.server": {"level": "WARNING"},
        "daphne.server": {"level": "WARNING"},
        "daphne.http_protocol": {"level": "WARNING"},
        "daphne.ws_protocol": {"level": "WARNING"},
    },
}

# --- Operations: metrics access and graceful shutdown ------------------------------------------------------------
# Loopback and the private ranges (RFC 1918, RFC 4193): the deployment's own network, where Prometheus runs.
DEFAULT_METRICS_NETWORKS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
try:
    METRICS_ALLOWED_NETWORKS = tuple(
        ipaddress.ip_network(network, strict=False)
        for network in env_list("METRICS_ALLOWED_NETWORKS", DEFAULT_METRICS_NETWORKS)
    )
except ValueError as error:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS must list networks like 10.0.0.0/8: {error}") from None
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
GATEWAY_SHUTDOWN_TIMEOUT = env_float("GATEWAY_SHUTDOWN_TIMEOUT", 10.0)

# --- Streaming gateway (read through streaming.conf.stream_settings) ---------------------------------------------
UPSTREAM_API_KEY = os.environ.get("UPSTREAM_API_KEY", "")
STREAM_UPSTREAMS = {
    market: {
        "URL": os.environ.get(f"UPSTREAM_{market.upper()}_URL", ""),
        "API_KEY": os.environ.get(f"UPSTREAM_{market.upper()}_API_KEY") or UPSTREAM_API_KEY,
    }
    for market in ("options", "stocks")
}
STREAM_LOCK_TTL = env_float("STREAM_LOCK_TTL", 30.0)
STREAM_LOCK_FAILURE_MODE = os.environ.get("STREAM_LOCK_FAILURE_MODE", "closed")
if STREAM_LOCK_FAILURE_MODE not in {"closed", "open"}:
    raise ImproperlyConfigured(
        f"STREAM_LOCK_FAILURE_MODE must be 'closed' or 'open', got {STREAM_LOCK_FAILURE_MODE!r}."
    )
STREAM_LOCK_WAIT = env_float("STREAM_LOCK_WAIT", 1.0, allow_zero=True)
STREAM_AUTH_TIMEOUT = env_float("STREAM_AUTH_TIMEOUT", 5.0)
STREAM_REJECT_GRACE = env_float("STREAM_REJECT_GRACE", 1.0)
STREAM_ALLOWED_ORIGINS = env_list("STREAM_ALLOWED_ORIGINS", [])
STREAM_UPSTREAM_IDLE_SECONDS = env_float("STREAM_UPSTREAM_IDLE_SECONDS", 30.0)
STREAM_UPSTREAM_SILENCE_SECONDS = env_float("STREAM_UPSTREAM_SILENCE_SECONDS", 0.0, allow_zero=True)
STREAM_CLIENT_BUFFER_BYTES = int(env_float("STREAM_CLIENT_BUFFER_BYTES", 4 * 1024 * 1024))
STREAM_CLIENT_MESSAGE_RATE = env_float("STREAM_CLIENT_MESSAGE_RATE", 20.0)
STREAM_CLIENT_MESSAGE_BURST = int(env_float("STREAM_CLIENT_MESSAGE_BURST", 100))
STREAM_CLIENT_REFUSALS_BEFORE_CLOSE = int(env_float("STREAM_CLIENT_REFUSALS_BEFORE_CLOSE", 50))
STREAM_CLIENT_ITEM_RATE = env_float("STREAM_CLIENT_ITEM_RATE", 1000.0)
STREAM_CLIENT_ITEM_BURST = int(env_float("STREAM_CLIENT_ITEM_BURST", 10_000))
STREAM_UPSTREAM_OPTION_QUOTE_CONTRACTS = int(env_float("STREAM_UPSTREAM_OPTION_QUOTE_CONTRACTS", 1000))
STREAM_CLIENT_PING_RATE = env_float("STREAM_CLIENT_PING_RATE", 2.0)
STREAM_CLIENT_PING_BURST = int(env_float("STREAM_CLIENT_PING_BURST", 20))
STREAM_CLIENT_INBOUND_BYTES = int(env_float("STREAM_CLIENT_INBOUND_BYTES", 1024 * 1024))
STREAM_CLIENT_MAX_MESSAGE_BYTES = int(env_float("STREAM_CLIENT_MAX_MESSAGE_BYTES", 1024 * 1024))
STREAM_HANDSHAKE_TIMEOUT = env_float("STREAM_HANDSHAKE_TIMEOUT", 10.0)
STREAM_ADDRESS_HANDSHAKE_RATE = env_float("STREAM_ADDRESS_HANDSHAKE_RATE", 10.0)
STREAM_ADDRESS_HANDSHAKE_BURST = int(env_float("STREAM_ADDRESS_HANDSHAKE_BURST", 50))
STREAM_ADDRESS_FAILURES_PER_MINUTE = int(env_float("STREAM_ADDRESS_FAILURES_PER_MINUTE", 30))
STREAM_ADDRESS_PENDING_SOCKETS = int(env_float("STREAM_ADDRESS_PENDING_SOCKETS", 50))
STREAM_ADDRESS_REFUSALS_BEFORE_DROP = int(env_float("STREAM_ADDRESS_REFUSALS_BEFORE_DROP", 100))
STREAM_KEY_USAGE_INTERVAL = env_float("STREAM_KEY_USAGE_INTERVAL", 10.0)
# How upstream frames reach this process's clients: "process" (its own upstream connection per market) or "relay"
# (through Redis from the market's feed relay, `manage.py run_feed_relay`; README, Scaling out).
STREAM_FANOUT = os.environ.get("STREAM_FANOUT") or "process"
if STREAM_FANOUT not in {"process", "relay"}:
    raise ImproperlyConfigured(f"STREAM_FANOUT must be 'process' or 'relay', got {STREAM_FANOUT!r}.")
STREAM_RELAY_PREFIX = os.environ.get("STREAM_RELAY_PREFIX") or "cm:relay:"
STREAM_RELAY_REGISTRATION_TTL = env_float("STREAM_RELAY_REGISTRATION_TTL", 15.0)
STREAM_RELAY_UNSUBSCRIBE_GRACE = env_float("STREAM_RELAY_UNSUBSCRIBE_GRACE", 5.0, allow_zero=True)
STREAM_RELAY_LEASE_TTL = env_float("STREAM_RELAY_LEASE_TTL", 5.0)
# Where a feed relay serves /healthz, /readyz and /metrics (`manage.py run_feed_relay --probe-host/--probe-port`).
RELAY_PROBE_HOST = os.environ.get("RELAY_PROBE_HOST") or "0.0.0.0"
RELAY_PROBE_PORT = env_port("RELAY_PROBE_PORT", 9108)
