#!/usr/bin/env python3
"""Faults under load, and a soak: each scenario runs the release binary
against the real Postgres and Redis (scripts/services.sh) and the TEI
stand-in (crates/tei-stub), drives it with a bounded mixed load, injects one
fault, and checks what a client and the database saw afterwards.

Run through scripts/faults.sh (it builds the binaries and starts the
services). Standard library only. Every scenario prints its counts, and the
whole run is written as JSON (--out).

Scenarios:
  pg_restart       Postgres stopped under load, then started again: while it
                   is down only 503 with Retry-After and no request past the
                   request timeout; recovery within 5 s; every 201 in the table.
  redis_kill       Redis (with production's persistence settings) killed
                   with SIGKILL under load: no failed request; no stale read
                   once it is back.
  tei_down         TEI down under load: every write acknowledged; each text
                   embedded exactly once after it returns (the stand-in's
                   counters).
  rolling_restart  two replicas behind the project's Caddyfile, each sent
                   SIGTERM in turn and started again: no failed request.
  backlog          three replicas on one database with a backlog of pending
                   rows and expired rows: each row embedded once, every
                   expired row purged once, under one advisory lock.
  soak             mixed load for --soak-seconds: resident memory and open
                   descriptors flat after warm-up, p99 stable, no failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIM = 32
REQUEST_TIMEOUT_S = 3.0


def log(msg: str) -> None:
    print(f"faults: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


# ---------------------------------------------------------------- plumbing --
class Env:
    def __init__(self, args: argparse.Namespace):
        self.bin = args.bin
        self.stub_bin = args.tei_stub
        self.psql = args.psql
        self.admin_url = args.database_url
        self.redis_url = args.redis_url
        self.key = uuid.uuid4().hex
        import hashlib

        self.keys_entry = "admin:" + hashlib.sha256(self.key.encode()).hexdigest()
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def sql(self, db: str | None, statement: str) -> str:
        url = self.admin_url if db is None else self.admin_url.rsplit("/", 1)[0] + "/" + db
        out = subprocess.run(
            [self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", statement],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout.strip()

    def db_url(self, db: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + db

    def scratch_db(self, name: str) -> str:
        self.sql(None, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.sql(None, f"CREATE DATABASE {name}")
        env = dict(os.environ, DATABASE_URL=self.db_url(name), EMBEDDING_DIM=str(DIM), LOG_LEVEL="warn")
        subprocess.run([self.bin, "migrate"], env=env, check=True, capture_output=True, timeout=60)
        return name

    def services(self, *cmd: str) -> None:
        subprocess.run([str(REPO / "scripts/services.sh"), *cmd], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def pg_answers(self) -> bool:
        try:
            self.sql(None, "SELECT 1")
            return True
        except Exception:
            return False


class Proc:
    """A child process with its output in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict, workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def term(self, timeout: float = 40.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait()

    def alive(self) -> bool:
        return self.p.poll() is None


class Stub:
    def __init__(self, env: Env):
        self.port = free_port()
        self.proc = Proc(f"tei-stub-{self.port}", [env.stub_bin, "--port", str(self.port), "--dim", str(DIM),
                                                    "--max-batch", "16"], dict(os.environ), env.workdir)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/health", 20)

    def control(self, what: str) -> None:
        request("127.0.0.1", self.port, "POST", f"/stub/{what}", None, {})

    def texts(self) -> dict[str, int]:
        status, body, _ = request("127.0.0.1", self.port, "GET", "/stub/counters", None, {})
        check(status == 200, f"stub counters answered {status}")
        return json.loads(body)["texts"]

    def stop(self) -> None:
        self.proc.term()


def request(host: str, port: int, method: str, path: str, body: dict | None, headers: dict,
            timeout: float = 10.0) -> tuple[int, bytes, dict]:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers)
        if data is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def wait_http(url: str, seconds: float) -> None:
    host, rest = url.split("//", 1)[1].split(":", 1)
    port, path = rest.split("/", 1)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if request(host, int(port), "GET", "/" + path, None, {}, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise Failed(f"{url} did not answer 200 within {seconds} s")


def start_api(env: Env, name: str, db: str, stub: Stub, port: int | None = None, **extra: str) -> tuple[Proc, int]:
    port = port or free_port()
    e = dict(os.environ)
    e.update({
        "BIND_ADDRESS": f"127.0.0.1:{port}",
        "DATABASE_URL": env.db_url(db),
        "REDIS_URL": env.redis_url,
        "CACHE_KEY_PREFIX": f"faults-{db}:",
        "EMBEDDING_SERVICE_URL": stub.url,
        "EMBEDDING_DIM": str(DIM),
        "EMBEDDING_TIMEOUT_MS": "1000",
        "EMBEDDING_WORKER_INTERVAL_MS": "250",
        "REQUEST_TIMEOUT_MS": str(int(REQUEST_TIMEOUT_S * 1000)),
        "DB_ACQUIRE_TIMEOUT_MS": "1000",
        "API_KEYS": env.keys_entry,
        "LOG_LEVEL": "warn",
    })
    e.update(extra)
    proc = Proc(f"{name}-{port}", [env.bin], e, env.workdir)
    wait_http(f"http://127.0.0.1:{port}/ready", 30)
    return proc, port


def scrape(port: int, metric: str) -> float:
    status, body, _ = request("127.0.0.1", port, "GET", "/metrics", None, {})
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(metric) and (len(line) == len(metric) or line[len(metric)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -------------------------------------------------------------------- load --
class Result:
    __slots__ = ("t0", "t1", "op", "status", "retry_after", "error", "detail")

    def __init__(self, t0, t1, op, status, retry_after, error, detail=""):
        self.t0, self.t1, self.op, self.status, self.retry_after, self.error = t0, t1, op, status, retry_after, error
        self.detail = detail  # the start of a failed answer's body

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class Load:
    """Worker threads, each with a keep-alive connection, sending a mix of
    creates (with an Idempotency-Key), reads, searches and lists."""

    def __init__(self, env: Env, port: int, tag: str, workers: int = 4,
                 mix: dict[str, int] | None = None, users: int = 20):
        self.env, self.port, self.tag = env, port, tag
        self.mix = mix or {"create": 4, "get": 4, "search": 1, "list": 1}
        self.ops = [op for op, w in self.mix.items() for _ in range(w)]
        self.users = [str(uuid.uuid4()) for _ in range(users)]
        self.results: list[Result] = []
        self.acked: dict[str, str] = {}  # id -> text
        self.acked_ids: list[str] = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.seq = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(workers)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)

    def next_text(self) -> str:
        with self.lock:
            self.seq += 1
            n = self.seq
        words = " ".join(random.choice(["tea", "coffee", "lisbon", "nurse", "cat", "run", "book", "sea"])
                         for _ in range(6))
        return f"{self.tag} {n} {words}"

    def run(self) -> None:
        conn = None
        headers = {"Authorization": f"Bearer {self.env.key}", "Connection": "keep-alive"}
        while not self.stop_flag.is_set():
            op = random.choice(self.ops)
            body, path, method, h = None, "", "GET", dict(headers)
            text = None
            if op == "create":
                text = self.next_text()
                method, path = "POST", "/contexts"
                body = {"user_id": random.choice(self.users), "context_type": "fault",
                        "content": {"text": text}}
                h["Idempotency-Key"] = str(uuid.uuid4())
            elif op == "get":
                with self.lock:
                    ids = self.acked_ids[-500:]
                if not ids:
                    continue
                path = f"/contexts/{random.choice(ids)}"
            elif op == "search":
                method, path = "POST", "/contexts/search"
                body = {"query": f"q {random.choice(['tea', 'lisbon', 'cat', 'sea'])}", "k": 5,
                        "user_id": random.choice(self.users)}
            else:
                path = f"/contexts?user_id={random.choice(self.users)}&limit=10"
            t0 = time.time()
            status, retry_after, error, payload = 0, None, None, b""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S + 7)
                data = None if body is None else json.dumps(body).encode()
                if data is not None:
                    h["Content-Type"] = "application/json"
                conn.request(method, path, body=data, headers=h)
                r = conn.getresponse()
                payload = r.read()
                status, retry_after = r.status, r.getheader("Retry-After")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every client-side failure is counted
                error = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            t1 = time.time()
            with self.lock:
                detail = "" if error is None and 200 <= status < 300 else payload[:300].decode(errors="replace")
                self.results.append(Result(t0, t1, op, status, retry_after, error, detail))
                if op == "create" and status == 201:
                    cid = json.loads(payload)["id"]
                    self.acked[cid] = text
                    self.acked_ids.append(cid)
            time.sleep(0.002)

    # -- summaries
    def failures(self, start: float = 0, end: float = float("inf")) -> list[Result]:
        return [r for r in self.results if not r.ok and start <= r.t0 <= end]

    def summary(self) -> dict:
        lat = sorted(r.t1 - r.t0 for r in self.results)
        fails = self.failures()
        by = {}
        for r in fails:
            k = r.error.split(":")[0] if r.error else str(r.status)
            by[k] = by.get(k, 0) + 1
        return {
            "requests": len(self.results),
            "acknowledged_writes": len(self.acked),
            "failed_requests": len(fails),
            "failures_by_kind": by,
            # The first few, to tell what failed and when (UTC, as the logs).
            "failure_samples": [{"op": r.op, "status": r.status, "error": r.error,
                                 "at": time.strftime("%H:%M:%S", time.gmtime(r.t0)) + f".{int(r.t0 * 1000) % 1000:03d}",
                                 "ms": round(1000 * (r.t1 - r.t0), 1), "body": r.detail} for r in fails[:5]],
            "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None,
            "max_ms": round(1000 * lat[-1], 1) if lat else None,
            "p99_ms_by_op": {op: p99([r for r in self.results if r.op == op]) for op in self.mix},
        }


def p99(results: list[Result]) -> float | None:
    lat = sorted(r.t1 - r.t0 for r in results)
    return round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None


def rows_present(env: Env, db: str, ids: list[str]) -> int:
    if not ids:
        return 0
    total = 0
    for i in range(0, len(ids), 2000):
        chunk = ",".join(f"'{x}'" for x in ids[i:i + 2000])
        total += int(env.sql(db, f"SELECT count(*) FROM contexts WHERE id IN ({chunk})"))
    return total


# --------------------------------------------------------------- scenarios --
def pg_restart(env: Env) -> dict:
    db = env.scratch_db("faults_pg")
    stub = Stub(env)
    api, port = start_api(env, "pg", db, stub)
    load = Load(env, port, "pg").start()
    try:
        time.sleep(4)
        t_down = time.time()
        env.services("stop-pg")
        time.sleep(4)
        env.services("start")
        while not env.pg_answers():
            time.sleep(0.05)
        t_up = time.time()
        time.sleep(8)
    finally:
        load.stop()
        api.term()
        stub.stop()
    s = load.summary()
    down = [r for r in load.results if t_down <= r.t0 <= t_up]
    bad_in_down = [r for r in down if not r.ok and not (r.status == 503 and r.retry_after)]
    slowest = max(r.t1 - r.t0 for r in load.results)
    late = [r for r in load.failures() if r.t0 > t_up + 5]
    last_failure = max((r.t1 for r in load.failures()), default=t_up)
    present = rows_present(env, db, list(load.acked))
    s.update({
        "down_seconds": round(t_up - t_down, 1),
        "requests_while_down": len(down),
        "answered_503_while_down": sum(1 for r in down if r.status == 503),
        "recovered_after_s": round(max(0.0, last_failure - t_up), 2),
        "slowest_request_s": round(slowest, 2),
        "rows_found": present,
        "total_rows": int(env.sql(db, "SELECT count(*) FROM contexts")),
    })
    check(not bad_in_down, f"while Postgres was down, answers other than 503 + Retry-After: "
                           f"{[(r.op, r.status, r.error) for r in bad_in_down[:5]]}")
    check(slowest <= REQUEST_TIMEOUT_S + 1.0, f"a request took {slowest:.1f} s (timeout {REQUEST_TIMEOUT_S} s)")
    check(not late, f"failures more than 5 s after Postgres answered again: {len(late)}")
    check(present == len(load.acked), f"{len(load.acked)} writes acknowledged, {present} found")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


def prod_redis_persistence() -> list[str]:
    """The persistence flags production's Redis runs with (docker-compose.prod.yml),
    so that what comes back after a crash is what production would get back."""
    text = (REPO / "docker-compose.prod.yml").read_text()
    m = re.search(r"exec redis-server (.*)", text)
    check(m is not None, "no redis-server command in docker-compose.prod.yml")
    tokens = shlex.split(m.group(1))
    flags = []
    for i, t in enumerate(tokens):
        if t in ("--appendonly", "--save", "--appendfsync") and i + 1 < len(tokens):
            flags += [t, tokens[i + 1]]
    return flags


class Redis:
    """A Redis of its own, with production's persistence, in a directory that
    outlives a SIGKILL."""

    def __init__(self, env: Env):
        self.env, self.port = env, free_port()
        self.dir = env.workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flags = prod_redis_persistence()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        self.proc = Proc(f"redis-{self.port}", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                "--dir", str(self.dir), *self.flags], dict(os.environ), self.env.workdir)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failed("redis-server did not start")

    def kill(self) -> None:
        self.proc.p.kill()
        self.proc.p.wait()


