"""``manage.py run_feed_simulator``: run the Polygon.io/Massive-compatible feed simulator (see streaming.simulator)."""

import asyncio

from django.core.management.base import BaseCommand

from streaming.simulator.cli import add_arguments, serve_until_signalled, simulator_from_options


class Command(BaseCommand):
    help = "Run the feed simulator: a local stand-in for the upstream market-data WebSocket feed."

    def add_arguments(self, parser) -> None:
        add_arguments(parser)

    def handle(self, *args, **options) -> None:
        asyncio.run(serve_until_signalled(simulator_from_options(options), self._announce))

    def _announce(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
