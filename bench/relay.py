"""``python -m bench.relay``: what the relay path (feed relay → Redis pub/sub → gateway) costs against a gateway's own
upstream connection, on this machine.

1. Latency: at a moderate rate, the same clients through one daphne gateway in process mode and in relay mode,
   trials interleaved per run; the Redis hop's added latency is the difference of the medians (p50, p99), measured
   from the bench upstream's send stamp to the client's receive time.
2. Ceiling: both modes at increasing upstream rates; a rate is sustained when the upstream managed it (it slows down
   for a connection that does not drain), the clients received at least 95 % of it, p99 stayed bounded and no client
   was closed. The CPU of each process during the window (upstream, relay, Redis, gateway, clients), the machine's
   busy share and the gateway's logged failures name the bottleneck.

Results go to bench/results/relay-<time>.json; a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil

from bench.clients import StreamJob
from bench.report import RESULTS_DIR, machine_info
from bench.stack import PROJECT_DIR, UPSTREAM_KEY, Environment, Server, Upstream, stop_process
from bench.workers import Workers, median, split, weighted_percentiles
from devstack.open_files import raise_open_file_limit

MARKET = "options"
LIVE_KEY = f"cm:relay:{MARKET}:live"  # STREAM_RELAY_PREFIX's default; the relay sets it once it streams
MODES = ("process", "relay")
SUBSCRIPTION = "T.*,Q.*,A.*,AM.*"  # the whole options feed: the upstream sends what the rate says
SETTLE_SECONDS = 0.5
RELAY_READY_SECONDS = 30.0
SUSTAINED_FRACTION = 0.95
SUSTAINED_P99_MS = 250.0


class Relay:
    """``manage.py run_feed_relay --market options`` against the bench upstream; ready once it streams."""

    def __init__(self, env: Environment, upstream: Upstream) -> None:
        self.log_path = env.directory / f"relay-{time.monotonic_ns()}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                # A free probe port: the default one may be taken on a shared machine.
                [sys.executable, "manage.py", "run_feed_relay", "--market", MARKET, "--probe-port", "0"],
                cwd=PROJECT_DIR,
                env=env.django_env(UPSTREAM_OPTIONS_URL=upstream.url, UPSTREAM_API_KEY=UPSTREAM_KEY),
                stdout=log, stderr=subprocess.STDOUT,
            )
        env.children.append(self.process)
        client = env.redis_client()
        deadline = time.monotonic() + RELAY_READY_SECONDS
        try:
            while not client.exists(LIVE_KEY):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the relay did not start streaming:\n{self.log_path.read_text()[-3000:]}")
                time.sleep(0.05)
        finally:
            client.close()
        self.ps = psutil.Process(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine_busy_percent(before, after) -> float:
    """Share of all cores' time spent busy (by anything, other users' processes included) between two samples."""
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    return 100 * (1 - idle / total) if total else float("nan")


def trial(env: Environment, mode: str, *, rate: float, clients: int, processes: int, warmup: float,
          duration: float) -> dict:
    """Clients on one gateway in *mode* for *duration* s after *warmup*: delivery, latency, CPU per process."""
    env.reset_redis()
    upstream = Upstream(env, rate)
    relay = Relay(env, upstream) if mode == "relay" else None
    server = Server("daphne", env, upstream, extra_env={"STREAM_FANOUT": mode}, label=mode)
    assert env.redis is not None and env.redis.process is not None
    watched = {"upstream": psutil.Process(upstream.process.pid), "gateway": server.ps,
               "redis": psutil.Process(env.redis.process.pid)}
    if relay is not None:
        watched["relay"] = relay.ps
    workers = None
    try:
        time.sleep(SETTLE_SECONDS)
        keys: list[str | None] = list(env.keys[:clients])
        params = [SUBSCRIPTION] * clients
        parts = max(1, min(processes, clients))
        jobs = [StreamJob(server.url(), k, p) for k, p in zip(split(keys, parts), split(params, parts), strict=True)]
        workers = Workers(jobs)
        workers.replies("ready")
        clients_cpu = [psutil.Process(process.pid) for process in workers.processes]
        start = time.time() + warmup
        end = start + duration
        workers.send(("measure", start, end))
        time.sleep(max(0.0, start - time.time()))
        cpu0 = {name: cpu_seconds(process) for name, process in watched.items()}
        cpu0["clients"] = sum(cpu_seconds(process) for process in clients_cpu)
        machine0 = psutil.cpu_times()
        upstream0, wall0 = upstream.stats(), time.time()
        time.sleep(max(0.0, end - time.time()))
        cpu1 = {name: cpu_seconds(process) for name, process in watched.items()}
        cpu1["clients"] = sum(cpu_seconds(process) for process in clients_cpu)
        machine1 = psutil.cpu_times()
        upstream1, wall1 = upstream.stats(), time.time()
        results = workers.replies("result")
    finally:
        if workers is not None:
            workers.close()
        server.stop()
        gateway_log = server.log_tail(20_000)
        if relay is not None:
            relay.stop()
        upstream.stop()
    latencies = np.concatenate([result["latencies_ns"] for result in results]) / 1e6
    weights = np.concatenate([result["weights"] for result in results])
    upstream_seconds = max(1e-9, upstream1["time"] - upstream0["time"])
    upstream_rate = (upstream1["events_sent"] - upstream0["events_sent"]) / upstream_seconds
    per_client = sum(result["events"] for result in results) / duration / clients
    closed: dict[str, int] = {}
    for result in results:
        for code, count in result["closed"].items():
            closed[str(code)] = closed.get(str(code), 0) + count
    return {
        "mode": mode,
        "rate": rate,
        "clients": clients,
        "upstream_events_per_s": upstream_rate,
        "events_per_s_per_client": per_client,
        "latency_ms": weighted_percentiles(latencies, weights),
        "cpu_percent": {name: 100 * (cpu1[name] - cpu0[name]) / (wall1 - wall0) for name in cpu0},
        "machine_busy_percent": machine_busy_percent(machine0, machine1),
        "closed": closed,
        "gateway_failures": [line for line in gateway_log.splitlines() if "failed" in line][-3:],
    }


def sustained(result: dict) -> bool:
    return (result["upstream_events_per_s"] >= SUSTAINED_FRACTION * result["rate"]
            and result["events_per_s_per_client"] >= SUSTAINED_FRACTION * result["upstream_events_per_s"]
            and result["latency_ms"]["p99"] <= SUSTAINED_P99_MS
            and not result["closed"])


def describe(result: dict) -> str:
    latency = result["latency_ms"]
    cpu = ", ".join(f"{name} {value:.0f}%" for name, value in result["cpu_percent"].items())
    cpu += f" (machine {result['machine_busy_percent']:.0f}% busy)"
    return (f"{result['mode']:7} rate {result['rate']:>9,.0f}: upstream {result['upstream_events_per_s']:>9,.0f} ev/s, "
            f"client {result['events_per_s_per_client']:>9,.0f} ev/s, p50 {latency['p50']:.2f} ms, "
            f"p99 {latency['p99']:.2f} ms; cpu {cpu}; closed {result['closed']}"
            f"{'' if sustained(result) else '  (not sustained)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="latency runs per mode (default 3)")
    parser.add_argument("--latency-rate", type=float, default=5_000, help="upstream events/s for the latency runs")
    parser.add_argument("--latency-clients", type=int, default=10)
    parser.add_argument("--rates", type=lambda text: [float(rate) for rate in text.split(",")],
                        default=[50_000, 150_000, 250_000, 350_000, 450_000], help="ceiling steps, comma-separated")
    parser.add_argument("--ceiling-clients", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--duration", type=float, default=4.0)
    options = parser.parse_args(argv)
    raise_open_file_limit()
    started = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {line}", flush=True)

    env = Environment(users=max(options.latency_clients, options.ceiling_clients)).start()
    results: dict = {"machine": machine_info(), "subscription": SUBSCRIPTION, "latency": [], "ceiling": []}
    common = {"processes": options.processes, "warmup": options.warmup, "duration": options.duration}
    try:
        log(f"1. latency at {options.latency_rate:,.0f} ev/s, {options.latency_clients} clients")
        for run in range(options.runs):
            for mode in MODES if run % 2 == 0 else reversed(MODES):
                result = trial(env, mode, rate=options.latency_rate, clients=options.latency_clients, **common)
                results["latency"].append({"run": run, **result})
                log("  " + describe(result))
        log(f"2. ceiling, {options.ceiling_clients} clients")
        for rate in options.rates:
            for mode in MODES:
                result = trial(env, mode, rate=rate, clients=options.ceiling_clients, **common)
                results["ceiling"].append(result)
                log("  " + describe(result))
    finally:
        env.close()
    summary = summarise(results)
    results["summary"] = summary
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"relay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=lambda value: value.tolist()))
    print(json.dumps(summary, indent=1))
    log(f"results: {path}")
    return 0


def summarise(results: dict) -> dict:
    """Median latency per mode, the relay's added latency, and the highest sustained rate per mode."""
    summary: dict = {"latency_ms": {}, "highest_sustained_events_per_s": {}}
    for mode in MODES:
        own = [result for result in results["latency"] if result["mode"] == mode]
        summary["latency_ms"][mode] = {p: median([r["latency_ms"][p] for r in own]) for p in ("p50", "p99")}
        sustained_rates = [r["rate"] for r in results["ceiling"] if r["mode"] == mode and sustained(r)]
        summary["highest_sustained_events_per_s"][mode] = max(sustained_rates, default=0.0)
    summary["relay_added_latency_ms"] = {
        p: summary["latency_ms"]["relay"][p] - summary["latency_ms"]["process"][p] for p in ("p50", "p99")
    }
    return summary


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cutemarkets.settings")
    sys.exit(main())
