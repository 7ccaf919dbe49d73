"""LoopLocal: one value per running event loop, made once, forgotten on pop."""

from __future__ import annotations

import asyncio

from streaming.runtime.loop_local import LoopLocal


def test_each_loop_gets_its_own_value_made_once():
    local: LoopLocal[list] = LoopLocal()
    made = []

    def make() -> list:
        made.append(1)
        return []

    async def twice() -> tuple[list, list, list | None]:
        return local.get(make), local.get(make), local.peek()

    first, again, peeked = asyncio.run(twice())
    assert first is again is peeked and len(made) == 1
    other, _, _ = asyncio.run(twice())  # a new loop: a new value
    assert other is not first and len(made) == 2


def test_pop_forgets_the_running_loops_value():
    local: LoopLocal[object] = LoopLocal()

    async def scenario() -> None:
        assert local.pop() is None and local.peek() is None
        value = local.get(object)
        assert local.pop() is value
        assert local.peek() is None and local.get(object) is not value

    asyncio.run(scenario())