def redis_kill(env: Env) -> dict:
    db = env.scratch_db("faults_redis")
    stub = Stub(env)
    redis = Redis(env)
    api, port = start_api(env, "redis", db, stub, REDIS_URL=redis.url)
    load = Load(env, port, "redis").start()
    headers = {"Authorization": f"Bearer {env.key}"}
    versions: dict[str, int] = {}
    patch_fail = 0
    try:
        time.sleep(3)
        with load.lock:
            watched = load.acked_ids[:20]
        for cid in watched:  # cached now, at version 1
            request("127.0.0.1", port, "GET", f"/contexts/{cid}", None, headers)
        time.sleep(1.5)  # an appendfsync everysec has written them
        redis.kill()
        t_kill = time.time()
        # Writes while Redis is gone: the cached entries are now stale.
        for round_ in range(3):
            for cid in watched:
                st, body, _ = request("127.0.0.1", port, "PATCH", f"/contexts/{cid}",
                                      {"metadata": {"round": round_}}, headers)
                if st == 200:
                    versions[cid] = json.loads(body)["version"]
                else:
                    patch_fail += 1
            time.sleep(1)
        redis.start()
        t_back = time.time()
        time.sleep(3)
        stale = []
        for cid in watched:
            st, body, _ = request("127.0.0.1", port, "GET", f"/contexts/{cid}", None, headers)
            got = json.loads(body)["version"] if st == 200 else None
            if got != versions.get(cid):
                stale.append((cid, got, versions.get(cid)))
        time.sleep(2)
    finally:
        load.stop()
        api.term()
        stub.stop()
        redis.kill()
    s = load.summary()
    s.update({
        "redis_persistence": " ".join(redis.flags),
        "redis_down_seconds": round(t_back - t_kill, 1),
        "patches_while_down": 3 * len(watched) - patch_fail,
        "stale_reads_after_return": len(stale),
        "rows_found": rows_present(env, db, list(load.acked)),
    })
    check(s["failed_requests"] == 0 and patch_fail == 0,
          f"failed requests with Redis down: {s['failures_by_kind']}, patches {patch_fail}")
    check(not stale, f"stale reads after Redis returned: {stale[:5]}")
    check(s["rows_found"] == len(load.acked), "acknowledged writes missing")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


