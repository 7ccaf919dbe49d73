"""daphne's access log without query strings, through Python logging.

daphne logs an HTTP request's full URI, query string included, and a browser's key travels in ``?api_key=``. The
patched ``AccessLogGenerator.write_entry`` writes one line per request or WebSocket event through the
``streaming.daphne.access_log`` logger, with the path only, so it takes the process's format (``LOG_FORMAT=json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

MAX_LOGGED_PATH_LENGTH = 256
"""Access-log lines carry at most this much of a request path (a client chooses its path, and its length)."""

logger = logging.getLogger(__name__)


def patched_write_entry(original: Callable[..., None]) -> Callable[..., None]:
    def write_entry(
        self: Any, host: Any, date: Any, request: str, status: Any = None, length: Any = None, **extra: Any
    ) -> None:
        """One access-log line per request or WebSocket event, through the ``streaming.daphne.access_log`` logger.

        daphne logs an HTTP request's full URI, query string included, and a browser's key travels in ``?api_key=``;
        the query string is cut off here, whatever the protocol. Going through logging gives the line the process's
        format (``LOG_FORMAT=json``) instead of daphne's own stream.
        """
        method, _, target = request.partition(" ")
        path = target.split("?", 1)[0]
        if len(path) > MAX_LOGGED_PATH_LENGTH:
            path = path[:MAX_LOGGED_PATH_LENGTH] + "…"
        logger.info("%s %s %s %s %s", host, method, path, status or "-", length or "-")

    return write_entry
