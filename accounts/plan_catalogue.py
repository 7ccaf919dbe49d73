"""The published plan tiers, as data: seeded by a migration, re-seeded by tests that flush the database."""

from decimal import Decimal

# slug, name, websocket_access, per month billed monthly, per month billed yearly
PLANS = [
    ("free", "Free", False, None, None),
    ("developer", "Developer", False, None, None),
    ("expert", "Expert", True, Decimal("119.00"), Decimal("99.00")),
    ("commercial", "Commercial", True, Decimal("469.00"), Decimal("399.00")),
]


def seed_plans(plan_model) -> None:
    """Create the published plans that are missing; never overwrite what an operator edited."""
    for order, (slug, name, websocket_access, monthly, yearly) in enumerate(PLANS):
        plan_model.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "websocket_access": websocket_access,
                "price_monthly_eur": monthly,
                "price_yearly_eur": yearly,
                "sort_order": order,
            },
        )
