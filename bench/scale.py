#!/usr/bin/env python3
"""The service at scale: many contexts, heavy-tailed users, searched through the API.

    bench/scale.sh                 # 1,000,000 contexts x 768, 20,000 users (about 25 minutes)
    bench/scale.sh --rows 300000   # any size
    bench/scale.sh --smoke         # 12,000 contexts, 20 users (the largest over the exact limit): CI's check

Steps (each timed):
1. a fresh database `bench_scale`, migrated by the release binary;
2. the rows written in SQL, server-side, 100,000 a statement, with the HNSW index
   dropped: clustered vectors (200 centroids, each row its centroid plus noise,
   normalized), users drawn from a Zipf law (P(rank r) ~ 1/r: at a million rows the
   median user has a few rows and the largest about 50,000), ~300 characters of text
   and metadata, a TTL on 10% of rows. This measures the search side; the write path's
   own rate is bench/run.sh's;
3. ANALYZE, VACUUM; then for each form of the index (`--vector-index`, by default
   vector, halfvec and bit, as VECTOR_INDEX makes them):
   a. the HNSW index built with the settings printed, in that form, and recorded
      as the database's form;
   b. the table's and each index's size;
   c. the release service on that database, and per user-size bucket: 50 searches
      through `POST /contexts/search` (one connection), their p50 and p99, recall@10
      against the exact ranking, and the plan the service chose (search_plans_total);
   d. the index dropped.

`--smoke` exits 1 on any non-2xx answer, an exact plan that is not exact, or
recall@10 under 0.90 (0.30 for `bit`, whose quantization this synthetic data
defeats; see bench/README.md); never on speed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import re
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apibench import limits, wrk  # noqa: E402
from apibench.procs import Api, Proc, free_port, proc_memory_kib, scrape_metrics, wait_http  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "scale-bench-admin-key"
CHUNK = 100_000


def log(msg: str) -> None:
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def p99(ordered: list[float]) -> float:
    """The 99th percentile of sorted values."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def search_body(users, i: int, **fields) -> dict:
    """The i-th search of a bucket: `fields`, and the bucket's users in turn (none
    for the all-rows bucket)."""
    user = users[i % len(users)][0]
    return {**fields, "k": 10, **({"user_id": user} if user else {})}


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows, self.dim, self.users = args.rows, args.dim, args.users
        self.admin_url = os.environ["TEST_DATABASE_URL"]
        self.db = "bench_scale_smoke" if args.smoke else "bench_scale"
        self.db_url = self.admin_url.rsplit("/", 1)[0] + "/" + self.db
        self.work = REPO / "bench" / ".cache" / f"scale-{'smoke' if args.smoke else self.rows}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.binary = REPO / "target" / "release" / "context-api"
        self.procs: list[Proc] = []
        self.phases: list[tuple[str, float]] = []
        self.facts: dict[str, object] = {}
        self.failures: list[str] = []
        # The exact rankings of the peer comparison's searches, by bucket: made once.
        self.peer_exact: dict[str, list[set[str]]] = {}

    def phase(self, name, fn, *a):
        log(f"{name} ...")
        t0 = time.monotonic()
        out = fn(*a)
        took = time.monotonic() - t0
        self.phases.append((name, took))
        log(f"{name}: {took:.1f} s")
        return out

    def sql(self, statement, params=None, url=None):
        with psycopg.connect(url or self.db_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def env(self, port):
        return dict(os.environ, DATABASE_URL=self.db_url, REDIS_URL=os.environ["TEST_REDIS_URL"],
                    EMBEDDING_PROVIDER="tei", EMBEDDING_SERVICE_URL=f"http://127.0.0.1:{self.stub_port}",
                    EMBEDDING_DIM=str(self.dim), BIND_ADDRESS=f"127.0.0.1:{port}",
                    API_KEYS=f"admin:{hashlib.sha256(KEY.encode()).hexdigest()}",
                    CACHE_KEY_PREFIX="scale-bench:", LOG_LEVEL="warn")

    # ------------------------------------------------------------------ steps

    def setup(self, reuse=False):
        if not reuse:
            self.sql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", url=self.admin_url)
            self.sql(f"CREATE DATABASE {self.db}", url=self.admin_url)
        self.stub_port = free_port()
        stub = Proc("tei-stub", [str(REPO / "target" / "release" / "tei-stub"), "--port", str(self.stub_port),
                                 "--dim", str(self.dim)], self.work / "tei-stub.log")
        self.procs.append(stub)
        wait_http(f"http://127.0.0.1:{self.stub_port}/health", 30, stub)
        subprocess.run([str(self.binary), "migrate"], env=self.env(free_port()), check=True,
                       capture_output=True, timeout=300)

    def seed(self):
        self.sql("DROP INDEX contexts_embedding_hnsw_idx")
        self.sql(f"""CREATE UNLOGGED TABLE bench_cent AS
            SELECT c, array_agg((random() - 0.5)::real) AS v
            FROM generate_series(0, 199) c, generate_series(1, {self.dim}) d GROUP BY c""")
        self.sql(f"CREATE UNLOGGED TABLE bench_users AS SELECT u, gen_random_uuid() AS id "
                 f"FROM generate_series(1, {self.users}) u")
        self.sql("SELECT setseed(0.2026)")
        done = 0
        t0 = time.monotonic()
        while done < self.rows:
            n = min(CHUNK, self.rows - done)
            self.sql(f"""
            INSERT INTO contexts (id, user_id, context_type, content, embedding, embedding_text,
                                  embedding_status, metadata, expires_at)
            SELECT gen_random_uuid(), bench_users.id, 'note',
                   jsonb_build_object('text', t.txt),
                   l2_normalize((SELECT array_agg(x + ((random() - 0.5) * 0.4)::real) FROM unnest(bench_cent.v) x)::vector),
                   t.txt, 'ready',
                   jsonb_build_object('tag', CASE WHEN random() < 0.01 THEN 'rare' ELSE 'common' END,
                                      'source', 'import', 'n', s.i),
                   CASE WHEN random() < 0.1 THEN now() + interval '30 days' END
            FROM (SELECT i, least({self.users}, floor(exp(random() * ln({self.users} + 1)))::int) AS u,
                         floor(random() * 200)::int AS c
                  FROM generate_series({done + 1}, {done + n}) i) s
            JOIN bench_users ON bench_users.u = s.u
            JOIN bench_cent ON bench_cent.c = s.c
            CROSS JOIN LATERAL (SELECT 'memory ' || s.i || ': ' || repeat('the user mentioned a preference ', 9) AS txt) t""")
            done += n
            log(f"  {done:,} rows ({done / (time.monotonic() - t0):,.0f}/s)")
        self.facts["seed rate (SQL, no index)"] = f"{self.rows / (time.monotonic() - t0):,.0f} rows/s"

    def vacuum(self):
        self.sql("VACUUM ANALYZE contexts")

    def build_index(self, form):
        """The index as `context-api migrate` builds it for VECTOR_INDEX=form
        (src/store/vector_index.rs), with the bench's maintenance settings.
        --reuse keeps one recorded in that form and graph."""
        if self.args.reuse and self.sql(
                "SELECT to_regclass('contexts_embedding_hnsw_idx') IS NOT NULL AND vector_index = %s AND "
                "hnsw_m = %s AND hnsw_ef_construction = %s FROM embedding_state",
                (form, self.args.hnsw_m, self.args.hnsw_ef_construction))[0][0]:
            self.form["build"] = float("nan")
            return
        if self.args.reuse:
            self.sql("DROP INDEX IF EXISTS contexts_embedding_hnsw_idx")
        expression = {
            "vector": "embedding vector_cosine_ops",
            "halfvec": f"(l2_normalize(embedding)::halfvec({self.dim})) halfvec_cosine_ops",
            "bit": f"(binary_quantize(embedding)::bit({self.dim})) bit_hamming_ops",
        }[form]
        settings = {"maintenance_work_mem": self.args.maintenance_work_mem,
                    "max_parallel_maintenance_workers": str(self.args.parallel_workers)}
        m, efc = self.args.hnsw_m, self.args.hnsw_ef_construction
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            for k, v in settings.items():
                conn.execute(f"SET {k} = '{v}'")
            t0 = time.monotonic()
            conn.execute(f"CREATE INDEX contexts_embedding_hnsw_idx ON contexts USING hnsw ({expression}) "
                         f"WITH (m = {m}, ef_construction = {efc})")
            took = time.monotonic() - t0
            conn.execute("UPDATE embedding_state SET vector_index = %s, hnsw_m = %s, hnsw_ef_construction = %s",
                         (form, m, efc))
        self.facts["HNSW build settings"] = ", ".join(f"{k} = {v}" for k, v in settings.items())
        self.facts["HNSW graph (HNSW_M, HNSW_EF_CONSTRUCTION)"] = f"m = {m}, ef_construction = {efc}"
        self.form["build"] = took

    def sizes(self):
        rows = self.sql("""SELECT c.relname, pg_relation_size(c.oid), pg_total_relation_size(c.oid)
                           FROM pg_class c WHERE c.relname LIKE 'contexts%' AND c.relkind IN ('r', 'i')
                           ORDER BY pg_relation_size(c.oid) DESC""")
        self.facts["sizes"] = [(name, size) for name, size, _ in rows if name != "contexts_embedding_hnsw_idx"]
        self.form["index size"] = dict((name, size) for name, size, _ in rows)["contexts_embedding_hnsw_idx"]
        self.facts["total (without the HNSW index)"] = (self.sql("SELECT pg_total_relation_size('contexts')")[0][0]
                                                        - self.form["index size"])

    def drop_index(self):
        for p in reversed(self.procs[1:]):
            p.stop()
        del self.procs[1:]
        self.sql("DROP INDEX contexts_embedding_hnsw_idx")

    def serve(self, ef_search=None):
        self.port = free_port()
        env = self.env(self.port)
        if ef_search:
            env["HNSW_EF_SEARCH"] = str(ef_search)
        p = Proc("service", [str(self.binary), "serve"], self.work / "service.log", env=env)
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{self.port}/ready", 120, p)
        self.api = Api(f"http://127.0.0.1:{self.port}", KEY)

    def buckets(self):
        """Users by size: a few near each target size, and the five largest."""
        counts = self.sql("SELECT user_id::text, count(*) FROM contexts GROUP BY user_id ORDER BY 2 DESC")
        out = []
        for target in (10, 100, 1_000, 5_000):
            near = sorted(counts, key=lambda r: abs(r[1] - target))[:5]
            if near and abs(near[0][1] - target) <= target / 2:
                out.append((f"~{target:,} rows", near))
        out.append((f"the 5 largest ({counts[4][1]:,} to {counts[0][1]:,} rows)", counts[:5]))
        out.append(("all rows (no user filter)", [(None, self.rows)]))
        return out

    def queries(self):
        """The query vectors: stored rows chosen by a hash of their id, so that runs on
        the same database (--reuse) search with the same ones. (A setseed() on one
        connection did not reach the random() of the next: every run had its own.)"""
        return [r[0] for r in self.sql(
            f"SELECT embedding::text FROM contexts ORDER BY hashtext(id::text), id LIMIT {self.args.queries}")]

    def exact_ids(self, vector: str, user: str | None) -> list[str]:
        """The true 10 nearest visible rows to `vector` (pgvector text), of `user` if given."""
        where = "AND user_id = %(u)s::uuid" if user else ""
        return [str(r[0]) for r in self.sql(
            f"""SELECT id FROM contexts WHERE is_active AND (expires_at IS NULL OR expires_at > now())
                AND embedding_status = 'ready' {where}
                ORDER BY (embedding <=> %(v)s::vector) + 0, id LIMIT 10""",
            {"v": vector, "u": user})]

    def measure(self, key="results"):
        """The searches by user size; `key` "warm" runs them again, into the
        caches the first pass (right after the build, "results") filled."""
        queries, form = self.query_vectors, self.form["name"]
        self.form[key] = []
        for label, users in self.bucket_list:
            before = scrape_metrics(self.api)
            lat, recalls, exact_plan_recalls = [], [], []
            for i, q in enumerate(queries):
                body = search_body(users, i, vector=json.loads(q))
                # The smoke tells each search's plan (a bucket may mix them).
                exact_before = scrape_metrics(self.api).get('search_plans_total{plan="exact"}', 0) \
                    if self.args.smoke else None
                t0 = time.perf_counter()
                status, got = self.api.json("POST", "/contexts/search", body)
                lat.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    self.failures.append(f"{label}: search answered {status}: {got}")
                    continue
                ids = [r["context"]["id"] for r in got["results"]]
                exact = self.exact_ids(q, body.get("user_id"))
                recalls.append(len(set(ids) & set(exact)) / max(1, len(exact)))
                if exact_before is not None and \
                        scrape_metrics(self.api).get('search_plans_total{plan="exact"}', 0) > exact_before:
                    exact_plan_recalls.append(recalls[-1])
            after = scrape_metrics(self.api)
            # The plain statement reads the `vector` index only: once is enough.
            before_ms = self.plain_statement(queries, users) if form == "vector" and key == "results" else None
            plans = {p: after.get(f'search_plans_total{{plan="{p}"}}', 0) - before.get(f'search_plans_total{{plan="{p}"}}', 0)
                     for p in ("global", "exact", "index")}
            plan = ", ".join(f"{p} {int(n)}" for p, n in plans.items() if n)
            lat.sort()
            row = {"bucket": label, "p50": statistics.median(lat), "p99": p99(lat),
                   "recall": statistics.mean(recalls) if recalls else 0.0, "plan": plan, "plans": plans,
                   "before": before_ms}
            self.form[key].append(row)
            log(f"  {form} ({'warm' if key == 'warm' else 'cold'}), {label}: p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms, "
                f"recall@10 {row['recall']:.3f}, plan {plan}")
            if self.args.smoke:
                floor = 0.30 if form == "bit" else 0.90
                if exact_plan_recalls and min(exact_plan_recalls) < 1.0:
                    self.failures.append(f"{form}, {label}: an exact plan's recall@10 is {min(exact_plan_recalls):.3f}")
                if row["recall"] < floor:
                    self.failures.append(f"{form}, {label}: recall@10 {row['recall']:.3f} under {floor}")

    def text_modes(self):
        """Text and hybrid searches by user size (warm): a selective query (a row's
        number, one row in the table) and a broad one (words every seeded row holds,
        so that every row of the scope is a BM25 candidate). p50 and p99 only: the
        seeded texts are alike, so a ranking has no truth to be measured against."""
        n = min(20 if not self.args.smoke else 5, self.args.queries)
        broad = 5 if not self.args.smoke else 2  # one text, the same answer: a few tell its time
        self.sql("SELECT setseed(0.7)")
        numbers = [str(r[0]) for r in self.sql(
            f"SELECT (content->>'text') FROM contexts ORDER BY random() LIMIT {n}")]
        numbers = [t.split(":")[0].split()[-1] for t in numbers]
        self.form["text"] = []
        for label, users in self.bucket_list:
            for mode in ("text", "hybrid"):
                for kind, texts in (("selective", numbers), ("broad", ["user preference"] * broad)):
                    lat = []
                    for i, text in enumerate(texts):
                        body = search_body(users, i, query=text, mode=mode)
                        t0 = time.perf_counter()
                        status, got = self.api.json("POST", "/contexts/search", body)
                        lat.append((time.perf_counter() - t0) * 1000)
                        if status != 200:
                            self.failures.append(f"{label}, {mode} {kind}: search answered {status}: {got}")
                    lat.sort()
                    row = {"bucket": label, "mode": mode, "kind": kind, "p50": statistics.median(lat),
                           "p99": p99(lat)}
                    self.form["text"].append(row)
                    log(f"  {self.form['name']}, {label}, {mode} {kind}: p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms")

    def side_by_side(self):
        """The API against its own SQL in pgbench, with the same query vectors: for the
        typical, ~1,000-row, largest users and all rows, the statement each of the warm
        pass's searches sent (captured from the Postgres log with its parameters) is
        replayed by pgbench (-M prepared, one script per search) at 1 and 32
        connections; the API gets the same 50 bodies from wrk at 1 and 32. 15 s a run."""
        pg_root = Path(os.path.realpath(REPO / ".services" / "pg"))
        pg_log, pgbench = pg_root / "log" / "postgres.log", pg_root / "install" / "bin" / "pgbench"
        u = urllib.parse.urlsplit(self.admin_url)
        pg_args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
        work = self.work / "side-by-side"
        secs = 3 if self.args.smoke else 15
        work.mkdir(exist_ok=True)
        wanted = [b for b in self.bucket_list if b[0].split(" (")[0] in ("~10 rows", "~1,000 rows", "the 5 largest",
                                                                       "all rows")]
        self.form["side"] = []
        # The new backends of a service started now log every statement with its parameters.
        self.sql(f"ALTER DATABASE {self.db} SET log_min_duration_statement = 0", url=self.admin_url)
        self.procs.pop().stop()
        self.serve()
        try:
            captured = {}
            for label, users in wanted:
                bodies, sql, samples = [], None, []
                for i, q in enumerate(self.query_vectors):
                    body = search_body(users, i, vector=json.loads(q))
                    bodies.append(body)
                    window = limits.LogWindow(pg_log)
                    status, _ = self.api.json("POST", "/contexts/search", body)
                    time.sleep(0.05)
                    found = [st for st in limits.parse_log(window.read(), self.db) if "embedding" in st.sql
                             and "ORDER BY" in st.sql and st.params]
                    if status != 200 or not found:
                        continue
                    # One search sends one statement; a tenant-size lookup may come before it.
                    st = found[-1]
                    sql = sql or st.sql
                    if st.sql == sql:
                        samples.append(st.params)
                captured[label] = (bodies, sql, samples)
        finally:
            self.sql(f"ALTER DATABASE {self.db} RESET log_min_duration_statement", url=self.admin_url)
            self.procs.pop().stop()
            self.serve()
        for label, (bodies, sql, samples) in captured.items():
            if not sql:
                self.failures.append(f"side by side, {label}: the search's SQL was not captured from {pg_log}")
                continue
            c = limits.Captured(label, sql, samples)
            files, defines = limits.pgbench_scripts(c, work)
            requests = wrk.write_requests(work / "requests.tsv",
                                          [("POST", "/contexts/search", json.dumps(b, separators=(",", ":")))
                                           for b in bodies])
            row = {"bucket": label, "scripts": len(files)}
            for conns in (1, 32):
                for f in work.glob("pgb.*"):
                    f.unlink()
                argv = [str(pgbench), *pg_args, "-M", "prepared", "-j", str(min(2, conns)), "-c", str(conns),
                        "-T", str(secs), "-n", "-l", "--log-prefix", str(work / "pgb")]
                for f in files:
                    argv += ["-f", str(f)]
                out = subprocess.run(argv + defines + [self.db], capture_output=True, text=True, timeout=300)
                tps = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
                if out.returncode != 0 or not tps:
                    self.failures.append(f"side by side, {label}: pgbench failed: {out.stderr.strip()[-300:]}")
                    break
                # Per-transaction log: client, transaction, latency (us), ...
                lat = sorted(int(line.split()[2]) / 1000 for f in work.glob("pgb.*") for line in open(f))
                row[f"sql rps ({conns})"] = float(tps[1])
                row[f"sql p50 ({conns})"] = statistics.median(lat)
                row[f"sql p99 ({conns})"] = p99(lat)
                wrk.THREADS = min(2, conns)  # wrk wants a connection a thread at least
                r = wrk.run_wrk(self.api.base_url, KEY, label, conns, secs, requests_file=requests,
                                service_pid=self.procs[-1].popen.pid)
                if r.status_errors or r.socket_errors:
                    self.failures.append(f"side by side, {label}: {r.errors} errors under wrk")
                row.update({f"api rps ({conns})": r.rps, f"api p50 ({conns})": r.latency_us["p50"] / 1000,
                            f"api p99 ({conns})": r.latency_us["p99"] / 1000, f"rss ({conns})": r.rss_kib / 1024})
            if label.startswith("all rows") and "api rps (32)" in row:
                # The API alone at 256 connections (Postgres allows fewer than pgbench would need):
                # the service's memory with every connection holding a 768-d request.
                r = wrk.run_wrk(self.api.base_url, KEY, label, 256, secs, requests_file=requests,
                                service_pid=self.procs[-1].popen.pid)
                if r.status_errors or r.socket_errors:
                    self.failures.append(f"side by side, {label}, 256 connections: {r.errors} errors under wrk")
                mem = proc_memory_kib(self.procs[-1].popen.pid)
                self.form["at 256"] = {"rps": r.rps, "p50": r.latency_us["p50"] / 1000,
                                       "p99": r.latency_us["p99"] / 1000, "rss": mem["VmRSS"] / 1024,
                                       "peak": mem["VmHWM"] / 1024}
            self.form["side"].append(row)
            log(f"  {self.form['name']}, {label}: " + ", ".join(
                f"{k} {v:,.1f}" for k, v in row.items() if isinstance(v, float)))

    def peer(self):
        """The FastAPI peer (../shared/peers/fastapi, or PEER_DIR) on the same rows: its
        own database seeded from this one (COPY; its API would take hours), its HNSW
        index built as its schema.sql builds it (`vector`, pgvector's graph) with the
        bench's maintenance settings, its server started by its run.sh (2 workers). Then,
        over all rows and for the five largest users: recall@10 of the same 50 searches
        through each, and wrk at 32 connections on the same request file, the two
        stacks alternating, twice each, 15 s a run. With --reuse, a peer database of
        the same row count with its index is kept as it is. With --peer-ef-search, the
        comparison is made again with the service at each of those HNSW_EF_SEARCH."""
        peer_dir = Path(os.environ.get("PEER_DIR", REPO.parent / "shared" / "peers" / "fastapi")).resolve()
        if not (peer_dir / "run.sh").is_file():
            self.failures.append(f"peer: no run.sh in {peer_dir} (set PEER_DIR)")
            return
        db = "bench_scale_peer"
        url = self.admin_url.rsplit("/", 1)[0] + "/" + db
        psql = str(Path(os.path.realpath(REPO / ".services" / "pg")) / "install" / "bin" / "psql")
        if self.args.reuse and self.peer_kept(db, url):
            self.facts["peer: its rows and index"] = "kept (--reuse)"
        else:
            self.peer_seed(db, url, psql, peer_dir)
        self.peer_compare(url, peer_dir)

    def peer_kept(self, db, url):
        """Whether the peer's database is there with this one's rows and its index."""
        if not self.sql("SELECT 1 FROM pg_database WHERE datname = %s", (db,), url=self.admin_url):
            return False
        return self.sql("SELECT (SELECT count(*) FROM contexts) = %s AND to_regclass('idx_contexts_embedding_hnsw') "
                        "IS NOT NULL", (self.sql("SELECT count(*) FROM contexts")[0][0],), url=url)[0][0]

    def peer_seed(self, db, url, psql, peer_dir):
        """The peer's database made as its schema.sql makes it, seeded from this one, its index built."""
        self.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", url=self.admin_url)
        self.sql(f"CREATE DATABASE {db}", url=self.admin_url)
        subprocess.run([psql, url, "-q", "-v", "ON_ERROR_STOP=1", "-v", f"dim={self.dim}", "-f",
                        str(peer_dir / "schema.sql")], check=True, capture_output=True,
                       env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))
        index_sql = self.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_contexts_embedding_hnsw'",
                             url=url)[0][0]
        self.sql("DROP INDEX idx_contexts_embedding_hnsw", url=url)
        t0 = time.monotonic()
        copy_out = subprocess.Popen([psql, self.db_url, "-Xqc",
                                     "COPY (SELECT id, user_id, context_type, content, embedding, created_at, "
                                     "updated_at, expires_at, metadata, is_active, version, embedding_text, "
                                     "embedding_text, 'ready' FROM contexts) TO STDOUT"], stdout=subprocess.PIPE)
        subprocess.run([psql, url, "-Xqc", "COPY contexts (id, user_id, context_type, content, embedding, "
                        "created_at, updated_at, expires_at, metadata, is_active, version, text, embed_text, "
                        "embedding_status) FROM STDIN"], stdin=copy_out.stdout, check=True)
        copy_out.wait()
        self.sql("VACUUM ANALYZE contexts", url=url)
        self.facts["peer: its rows copied in"] = f"{time.monotonic() - t0:,.0f} s"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET maintenance_work_mem = '{self.args.maintenance_work_mem}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {self.args.parallel_workers}")
            t0 = time.monotonic()
            conn.execute(index_sql)
            build = time.monotonic() - t0
        size = self.sql("SELECT pg_relation_size('idx_contexts_embedding_hnsw')", url=url)[0][0]
        self.facts["peer: its HNSW index (vector, m 16, ef_construction 64)"] = (
            f"{size / 2**20:,.0f} MiB, built in {build:,.0f} s")

    def peer_compare(self, url, peer_dir):
        """Recall and alternating wrk rounds, the service at its HNSW_EF_SEARCH, then at each --peer-ef-search."""
        port = free_port()
        peer_key = "scale-bench-peer-key"
        env = dict(os.environ, DATABASE_URL=url, REDIS_URL=os.environ["TEST_REDIS_URL"].rstrip("/") + "/5",
                   EMBEDDING_SERVICE_URL=f"http://127.0.0.1:{self.stub_port}", EMBEDDING_DIM=str(self.dim),
                   API_KEYS=f"admin:{hashlib.sha256(peer_key.encode()).hexdigest()}", BIND_HOST="127.0.0.1",
                   LOG_LEVEL="warning")
        peer = Proc("peer", ["bash", str(peer_dir / "run.sh"), str(port)], self.work / "peer.log", env=env)
        self.procs.insert(1, peer)
        wait_http(f"http://127.0.0.1:{port}/health", 600, peer)
        stacks = {"context-api": self.api, "FastAPI peer": Api(f"http://127.0.0.1:{port}", peer_key)}
        keys = {"context-api": KEY, "FastAPI peer": peer_key}
        work = self.work / "peer"
        work.mkdir(exist_ok=True)
        self.form["peer"] = []
        for ef in [None] + [int(v) for v in self.args.peer_ef_search.split(",") if v]:
            if ef:
                self.procs.pop().stop()
                self.serve(ef)
                stacks["context-api"] = self.api
            self.peer_rounds(stacks, keys, work, ef)

    def peer_rounds(self, stacks, keys, work, ef):
        """One comparison: the largest users, then all rows (the exact rankings made once)."""
        for label, users in self.bucket_list:
            if label.split(" (")[0] not in ("the 5 largest", "all rows"):
                continue
            bodies = [search_body(users, i, vector=json.loads(q)) for i, q in enumerate(self.query_vectors)]
            if label not in self.peer_exact:
                self.peer_exact[label] = [set(self.exact_ids(q, b.get("user_id")))
                                          for q, b in zip(self.query_vectors, bodies)]
            exact = self.peer_exact[label]
            requests = wrk.write_requests(work / "requests.tsv",
                                          [("POST", "/contexts/search", json.dumps(b, separators=(",", ":")))
                                           for b in bodies])
            row = {"bucket": label, "ef": ef}
            for name, api in stacks.items():
                recalls = []
                for b, ex in zip(bodies, exact):
                    status, got = api.json("POST", "/contexts/search", b)
                    if status != 200:
                        self.failures.append(f"peer, {label}: {name} answered {status}: {str(got)[:200]}")
                        continue
                    recalls.append(len({r["context"]["id"] for r in got["results"]} & ex) / max(1, len(ex)))
                row[f"{name} recall"] = statistics.mean(recalls) if recalls else 0.0
            wrk.THREADS = 2
            for rnd in range(2):
                for name, api in stacks.items():
                    r = wrk.run_wrk(api.base_url, keys[name], f"{label}, {name}", 32, 15, requests_file=requests)
                    if r.status_errors or r.socket_errors:
                        self.failures.append(f"peer, {label}: {name}: {r.errors} errors under wrk")
                    row.setdefault(f"{name} rps", []).append(r.rps)
                    row.setdefault(f"{name} p50", []).append(r.latency_us["p50"] / 1000)
                    row.setdefault(f"{name} p99", []).append(r.latency_us["p99"] / 1000)
            self.form["peer"].append(row)
            log(f"  peer, {label}: {row}")

    def routes(self):
        """The other routes at this size, through wrk at 1 and 32 connections (15 s; 3 in the
        smoke): get by id (100,000 distinct ids, so mostly not cached), list (a user's newest
        20, for users of ~100 rows and the largest), create and batch create (50 items, under
        the default 1 MiB body) with the vectors given, for a user of the bench's own; then
        delete, that user's rows each once (wrk would repeat them), from 1 and 32 Python
        threads. The rows written are
        removed in SQL at the end, so a kept database keeps its rows."""
        writer = "00000000-0000-4000-8000-0000000000aa"
        secs = 3 if self.args.smoke else 15
        work = self.work / "routes"
        work.mkdir(exist_ok=True)
        ids = [r[0] for r in self.sql("SELECT id::text FROM contexts WHERE is_active "
                                      "ORDER BY hashtext(id::text) LIMIT 100000")]
        users = [u for label, us in self.bucket_list if label.startswith(("~100 rows", "the 5 largest"))
                 for u, _ in us]
        vecs = [json.loads(q) for q in self.query_vectors]

        def item(n):
            return {"user_id": writer, "context_type": "note", "content": {"text": f"routes bench {n}"},
                    "metadata": {"n": n}, "embedding": vecs[n % len(vecs)]}

        def dump(body):
            return json.dumps(body, separators=(",", ":"))

        scenarios = [
            ("get by id (100,000 ids)", [("GET", f"/contexts/{i}", "") for i in ids]),
            ("list: a user's newest 20", [("GET", f"/contexts?user_id={u}&limit=20", "") for u in users]),
            ("create, the vector given", [("POST", "/contexts", dump(item(n))) for n in range(50)]),
            ("batch create, 50 items with vectors",
             [("POST", "/contexts/batch", dump({"items": [item(b * 50 + n) for n in range(50)]})) for b in range(5)]),
        ]
        self.form["routes"] = []
        # 32 batches of 50 rows at once, each row an HNSW insert of a few ms: past wrk's 10 s.
        timeout, wrk.TIMEOUT = wrk.TIMEOUT, "60s"
        try:
            for label, lines in scenarios:
                requests = wrk.write_requests(work / "requests.tsv", lines)
                row = {"route": label}
                for conns in (1, 32):
                    wrk.THREADS = min(2, conns)
                    r = wrk.run_wrk(self.api.base_url, KEY, label, conns, secs, requests_file=requests,
                                    service_pid=self.procs[-1].popen.pid)
                    if r.status_errors or r.socket_errors:
                        self.failures.append(f"routes, {label}, {conns} connections: {r.errors} errors under wrk")
                    row[conns] = (r.rps, r.latency_us["p50"] / 1000, r.latency_us["p99"] / 1000)
                self.form["routes"].append(row)
                log(f"  routes, {label}: {row}")
            self.deletes(writer)
        finally:
            wrk.TIMEOUT = timeout
            self.sql("DELETE FROM contexts WHERE user_id = %s::uuid", (writer,))

    def deletes(self, writer):
        """DELETE /contexts/{id} of the writer's rows, each once: 1 thread, then 32."""
        ids = [r[0] for r in self.sql("SELECT id::text FROM contexts WHERE user_id = %s::uuid AND is_active",
                                      (writer,))]
        n1 = min(300 if not self.args.smoke else 50, len(ids) // 4)
        row = {"route": "delete (each row once; Python threads)"}
        for conns, batch in ((1, ids[:n1]), (32, ids[n1:])):
            def one(i):
                t0 = time.perf_counter()
                status, _ = self.api.call("DELETE", f"/contexts/{i}")
                return status, (time.perf_counter() - t0) * 1000
            t0 = time.monotonic()
            with ThreadPoolExecutor(conns) as pool:
                done = list(pool.map(one, batch))
            wall = time.monotonic() - t0
            bad = [s for s, _ in done if s != 204]
            if bad or not done:
                self.failures.append(f"routes, delete, {conns} threads: {len(bad)} of {len(done)} not 204")
            lat = sorted(ms for _, ms in done)
            row[conns] = (len(done) / wall if wall else 0.0, statistics.median(lat) if lat else 0.0,
                          p99(lat) if lat else 0.0)
        self.form["routes"].append(row)
        log(f"  routes, delete: {row}")

    def sweep(self, ef):
        """The warm searches again with the service's HNSW_EF_SEARCH at `ef`."""
        self.procs.pop().stop()
        self.serve(ef)
        self.measure(f"ef {ef}")
        self.form.setdefault("sweep", []).append(ef)

    def plain_statement(self, queries, users):
        """p50 of the search as the service sent it before it chose plans: the plain
        `user_id = $2` filter, prepared, past the plan cache's five custom plans."""
        sql = """SELECT id, embedding <=> %(v)s::vector AS d FROM contexts
                 WHERE is_active AND (expires_at IS NULL OR expires_at > now()) AND embedding_status = 'ready'
                 {where} AND (SELECT set_config('hnsw.ef_search', '40', true)
                              || set_config('hnsw.iterative_scan', 'relaxed_order', true)) IS NOT NULL
                 ORDER BY d LIMIT 10"""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            lat = []
            for i, q in enumerate(queries):
                user = users[i % len(users)][0]
                stmt = sql.format(where="AND user_id = %(u)s::uuid" if user else "")
                t0 = time.perf_counter()
                conn.execute(stmt, {"v": q, "u": user}, prepare=True).fetchall()
                if i >= 6:
                    lat.append((time.perf_counter() - t0) * 1000)
        return statistics.median(lat) if lat else float("nan")

    def report(self):
        mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
        lines = [f"# Scale: {self.rows:,} contexts x {self.dim}, {self.users:,} users (Zipf)", "",
                 f"Measured {time.strftime('%Y-%m-%d')} on this 2-core box by `bench/scale.sh"
                 f"{''.join(' ' + a for a in sys.argv[1:])}` at commit "
                 f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=REPO).stdout.strip()}; "
                 f"nothing else ran. Postgres: shared_buffers {self.sql('SHOW shared_buffers')[0][0]}.", "",
                 "## The forms of the index side by side (VECTOR_INDEX)", "",
                 "| form | index size | build | all rows: p50 | recall@10 | the 5 largest users: p50 | p99 | recall@10 |",
                 "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for f in self.forms:
            by = {r["bucket"].split(" (")[0]: r for r in f["results"]}
            g, big = by.get("all rows"), by.get("the 5 largest")
            cells = [f"{g['p50']:.1f} ms", f"{g['recall']:.3f}"] if g else ["", ""]
            cells += [f"{big['p50']:.1f} ms", f"{big['p99']:.1f} ms", f"{big['recall']:.3f}"] if big else ["", "", ""]
            build = "kept (--reuse)" if math.isnan(f["build"]) else f"{f['build']:.1f} s"
            lines.append(f"| `{f['name']}` | {mib(f['index size'])} | {build} | " + " | ".join(cells) + " |")
        lines += ["", "Searches through the API, one connection, k = 10, 50 stored vectors as queries, the same",
                  "for every form, right after the index is built (cold: the pages the build left in",
                  "shared_buffers, the rest read from disk), then the same searches again (warm).",
                  "`p50 before (SQL)`: the same search as one prepared SQL statement with the",
                  "plain `user_id = $2` filter, as the service sent it before it chose plans by the user's",
                  "size (psycopg, past the plan cache's five custom plans: the generic plan), without HTTP,",
                  "on the `vector` index."]
        for f in self.forms:
            lines += ["", f"## `{f['name']}`", "",
                      "| search | p50 | p99 | warm: p50 | warm: p99 | recall@10 | plan chosen | p50 before (SQL) |",
                      "|---|--:|--:|--:|--:|--:|---|--:|"]
            warm = {r["bucket"]: r for r in f.get("warm", [])}
            for r in f["results"]:
                before = f"{r['before']:.1f} ms" if r["before"] is not None else ""
                w = warm.get(r["bucket"])
                again = f"{w['p50']:.1f} ms | {w['p99']:.1f} ms" if w else " | "
                lines.append(f"| {r['bucket']} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {again} | {r['recall']:.3f} | "
                             f"{r['plan']} | {before} |")
        for f in self.forms:
            if not f.get("sweep"):
                continue
            lines += ["", f"## `{f['name']}`: the warm searches by HNSW_EF_SEARCH", "",
                      "| search | HNSW_EF_SEARCH | p50 | p99 | recall@10 | plan chosen |",
                      "|---|--:|--:|--:|--:|---|"]
            for label in [r["bucket"] for r in f["results"]]:
                for ef in f["sweep"]:
                    r = next(r for r in f[f"ef {ef}"] if r["bucket"] == label)
                    lines.append(f"| {label} | {ef} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['recall']:.3f} | {r['plan']} |")
        for f in self.forms:
            if not f.get("peer"):
                continue
            lines += ["", f"## `{f['name']}` beside the FastAPI peer on the same rows", "",
                      "The peer (../shared/peers/fastapi: FastAPI, asyncpg, 2 uvicorn workers) in a database of",
                      "its own, seeded from this one by COPY, its index built as its schema.sql builds it. The same",
                      "50 searches (k = 10) through each for recall@10 against the exact ranking; then wrk, 32",
                      "connections, 2 threads, 15 s, on the same request file, the stacks alternating, twice",
                      "each (the mean of the two rounds; p50 and p99 of the second). Both stacks, their",
                      "Postgres databases and wrk share the 2 cores and the 6 GB of shared_buffers.", "",
                      "The service's HNSW_EF_SEARCH is its default unless the row names another (--peer-ef-search).", "",
                      "| search | context-api req/s | peer req/s | ratio | context-api p50 / p99 | peer p50 / p99 "
                      "| context-api recall@10 | peer recall@10 |",
                      "|---|--:|--:|--:|--:|--:|--:|--:|"]
            for r in f["peer"]:
                ours, theirs = statistics.mean(r["context-api rps"]), statistics.mean(r["FastAPI peer rps"])
                bucket = r["bucket"] + (f", HNSW_EF_SEARCH {r['ef']}" if r.get("ef") else "")
                lines.append(f"| {bucket} | {ours:,.0f} | {theirs:,.0f} | {ours / max(theirs, 1e-9):.2f} | "
                             f"{r['context-api p50'][-1]:.1f} / {r['context-api p99'][-1]:.1f} ms | "
                             f"{r['FastAPI peer p50'][-1]:.1f} / {r['FastAPI peer p99'][-1]:.1f} ms | "
                             f"{r['context-api recall']:.3f} | {r['FastAPI peer recall']:.3f} |")
        for f in self.forms:
            if not f.get("routes"):
                continue
            lines += ["", f"## `{f['name']}`: the other routes", "",
                      "wrk, 15 s a run, on a request file: get by id over 100,000 distinct ids (mostly not",
                      "cached), list for users of ~100 rows and the five largest, create and batch create",
                      "with the vectors given (the index maintained by each insert), for a user of the",
                      "bench's own. Delete: that user's rows, each once, from Python threads (their client",
                      "time included). The rows written are removed in SQL afterwards.", "",
                      "| route | req/s, 1 conn | p50 / p99, 1 conn | req/s, 32 | p50 / p99, 32 |",
                      "|---|--:|--:|--:|--:|"]
            for r in f["routes"]:
                cells = [f"{r[c][0]:,.0f} | {r[c][1]:.1f} / {r[c][2]:.1f} ms" if c in r else " | " for c in (1, 32)]
                lines.append(f"| {r['route']} | " + " | ".join(cells) + " |")
        for f in self.forms:
            if not f.get("side"):
                continue
            lines += ["", f"## `{f['name']}`: the API beside its own SQL in pgbench, the same query vectors", "",
                      "Each search's statement, captured from the Postgres log with its parameters, replayed",
                      "by `pgbench -M prepared` (one script per search, 15 s); the API gets the same bodies",
                      "from wrk (15 s; 1 thread at 1 connection, 2 at 32). Everything on the same 2 cores: at",
                      "32 connections wrk and the service take cores that pgbench leaves to Postgres.", "",
                      "| search | SQL p50, 1 conn | API p50, 1 conn | API / SQL | SQL req/s, 32 | API req/s, 32 "
                      "| API / SQL | API p50 / p99, 32 | service RSS |",
                      "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
            for r in f["side"]:
                if "api rps (32)" not in r:
                    continue
                lines.append(f"| {r['bucket']} | {r['sql p50 (1)']:.1f} ms | {r['api p50 (1)']:.1f} ms | "
                             f"{r['api p50 (1)'] / r['sql p50 (1)']:.2f} | {r['sql rps (32)']:,.0f} | "
                             f"{r['api rps (32)']:,.0f} | {r['api rps (32)'] / r['sql rps (32)']:.2f} | "
                             f"{r['api p50 (32)']:.1f} / {r['api p99 (32)']:.1f} ms | {r['rss (32)']:.1f} MiB |")
            if f.get("at 256"):
                a = f["at 256"]
                lines += ["", f"The API alone at 256 connections, all rows, the same bodies: {a['rps']:,.0f} req/s, "
                          f"p50 {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms; the service's RSS after it "
                          f"{a['rss']:.1f} MiB, its peak since it started {a['peak']:.1f} MiB."]
        for f in self.forms:
            if not f.get("text"):
                continue
            lines += ["", f"## `{f['name']}`: text and hybrid searches (warm)", "",
                      "A selective query: a row's number, held by one row of the table (and usually by none",
                      "of the user's). A broad one: `user preference`, words every seeded row holds, so",
                      "that every row in the scope is a BM25 candidate. Hybrid adds the vector ranking.",
                      f"{min(20, self.args.queries)} selective searches each, 5 broad ones, one connection.", "",
                      "| search | mode | query | p50 | p99 |", "|---|---|---|--:|--:|"]
            for r in f["text"]:
                lines.append(f"| {r['bucket']} | {r['mode']} | {r['kind']} | {r['p50']:.1f} ms | {r['p99']:.1f} ms |")
        lines += ["", "| fact | value |", "|---|---|"]
        for k, v in self.facts.items():
            if k != "sizes":
                lines.append(f"| {k} | {mib(v) if k.startswith('total') else v} |")
        for name, size in self.facts.get("sizes", []):
            lines.append(f"| size of {name} | {mib(size)} |")
        lines += ["", "| phase | seconds |", "|---|--:|"] + [f"| {n} | {t:.1f} |" for n, t in self.phases]
        # A smoke's report is a check's by-product, kept out of the committed results.
        out = (REPO / "bench" / ".cache" / "results" / "scale-smoke.md" if self.args.smoke
               else REPO / "bench" / "results" / f"scale-{self.rows}{'' if self.dim == 768 else f'-d{self.dim}'}.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        log(f"report: {out.relative_to(REPO)}")

    def run(self):
        try:
            if self.args.reuse:
                self.phase("the kept database, the TEI stand-in", self.setup, True)
                self.rows = self.sql("SELECT count(*) FROM contexts")[0][0]
            else:
                self.phase("database, migrate", self.setup)
                self.phase(f"seed {self.rows:,} rows in SQL", self.seed)
                self.phase("VACUUM ANALYZE", self.vacuum)
            self.query_vectors = self.queries()
            self.bucket_list = self.buckets()
            self.forms = []
            forms = self.args.vector_index.split(",")
            for form in forms:
                self.form = {"name": form}
                self.forms.append(self.form)
                self.phase(f"{form}: HNSW build", self.build_index, form)
                self.phase(f"{form}: sizes", self.sizes)
                self.phase(f"{form}: serve", self.serve)
                self.phase(f"{form}: searches by user size", self.measure)
                if not self.args.smoke:
                    self.phase(f"{form}: the same searches again (warm)", self.measure, "warm")
                if self.args.text_modes:
                    self.phase(f"{form}: text and hybrid searches", self.text_modes)
                if self.args.side_by_side:
                    self.phase(f"{form}: the API beside pgbench", self.side_by_side)
                if self.args.routes and form == forms[-1]:
                    self.phase(f"{form}: the other routes", self.routes)
                if self.args.peer and form == forms[-1]:
                    self.phase(f"{form}: beside the FastAPI peer", self.peer)
                for ef in [int(v) for v in self.args.ef_search.split(",") if v]:
                    self.phase(f"{form}: HNSW_EF_SEARCH={ef}", self.sweep, ef)
                if self.args.keep and form == forms[-1]:
                    break  # the database is kept with its last index
                self.phase(f"{form}: stop, drop the index", self.drop_index)
            self.report()
        finally:
            for p in reversed(self.procs):
                p.stop()
            if not self.args.keep:
                self.sql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", url=self.admin_url)
        for f in self.failures:
            log(f"FAILED: {f}")
        return 1 if self.failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--maintenance-work-mem", default="2GB")
    ap.add_argument("--parallel-workers", type=int, default=1)
    ap.add_argument("--vector-index", default="vector,halfvec,bit",
                    help="the forms of the index to measure, in turn (VECTOR_INDEX values, comma-separated)")
    ap.add_argument("--ef-search", default="",
                    help="after the warm pass, the searches again with the service's HNSW_EF_SEARCH at each of these (e.g. 100,200,400)")
    ap.add_argument("--hnsw-m", type=int, default=24, help="the graph's m (HNSW_M; the service's default)")
    ap.add_argument("--hnsw-ef-construction", type=int, default=128,
                    help="the graph's ef_construction (HNSW_EF_CONSTRUCTION; the service's default)")
    ap.add_argument("--text-modes", action="store_true",
                    help="after the warm pass, text and hybrid searches by user size")
    ap.add_argument("--side-by-side", action="store_true",
                    help="the API beside its own SQL in pgbench, the same query vectors, at 1 and 32 connections")
    ap.add_argument("--peer", action="store_true",
                    help="with the last form: the FastAPI peer (PEER_DIR, default ../shared/peers/fastapi) on the same rows")
    ap.add_argument("--peer-ef-search", default="",
                    help="with --peer: the comparison again with the service at each of these HNSW_EF_SEARCH (e.g. 40)")
    ap.add_argument("--routes", action="store_true",
                    help="with the last form: get, list, create, batch create and delete at 1 and 32 connections")
    ap.add_argument("--reuse", action="store_true",
                    help="the database a --keep run left, as it is: no seed; an index of the form asked for is kept")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.users, args.queries, args.maintenance_work_mem = 12_000, 20, 20, "256MB"
        args.text_modes = args.routes = True
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
