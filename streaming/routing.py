"""WebSocket routes: ``/v1/ws/{market}/`` (trailing slash optional, as official clients build ``{host}/{market}``).

Any other path under ``/v1/ws/`` still reaches the consumer, which answers "unsupported market" with 4401; paths
outside ``/v1/ws/`` are refused at the handshake.
"""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import re_path

from streaming.consumer import MarketDataConsumer


class HandshakeRefusal(AsyncWebsocketConsumer):
    """Closing before accept makes the server answer the handshake with HTTP 403."""

    async def connect(self) -> None:
        await self.close()


websocket_urlpatterns = [
    re_path(r"^v1/ws/(?P<market>.*?)/?$", MarketDataConsumer.as_asgi()),
    re_path(r"", HandshakeRefusal.as_asgi()),
]
