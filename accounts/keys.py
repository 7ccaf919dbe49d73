"""API key lifecycle: generate, hash, parse, and resolve a raw key to an entitlement or a precise denial.

A key reads ``cmo_<public id>_<secret>`` (``cms_`` for stocks). The public prefix ``cmo_<public id>`` identifies
the row and is safe to show and log; leaked keys are greppable by it. Only SHA-256 of the secret is stored: a fast
hash is right for 238 bits of randomness, and the check is hash-then-``hmac.compare_digest``, so its time does not
depend on how much of a guess is right. Resolutions are cached in Redis (django-redis) and invalidated by
``accounts.signals`` so that revocations and tier changes take effect at once.

``resolve_key_async`` is the same resolution for the gateway's event loop: it reads the cached record with an
asyncio Redis client (same key, same encoding as django-redis), so a warm admission costs one round trip and no
thread; only a cache miss goes to the database, in a worker thread. The same round trip asks whether the prefix
was ever issued (a Redis set of every key's prefix, seeded from the database when Redis has none, and hourly): a
key whose prefix never was is refused without a query and without a tombstone, so a flood of made-up keys costs
neither.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import logging
import re
import secrets
import string
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.db import transaction
from django.db.models import F, FilteredRelation, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_redis import get_redis_connection

from accounts.models import ApiKey, Plan, Product
from accounts.plan_catalogue import DEFAULT_MAX_SUBSCRIPTIONS
from accounts.record_batches import RecordBatches

if TYPE_CHECKING:
    import redis.asyncio
    from django_redis.client import DefaultClient

logger = logging.getLogger(__name__)

ALPHABET = string.ascii_letters + string.digits
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 40  # 40 symbols of 62: 238 bits of randomness.
PRODUCT_MARKERS = {Product.STOCKS: "cms", Product.OPTIONS: "cmo"}
MAX_KEY_LENGTH = 128

KEY_PATTERN = re.compile(
    rf"(?P<prefix>cm[so]_[A-Za-z0-9]{{{PUBLIC_ID_LENGTH}}})_(?P<secret>[A-Za-z0-9]{{{SECRET_LENGTH}}})"
)

CACHE_TIMEOUT_SECONDS = 300
MISSING_CACHE_TIMEOUT_SECONDS = 60
MISSING = {"missing": True}
EVICTED = {"evicted": True}
EVICTION_SECONDS = 10


class DenialReason(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    INACTIVE_USER = "inactive_user"


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    raw: str
    prefix: str
    secret_hash: str


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What a valid key grants: whose it is, for which product, on which plan."""

    user_id: int
    key_id: int
    key_prefix: str
    product: str
    plan: str
    websocket_access: bool
    max_subscriptions: int


@dataclass(frozen=True, slots=True)
class Denial:
    reason: DenialReason


