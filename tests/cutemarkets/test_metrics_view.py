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


@pytest.mark.parametrize(
    "address", ["127.0.0.2", "10.20.30.40", "172.16.0.1", "172.31.255.254", "192.168.1.10", "fd12:3456::1"]
)
def test_loopback_and_private_addresses_read_the_metrics_by_default(client, address):
    assert scrape(client, REMOTE_ADDR=address).status_code == 200


@pytest.mark.parametrize("address", [EXTERNAL, "8.8.8.8", "172.32.0.1", "192.169.0.1", "2001:db8::1", "fe80::1"])
def test_public_addresses_are_refused_without_a_token(client, address):
    response = scrape(client, REMOTE_ADDR=address)
    assert response.status_code == 403
    assert b"cutemarkets_" not in response.content


def test_a_proxied_request_is_refused_even_if_it_claims_loopback(client):
    """Behind the proxy, daphne's --proxy-headers turns a forged X-Forwarded-For into the client address."""
    assert scrape(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403
    assert scrape(client, REMOTE_ADDR="127.0.0.1", HTTP_FORWARDED="for=127.0.0.1").status_code == 403


def test_a_request_relayed_by_a_proxy_in_the_private_network_needs_the_token(client):
    """The proxy's own address is private, so by default allowed: what it relays must not inherit that."""
    assert scrape(client, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=EXTERNAL).status_code == 403
    assert scrape(client, REMOTE_ADDR="10.0.0.5", HTTP_X_REAL_IP=EXTERNAL).status_code == 403


def test_the_bearer_token_opens_the_metrics_from_anywhere(client, settings):
    settings.METRICS_TOKEN = TOKEN
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert scrape(client, HTTP_X_FORWARDED_FOR=EXTERNAL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN[:-1]}X", f"Bearer {TOKEN.upper()}", "Bearer ",
     TOKEN, f"bearer {TOKEN}", f"Basic {TOKEN}"],
)
def test_a_wrong_token_is_refused(client, settings, header):
    settings.METRICS_TOKEN = TOKEN
    assert scrape(client, REMOTE_ADDR=EXTERNAL, HTTP_AUTHORIZATION=header).status_code == 403


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
