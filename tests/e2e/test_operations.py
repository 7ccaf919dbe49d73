"""What operators on call use, against real daphne processes, the simulator and Redis: the live connections' records
(``list_connections``) and ending a user's connection wherever it is (``disconnect_user``)."""

from __future__ import annotations

import asyncio
import io
import time

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from websockets.asyncio.client import connect

from accounts.models import ApiKey
from streaming import codes
from streaming.runtime import lock
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import TIMEOUT, bearer, expect_statuses, read_until_closed
from tests.e2e.conftest import simulator_env

pytestmark = pytest.mark.e2e

LOCK_TTL = "1.5"  # a refresh, and so fresh counters in the record, every half second


@pytest.fixture
def traders(transactional_db):
    return {
        name: (user, make_key(user, "options")[1])
        for name, user in ((name, make_user(name, plans={"options": "expert"})) for name in ("ops-alice", "ops-bob"))
    }


async def command(*args: str) -> str:
    """Run a management command in a thread (it opens its own event loop and database connection)."""
    out = io.StringIO()
    await asyncio.to_thread(call_command, *args, stdout=out)
    return out.getvalue()


async def records() -> dict[str, dict]:
    lines = (await command("list_connections", "--json")).splitlines()
    return {row["user"]: row for row in map(orjson.loads, lines)}


async def test_list_connections_across_two_processes_with_counters_from_the_lock_refresh(
    gateway_factory, simulator, traders, clean_redis
):
    gateways = [gateway_factory(name, STREAM_LOCK_TTL=LOCK_TTL, **simulator_env(simulator))
                for name in ("ops-a", "ops-b")]
    alice_key, bob_key = traders["ops-alice"][1], traders["ops-bob"][1]
    alice_socket = await connect(gateways[0].url("/v1/ws/options/"), additional_headers=bearer(alice_key))
    bob_socket = await connect(gateways[1].url("/v1/ws/options/"), additional_headers=bearer(bob_key),
                               local_addr=("127.0.0.2", 0))
    try:
        for websocket in (alice_socket, bob_socket):
            await expect_statuses(websocket, "connected", "auth_success")
        await alice_socket.send('{"action":"subscribe","params":"T.*,Q.*"}')
        await expect_statuses(alice_socket, "success", "success")

        listed = await records()
        assert set(listed) == {"ops-alice", "ops-bob"}
        assert listed["ops-alice"]["key_prefix"] == alice_key.rsplit("_", 1)[0]
        assert listed["ops-bob"]["client"] == "127.0.0.2"
        assert listed["ops-alice"]["market"] == "options"
        assert listed["ops-alice"]["gateway"] != listed["ops-bob"]["gateway"]  # two processes
        assert {row["gateway"].rsplit(":", 1)[1] for row in listed.values()} == {
            str(gateway.process.pid) for gateway in gateways
        }

        await simulator.emit("options", 50)
        received = 0
        async with asyncio.timeout(TIMEOUT):
            while received < 50:
                received += len(orjson.loads(await alice_socket.recv()))
        async with asyncio.timeout(TIMEOUT):  # published at the next lock refresh, not per event
            while (await records())["ops-alice"]["events"] < 50:
                await asyncio.sleep(0.1)
        row = (await records())["ops-alice"]
        assert row["subscriptions"] == 2 and row["bytes_sent"] > 0 and row["outbox_bytes"] == 0
        assert (await records())["ops-bob"]["events"] == 0

        table = await command("list_connections")
        assert table.splitlines()[0].split()[:4] == ["user", "key_prefix", "market", "client"]
        assert any(line.startswith("ops-bob ") and "127.0.0.2" in line for line in table.splitlines())
    finally:
        await alice_socket.close()
        await bob_socket.close()
    async with asyncio.timeout(TIMEOUT):  # the record goes with the lock
        while await records():
            await asyncio.sleep(0.05)
    assert not clean_redis.keys(f"{lock.RECORD_KEY_PREFIX}*")


async def test_disconnect_user_closes_their_connection_and_they_may_reconnect_at_once(
    gateway_factory, simulator, traders, clean_redis
):
    gateway = gateway_factory("ops-disconnect", **simulator_env(simulator))
    alice_key, bob_key = traders["ops-alice"][1], traders["ops-bob"][1]
    alice = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(alice_key))
    bob = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(bob_key), local_addr=("127.0.0.2", 0))
    for websocket in (alice, bob):
        await expect_statuses(websocket, "connected", "auth_success")

    started = time.monotonic()
    output = await command("disconnect_user", "ops-alice")
    assert time.monotonic() - started < 2.0
    assert output.startswith("Disconnected ops-alice (options from 127.0.0.1")
    outcome = await read_until_closed(alice)
    assert outcome.close_code == codes.CloseCode.POLICY_VIOLATION
    assert outcome.statuses == [codes.Status.FORCE_DISCONNECT]
    assert not clean_redis.exists(f"{lock.KEY_PREFIX}{traders['ops-alice'][0].pk}")

    async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(alice_key)) as again:
        await expect_statuses(again, "connected", "auth_success")  # no 4409: the lock went with the close
    await bob.send('{"action":"subscribe","params":"T.*"}')  # the neighbour was not touched
    await expect_statuses(bob, "success")
    await bob.close()

    assert (await command("disconnect_user", "ops-alice")).strip() == "ops-alice has no live connection."
    with pytest.raises(CommandError, match="No user 'nobody'"):
        await command("disconnect_user", "nobody")


async def test_the_key_admin_action_disconnects_the_keys_owner(gateway_factory, traders, django_user_model):
    gateway = gateway_factory("ops-key-action")
    user, raw_key = traders["ops-alice"]
    websocket = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(raw_key))
    await expect_statuses(websocket, "connected", "auth_success")

    def run_action() -> str:
        operator = django_user_model.objects.create_superuser("ops-oncall", "oncall@example.com", "x" * 20)
        browser = Client()
        browser.force_login(operator)
        key = ApiKey.objects.get(user=user)
        response = browser.post("/admin/accounts/apikey/", {
            "action": "disconnect_key_users", "_selected_action": [key.pk],
        }, follow=True)
        return response.content.decode()

    page = await asyncio.to_thread(run_action)
    assert "Disconnecting 1 live connection(s)." in page
    outcome = await read_until_closed(websocket)
    assert (outcome.close_code, outcome.statuses) == (codes.CloseCode.POLICY_VIOLATION, [codes.Status.FORCE_DISCONNECT])
