import pytest

from accounts.models import Plan
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db


def test_seeded_plans_match_the_published_tiers():
    plans = {plan.slug: plan for plan in Plan.objects.all()}
    assert list(plans) == ["free", "developer", "expert", "commercial"]
    assert {slug for slug, plan in plans.items() if plan.websocket_access} == {"expert", "commercial"}
    assert (plans["expert"].price_yearly_eur, plans["expert"].price_monthly_eur) == (99, 119)
    assert (plans["commercial"].price_yearly_eur, plans["commercial"].price_monthly_eur) == (399, 469)


def test_revoke_keeps_the_row_and_is_idempotent():
    user = make_user()
    api_key, _ = make_key(user)
    api_key.revoke()
    first = api_key.revoked_at
    api_key.revoke()
    api_key.refresh_from_db()
    assert api_key.is_revoked and api_key.revoked_at == first
