#!/usr/bin/env python3
"""The API benchmark: the release service under wrk, beside the limits of what it stands on.

    bench/run.sh [--quick|--smoke] [--rounds N] [--peer-url URL] [--out DIR] [--keep]

run.sh installs the tools, starts Postgres and Redis, builds the release binary
and runs this with the bench venv's python. Run alone, it expects all of that,
plus TEST_DATABASE_URL and TEST_REDIS_URL from `scripts/services.sh env`.

Steps: a fresh database; the TEI stand-in (20 ms a call); migrate; serve; seed
through POST /contexts/batch; VACUUM ANALYZE; recall@10 against exact SQL;
capture each database-bound route's SQL from the Postgres log; then every
scenario at 32 and 256 connections with its limit (redis-benchmark, pgbench
with the captured SQL, wrk on the stand-in) measured right after it; the
report and charts in bench/results/. --smoke exits 1 on any non-2xx answer, a
dropped connection, a failed seed item or recall@10 under 0.95, never on speed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apibench import data, limits, report  # noqa: E402
from apibench.procs import (Api, Proc, counter_deltas, free_port, proc_memory_kib, scrape_metrics,  # noqa: E402
                            wait_http)
from apibench.wrk import Run, run_wrk, write_requests  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODES = {  # contexts, seconds per run, default rounds
    "full": (100_000, 10, 3),
    "quick": (10_000, 5, 1),
    "smoke": (2_000, 2, 1),
}
CONCURRENCY = (32, 256)
KEY = "bench-admin-key"
BATCH = 1000
SEED_THREADS = 2
GET_IDS = 1000
RECALL_QUERIES = 50
CAPTURE_SAMPLES = 10
TEI_LATENCY_MS = 20
MIN_RECALL = 0.95

READS = ["health", "get_cached", "get_uncached", "list_first", "list_deep", "search_vector", "search_user",
         "search_meta", "search_text_cached", "search_text_uncached", "search_bm25", "search_hybrid"]
WRITES = ["create_vector", "create_text", "mixed"]
ORDER = READS + WRITES
PEER_SCENARIOS = ["get_cached", "get_uncached", "search_vector", "search_user", "search_meta"]
# Routes whose SQL is captured and replayed with pgbench.
DB_ROUTES = ["get_uncached", "list_first", "list_deep", "search_vector", "search_user", "search_meta",
             "create_vector"]

DESCRIPTIONS = {
    "health": "GET /health: no auth, no I/O; the HTTP stack's floor",
    "get_cached": f"GET /contexts/{{id}} over {GET_IDS} ids fetched once before: Redis hits",
    "get_uncached": "GET /contexts/{id}?include=embedding: this path never uses the cache, always one Postgres read",
    "list_first": "GET /contexts?user_id=U&limit=20: first page, 10 users",
    "list_deep": "GET /contexts?user_id=U&limit=20&cursor=C: a page ~50 deep (keyset), 10 users",
    "search_vector": "POST /contexts/search {vector, k:10}: HNSW over every row",
    "search_user": "search_vector plus user_id: 10% of the rows",
    "search_meta": 'search_vector plus metadata {"tag":"rare"}: 1% of the rows',
    "search_text_cached": "POST /contexts/search {query, k:10}, 50 fixed texts: query embedding from Redis",
    "search_text_uncached": "a new query text every request: one TEI call (20 ms stand-in) each",
    "search_bm25": "POST /contexts/search {mode: text, query, k:10}, 50 fixed texts: BM25 over the GIN index",
    "search_hybrid": "{mode: hybrid, query, k:10}, the same texts: BM25 and HNSW (100 each), fused; embedding from Redis",
    "create_vector": "POST /contexts with an embedding: one INSERT, cache write",
    "create_text": "POST /contexts with text only: TEI call (20 ms stand-in) then INSERT",
    "mixed": "80% reads (get_cached, search_vector half each), 20% create_vector",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cell(x: float) -> str:
    return f"{x:,.0f}" if x else "0"


def reset_peak(pid: int) -> None:
    """Resets the process's VmHWM to its current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def with_db(url: str, db: str) -> str:
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(u._replace(path="/" + db))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.mode = args.mode
        self.n, self.seconds, default_rounds = MODES[self.mode]
        self.rounds = args.rounds or default_rounds
        self.db = f"bench_{self.mode}"
        self.admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:54329/postgres")
        self.redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:63799")
        self.db_url = with_db(self.admin_url, self.db)
        self.redis_port = urllib.parse.urlsplit(self.redis_url).port or 6379
        pg_root = Path(os.path.realpath(REPO / ".services" / "pg"))
        self.pgbench = pg_root / "install" / "bin" / "pgbench"
        self.pg_log = pg_root / "log" / "postgres.log"
        self.binary = REPO / "target" / "release" / "context-api"
        default_out = REPO / "bench" / (".cache/results" if self.mode == "smoke" else "results")
        self.out = Path(args.out or default_out).resolve()
        self.work = REPO / "bench" / ".cache" / f"run-{self.mode}-{os.getpid()}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.cmd_log = self.work / "commands.log"
        self.prefix = f"bench-{self.mode}-{os.getpid()}:"
        self.procs: list[Proc] = []
        self.service: Proc | None = None
        self.api: Api | None = None
        self.phases: list[tuple[str, float]] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.results: dict[int, dict[str, list[Run]]] = {c: {} for c in CONCURRENCY}
        self.limits: dict[int, dict[str, dict]] = {c: {} for c in CONCURRENCY}
        # pgbench at the service's pool size: the most the database gives through that many connections.
        self.pool_limits: dict[str, dict] = {}
        self.recall: dict[str, float] = {}
        self.captured: dict[str, limits.Captured] = {}
        self.peer: dict[int, dict[str, dict]] = {}
        self.memory: dict[str, dict] = {}
        self.info: dict = {}
        self.started = dt.datetime.now()

    # ------------------------------------------------------------ helpers --

    @contextlib.contextmanager
    def phase(self, name: str):
        log(f"{name} ...")
        t0 = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - t0
            self.phases.append((name, took))
            log(f"{name}: {took:.1f} s")

    def service_env(self, port: int) -> dict[str, str]:
        key_hash = hashlib.sha256(KEY.encode()).hexdigest()
        return dict(os.environ, DATABASE_URL=self.db_url, REDIS_URL=self.redis_url, EMBEDDING_PROVIDER="tei",
                    EMBEDDING_SERVICE_URL=f"http://127.0.0.1:{self.stub_port}", EMBEDDING_DIM=str(data.DIM),
                    API_KEYS=f"admin:{key_hash}", BIND_ADDRESS=f"127.0.0.1:{port}",
                    CACHE_KEY_PREFIX=self.prefix, LOG_LEVEL="warn")

    def start_service(self, name: str, port: int) -> Proc:
        p = Proc(name, [str(self.binary), "serve"], self.work / f"{name}.log", env=self.service_env(port))
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/ready", 60, p)
        return p

    def sql(self, statement: str, params=None, url: str | None = None) -> list[tuple]:
        with psycopg.connect(url or self.db_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def parallel(self, fn, items, threads: int = 8) -> list:
        with ThreadPoolExecutor(threads) as ex:
            return list(ex.map(fn, items))

    # -------------------------------------------------------------- steps --

    def setup(self) -> None:
        with self.phase("database, TEI stand-in, migrate, serve"):
            self.sql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", url=self.admin_url)
            self.sql(f"CREATE DATABASE {self.db}", url=self.admin_url)
            self.stub_port = free_port()
            stub = Proc("tei-stub", [str(REPO / "target" / "release" / "tei-stub"), "--port",
                                     str(self.stub_port), "--dim", str(data.DIM), "--latency-ms", str(TEI_LATENCY_MS),
                                     "--max-batch", "32"], self.work / "tei-stub.log")
            self.procs.append(stub)
            wait_http(f"http://127.0.0.1:{self.stub_port}/health", 30, stub)
            self.port = free_port()
            env = self.service_env(self.port)
            subprocess.run([str(self.binary), "migrate"], env=env, check=True, capture_output=True, timeout=120)
            self.config = subprocess.run([str(self.binary), "config"], env=env, capture_output=True,
                                         text=True, timeout=30).stdout
            self.settings = {k.strip(): v.strip().strip('"') for k, eq, v in
                             (ln.partition("=") for ln in self.config.splitlines()) if eq}
            self.pool_size = int(self.settings.get("db_pool_max", "10"))
            self.service = self.start_service("service", self.port)
            self.base = f"http://127.0.0.1:{self.port}"
            self.api = Api(self.base, KEY)

    def seed(self) -> None:
        with self.phase(f"generate {self.n:,} contexts"):
            self.ds = data.generate(self.n)
            bodies = self.ds.batch_bodies(BATCH)
        with self.phase("seed through POST /contexts/batch"):
            self.ids, self.seed_stats = self.seed_api(self.api, bodies)
            log(f"batch create with vectors: {self.seed_stats['rate']:,.0f} contexts/s "
                f"({self.seed_stats['created']:,} in {self.seed_stats['seconds']:.1f} s, {SEED_THREADS} threads)")
            if not self.seed_stats["created"]:
                raise RuntimeError(f"seeding created nothing: {self.seed_stats['first_problem']}")
            if self.seed_stats["failed"]:
                self.failures.append(f"seeding: {self.seed_stats['failed']} items failed "
                                     f"(first: {self.seed_stats['first_problem']})")
        self.memory["after seeding"] = proc_memory_kib(self.service.pid)
        with self.phase("VACUUM ANALYZE contexts"):
            self.sql("VACUUM ANALYZE contexts")
        self.rows_after_seed = self.sql("SELECT count(*) FROM contexts")[0][0]

    def seed_api(self, api: Api, bodies: list[tuple[int, bytes]]) -> tuple[list[str | None], dict]:
        """Sends the pre-encoded batches from SEED_THREADS threads; only the HTTP calls are timed."""
        work: queue.Queue = queue.Queue()
        for i, b in enumerate(bodies):
            work.put((i, b))
        answers: list = [None] * len(bodies)

        def worker():
            while True:
                try:
                    i, (_, body) = work.get_nowait()
                except queue.Empty:
                    return
                answers[i] = api.call("POST", "/contexts/batch", body)

        threads = [threading.Thread(target=worker) for _ in range(SEED_THREADS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        ids: list[str | None] = []
        created = failed = 0
        first_problem = None
        for (count, _), (status, raw) in zip(bodies, answers, strict=True):
            if status != 200:
                failed += count
                ids += [None] * count
                first_problem = first_problem or f"HTTP {status}: {raw[:300]!r}"
                continue
            answer = json.loads(raw)
            for r in answer["results"]:
                if r["status"] == 201:
                    created += 1
                    ids.append(r["context"]["id"])
                else:
                    failed += 1
                    ids.append(None)
                    first_problem = first_problem or json.dumps(r.get("problem"))[:300]
        return ids, {"created": created, "failed": failed, "seconds": seconds, "rate": created / seconds,
                     "batches": len(bodies), "first_problem": first_problem}

    def prepare(self) -> None:
        """Request files for every scenario, and the warm-ups they need."""
        with self.phase("prepare requests, warm caches, walk cursors"):
            rng = random.Random(7)
            ds = self.ds
            live = [i for i, x in enumerate(self.ids) if x]
            self.get_idx = rng.sample(live, min(GET_IDS, len(live)))
            get_ids = [self.ids[i] for i in self.get_idx]
            self.get_ids = get_ids
            self.warm_ids(self.api, get_ids)
            self.deep = self.deep_cursors(self.api)
            vec = [data.vec_json(v) for v in ds.queries]
            users = data.USERS
            self.bodies = {
                "search_vector": [f'{{"vector":{v},"k":10}}' for v in vec],
                "search_user": [f'{{"vector":{v},"k":10,"user_id":"{users[i % 10]}"}}' for i, v in enumerate(vec)],
                "search_meta": [f'{{"vector":{v},"k":10,"metadata":{{"tag":"rare"}}}}' for v in vec],
                "search_text_cached": [json.dumps({"query": t, "k": 10}) for t in ds.query_texts],
                "search_bm25": [json.dumps({"mode": "text", "query": t, "k": 10}) for t in ds.query_texts],
                "search_hybrid": [json.dumps({"mode": "hybrid", "query": t, "k": 10}) for t in ds.query_texts],
                "create_vector": [self.write_body(i, with_vector=True) for i in range(len(ds.write_texts))],
                "create_text": [self.write_body(i, with_vector=False) for i in range(len(ds.write_texts))],
            }
            self.warm_texts(self.api)
            f = self.files = {}
            w = self.work
            f["health"] = write_requests(w / "health.tsv", [("GET", "/health", "")])
            f["get_cached"] = write_requests(w / "get_cached.tsv", [("GET", f"/contexts/{i}", "") for i in get_ids])
            f["get_uncached"] = write_requests(w / "get_uncached.tsv",
                                               [("GET", f"/contexts/{i}?include=embedding", "") for i in get_ids])
            f["list_first"] = write_requests(w / "list_first.tsv",
                                             [("GET", f"/contexts?user_id={u}&limit=20", "") for u in users])
            f["list_deep"] = write_requests(w / "list_deep.tsv",
                                            [("GET", f"/contexts?user_id={u}&limit=20&cursor={c}", "")
                                             for u, (c, _) in self.deep.items()])
            for name in ("search_vector", "search_user", "search_meta", "search_text_cached", "search_bm25",
                         "search_hybrid", "create_vector", "create_text"):
                path = "/contexts/search" if name.startswith("search") else "/contexts"
                f[name] = write_requests(w / f"{name}.tsv", [("POST", path, b) for b in self.bodies[name]])
            mixed = ([("GET", f"/contexts/{i}", "") for i in rng.sample(get_ids, min(400, len(get_ids)))]
                     + [("POST", "/contexts/search", b) for b in self.bodies["search_vector"] * 2][:400]
                     + [("POST", "/contexts", b) for b in self.bodies["create_vector"]])
            f["mixed"] = write_requests(w / "mixed.tsv", mixed)
            f["tei"] = write_requests(w / "tei.tsv", [("POST", "/embed", json.dumps({"inputs": t}))
                                                      for t in ds.write_texts])
            depths = sorted(d for _, d in self.deep.values())
            self.notes.append(f"list_deep: cursors of page {depths[0]} to {depths[-1]} (20 a page) of each user.")

    def write_body(self, i: int, with_vector: bool) -> str:
        """A create body; metadata tag "w" keeps written rows out of search_meta's filter."""
        ds = self.ds
        text = json.dumps(ds.write_texts[i])
        emb = f',"embedding":{data.vec_json(ds.write_vectors[i])}' if with_vector else ""
        return (f'{{"user_id":"{data.USERS[i % 10]}","context_type":"note","content":{{"text":{text}}},'
                f'"text":{text},"metadata":{{"tag":"w","n":{i}}}{emb}}}')

    def warm_ids(self, api: Api, ids: list[str]) -> None:
        bad = [s for s, _ in self.parallel(lambda i: api.call("GET", f"/contexts/{i}"), ids) if s != 200]
        if bad:
            raise RuntimeError(f"warming GET /contexts/{{id}}: {len(bad)} answers were not 200 (first {bad[0]})")

    def warm_texts(self, api: Api) -> None:
        got = self.parallel(lambda b: api.call("POST", "/contexts/search", b)[0], self.bodies["search_text_cached"])
        if any(s != 200 for s in got):
            raise RuntimeError(f"warming text searches: statuses {sorted(set(got))}")

    def deep_cursors(self, api: Api, depth: int = 50) -> dict[str, tuple[str, int]]:
        """Per user, the cursor of page `depth` (or the last full page), by walking next_cursor."""

        def walk(user: str) -> tuple[str, int]:
            cursor, page, last = None, 1, None
            while True:
                q = f"/contexts?user_id={user}&limit=20" + (f"&cursor={cursor}" if cursor else "")
                status, body = api.json("GET", q)
                if status != 200:
                    raise RuntimeError(f"GET {q}: {status} {body}")
                if cursor and body["items"]:
                    last = (cursor, page)
                if page >= depth or not body["next_cursor"]:
                    break
                cursor, page = body["next_cursor"], page + 1
            if last is None:
                raise RuntimeError(f"user {user} has a single page: no cursor to go deep with")
            return last

        return dict(zip(data.USERS, self.parallel(walk, data.USERS, 4), strict=True))

    def measure_recall(self) -> None:
        with self.phase(f"recall@10 over {RECALL_QUERIES} queries (exact SQL, index scans off)"):
            qs = [data.vec_json(v) for v in self.ds.queries[:RECALL_QUERIES]]
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute("SET enable_indexscan = off")
                conn.execute("SET enable_bitmapscan = off")
                for name in ("search_vector", "search_user", "search_meta"):
                    scores = []
                    for i, v in enumerate(qs):
                        status, body = self.api.json("POST", "/contexts/search", self.bodies[name][i])
                        if status != 200:
                            self.failures.append(f"recall {name}: search answered {status}: {str(body)[:200]}")
                            break
                        got = {r["context"]["id"] for r in body["results"]}
                        where, params = "", []
                        if name == "search_user":
                            where, params = " AND user_id = %s", [data.USERS[i % 10]]
                        elif name == "search_meta":
                            where, params = " AND metadata @> %s::jsonb", ['{"tag":"rare"}']
                        exact = {str(r[0]) for r in conn.execute(
                            "SELECT id FROM contexts WHERE is_active AND embedding IS NOT NULL" + where
                            + " ORDER BY embedding <=> %s::vector LIMIT 10", [*params, v]).fetchall()}
                        scores.append(len(got & exact) / len(exact) if exact else 1.0)
                    if scores:
                        self.recall[name] = sum(scores) / len(scores)
                        log(f"recall@10 {name}: {self.recall[name]:.3f}")
                        if self.recall[name] < MIN_RECALL:
                            self.failures.append(f"recall@10 of {name} is {self.recall[name]:.3f} < {MIN_RECALL}")

    def capture_sql(self) -> None:
        """Each DB route's SQL and parameters, from the Postgres log of a second instance."""
        with self.phase("capture the routes' SQL from the Postgres log"):
            if not self.pg_log.is_file():
                self.notes.append(f"SQL capture skipped: no Postgres log at {self.pg_log}.")
                return
            port = free_port()
            self.sql(f"ALTER DATABASE {self.db} SET log_min_duration_statement = 0", url=self.admin_url)
            proc = None
            try:
                proc = self.start_service("capture", port)
                api = Api(f"http://127.0.0.1:{port}", KEY)
                deep = list(self.deep.items())
                plan: dict[str, list[tuple[str, str, str | None]]] = {
                    "get_uncached": [("GET", f"/contexts/{i}?include=embedding", None)
                                     for i in self.get_ids[:CAPTURE_SAMPLES]],
                    "list_first": [("GET", f"/contexts?user_id={u}&limit=20", None) for u in data.USERS],
                    "list_deep": [("GET", f"/contexts?user_id={u}&limit=20&cursor={c}", None) for u, (c, _) in deep],
                    "create_vector": [("POST", "/contexts", b) for b in self.bodies["create_vector"][:CAPTURE_SAMPLES]],
                }
                for name in ("search_vector", "search_user", "search_meta"):
                    plan[name] = [("POST", "/contexts/search", b) for b in self.bodies[name][:CAPTURE_SAMPLES]]
                marker = {"get_uncached": "FROM contexts WHERE id = $1", "list_first": "ORDER BY created_at DESC",
                          "list_deep": "ORDER BY created_at DESC", "create_vector": "INSERT INTO contexts",
                          "search_vector": "WITH nearest", "search_user": "WITH nearest",
                          "search_meta": "WITH nearest"}
                for route in DB_ROUTES:
                    sql, samples, replace = None, [], {}
                    for method, path, body in plan[route]:
                        window = limits.LogWindow(self.pg_log)
                        status, raw = api.call(method, path, body)
                        time.sleep(0.05)
                        if status not in (200, 201):
                            self.notes.append(f"SQL capture of {route}: the request answered {status}.")
                            continue
                        found = [s for s in limits.parse_log(window.read(), self.db) if marker[route] in s.sql]
                        if not found:
                            continue
                        st = found[-1]
                        if sql is None:
                            sql = st.sql
                        if st.sql != sql:
                            continue
                        samples.append(st.params)
                        if route == "create_vector":
                            new_id = json.loads(raw)["id"]
                            replace.update({n: "gen_random_uuid()" for n, v in st.params.items() if v == new_id})
                    if sql is None:
                        self.notes.append(f"SQL of {route} could not be captured from {self.pg_log}: no limit for it.")
                        continue
                    self.captured[route] = limits.Captured(route, sql, samples, replace)
                    log(f"captured {route}: {len(samples)} parameter sets, {len(sql)} chars of SQL")
            finally:
                if proc:
                    proc.stop()
                self.sql(f"ALTER DATABASE {self.db} RESET log_min_duration_statement", url=self.admin_url)

    # ---------------------------------------------------------- scenarios --

    def wrk(self, scenario: str, conc: int, round_: int, base: str | None = None, key: str = KEY,
            files: dict | None = None, pid: int | None = None) -> Run:
        files = files or self.files
        unique = None
        if scenario == "search_text_uncached":
            unique = (f"what did Lena say about the budget draft {self.mode} "
                      f"c{conc} r{round_} {base or 'api'} {time.time_ns()}")
        ours = pid is None
        return run_wrk(base or self.base, key, scenario, conc, self.seconds, files.get(scenario), unique,
                       service_pid=self.service.pid if ours else pid, database=self.db if ours else None,
                       log=self.cmd_log)

    def run_scenario(self, name: str, conc: int) -> None:
        if name in ("get_cached", "mixed"):
            self.warm_ids(self.api, self.get_ids)
        if name == "search_text_cached":
            self.warm_texts(self.api)
        runs = self.results[conc].setdefault(name, [])
        for r in range(self.rounds):
            before = scrape_metrics(self.api)
            run = self.wrk(name, conc, r)
            run.extra["counters"] = counter_deltas(before, scrape_metrics(self.api))
            runs.append(run)
            errs = report.fmt_errors(run.errors)
            log(f"  {name:<21} c={conc:<3} {run.rps:>9,.0f} req/s  p50 {run.latency_us['p50'] / 1000:7.2f} ms  "
                f"p99 {run.latency_us['p99'] / 1000:8.2f} ms  errors {errs}  wrk CPU {run.wrk_share:.0%}")
            if run.status_errors or run.socket_errors:
                self.failures.append(f"{name} at {conc} connections: errors {errs}{self.sample_statuses(name)}")

    def sample_statuses(self, name: str) -> str:
        """What a few of the scenario's requests answer now, to say what the errors were."""
        path = self.files.get(name)
        if not path:
            return ""
        seen = {}
        for line in path.read_text().splitlines()[:20]:
            method, p, body = line.split("\t", 2)
            status, raw = self.api.call(method, p, body or None)
            if not 200 <= status < 400:
                seen.setdefault(status, raw[:200])
        return "" if not seen else f" (replayed: {seen})"

    def limit(self, name: str, conc: int) -> None:
        """The limit beside scenario `name` at `conc`, measured now (or derived from ones measured)."""
        lim = self.limits[conc]
        if name == "get_cached":
            size = self.cached_value_size()
            r = limits.redis_get_limit(self.redis_port, size, conc, self.seconds, self.cmd_log)
            lim[name] = {"rps": r["rps"], "label": f"Redis GET {size} B (redis-benchmark)"}
        elif name in self.captured:
            r = limits.run_pgbench(self.pgbench, self.pg_args(), self.db, self.captured[name], conc, self.seconds,
                                   self.work, self.cmd_log)
            label = f"its SQL in pgbench ({r.get('scripts', 0)} param sets)"
            lim[name] = {"label": label, **r}
            if "error" in r:
                self.notes.append(f"pgbench for {name} at {conc} failed: {r['error']}")
            if name not in self.pool_limits:
                self.pool_limits[name] = limits.run_pgbench(self.pgbench, self.pg_args(), self.db,
                                                            self.captured[name], self.pool_size, self.seconds,
                                                            self.work, self.cmd_log)
                if self.pool_limits[name].get("rps"):
                    log(f"  limit {name:<15} c={self.pool_size:<3} {self.pool_limits[name]['rps']:>9,.0f} req/s  "
                        "(its SQL in pgbench at the pool's size)")
        elif name in DB_ROUTES:
            lim[name] = {"label": "SQL not captured"}
        elif name == "search_text_cached" and "search_vector" in lim:
            lim[name] = {"rps": lim["search_vector"].get("rps"), "label": "search_vector's SQL (pgbench)"}
        elif name in ("search_text_uncached", "create_text"):
            tei = self.tei_limit(conc)
            db = lim.get("search_vector" if name.startswith("search") else "create_vector", {}).get("rps")
            if db and db < tei:
                lim[name] = {"rps": db, "label": "its SQL (pgbench), below the TEI stand-in"}
            else:
                lim[name] = {"rps": tei, "label": "TEI stand-in /embed, 1 text (wrk)"}
        elif name == "mixed":
            parts = [(0.4, lim.get("get_cached", {}).get("rps")), (0.4, lim.get("search_vector", {}).get("rps")),
                     (0.2, lim.get("create_vector", {}).get("rps"))]
            if all(p for _, p in parts):
                lim[name] = {"rps": 1 / sum(w / p for w, p in parts), "label": "blend of the 3 limits (estimate)"}

    def tei_limit(self, conc: int) -> float:
        key = ("tei", conc)
        if key not in self.info:
            run = run_wrk(f"http://127.0.0.1:{self.stub_port}", KEY, "tei", conc, self.seconds, self.files["tei"],
                          log=self.cmd_log)
            self.info[key] = run.rps
            log(f"  limit tei stand-in c={conc}: {run.rps:,.0f} req/s")
        return self.info[key]

    def pg_args(self) -> list[str]:
        u = urllib.parse.urlsplit(self.admin_url)
        return ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]

    def cached_value_size(self) -> int:
        if "value_size" not in self.info:
            sizes = []
            for i in self.get_ids[:5]:
                out = subprocess.run(["redis-cli", "-p", str(self.redis_port), "STRLEN", f"{self.prefix}ctx:{i}"],
                                     capture_output=True, text=True, check=True).stdout.strip()
                sizes.append(int(out or 0))
            self.info["value_size"] = max(1, round(sum(sizes) / len(sizes)))
        return self.info["value_size"]

    def scenarios(self) -> None:
        with self.phase("read scenarios and their limits"):
            for conc in CONCURRENCY:
                for name in READS:
                    self.run_scenario(name, conc)
                    self.limit(name, conc)
                    self.log_limit(name, conc)
        if self.args.peer_url:
            with self.phase("peer comparison (A B A B)"):
                self.compare_peer()
        with self.phase("write scenarios and their limits"):
            for conc in CONCURRENCY:
                for name in WRITES:
                    reset_peak(self.service.pid)
                    self.run_scenario(name, conc)
                    self.memory[f"{name} at {conc} connections"] = proc_memory_kib(self.service.pid)
            # pgbench's inserts grow the table: measured last, then the derived limits.
            for conc in CONCURRENCY:
                for name in WRITES:
                    self.limit(name, conc)
                    self.log_limit(name, conc)
        self.memory["end"] = proc_memory_kib(self.service.pid)
        self.rows_at_end = self.sql("SELECT count(*) FROM contexts")[0][0]

    def log_limit(self, name: str, conc: int) -> None:
        lim = self.limits[conc].get(name)
        if lim and lim.get("rps"):
            api = report.summary(self.results[conc][name])["rps"]
            log(f"  limit {name:<15} c={conc:<3} {lim['rps']:>9,.0f} req/s  ({lim['label']})  "
                f"API/limit {api / lim['rps']:.2f}")

    # --------------------------------------------------------------- peer --

    def compare_peer(self) -> None:
        key = self.args.peer_key
        peer = Api(self.args.peer_url, key)
        wait_http(self.args.peer_url.rstrip("/") + "/health", 30)
        bodies = self.ds.batch_bodies(BATCH)
        status, _ = peer.call("POST", "/contexts/batch", b'{"items":[]}')
        if status in (404, 405):
            log("peer has no /contexts/batch: seeding it with POST /contexts, 8 threads")
            t0 = time.monotonic()
            answers = self.parallel(lambda i: peer.call("POST", "/contexts", self.ds.item_json(i)), range(self.n))
            ids = [json.loads(raw)["id"] if s == 201 else None for s, raw in answers]
            rate = sum(1 for x in ids if x) / (time.monotonic() - t0)
        else:
            ids, stats = self.seed_api(peer, bodies)
            rate = stats["rate"]
        self.peer_seed_rate = rate
        missing = sum(1 for x in ids if not x)
        if missing:
            self.notes.append(f"peer: {missing} of {self.n} seed items failed.")
        peer_ids = [ids[i] for i in self.get_idx if ids[i]]
        self.warm_ids(peer, peer_ids)
        files = dict(self.files)
        files["get_cached"] = write_requests(self.work / "peer-get_cached.tsv",
                                             [("GET", f"/contexts/{i}", "") for i in peer_ids])
        files["get_uncached"] = write_requests(self.work / "peer-get_uncached.tsv",
                                               [("GET", f"/contexts/{i}?include=embedding", "") for i in peer_ids])
        for conc in CONCURRENCY:
            self.peer[conc] = {}
            for name in PEER_SCENARIOS:
                a, b = [], []
                for r in range(2):
                    if name == "get_cached":
                        self.warm_ids(self.api, self.get_ids)
                        self.warm_ids(peer, peer_ids)
                    a.append(self.wrk(name, conc, r))
                    b.append(self.wrk(name, conc, r, base=self.args.peer_url, key=key, files=files, pid=0))
                sa, sb = report.summary(a), report.summary(b)
                self.peer[conc][name] = {"a": sa, "b": sb}
                log(f"  peer {name:<15} c={conc:<3} ours {sa['rps']:,.0f}  peer {sb['rps']:,.0f} req/s  "
                    f"ratio {sa['rps'] / sb['rps'] if sb['rps'] else float('nan'):.2f}")

    # ------------------------------------------------------------- report --

    def machine(self) -> list[str]:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "unknown")
        mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemTotal")), "0")
        pg = self.sql("SELECT current_setting('server_version'), current_setting('shared_buffers'), "
                      "(SELECT extversion FROM pg_extension WHERE extname = 'vector')")[0]
        redis = subprocess.run(["redis-cli", "-p", str(self.redis_port), "INFO", "server"], capture_output=True,
                               text=True).stdout
        redis_v = next((ln.split(":", 1)[1].strip() for ln in redis.splitlines() if ln.startswith("redis_version")),
                       "?")
        wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        wrk_v = wrk_v.split(" Copyright")[0].strip()
        return [
            f"- CPU: {os.cpu_count()} cores (nproc), {cpu}; RAM {int(mem) / 1024 / 1024:.0f} GiB; "
            f"{platform.system()} {platform.release()}",
            f"- Load average at start / end: {self.load_start} / "
            f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} (anything above ~0 at the start "
            "means something else was using the cores)",
            f"- PostgreSQL {pg[0]} (shared_buffers {pg[1]}), pgvector {pg[2]}; Redis {redis_v}; {wrk_v}",
            f"- context-api: {self.tree}; release binary built "
            f"{dt.datetime.fromtimestamp(self.binary.stat().st_mtime):%Y-%m-%d %H:%M}",
        ]

    def write_report(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = self.started.strftime("%Y-%m-%d-%H%M")
        base = f"{self.mode}-{stamp}"
        tput, lat = report.charts(self.out / base, list(CONCURRENCY), ORDER, self.results, self.limits,
                                  self.pool_limits, self.pool_size)
        for suffix in ("throughput", "latency"):
            shutil.copyfile(self.out / f"{base}-{suffix}.png", self.out / f"latest-{self.mode}-{suffix}.png")
        for name, img in ((base, base), (f"latest-{self.mode}", f"latest-{self.mode}")):
            (self.out / f"{name}.md").write_text("\n".join(self.markdown(img)) + "\n")
        return self.out / f"{base}.md"

    def markdown(self, img: str) -> list[str]:
        s = self.seed_stats
        cmd = "bench/run.sh" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[self.mode]
        if self.args.rounds:
            cmd += f" --rounds {self.args.rounds}"
        if self.args.peer_url:
            cmd += f" --peer-url {self.args.peer_url}"
        local_tier = int(self.settings.get("local_cache_entries", "0") or 0)
        md = [
            f"# API benchmark: {self.mode}, {self.started:%Y-%m-%d %H:%M}",
            "",
            f"Command: `{cmd}` ({self.rounds} round{'s' if self.rounds > 1 else ''} of {self.seconds} s per "
            f"scenario and concurrency; `wrk -t2 -cN -d{self.seconds}s --timeout 10s --latency -s "
            "bench/wrk/requests.lua`). Figures are medians over the rounds; errors are summed.",
            "",
            "## Machine",
            "",
            *self.machine(),
            "",
            "## Data",
            "",
            f"- {self.rows_after_seed:,} contexts with 768-d vectors: {data.CLUSTERS} gaussian clusters in a "
            f"{data.LATENT}-d latent space (spread {data.SPREAD}), projected by a fixed gaussian matrix, ambient "
            f"noise {data.AMBIENT}, L2-normalized; ~300 characters of text each; {len(data.USERS)} users; "
            f'metadata tag "rare" on {data.RARE_SHARE:.0%} of rows at random.',
            f"- **Batch create with vectors: {s['rate']:,.0f} contexts/s** (POST /contexts/batch, {BATCH} items a "
            f"request, {SEED_THREADS} client threads, bodies encoded beforehand: {s['created']:,} created in "
            f"{s['seconds']:.1f} s; {s['failed']} failed). HNSW index maintained during the inserts.",
            "- `VACUUM ANALYZE contexts` ran after seeding, before any measurement.",
            f"- Write scenarios ran after all reads; the table had {self.rows_at_end:,} rows at the end, "
            'with the rows of pgbench\'s insert replays. Written rows carry metadata tag "w": search_meta\'s '
            "filter never matches them.",
            f"- Service: DB_POOL_MAX {self.pool_size}, LOCAL_CACHE_ENTRIES {local_tier or 'off'}, TEI stand-in "
            f"`target/release/tei-stub --latency-ms {TEI_LATENCY_MS} "
            "--max-batch 32`, LOG_LEVEL=warn.",
            "",
            "## Results",
            "",
            "API/limit: the API's req/s over the limit's (the same work done by the backing service alone, at the "
            "same concurrency, on the same machine, in this run). wrk CPU: wrk's share of all cores during the run "
            "(the load generator competes with the service and Postgres for the same 2 cores). Service and "
            "postgres CPU: cores used on average (postgres = the bench database's backends).",
            "",
        ]
        for conc in CONCURRENCY:
            md += report.scenario_table(conc, ORDER, self.results[conc], self.limits[conc], self.recall) + [""]
        if self.pool_limits:
            md += [f"### The database routes against Postgres at the pool's size ({self.pool_size} connections)", "",
                   f"The service reaches Postgres through at most DB_POOL_MAX = {self.pool_size} connections, "
                   f"so pgbench with {self.pool_size} clients is the tighter limit (at 256 clients pgbench "
                   "mostly measures 256 backends fighting over 2 cores).", "",
                   "| scenario | pgbench req/s | " + " | ".join(f"API at {c} | API/pgbench" for c in CONCURRENCY)
                   + " |", "|---|---:|" + "---:|---:|" * len(CONCURRENCY)]
            for name, r in self.pool_limits.items():
                cells = []
                for c in CONCURRENCY:
                    api = report.summary(self.results[c][name])["rps"] if self.results[c].get(name) else None
                    cells += [report.fmt_rps(api), f"{api / r['rps']:.2f}" if api and r.get("rps") else "—"]
                md.append(f"| {name} | {report.fmt_rps(r.get('rps'))} | " + " | ".join(cells) + " |")
            md.append("")
        if local_tier:
            md += [f"get_cached: the service keeps up to {local_tier:,} decoded contexts in process "
                   "(LOCAL_CACHE_ENTRIES) in front of Redis, so a hit there makes no Redis round trip; "
                   "the Redis GET limit is what the next tier would give.", ""]
        md += self.counters_table()
        md += [f"![throughput against the limits]({img}-throughput.png)", "",
               f"![latency percentiles]({img}-latency.png)", "", "## Recall@10", ""]
        for name, v in self.recall.items():
            md.append(f"- {name}: {v:.3f} over {RECALL_QUERIES} queries (exact top 10 by SQL with index and "
                      "bitmap scans off)")
        md += ["", "## Memory (service VmRSS / VmHWM)", ""]
        for when, m in self.memory.items():
            md.append(f"- {when}: RSS {m.get('VmRSS', 0) / 1024:.0f} MiB, peak {m.get('VmHWM', 0) / 1024:.0f} MiB")
        mixed = self.memory.get(f"mixed at {CONCURRENCY[-1]} connections", {})
        md.append(f"- **Peak RSS under the mixed load at {CONCURRENCY[-1]} connections: "
                  f"{mixed.get('VmHWM', 0) / 1024:.0f} MiB** (the peak is reset through /proc/PID/clear_refs "
                  "before each write scenario, so each write line's peak is that scenario's own). Before the "
                  "write scenarios the peak is the whole process's, seeding included: the batch requests "
                  "(1,000 items, ~9 MB of JSON each, 2 at a time) set it.")
        if self.peer:
            md += ["", "## Peer", "", f"Peer: {self.args.peer_url}, seeded with the same data "
                   f"({self.peer_seed_rate:,.0f} contexts/s). Runs alternate A (this service) and B (peer), "
                   "twice each; medians.", "",
                   "| connections | scenario | A req/s | B req/s | A/B | A p99 ms | B p99 ms | B errors |",
                   "|---:|---|---:|---:|---:|---:|---:|---|"]
            for conc, rows in self.peer.items():
                for name, ab in rows.items():
                    a, b = ab["a"], ab["b"]
                    ratio = f"{a['rps'] / b['rps']:.2f}" if b["rps"] else "—"
                    md.append(f"| {conc} | {name} | {report.fmt_rps(a['rps'])} | {report.fmt_rps(b['rps'])} | "
                              f"{ratio} | {report.fmt_ms(a['p99'])} | {report.fmt_ms(b['p99'])} | "
                              f"{report.fmt_errors(b['errors'])} |")
        md += ["", "## Scenarios", ""] + [f"- **{k}**: {v}" for k, v in DESCRIPTIONS.items()]
        md += ["", "## Limits", "",
               "- **get_cached**: `redis-benchmark -t set,get -d <size of a cached context> -c N --threads 2` "
               "against the same Redis (GET line).",
               "- **Database routes**: the exact statement the route sends, captured from the Postgres log "
               "(log_min_duration_statement = 0 on the bench database, a second service instance, "
               f"{CAPTURE_SAMPLES} requests a route), replayed with `pgbench -M prepared -j 2 -c N -T "
               f"{self.seconds} -n -r`, one script per captured parameter set, in the same database. "
               "The service's pool has far fewer connections than pgbench at 256.",
               "- **search_text_cached**: search_vector's SQL (the Redis lookup of the query vector is not "
               "counted). **search_text_uncached, create_text**: the lower of the TEI stand-in alone "
               "(wrk POST /embed, one text) and the route's SQL. **mixed**: 1 / Σ(share / limit), an estimate.",
               "- **health** has no limit: it is the floor of the HTTP stack.", ""]
        for route, c in self.captured.items():
            sql = " ".join(c.sql.split())
            repl = f" Replaced: {', '.join(f'${n} → {e}' for n, e in c.replace.items())}." if c.replace else ""
            md += [f"<details><summary>{route}: captured SQL ({len(c.samples)} parameter sets)</summary>", "",
                   f"```sql\n{sql}\n```{repl}", "", "</details>", ""]
        if self.notes or self.failures:
            md += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [f"- FAILED: {f}" for f in self.failures]
        md += ["", "## Phases", ""] + [f"- {name}: {t:.1f} s" for name, t in self.phases]
        md += ["", "<details><summary>Service configuration (`context-api config`)</summary>", "",
               "```toml", self.config.strip(), "```", "", "</details>"]
        return md

    def counters_table(self) -> list[str]:
        """The service's /metrics counters over each scenario's runs (summed over rounds)."""
        md = ["### What the service counted (/metrics, summed over the rounds)", "",
              "Context cache: hits in process (local) and in Redis, and misses (read from Postgres). "
              "TEI: calls to the embedding server, and the mean number of texts a call carried "
              "(concurrent requests' texts coalesced into one call). Filled later: rows stored pending (no vector "
              "in time) that the embedding worker completed. Shed: answered 503 by admission control.", "",
              "| connections | scenario | requests | local hits | Redis hits | misses | query-vector cache hits "
              "| TEI calls | texts a call | filled later | shed |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for conc in CONCURRENCY:
            for name in ORDER:
                runs = self.results[conc].get(name) or []
                cs = [r.extra.get("counters") for r in runs if r.extra.get("counters")]
                if not cs:
                    continue
                tot = {k: sum(c[k] for c in cs) for k in cs[0]}
                if not any(tot[k] for k in ("local_hits", "redis_hits", "misses", "embedding_cache_hits",
                                            "tei_calls", "filled_later", "shed")):
                    continue
                coalesced = report.med([c["embedding_coalesced_batch_size"] for c in cs
                                        if c["embedding_coalesced_batch_size"]]) or 0
                md.append(f"| {conc} | {name} | {sum(r.requests for r in runs):,} | {cell(tot['local_hits'])} "
                          f"| {cell(tot['redis_hits'])} | {cell(tot['misses'])} | {cell(tot['embedding_cache_hits'])} "
                          f"| {cell(tot['tei_calls'])} | {coalesced:.1f} "
                          f"| {cell(tot['filled_later'])} | {cell(tot['shed'])} |")
        return md + [""]

    @staticmethod
    def tree_state() -> str:
        """HEAD, and whether the service's sources differ from it."""
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src", "migrations", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip()
        extra = " plus uncommitted changes in src/, migrations/ or Cargo.*" if dirty else ""
        return f"commit {commit or '?'}{extra}"

    # ------------------------------------------------------------ cleanup --

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        with contextlib.suppress(Exception):
            keys = subprocess.run(["redis-cli", "-p", str(self.redis_port), "--scan", "--pattern", f"{self.prefix}*"],
                                  capture_output=True, text=True, timeout=300).stdout.split()
            for i in range(0, len(keys), 1000):
                subprocess.run(["redis-cli", "-p", str(self.redis_port), "UNLINK", *keys[i:i + 1000]],
                               capture_output=True, timeout=60)
        if not self.args.keep:
            with contextlib.suppress(Exception):
                self.sql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", url=self.admin_url)
            # Keep the logs (commands with their full output, the processes'), drop the rest.
            logs = self.work.parent / f"logs-{self.mode}"
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir(parents=True, exist_ok=True)
            for f in self.work.glob("*.log"):
                shutil.move(str(f), logs / f.name)
            shutil.rmtree(self.work, ignore_errors=True)
            log(f"logs: {logs}")
        else:
            log(f"kept database {self.db} and {self.work}")

    def run(self) -> int:
        self.load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        self.tree = self.tree_state()
        log(f"mode {self.mode}: {self.n:,} contexts, {self.seconds} s a run, {self.rounds} round(s), "
            f"concurrency {CONCURRENCY}")
        self.setup()
        self.seed()
        self.prepare()
        self.measure_recall()
        self.capture_sql()
        self.scenarios()
        path = self.write_report()
        log(f"report: {path}")
        for conc in CONCURRENCY:
            print("\n".join(report.scenario_table(conc, ORDER, self.results[conc], self.limits[conc], self.recall)))
            print()
        if self.failures:
            log("problems:\n  " + "\n  ".join(self.failures))
            if self.mode == "smoke":
                log("smoke FAILED")
                return 1
        if self.mode == "smoke":
            log("smoke passed")
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--quick", dest="mode", action="store_const", const="quick", help="10,000 contexts, 5 s a run")
    m.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                   help="2,000 contexts, 2 s a run; exit 1 on errors or recall@10 < 0.95")
    ap.set_defaults(mode="full")
    ap.add_argument("--rounds", type=int, help="runs per scenario and concurrency (default: 3 full, 1 otherwise)")
    ap.add_argument("--peer-url", help="another implementation of the API, compared A B A B on get and search")
    ap.add_argument("--peer-key", default=os.environ.get("PEER_API_KEY", KEY),
                    help="the peer's admin key (default: $PEER_API_KEY, else the bench key)")
    ap.add_argument("--out", help="report directory (default: bench/results; for --smoke, bench/.cache/results, "
                                  "which git ignores)")
    ap.add_argument("--keep", action="store_true", help="keep the database and the work directory")
    args = ap.parse_args()
    bench = Bench(args)
    # SIGTERM runs the same cleanup as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
