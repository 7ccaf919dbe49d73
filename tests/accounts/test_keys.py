import hmac
import math
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts import keys
from accounts.keys import Denial, DenialReason, Entitlement, resolve_key
from accounts.models import ApiKey, Plan, ProductTier
from tests.accounts.factories import let_tombstone_expire, make_key, make_user

pytestmark = pytest.mark.django_db


def test_generated_key_format_and_product_marker():
    stocks = keys.generate_key("stocks")
    options = keys.generate_key("options")
    assert re.fullmatch(r"cms_[A-Za-z0-9]{12}_[A-Za-z0-9]{40}", stocks.raw)
    assert re.fullmatch(r"cmo_[A-Za-z0-9]{12}_[A-Za-z0-9]{40}", options.raw)
    assert stocks.raw.startswith(stocks.prefix + "_")
    assert keys.parse_key(stocks.raw) == (stocks.prefix, stocks.raw.rsplit("_", 1)[1])


def test_secret_has_at_least_128_bits_and_keys_do_not_repeat():
    assert keys.SECRET_LENGTH * math.log2(len(keys.ALPHABET)) >= 128
    generated = [keys.generate_key("options") for _ in range(2000)]
    assert len({key.raw for key in generated}) == 2000
    assert len({key.prefix for key in generated}) == 2000
    # Every symbol of the alphabet turns up in the secrets: they are not drawn from a narrower set.
    symbols = set("".join(key.raw.rsplit("_", 1)[1] for key in generated))
    assert symbols == set(keys.ALPHABET)


