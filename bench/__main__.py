"""``python -m bench [--quick] [--only SCENARIO ...] [--runs N]``: run the benchmarks, write bench/results/*.json,
print a summary table (and, for the full run, draw bench/results/firehose.png).

Everything runs on this machine over loopback: a private Redis, a SQLite database in a temporary directory, the bench
upstream (the simulator's generator with send timestamps), the server under test, and load clients in separate
processes. Comparisons are interleaved within one run; each figure is the median over runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.attacks import ATTACKS
from bench.report import machine_info, print_summary, write_results
from bench.scenarios import Target, admission, firehose, idle, neighbours, selective, slow_consumer
from bench.stack import Environment
from devstack.open_files import raise_open_file_limit

SCENARIOS = ("firehose", "selective", "admission", "idle", "slow", "neighbours")

FULL: dict[str, Any] = {
    "runs": 3,
    "processes": 2,
    "firehose": {"client_counts": [1, 10, 100, 1000], "rate": 40_000, "warmup": 2.0, "duration": 6.0},
    "selective": {"clients": 1000, "universe": 5000, "per_client": 10, "rate": 10_000, "warmup": 2.0,
                  "duration": 8.0},
    "admission": {"admissions": 2000, "concurrency": 100},
    "idle": {"steps": [1000, 5000, 10000], "runs": 1},
    "slow": {"fast_clients": 20, "rate": 40_000, "warmup": 1.0, "duration": 10.0},
    "neighbours": {"attacks": list(ATTACKS), "rate": 10_000, "warmup": 1.0, "duration": 8.0},
    "users": 10000,
}

QUICK: dict[str, Any] = {
    "runs": 1,
    "processes": 2,
    "firehose": {"client_counts": [100], "rate": 40_000, "warmup": 0.5, "duration": 2.0},
    "selective": {"clients": 200, "universe": 5000, "per_client": 10, "rate": 10_000, "warmup": 0.5,
                  "duration": 2.0},
    "admission": {"admissions": 300, "concurrency": 50},
    "idle": {"steps": [1000], "runs": 1, "cpu_window": 1.0},
    "slow": {"fast_clients": 5, "rate": 40_000, "warmup": 0.5, "duration": 2.0},
    "neighbours": {"attacks": ["many_items", "key_guessing"], "rate": 10_000, "warmup": 0.5, "duration": 2.0},
    "users": 1000,
}
"""About a minute and a quarter: one run of each scenario, smaller and shorter, without uvicorn (unless --targets names
it), two of the neighbours attacks (a stream's items, another address's handshakes). A check that everything works
and a rough picture, not figures to quote: those come from the full run. Most of what is left is starting a fresh
server for each trial (about 3 s each, a dozen of them)."""


NEIGHBOURS_USERS = 30
"""Stocks users on Commercial: the neighbours scenario's two streaming victims, ten admission keys, ten attackers."""


