"""Set the plan a user has for one product."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Plan, Product, ProductTier, User


class Command(BaseCommand):
    help = "Set a user's plan for one product (stocks or options)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--product", required=True, choices=Product.values)
        parser.add_argument("--plan", required=True, help="Plan slug: free, developer, expert, commercial, ...")

    def handle(self, *args, username: str, product: str, plan: str, **options) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        plan_obj = Plan.objects.filter(slug=plan).first()
        if plan_obj is None:
            known = ", ".join(Plan.objects.values_list("slug", flat=True))
            raise CommandError(f"No plan {plan!r} (known plans: {known}).")
        tier, created = ProductTier.objects.get_or_create(user=user, product=product, defaults={"plan": plan_obj})
        if not created and tier.plan_id != plan_obj.pk:
            tier.plan = plan_obj
            tier.save(update_fields=["plan"])
        self.stdout.write(f"{username}: {product} plan is now {plan_obj.name}.")
