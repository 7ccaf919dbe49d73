"""A feed relay's Prometheus metrics, in a registry of its own, served on its probe port (``/metrics``).

Every value is read from the relay's `RelayStatus` when Prometheus scrapes, like the gateway's
`streaming.metrics.ForwardedTotals`: the publish path counts frames as a plain integer instead of taking a metric's
lock once per frame. The registry is the relay's own, not prometheus-client's global one, so only relay series (and
the process's own) appear; each carries the relay's ``market``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streaming.relay.status import RelayStatus


class RelayCollector:
    """The relay's six series, each labelled with its market."""

    def __init__(self, status: RelayStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status
        yield self._counter("cutemarkets_relay_frames_published", "Upstream frames published to Redis.",
                            status.frames_published)
        yield self._gauge("cutemarkets_relay_lease_held", "1 while this relay holds its market's lease, else 0.",
                          int(status.lease_held))
        yield self._gauge("cutemarkets_relay_upstream_connected",
                          "1 while this relay's upstream feed connection is open, else 0.",
                          int(status.upstream_connected))
        yield self._gauge("cutemarkets_relay_registered_items",
                          "Items this relay subscribes upstream: the union of what the gateway processes registered.",
                          status.registered_items)
        yield self._counter("cutemarkets_relay_lease_acquisitions",
                            "Times this relay took its market's lease (start-ups, takeovers, failovers).",
                            status.lease_acquisitions)
        yield self._counter("cutemarkets_relay_upstream_failures",
                            "Upstream connections that failed to open or ended in an error (each is retried with "
                            "backoff while the relay holds the lease).",
                            status.upstream_failures)

    def _counter(self, name: str, documentation: str, value: int) -> Metric:
        family = CounterMetricFamily(name, documentation, labels=["market"])
        family.add_metric([self.status.market], value)
        return family

    def _gauge(self, name: str, documentation: str, value: int) -> Metric:
        family = GaugeMetricFamily(name, documentation, labels=["market"])
        family.add_metric([self.status.market], value)
        return family


def relay_registry(status: RelayStatus) -> CollectorRegistry:
    """A registry with the relay's series and the process's own (CPU, memory, open files, Python, GC)."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(status))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry
