import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.plan_catalogue import seed_plans


@pytest.mark.django_db(transaction=True)
def test_plans_that_were_unlimited_get_the_catalogue_cap():
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0002_seed_plans")])
    old_state = executor.loader.project_state([("accounts", "0002_seed_plans")])
    OldPlan = old_state.apps.get_model("accounts", "Plan")
    seed_plans(OldPlan)  # transactional tests flush the seeded rows
    OldPlan.objects.update(max_subscriptions=None)
    OldPlan.objects.create(slug="custom", name="Custom", max_subscriptions=None)
    OldPlan.objects.filter(slug="developer").update(max_subscriptions=7)  # an operator's figure stays

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("accounts"))
    new_state = executor.loader.project_state(executor.loader.graph.leaf_nodes("accounts"))
    Plan = new_state.apps.get_model("accounts", "Plan")
    assert dict(Plan.objects.values_list("slug", "max_subscriptions")) == {
        "free": 100, "developer": 7, "expert": 1_000, "commercial": 10_000, "custom": 100,
    }
    Plan.objects.filter(slug="custom").delete()
