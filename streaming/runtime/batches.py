"""Calls that arrive while one is running go together in the next: one Redis round trip for many connections.

A process takes and releases its connections' locks by the thousand at once (a deploy, a reconnect wave, a close
storm). With one call per lock each call waited for a pooled Redis connection, and while the event loop was busy the
pool's wait ran out: a release left its lock to answer the user's reconnect 4409 for a whole TTL, an acquire answered
1011. Here an item submitted while a call runs waits for the next call, which takes every item waiting by then (up to
a batch's size); an item alone is sent at once, so nothing waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from streaming.runtime.tasks import BackgroundTasks

Item = TypeVar("Item", bound=Hashable)
Result = TypeVar("Result")


def _ignore(items: Sequence[object], error: Exception) -> None:
    pass


class Batches(Generic[Item, Result]):
    """The batches of one kind of call. *call* gets a batch of items and returns their results in order; when it
    raises, every item of the batch fails with its error and *failed* is told which items they were.

    A caller cancelled while its item waits for a call either leaves the item to go on (a release must happen
    whoever waits for it) or, with *withdraw_cancelled*, takes it back (an acquire for a client that left must not
    take a lock nobody would release); once sent, an item's call runs to its end.
    """

    def __init__(
        self, call: Callable[[list[Item]], Awaitable[Sequence[Result]]], *, size: int,
        failed: Callable[[list[Item], Exception], None] = _ignore, withdraw_cancelled: bool = False,
    ) -> None:
        self._call = call
        self._size = size
        self._failed = failed
        self._withdraw_cancelled = withdraw_cancelled
        self._waiting: dict[Item, list[asyncio.Future[Result]]] = {}
        self._tasks = BackgroundTasks()
        self._sending: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """*item*'s result, from a call with the items submitted meanwhile. Raises what the call raised."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(item, [])
        waiters.append(future)
        self._start()
        try:
            return await future
        except asyncio.CancelledError:
            if self._withdraw_cancelled and self._waiting.get(item) is waiters:  # not sent yet
                waiters.remove(future)
                if not waiters:
                    del self._waiting[item]
            raise

    def submit_unawaited(self, item: Item) -> None:
        """Put *item* in the next call with nobody waiting for its result (a retry)."""
        self._waiting.setdefault(item, [])
        self._start()

    async def stop(self) -> None:
        """Stop sending; whoever still waits is cancelled."""
        await self._tasks.stop()
        for futures in self._waiting.values():
            for future in futures:
                future.cancel()
        self._waiting.clear()

    def _start(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = self._tasks.spawn(self._send_waiting())

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch = dict(itertools.islice(self._waiting.items(), self._size))
            for item in batch:
                del self._waiting[item]
            try:
                results = await self._call(list(batch))
            except asyncio.CancelledError:  # stopped
                for futures in batch.values():
                    for future in futures:
                        future.cancel()
                raise
            except Exception as error:  # every item fails as its own call would have
                self._failed(list(batch), error)
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                continue
            for futures, result in zip(batch.values(), results, strict=True):
                for future in futures:
                    if not future.done():  # a caller cancelled meanwhile
                        future.set_result(result)
