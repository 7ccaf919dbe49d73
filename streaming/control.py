"""Live enforcement: when a user's keys, account or plans change, their live connection re-checks its admission.

accounts announces ``entitlements_changed``; this module turns it into a Channels group message (a group per user,
on the Redis channel layer, so it reaches the connection whichever gateway process holds it). Only control messages
travel this way; market data never does.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from django.dispatch import receiver

from accounts.signals import entitlements_changed

logger = logging.getLogger(__name__)

RECHECK_MESSAGE = {"type": "stream.recheck"}


def user_group(user_id: int) -> str:
    return f"stream-user-{user_id}"


async def join_user_group(layer: BaseChannelLayer, user_id: int, channel_name: str) -> str:
    """Add *channel_name* to the user's group and return the group's name.

    channels-redis's ``group_add`` awaits its ZADD and then its EXPIRE: two round trips on every admission. This
    sends the same two commands, to the same key on the same shard, pipelined in one.
    """
    group = user_group(user_id)
    if not isinstance(layer, RedisChannelLayer):
        await layer.group_add(group, channel_name)
        return group
    key = layer._group_key(group)
    async with layer.connection(layer.consistent_hash(group)).pipeline(transaction=False) as pipe:
        pipe.zadd(key, {channel_name: time.time()})
        pipe.expire(key, layer.group_expiry)
        await pipe.execute()
    return group


def request_recheck(user_ids: list[int]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for user_id in user_ids:
        try:
            async_to_sync(layer.group_send)(user_group(user_id), RECHECK_MESSAGE)
        except Exception:
            logger.exception("live re-check could not be sent for user %s", user_id)


@receiver(entitlements_changed)
def recheck_after_commit(sender, user_ids: list[int], **kwargs) -> None:
    ids = sorted(set(user_ids))
    transaction.on_commit(lambda: request_recheck(ids))
