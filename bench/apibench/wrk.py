"""Running wrk with bench/wrk/requests.lua, and the measurements taken around it."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import cpu_delta, postgres_cpu, proc_cpu_seconds, proc_memory_kib

LUA = Path(__file__).resolve().parent.parent / "wrk" / "requests.lua"
THREADS = 2
TIMEOUT = "10s"


@dataclass
class Run:
    scenario: str
    connections: int
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, int]
    wrk_cpu_s: float
    wall_s: float
    service_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    rss_kib: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def status_errors(self) -> int:
        return self.errors.get("status", 0)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k in ("connect", "read", "write"))

    @property
    def wrk_share(self) -> float:
        """wrk's CPU time over the machine's CPU time during the run (1.0 = every core)."""
        return self.wrk_cpu_s / (self.wall_s * os.cpu_count()) if self.wall_s else 0.0


def write_requests(path: Path, lines: list[tuple[str, str, str]]) -> Path:
    """A request file for requests.lua: METHOD<TAB>PATH<TAB>BODY a line."""
    with open(path, "w") as f:
        for method, p, body in lines:
            assert "\t" not in p and "\t" not in body and "\n" not in body
            f.write(f"{method}\t{p}\t{body}\n")
    return path


def run_wrk(base_url: str, key: str, scenario: str, connections: int, seconds: int,
            requests_file: Path | None = None, unique_prefix: str | None = None,
            service_pid: int | None = None, database: str | None = None, log: Path | None = None) -> Run:
    env = dict(os.environ, BENCH_KEY=key, BENCH_REQUESTS=str(requests_file or ""),
               BENCH_UNIQUE=unique_prefix or "")
    argv = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", TIMEOUT, "--latency",
            "-s", str(LUA), base_url]
    svc0 = proc_cpu_seconds(service_pid) if service_pid else None
    pg0 = postgres_cpu(database) if database else None
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    # wait4 gives the child's own CPU time (every thread), which /proc loses at exit.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(argv)}  # {scenario}\n{out}")
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed for {scenario} (exit {proc.returncode}):\n{out[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    run = Run(scenario=scenario, connections=connections, requests=r["requests"],
              duration_s=r["duration_us"] / 1e6, errors=r["errors"], latency_us=r["latency_us"],
              wrk_cpu_s=usage.ru_utime + usage.ru_stime, wall_s=wall)
    if service_pid:
        run.service_cpu_s = proc_cpu_seconds(service_pid) - svc0
        run.rss_kib = proc_memory_kib(service_pid)["VmRSS"]
    if database:
        run.postgres_cpu_s = cpu_delta(pg0, postgres_cpu(database))
    return run
