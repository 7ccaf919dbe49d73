"""A client of a feed relay's probe port for tests: one request per connection over a real socket, as an
orchestrator's health check or Prometheus sends it, and the relay's metrics read back from its text format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 10.0
POLL_SECONDS = 0.05


@dataclass
class ProbeResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def parse_response(raw: bytes) -> ProbeResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    assert int(headers["content-length"]) == len(body)
    return ProbeResponse(int(status_line.split(" ")[1]), headers, body)


async def request(host: str, port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
                  timeout: float = TIMEOUT) -> ProbeResponse:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            fields = "".join(f"{name}: {value}\r\n" for name, value in {"Host": host, **(headers or {})}.items())
            writer.write(f"{method} {path} HTTP/1.1\r\n{fields}\r\n".encode())
            return parse_response(await reader.read())  # the server closes after its answer
        finally:
            writer.close()


def relay_samples(response: ProbeResponse, market: str) -> dict[str, float]:
    """The relay's own samples of a /metrics answer (``cutemarkets_relay_*``) by name; each must carry exactly one
    label, the relay's market."""
    assert response.status == 200, response.body
    found = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            if sample.name.startswith("cutemarkets_relay_"):
                assert sample.labels == {"market": market}, sample
                found[sample.name] = sample.value
    return found


async def metrics(host: str, port: int, market: str) -> dict[str, float]:
    return relay_samples(await request(host, port, "/metrics"), market)


async def until(check: Callable[[], Awaitable[object]], timeout: float = TIMEOUT) -> None:
    """Poll *check* (state behind the probe port) until it answers truthy."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(POLL_SECONDS)
