"""Django settings for the CuteMarkets gateway, read from the environment (12-factor).

Every deployment-specific value comes from an environment variable with a safe local default, and a
misconfigured production setting raises ``ImproperlyConfigured`` at start-up rather than at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

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


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}.") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, got {raw!r}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(for local development set DJANGO_DEBUG=1, as `make run` does)."
        )
    SECRET_KEY = "insecure-local-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is set but empty.")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "accounts",
    "streaming",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # End-to-end tests run daphne in a child process: the test database must be a file both can open.
    LOCAL_DATA_DIR.mkdir(exist_ok=True)
    DATABASES["default"]["TEST"] = {"NAME": str(LOCAL_DATA_DIR / "test-db.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

AUTH_USER_MODEL = "accounts.User"
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
STATIC_ROOT = LOCAL_DATA_DIR / "static"

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

# Redis reads block for up to 5 s in channels-redis (BRPOP); redis-py would time such reads out at 5 s by default.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 30.0)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cm",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": REDIS_SOCKET_TIMEOUT}],
            "prefix": "cm:layer:",
            "capacity": 500,
            "expiry": 30,
        },
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
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
STREAM_LOCK_WAIT = env_float("STREAM_LOCK_WAIT", 1.0)
STREAM_AUTH_TIMEOUT = env_float("STREAM_AUTH_TIMEOUT", 5.0)
STREAM_REJECT_GRACE = env_float("STREAM_REJECT_GRACE", 1.0)
STREAM_ALLOWED_ORIGINS = env_list("STREAM_ALLOWED_ORIGINS", [])
STREAM_UPSTREAM_IDLE_SECONDS = env_float("STREAM_UPSTREAM_IDLE_SECONDS", 30.0)
STREAM_CLIENT_BUFFER_BYTES = int(env_float("STREAM_CLIENT_BUFFER_BYTES", 4 * 1024 * 1024))
STREAM_CLIENT_MESSAGE_RATE = env_float("STREAM_CLIENT_MESSAGE_RATE", 20.0)
STREAM_CLIENT_MESSAGE_BURST = int(env_float("STREAM_CLIENT_MESSAGE_BURST", 100))
STREAM_CLIENT_REFUSALS_BEFORE_CLOSE = int(env_float("STREAM_CLIENT_REFUSALS_BEFORE_CLOSE", 50))
