"""Load clients: asyncio ``websockets`` connections, many per process, driven by the harness over a pipe.

A worker runs one of three jobs:

- ``stream``: open its connections (Bearer key when it has keys), wait for ``auth_success``, subscribe and wait for
  the acks, report ready; then count the events received inside the measurement window the harness sends, and the
  latency of each frame (receive time minus the send time embedded by ``bench.upstream`` in its first event; every
  event of the frame is counted with that latency, which is exact for a frame built from one upstream frame and an
  upper bound when several were merged). A ``slow`` connection stops reading after its acks, like a stuck bot.
- ``admit``: connect with each key and wait for ``auth_success`` (time to it per connection), keep every connection
  open until the harness has counted the Redis commands of admission, then close them all (the harness counts again).
- ``idle``: hold subscribed connections that never receive data, growing to the count the harness asks for.
- ``probe``: a victim's admissions one after another at a steady pace inside the measurement window (connect, key,
  ``auth_success``, close), with warm keys, each timed; the neighbours scenario's second victim.
- ``attack``: one of ``bench.attacks``.

Counting is done on bytes (``bytes.count``), never by parsing JSON, so a client costs as little as ``websockets``
allows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.upstream import STAMP_PREFIX

CONNECT_CONCURRENCY = 20  # per process: the gateway answers 1011 beyond ~100 concurrent admissions (see BENCHMARKS.md)
OPEN_TIMEOUT_SECONDS = 60
AUTH_SUCCESS = b'"auth_success"'


@dataclass
class StreamJob:
    url: str
    keys: list[str | None]
    params: list[str]  # subscribe params per connection
    slow: list[bool] = field(default_factory=list)
    auth_by_message: bool = False  # the upstream's way ({"action":"auth"}), for clients connected to it directly


@dataclass
class AdmitJob:
    url: str
    keys: list[str]
    concurrency: int


@dataclass
class ProbeJob:
    url: str
    keys: list[str]  # taken in turn, so that no admission waits on the lock of the previous one's close
    per_second: float  # under the address's handshake budget (10/s), which the victim shares with its stream


@dataclass
class IdleJob:
    url: str
    keys: list[str]
    params: str


def headers(key: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {key}"} if key else None


async def open_subscribed(url: str, key: str | None, params: str, slow: bool = False,
                          auth_by_message: bool = False) -> ClientConnection:
    websocket = await connect(
        url, additional_headers=None if auth_by_message else headers(key), compression=None, max_size=None,
        open_timeout=OPEN_TIMEOUT_SECONDS, ping_interval=None, max_queue=1 if slow else 64,
    )
    if auth_by_message:
        await websocket.recv(decode=False)  # connected
        await websocket.send(f'{{"action":"auth","params":"{key}"}}')
    while AUTH_SUCCESS not in await websocket.recv(decode=False):
        pass
    await websocket.send(f'{{"action":"subscribe","params":"{params}"}}')
    expected = params.count(",") + 1
    acked = 0
    while acked < expected:
        acked += (await websocket.recv(decode=False)).count(b'"subscribed to: ')
    return websocket


async def bounded(coroutines, concurrency: int):
    semaphore = asyncio.Semaphore(concurrency)

    async def run(coroutine):
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(run(coroutine) for coroutine in coroutines))


class Recorder:
    def __init__(self) -> None:
        self.start_ns = 0
        self.end_ns = 0
        self.events = 0
        self.frames = 0
        self.latencies: list[int] = []
        self.weights: list[int] = []
        self.closed: dict[int, int] = {}

    async def read(self, websocket: ClientConnection) -> None:
        latencies, weights = self.latencies, self.weights
        try:
            while True:
                frame = await websocket.recv(decode=False)
                now = time.time_ns()
                if now < self.start_ns:
                    continue
                if now > self.end_ns:
                    return
                count = frame.count(STAMP_PREFIX)
                if not count:
                    continue
                position = frame.find(STAMP_PREFIX)
                latencies.append(now - int(frame[position + 5:position + 24]))
                weights.append(count)
                self.events += count
                self.frames += 1
        except ConnectionClosed:
            code = websocket.close_code or 1006
            self.closed[code] = self.closed.get(code, 0) + 1


async def run_stream(job: StreamJob, pipe) -> None:
    slow = job.slow or [False] * len(job.keys)
    connections = await bounded(
        [open_subscribed(job.url, key, params, is_slow, job.auth_by_message)
         for key, params, is_slow in zip(job.keys, job.params, slow, strict=False)],
        CONNECT_CONCURRENCY,
    )
    pipe.send(("ready", len(connections)))
    loop = asyncio.get_running_loop()
    command, start, end = await loop.run_in_executor(None, pipe.recv)
    assert command == "measure"
    recorder = Recorder()
    recorder.start_ns, recorder.end_ns = int(start * 1e9), int(end * 1e9)
    readers = [
        asyncio.ensure_future(recorder.read(ws)) for ws, is_slow in zip(connections, slow, strict=False) if not is_slow
    ]
    slow_closed: list[float] = []

    async def watch_slow(websocket: ClientConnection) -> None:
        await websocket.wait_closed()
        slow_closed.append(time.time())

    watchers = [
        asyncio.ensure_future(watch_slow(ws)) for ws, is_slow in zip(connections, slow, strict=False) if is_slow
    ]
    await asyncio.sleep(max(0.0, end - time.time()) + 0.2)
    for reader in readers + watchers:
        reader.cancel()
    for websocket, is_slow in zip(connections, slow, strict=False):
        if is_slow:  # a close handshake would wait behind everything the server queued for it (10 s and more)
            websocket.transport.abort()
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    pipe.send(("result", {
        "events": recorder.events,
        "frames": recorder.frames,
        "latencies_ns": np.asarray(recorder.latencies, dtype=np.int64),
        "weights": np.asarray(recorder.weights, dtype=np.int64),
        "closed": recorder.closed,
        "slow_closed_at": slow_closed,
    }))


async def admit_one(url: str, key: str) -> tuple[float, str, ClientConnection | None]:
    """(seconds to auth_success or to the failure, "ok" or what went wrong, the open connection if admitted)."""
    started = time.perf_counter()
    try:
        websocket = await connect(url, additional_headers=headers(key), compression=None, open_timeout=30,
                                  ping_interval=None, close_timeout=5)
    except (OSError, TimeoutError) as error:
        return time.perf_counter() - started, type(error).__name__, None
    try:
        while True:
            frame = await websocket.recv(decode=False)
            if AUTH_SUCCESS in frame:
                return time.perf_counter() - started, "ok", websocket
            if b'"connected"' not in frame:
                await websocket.close()
                return time.perf_counter() - started, frame.decode()[:120], None
    except (ConnectionClosed, OSError, TimeoutError) as error:
        return time.perf_counter() - started, type(error).__name__, None


async def run_admit(job: AdmitJob, pipe) -> None:
    pipe.send(("ready", 0))
    loop = asyncio.get_running_loop()
    command, start = await loop.run_in_executor(None, pipe.recv)
    await asyncio.sleep(max(0.0, start - time.time()))
    results = await bounded([admit_one(job.url, key) for key in job.keys], job.concurrency)
    finished = time.time()
    failures: dict[str, int] = {}
    for _, outcome, _ in results:
        if outcome != "ok":
            failures[outcome] = failures.get(outcome, 0) + 1
    pipe.send(("result", {
        "finished": finished,
        "times": np.asarray([seconds for seconds, outcome, _ in results if outcome == "ok"], dtype=np.float64),
        "failures": failures,
    }))
    command = await loop.run_in_executor(None, pipe.recv)
    assert command == ("close",)
    await asyncio.gather(*(websocket.close() for _, _, websocket in results if websocket is not None),
                         return_exceptions=True)
    pipe.send(("closed", None))


async def run_idle(job: IdleJob, pipe) -> None:
    loop = asyncio.get_running_loop()
    connections: list[ClientConnection] = []
    keys = iter(job.keys)
    while True:
        message = await loop.run_in_executor(None, pipe.recv)
        if message[0] == "grow":
            target = message[1]
            fresh = [next(keys) for _ in range(target - len(connections))]
            connections += await bounded([open_subscribed(job.url, key, job.params) for key in fresh],
                                         CONNECT_CONCURRENCY)
            pipe.send(("ready", len(connections)))
        else:
            await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
            pipe.send(("result", {"closed": len(connections)}))
            return


async def run_probe(job: ProbeJob, pipe) -> None:
    for key in job.keys:  # warm: every key cached, the process's pools open
        _, outcome, websocket = await admit_one(job.url, key)
        if websocket is not None:
            await websocket.close()
    pipe.send(("ready", 0))
    loop = asyncio.get_running_loop()
    command, start, end = await loop.run_in_executor(None, pipe.recv)
    assert command == "measure"
    times: list[float] = []
    failures: dict[str, int] = {}
    for index in itertools.count():
        due = start + index / job.per_second
        if due >= end:
            break
        await asyncio.sleep(max(0.0, due - time.time()))
        seconds, outcome, websocket = await admit_one(job.url, job.keys[index % len(job.keys)])
        if websocket is not None:
            times.append(seconds)
            await websocket.close()
        else:
            failures[outcome] = failures.get(outcome, 0) + 1
    pipe.send(("result", {"times": np.asarray(times, dtype=np.float64), "failures": failures}))


def worker(job, pipe) -> None:
    """Entry point of a client process."""
    from bench.attacks import AttackJob, run_attack
    from devstack.open_files import raise_open_file_limit

    raise_open_file_limit()
    runners: dict[type, Callable[[Any, Any], Coroutine[Any, Any, None]]] = {
        StreamJob: run_stream, AdmitJob: run_admit, IdleJob: run_idle, ProbeJob: run_probe, AttackJob: run_attack,
    }
    runner = runners[type(job)]
    try:
        asyncio.run(runner(job, pipe))
    except BaseException as error:  # report, so the harness does not wait forever
        pipe.send(("error", f"{type(error).__name__}: {error}"))
        raise
