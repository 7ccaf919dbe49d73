"""KeyUsage against the real database: the first use is written at once, later ones together, one UPDATE each."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from streaming.gateway.key_usage import KeyUsage
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)  # written from a worker thread


def keys_of_a_customer(count: int) -> list[int]:
    user = make_user(plans={"options": "expert"})
    return [make_key(user)[0].pk for _ in range(count)]


def last_used(key_ids: list[int]) -> list:
    return [ApiKey.objects.get(pk=key_id).last_used_at for key_id in key_ids]


async def test_first_use_at_once_then_one_write_per_interval():
    first, second, third = await sync_to_async(keys_of_a_customer)(3)
    usage = KeyUsage(interval=0.3)
    usage.note(first)
    writer = usage._writer
    while usage._pending:  # the writer has taken the first key and is writing it
        await asyncio.sleep(0)
    usage.note(second)
    usage.note(third)
    assert usage._writer is writer  # no second writer: the two wait for the interval to end
    await writer
    stamps = await sync_to_async(last_used)([first, second, third])
    assert all(stamp is not None for stamp in stamps)
    assert stamps[0] < stamps[1] == stamps[2]  # one UPDATE for the two later keys
    assert usage._writer is None


async def test_flush_writes_what_is_pending_now():
    (key_id,) = await sync_to_async(keys_of_a_customer)(1)
    usage = KeyUsage.for_loop()
    usage._pending.add(key_id)  # noted, its writer not started yet
    await KeyUsage.flush_for_loop()
    assert (await sync_to_async(last_used)([key_id]))[0] is not None
