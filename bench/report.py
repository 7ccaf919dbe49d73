"""Results: machine info, the JSON file in bench/results/, the summary table against the goals, and the plot."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("django", "channels", "channels-redis", "daphne", "twisted", "autobahn", "websockets", "orjson",
            "redis", "uvicorn", "psutil")


def machine_info() -> dict:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "-"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        commit, dirty = "-", False
    cpu_model = "-"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model,
        "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(), "commit": commit, "working_tree_dirty": dirty,
        "redis": redis_version, "packages": {package: version(package) for package in PACKAGES},
    }


def write_results(results: dict, name: str, plot: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=_plain))
    (RESULTS_DIR / f"{name}.md").write_text(markdown(results) + "\n")  # the tables, as BENCHMARKS.md quotes them
    if plot and "firehose" in results["scenarios"]:
        try:
            plot_firehose(results, RESULTS_DIR / f"{name}-firehose.png")
        except ImportError:
            print("matplotlib is not installed: no plot")
    return path


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(type(value))


def _firehose_labels(results: dict) -> list[str]:
    """The targets of the firehose scenario, in the run's order (the direct baseline serves only the selective one)."""
    summaries = [entry["summary"] for entry in results["scenarios"]["firehose"]["by_clients"].values()]
    return [target["label"] for target in results["targets"] if all(target["label"] in s for s in summaries)]


