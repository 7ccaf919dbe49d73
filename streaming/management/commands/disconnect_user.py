"""End a user's live stream connection, wherever it is: the client hears ``force_disconnect``, then a 1008 close."""

from __future__ import annotations

import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from streaming.gateway.live_connections import live_connection_of, read_live_connections
from streaming.gateway.rechecks import request_disconnect

WAIT_SECONDS = 2.0
POLL_SECONDS = 0.05


class Command(BaseCommand):
    help = "Close USERNAME's live stream connection in whichever gateway process holds it; they may reconnect."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        record = read_live_connections(lambda client: live_connection_of(client, user.pk))
        if record is None:
            self.stdout.write(f"{username} has no live connection.")
            return
        request_disconnect([user.pk])
        deadline = time.monotonic() + WAIT_SECONDS
        while read_live_connections(lambda client: live_connection_of(client, user.pk)) is not None:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{username}'s connection on {record.gateway} did not close within {WAIT_SECONDS:g} s; if that "
                    "process is gone, its lock and record expire by themselves (STREAM_LOCK_TTL)."
                )
            time.sleep(POLL_SECONDS)
        self.stdout.write(f"Disconnected {username} ({record.market} from {record.client} on {record.gateway}).")
