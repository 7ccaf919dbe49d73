"""WebSocket routes: ``/v1/ws/{market}/`` (trailing slash optional, as official clients build ``{host}/{market}``).

Any other path under ``/v1/ws/`` still reaches the consumer, which answers "unsupported market" with 4401; paths
outside ``/v1/ws/`` are refused at the handshake.

The market comes from the client's (percent-decoded) path and ends up in log lines, so only a short plain word is
taken from it: anything else under ``/v1/ws/`` (control characters, line separators, escapes, kilobytes of path)
reaches the consumer with an empty market, which is just as unsupported and cannot forge or flood a log line.
"""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import re_path

from streaming.gateway.consumer import MarketDataConsumer

MARKET_PATTERN = r"[A-Za-z0-9_-]{1,32}"
UNREADABLE_MARKET = ""


class HandshakeRefusal(AsyncWebsocketConsumer):
    """Closing before accept makes the server answer the handshake with HTTP 403.

    It joins no channel layer (it never receives from one): a channel-layer receive cancelled while its Redis BZPOPMIN
    is in flight can outlive the cancellation (redis-py swallows it), which kept refused handshakes' instances alive
    until daphne killed them, ``application_close_timeout`` later, with a warning each.
    """

    channel_layer_alias = None  # get_channel_layer(None) is None: no channel, no receive to cancel

    async def connect(self) -> None:
        await self.close()


websocket_urlpatterns = [
    re_path(rf"^v1/ws/(?P<market>{MARKET_PATTERN})/?$", MarketDataConsumer.as_asgi()),
    re_path(r"^v1/ws/", MarketDataConsumer.as_asgi(), kwargs={"market": UNREADABLE_MARKET}),
    re_path(r"", HandshakeRefusal.as_asgi()),
]
