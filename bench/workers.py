"""Client processes of one trial, and the statistics of what they measured."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np

from bench.clients import worker

CONTEXT = multiprocessing.get_context("spawn")
REPLY_TIMEOUT_SECONDS = 300


class WorkerError(RuntimeError):
    pass


class Workers:
    """One process per job; ``ask`` sends a command to all and collects one reply from each."""

    def __init__(self, jobs: list) -> None:
        self.pipes = []
        self.processes = []
        for job in jobs:
            parent, child = CONTEXT.Pipe()
            process = CONTEXT.Process(target=worker, args=(job, child), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def replies(self, expected: str, timeout: float = REPLY_TIMEOUT_SECONDS) -> list:
        deadline = time.monotonic() + timeout
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"a client process did not answer {expected!r} in time")
            kind, payload = pipe.recv()
            if kind == "error":
                raise WorkerError(payload)
            assert kind == expected, (kind, expected)
            replies.append(payload)
        return replies

    def send(self, message) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def ask(self, message, expected: str, timeout: float = REPLY_TIMEOUT_SECONDS) -> list:
        self.send(message)
        return self.replies(expected, timeout)

    def close(self) -> None:
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def split(items: list, parts: int) -> list[list]:
    return [items[index::parts] for index in range(parts)]


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, percentiles=(50, 99, 99.9)) -> dict[str, float]:
    """Percentiles of *values* where each value counts *weights* times (events per frame); plus the max."""
    if values.size == 0:
        return {f"p{p:g}": float("nan") for p in percentiles} | {"max": float("nan")}
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    result = {}
    for percentile in percentiles:
        index = int(np.searchsorted(cumulative, total * percentile / 100.0, side="left"))
        result[f"p{percentile:g}"] = float(values[min(index, values.size - 1)])
    result["max"] = float(values[-1])
    return result


def median(values) -> float:
    values = [value for value in values if value == value]
    return float(np.median(values)) if values else float("nan")
