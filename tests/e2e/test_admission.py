"""Admission decisions and close codes as a client sees them through a real daphne process."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect

from accounts.models import ApiKey
from devstack.redis_server import RedisServer
from streaming import codes
from streaming.runtime import lock
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import TIMEOUT, bearer, expect_statuses, read_until_closed, rejected
from tests.e2e.conftest import ONE_ADDRESS_STORM

pytestmark = pytest.mark.e2e


@pytest.fixture
def customer(transactional_db):
    user = make_user("e2e-trader", plans={"options": "expert", "stocks": "expert"})
    keys = {
        "options": make_key(user, "options")[1],
        "options-2": make_key(user, "options")[1],
        "stocks": make_key(user, "stocks")[1],
    }
    return user, keys


async def test_admitted_with_header_and_with_query(gateway, customer):
    _, keys = customer
    async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(keys["options"])) as websocket:
        await expect_statuses(websocket, "connected", "auth_success")
    async with connect(gateway.url(f"/v1/ws/stocks?api_key={keys['stocks']}")) as websocket:
        await expect_statuses(websocket, "connected", "auth_success")


async def test_4401_reaches_the_client_with_status_and_reason(gateway, customer):
    outcome = await rejected(gateway.url("/v1/ws/options/"), bearer("cmo_" + "x" * 12 + "_" + "y" * 40))
    assert outcome.statuses == ["connected", "auth_failed"]
    assert outcome.close_code == codes.CloseCode.UNAUTHORIZED
    assert outcome.close_reason == outcome.events[-1]["message"] == "authentication failed: invalid API key"


async def test_4401_for_product_mismatch_and_unsupported_market(gateway, customer):
    _, keys = customer
    mismatch = await rejected(gateway.url("/v1/ws/options/"), bearer(keys["stocks"]))
    assert (mismatch.close_code, mismatch.statuses[-1]) == (4401, "auth_failed")
    assert "this API key is for stocks" in mismatch.close_reason
    market = await rejected(gateway.url("/v1/ws/crypto/"), bearer(keys["options"]))
    assert market.close_code == 4401 and "unsupported market" in market.close_reason


async def test_auth_timeout(gateway_factory):
    gateway = gateway_factory(STREAM_AUTH_TIMEOUT="0.3")
    outcome = await rejected(gateway.url("/v1/ws/options"))
    assert outcome.statuses == ["connected", "auth_timeout"]
    assert outcome.close_code == 4401


async def test_4409_reaches_the_client(gateway, customer):
    _, keys = customer
    async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(keys["options"])) as first:
        await expect_statuses(first, "connected", "auth_success")
        outcome = await rejected(gateway.url("/v1/ws/stocks/"), bearer(keys["stocks"]))
        assert outcome.statuses == ["connected", "max_connections"]
        assert outcome.close_code == codes.CloseCode.ALREADY_CONNECTED
        # Through the auth message, as official SDKs do it, the answer is the same.
        outcome = await rejected(
            gateway.url("/v1/ws/options"), send=orjson.dumps({"action": "auth", "params": keys["options-2"]}).decode()
        )
        assert (outcome.statuses, outcome.close_code) == (["connected", "max_connections"], 4409)


async def test_1011_when_redis_is_down_at_admission(gateway_factory, customer, tmp_path):
    _, keys = customer
    with RedisServer(directory=tmp_path) as private_redis:
        gateway = gateway_factory("gateway-own-redis", REDIS_URL=private_redis.url)
        async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(keys["options"])) as websocket:
            await expect_statuses(websocket, "connected", "auth_success")
        private_redis.kill()
        outcome = await rejected(gateway.url("/v1/ws/options/"), bearer(keys["options"]))
    assert outcome.statuses == ["connected", "error"]
    assert outcome.close_code == codes.CloseCode.INTERNAL_ERROR
    assert "Traceback" not in gateway.log()


async def test_paths_outside_v1_ws_are_refused(gateway):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        async with connect(gateway.url("/elsewhere/")):
            pass
    assert refused.value.response.status_code == 403


async def test_live_revocation_through_daphne(gateway, customer):
    user, keys = customer
    async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(keys["options"])) as websocket:
        await expect_statuses(websocket, "connected", "auth_success")
        prefix = keys["options"].rsplit("_", 1)[0]
        await database_sync_to_async(lambda: ApiKey.objects.get(prefix=prefix).revoke())()
        outcome = await read_until_closed(websocket)
    assert outcome.close_code == 4401 and "revoked" in outcome.close_reason


async def test_same_user_race_across_two_processes(gateway_factory, customer, clean_redis):
    """Many simultaneous handshakes of one user over keys, markets and two daphne processes admit exactly one."""
    user, keys = customer
    gateways = [gateway_factory("race-a", **ONE_ADDRESS_STORM), gateway_factory("race-b", **ONE_ADDRESS_STORM)]
    attempts = [(key_name, gateway) for key_name in keys for gateway in gateways] * 10  # 60 handshakes
    rng = random.Random(7)

    for round_number in range(5):
        rng.shuffle(attempts)
        sockets = await asyncio.gather(*(open_and_classify(gateway.url, keys, name) for name, gateway in attempts))
        admitted = [websocket for websocket, status in sockets if status == "auth_success"]
        refused = [status for _, status in sockets if status != "auth_success"]
        assert len(admitted) == 1, f"round {round_number}: {len(admitted)} admitted"
        assert set(refused) == {"max_connections"}
        for websocket, _ in sockets:
            await websocket.close()
        await wait_until_unlocked(clean_redis, user.pk)


async def open_and_classify(url_of, keys, key_name):
    market = "stocks" if key_name == "stocks" else "options"
    websocket = await connect(url_of(f"/v1/ws/{market}/"), additional_headers=bearer(keys[key_name]),
                              open_timeout=TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        first = orjson.loads(await websocket.recv())
        assert first[0]["status"] == "connected"
        second = orjson.loads(await websocket.recv())
    return websocket, second[0]["status"]


async def wait_until_unlocked(redis_client, user_id: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while redis_client.exists(f"{lock.KEY_PREFIX}{user_id}"):
            await asyncio.sleep(0.02)
