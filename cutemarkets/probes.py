"""Serves the operator endpoints (``/healthz``, ``/readyz``, ``/metrics``) ahead of Django's other middleware.

Load balancers, orchestrators and Prometheus call a process by its IP address, with a Host header that
``DJANGO_ALLOWED_HOSTS`` rightly refuses. Answering these exact paths before ``CommonMiddleware`` validates the host
(and before sessions or CSRF run) keeps probes working without allowing arbitrary hosts for the admin.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed

from cutemarkets import health, metrics_view

View = Callable[[HttpRequest], HttpResponse]

ENDPOINTS: dict[str, View] = {
    "/healthz": health.healthz,
    "/readyz": health.readyz,
    "/metrics": metrics_view.metrics,
}
ALLOWED_METHODS = ("GET", "HEAD")


class OperatorEndpointsMiddleware:
    def __init__(self, get_response: View) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = ENDPOINTS.get(request.path_info)
        if view is None:
            return self.get_response(request)
        if request.method not in ALLOWED_METHODS:
            return HttpResponseNotAllowed(ALLOWED_METHODS)
        return view(request)
