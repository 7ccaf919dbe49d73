"""The per-user control group on the real Redis channel layer: joined in one pipelined round trip."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from streaming.control import RECHECK_MESSAGE, join_user_group, user_group


async def test_a_pipelined_join_is_a_channels_group_membership(clean_redis):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = await join_user_group(layer, 42, channel)
    assert group == user_group(42)
    await layer.group_send(group, RECHECK_MESSAGE)
    assert await asyncio.wait_for(layer.receive(channel), 5) == RECHECK_MESSAGE
    key = layer._group_key(group)
    assert 0 < clean_redis.ttl(key) <= layer.group_expiry  # the EXPIRE of group_add went with the ZADD
    await layer.group_discard(group, channel)
    assert clean_redis.zcard(key) == 0
    await layer.close_pools()
