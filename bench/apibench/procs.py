"""Processes (the service, the TEI stand-in) and a small keep-alive HTTP client."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """One keep-alive connection per thread to one base URL, with a bearer key."""

    def __init__(self, base_url: str, key: str):
        u = urllib.parse.urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.key = key
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        return c

    def call(self, method: str, path: str, body: bytes | str | dict | list | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if body is not None:
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body=None) -> tuple[int, object]:
        status, data = self.call(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")


def wait_http(url: str, timeout: float, proc: Proc | None = None) -> None:
    """Until GET url answers 200 (or the process dies, or the time is up)."""
    u = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {url} was ready; "
                               f"log tail:\n{proc.tail()}")
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            c.request("GET", u.path or "/")
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200:
                return
            last = f"{r.status} {body[:300]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s: {last}")


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name, self.log = name, log
        self._logf = open(log, "ab")
        self.popen = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._logf.close()
        return self.popen.returncode


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each live backend connected to `database` (by its process title)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                title = f.read().decode(errors="replace")
            if title.startswith("postgres: ") and f" {database} " in title:
                out[int(d)] = proc_cpu_seconds(int(d))
        except OSError:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second (exited ones are lost)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def scrape_metrics(api: Api) -> dict[str, float]:
    """Prometheus text from GET /metrics: {'name{labels}': value}."""
    status, raw = api.call("GET", "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in raw.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            continue
    return out


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The service's own view of a run: cache tiers, TEI calls and their batch sizes, shed requests."""

    def total(prefix: str, *must: str, src: dict[str, float]) -> float:
        return sum(v for k, v in src.items() if k.startswith(prefix) and all(m in k for m in must))

    def d(prefix: str, *must: str) -> float:
        return total(prefix, *must, src=after) - total(prefix, *must, src=before)

    out = {
        "local_hits": d("cache_hits_total{", 'kind="context_local"'),
        "redis_hits": d("cache_hits_total{", 'kind="context"'),
        "misses": d("cache_misses_total{", 'kind="context"'),
        "embedding_cache_hits": d("cache_hits_total{", 'kind="embedding"'),
        "tei_calls": d("embedding_requests_total"),
        "filled_later": d("embeddings_filled_total"),
        "cache_errors": d("cache_errors_total"),
        "shed": d("http_requests_shed_total"),
    }
    for name in ("embedding_batch_size", "embedding_coalesced_batch_size"):
        n = d(f"{name}_count")
        out[name] = d(f"{name}_sum") / n if n else 0.0
    return out
