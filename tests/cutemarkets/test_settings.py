"""Deployment settings as a fresh process reads them from its environment (each case loads the settings anew)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
DUMP = """
import json, sys
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
try:
    names = sys.argv[1:]
    print(json.dumps({name: getattr(settings, name) for name in names}, default=str))
except ImproperlyConfigured as error:
    print(f"ImproperlyConfigured: {error}", file=sys.stderr)
    sys.exit(3)
"""
CONFIGURATION_PREFIXES = ("DJANGO_", "REDIS_", "METRICS_", "LOG_", "AXES_", "RELAY_")
"""Variables of this machine's environment that each case replaces with its own (a clean deployment)."""
STRONG_SECRET = "settings-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
SENTINEL_ENV = {
    "REDIS_SENTINELS": "sentinel-a:26379, sentinel-b:26380",
    "REDIS_SENTINEL_MASTER": "gateway-master",
    "REDIS_DB": "2",
    "REDIS_PASSWORD": "master-secret",
}


def load(*names: str, **env: str) -> dict:
    """The named settings of a process started with *env* on top of a clean deployment environment."""
    result = run(*names, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run(*names: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(CONFIGURATION_PREFIXES)}
    return subprocess.run(
        [sys.executable, "-c", DUMP, *names],
        cwd=PROJECT_DIR, capture_output=True, text=True,
        env={**clean, "DJANGO_SETTINGS_MODULE": "cutemarkets.settings", "DJANGO_DEBUG": "1", **env},
    )


def refusal(**env: str) -> str:
    result = run("DEBUG", **env)
    assert result.returncode == 3, result.stdout
    return result.stderr


def test_a_redis_url_configures_the_cache_and_the_channel_layer():
    loaded = load("CACHES", "CHANNEL_LAYERS", "REDIS_SENTINEL", REDIS_URL="rediss://:pw@redis.example:6380/1")
    assert loaded["REDIS_SENTINEL"] is None
    assert loaded["CACHES"]["default"]["LOCATION"] == "rediss://:pw@redis.example:6380/1"
    assert "CONNECTION_FACTORY" not in loaded["CACHES"]["default"]["OPTIONS"]
    (host,) = loaded["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    assert host["address"] == "rediss://:pw@redis.example:6380/1"


def test_sentinels_configure_the_cache_through_django_redis_sentinel_factory():
    cache = load("CACHES", **SENTINEL_ENV)["CACHES"]["default"]
    assert cache["LOCATION"] == "redis://gateway-master/2"
    options = cache["OPTIONS"]
    assert options["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
    assert options["SENTINELS"] == [["sentinel-a", 26379], ["sentinel-b", 26380]]
    assert options["PASSWORD"] == "master-secret"
    assert "CLIENT_CLASS" not in options, "the default client reads from the master, never a lagging replica"


def test_sentinels_configure_the_channel_layer_with_master_name():
    (host,) = load("CHANNEL_LAYERS", **SENTINEL_ENV)["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    assert host["sentinels"] == [["sentinel-a", 26379], ["sentinel-b", 26380]]
    assert (host["master_name"], host["db"], host["password"]) == ("gateway-master", 2, "master-secret")
    assert "address" not in host
    assert "password" not in host["sentinel_kwargs"]


def test_the_sentinels_own_password_is_separate():
    (host,) = load("CHANNEL_LAYERS", **SENTINEL_ENV, REDIS_SENTINEL_PASSWORD="sentinel-secret")[
        "CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    assert host["sentinel_kwargs"]["password"] == "sentinel-secret"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "sentinel-a:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "sentinel-a", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({**SENTINEL_ENV, "REDIS_DB": "two"}, "REDIS_DB"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}, "METRICS_ALLOWED_NETWORKS"),
        ({"GATEWAY_SHUTDOWN_TIMEOUT": "-1"}, "GATEWAY_SHUTDOWN_TIMEOUT"),
        ({"DJANGO_HTTPS": "proxy"}, "DJANGO_HTTPS"),
        ({"AXES_FAILURE_LIMIT": "many"}, "AXES_FAILURE_LIMIT"),
        ({"AXES_FAILURE_LIMIT": "0"}, "AXES_FAILURE_LIMIT"),
        ({"AXES_COOLOFF_MINUTES": "0"}, "AXES_COOLOFF_MINUTES"),
        ({"DJANGO_HTTPS": "1", "DJANGO_HSTS_SECONDS": "-1"}, "DJANGO_HSTS_SECONDS"),
        ({"RELAY_PROBE_PORT": "http"}, "RELAY_PROBE_PORT"),
        ({"RELAY_PROBE_PORT": "65536"}, "RELAY_PROBE_PORT"),
        ({"RELAY_PROBE_PORT": "-1"}, "RELAY_PROBE_PORT"),
    ],
)
def test_a_misconfiguration_stops_the_process_naming_the_variable(env, named):
    assert named in refusal(**env)


def test_the_relay_probe_port_defaults_to_9108_on_every_address():
    assert load("RELAY_PROBE_HOST", "RELAY_PROBE_PORT") == {"RELAY_PROBE_HOST": "0.0.0.0", "RELAY_PROBE_PORT": 9108}
    assert load("RELAY_PROBE_HOST", "RELAY_PROBE_PORT", RELAY_PROBE_HOST="10.0.0.5", RELAY_PROBE_PORT="0") == {
        "RELAY_PROBE_HOST": "10.0.0.5", "RELAY_PROBE_PORT": 0
    }


def test_json_log_format_and_production_static_storage():
    loaded = load("LOGGING", "STORAGES", LOG_FORMAT="json", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=STRONG_SECRET)
    assert loaded["LOGGING"]["handlers"]["console"]["formatter"] == "json"
    assert loaded["STORAGES"]["staticfiles"]["BACKEND"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert load("LOGGING")["LOGGING"]["handlers"]["console"]["formatter"] == "plain"


def test_metrics_networks_default_to_loopback_and_private_ranges():
    assert load("METRICS_ALLOWED_NETWORKS")["METRICS_ALLOWED_NETWORKS"] == [
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"
    ]
    assert load("METRICS_ALLOWED_NETWORKS", METRICS_ALLOWED_NETWORKS="10.1.0.0/16")["METRICS_ALLOWED_NETWORKS"] == [
        "10.1.0.0/16"
    ]


@pytest.mark.parametrize(
    "key",
    [
        "short-but-varied-0123456789abcdefghijklmnopqrstu",  # 49 characters
        "abcd" * 20,  # 80 characters, 4 distinct
        "django-insecure-" + "0123456789abcdefghijklmnopqrstuvwxyz0123456789",  # what startproject writes
    ],
)
def test_debug_off_refuses_a_weak_secret_key_naming_the_variable(key):
    message = refusal(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=key)
    assert "DJANGO_SECRET_KEY is too weak" in message
    assert key not in message


def test_debug_off_refuses_a_missing_secret_key():
    assert "DJANGO_SECRET_KEY must be set" in refusal(DJANGO_DEBUG="0")


def test_a_key_that_meets_djangos_rule_starts_with_debug_off():
    barely = "abcde" * 10  # 50 characters, 5 distinct: the least Django accepts
    assert load("SECRET_KEY", "DEBUG", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=barely) == {
        "SECRET_KEY": barely, "DEBUG": False
    }
    assert load("SECRET_KEY", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=STRONG_SECRET)["SECRET_KEY"] == STRONG_SECRET


def test_debug_on_accepts_any_key_for_local_runs():
    assert load("SECRET_KEY", DJANGO_SECRET_KEY="x")["SECRET_KEY"] == "x"


TLS_SETTINGS = (
    "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
)


def test_django_https_trusts_the_proxys_scheme_and_secures_redirects_hsts_and_cookies():
    assert load(*TLS_SETTINGS, DJANGO_HTTPS="1") == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
    }
    assert load("SECURE_HSTS_SECONDS", DJANGO_HTTPS="1", DJANGO_HSTS_SECONDS="3600")["SECURE_HSTS_SECONDS"] == 3600


def test_without_django_https_plain_http_is_left_alone():
    assert load(*TLS_SETTINGS) == {
        "SECURE_PROXY_SSL_HEADER": None,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
    }


def deploy_check(**env: str) -> subprocess.CompletedProcess:
    """``manage.py check --deploy --fail-level WARNING`` with debug off, a strong key and a real host name."""
    production = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": STRONG_SECRET, "DJANGO_ALLOWED_HOSTS": "gateway.example"}
    clean = {key: value for key, value in os.environ.items() if not key.startswith(CONFIGURATION_PREFIXES)}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR, capture_output=True, text=True,
        env={**clean, "DJANGO_SETTINGS_MODULE": "cutemarkets.settings", **production, **env},
    )


def test_the_deploy_check_passes_with_django_https():
    result = deploy_check(DJANGO_HTTPS="1")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_deploy_check_names_what_plain_http_lacks():
    result = deploy_check()
    assert result.returncode == 1
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def test_admin_lockouts_count_one_username_from_one_address_with_limits_from_the_environment():
    names = ("AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME", "AXES_LOCKOUT_PARAMETERS")
    assert load(*names) == {
        "AXES_FAILURE_LIMIT": 5, "AXES_COOLOFF_TIME": "0:15:00", "AXES_LOCKOUT_PARAMETERS": [["username", "ip_address"]]
    }
    configured = load(*names, AXES_FAILURE_LIMIT="3", AXES_COOLOFF_MINUTES="90")
    assert (configured["AXES_FAILURE_LIMIT"], configured["AXES_COOLOFF_TIME"]) == (3, "1:30:00")
