"""Bench-only database setup: migrate a fresh SQLite database and create N users on Expert (options) with one key each,
and M users on Commercial (stocks: the neighbours scenario's victims and attackers, the plan with the most items).

Run as ``python -m bench.setup_db --users N --keys-file PATH [--stocks-users M --stocks-keys-file PATH]`` with
DJANGO_SETTINGS_MODULE, DATABASE_URL and REDIS_URL set; the raw keys go to PATH as a JSON list (the database stores
only their hashes). Also measures the
database queries of one key resolution, cold and warm, and prints them as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

import django


def create_users(count: int, product: str = "options", plan_slug: str = "expert", name: str = "bench") -> list[str]:
    from django.contrib.auth.hashers import make_password
    from django.db import transaction

    from accounts import keys
    from accounts.models import ApiKey, Plan, ProductTier, User

    plan = Plan.objects.get(slug=plan_slug)
    unusable = make_password(None)
    raw_keys: list[str] = []
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(username=f"{name}{index:05d}", password=unusable) for index in range(count)], batch_size=1000
        )
        ProductTier.objects.bulk_create(
            [ProductTier(user=user, product=product, plan=plan) for user in users], batch_size=1000
        )
        api_keys = []
        for user in users:
            # Without django-stubs, mypy reads a TextChoices member as its (value, label) tuple.
            generated = keys.generate_key(product)
            raw_keys.append(generated.raw)
            api_keys.append(
                ApiKey(user=user, product=product, prefix=generated.prefix, secret_hash=generated.secret_hash)
            )
        # No signal, so no prefix reaches the set of issued prefixes (accounts.keys): none needs to, since Redis is
        # flushed before every trial (and by count_queries), and a gateway with no seeded set seeds it from here.
        ApiKey.objects.bulk_create(api_keys, batch_size=1000)
    return raw_keys


def count_queries(raw_key: str) -> dict[str, int]:
    """Database queries of resolving one key with a cold cache, then warm, and of stamping the use of a batch of
    keys (the gateway writes ``last_used_at`` once per interval for every key admitted meanwhile)."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.keys import Entitlement, resolve_key, stamp_last_used

    cache.clear()
    with CaptureQueriesContext(connection) as cold:
        entitlement = resolve_key(raw_key)
    assert isinstance(entitlement, Entitlement), entitlement
    with CaptureQueriesContext(connection) as warm:
        resolve_key(raw_key)
    with CaptureQueriesContext(connection) as stamp:
        stamp_last_used(range(entitlement.key_id, entitlement.key_id + 100))
    cache.clear()
    return {
        "resolve_cold": len(cold.captured_queries),
        "resolve_warm": len(warm.captured_queries),
        "stamp_last_used_of_100_keys": len(stamp.captured_queries),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--keys-file", required=True)
    parser.add_argument("--stocks-users", type=int, default=0)
    parser.add_argument("--stocks-keys-file")
    options = parser.parse_args()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    raw_keys = create_users(options.users)
    with open(options.keys_file, "w") as handle:
        json.dump(raw_keys, handle)
    if options.stocks_users:
        stocks_keys = create_users(options.stocks_users, "stocks", "commercial", "stocks")
        with open(options.stocks_keys_file, "w") as handle:
            json.dump(stocks_keys, handle)
    json.dump({"db_queries": count_queries(raw_keys[0])}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
