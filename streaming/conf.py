"""The gateway's settings as one typed object, read from Django settings (which read the environment).

Code asks ``stream_settings()`` instead of reaching into ``django.conf.settings``, so the meaning of each knob
lives in one place; overriding a ``STREAM_*`` setting (tests) refreshes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

MARKETS = ("options", "stocks")
FAILURE_MODE_OPEN = "open"
FANOUT_RELAY = "relay"


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    api_key: str

    @property
    def configured(self) -> bool:
        return bool(self.url and self.api_key)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    upstreams: dict[str, Upstream]
    lock_ttl: float
    lock_failure_mode: str
    lock_wait: float
    auth_timeout: float
    reject_grace: float
    allowed_origins: tuple[str, ...]
    upstream_idle_seconds: float
    upstream_silence_seconds: float
    client_buffer_bytes: int
    client_message_rate: float
    client_message_burst: int
    client_refusals_before_close: int
    client_item_rate: float
    client_item_burst: int
    upstream_option_quote_contracts: int
    client_ping_rate: float
    client_ping_burst: int
    client_inbound_bytes: int
    client_max_message_bytes: int
    handshake_timeout: float
    address_handshake_rate: float
    address_handshake_burst: int
    address_failures_per_minute: int
    address_pending_sockets: int
    address_refusals_before_drop: int
    fanout: str
    relay_prefix: str
    relay_registration_ttl: float
    relay_unsubscribe_grace: float
    relay_lease_ttl: float
    key_usage_interval: float

    def upstream(self, market: str) -> Upstream | None:
        """The market's upstream if this process serves the market. In relay mode the feed relays hold the key,
        so a gateway needs only the market's URL (which it never connects to) to serve it."""
        upstream = self.upstreams.get(market)
        if upstream is None:
            return None
        served = bool(upstream.url) if self.fanout == FANOUT_RELAY else upstream.configured
        return upstream if served else None

    def upstream_item_limits(self, market: str) -> dict[str, int]:
        """The most items of each event type one connection to the feed may hold in *market* (the feed refuses
        more): option quotes are limited to a number of contracts per connection; nothing else is."""
        return {"Q": self.upstream_option_quote_contracts} if market == "options" else {}


@lru_cache(maxsize=1)
def stream_settings() -> StreamSettings:
    return StreamSettings(
        upstreams={
            market: Upstream(url=config["URL"], api_key=config["API_KEY"])
            for market, config in settings.STREAM_UPSTREAMS.items()
        },
        lock_ttl=settings.STREAM_LOCK_TTL,
        lock_failure_mode=settings.STREAM_LOCK_FAILURE_MODE,
        lock_wait=settings.STREAM_LOCK_WAIT,
        auth_timeout=settings.STREAM_AUTH_TIMEOUT,
        reject_grace=settings.STREAM_REJECT_GRACE,
        allowed_origins=tuple(settings.STREAM_ALLOWED_ORIGINS),
        upstream_idle_seconds=settings.STREAM_UPSTREAM_IDLE_SECONDS,
        upstream_silence_seconds=settings.STREAM_UPSTREAM_SILENCE_SECONDS,
        client_buffer_bytes=settings.STREAM_CLIENT_BUFFER_BYTES,
        client_message_rate=settings.STREAM_CLIENT_MESSAGE_RATE,
        client_message_burst=settings.STREAM_CLIENT_MESSAGE_BURST,
        client_refusals_before_close=settings.STREAM_CLIENT_REFUSALS_BEFORE_CLOSE,
        client_item_rate=settings.STREAM_CLIENT_ITEM_RATE,
        client_item_burst=settings.STREAM_CLIENT_ITEM_BURST,
        upstream_option_quote_contracts=settings.STREAM_UPSTREAM_OPTION_QUOTE_CONTRACTS,
        client_ping_rate=settings.STREAM_CLIENT_PING_RATE,
        client_ping_burst=settings.STREAM_CLIENT_PING_BURST,
        client_inbound_bytes=settings.STREAM_CLIENT_INBOUND_BYTES,
        client_max_message_bytes=settings.STREAM_CLIENT_MAX_MESSAGE_BYTES,
        handshake_timeout=settings.STREAM_HANDSHAKE_TIMEOUT,
        address_handshake_rate=settings.STREAM_ADDRESS_HANDSHAKE_RATE,
        address_handshake_burst=settings.STREAM_ADDRESS_HANDSHAKE_BURST,
        address_failures_per_minute=settings.STREAM_ADDRESS_FAILURES_PER_MINUTE,
        address_pending_sockets=settings.STREAM_ADDRESS_PENDING_SOCKETS,
        address_refusals_before_drop=settings.STREAM_ADDRESS_REFUSALS_BEFORE_DROP,
        fanout=settings.STREAM_FANOUT,
        relay_prefix=settings.STREAM_RELAY_PREFIX,
        relay_registration_ttl=settings.STREAM_RELAY_REGISTRATION_TTL,
        relay_unsubscribe_grace=settings.STREAM_RELAY_UNSUBSCRIBE_GRACE,
        relay_lease_ttl=settings.STREAM_RELAY_LEASE_TTL,
        key_usage_interval=settings.STREAM_KEY_USAGE_INTERVAL,
    )


@receiver(setting_changed)
def _forget_on_change(setting: str, **kwargs) -> None:
    if setting.startswith("STREAM_"):
        stream_settings.cache_clear()
