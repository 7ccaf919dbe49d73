"""The official Massive (formerly Polygon.io) Python client against the gateway, unchanged apart from host and key."""

from __future__ import annotations

import asyncio

import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError

from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.e2e


def client_for(gateway, key: str) -> WebSocketClient:
    return WebSocketClient(
        api_key=key, feed=f"127.0.0.1:{gateway.port}/v1/ws", market="options", secure=False, max_reconnects=1
    )


async def collect_until_error(client: WebSocketClient, **connect_kwargs) -> BaseException:
    async def ignore(messages):
        pass

    with pytest.raises(Exception) as raised:
        async with asyncio.timeout(10):
            await client.connect(ignore, **connect_kwargs)
    return raised.value


@pytest.fixture
def developer_key(transactional_db) -> str:
    return make_key(make_user("sdk-developer", plans={"options": "developer"}), "options")[1]


@pytest.mark.parametrize("with_header", [True, False])
async def test_rejected_key_surfaces_as_the_clients_auth_error(gateway, developer_key, with_header):
    key = developer_key
    client = client_for(gateway, key)
    kwargs = {"additional_headers": {"Authorization": f"Bearer {key}"}} if with_header else {}
    error = await collect_until_error(client, **kwargs)
    assert isinstance(error, AuthError)
    assert "WebSocket access" in str(error)
