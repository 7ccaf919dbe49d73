"""Background tasks an object owns, and cancellations that a Redis read swallowed.

asyncio keeps only a weak reference to a running task, so a task nobody holds can vanish mid-flight; and on Python
3.11, a cancellation that arrives just as an ``asyncio.wait_for`` completes is lost (python/cpython#86296), which
redis-py's socket timeouts hit: a cancelled keeper or listener would then run on. Every part of the gateway that
starts tasks or awaits Redis in a task that may be cancelled uses these two helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOP_RETRY_SECONDS = 0.1
"""How long ``BackgroundTasks.stop`` waits for a cancelled task before cancelling it again."""


class BackgroundTasks:
    """The tasks one connection, hub or listener started: held until they finish, cancelled together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Ask every task to stop (returns at once)."""
        for task in list(self._tasks):
            task.cancel()

    async def stop(self) -> None:
        """Cancel every task and wait until each has ended, cancelling again any that swallowed its cancellation."""
        for task in list(self._tasks):
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=STOP_RETRY_SECONDS)


class CancellationGuard:
    """Remembers how often the current task had been cancelled; ``check`` raises if it was cancelled since.

    Create it where the task starts the work, call ``check`` after each await that may swallow a cancellation.
    """

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        self._baseline = self._task.cancelling() if self._task is not None else 0

    def check(self) -> None:
        if self._task is not None and self._task.cancelling() > self._baseline:
            raise asyncio.CancelledError


async def honouring_cancellation(command: Awaitable[T]) -> T:
    """Await *command* (a redis-py call), and raise `CancelledError` if the task was cancelled meanwhile even when
    the command returned a result."""
    guard = CancellationGuard()
    result = await command
    guard.check()
    return result