def plot_firehose(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firehose = results["scenarios"]["firehose"]["by_clients"]
    counts = sorted(int(n) for n in firehose)
    labels = _firehose_labels(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in labels:
        throughput = [firehose[str(n)]["summary"][label]["delivered_events_per_s"] for n in counts]
        p99 = [firehose[str(n)]["summary"][label]["latency_ms"]["p99"] for n in counts]
        left.plot(counts, throughput, marker="o", label=label)
        right.plot(counts, p99, marker="o", label=label)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("clients (T.* each)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    left.set_yscale("log")
    left.set_ylabel("delivered events/s (all clients)")
    right.set_yscale("log")
    right.set_ylabel("p99 latency, upstream send to client (ms)")
    rate = results["scenarios"]["firehose"]["rate_options_events_per_s"]
    figure.suptitle(f"Firehose fan-out: options feed at {rate:,.0f} events/s offered (T.* is ~25% of it), "
                    f"{results['machine']['cores']} cores, median of {results['runs']} runs")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, verdict) rows."""
    rows = []
    scenarios = results["scenarios"]
    label = next((target["label"] for target in results["targets"] if target["kind"] == "daphne"), "gateway")
    if "firehose" in scenarios:
        for n, entry in scenarios["firehose"]["by_clients"].items():
            summary = entry["summary"]
            gateway = summary.get(label)
            ceiling = summary.get("ceiling")
            if gateway is None or ceiling is None:
                continue
            ratio = gateway.get("throughput_ratio_vs_ceiling", float("nan"))
            rows.append((f"1. firehose N={n}: delivered ev/s gateway / ceiling",
                         f"{_fmt(gateway['delivered_events_per_s'])} / {_fmt(ceiling['delivered_events_per_s'])} "
                         f"= {ratio:.0%}", ">= 50%", "met" if ratio >= 0.5 else "NOT met"))
            rows.append((f"   firehose N={n}: server CPU us/event gateway / ceiling",
                         f"{gateway['server_cpu_us_per_event']:.2f} / {ceiling['server_cpu_us_per_event']:.2f}",
                         "", ""))
            rows.append((f"   firehose N={n}: p99 latency gateway / ceiling (ms)",
                         f"{_fmt(gateway['latency_ms']['p99'])} / {_fmt(ceiling['latency_ms']['p99'])}", "", ""))
            if "uvicorn" in summary:
                rows.append((f"   firehose N={n}: uvicorn / ceiling",
                             f"{summary['uvicorn'].get('throughput_ratio_vs_ceiling', float('nan')):.0%}", "", ""))
    if "selective" in scenarios:
        summary = scenarios["selective"]["summary"]
        latency = summary[label]["latency_ms"]
        added = summary[label].get("added_latency_ms_vs_direct")
        rows.append((f"2. selective {scenarios['selective']['clients']} clients: latency p50 / p99 / p99.9 / max (ms)",
                     f"{latency['p50']:.2f} / {latency['p99']:.2f} / {latency['p99.9']:.2f} / {latency['max']:.1f}",
                     "", ""))
        if added is not None:
            rows.append(("   selective: latency added to direct clients of the upstream, p50 / p99 (ms)",
                         f"{added['p50']:.2f} / {added['p99']:.2f}", "p50 < 1, p99 < 5",
                         "met" if added["p50"] < 1 and added["p99"] < 5 else "NOT met"))
        if "direct" in summary:
            latency = summary["direct"]["latency_ms"]
            rows.append(("   selective, clients direct on the upstream: p50 / p99 (ms)",
                         f"{latency['p50']:.2f} / {latency['p99']:.2f}", "", ""))
        if "ceiling" in summary:
            latency = summary["ceiling"]["latency_ms"]
            rows.append(("   selective, ceiling server: p50 / p99 (ms)", f"{latency['p50']:.2f} / {latency['p99']:.2f}",
                         "", ""))
        if "uvicorn" in summary:
            latency = summary["uvicorn"]["latency_ms"]
            rows.append(("   selective, gateway on uvicorn: p50 / p99 (ms)",
                         f"{latency['p50']:.2f} / {latency['p99']:.2f}", "", ""))
    if "admission" in scenarios:
        admission = scenarios["admission"]
        for key, entry in admission["summary"].items():
            if not key.startswith(f"{label}/"):
                continue
            rate = entry["admissions_per_s"]
            rows.append((f"3. admission ({key.split('/')[1]} keys): admissions/s, p50 / p99 to auth_success (ms)",
                         f"{_fmt(rate)}, {entry['time_to_auth_success_ms']['p50']:.1f} / "
                         f"{entry['time_to_auth_success_ms']['p99']:.1f}", ">= 500/s",
                         "met" if rate >= 500 else "NOT met"))
            cpu = entry.get("server_cpu_ms_per_admission")
            if cpu is not None:
                rows.append((f"   gateway CPU per admission ({key.split('/')[1]}, whole connection)",
                             f"{cpu:.2f} ms = {1000 / cpu:,.0f} admissions/s per core", "", ""))
            phase = key.split("/")[1]
            cpu_ratio = entry.get("cpu_per_admission_ratio_vs_ceiling")
            if cpu_ratio is not None:
                goal = 2.0 if phase == "warm" else 3.0
                rows.append((f"   gateway CPU per admission / the ceiling's ({phase})", f"x{cpu_ratio:.2f}",
                             f"<= {goal:g}x", "met" if cpu_ratio <= goal else "NOT met"))
            share = entry.get("cold_rate_share_of_warm")
            if share is not None:
                rows.append(("   cold admissions/s as a share of warm", f"{100 * share:.0f}%", ">= 60%",
                             "met" if share >= 0.6 else "NOT met"))
            to_auth = entry.get("redis_commands_to_auth_success")
            if to_auth is not None:
                rows.append((f"   Redis commands to auth_success ({key.split('/')[1]})",
                             ", ".join(f"{name} {count:.2f}" for name, count in sorted(to_auth.items())),
                             "<= 3 round trips", "see BENCHMARKS.md"))
            rows.append((f"   Redis commands per admission ({key.split('/')[1]}, whole connection incl. close)",
                         f"{entry['redis_commands_per_admission_total']:.1f}", "", ""))
        queries = admission["db_queries_in_process"]
        rows.append(("   DB queries per key resolution cold / warm", f"{queries['resolve_cold']} / "
                     f"{queries['resolve_warm']}", "<= 1 / 0",
                     "met" if queries["resolve_cold"] <= 1 and queries["resolve_warm"] == 0 else "NOT met"))
    if "idle" in scenarios:
        idle_summary = scenarios["idle"]["summary"].get(label) or next(iter(scenarios["idle"]["summary"].values()))
        for entry in idle_summary.values():
            rows.append((f"4. idle: memory per subscribed connection at {int(entry['connections_held']):,}",
                         f"{entry['kb_per_connection']:.1f} KB (server CPU while idle "
                         f"{entry.get('idle_cpu_percent', float('nan')):.1f}%)", "< 40 KB",
                         "met" if entry["kb_per_connection"] < 40 else "NOT met"))
        most = max(entry["connections_held"] for entry in idle_summary.values())
        rows.append(("   most concurrent connections held", f"{int(most):,}", ">= 10,000",
                     "met" if most >= 10000 else "not tested" if results["mode"] == "quick" else "NOT met"))
    if "slow" in scenarios:
        summary = scenarios["slow"]["summary"]
        growth = summary["with_slow"]["rss_growth_mb"]
        rows.append(("5. slow consumer: gateway RSS growth (MB) with / without",
                     f"{growth:.1f} / {summary['without_slow']['rss_growth_mb']:.1f}",
                     "<= 4 MiB budget + kernel buffers", "met" if growth < 4 + 16 else "NOT met"))
        ratio = summary["fast_p99_ratio_with_vs_without_slow"]
        rows.append(("   fast clients' p99 with / without slow (ms)",
                     f"{summary['with_slow']['latency_ms']['p99']:.2f} / "
                     f"{summary['without_slow']['latency_ms']['p99']:.2f} (x{ratio:.2f})", "unchanged",
                     "met" if ratio < 1.5 else "NOT met"))
    if "neighbours" in scenarios:
        for trial in scenarios["neighbours"]["trials"]:
            worst = max(trial["p50_ratio"], trial["p99_ratio"], trial["admission_p50_ratio"],
                        trial["admission_p99_ratio"])
            growth = trial["attacked"]["rss_growth_mb_per_attacking_connection"]
            met = worst <= 1.5 and trial["victim_disconnects"] == 0 and growth <= NEIGHBOUR_RSS_BUDGET_MB
            rows.append((f"6. neighbours, {trial['attack']}: victim p50 / p99 / admission p50 / p99 ratio, "
                         "disconnects, MB per attacking connection",
                         f"x{trial['p50_ratio']:.2f} / x{trial['p99_ratio']:.2f} / x{trial['admission_p50_ratio']:.2f}"
                         f" / x{trial['admission_p99_ratio']:.2f}, {trial['victim_disconnects']}, {growth:.2f}",
                         f"<= 1.5, 0, <= {NEIGHBOUR_RSS_BUDGET_MB:g}", "met" if met else "NOT met"))
    return rows


NEIGHBOUR_RSS_BUDGET_MB = 4 + 1
"""A client's send budget (``STREAM_CLIENT_BUFFER_BYTES``, 4 MiB) plus 1 MiB: the most an attacking connection may
cost the gateway's memory."""


def attacker_outcomes(outcomes: dict[str, int], most: int = 4) -> str:
    """The attacker's commonest outcomes, for a table cell."""
    ranked = sorted(outcomes.items(), key=lambda pair: -pair[1])[:most]
    return "; ".join(f"{count:,} × {outcome}" for outcome, count in ranked).replace("|", "/")


def print_summary(results: dict) -> None:
    rows = summary_rows(results)
    widths = [max(len(row[i]) for row in rows) if rows else 10 for i in range(4)]
    print()
    print(f"Summary ({results['mode']}, median of {results['runs']} run(s), {results['machine']['cores']} cores):")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def markdown(results: dict) -> str:
    """Markdown tables of a results file, for BENCHMARKS.md (``python -m bench.report FILE``)."""
    lines = ["| Figure | Measured | Goal | Verdict |", "|---|---|---|---|"]
    lines += [f"| {a.strip()} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    scenarios = results["scenarios"]
    if "firehose" in scenarios:
        labels = _firehose_labels(results)
        lines += ["", "| Clients | " + " | ".join(f"{label} ev/s" for label in labels) + " | "
                  + " | ".join(f"{label} µs CPU/ev" for label in labels) + " | "
                  + " | ".join(f"{label} p50/p99 ms" for label in labels) + " | cut by server |",
                  "|---" * (3 * len(labels) + 2) + "|"]
        for n, entry in scenarios["firehose"]["by_clients"].items():
            summary = entry["summary"]
            cut = {label: sum(sum(closed.values()) for closed in summary[label]["clients_closed_by_server"])
                   for label in labels}
            lines.append(
                f"| {n} | " + " | ".join(_fmt(summary[label]["delivered_events_per_s"]) for label in labels) + " | "
                + " | ".join(f"{summary[label]['server_cpu_us_per_event']:.2f}" for label in labels) + " | "
                + " | ".join(f"{summary[label]['latency_ms']['p50']:.1f} / {summary[label]['latency_ms']['p99']:.1f}"
                             for label in labels) + " | "
                + ", ".join(f"{label} {cut[label]}" for label in labels) + " |")
        lines += ["", "Pairwise ratios (median over runs of same-run ratios):", "",
                  "| Clients | Pair | throughput | CPU per event | p99 latency |", "|---|---|---|---|---|"]
        for n, entry in scenarios["firehose"]["by_clients"].items():
            for pair, ratio in entry["summary"]["pairwise"].items():
                lines.append(f"| {n} | {pair} | {ratio['throughput']:.2f} | {ratio['cpu_per_event']:.2f} | "
                             f"{ratio['p99_latency']:.2f} |")
    if "selective" in scenarios:
        summary = scenarios["selective"]["summary"]
        lines += ["", "| Selective server | delivered ev/s | p50 | p99 | p99.9 | max (ms) | added to direct p50 / p99 "
                  "(ms) | CPU % | µs CPU/ev |", "|---|---|---|---|---|---|---|---|---|"]
        for label, entry in summary.items():
            if label == "pairwise":
                continue
            latency = entry["latency_ms"]
            added = entry.get("added_latency_ms_vs_direct")
            added_text = f"{added['p50']:.2f} / {added['p99']:.2f}" if added else "-"
            lines.append(f"| {label} | {_fmt(entry['delivered_events_per_s'])} | {latency['p50']:.2f} | "
                         f"{latency['p99']:.2f} | {latency['p99.9']:.2f} | {latency['max']:.1f} | {added_text} | "
                         f"{entry['server_cpu_percent']:.0f} | {entry['server_cpu_us_per_event']:.1f} |")
    if "admission" in scenarios:
        lines += ["", "| Admission | per s | p50 ms | p99 ms | Redis commands per admission (whole connection) |",
                  "|---|---|---|---|---|"]
        for key, entry in scenarios["admission"]["summary"].items():
            commands = ", ".join(f"{name} {count:.2f}" for name, count in
                                 sorted(entry["redis_commands_per_admission"].items()))
            lines.append(f"| {key} | {_fmt(entry['admissions_per_s'])} | "
                         f"{entry['time_to_auth_success_ms']['p50']:.1f} | "
                         f"{entry['time_to_auth_success_ms']['p99']:.1f} | {commands} |")
    if "idle" in scenarios:
        lines += ["", "| Server | Idle connections held | RSS MB | KB per connection | seconds to connect the step | "
                  "server CPU % while idle |", "|---|---|---|---|---|---|"]
        for trial in scenarios["idle"]["trials"]:
            for point in trial["points"]:
                lines.append(f"| {trial['target']} | {point['connections']:,} | {point['rss_mb']:.0f} | "
                             f"{point['kb_per_connection']:.1f} | {point['connect_seconds']:.0f} | "
                             f"{point.get('idle_cpu_percent', float('nan')):.1f} |")
    if "slow" in scenarios:
        slow = scenarios["slow"]
        lines += ["", "| Slow consumer trial | fast clients' p50 / p99 ms | RSS growth MB | slow client cut after s |",
                  "|---|---|---|---|"]
        for trial in slow["trials"]:
            lines.append(f"| run {trial['run']}, slow client {'present' if trial['with_slow'] else 'absent'} | "
                         f"{trial['latency_ms']['p50']:.2f} / {trial['latency_ms']['p99']:.2f} | "
                         f"{trial['rss_growth_mb']:.1f} | {trial['slow_closed_after_s'] or '-'} |")
    if "neighbours" in scenarios:
        lines += ["", "| Attack (from 127.0.0.2) | victim p50 ms (×) | victim p99 ms (×) | "
                  "admission p50 / p99 ms (×) | victim events/s × | victim disconnects | gateway RSS before → max MB | "
                  "MB per attacking connection (most held) | attacker got |", "|---|---|---|---|---|---|---|---|---|"]
        for trial in scenarios["neighbours"]["trials"]:
            attacked = trial["attacked"]
            lines.append(
                f"| {trial['attack']} | {attacked['latency_ms']['p50']:.2f} (×{trial['p50_ratio']:.2f}) | "
                f"{attacked['latency_ms']['p99']:.1f} (×{trial['p99_ratio']:.2f}) | "
                f"{attacked['admission_ms']['p50']:.1f} / {attacked['admission_ms']['p99']:.1f} "
                f"(×{trial['admission_p50_ratio']:.2f} / ×{trial['admission_p99_ratio']:.2f}) | "
                f"{trial['events_per_s_ratio']:.2f} | {trial['victim_disconnects']} | "
                f"{attacked['rss_mb_before']:.0f} → {attacked['rss_mb_max']:.0f} | "
                f"{attacked['rss_growth_mb_per_attacking_connection']:.2f} "
                f"({attacked['attacker']['most_connections_held']:,}) | "
                f"{attacker_outcomes(attacked['attacker']['outcomes'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    source = Path(sys.argv[1])
    loaded = json.loads(source.read_text())
    if "--files" in sys.argv[2:]:  # (re)write <name>.md and, for a full run, the plot beside the results file
        print(write_results(loaded, source.stem, plot=loaded["mode"] == "full"))
    else:
        print(markdown(loaded))
