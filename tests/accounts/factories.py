"""Small helpers that create users with plans and keys the way an operator would."""

from __future__ import annotations

from accounts.models import ApiKey, Plan, ProductTier, User
from accounts.plan_catalogue import seed_plans


def make_user(username: str = "alice", plans: dict[str, str] | None = None, **fields) -> User:
    seed_plans(Plan)  # transactional tests flush the seeded rows
    user = User.objects.create_user(username=username, **fields)
    for product, slug in (plans or {}).items():
        ProductTier.objects.create(user=user, product=product, plan=Plan.objects.get(slug=slug))
    return user


ISSUED_KEYS: list[str] = []  # every raw key a test created: the suite checks that none reaches a log


def make_key(user: User, product: str = "options", **fields) -> tuple[ApiKey, str]:
    api_key, raw = ApiKey.objects.create_key(user=user, product=product, **fields)
    ISSUED_KEYS.append(raw)
    return api_key, raw


def let_tombstone_expire(raw: str) -> None:
    """Drop the short-lived tombstone that creating (or changing) a key leaves in the cache, as time would."""
    from django.core.cache import cache

    from accounts import keys

    cache.delete(keys.cache_key(keys.parse_key(raw)[0]))
