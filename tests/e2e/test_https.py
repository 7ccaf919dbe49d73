"""``DJANGO_HTTPS`` against a real daphne: plain HTTP without it, and with it what a TLS-terminating proxy needs.

The settings are read once, at import, so each case starts a gateway process with its own environment; requests go
straight to daphne as the proxy would send them (plain HTTP, ``X-Forwarded-Proto`` naming the client's scheme).
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

import pytest

from tests.e2e.clients import TIMEOUT

pytestmark = pytest.mark.e2e

HSTS = "max-age=31536000; includeSubDomains; preload"
FROM_THE_PROXY = {"X-Forwarded-Proto": "https"}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """One GET, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return Response(response.status, response.headers)
    finally:
        connection.close()


def csrf_cookie(response: Response) -> str:
    return next(cookie for cookie in response.headers.get_all("Set-Cookie") if cookie.startswith("csrftoken="))


def test_without_django_https_plain_http_serves_the_admin(gateway):
    login = get(gateway.port, "/admin/login/")
    assert login.status == 200
    assert "Strict-Transport-Security" not in login.headers
    assert "secure" not in csrf_cookie(login).lower()


def test_with_django_https_plain_http_redirects_and_proxied_https_is_served(gateway_factory):
    gateway = gateway_factory("https", DJANGO_HTTPS="1")
    port = gateway.port

    for path in ("/admin/login/", "/"):
        redirect = get(port, path)
        assert (redirect.status, redirect.headers["Location"]) == (301, f"https://127.0.0.1:{port}{path}")

    login = get(port, "/admin/login/", FROM_THE_PROXY)
    assert login.status == 200
    assert login.headers["Strict-Transport-Security"] == HSTS
    assert "; secure" in csrf_cookie(login).lower()

    # Probes come over plain HTTP from the balancer and the orchestrator, and are never redirected.
    for path in ("/healthz", "/readyz", "/metrics"):  # /metrics: from loopback
        probe = get(port, path)
        assert probe.status == 200, path
        assert "Location" not in probe.headers
