"""The six scenarios. Each trial starts a fresh upstream and server, runs the clients, and stops everything.

Trials of the targets being compared are interleaved (A B A B..., the order alternating per run), and each figure is
the median over runs; ratios are computed per run, between trials of the same run, then their median is taken.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.attacks import AttackJob
from bench.clients import AdmitJob, IdleJob, ProbeJob, StreamJob
from bench.stack import UPSTREAM_KEY, Environment, Server, Upstream
from bench.workers import WorkerError, Workers, median, split, weighted_percentiles


@dataclass(frozen=True)
class Target:
    label: str
    kind: str  # daphne, uvicorn, ceiling, direct
    source: Path | None = None

    @property
    def is_gateway(self) -> bool:
        """Serves the gateway (API keys, admission); the ceiling and direct targets do not."""
        return self.kind in ("daphne", "uvicorn")


def interleaved(targets: list[Target], runs: int):
    """(run, target) pairs, A B C / C B A / A B C ..., so drift in machine load hits every target alike."""
    for run in range(runs):
        for target in (targets if run % 2 == 0 else list(reversed(targets))):
            yield run, target


class RssSampler:
    """RSS of a process every ``interval`` seconds, in a thread, as (time, bytes)."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.server.rss_bytes()))
            except Exception:
                return
            self._stop.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def stream_trial(env: Environment, target: Target, *, rate: float, params: list[str], processes: int,
                 warmup: float, duration: float, slow: list[bool] | None = None,
                 extra_env: dict[str, str] | None = None) -> dict:
    """Clients stream for ``duration`` seconds after ``warmup``; delivered events/s, latency, server CPU and RSS."""
    env.reset_redis()
    clients = len(params)
    if target.is_gateway:
        keys: list[str | None] = list(env.keys[:clients])
    else:
        keys = [UPSTREAM_KEY if target.kind == "direct" else None] * clients
    slow = slow or [False] * clients
    upstream = Upstream(env, rate)
    server = Server(target.kind, env, upstream, target.source, extra_env=extra_env, label=target.label)
    workers = None
    try:
        processes = max(1, min(processes, clients))
        jobs = [StreamJob(server.url(), k, p, s, auth_by_message=target.kind == "direct")
                for k, p, s in zip(split(keys, processes), split(params, processes), split(slow, processes),
                                   strict=True)]
        sampler = RssSampler(server)
        workers = Workers(jobs)
        workers.replies("ready")
        ready_at = time.time()
        start, end = ready_at + warmup, ready_at + warmup + duration
        workers.send(("measure", start, end))
        time.sleep(max(0.0, start - time.time()))
        cpu0, upstream0, wall0 = server.cpu_seconds(), upstream.stats(), time.time()
        time.sleep(max(0.0, end - time.time()))
        cpu1, upstream1, wall1 = server.cpu_seconds(), upstream.stats(), time.time()
        results = workers.replies("result")
        rss = sampler.stop()
    finally:
        if workers is not None:
            workers.close()
        server.stop()
        upstream.stop()
    events = sum(result["events"] for result in results)
    frames = sum(result["frames"] for result in results)
    latencies = np.concatenate([result["latencies_ns"] for result in results]) / 1e6
    weights = np.concatenate([result["weights"] for result in results])
    closed: dict[str, int] = {}
    for result in results:
        for code, count in result["closed"].items():
            closed[str(code)] = closed.get(str(code), 0) + count
    upstream_seconds = max(1e-9, upstream1["time"] - upstream0["time"])
    window_rss = [value for moment, value in rss if ready_at <= moment]
    return {
        "target": target.label,
        "clients": clients,
        "delivered_events_per_s": events / duration,
        "delivered_frames_per_s": frames / duration,
        "events_per_frame": events / frames if frames else 0.0,
        "upstream_events_per_s": (upstream1["events_sent"] - upstream0["events_sent"]) / upstream_seconds,
        "latency_ms": weighted_percentiles(latencies, weights),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "server_cpu_us_per_event": 1e6 * (cpu1 - cpu0) / events if events else float("nan"),
        "server_rss_mb_at_ready": window_rss[0] / 2**20 if window_rss else float("nan"),
        "server_rss_mb_max": max(window_rss) / 2**20 if window_rss else float("nan"),
        "rss_series": [(round(moment - ready_at, 2), value) for moment, value in rss],
        "clients_closed_by_server": closed,
        "slow_closed_after_s": [round(moment - ready_at, 2) for r in results for moment in r["slow_closed_at"]],
    }