def parse_targets(specs: list[str]) -> list[Target]:
    """``label=kind[:source]``, e.g. ``before=daphne:/tmp/old-tree``."""
    targets = []
    for spec in specs:
        label, _, rest = spec.partition("=")
        kind, _, source = rest.partition(":")
        targets.append(Target(label, kind, Path(source) if source else None))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: one run, fewer clients")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--runs", type=int, help="runs per comparison (default 3, quick 1)")
    parser.add_argument("--targets", nargs="+", metavar="LABEL=KIND[:SOURCE]",
                        help="servers to compare in firehose/selective (default: gateway=daphne, ceiling=ceiling, "
                             "uvicorn=uvicorn, direct=direct); KIND is daphne, uvicorn, ceiling or direct (clients "
                             "on the upstream itself); SOURCE another source tree")
    parser.add_argument("--clients", type=int, nargs="+", help="firehose client counts")
    parser.add_argument("--rate", type=float, help="firehose upstream rate (options events/s)")
    parser.add_argument("--idle-steps", type=int, nargs="+", metavar="N",
                        help="idle connections to measure at (default 1000 5000 10000; one bench user each)")
    parser.add_argument("--idle-cpu-window", type=float, metavar="SECONDS",
                        help="how long the idle scenario measures CPU at each step (default 5; 25 covers one "
                             "keep-alive ping of every connection)")
    parser.add_argument("--name", help="results file name (default: quick or full, with a timestamp)")
    parser.add_argument("--no-plot", action="store_true")
    options = parser.parse_args(argv)
    config = QUICK if options.quick else FULL
    runs = options.runs or config["runs"]
    processes = config["processes"]
    scenarios = options.only or list(SCENARIOS)
    targets = parse_targets(options.targets) if options.targets else [
        Target("gateway", "daphne"), Target("ceiling", "ceiling"),
        *([] if options.quick else [Target("uvicorn", "uvicorn")]), Target("direct", "direct")]
    gateway = next((target for target in targets if target.kind == "daphne"), Target("gateway", "daphne"))
    if options.clients:
        config["firehose"]["client_counts"] = options.clients
    if options.rate:
        config["firehose"]["rate"] = options.rate
    if options.idle_cpu_window:
        config["idle"]["cpu_window"] = options.idle_cpu_window
    if options.idle_steps:
        config["idle"]["steps"] = sorted(options.idle_steps)
        config["users"] = max(config["users"], config["idle"]["steps"][-1])
    fd_limit = raise_open_file_limit()
    started = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {line}", flush=True)

    log(f"setting up Redis and {config['users']:,} bench users (open-file limit {fd_limit})")
    env = Environment(users=config["users"], stocks_users=NEIGHBOURS_USERS).start()
    results: dict = {"mode": "quick" if options.quick else "full", "machine": machine_info(),
                     "targets": [{"label": t.label, "kind": t.kind, "source": str(t.source or "")} for t in targets],
                     "runs": runs, "scenarios": {}}
    try:
        if "firehose" in scenarios:
            log("1. firehose fan-out")
            # Not the direct baseline here: the upstream's own fan-out of whole frames to 1,000 clients is the
            # ceiling's job; direct clients serve the selective scenario's added-latency figure.
            firehose_targets = [t for t in targets if t.kind != "direct"]
            results["scenarios"]["firehose"] = firehose(env, firehose_targets, runs=runs, processes=processes,
                                                        log=log, **config["firehose"])
        if "selective" in scenarios:
            log("2. selective fan-out")
            results["scenarios"]["selective"] = selective(env, targets, runs=runs, processes=processes, log=log,
                                                          **config["selective"])
        if "admission" in scenarios:
            log("3. admission storm")
            admission_targets = [t for t in targets if t.is_gateway or t.kind == "ceiling"]
            results["scenarios"]["admission"] = admission(env, admission_targets, runs=runs, processes=processes,
                                                          log=log, **config["admission"])
        if "idle" in scenarios:
            log("4. idle connections")
            idle_config = dict(config["idle"], **({"runs": options.runs} if options.runs else {}))
            idle_targets = [t for t in targets if t.kind == "daphne"]
            results["scenarios"]["idle"] = idle(env, idle_targets, processes=processes, log=log, **idle_config)
        if "slow" in scenarios:
            log("5. slow consumer")
            results["scenarios"]["slow"] = slow_consumer(env, gateway, runs=runs, processes=processes, log=log,
                                                         buffer_bytes=4 * 1024 * 1024, **config["slow"])
        if "neighbours" in scenarios:
            log("6. neighbours: one customer's abuse, another's stream and admissions")
            results["scenarios"]["neighbours"] = neighbours(env, log=log, **config["neighbours"])
    except BaseException as error:  # keep what was measured
        results["aborted"] = f"{type(error).__name__}: {error}"
        write_results(results, (options.name or results["mode"]) + "-aborted", plot=False)
        raise
    finally:
        env.close()
    results["elapsed_seconds"] = time.time() - started
    name = options.name or f"{results['mode']}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = write_results(results, name, plot=not options.no_plot and not options.quick)
    print_summary(results)
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cutemarkets.settings")
    sys.exit(main())
