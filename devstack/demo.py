"""The demo account of `make run`: a user on the Expert plan for both products, with one key per product.

Keys are stored only as hashes, so the raw demo keys are kept in a git-ignored local file on first creation; a
re-run prints the same keys, and makes new ones only if that file or the keys themselves are gone.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts import keys
from accounts.keys import Entitlement
from accounts.models import ApiKey, Plan, Product, ProductTier, User

DEMO_USERNAME = "demo"
DEMO_PLAN = Plan.EXPERT
DEMO_KEYS_FILE = Path(settings.LOCAL_DATA_DIR) / "demo-keys.json"


def _stored_keys() -> dict[str, str]:
    try:
        stored = json.loads(DEMO_KEYS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {product: raw for product, raw in stored.items() if isinstance(keys.resolve_key(raw), Entitlement)}


@transaction.atomic
def ensure_demo_account() -> dict[str, str]:
    """Create (or repair) the demo user, its tiers and keys; return {product: raw key}."""
    user, _ = User.objects.get_or_create(username=DEMO_USERNAME, defaults={"email": "demo@localhost"})
    plan = Plan.objects.get(slug=DEMO_PLAN)
    for product in Product.values:
        ProductTier.objects.update_or_create(user=user, product=product, defaults={"plan": plan})
    demo_keys = _stored_keys()
    for product in Product.values:
        if product not in demo_keys:
            _, demo_keys[product] = ApiKey.objects.create_key(user=user, product=product, label="make run demo")
    DEMO_KEYS_FILE.write_text(json.dumps(demo_keys, indent=2))
    DEMO_KEYS_FILE.chmod(0o600)
    return demo_keys