def summarise(trials: list[dict], keys: list[str]) -> dict:
    """Median over runs of each figure (nested latency dicts included)."""
    summary: dict = {"runs": len(trials)}
    for key in keys:
        values = [trial[key] for trial in trials]
        if isinstance(values[0], dict):
            summary[key] = {name: median([value[name] for value in values]) for name in values[0]}
        else:
            summary[key] = median(values)
    return summary


STREAM_FIGURES = ["delivered_events_per_s", "delivered_frames_per_s", "events_per_frame", "upstream_events_per_s",
                  "latency_ms", "server_cpu_percent", "server_cpu_us_per_event", "server_rss_mb_max"]


def compare(trials: list[dict], targets: list[Target], reference: str, runs: int) -> dict:
    """Per-target medians; per-run ratios target/reference (same run) of throughput and CPU per event; and, when
    the clients also ran connected to the upstream directly, the latency each target adds to that baseline (per-run
    differences of each percentile, then their median)."""
    by_run: dict[tuple[int, str], dict] = {(trial["run"], trial["target"]): trial for trial in trials}
    result: dict = {}
    for target in targets:
        own = [trial for trial in trials if trial["target"] == target.label]
        if not own:
            continue
        entry = summarise(own, STREAM_FIGURES)
        entry["clients_closed_by_server"] = [trial["clients_closed_by_server"] for trial in own]
        if target.label != reference:
            ratios = [by_run[(run, target.label)]["delivered_events_per_s"]
                      / max(1e-9, by_run[(run, reference)]["delivered_events_per_s"])
                      for run in range(runs) if (run, target.label) in by_run and (run, reference) in by_run]
            cpu_ratios = [by_run[(run, target.label)]["server_cpu_us_per_event"]
                          / by_run[(run, reference)]["server_cpu_us_per_event"]
                          for run in range(runs) if (run, target.label) in by_run and (run, reference) in by_run]
            entry[f"throughput_ratio_vs_{reference}"] = median(ratios)
            entry[f"throughput_ratios_vs_{reference}_per_run"] = ratios
            entry[f"cpu_per_event_ratio_vs_{reference}"] = median(cpu_ratios)
        direct = [run for run in range(runs) if (run, "direct") in by_run and (run, target.label) in by_run]
        if direct and target.kind != "direct":
            entry["added_latency_ms_vs_direct"] = {
                name: median([by_run[(run, target.label)]["latency_ms"][name]
                              - by_run[(run, "direct")]["latency_ms"][name] for run in direct])
                for name in ("p50", "p99", "p99.9")
            }
        result[target.label] = entry
    result["pairwise"] = {}
    for a in targets:
        for b in targets:
            if a.label == b.label:
                continue
            pairs = [(by_run[(run, a.label)], by_run[(run, b.label)]) for run in range(runs)
                     if (run, a.label) in by_run and (run, b.label) in by_run]
            result["pairwise"][f"{a.label}/{b.label}"] = {
                "throughput": median([x["delivered_events_per_s"] / max(1e-9, y["delivered_events_per_s"])
                                      for x, y in pairs]),
                "cpu_per_event": median([x["server_cpu_us_per_event"] / y["server_cpu_us_per_event"]
                                         for x, y in pairs]),
                "p99_latency": median([x["latency_ms"]["p99"] / y["latency_ms"]["p99"] for x, y in pairs]),
            }
    return result


# --- 1. firehose -------------------------------------------------------------------------------------------------

