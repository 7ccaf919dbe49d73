"""The process's ControlListener on the real Redis channel layer: group membership, routing of re-checks by user."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from streaming.gateway.rechecks import RECHECK_GROUP, ControlListener, join_group, recheck_message, request_recheck

TIMEOUT = 5


class Connection:
    def __init__(self) -> None:
        self.rechecked = asyncio.Event()
        self.count = 0

    def recheck(self) -> None:
        self.count += 1
        self.rechecked.set()


async def test_a_pipelined_join_is_a_channels_group_membership(clean_redis):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await join_group(layer, "some-group", channel)
    await layer.group_send("some-group", {"type": "hello"})
    assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "hello"}
    key = layer._group_key("some-group")
    assert 0 < clean_redis.ttl(key) <= layer.group_expiry  # the EXPIRE of group_add went with the ZADD
    await layer.group_discard("some-group", channel)
    assert clean_redis.zcard(key) == 0


async def joined_listener() -> ControlListener:
    listener = ControlListener.for_loop()
    assert listener is ControlListener.for_loop()  # one per event loop
    return listener


async def test_a_recheck_reaches_the_connections_of_the_named_users_only():
    listener = await joined_listener()
    alice, alice_elsewhere, bob = Connection(), Connection(), Connection()
    listener.register(1, alice)
    listener.register(1, alice_elsewhere)
    listener.register(2, bob)
    await asyncio.wait_for(listener.joined.wait(), TIMEOUT)
    assert (alice.count, alice_elsewhere.count, bob.count) == (1, 1, 1)  # the join re-checks who came before it
    before = (alice.count, bob.count)
    alice.rechecked.clear()
    alice_elsewhere.rechecked.clear()
    await get_channel_layer().group_send(RECHECK_GROUP, recheck_message([1, 99]))
    await asyncio.wait_for(alice.rechecked.wait(), TIMEOUT)
    await asyncio.wait_for(alice_elsewhere.rechecked.wait(), TIMEOUT)
    assert (alice.count, bob.count) == (before[0] + 1, before[1])
    listener.unregister(1, alice)
    listener.unregister(1, alice_elsewhere)
    bob.rechecked.clear()
    await get_channel_layer().group_send(RECHECK_GROUP, recheck_message([1, 2]))
    await asyncio.wait_for(bob.rechecked.wait(), TIMEOUT)
    assert alice.count == before[0] + 1


async def test_request_recheck_from_sync_code_reaches_a_listener(transactional_db):
    from asgiref.sync import sync_to_async

    listener = await joined_listener()
    carol = Connection()
    listener.register(7, carol)
    await asyncio.wait_for(listener.joined.wait(), TIMEOUT)
    carol.rechecked.clear()
    await sync_to_async(request_recheck)([7])
    await asyncio.wait_for(carol.rechecked.wait(), TIMEOUT)


async def test_registering_right_after_a_recheck_of_the_user_rechecks_at_once():
    listener = await joined_listener()
    early = Connection()
    listener.register(6, early)
    await asyncio.wait_for(listener.joined.wait(), TIMEOUT)
    early.rechecked.clear()
    await get_channel_layer().group_send(RECHECK_GROUP, recheck_message([6]))
    await asyncio.wait_for(early.rechecked.wait(), TIMEOUT)
    late = Connection()
    listener.register(6, late)  # its key was resolved before the message: it must look again
    assert late.count == 1
