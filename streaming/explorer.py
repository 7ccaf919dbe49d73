"""The stream explorer: the page at ``/`` where a browser user pastes a key, subscribes and watches the live stream.

Browsers cannot set WebSocket headers, so the page's script connects with ``?api_key=`` on this same host. The
key sits in an input field and in ``sessionStorage``, so the policy below is what keeps it safe should any
markup ever be injected: no script but the project's own file runs, and nothing but this host can be contacted.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from streaming.conf import MARKETS


def content_security_policy(host: str) -> str:
    """Only our static files, and WebSockets to *host* (``'self'`` alone does not cover ws: in every browser).

    ``data:`` images are for the page's empty favicon, which spares every visit a ``/favicon.ico`` 404.
    """
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' ws://{host} wss://{host}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@require_safe
def explorer(request: HttpRequest) -> HttpResponse:
    response = render(request, "streaming/explorer.html", {"markets": MARKETS})
    # get_host() is checked against ALLOWED_HOSTS, so it cannot smuggle other sources into the policy.
    response["Content-Security-Policy"] = content_security_policy(request.get_host())
    return response
