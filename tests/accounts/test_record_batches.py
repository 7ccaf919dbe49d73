"""RecordBatches with a loader the test controls (which keys each query asked for, when it answers), and the real
query behind it for several keys at once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from accounts import keys
from accounts.record_batches import RecordBatches
from tests.accounts.factories import make_key, make_user

TIMEOUT = 5.0


class Loader:
    """Answers each query once the test lets it (``release``), from ``records``; remembers what each asked for."""

    def __init__(self, records: dict[str, dict]) -> None:
        self.records = records
        self.queries: list[list[str]] = []
        self.started = threading.Semaphore(0)
        self._released = threading.Semaphore(0)
        self.error: Exception | None = None

    def __call__(self, prefixes: list[str]) -> dict[str, dict]:
        self.queries.append(prefixes)
        self.started.release()
        assert self._released.acquire(timeout=TIMEOUT)
        if self.error is not None:
            raise self.error
        return {prefix: self.records[prefix] for prefix in prefixes if prefix in self.records}

    def release(self) -> None:
        self._released.release()

    async def query_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, timeout=TIMEOUT)


async def test_misses_during_a_query_share_the_next_one_and_each_gets_its_own_record():
    loader = Loader({"a": {"id": 1}, "b": {"id": 2}})
    batches = RecordBatches(loader)
    first = asyncio.ensure_future(batches.record("a"))
    await loader.query_started()  # alone: its query starts at once
    waiting = [asyncio.ensure_future(batches.record(prefix)) for prefix in ("b", "a", "unknown", "b")]
    await asyncio.sleep(0)  # they are all waiting now
    loader.release()
    assert await first == {"id": 1}
    await loader.query_started()
    loader.release()
    assert await asyncio.gather(*waiting) == [{"id": 2}, {"id": 1}, None, {"id": 2}]
    assert loader.queries == [["a"], ["b", "a", "unknown"]]  # each prefix once per query


async def test_a_failed_query_fails_each_of_its_waiters_and_the_next_miss_queries_again():
    loader = Loader({"a": {"id": 1}})
    loader.error = RuntimeError("database unreachable")
    batches = RecordBatches(loader)
    waiting = [asyncio.ensure_future(batches.record(prefix)) for prefix in ("a", "b")]
    await loader.query_started()
    loader.release()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, RuntimeError) and str(outcome) == "database unreachable"
    loader.error = None
    again = asyncio.ensure_future(batches.record("a"))
    await loader.query_started()
    loader.release()
    assert await again == {"id": 1}


async def test_a_waiter_that_gives_up_leaves_the_others_their_answer():
    loader = Loader({"a": {"id": 1}})
    batches = RecordBatches(loader)
    leaving, staying = (asyncio.ensure_future(batches.record("a")) for _ in range(2))
    await loader.query_started()
    leaving.cancel()
    loader.release()
    assert await staying == {"id": 1}
    assert leaving.cancelled()


@pytest.mark.django_db(transaction=True)
async def test_the_query_loads_several_keys_each_with_its_own_plan():
    expert = await sync_to_async(make_user)("expert", plans={"options": "expert"})
    developer = await sync_to_async(make_user)("developer", plans={"stocks": "developer"})
    expert_key, _ = await sync_to_async(make_key)(expert, "options")
    developer_key, _ = await sync_to_async(make_key)(developer, "stocks")
    records = await sync_to_async(keys.load_records)([expert_key.prefix, developer_key.prefix, "cmo_nosuchkey000"])
    assert set(records) == {expert_key.prefix, developer_key.prefix}
    assert (records[expert_key.prefix]["user_id"], records[expert_key.prefix]["plan_slug"]) == (expert.pk, "expert")
    assert (records[developer_key.prefix]["user_id"], records[developer_key.prefix]["plan_slug"]) == (
        developer.pk, "developer")
