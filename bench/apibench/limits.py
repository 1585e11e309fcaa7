"""Limits: what the backing services deliver alone, measured in the same run.

- Redis: redis-benchmark GET of a value the size of a cached context.
- Postgres: the exact statements a route sends, captured from the server log
  and replayed with pgbench (-M prepared) at the same concurrency.
- The TEI stand-in: wrk against its /embed with one text per call.
"""
from __future__ import annotations

import csv
import io
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# ------------------------------------------------------------------ Redis ---


def redis_get_limit(port: int, value_bytes: int, connections: int, seconds: float, log: Path) -> dict:
    """GET req/s of one key holding `value_bytes`, at `connections`, for about `seconds`."""

    def bench(n: int) -> float:
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", str(value_bytes),
                "-c", str(connections), "-n", str(n), "--threads", "2", "-q", "--csv"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds * 10 + 120).stdout
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(argv)}\n{out}")
        for row in csv.reader(io.StringIO(out)):
            if row and row[0] == "GET":
                return float(row[1])
        raise RuntimeError(f"no GET line in redis-benchmark output:\n{out}")

    # A short run to size the real one.
    rough = bench(max(20_000, connections * 100))
    n = max(20_000, int(rough * seconds))
    rps = bench(n)
    # redis-benchmark's own key ("key:__rand_int__" without -r).
    subprocess.run(["redis-cli", "-p", str(port), "DEL", "key:__rand_int__"], capture_output=True, check=False)
    return {"rps": rps, "requests": n, "value_bytes": value_bytes}


# --------------------------------------------------------- SQL capture ------

_PREFIX = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\S*) ?"
    r"(LOG|DETAIL|ERROR|STATEMENT|WARNING|FATAL|HINT|CONTEXT|NOTICE|PANIC):  (.*)$")
_EXECUTE = re.compile(r"^duration: ([\d.]+) ms  execute [^:]+: (.*)$", re.S)
_PARAM = re.compile(r"\$(\d+) = (NULL|'((?:[^']|'')*)')")


@dataclass
class Statement:
    pid: int
    sql: str
    ms: float
    params: dict[int, str | None] = field(default_factory=dict)


def parse_log(text: str, database: str) -> list[Statement]:
    """The `execute` statements that `database`'s backends logged, with their parameters.

    An entry starts with the log_line_prefix ('%m [%p] %d '); lines without it
    continue the entry before. A DETAIL with parameters follows its LOG entry
    from the same backend."""
    entries: list[list] = []  # [pid, db, level, text]
    for line in text.split("\n"):
        m = _PREFIX.match(line)
        if m:
            entries.append([int(m[1]), m[2], m[3], m[4]])
        elif entries:
            entries[-1][3] += "\n" + line
    out: list[Statement] = []
    last_by_pid: dict[int, Statement] = {}
    for pid, db, level, body in entries:
        if db != database:
            continue
        if level == "LOG":
            m = _EXECUTE.match(body)
            last_by_pid.pop(pid, None)
            if m:
                st = Statement(pid=pid, sql=m[2].strip(), ms=float(m[1]))
                out.append(st)
                last_by_pid[pid] = st
        elif level == "DETAIL" and body.startswith("parameters:") and pid in last_by_pid:
            st = last_by_pid.pop(pid)
            for pm in _PARAM.finditer(body):
                st.params[int(pm[1])] = None if pm[2] == "NULL" else pm[3].replace("''", "'")
    return out


class LogWindow:
    """Reads what a log file gained since the window opened."""

    def __init__(self, path: Path):
        self.path = path
        self.start = path.stat().st_size

    def read(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")


# --------------------------------------------------------------- pgbench ----


@dataclass
class Captured:
    """One route's statement: the SQL text and the parameters of several requests."""
    route: str
    sql: str
    samples: list[dict[int, str | None]]
    # Parameters replaced by an expression (e.g. the new row's id by gen_random_uuid()).
    replace: dict[int, str] = field(default_factory=dict)


def pgbench_scripts(c: Captured, workdir: Path) -> tuple[list[Path], list[str]]:
    """One script per captured sample, each with its own variable names (pgbench
    variables are global), so the replay varies its parameters like the API run."""
    files, defines = [], []
    for k, params in enumerate(c.samples):
        def sub(m: re.Match, params=params, k=k) -> str:
            n = int(m[1])
            if n in c.replace:
                return c.replace[n]
            if params.get(n) is None:
                return "NULL"
            return f":p{n}_{k}"

        sql = re.sub(r"\$(\d+)\b", sub, " ".join(c.sql.split()))
        path = workdir / f"pgbench-{c.route}-{k}.sql"
        path.write_text(sql.rstrip(";") + ";\n")
        files.append(path)
        for n, v in sorted(params.items()):
            if v is not None and n not in c.replace:
                defines += ["-D", f"p{n}_{k}={v}"]
    return files, defines


def run_pgbench(pgbench: Path, dsn_args: list[str], database: str, c: Captured, connections: int,
                seconds: int, workdir: Path, log: Path) -> dict:
    files, defines = pgbench_scripts(c, workdir)
    argv = [str(pgbench), *dsn_args, "-M", "prepared", "-j", "2", "-c", str(connections), "-T", str(seconds),
            "-n", "-r"]
    for f in files:
        argv += ["-f", str(f)]
    argv += defines + [database]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 5 + 120)
    shown = [a if len(a) < 200 else a[:120] + "...'" for a in argv]
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(shown)}  # {c.route}, exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", p.stdout, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", p.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", p.stdout, re.M)
    if p.returncode != 0 or not tps:
        return {"error": (p.stderr.strip().splitlines() or ["pgbench failed"])[-1][:300], "exit": p.returncode}
    return {"rps": float(tps[1]), "latency_ms": float(lat[1]) if lat else None,
            "failed": int(failed[1]) if failed else 0, "scripts": len(files)}
