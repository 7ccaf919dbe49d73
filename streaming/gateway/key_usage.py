"""When each API key was last used: noted on admission, written in one UPDATE per interval per process.

A reconnect storm of N keys then costs the database one write, not N, and the write leaves the admission path. The
first use after a quiet period is written at once, so ``last_used_at`` in the admin is fresh; uses within the next
``interval`` seconds are written together at its end.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async

from accounts.keys import stamp_last_used
from streaming.conf import stream_settings
from streaming.daphne.shutdown import run_after_drain
from streaming.runtime.loop_local import LoopLocal

logger = logging.getLogger(__name__)


class KeyUsage:
    _instances: LoopLocal[KeyUsage] = LoopLocal()

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: set[int] = set()
        self._writer: asyncio.Task | None = None

    @classmethod
    def for_loop(cls) -> KeyUsage:
        """This process's recorder (one per event loop)."""
        return cls._instances.get(lambda: cls(stream_settings().key_usage_interval))

    def note(self, key_id: int) -> None:
        self._pending.add(key_id)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_while_pending())

    @classmethod
    async def flush_for_loop(cls) -> None:
        """Write what this process has pending now (graceful shutdown), if it recorded anything."""
        usage = cls._instances.peek()
        if usage is not None:
            await usage._write(usage._take())

    def _take(self) -> set[int]:
        pending, self._pending = self._pending, set()
        return pending

    async def _write_while_pending(self) -> None:
        try:
            while self._pending:
                await self._write(self._take())
                await asyncio.sleep(self.interval)
        finally:
            self._writer = None

    @staticmethod
    async def _write(key_ids: set[int]) -> None:
        if not key_ids:
            return
        try:
            await database_sync_to_async(stamp_last_used)(key_ids)
        except Exception as error:  # bookkeeping never fails a stream
            logger.warning("last_used_at of %d key(s) not recorded: %s", len(key_ids), type(error).__name__)


run_after_drain(KeyUsage.flush_for_loop)  # a graceful shutdown writes the last interval's stamps