@pytest.mark.parametrize(
    "raw",
    ["", "nope", "cmo_short_x", "cmx_" + "a" * 12 + "_" + "b" * 40, "cmo_" + "a" * 12 + "_" + "b" * 39,
     "cmo_" + "a" * 12 + "_" + "b" * 40 + "\n", "cmo_" + "ä" * 12 + "_" + "b" * 40, "x" * 10_000],
)
def test_malformed_keys_are_denied_without_a_lookup(raw, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert resolve_key(raw) == Denial(DenialReason.MALFORMED)


def test_database_holds_only_the_hash():
    user = make_user(plans={"options": "expert"})
    api_key, raw = make_key(user)
    secret = raw.rsplit("_", 1)[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        row_text = " ".join(str(value) for value in cursor.fetchone())
    assert secret not in row_text
    assert raw not in row_text
    assert api_key.secret_hash == keys.hash_secret(secret)


def test_secret_check_is_hash_then_constant_time_compare(monkeypatch):
    compared = []
    real_compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert keys.secret_matches("s" * 40, keys.hash_secret("s" * 40))
    assert not keys.secret_matches("t" * 40, keys.hash_secret("s" * 40))
    # Both sides compared are fixed-length digests, never the secret itself.
    assert all(len(a) == len(b) == 64 for a, b in compared)


def test_valid_key_resolves_to_user_product_and_plan():
    user = make_user(plans={"options": "expert", "stocks": "developer"})
    api_key, raw = make_key(user, "options")
    assert resolve_key(raw) == Entitlement(
        user_id=user.pk,
        key_id=api_key.pk,
        key_prefix=api_key.prefix,
        product="options",
        plan="expert",
        websocket_access=True,
        max_subscriptions=1_000,
    )
    _, stocks_raw = make_key(user, "stocks")
    stocks = resolve_key(stocks_raw)
    assert (stocks.product, stocks.plan, stocks.websocket_access) == ("stocks", "developer", False)


def test_user_without_a_tier_is_on_free():
    user = make_user()
    _, raw = make_key(user, "stocks")
    entitlement = resolve_key(raw)
    assert (entitlement.plan, entitlement.websocket_access) == ("free", False)


def test_unknown_prefix_and_wrong_secret_are_both_unknown():
    user = make_user(plans={"options": "expert"})
    _, raw = make_key(user)
    prefix, secret = keys.parse_key(raw)
    assert resolve_key(keys.generate_key("options").raw) == Denial(DenialReason.UNKNOWN)
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert resolve_key(f"{prefix}_{wrong}") == Denial(DenialReason.UNKNOWN)


def test_wrong_secret_of_a_revoked_key_reveals_nothing():
    user = make_user(plans={"options": "expert"})
    api_key, raw = make_key(user)
    api_key.revoke()
    prefix, secret = keys.parse_key(raw)
    assert resolve_key(f"{prefix}_{'Z' * 40}") == Denial(DenialReason.UNKNOWN)
    assert resolve_key(raw) == Denial(DenialReason.REVOKED)


def test_expired_key():
    user = make_user(plans={"options": "expert"})
    now = timezone.now()
    _, raw = make_key(user, expires_at=now + timedelta(minutes=5))
    assert isinstance(resolve_key(raw, now=now), Entitlement)
    assert resolve_key(raw, now=now + timedelta(minutes=5)) == Denial(DenialReason.EXPIRED)


def test_inactive_user():
    user = make_user(plans={"options": "expert"}, is_active=False)
    _, raw = make_key(user)
    assert resolve_key(raw) == Denial(DenialReason.INACTIVE_USER)


def test_cold_resolution_is_one_query_and_warm_is_none(django_assert_num_queries):
    user = make_user(plans={"options": "expert"})
    _, raw = make_key(user)
    let_tombstone_expire(raw)
    with django_assert_num_queries(1):
        assert isinstance(resolve_key(raw), Entitlement)
    with django_assert_num_queries(0):
        assert isinstance(resolve_key(raw), Entitlement)


def test_while_a_change_is_recent_the_database_answers(django_assert_num_queries):
    user = make_user(plans={"options": "expert"})
    _, raw = make_key(user)  # creating the key leaves a tombstone: no cached "unknown" may outlive it
    for _ in range(2):
        with django_assert_num_queries(1):
            assert isinstance(resolve_key(raw), Entitlement)


def test_unknown_prefixes_are_cached_too(django_assert_num_queries):
    raw = keys.generate_key("options").raw
    with django_assert_num_queries(1):
        resolve_key(raw)
    with django_assert_num_queries(0):
        resolve_key(raw)


def test_a_new_key_is_not_hidden_by_a_cached_miss():
    user = make_user(plans={"options": "expert"})
    generated = keys.generate_key("options")
    assert resolve_key(generated.raw) == Denial(DenialReason.UNKNOWN)
    ApiKey.objects.create(
        user=user, product="options", prefix=generated.prefix, secret_hash=generated.secret_hash
    )
    assert isinstance(resolve_key(generated.raw), Entitlement)


def test_stamp_last_used_writes_many_keys_in_one_query(django_assert_num_queries):
    user = make_user(plans={"options": "expert"})
    stamped = [make_key(user)[0] for _ in range(3)]
    untouched, _ = make_key(user)
    with django_assert_num_queries(1):
        keys.stamp_last_used({api_key.pk for api_key in stamped})
    with django_assert_num_queries(0):
        keys.stamp_last_used(set())
    assert all(ApiKey.objects.get(pk=api_key.pk).last_used_at is not None for api_key in stamped)
    assert ApiKey.objects.get(pk=untouched.pk).last_used_at is None


class TestCacheInvalidation:
    """Each change goes through real Redis: the first resolution warms the cache, the change must evict it."""

    def test_revoke(self):
        user = make_user(plans={"options": "expert"})
        api_key, raw = make_key(user)
        assert isinstance(resolve_key(raw), Entitlement)
        api_key.revoke()
        assert resolve_key(raw) == Denial(DenialReason.REVOKED)

    def test_tier_change(self):
        user = make_user(plans={"options": "expert"})
        _, raw = make_key(user)
        assert resolve_key(raw).websocket_access
        tier = ProductTier.objects.get(user=user, product="options")
        tier.plan = Plan.objects.get(slug="developer")
        tier.save()
        assert not resolve_key(raw).websocket_access

    def test_tier_deleted_falls_back_to_free(self):
        user = make_user(plans={"options": "commercial"})
        _, raw = make_key(user)
        assert resolve_key(raw).plan == "commercial"
        ProductTier.objects.filter(user=user).delete()  # queryset delete sends post_delete per row
        assert resolve_key(raw).plan == "free"

    def test_tier_added(self):
        user = make_user()
        _, raw = make_key(user)
        assert resolve_key(raw).plan == "free"
        ProductTier.objects.create(user=user, product="options", plan=Plan.objects.get(slug="expert"))
        assert resolve_key(raw).plan == "expert"

    def test_user_deactivated(self):
        user = make_user(plans={"options": "expert"})
        _, raw = make_key(user)
        assert isinstance(resolve_key(raw), Entitlement)
        user.is_active = False
        user.save()
        assert resolve_key(raw) == Denial(DenialReason.INACTIVE_USER)

    def test_plan_edited(self):
        user = make_user(plans={"options": "expert"})
        _, raw = make_key(user)
        assert resolve_key(raw).max_subscriptions == 1_000
        plan = Plan.objects.get(slug="expert")
        plan.max_subscriptions = 25
        plan.websocket_access = False
        plan.save()
        entitlement = resolve_key(raw)
        assert (entitlement.max_subscriptions, entitlement.websocket_access) == (25, False)

    def test_free_plan_edited_reaches_users_without_a_tier(self):
        user = make_user()
        _, raw = make_key(user)
        assert not resolve_key(raw).websocket_access
        Plan.objects.filter(slug="free").update(websocket_access=True)  # bypasses signals...
        Plan.objects.get(slug="free").save()  # ...so save once, as the admin does
        assert resolve_key(raw).websocket_access


def test_a_tier_has_its_own_cap_and_only_tierless_users_get_the_free_plans():
    Plan.objects.filter(slug=Plan.FREE).update(max_subscriptions=5)
    expert = make_user("expert", plans={"options": "expert"})
    entitlement = resolve_key(make_key(expert)[1])
    assert entitlement.plan == "expert" and entitlement.max_subscriptions == 1_000
    tierless = make_user("tierless")
    entitlement = resolve_key(make_key(tierless)[1])
    assert entitlement.plan == Plan.FREE and entitlement.max_subscriptions == 5
