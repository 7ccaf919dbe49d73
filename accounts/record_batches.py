"""Cold key records loaded in batches: cache misses that come together share one query and one worker thread.

A cold admission costs a database query in a worker thread, and the query itself is the small part (0.02 ms to run
against ~1 ms to build and compile it, plus the hand-off to the thread and back). Misses come together when many
customers connect at once (a deploy, a reconnect wave after an outage, cache entries expiring together): here a miss
that arrives while a query runs waits for the next one, which loads every key waiting by then in one query. A miss
alone starts its query at once, so nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from channels.db import database_sync_to_async

MAX_BATCH = 500
"""Prefixes per query: far below the databases' limits on query parameters (SQLite's is 32,766)."""

Loader = Callable[[list[str]], dict[str, dict]]
"""Records of the keys with these prefixes, by prefix (prefixes of no key left out); run in a worker thread."""


class RecordBatches:
    """The cold loads of one event loop (`for_loop`)."""

    def __init__(self, load: Loader) -> None:
        self._load = load
        self._waiting: dict[str, list[asyncio.Future[dict | None]]] = {}
        self._loading: asyncio.Task[None] | None = None

    @classmethod
    def for_loop(cls, load: Loader) -> RecordBatches:
        """The batches of *load* on the running event loop."""
        of_loop = _per_loop.setdefault(asyncio.get_running_loop(), {})
        batches = of_loop.get(load)
        if batches is None:
            batches = of_loop[load] = cls(load)
        return batches

    async def record(self, prefix: str) -> dict | None:
        """The record of the key with *prefix*, None if there is none. Raises what the database raised."""
        future: asyncio.Future[dict | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(prefix, []).append(future)
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load_waiting())
        return await future

    async def _load_waiting(self) -> None:
        batch: dict[str, list[asyncio.Future[dict | None]]] = {}
        try:
            while self._waiting:
                prefixes = list(self._waiting)[:MAX_BATCH]
                batch = {prefix: self._waiting.pop(prefix) for prefix in prefixes}
                try:
                    records = await database_sync_to_async(self._load, thread_sensitive=False)(prefixes)
                except Exception as error:  # every waiter fails as its own query would have
                    for future in _pending(batch):
                        future.set_exception(error)
                else:
                    for prefix, futures in batch.items():
                        for future in _pending({prefix: futures}):
                            future.set_result(records.get(prefix))
        finally:
            self._loading = None
            for future in _pending({**batch, **self._waiting}):  # only when cancelled: the loop is closing
                future.cancel()
            self._waiting.clear()


def _pending(batch: dict[str, list[asyncio.Future[dict | None]]]) -> list[asyncio.Future[dict | None]]:
    """The futures of *batch* still waiting (a waiter whose client left has cancelled its own)."""
    return [future for futures in batch.values() for future in futures if not future.done()]


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Loader, RecordBatches]] = (
    weakref.WeakKeyDictionary()
)
