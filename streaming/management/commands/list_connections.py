"""List the live stream connections of every gateway process, from their records in Redis."""

from __future__ import annotations

import dataclasses

import orjson
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from streaming.gateway.live_connections import live_connections, read_live_connections

COLUMNS = ("user", "key_prefix", "market", "client", "gateway", "connected_at", "subscriptions", "events", "bytes_sent",
           "outbox_bytes")


class Command(BaseCommand):
    help = "One line per live stream connection across every gateway process (counters as of the last lock refresh)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def handle(self, *args, json: bool, **options) -> None:
        records = read_live_connections(live_connections)
        users = get_user_model().objects.in_bulk({record.user_id for record in records})
        rows = []
        for record in records:
            user = users.get(record.user_id)
            row = dataclasses.asdict(record)
            row["user"] = user.get_username() if user is not None else f"#{record.user_id}"
            row["gateway"] = record.gateway
            rows.append(row)
        if json:
            for row in rows:
                self.stdout.write(orjson.dumps(row).decode())
            return
        if not rows:
            self.stdout.write("No live connections.")
            return
        table = [COLUMNS] + [tuple(str(row[column]) for column in COLUMNS) for row in rows]
        widths = [max(len(line[index]) for line in table) for index in range(len(COLUMNS))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
