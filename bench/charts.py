"""The scale charts, drawn from the committed reports (bench/results/*.md), so they
always show what the reports say:

- bench/results/scale-recall-speed.png: recall@10 against searches/s at one
  connection (1,000 / warm p50) over all rows and for the five largest users, at a
  million x 768, for each storage option and graph measured, with the
  HNSW_EF_SEARCH sweeps; and the FastAPI peer beside the service at 32
  connections (req/s against recall@10);
- bench/results/ingest-rate.png: the batch-create rate against the table's size,
  by form (bench/results/ingest-200000.md), and the bulk import's rate.

    .bench-venv/bin/python bench/charts.py      # after bench/run.sh made the venv (matplotlib)
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# The million-row reports and what each measured (form, graph), in the order drawn.
SCALE = [
    ("scale-1000000.md", "{form}, m 16 / 64 (cold)"),
    ("scale-1000000-halfvec-warm.md", "halfvec, m 16 / 64"),
    ("scale-1000000-halfvec.md", "halfvec, m 16 / 128"),
    ("scale-1000000-halfvec-m24.md", "halfvec, m 24 / 128"),
    ("scale-1000000-halfvec-m24-default.md", "halfvec, m 24 / 128 (default)"),
]
PEER = "scale-1000000-halfvec-m24-default.md"


def tables(path: Path) -> list[tuple[str, list[dict[str, str]]]]:
    """Every markdown table of `path`, with the heading it is under: rows as dicts."""
    out, heading, lines = [], "", path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            out.append((heading, rows))
            continue
        i += 1
    return out


def number(cell: str) -> float | None:
    m = re.search(r"[\d,]+(\.\d+)?", cell or "")
    return float(m[0].replace(",", "")) if m else None


def scope(search: str) -> str | None:
    if search.startswith("all rows"):
        return "all rows"
    if search.startswith("the 5 largest"):
        return "the 5 largest users"
    return None


def scale_points() -> dict[str, dict[str, list[tuple[float, float, str]]]]:
    """{scope: {series: [(searches/s, recall, label)]}} from the per-form tables and sweeps."""
    points: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
    for name, series in SCALE:
        for heading, rows in tables(RESULTS / name):
            form = re.match(r"`(\w+)`", heading)
            if not form or not rows:
                continue
            label = series.format(form=form[1])
            if "p50" in rows[0] and "recall@10" in rows[0] and "plan chosen" in rows[0]:
                p50_key = "warm: p50" if "warm: p50" in rows[0] else "p50"
                for r in rows:
                    s, p50, rec = scope(r["search"]), number(r[p50_key]), number(r["recall@10"])
                    if s and p50 and rec is not None:
                        points.setdefault(s, {}).setdefault(label, []).append((1000 / p50, rec, ""))
            elif "HNSW_EF_SEARCH" in rows[0]:
                for r in rows:
                    s, p50, rec = scope(r["search"]), number(r["p50"]), number(r["recall@10"])
                    if s and p50 and rec is not None:
                        points.setdefault(s, {}).setdefault(label, []).append(
                            (1000 / p50, rec, f"ef {r['HNSW_EF_SEARCH']}"))
    return points


def peer_points() -> list[dict]:
    for heading, rows in tables(RESULTS / PEER):
        if "beside the FastAPI peer" in heading:
            return rows
    return []


def draw_scale(path: Path) -> None:
    points = scale_points()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, s in zip(axes, ["all rows", "the 5 largest users"]):
        for label, pts in points.get(s, {}).items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            for x, y, note in pts:
                if note:
                    ax.annotate(note, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_title(f"1,000,000 x 768, {s}: one connection")
        ax.set_xlabel("searches/s (1,000 / p50, warm unless marked cold)")
        ax.set_ylabel("recall@10")
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for r in peer_points():
        s = scope(r["search"])
        ef = re.search(r"HNSW_EF_SEARCH (\d+)", r["search"])
        tag = s + (f", HNSW_EF_SEARCH {ef[1]}" if ef else ", default ef_search")
        marker = "o" if s == "all rows" else "s"
        ax.scatter(number(r["context-api req/s"]), number(r["context-api recall@10"]), marker=marker,
                   color="tab:blue", label=f"context-api, {tag}")
        # The peer's own ef_search is always 40; the tag names the service's.
        ax.scatter(number(r["peer req/s"]), number(r["peer recall@10"]), marker=marker, color="tab:red",
                   label=f"FastAPI peer, {s}")
        if ef:
            ax.annotate(f"HNSW_EF_SEARCH {ef[1]}", (number(r["context-api req/s"]),
                        number(r["context-api recall@10"])), textcoords="offset points", xytext=(-60, 6),
                        fontsize=7)
    ax.set_title("beside the FastAPI peer, 32 connections")
    ax.set_xlabel("req/s")
    ax.set_ylabel("recall@10")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.legend(seen.values(), seen.keys(), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_ingest(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for heading, rows in tables(RESULTS / "ingest-200000.md"):
        if not rows or "rows" not in rows[0]:
            continue
        forms = [k for k in rows[0] if k != "rows"]
        mids = [(number(r["rows"].split(" to ")[0]) + number(r["rows"].split(" to ")[1])) / 2 for r in rows]
        for form in forms:
            ax.plot(mids, [number(r[form]) for r in rows], marker="o", label=f"POST /contexts/batch, {form.strip('`')}")
    for _, rows in tables(RESULTS / "ingest-1000000-import.md"):
        key = "contexts/s, empty to searchable"
        if rows and key in rows[0]:
            rate = number(rows[0][key])
            ax.axhline(rate, color="black", linestyle="--",
                       label=f"import --defer-index, 0 to 1,000,000 rows, empty to searchable, m 16 / 128 ({rate:,.0f}/s)")
    ax.axhline(3000, color="grey", linestyle=":", label="the issue's target (3,000/s)")
    ax.set_xlabel("rows in the table")
    ax.set_ylabel("contexts/s")
    ax.set_title("Ingest with vectors given, 768-d, by table size (2 cores)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    draw_scale(RESULTS / "scale-recall-speed.png")
    draw_ingest(RESULTS / "ingest-rate.png")
    print("bench/results/scale-recall-speed.png, bench/results/ingest-rate.png")
