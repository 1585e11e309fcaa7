"""The markdown report and its two charts."""
from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .wrk import Run  # noqa: E402


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(runs: list[Run]) -> dict:
    """Median over the rounds of each figure; errors summed."""
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    return {
        "rps": med([r.rps for r in runs]),
        "p50": med([r.latency_us["p50"] for r in runs]),
        "p90": med([r.latency_us["p90"] for r in runs]),
        "p99": med([r.latency_us["p99"] for r in runs]),
        "errors": errors,
        "requests": sum(r.requests for r in runs),
        "wrk_share": med([r.wrk_share for r in runs]),
        "service_cores": med([r.service_cpu_s / r.wall_s for r in runs if r.service_cpu_s is not None]),
        "pg_cores": med([r.postgres_cpu_s / r.wall_s for r in runs if r.postgres_cpu_s is not None]),
        "rss_kib": runs[-1].rss_kib,
        "rounds": len(runs),
    }


def fmt_rps(x) -> str:
    return "—" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


def fmt_ms(us) -> str:
    return "—" if us is None else f"{us / 1000:.2f}" if us < 100_000 else f"{us / 1000:.0f}"


def fmt_errors(e: dict) -> str:
    parts = [f"{k} {v}" for k, v in e.items() if v]
    return ", ".join(parts) if parts else "0"


def scenario_table(conc: int, order: list[str], results: dict, limits: dict, recall: dict) -> list[str]:
    lines = [f"### {conc} connections", "",
             "| scenario | req/s | p50 ms | p99 ms | errors | limit | limit req/s | API/limit "
             "| recall@10 | wrk CPU | service CPU | postgres CPU | service RSS |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in order:
        runs = results.get(name)
        if not runs:
            continue
        s = summary(runs)
        lim = limits.get(name) or {}
        lrps = lim.get("rps")
        ratio = f"{s['rps'] / lrps:.2f}" if lrps and s["rps"] else "—"
        rec = recall.get(name)
        lines.append(
            f"| {name} | {fmt_rps(s['rps'])} | {fmt_ms(s['p50'])} | {fmt_ms(s['p99'])} | {fmt_errors(s['errors'])} "
            f"| {lim.get('label', '—')} | {fmt_rps(lrps) if lrps else lim.get('error', '—')} | {ratio} "
            f"| {'—' if rec is None else f'{rec:.3f}'} | {s['wrk_share'] * 100:.0f}% "
            f"| {fmt_cores(s['service_cores'])} | {fmt_cores(s['pg_cores'])} "
            f"| {fmt_mib(s['rss_kib'])} |")
    return lines


def fmt_cores(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def fmt_mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.0f} MiB"



def _label(ax, x, names, ylabel: str, title: str) -> None:
    """Log scale, one tick a scenario, the labels, legend and grid of a chart."""
    ax.set_yscale("log")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

def charts(path_prefix: Path, concs: list[int], order: list[str], results: dict, limits: dict,
           pool_limits: dict, pool_size: int) -> tuple[Path, Path]:
    """Throughput against the limit, and latency percentiles, one panel per concurrency."""
    tput = path_prefix.with_name(path_prefix.name + "-throughput.png")
    lat = path_prefix.with_name(path_prefix.name + "-latency.png")

    fig, axes = plt.subplots(len(concs), 1, figsize=(13, 4.2 * len(concs)), squeeze=False)
    for ax, c in zip(axes[:, 0], concs, strict=True):
        names = [n for n in order if results[c].get(n)]
        api = [summary(results[c][n])["rps"] for n in names]
        lim = [(limits[c].get(n) or {}).get("rps") or 0 for n in names]
        x = range(len(names))
        pool = [(pool_limits.get(n) or {}).get("rps") or 0 for n in names]
        ax.bar([i - 0.27 for i in x], api, 0.27, label="API (wrk)", color="#3b75af")
        ax.bar(list(x), lim, 0.27, label=f"limit at {c} connections (backing service alone)", color="#c6c6c6",
               edgecolor="#777")
        ax.bar([i + 0.27 for i in x], pool, 0.27, label=f"Postgres at the pool's {pool_size} connections (pgbench)",
               color="#ffffff", edgecolor="#777", hatch="//")
        for i, (a, b) in enumerate(zip(api, lim, strict=True)):
            if b:
                ax.annotate(f"{a / b:.2f}", (i - 0.27, a), ha="center", va="bottom", fontsize=8)
        _label(ax, x, names, "requests/s (log)", f"{c} connections: throughput, API/limit ratio above the API bar")
    _save(fig, tput)

    fig, axes = plt.subplots(len(concs), 1, figsize=(13, 4.2 * len(concs)), squeeze=False)
    for ax, c in zip(axes[:, 0], concs, strict=True):
        names = [n for n in order if results[c].get(n)]
        ss = [summary(results[c][n]) for n in names]
        x = range(len(names))
        for off, key, color in ((-0.27, "p50", "#8fbbd9"), (0, "p90", "#3b75af"), (0.27, "p99", "#1b3b5a")):
            ax.bar([i + off for i in x], [s[key] / 1000 for s in ss], 0.27, label=key, color=color)
        _label(ax, x, names, "latency ms (log)", f"{c} connections: latency percentiles (wrk)")
    _save(fig, lat)
    return tput, lat
