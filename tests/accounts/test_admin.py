import re

import pytest
from django.urls import reverse

from accounts import keys
from accounts.keys import Denial, DenialReason, Entitlement
from accounts.models import ApiKey
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db

NEW_KEY = re.compile(r'<code class="new-api-key">(cm[so]_[A-Za-z0-9]+_[A-Za-z0-9]+)</code>')


@pytest.fixture
def staff_client(client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    return client


def test_creating_a_key_shows_it_once(staff_client):
    customer = make_user("carol", plans={"stocks": "expert"})
    response = staff_client.post(
        reverse("admin:accounts_apikey_add"),
        {"user": customer.pk, "product": "stocks", "label": "trading bot", "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )
    assert response.status_code == 200
    shown = NEW_KEY.findall(response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    api_key = ApiKey.objects.get(user=customer)
    assert raw.startswith(api_key.prefix + "_")
    assert isinstance(keys.resolve_key(raw), Entitlement)

    secret = raw.rsplit("_", 1)[1]
    for url in (
        reverse("admin:accounts_apikey_change", args=[api_key.pk]),
        reverse("admin:accounts_apikey_changelist"),
        reverse("admin:accounts_user_change", args=[customer.pk]),
    ):
        page = staff_client.get(url).content.decode()
        assert api_key.prefix in page
        assert secret not in page
        assert api_key.secret_hash not in page


def test_change_form_has_no_secret_fields(staff_client):
    customer = make_user("dave")
    api_key, _ = make_key(customer)
    page = staff_client.get(reverse("admin:accounts_apikey_change", args=[api_key.pk])).content.decode()
    assert 'name="secret_hash"' not in page
    assert 'name="prefix"' not in page
    assert 'name="label"' in page


def test_revoke_action(staff_client):
    customer = make_user("erin", plans={"options": "expert"})
    first, first_raw = make_key(customer)
    second, _ = make_key(customer)
    assert isinstance(keys.resolve_key(first_raw), Entitlement)  # warm the cache
    response = staff_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [first.pk]},
        follow=True,
    )
    assert "Revoked 1 key(s)." in response.content.decode()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.is_revoked and not second.is_revoked
    assert keys.resolve_key(first_raw) == Denial(DenialReason.REVOKED)


def test_user_page_lists_tiers_and_keys(staff_client):
    customer = make_user("frank", plans={"options": "commercial"})
    api_key, _ = make_key(customer, label="notebook")
    page = staff_client.get(reverse("admin:accounts_user_change", args=[customer.pk])).content.decode()
    assert "notebook" in page and api_key.prefix in page
    assert "Commercial" in page