def firehose(env: Environment, targets: list[Target], *, client_counts: list[int], rate: float, runs: int,
             processes: int, warmup: float, duration: float, log) -> dict:
    out: dict = {"rate_options_events_per_s": rate, "subscription": "T.*", "by_clients": {}}
    for clients in client_counts:
        trials = []
        for run, target in interleaved(targets, runs):
            try:
                trial = stream_trial(env, target, rate=rate, params=["T.*"] * clients, processes=processes,
                                     warmup=warmup, duration=duration)
            except WorkerError as error:  # recorded, not fatal: one failed trial must not lose the others
                log(f"  firehose N={clients} run {run} {target.label}: FAILED {error}")
                continue
            trial["run"] = run
            trial.pop("rss_series")
            trials.append(trial)
            log(f"  firehose N={clients} run {run} {target.label}: {trial['delivered_events_per_s']:,.0f} ev/s, "
                f"p99 {trial['latency_ms']['p99']:.1f} ms, cpu {trial['server_cpu_percent']:.0f}%, "
                f"{trial['server_cpu_us_per_event']:.2f} us/ev, closed {trial['clients_closed_by_server']}")
        out["by_clients"][str(clients)] = {"trials": trials, "summary": compare(trials, targets, "ceiling", runs)}
    return out


# --- 2. selective ------------------------------------------------------------------------------------------------

def selective_params(clients: int, universe: int, per_client: int, seed: int = 7) -> tuple[list[str], int]:
    from streaming.simulator.universe import OPTION_CONTRACTS

    rng = random.Random(seed)
    symbols = rng.sample([contract.symbol for contract in OPTION_CONTRACTS], universe)
    params = []
    for _ in range(clients):
        chosen = rng.sample(symbols, per_client)
        params.append(",".join(f"{ev}.{symbol}" for symbol in chosen for ev in ("T", "Q")))
    return params, universe


def selective(env: Environment, targets: list[Target], *, clients: int, universe: int, per_client: int, rate: float,
              runs: int, processes: int, warmup: float, duration: float, log) -> dict:
    params, _ = selective_params(clients, universe, per_client)
    trials = []
    for run, target in interleaved(targets, runs):
        try:
            trial = stream_trial(env, target, rate=rate, params=params, processes=processes, warmup=warmup,
                                 duration=duration)
        except WorkerError as error:
            log(f"  selective run {run} {target.label}: FAILED {error}")
            continue
        trial["run"] = run
        trial.pop("rss_series")
        trials.append(trial)
        lat = trial["latency_ms"]
        log(f"  selective run {run} {target.label}: {trial['delivered_events_per_s']:,.0f} ev/s, p50 {lat['p50']:.2f} "
            f"p99 {lat['p99']:.2f} p99.9 {lat['p99.9']:.2f} max {lat['max']:.1f} ms, "
            f"cpu {trial['server_cpu_percent']:.0f}%")
    return {
        "clients": clients, "universe_symbols": universe, "symbols_per_client": per_client,
        "items_per_client": per_client * 2, "rate_options_events_per_s": rate,
        "trials": trials, "summary": compare(trials, targets, "ceiling", runs),
    }


# --- 3. admission ------------------------------------------------------------------------------------------------

def redis_commandstats(env: Environment) -> dict[str, int]:
    client = env.redis_client()
    stats = client.info("commandstats")
    client.close()
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


WARMUP_ADMISSIONS = 200
"""Admissions of other keys before the measured ones: a process that has served nobody yet opens its Redis pools, its
database connections and its worker threads on its first admissions, which a running gateway has long done."""


