"""The published plan tiers, as data: seeded by a migration, re-seeded by tests that flush the database."""

from decimal import Decimal

DEFAULT_MAX_SUBSCRIPTIONS = 100
"""Items per connection of a plan with no figure of its own (and of Free, should its row be missing)."""

# slug, name, websocket_access, per month billed monthly, per month billed yearly, items per connection.
# Expert's 1,000 items matches the feed's own cap of 1,000 option contracts per connection.
PLANS = [
    ("free", "Free", False, None, None, DEFAULT_MAX_SUBSCRIPTIONS),
    ("developer", "Developer", False, None, None, DEFAULT_MAX_SUBSCRIPTIONS),
    ("expert", "Expert", True, Decimal("119.00"), Decimal("99.00"), 1_000),
    ("commercial", "Commercial", True, Decimal("469.00"), Decimal("399.00"), 10_000),
]


def seed_plans(plan_model) -> None:
    """Create the published plans that are missing; never overwrite what an operator edited."""
    for order, (slug, name, websocket_access, monthly, yearly, max_subscriptions) in enumerate(PLANS):
        plan_model.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "websocket_access": websocket_access,
                "price_monthly_eur": monthly,
                "price_yearly_eur": yearly,
                "max_subscriptions": max_subscriptions,
                "sort_order": order,
            },
        )
