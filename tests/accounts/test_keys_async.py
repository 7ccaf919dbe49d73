"""resolve_key_async against real Redis: the cache it shares with resolve_key, and what it asks of the database."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings

from accounts import keys
from accounts.keys import Denial, DenialReason, Entitlement, resolve_key, resolve_key_async
from tests.accounts.factories import let_tombstone_expire, make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)  # the cold path reads the database from a worker thread


@pytest.fixture
async def client():
    connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    yield connection
    await connection.aclose()


def refuse_database(monkeypatch) -> None:
    """From now on loading a record from the database fails: what still resolves came from the cache."""

    def refuse(prefixes: list[str]):
        raise AssertionError("the database was queried")

    monkeypatch.setattr(keys, "load_records", refuse)


async def settle_cache_writes() -> None:
    await asyncio.gather(*keys._cache_writes)


async def test_cold_then_warm_resolution_and_the_shared_cache(client, monkeypatch):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, raw = await sync_to_async(make_key)(user)
    await sync_to_async(let_tombstone_expire)(raw)
    cold = await resolve_key_async(raw, client)
    assert isinstance(cold, Entitlement) and cold.user_id == user.pk and cold.plan == "expert"
    await settle_cache_writes()
    refuse_database(monkeypatch)
    assert await resolve_key_async(raw, client) == cold  # warm: the record written behind, no query
    assert await sync_to_async(resolve_key)(raw) == cold  # the sync path reads the same entry


async def test_a_record_cached_by_the_sync_path_serves_the_async_one(client, monkeypatch):
    user = await sync_to_async(make_user)(plans={"options": "developer"})
    _, raw = await sync_to_async(make_key)(user)
    await sync_to_async(let_tombstone_expire)(raw)
    synced = await sync_to_async(resolve_key)(raw)  # django-redis writes the entry
    refuse_database(monkeypatch)
    assert await resolve_key_async(raw, client) == synced


async def test_wrong_secret_unknown_and_malformed_keys(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    _, raw = await sync_to_async(make_key)(user)
    await sync_to_async(let_tombstone_expire)(raw)  # so that what is cached below was written by the async path
    forged = raw.rsplit("_", 1)[0] + "_" + "Z" * keys.SECRET_LENGTH
    assert await resolve_key_async(forged, client) == Denial(DenialReason.UNKNOWN)
    unknown = keys.generate_key("options").raw
    assert await resolve_key_async(unknown, client) == Denial(DenialReason.UNKNOWN)
    assert await resolve_key_async("cmo_short", client) == Denial(DenialReason.MALFORMED)
    await settle_cache_writes()
    assert await client.ttl(keys.cache_key(keys.parse_key(raw)[0])) == -2  # not under the bare name...
    assert await client.exists(await sync_to_async(_full_key)(raw))  # ...but as django-redis names it


def _full_key(raw: str) -> str:
    from django.core.cache import cache

    return cache.client.make_key(keys.cache_key(keys.parse_key(raw)[0]))


async def test_revocation_evicts_what_the_async_path_cached(client):
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    api_key, raw = await sync_to_async(make_key)(user)
    assert isinstance(await resolve_key_async(raw, client), Entitlement)
    await settle_cache_writes()
    await sync_to_async(api_key.revoke)()
    assert await resolve_key_async(raw, client) == Denial(DenialReason.REVOKED)


async def test_a_record_read_before_a_revocation_is_not_cached_after_it(client):
    """The race the tombstone closes: load (valid), revoke (evicts), then the load's cache write lands."""
    user = await sync_to_async(make_user)(plans={"options": "expert"})
    api_key, raw = await sync_to_async(make_key)(user)
    prefix = keys.parse_key(raw)[0]
    stale = await sync_to_async(keys._load_record)(prefix)
    await sync_to_async(api_key.revoke)()
    keys._write_behind(client, await sync_to_async(_full_key)(raw), stale)
    await settle_cache_writes()
    assert await resolve_key_async(raw, client) == Denial(DenialReason.REVOKED)
    await sync_to_async(let_tombstone_expire)(raw)
    stale_sync = await sync_to_async(keys._record)(prefix)  # the sync path after the tombstone: fills the cache
    assert stale_sync["revoked_at"] is not None
