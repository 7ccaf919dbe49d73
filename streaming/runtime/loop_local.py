"""One value per running event loop: a process's shared hub, Redis client or listener.

Under daphne a process runs one loop, so this means one per process; the test suite runs a loop per test, and a
value tied to a loop (its sockets, its tasks) must not leak into the next one, hence weak keys.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopLocal(Generic[T]):
    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self, make: Callable[[], T]) -> T:
        """The running loop's value, made by *make* on first use."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = make()
        return value

    def peek(self) -> T | None:
        """The running loop's value if one was made."""
        return self._values.get(asyncio.get_running_loop())

    def pop(self) -> T | None:
        """Forget the running loop's value, returning it if there was one."""
        return self._values.pop(asyncio.get_running_loop(), None)
