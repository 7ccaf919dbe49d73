"""Seed the four published plan tiers; only Expert and Commercial include WebSocket access."""

from decimal import Decimal

from django.db import migrations

PLANS = [
    # slug, name, websocket_access, monthly (billed monthly), monthly (billed yearly), sort order
    ("free", "Free", False, None, None, 0),
    ("developer", "Developer", False, None, None, 1),
    ("expert", "Expert", True, Decimal("119.00"), Decimal("99.00"), 2),
    ("commercial", "Commercial", True, Decimal("469.00"), Decimal("399.00"), 3),
]


def seed(apps, schema_editor):
    Plan = apps.get_model("accounts", "Plan")
    for slug, name, websocket_access, monthly, yearly, order in PLANS:
        Plan.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "websocket_access": websocket_access,
                "price_monthly_eur": monthly,
                "price_yearly_eur": yearly,
                "sort_order": order,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("accounts", "Plan").objects.filter(slug__in=[plan[0] for plan in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
