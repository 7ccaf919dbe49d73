"""Live enforcement: when a user's keys, account or plans change, their live connection re-checks its admission.

accounts announces ``entitlements_changed``; this module turns it into a Channels group message (a group per user,
on the Redis channel layer, so it reaches the connection whichever gateway process holds it). Only control messages
travel this way; market data never does.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.dispatch import receiver

from accounts.signals import entitlements_changed

logger = logging.getLogger(__name__)

RECHECK_MESSAGE = {"type": "stream.recheck"}


def user_group(user_id: int) -> str:
    return f"stream-user-{user_id}"


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