def wait_no_pending(env: Env, db: str, seconds: float) -> int:
    deadline = time.time() + seconds
    n = -1
    while time.time() < deadline:
        n = int(env.sql(db, "SELECT count(*) FROM contexts WHERE embedding_status = 'pending'"))
        if n == 0:
            return 0
        time.sleep(0.5)
    return n


def tei_down(env: Env) -> dict:
    db = env.scratch_db("faults_tei")
    stub = Stub(env)
    api, port = start_api(env, "tei", db, stub)
    load = Load(env, port, "tei", mix={"create": 6, "get": 3, "list": 1}).start()
    try:
        time.sleep(3)
        stub.control("down")
        t_down = time.time()
        time.sleep(5)
        pending_at_peak = int(env.sql(db, "SELECT count(*) FROM contexts WHERE embedding_status = 'pending'"))
        stub.control("up")
        t_up = time.time()
        time.sleep(3)
    finally:
        load.stop()
    left = wait_no_pending(env, db, 30)
    texts = stub.texts()
    api.term()
    stub.stop()
    s = load.summary()
    acked_texts = list(load.acked.values())
    counts = [texts.get(t, 0) for t in acked_texts]
    written_down = sum(1 for r in load.results if r.op == "create" and r.status == 201 and t_down <= r.t0 <= t_up)
    s.update({
        "tei_down_seconds": round(t_up - t_down, 1),
        "writes_acknowledged_while_down": written_down,
        "pending_at_peak": pending_at_peak,
        "pending_left": left,
        "texts_embedded_once": sum(1 for c in counts if c == 1),
        "texts_embedded_twice_or_more": sum(1 for c in counts if c > 1),
        "texts_never_embedded": sum(1 for c in counts if c == 0),
    })
    check(s["failed_requests"] == 0, f"failed requests with TEI down: {s['failures_by_kind']}")
    check(written_down > 0 and pending_at_peak > 0, "no write landed while TEI was down")
    check(left == 0, f"{left} rows still pending 30 s after TEI returned")
    check(all(c == 1 for c in counts),
          f"texts embedded other than once: {s['texts_embedded_twice_or_more']} twice+, "
          f"{s['texts_never_embedded']} never")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