def admission(env: Environment, targets: list[Target], *, admissions: int, concurrency: int, runs: int,
              processes: int, log) -> dict:
    keys = env.keys[:admissions]
    warmup_keys = env.keys[admissions:admissions + WARMUP_ADMISSIONS]
    trials = []
    for run, target in interleaved(targets, runs):
        env.reset_redis()
        upstream = Upstream(env, 0)
        server = Server(target.kind, env, upstream, target.source, label=target.label)
        try:
            for phase in ("warmup", "cold", "warm"):
                phase_keys = warmup_keys if phase == "warmup" else keys
                before = redis_commandstats(env)
                workers = Workers([AdmitJob(server.url(), part, max(1, concurrency // processes))
                                   for part in split(phase_keys, processes)])
                try:
                    workers.replies("ready")
                    start = time.time() + 0.3
                    workers.send(("go", start))
                    cpu_before = server.cpu_seconds()
                    results = workers.replies("result")
                    cpu_after = server.cpu_seconds()
                    admitted = redis_commandstats(env)  # every connection admitted and still open
                    workers.ask(("close",), "closed")
                finally:
                    workers.close()
                env.wait_for_released_locks()  # the closes' clean-up is done: count its Redis commands, free the keys
                if phase == "warmup":
                    continue
                after = redis_commandstats(env)
                times = np.concatenate([result["times"] for result in results])
                failures: dict[str, int] = {}
                for result in results:
                    for outcome, count in result["failures"].items():
                        failures[outcome] = failures.get(outcome, 0) + count
                elapsed = max(result["finished"] for result in results) - start
                commands = {name: (after.get(name, 0) - before.get(name, 0)) / admissions
                            for name in after if after.get(name, 0) - before.get(name, 0) > 0}
                commands.pop("info", None)
                to_auth_success = {name: (admitted.get(name, 0) - before.get(name, 0)) / admissions
                                   for name in admitted if admitted.get(name, 0) - before.get(name, 0) > 0}
                to_auth_success.pop("info", None)
                trial = {
                    "run": run, "target": target.label, "phase": phase, "admissions": admissions,
                    "concurrency": concurrency, "succeeded": int(times.size), "failures": failures,
                    "admissions_per_s": times.size / elapsed,
                    # admission, stream and close, while the clients ran (their closes' cleanup may trail a little)
                    "server_cpu_ms_per_admission": 1e3 * (cpu_after - cpu_before) / max(1, times.size),
                    "time_to_auth_success_ms": {
                        "p50": float(np.percentile(times, 50) * 1e3) if times.size else float("nan"),
                        "p99": float(np.percentile(times, 99) * 1e3) if times.size else float("nan"),
                        "max": float(times.max() * 1e3) if times.size else float("nan"),
                    },
                    "redis_commands_per_admission": commands,
                    "redis_commands_per_admission_total": sum(commands.values()),
                    "redis_commands_to_auth_success": to_auth_success,
                    "redis_commands_to_auth_success_total": sum(to_auth_success.values()),
                }
                trials.append(trial)
                log(f"  admission run {run} {target.label} {phase}: {trial['admissions_per_s']:,.0f}/s, "
                    f"server CPU {trial['server_cpu_ms_per_admission']:.2f} ms/admission, "
                    f"p50 {trial['time_to_auth_success_ms']['p50']:.1f} ms p99 "
                    f"{trial['time_to_auth_success_ms']['p99']:.1f} ms, failures {failures}, redis to auth_success "
                    f"{trial['redis_commands_to_auth_success_total']:.2f} {to_auth_success}, whole connection "
                    f"{trial['redis_commands_per_admission_total']:.2f}")
        finally:
            server.stop()
            upstream.stop()
    summary = {}
    for target in targets:
        for phase in ("cold", "warm"):
            own = [t for t in trials if t["target"] == target.label and t["phase"] == phase]
            summary[f"{target.label}/{phase}"] = summarise(
                own, ["admissions_per_s", "time_to_auth_success_ms", "redis_commands_per_admission_total",
                      "redis_commands_to_auth_success_total", "server_cpu_ms_per_admission"])
            summary[f"{target.label}/{phase}"]["redis_commands_per_admission"] = own[-1]["redis_commands_per_admission"]
            summary[f"{target.label}/{phase}"]["redis_commands_to_auth_success"] = (
                own[-1]["redis_commands_to_auth_success"])
            ceiling = {t["run"]: t for t in trials if t["target"] == "ceiling" and t["phase"] == phase}
            if target.kind != "ceiling" and ceiling:
                summary[f"{target.label}/{phase}"]["cpu_per_admission_ratio_vs_ceiling"] = median([
                    t["server_cpu_ms_per_admission"] / ceiling[t["run"]]["server_cpu_ms_per_admission"]
                    for t in own if t["run"] in ceiling
                ])
        warm = {t["run"]: t for t in trials if t["target"] == target.label and t["phase"] == "warm"}
        summary[f"{target.label}/cold"]["cold_rate_share_of_warm"] = median([
            t["admissions_per_s"] / warm[t["run"]]["admissions_per_s"]
            for t in trials if t["target"] == target.label and t["phase"] == "cold" and t["run"] in warm
        ])
    return {"admissions": admissions, "concurrency": concurrency, "db_queries_in_process": env.db_queries,
            "trials": trials, "summary": summary}


# --- 4. idle connections -----------------------------------------------------------------------------------------

def idle(env: Environment, targets: list[Target], *, steps: list[int], runs: int, processes: int, log,
         cpu_window: float = 5.0) -> dict:
    """Memory per idle subscribed connection at each step, and the server's CPU over *cpu_window* seconds there
    (idle connections still cost their lock refreshes and daphne's periodic checks)."""
    from streaming.simulator.universe import OPTION_CONTRACTS

    symbols = [contract.symbol for contract in OPTION_CONTRACTS]
    baseline_connections = 10
    trials = []
    for run, target in interleaved(targets, runs):
        env.reset_redis()
        upstream = Upstream(env, 0)
        server = Server(target.kind, env, upstream, target.source, label=target.label)
        workers = None
        try:
            keys = env.keys[:steps[-1]]
            workers = Workers([IdleJob(server.url(), part, f"T.{symbols[index % len(symbols)]}")
                               for index, part in enumerate(split(keys, processes))])
            points = []
            baseline = None
            for step in [baseline_connections] + steps:
                started = time.time()
                held = sum(workers.ask(("grow", step // processes), "ready", timeout=600))
                took = time.time() - started
                time.sleep(1.0)
                rss = server.rss_bytes()
                cpu_before, cpu_started = server.cpu_seconds(), time.time()
                time.sleep(cpu_window)
                idle_cpu = 100 * (server.cpu_seconds() - cpu_before) / (time.time() - cpu_started)
                if baseline is None:
                    baseline = (held, rss)
                    continue
                per_connection = (rss - baseline[1]) / (held - baseline[0])
                points.append({"connections": held, "rss_mb": rss / 2**20, "kb_per_connection": per_connection / 1024,
                               "connect_seconds": took, "idle_cpu_percent": idle_cpu})
                log(f"  idle run {run} {target.label}: {held} connections, RSS {rss / 2**20:.0f} MB, "
                    f"{per_connection / 1024:.1f} KB/connection, CPU while idle {idle_cpu:.1f}%")
            workers.ask(("close",), "result")
            assert baseline is not None  # measured at the first step
            trials.append({"run": run, "target": target.label, "baseline_rss_mb": baseline[1] / 2**20,
                           "points": points})
        finally:
            if workers is not None:
                workers.close()
            server.stop()
            upstream.stop()
    summary = {}
    for target in targets:
        own = [t for t in trials if t["target"] == target.label]
        summary[target.label] = {
            str(step): {"kb_per_connection": median([t["points"][i]["kb_per_connection"] for t in own]),
                        "connections_held": median([t["points"][i]["connections"] for t in own]),
                        "idle_cpu_percent": median([t["points"][i]["idle_cpu_percent"] for t in own])}
            for i, step in enumerate(steps)
        }
    return {"steps": steps, "trials": trials, "summary": summary}


# --- 5. slow consumer --------------------------------------------------------------------------------------------

def slow_consumer(env: Environment, target: Target, *, fast_clients: int, rate: float, runs: int, processes: int,
                  warmup: float, duration: float, buffer_bytes: int, log) -> dict:
    params = ["T.*,Q.*"] * (fast_clients + 1)
    trials = []
    for run in range(runs):
        for with_slow in ((False, True) if run % 2 == 0 else (True, False)):
            slow = [with_slow] + [False] * fast_clients
            trial = stream_trial(env, target, rate=rate, params=params, processes=processes, warmup=warmup,
                                 duration=duration, slow=slow)
            trial.update(run=run, with_slow=with_slow)
            rss = trial["rss_series"]
            ready_rss = trial["server_rss_mb_at_ready"]
            trial["rss_growth_mb"] = trial["server_rss_mb_max"] - ready_rss
            trials.append(trial)
            log(f"  slow consumer run {run} slow={with_slow}: fast p99 {trial['latency_ms']['p99']:.2f} ms, "
                f"RSS growth {trial['rss_growth_mb']:.1f} MB, slow cut after {trial['slow_closed_after_s']} s, "
                f"closed {trial['clients_closed_by_server']}, {len(rss)} RSS samples")
    by = {flag: [t for t in trials if t["with_slow"] is flag] for flag in (False, True)}
    p99_ratios = []
    for run in range(runs):
        pair = {t["with_slow"]: t for t in trials if t["run"] == run}
        p99_ratios.append(pair[True]["latency_ms"]["p99"] / pair[False]["latency_ms"]["p99"])
    return {
        "fast_clients": fast_clients, "rate_options_events_per_s": rate, "subscription": "T.*,Q.*",
        "client_buffer_bytes": buffer_bytes, "trials": trials,
        "summary": {
            "without_slow": summarise(by[False], STREAM_FIGURES + ["rss_growth_mb"]),
            "with_slow": summarise(by[True], STREAM_FIGURES + ["rss_growth_mb"]),
            "fast_p99_ratio_with_vs_without_slow": median(p99_ratios),
            "slow_cut_after_s": median([t["slow_closed_after_s"][0] for t in by[True] if t["slow_closed_after_s"]]),
        },
    }


# --- 6. neighbours -----------------------------------------------------------------------------------------------

ATTACK_SETTLE_SECONDS = 1.0
"""From the attack's start to the victims' measurement window: the attacker's first burst is on the wire by then."""
VICTIM_ADMISSIONS_PER_SECOND = 8.0
"""The admission victim's pace: under its address's handshake budget (10/s), which its stream shares."""
PROBE_KEYS = 10


def victim_phase(server: Server, stream_key: str, probe_keys: list[str], *, warmup: float, duration: float,
                 attack: AttackJob | None = None) -> dict:
    """The two victims (one streaming ``T.*``, one admitting warm keys in turn) measured for *duration* seconds,
    alone or while *attack* runs from ATTACKER_ADDRESS; with the gateway's RSS before the attack and its highest
    during it."""
    victims = Workers([StreamJob(server.url(), [stream_key], ["T.*"]),
                       ProbeJob(server.url(), probe_keys, VICTIM_ADMISSIONS_PER_SECOND)])
    attacker = Workers([attack]) if attack is not None else None
    try:
        victims.replies("ready")
        if attacker is not None:
            attacker.replies("ready")
        rss_before = server.rss_bytes()
        sampler = RssSampler(server)
        begin = time.time() + 0.2
        start = begin + (ATTACK_SETTLE_SECONDS if attacker is not None else warmup)
        end = start + duration
        if attacker is not None:
            attacker.send(("go", begin, end))
        victims.send(("measure", start, end))
        stream, probe = victims.replies("result", timeout=duration + 120)
        attacked = attacker.replies("result", timeout=60)[0] if attacker is not None else None
        rss = sampler.stop()
        time.sleep(0.5)
        rss_after = server.rss_bytes()
    finally:
        victims.close()
        if attacker is not None:
            attacker.close()
    latencies = stream["latencies_ns"] / 1e6
    times = probe["times"] * 1e3
    rss_max = max([value for moment, value in rss if moment >= begin] or [rss_before])
    phase = {
        "latency_ms": weighted_percentiles(latencies, stream["weights"]),
        "events_per_s": stream["events"] / duration,
        "admission_ms": {"p50": float(np.percentile(times, 50)) if times.size else float("nan"),
                         "p99": float(np.percentile(times, 99)) if times.size else float("nan"),
                         "max": float(times.max()) if times.size else float("nan")},
        "admissions": int(times.size),
        "victim_disconnects": sum(stream["closed"].values()),
        "victim_admission_failures": probe["failures"],
        "rss_mb_before": rss_before / 2**20, "rss_mb_max": rss_max / 2**20, "rss_mb_after": rss_after / 2**20,
    }
    if attacked is not None:
        connections = max(1, attacked["most_connections_held"])
        phase.update(attacker=attacked,
                     rss_growth_mb_per_attacking_connection=(rss_max - rss_before) / 2**20 / connections)
    return phase


def ratio(attacked: float, baseline: float) -> float:
    return attacked / baseline if baseline and baseline == baseline else float("nan")


def neighbours(env: Environment, *, attacks: list[str], rate: float, warmup: float, duration: float, log) -> dict:
    """Each attack against a fresh gateway and upstream (stocks): first the victims alone for *duration* seconds (the
    baseline), then the victims again while the attacker runs; every ratio is attacked / baseline of the same
    gateway. A fresh gateway per attack keeps one attack's leftovers (blocked address, held items, memory) out of the
    next one's figures."""
    stream_keys, probe_keys = env.stocks_keys[:2], env.stocks_keys[2:2 + PROBE_KEYS]
    attacker_keys = env.stocks_keys[2 + PROBE_KEYS:2 + 2 * PROBE_KEYS]
    trials = []
    for kind in attacks:
        env.reset_redis()
        upstream = Upstream(env, rate, market="stocks")
        server = Server("daphne", env, upstream, label="gateway", deployed_address_budgets=True)
        try:
            baseline = victim_phase(server, stream_keys[0], probe_keys, warmup=warmup, duration=duration)
            attacked = victim_phase(server, stream_keys[1], probe_keys, warmup=warmup, duration=duration,
                                    attack=AttackJob(server.url(), kind, attacker_keys))
        except WorkerError as error:  # recorded, not fatal: the other attacks still run
            log(f"  neighbours {kind}: FAILED {error}")
            continue
        finally:
            server.stop()
            upstream.stop()
        trial = {
            "attack": kind, "baseline": baseline, "attacked": attacked,
            "p50_ratio": ratio(attacked["latency_ms"]["p50"], baseline["latency_ms"]["p50"]),
            "p99_ratio": ratio(attacked["latency_ms"]["p99"], baseline["latency_ms"]["p99"]),
            "admission_p50_ratio": ratio(attacked["admission_ms"]["p50"], baseline["admission_ms"]["p50"]),
            "admission_p99_ratio": ratio(attacked["admission_ms"]["p99"], baseline["admission_ms"]["p99"]),
            "events_per_s_ratio": ratio(attacked["events_per_s"], baseline["events_per_s"]),
            "victim_disconnects": attacked["victim_disconnects"] + sum(attacked["victim_admission_failures"].values()),
        }
        trials.append(trial)
        outcomes = sorted(attacked["attacker"]["outcomes"].items(), key=lambda pair: -pair[1])[:4]
        log(f"  neighbours {kind}: victim p50 x{trial['p50_ratio']:.2f} p99 x{trial['p99_ratio']:.2f} "
            f"({attacked['latency_ms']['p99']:.1f} ms), admission p50 x{trial['admission_p50_ratio']:.2f} "
            f"p99 x{trial['admission_p99_ratio']:.2f}, events x{trial['events_per_s_ratio']:.2f}, "
            f"victim disconnects {trial['victim_disconnects']}, RSS {attacked['rss_mb_before']:.0f} -> "
            f"{attacked['rss_mb_max']:.0f} MB ({attacked['rss_growth_mb_per_attacking_connection']:.2f} MB per "
            f"attacking connection of {attacked['attacker']['most_connections_held']}), attacker got {outcomes}")
    return {"rate_stocks_events_per_s": rate, "duration": duration, "subscription": "T.*",
            "victim_admissions_per_s": VICTIM_ADMISSIONS_PER_SECOND, "trials": trials}
