"""Who may read /metrics: direct callers from the allowed networks, or anyone with the bearer token."""

from __future__ import annotations

import ipaddress

import pytest

from streaming import metrics

EXTERNAL = "203.0.113.5"
TOKEN = "metrics-token-for-tests"


def scrape(client, **extra):
    return client.get("/metrics", **extra)


def test_loopback_reads_the_metrics_by_default(client):
    response = scrape(client, REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"cutemarkets_stream_connections" in response.content
    openmetrics = scrape(client, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert openmetrics["Content-Type"].startswith("application/openmetrics-text")


def test_other_addresses_are_refused_without_a_token(client):
    response = scrape(client, REMOTE_ADDR=EXTERNAL)
    assert response.status_code == 403
    assert b"cutemarkets_" not in response.content


def test_a_proxied_request_is_refused_even_if_it_claims_loopback(client):
    """Behind the proxy, daphne's --proxy-headers turns a forged X-Forwarded-For into the client address."""
    assert scrape(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403
    assert scrape(client, REMOTE_ADDR="127.0.0.1", HTTP_FORWARDED="for=127.0.0.1").status_code == 403


def test_the_bearer_token_opens_the_metrics_from_anywhere(client, settings):
    settings.METRICS_TOKEN = TOKEN
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert scrape(client, HTTP_X_FORWARDED_FOR=EXTERNAL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION=TOKEN).status_code == 403


def test_no_token_configured_means_no_token_accepted(client, settings):
    settings.METRICS_TOKEN = ""
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("10.20.30.40", True), ("127.0.0.1", False), ("::ffff:10.1.1.1", True), ("fd00::1", True), ("fe80::1", False)],
)
def test_allowed_networks_are_configurable(client, settings, address, allowed):
    settings.METRICS_ALLOWED_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert (scrape(client, REMOTE_ADDR=address).status_code == 200) is allowed


def test_the_scrape_shows_what_the_gateway_recorded(client):
    before = scrape(client).content.decode()
    metrics.slow_consumer("stocks")
    after = scrape(client).content.decode()
    line = 'cutemarkets_stream_slow_consumer_disconnects_total{market="stocks"}'
    assert value_of(after, line) == value_of(before, line) + 1


def value_of(exposition: str, series: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(series + " "))
