"""The set of issued key prefixes against real Redis: what it spares the database, and how it is seeded and kept."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django_redis import get_redis_connection

from accounts import keys
from accounts.keys import Denial, DenialReason, Entitlement, resolve_key_async
from tests.accounts.factories import let_tombstone_expire, make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)  # seeding and cold resolutions read from a worker thread


@pytest.fixture
async def client():
    connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    yield connection
    await asyncio.gather(*keys._cache_writes)
    await connection.aclose()


async def issued(client: redis.asyncio.Redis, raw: str) -> bool:
    return bool(await client.sismember(keys.ISSUED_PREFIXES_KEY, keys.parse_key(raw)[0]))


async def test_a_prefix_never_issued_is_refused_without_a_query_or_a_redis_write(client, django_db_blocker):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, raw = await sync_to_async(make_key)(user)
    await sync_to_async(let_tombstone_expire)(raw)
    assert await keys.seed_issued_prefixes(client)
    unknown = keys.generate_key("options").raw
    redis_keys = set(await client.keys("*"))
    with django_db_blocker.block():  # any thread that opens a cursor now raises
        assert await resolve_key_async(unknown, client) == Denial(DenialReason.UNKNOWN)
        with pytest.raises(RuntimeError, match="Database access not allowed"):
            await resolve_key_async(raw, client)  # the block does catch the worker thread's query
    await asyncio.gather(*keys._cache_writes)
    assert set(await client.keys("*")) == redis_keys  # no tombstone


async def test_issued_keys_still_resolve_to_their_own_answer(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, valid = await sync_to_async(make_key)(user)
    revoked_key, revoked = await sync_to_async(make_key)(user)
    await sync_to_async(revoked_key.revoke)()
    assert await keys.seed_issued_prefixes(client)
    for raw in (valid, revoked):
        await sync_to_async(let_tombstone_expire)(raw)
    assert isinstance(await resolve_key_async(valid, client), Entitlement)
    assert await resolve_key_async(revoked, client) == Denial(DenialReason.REVOKED)


async def test_a_key_created_after_seeding_is_added_once_its_transaction_commits(client):
    assert await keys.seed_issued_prefixes(client)
    user = await sync_to_async(make_user)(plans={"options": "expert"})

    @sync_to_async
    def create_in_a_transaction() -> tuple[str, bool]:
        with transaction.atomic():
            _, raw = make_key(user)
            before_commit = bool(
                get_redis_connection().sismember(keys.ISSUED_PREFIXES_KEY, keys.parse_key(raw)[0])
            )
        return raw, before_commit

    raw, before_commit = await create_in_a_transaction()
    assert not before_commit and await issued(client, raw)
    assert isinstance(await resolve_key_async(raw, client), Entitlement)


async def test_a_deleted_keys_prefix_leaves_the_set(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    api_key, raw = await sync_to_async(make_key)(user)
    assert await keys.seed_issued_prefixes(client) and await issued(client, raw)
    await sync_to_async(api_key.delete)()
    assert not await issued(client, raw)
    await sync_to_async(let_tombstone_expire)(raw)
    assert await resolve_key_async(raw, client) == Denial(DenialReason.UNKNOWN)


async def test_an_unseeded_set_falls_back_to_the_database_and_gets_seeded(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, first = await sync_to_async(make_key)(user)
    _, second = await sync_to_async(make_key)(user, product="stocks")
    await client.delete(keys.ISSUED_PREFIXES_KEY)  # as a fresh or flushed Redis would have it
    await sync_to_async(let_tombstone_expire)(first)
    assert isinstance(await resolve_key_async(first, client), Entitlement)
    await asyncio.gather(*keys._seedings)  # started by the resolution; it may have ended already
    assert await client.exists(keys.ISSUED_PREFIXES_SEEDED_KEY)
    assert await issued(client, first) and await issued(client, second)


async def test_of_two_concurrent_seeders_only_one_loads(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, raw = await sync_to_async(make_key)(user)
    await client.delete(keys.ISSUED_PREFIXES_KEY)
    seeded = await asyncio.gather(keys.seed_issued_prefixes(client), keys.seed_issued_prefixes(client))
    assert sorted(seeded) == [False, True]
    assert await issued(client, raw)
