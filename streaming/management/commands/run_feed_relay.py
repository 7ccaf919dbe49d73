"""``manage.py run_feed_relay --market {options,stocks}``: the feed relay of one market (see streaming.relay.leader).

Run two per market for high availability; gateways with ``STREAM_FANOUT=relay`` take their frames from it. SIGTERM
or SIGINT stops it cleanly: it leaves the upstream, tells the gateways, and releases its lease to the standby.
It serves ``/healthz``, ``/readyz`` and ``/metrics`` on its probe port (streaming.relay.probes); a port that cannot
be bound stops it before it stands by.
"""

from __future__ import annotations

import asyncio
import signal

from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError

from streaming.conf import MARKETS, stream_settings
from streaming.relay.leader import FeedRelay
from streaming.relay.metrics import relay_registry
from streaming.relay.probes import ProbeServer
from streaming.relay.wire import RelayNames
from streaming.runtime.redis_client import redis_client

HIGHEST_PORT = 65535


class Command(BaseCommand):
    help = "Hold the deployment's single upstream connection of one market and publish its frames to Redis."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--market", choices=MARKETS, required=True, help="The market this relay serves.")
        parser.add_argument(
            "--probe-host", default=django_settings.RELAY_PROBE_HOST,
            help="Address of the probe port (/healthz, /readyz, /metrics); default $RELAY_PROBE_HOST or 0.0.0.0.",
        )
        parser.add_argument(
            "--probe-port", type=int, default=django_settings.RELAY_PROBE_PORT,
            help="The probe port; 0 picks a free one (printed at start-up). Default $RELAY_PROBE_PORT or 9108.",
        )

    def handle(self, *args, market: str, probe_host: str, probe_port: int, **options) -> None:
        if not 0 <= probe_port <= HIGHEST_PORT:
            raise CommandError(f"--probe-port must be a port number from 0 to {HIGHEST_PORT}, got {probe_port}.")
        settings = stream_settings()
        upstream = settings.upstreams.get(market)
        if upstream is None or not upstream.configured:
            raise CommandError(
                f"UPSTREAM_{market.upper()}_URL and UPSTREAM_API_KEY (or UPSTREAM_{market.upper()}_API_KEY) "
                "must be set for the relay."
            )
        asyncio.run(self._run(market, probe_host, probe_port))

    async def _run(self, market: str, probe_host: str, probe_port: int) -> None:
        settings = stream_settings()
        relay = FeedRelay(
            market,
            settings.upstreams[market],
            RelayNames(settings.relay_prefix, market),
            redis_client(),
            lease_ttl=settings.relay_lease_ttl,
            grace_seconds=settings.relay_unsubscribe_grace,
        )
        probes = ProbeServer(relay.status, relay_registry(relay.status))
        try:
            await probes.start(probe_host, probe_port)
        except OSError as error:
            raise CommandError(
                f"cannot serve the probes on {probe_host}:{probe_port} (--probe-host/--probe-port, "
                f"RELAY_PROBE_HOST/RELAY_PROBE_PORT): {error}"
            ) from None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, relay.stop)
        self.stdout.write(
            f"Feed relay for {market} started (prefix {settings.relay_prefix!r}), "
            f"probes on http://{probe_host}:{probes.port}/"
        )
        self.stdout.flush()
        try:
            await relay.run()
        finally:
            await probes.close()