def _random_string(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def generate_key(product: str) -> GeneratedKey:
    prefix = f"{PRODUCT_MARKERS[Product(product)]}_{_random_string(PUBLIC_ID_LENGTH)}"
    secret = _random_string(SECRET_LENGTH)
    return GeneratedKey(raw=f"{prefix}_{secret}", prefix=prefix, secret_hash=hash_secret(secret))


def parse_key(raw: str) -> tuple[str, str] | None:
    """Split a raw key into (prefix, secret), or None if it cannot be one of ours."""
    if not isinstance(raw, str) or len(raw) > MAX_KEY_LENGTH:
        return None
    match = KEY_PATTERN.fullmatch(raw)
    if match is None:
        return None
    return match["prefix"], match["secret"]


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


CACHE_KEY_VERSION = 2
"""Bumped when the cached record changes shape (2: every plan has a ``max_subscriptions``): older entries are then
never read, and expire by their TTL."""


def cache_key(prefix: str) -> str:
    return f"apikey:v{CACHE_KEY_VERSION}:{prefix}"


def forget(prefixes: list[str]) -> None:
    """Replace cached resolutions with a short-lived tombstone, now and again once the transaction commits.

    The next handshake then reads the database. A resolution that read the database before the change (or before
    its commit) cannot put its stale record back: the cache is only ever filled where nothing is cached (``add``,
    ``SET NX``), and the tombstone holds the place until well after the commit.
    """
    if prefixes:
        tombstones = dict.fromkeys([cache_key(prefix) for prefix in prefixes], EVICTED)
        cache.set_many(tombstones, timeout=EVICTION_SECONDS)
        transaction.on_commit(lambda: cache.set_many(tombstones, timeout=EVICTION_SECONDS))


ISSUED_PREFIXES_KEY = "cm:apikey:prefixes"
"""A Redis set of the prefix of every ApiKey row, revoked and expired ones included: those resolve to their own
denial, which only their record can tell."""
ISSUED_PREFIXES_SEEDED_KEY = "cm:apikey:prefixes:seeded"
"""Present once the set holds every prefix; until then a prefix missing from the set proves nothing."""
ISSUED_PREFIXES_SEEDING_KEY = "cm:apikey:prefixes:seeding"
"""Held (``SET NX``) by the one process that seeds the set."""
SEEDED_SECONDS = 3600
"""The set is reseeded this often: a prefix whose ``SADD`` was lost (Redis unreachable when its key was created, a
failover that dropped the last writes) is refused as unknown until then, not for ever."""
SEEDING_LOCK_SECONDS = 60
"""Not released: a seeding that failed (database unreachable) is retried by whoever comes after this long."""
PREFIX_CHUNK = 10_000
"""Prefixes per ``SADD``: a command for a million keys would hold Redis up for everyone else."""


def _chunks(prefixes: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(prefixes), PREFIX_CHUNK):
        yield prefixes[start : start + PREFIX_CHUNK]


def register_prefixes(prefixes: list[str]) -> None:
    """Add issued prefixes to the set once the transaction commits (at once outside one).

    A key created while the set is being seeded is not lost: its ``SADD`` comes after its row is committed, and the
    seeding reads the database either before that commit (the ``SADD`` then adds it) or after (the seeding does).
    """
    if prefixes:
        transaction.on_commit(lambda: _add_prefixes(prefixes))


def _add_prefixes(prefixes: list[str]) -> None:
    client = get_redis_connection(DEFAULT_CACHE_ALIAS)
    for chunk in _chunks(prefixes):
        client.sadd(ISSUED_PREFIXES_KEY, *chunk)


def unregister_prefix(prefix: str) -> None:
    """Remove a deleted key's prefix from the set once the deletion commits.

    A seeding that read the row before the deletion may add the prefix back: the key then costs a query again, and
    its answer (unknown) is still right.
    """
    transaction.on_commit(lambda: get_redis_connection(DEFAULT_CACHE_ALIAS).srem(ISSUED_PREFIXES_KEY, prefix))


PLAN_FIELDS = ("slug", "websocket_access", "max_subscriptions")


def _load_record(prefix: str) -> dict | None:
    """The record of one key (see `load_records`)."""
    return load_records([prefix]).get(prefix)


def load_records(prefixes: list[str]) -> dict[str, dict]:
    """One indexed query for the keys with these *prefixes*: for each key found, the key, its user's state and the
    plan of the key's product, i.e. of the user's tier for that product (joined), or Free when there is no tier.
    Prefixes of no key are left out.

    The Free plan's fields come as raw scalar subqueries: the ORM's own expressions for them (Case, Coalesce,
    Subquery) cost more to build and compile than the query costs to run, on every cold admission.
    """
    plans = Plan._meta.db_table
    free = {
        f"free_{field}": RawSQL(f"SELECT {field} FROM {plans} WHERE slug = %s", (Plan.FREE,)) for field in PLAN_FIELDS
    }
    rows = (
        ApiKey.objects.filter(prefix__in=prefixes)  # unique
        .annotate(tier=FilteredRelation("user__tiers", condition=Q(user__tiers__product=F("product"))), **free)
        .values(
            "prefix", "id", "user_id", "product", "secret_hash", "expires_at", "revoked_at", "user__is_active",
            "tier__id", *(f"tier__plan__{field}" for field in PLAN_FIELDS), *free,
        )
        .order_by()  # not first(): ordering by the model's Meta.ordering costs more to compile than to run
    )
    return {row.pop("prefix"): _plan_applied(row) for row in rows}


def _plan_applied(row: dict) -> dict:
    """A record from its row: the tier's plan if the user has a tier for the key's product, else Free."""
    has_tier = row.pop("tier__id") is not None
    tier_plan = {field: row.pop(f"tier__plan__{field}") for field in PLAN_FIELDS}
    free_plan = {field: row.pop(f"free_{field}") for field in PLAN_FIELDS}
    plan = tier_plan if has_tier else free_plan
    row["plan_slug"] = plan["slug"] or Plan.FREE  # no Free plan row at all: Free's defaults
    row["plan_websocket_access"] = bool(plan["websocket_access"])
    row["plan_max_subscriptions"] = (
        plan["max_subscriptions"] if plan["max_subscriptions"] is not None else DEFAULT_MAX_SUBSCRIPTIONS
    )
    return row


def _cache_timeout(record: dict) -> int:
    return MISSING_CACHE_TIMEOUT_SECONDS if "missing" in record else CACHE_TIMEOUT_SECONDS


def _record(prefix: str) -> dict:
    record = cache.get(cache_key(prefix))
    if record is None or "evicted" in record:
        record = _load_record(prefix) or MISSING
        cache.add(cache_key(prefix), record, _cache_timeout(record))  # never over a tombstone
    return record


def stamp_last_used(key_ids: Iterable[int]) -> None:
    """Set ``last_used_at`` of these keys to now, in one UPDATE (the gateway batches the keys it admits)."""
    ids = list(key_ids)
    if ids:
        ApiKey.objects.filter(pk__in=ids).update(last_used_at=timezone.now())


def resolve_key(raw: str, now: datetime | None = None) -> Entitlement | Denial:
    """Resolve a raw key to an Entitlement, or a Denial saying precisely why not."""
    parsed = parse_key(raw)
    if parsed is None:
        return Denial(DenialReason.MALFORMED)
    prefix, secret = parsed
    return _decide(prefix, secret, _record(prefix), now)


def resolve_key_uncached(raw: str) -> Entitlement | Denial:
    """``resolve_key`` straight from the database, for when the cache's Redis is unreachable."""
    parsed = parse_key(raw)
    if parsed is None:
        return Denial(DenialReason.MALFORMED)
    prefix, secret = parsed
    return _decide(prefix, secret, _load_record(prefix) or MISSING, None)


async def resolve_key_async(raw: str, redis: redis.asyncio.Redis) -> Entitlement | Denial:
    """``resolve_key`` on the event loop: the cached record is read with *redis* (no thread), in the same round trip
    as the prefix's membership of the issued prefixes; a miss for a prefix never issued is refused as unknown at
    once, any other miss loads the record in a worker thread (one query, shared with the misses that come meanwhile:
    `RecordBatches`) and writes it to the cache without waiting for the write. While the set is not seeded, a miss
    also starts seeding it.

    Raises what Redis or the database raise: the caller must fail closed.
    """
    parsed = parse_key(raw)
    if parsed is None:
        return Denial(DenialReason.MALFORMED)
    prefix, secret = parsed
    codec = _cache_codec()
    key = codec.make_key(cache_key(prefix))
    pipeline = redis.pipeline(transaction=False)
    pipeline.get(key)
    pipeline.sismember(ISSUED_PREFIXES_KEY, prefix)
    pipeline.exists(ISSUED_PREFIXES_SEEDED_KEY)
    stored, issued, seeded = await pipeline.execute()
    record = codec.decode(stored) if stored is not None else EVICTED
    if "evicted" in record:  # not cached, or a tombstone
        if seeded and not issued:
            return _decide(prefix, secret, MISSING, None)
        if not seeded:
            _seed_behind(redis)
        record = await RecordBatches.for_loop(load_records).record(prefix) or MISSING
        _write_behind(redis, key, record)
    return _decide(prefix, secret, record, None)


_seedings: set[asyncio.Task] = set()


def _seed_behind(redis: redis.asyncio.Redis) -> None:
    """Seed the issued prefixes in the background, unless this process already is: every cold handshake meanwhile
    would otherwise start one, and all but one would only find the lock taken."""
    if not _seedings:
        _in_background(seed_issued_prefixes(redis), _seedings, "issued key prefixes not seeded")


async def seed_issued_prefixes(redis: redis.asyncio.Redis) -> bool:
    """Fill the set of issued prefixes from the database, then mark it seeded; False if another process holds the
    seeding lock (it seeds instead).

    The sentinel is set only after the last ``SADD``, so a half-filled set never refuses a key. Keys created or
    deleted meanwhile: see ``register_prefixes`` and ``unregister_prefix``.
    """
    if not await redis.set(ISSUED_PREFIXES_SEEDING_KEY, "1", nx=True, ex=SEEDING_LOCK_SECONDS):
        return False
    prefixes = await database_sync_to_async(_issued_prefixes, thread_sensitive=False)()
    for chunk in _chunks(prefixes):
        await redis.sadd(ISSUED_PREFIXES_KEY, *chunk)
    await redis.set(ISSUED_PREFIXES_SEEDED_KEY, "1", ex=SEEDED_SECONDS)
    return True


def _issued_prefixes() -> list[str]:
    return list(ApiKey.objects.order_by().values_list("prefix", flat=True))


_cache_writes: set[asyncio.Task] = set()


@functools.cache
def _cache_codec() -> DefaultClient:
    """django-redis's client of the default cache, used only for its key names and value encoding.

    Made once: ``django.core.cache.cache`` is a proxy to a cache object per thread and per asyncio task, and each
    such object builds its own client (serializer, compressor) on first use, i.e. once per admission here.
    """
    return caches.create_connection(DEFAULT_CACHE_ALIAS).client


def _write_behind(redis: redis.asyncio.Redis, key: str, record: dict) -> None:
    write = redis.set(key, _cache_codec().encode(record), ex=_cache_timeout(record), nx=True)  # never over a tombstone
    _in_background(write, _cache_writes, "key record not cached")


def _in_background(work: Awaitable, tasks: set[asyncio.Task], failure: str) -> None:
    """Run *work* without waiting for it, held in *tasks* until it ends (so it is not collected mid-way, and tests
    can await it); a failure is logged as *failure* with the exception's type only."""
    task = asyncio.ensure_future(work)
    tasks.add(task)
    task.add_done_callback(functools.partial(_background_done, tasks, failure))


def _background_done(tasks: set[asyncio.Task], failure: str, task: asyncio.Task) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("%s: %s", failure, type(task.exception()).__name__)


def _decide(prefix: str, secret: str, record: dict, now: datetime | None) -> Entitlement | Denial:
    # The secret is checked before anything else about the key is revealed.
    if "missing" in record or not secret_matches(secret, record["secret_hash"]):
        return Denial(DenialReason.UNKNOWN)
    if record["revoked_at"] is not None:
        return Denial(DenialReason.REVOKED)
    now = now or timezone.now()
    if record["expires_at"] is not None and record["expires_at"] <= now:
        return Denial(DenialReason.EXPIRED)
    if not record["user__is_active"]:
        return Denial(DenialReason.INACTIVE_USER)
    return Entitlement(
        user_id=record["user_id"],
        key_id=record["id"],
        key_prefix=prefix,
        product=record["product"],
        plan=record["plan_slug"],
        websocket_access=bool(record["plan_websocket_access"]),
        max_subscriptions=record["plan_max_subscriptions"],
    )
