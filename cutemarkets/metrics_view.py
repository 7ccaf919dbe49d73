"""``/metrics`` in Prometheus text format, for allowed networks or a bearer token only.

Metrics reveal traffic and error rates, so they are not public. A request is served when it carries
``Authorization: Bearer <METRICS_TOKEN>``, or when it comes straight from an address in ``METRICS_ALLOWED_NETWORKS``
without a proxy's forwarding header: daphne's ``--proxy-headers`` takes the client address from ``X-Forwarded-For``,
which a client can forge, so a request relayed by the proxy is judged by the token alone. That holds whether or not
``DJANGO_HTTPS`` declares a proxy: the forwarding header itself is the evidence, and the proxy's own address lies in
the default allowed networks (loopback and private ranges), so its peer address proves nothing about the caller.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
BEARER_PREFIX = "Bearer "
FORBIDDEN = 403


def metrics(request: HttpRequest) -> HttpResponse:
    if not is_authorized(request):
        return HttpResponse("metrics are not public\n", status=FORBIDDEN, content_type="text/plain")
    encode, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))  # text or OpenMetrics, as asked
    return HttpResponse(encode(REGISTRY), content_type=content_type)


def is_authorized(request: HttpRequest) -> bool:
    """The right bearer token, or a direct (unproxied) caller in an allowed network."""
    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header.startswith(BEARER_PREFIX) and constant_time_compare(header[len(BEARER_PREFIX):], token):
        return True
    if any(name in request.META for name in FORWARDING_HEADERS):
        return False
    address = _client_address(request.META.get("REMOTE_ADDR", ""))
    return address is not None and any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


def _client_address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None  # a unix-socket peer, or no peer at all
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    return address
