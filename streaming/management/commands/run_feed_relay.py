"""``manage.py run_feed_relay --market {options,stocks}``: the feed relay of one market (see streaming.relay.leader).

Run two per market for high availability; gateways with ``STREAM_FANOUT=relay`` take their frames from it. SIGTERM
or SIGINT stops it cleanly: it leaves the upstream, tells the gateways, and releases its lease to the standby.
"""

from __future__ import annotations

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError

from streaming.conf import MARKETS, stream_settings
from streaming.relay.leader import FeedRelay
from streaming.relay.wire import RelayNames
from streaming.runtime.redis_client import redis_client


class Command(BaseCommand):
    help = "Hold the deployment's single upstream connection of one market and publish its frames to Redis."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--market", choices=MARKETS, required=True, help="The market this relay serves.")

    def handle(self, *args, market: str, **options) -> None:
        settings = stream_settings()
        upstream = settings.upstreams.get(market)
        if upstream is None or not upstream.configured:
            raise CommandError(
                f"UPSTREAM_{market.upper()}_URL and UPSTREAM_API_KEY (or UPSTREAM_{market.upper()}_API_KEY) "
                "must be set for the relay."
            )
        asyncio.run(self._run(market))

    async def _run(self, market: str) -> None:
        settings = stream_settings()
        relay = FeedRelay(
            market,
            settings.upstreams[market],
            RelayNames(settings.relay_prefix, market),
            redis_client(),
            lease_ttl=settings.relay_lease_ttl,
            grace_seconds=settings.relay_unsubscribe_grace,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, relay.stop)
        self.stdout.write(f"Feed relay for {market} started (prefix {settings.relay_prefix!r})")
        self.stdout.flush()
        await relay.run()
