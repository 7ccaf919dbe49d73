"""Exceptions of the streaming gateway, in one hierarchy.

* `StreamingError`
    * `LeaseUnavailable`: Redis could not answer, so whether a lease (connection lock, relay lease) is held is unknown
    * `UpstreamError`: the upstream connection could not be opened or was lost
        * `UpstreamUnavailable`: refused, timed out, dropped, or not speaking the feed protocol
            * `RelayGap`: in relay mode, frames of the relay may have been missed
        * `UpstreamRejected`: the feed refused our authentication
    * `SubscriptionRefused`: a subscribe the feed would refuse (its limit per connection), refused whole instead
    * `IncompatibleServer`: the installed daphne, autobahn or Twisted lacks an internal the daphne patches rely on

The hub turns an `UpstreamError` into 1011 for its clients; the consumer turns `LeaseUnavailable` at admission into
1011 (or a fail-open admission); a `SubscriptionRefused` is an error status to the client, its connection
untouched; `IncompatibleServer` stops the process at start-up.
"""

from __future__ import annotations


class StreamingError(Exception):
    """Base class of the gateway's own exceptions."""


class LeaseUnavailable(StreamingError):
    """Redis could not answer, so whether the lease is held is unknown; the original error is the ``__cause__``."""


class UpstreamError(StreamingError):
    """The upstream connection could not be opened or was lost."""


class UpstreamUnavailable(UpstreamError):
    """Refused, timed out, dropped, or spoke something that is not the feed protocol."""


class RelayGap(UpstreamUnavailable):
    """The gateway cannot vouch that it saw every frame of the relay (the hub closes its clients with 1011)."""


class UpstreamRejected(UpstreamError):
    """The feed answered our authentication with a refusal (auth_failed, max_connections...)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SubscriptionRefused(StreamingError):
    """Subscribing would take the shared feed connection over a limit of the feed; nothing was changed. The text is
    the client's answer."""


class IncompatibleServer(StreamingError):
    """daphne, autobahn or Twisted lacks an internal that ``streaming.daphne`` patches or calls."""
