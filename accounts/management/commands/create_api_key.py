"""Create an API key for a user and print the raw key alone on stdout (it is never shown again)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import ApiKey, Product, User


class Command(BaseCommand):
    help = "Create a product-scoped API key and print it (alone) on stdout."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--product", required=True, choices=Product.values)
        parser.add_argument("--label", default="")
        parser.add_argument("--create-user", action="store_true", help="Create the user if it does not exist.")

    def handle(self, *args, username: str, product: str, label: str, create_user: bool, **options) -> None:
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not create_user:
                    raise CommandError(f"No user named {username!r} (use --create-user to create it).")
                user = User.objects.create_user(username=username)
            _, raw_key = ApiKey.objects.create_key(user=user, product=product, label=label)
        self.stdout.write(raw_key)
