"""ASGI entry point: HTTP goes to Django, WebSockets through the key middleware to the streaming gateway."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cutemarkets.settings")

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from cutemarkets import garbage_collection  # noqa: E402
from streaming.daphne import install as daphne_shim, upgrade_filter  # noqa: E402
from streaming.gateway.fairness import AddressBudgets  # noqa: E402
from streaming.gateway.middleware import ApiKeyMiddleware, origin_checked  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402

daphne_shim.install()  # clean 1001/1008/1011 closes and send-side flow control when served by daphne
upgrade_filter.drop_upgrades_from(lambda address: AddressBudgets.for_loop().drops(address))

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": origin_checked(ApiKeyMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
garbage_collection.tune_for_server()  # last: everything above lives as long as the process