def rolling_restart(env: Env) -> dict:
    db = env.scratch_db("faults_roll")
    stub = Stub(env)
    # Longer than Caddy's health_interval (2 s) plus its timeout: by the time
    # the listener closes, Caddy has seen /ready fail.
    extra = {"SHUTDOWN_DELAY_MS": "5000"}
    a, a_port = start_api(env, "roll-a", db, stub, **extra)
    b, b_port = start_api(env, "roll-b", db, stub, **extra)
    caddy_dir = env.workdir / "caddy"
    caddy_dir.mkdir(exist_ok=True)
    http_port, admin = free_port(), free_port()
    ce = dict(os.environ, XDG_DATA_HOME=str(caddy_dir / "data"), XDG_CONFIG_HOME=str(caddy_dir / "config"),
              DOMAIN=f"http://127.0.0.1:{http_port}", CADDY_HTTP_PORT=str(http_port),
              CADDY_HTTPS_PORT=str(free_port()), CADDY_ADMIN=f"127.0.0.1:{admin}",
              API_UPSTREAMS=f"127.0.0.1:{a_port} 127.0.0.1:{b_port}",
              GRAFANA_DOMAIN=f"http://127.0.0.1:{free_port()}", GRAFANA_UPSTREAM=f"127.0.0.1:{free_port()}")
    caddy = Proc("caddy", ["caddy", "run", "--config", str(REPO / "Caddyfile"), "--adapter", "caddyfile"],
                 ce, env.workdir)
    wait_http(f"http://127.0.0.1:{http_port}/health", 30)
    time.sleep(2.5)  # a first round of active health checks
    load = Load(env, http_port, "roll").start()
    restarts = []
    try:
        time.sleep(3)
        for name, proc, port in (("a", a, a_port), ("b", b, b_port)):
            t0 = time.time()
            code = proc.term()
            check(code == 0, f"replica {name} exited {code} after SIGTERM")
            new, _ = start_api(env, f"roll-{name}2", db, stub, port=port, **extra)
            time.sleep(4.5)  # Caddy marks it healthy again
            restarts.append({"replica": name, "replaced_in_s": round(time.time() - t0, 1)})
            if name == "a":
                a = new
            else:
                b = new
        time.sleep(2)
    finally:
        load.stop()
        for p in (a, b, caddy):
            p.term()
        stub.stop()
    s = load.summary()
    s["restarts"] = restarts
    s["rows_found"] = rows_present(env, db, list(load.acked))
    check(s["failed_requests"] == 0, f"failed requests during the rolling restart: {s['failures_by_kind']}")
    check(s["rows_found"] == len(load.acked), "acknowledged writes missing")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


