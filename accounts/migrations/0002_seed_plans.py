"""Seed the four published plan tiers; only Expert and Commercial include WebSocket access."""

from django.db import migrations

from accounts.plan_catalogue import PLANS, seed_plans


def seed(apps, schema_editor):
    seed_plans(apps.get_model("accounts", "Plan"))


def unseed(apps, schema_editor):
    apps.get_model("accounts", "Plan").objects.filter(slug__in=[plan[0] for plan in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
