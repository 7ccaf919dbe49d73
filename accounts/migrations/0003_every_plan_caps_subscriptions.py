"""Every plan caps the items a connection may hold: plans without a figure get the catalogue's."""

from django.db import migrations, models

from accounts.plan_catalogue import DEFAULT_MAX_SUBSCRIPTIONS, PLANS


def fill_caps(apps, schema_editor):
    Plan = apps.get_model("accounts", "Plan")
    caps = {plan[0]: plan[5] for plan in PLANS}
    for plan in Plan.objects.filter(max_subscriptions__isnull=True):
        plan.max_subscriptions = caps.get(plan.slug, DEFAULT_MAX_SUBSCRIPTIONS)
        plan.save(update_fields=["max_subscriptions"])


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_seed_plans")]
    operations = [
        migrations.RunPython(fill_caps, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="plan",
            name="max_subscriptions",
            field=models.PositiveIntegerField(
                default=DEFAULT_MAX_SUBSCRIPTIONS,
                help_text="Subscription items one connection may hold; the gateway refuses items beyond it.",
            ),
        ),
    ]