def backlog(env: Env) -> dict:
    db = env.scratch_db("faults_backlog")
    stub = Stub(env)
    stub.control("down")
    # Three replicas on one database, while TEI is down.
    replicas = [start_api(env, f"backlog-{i}", db, stub, PURGE_INTERVAL_SECONDS="1", PURGE_BATCH_SIZE="10",
                          EMBEDDING_BATCH_SIZE="16", EMBEDDING_WORKER_INTERVAL_MS="100") for i in range(3)]
    port = replicas[0][1]
    headers = {"Authorization": f"Bearer {env.key}"}
    user = str(uuid.uuid4())
    texts = []
    for b in range(6):
        items = []
        for i in range(100):
            t = f"backlog {b} {i} " + " ".join(random.choice(["tea", "sea", "cat", "book"]) for _ in range(5))
            texts.append(t)
            items.append({"user_id": user, "context_type": "backlog", "content": {"text": t}})
        st, body, _ = request("127.0.0.1", port, "POST", "/contexts/batch", {"items": items}, headers)
        check(st == 200 and json.loads(body)["created"] == 100, f"seeding a batch answered {st}")
    pending0 = int(env.sql(db, "SELECT count(*) FROM contexts WHERE embedding_status = 'pending'"))
    # Rows that expire in 2 s, with their vectors: the purge job's work.
    n_expired = 3000
    for _ in range(n_expired // 1000):
        expired = [{"user_id": user, "context_type": "old", "content": {"text": f"old {i}"},
                    "embedding": [1.0] + [0.0] * (DIM - 1), "ttl_seconds": 2} for i in range(1000)]
        st, _, _ = request("127.0.0.1", port, "POST", "/contexts/batch", {"items": expired}, headers)
        check(st == 200, f"seeding expiring rows answered {st}")
    stub.control("up")
    t0 = time.time()
    left = wait_no_pending(env, db, 60)
    deadline = time.time() + 60
    while time.time() < deadline and int(env.sql(db, "SELECT count(*) FROM contexts WHERE context_type = 'old'")):
        time.sleep(0.5)
    drained_s = time.time() - t0
    purged = [scrape(p, "contexts_purged_total") for _, p in replicas]
    busy = [scrape(p, "purge_lock_busy_total") for _, p in replicas]
    counts = stub.texts()
    for p, _ in replicas:
        p.term()
    stub.stop()
    per_text = [counts.get(t, 0) for t in texts]
    s = {
        "pending_rows": pending0,
        "replicas": 3,
        "drained_in_s": round(drained_s, 1),
        "pending_left": left,
        "texts_embedded_once": sum(1 for c in per_text if c == 1),
        "texts_embedded_twice_or_more": sum(1 for c in per_text if c > 1),
        "expired_rows": n_expired,
        "purged_by_replica": [int(x) for x in purged],
        "purge_lock_busy_by_replica": [int(x) for x in busy],
        "rows_left": int(env.sql(db, "SELECT count(*) FROM contexts")),
    }
    check(left == 0, f"{left} rows still pending")
    check(all(c == 1 for c in per_text), f"texts embedded other than once: {s['texts_embedded_twice_or_more']}")
    check(sum(purged) == n_expired, f"purged {sum(purged)} of {n_expired} expired rows")
    check(s["rows_left"] == 600, f"{s['rows_left']} rows left, expected the 600 live ones")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


def proc_sample(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def soak(env: Env, seconds: int) -> dict:
    db = env.scratch_db("faults_soak")
    stub = Stub(env)
    api, port = start_api(env, "soak", db, stub)
    load = Load(env, port, "soak", workers=4, mix={"create": 3, "get": 5, "search": 1, "list": 1}).start()
    samples = []
    t_start = time.time()
    try:
        while time.time() - t_start < seconds:
            time.sleep(5)
            rss, fds = proc_sample(api.p.pid)
            samples.append({"t": round(time.time() - t_start), "rss_kib": rss, "fds": fds})
    finally:
        load.stop()
        api.term()
        stub.stop()
    warm = min(60, seconds // 3)
    window = 30 if seconds >= 120 else max(5, seconds // 6)
    p99s = []
    for w0 in range(warm, seconds - window + 1, window):
        lat = sorted(r.t1 - r.t0 for r in load.results if w0 <= r.t0 - t_start < w0 + window)
        if lat:
            p99s.append(round(1000 * lat[int(len(lat) * 0.99)], 1))
    after = [x for x in samples if x["t"] >= warm]
    first = [x for x in after if x["t"] < warm + window] or after[:1]
    last = [x for x in after if x["t"] >= seconds - window] or after[-1:]
    s = load.summary()
    s.update({
        "seconds": seconds,
        "warm_up_s": warm,
        "rss_mib_after_warm_up": round(max(x["rss_kib"] for x in first) / 1024, 1),
        "rss_mib_at_end": round(max(x["rss_kib"] for x in last) / 1024, 1),
        "fds_after_warm_up": max(x["fds"] for x in first),
        "fds_at_end": max(x["fds"] for x in last),
        "p99_ms_by_window": p99s,
        "window_s": window,
        "throughput_rps": round(len(load.results) / seconds, 1),
        "samples": samples,
    })
    check(s["failed_requests"] == 0, f"failed requests in the soak: {s['failures_by_kind']}")
    # Flat: within 10% and 2 MiB. (Before the recorder's upkeep ran, 300 s
    # went from 34.3 to 40.8 MiB, every latency sample kept.)
    check(s["rss_mib_at_end"] <= s["rss_mib_after_warm_up"] * 1.10 + 2,
          f"resident memory grew from {s['rss_mib_after_warm_up']} to {s['rss_mib_at_end']} MiB")
    check(s["fds_at_end"] <= s["fds_after_warm_up"] + 4,
          f"open descriptors grew from {s['fds_after_warm_up']} to {s['fds_at_end']}")
    med = statistics.median(p99s)
    check(max(p99s) <= 3 * med + 20, f"p99 unstable: {p99s} ms")
    env.sql(None, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return s


SCENARIOS = ["pg_restart", "redis_kill", "tei_down", "rolling_restart", "backlog", "soak"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tei-stub", required=True)
    ap.add_argument("--psql", required=True)
    ap.add_argument("--database-url", required=True, help="the maintenance database of the local Postgres")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--workdir", default=str(REPO / "target/faults"))
    ap.add_argument("--out", default=str(REPO / "target/faults/results.json"))
    ap.add_argument("--soak-seconds", type=int, default=300)
    ap.add_argument("--only", action="append", choices=SCENARIOS)
    args = ap.parse_args()
    env = Env(args)
    results, failed = {}, []
    for name in args.only or SCENARIOS:
        t0 = time.time()
        log(f"--- {name}")
        try:
            out = soak(env, args.soak_seconds) if name == "soak" else globals()[name](env)
            out["passed"] = True
        except Failed as e:
            out = {"passed": False, "reason": str(e)}
            failed.append(name)
        out["took_s"] = round(time.time() - t0, 1)
        results[name] = out
        shown = {k: v for k, v in out.items() if k != "samples"}
        log(f"{name}: {'ok' if out['passed'] else 'FAILED'} {json.dumps(shown)}")
        # A fault may have left a service down: bring both back for the next one.
        env.services("start")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                          "results": results}, indent=1) + "\n")
    log(f"results in {args.out}")
    if failed:
        log(f"FAILED: {', '.join(failed)} (logs in {args.workdir})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
