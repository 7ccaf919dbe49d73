"""Revoke an API key by its public prefix; the row stays for audit, the key never works again."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by its public prefix (e.g. cmo_AbC123xyz789)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options) -> None:
        api_key = ApiKey.objects.filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        if api_key.is_revoked:
            self.stdout.write(f"{prefix} was already revoked at {api_key.revoked_at:%Y-%m-%d %H:%M:%S} UTC.")
            return
        api_key.revoke()
        self.stdout.write(f"Revoked {prefix}.")
