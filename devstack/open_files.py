"""The open-file limit of a gateway process: every WebSocket is a file descriptor, and the usual soft limit (1,024)
stops one process at about a thousand clients. Children inherit the raised limit (daphne, the bench's clients)."""

from __future__ import annotations

import resource

WANTED_OPEN_FILES = 65_536
"""What a gateway process should be allowed: 30,000 connections and more (deploy/entrypoint.sh asks the same)."""


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft limit of open files to *wanted*, raising the hard limit too where that is allowed (root), else
    to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        target = (max(soft, wanted), hard)
    else:
        target = (wanted, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, target)
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as far as it is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
