#!/usr/bin/env python3
"""Ingest with vectors given, through the API or the bulk import, for each form of the index.

    bench/ingest.sh                      # 200,000 contexts x 768 per form (about 25 minutes)
    bench/ingest.sh --rows 1000000       # the issue's size (hours at today's rates)
    bench/ingest.sh --rows 1000000 --via import --vector-index halfvec   # the bulk path (about 20 minutes)
    bench/ingest.sh --smoke [--via import]   # 6,000 contexts per form: CI's checks

`--via import` writes the same items as an export file first, then times
`context-api import FILE --defer-index --jobs 2 --maintenance-work-mem 8GB` into an
empty database from its start until it ends with the index built (load and build
apart, the import's peak RSS); then the same searches.

For each form of the HNSW index (`--vector-index`, by default vector, halfvec and bit):
1. a fresh database `bench_ingest`, migrated by the release binary with VECTOR_INDEX set
   to the form, and the release service on it (TEI stand-in; no embedding is made:
   every item carries its vector);
2. `--clients` threads (2) send `POST /contexts/batch` bodies of `--batch` items (1,000)
   until `--rows` are stored: the rate is reported per tenth of the rows, so the cost of
   a growing index shows;
3. the clock stops when the rows are searchable: 50 searches over all rows, whose
   recall@10 against the exact ranking is reported with the form.

The vectors are the API suite's (bench/apibench/data.py: 100 clusters in a 32-d latent
space, projected to 768-d), generated before the clock starts and sent again, the same,
for every form. `--smoke` exits 1 on any non-2xx answer or a row count that is not the
one sent; never on speed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apibench import data  # noqa: E402
from apibench.procs import Api, Proc, free_port, wait_http  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "ingest-bench-admin-key"
DB = "bench_ingest"


def log(msg: str) -> None:
    print(f"ingest: {msg}", file=sys.stderr, flush=True)


def items(rows: int, batch: int, seed: int = 7):
    """The items, a batch at a time: (number, user, JSON-quoted text, vector JSON) each.
    The same for every run with the same arguments."""
    space = data._Space(20261201)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        vectors = space.sample(rng, n)
        users = rng.integers(len(data.USERS), size=n)
        yield [(start + i, data.USERS[users[i]],
                json.dumps(f"memory {start + i}: the user mentioned a preference for tea in the morning"),
                data.vec_json(vectors[i])) for i in range(n)]


def queries(seed: int = 7) -> np.ndarray:
    """A few vectors of the same clusters as the items, as queries."""
    return data._Space(20261201).sample(np.random.default_rng(seed + 1), 50)


def bodies(rows: int, batch: int) -> list[bytes]:
    """The items as `POST /contexts/batch` bodies."""
    return [('{"items":[' + ",".join(
        f'{{"user_id":"{user}","context_type":"note","content":{{"text":{text}}},"text":{text},'
        f'"metadata":{{"n":{n}}},"embedding":{vec}}}' for n, user, text, vec in chunk) + "]}").encode()
        for chunk in items(rows, batch)]


def import_file(path: Path, rows: int, batch: int) -> None:
    """The same items as an export file (NDJSON, one context a line) for
    `context-api import`, written as they are made."""
    stamp = "2026-12-01T00:00:00Z"
    with open(path, "w") as f:
        for chunk in items(rows, batch):
            f.write("".join(
                f'{{"id":"{uuid.UUID(int=n + 1)}","user_id":"{user}","context_type":"note",'
                f'"content":{{"text":{text}}},"metadata":{{"n":{n}}},"expires_at":null,'
                f'"created_at":"{stamp}","updated_at":"{stamp}","version":1,"text":{text},'
                f'"embedding":{vec},"model":null}}\n' for n, user, text, vec in chunk))


class Bench:
    def __init__(self, args):
        self.args = args
        self.admin_url = os.environ["TEST_DATABASE_URL"]
        self.db_url = self.admin_url.rsplit("/", 1)[0] + "/" + DB
        self.work = REPO / "bench" / ".cache" / ("ingest-smoke" if args.smoke else f"ingest-{args.rows}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.binary = REPO / "target" / "release" / "context-api"
        self.failures: list[str] = []
        self.results: list[dict] = []

    def sql(self, statement, params=None, url=None):
        with psycopg.connect(url or self.db_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def env(self, port, stub_port, form):
        return dict(os.environ, DATABASE_URL=self.db_url, REDIS_URL=os.environ["TEST_REDIS_URL"],
                    EMBEDDING_PROVIDER="tei", EMBEDDING_SERVICE_URL=f"http://127.0.0.1:{stub_port}",
                    EMBEDDING_DIM="768", BIND_ADDRESS=f"127.0.0.1:{port}", VECTOR_INDEX=form,
                    API_KEYS=f"admin:{hashlib.sha256(KEY.encode()).hexdigest()}",
                    CACHE_KEY_PREFIX="ingest-bench:", LOG_LEVEL="warn")

    def one_form(self, form, batches, queries):
        self.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", url=self.admin_url)
        self.sql(f"CREATE DATABASE {DB}", url=self.admin_url)
        procs = []
        try:
            stub_port, port = free_port(), free_port()
            stub = Proc("tei-stub", [str(REPO / "target" / "release" / "tei-stub"), "--port", str(stub_port),
                                     "--dim", "768"], self.work / "tei-stub.log")
            procs.append(stub)
            wait_http(f"http://127.0.0.1:{stub_port}/health", 30, stub)
            subprocess.run([str(self.binary), "migrate"], env=self.env(free_port(), stub_port, form),
                           check=True, capture_output=True, timeout=300)
            extra = {}
            if self.args.via == "import":
                rows = self.args.rows
                t0 = time.monotonic()
                extra = self.import_load(form, stub_port)
                written = time.monotonic() - t0
                marks: list[tuple[int, float]] = [(rows, t0 + written)]
            svc = Proc("service", [str(self.binary), "serve"], self.work / f"service-{form}.log",
                       env=self.env(port, stub_port, form))
            procs.append(svc)
            wait_http(f"http://127.0.0.1:{port}/ready", 120, svc)
            api = Api(f"http://127.0.0.1:{port}", KEY)
            if self.args.via == "batch":
                rows = sum(b.count(b'"embedding":') for b in batches)
                marks = []
                t0 = time.monotonic()
                self.batch_load(api, form, batches, marks)
                written = time.monotonic() - t0
            # Searchable: the searches over all rows answer, through the index.
            recalls, lat = [], []
            for q in queries:
                body = {"vector": [float(x) for x in q], "k": 10}
                s0 = time.perf_counter()
                status, got = api.json("POST", "/contexts/search", body)
                lat.append((time.perf_counter() - s0) * 1000)
                if status != 200:
                    self.failures.append(f"{form}: search answered {status}")
                    continue
                ids = {r["context"]["id"] for r in got["results"]}
                exact = {str(r[0]) for r in self.sql(
                    "SELECT id FROM contexts ORDER BY (embedding <=> %s::vector) + 0 LIMIT 10",
                    (json.dumps([float(x) for x in q]),))}
                recalls.append(len(ids & exact) / 10)
            stored = self.sql("SELECT count(*) FROM contexts")[0][0]
            if stored != rows:
                self.failures.append(f"{form}: {stored} rows stored of {rows} sent")
            size = self.sql("SELECT pg_relation_size('contexts_embedding_hnsw_idx')")[0][0]
            tenth = max(rows // 10, self.args.batch * self.args.clients)
            windows, last_rows, last_t = [], 0, t0
            for done, t in marks:
                if done - last_rows >= tenth or done == rows:
                    windows.append((last_rows, done, (done - last_rows) / max(1e-9, t - last_t)))
                    last_rows, last_t = done, t
            row = {**extra, "form": form, "rows": rows, "written_s": written, "rate": rows / written,
                   "recall": statistics.mean(recalls) if recalls else 0.0,
                   "search_p50": statistics.median(lat), "index": size, "windows": windows}
            self.results.append(row)
            log(f"{form}: {rows:,} rows in {written:.1f} s ({row['rate']:,.0f}/s), index {size / 2**20:,.1f} MiB, "
                f"searches recall@10 {row['recall']:.3f}, p50 {row['search_p50']:.1f} ms")
            for a, b, r in windows:
                log(f"  {a:,} to {b:,} rows: {r:,.0f}/s")
        finally:
            for p in reversed(procs):
                p.stop()
            if not self.args.keep:
                self.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", url=self.admin_url)

    def batch_load(self, api, form, batches, marks):
        """`--clients` threads send the batch bodies until every one is answered."""
        lock = threading.Lock()
        state = {"next": 0, "done": 0}

        def client():
            while True:
                with lock:
                    i = state["next"]
                    state["next"] += 1
                if i >= len(batches):
                    return
                status, body = api.call("POST", "/contexts/batch", batches[i])
                n = batches[i].count(b'"embedding":')
                if status != 200:
                    self.failures.append(f"{form}: batch {i} answered {status}: {body[:200]!r}")
                elif (failed := json.loads(body)["failed"]) != 0:
                    self.failures.append(f"{form}: batch {i}: {failed} items failed")
                with lock:
                    state["done"] += n
                    marks.append((state["done"], time.monotonic()))

        threads = [threading.Thread(target=client) for _ in range(self.args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def import_load(self, form, stub_port):
        """`context-api import --defer-index` of the file: the load, then the index
        build (timed from the import's own log line), and the import's peak RSS."""
        cmd = [str(self.binary), "import", str(self.file), "--defer-index", "--jobs", "2",
               "--maintenance-work-mem", self.args.maintenance_work_mem]
        env = dict(self.env(free_port(), stub_port, form), LOG_LEVEL="info")
        t0 = time.monotonic()
        build_at = None
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        with open(self.work / f"import-{form}.log", "wb") as out:
            for line in proc.stdout:
                out.write(line)
                if build_at is None and b"building the HNSW index" in line:
                    build_at = time.monotonic()
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.monotonic()
        if os.waitstatus_to_exitcode(status) != 0:
            self.failures.append(f"{form}: import exited {os.waitstatus_to_exitcode(status)} "
                                 f"(bench/.cache/.../import-{form}.log)")
        build_at = build_at or end
        return {"load_s": build_at - t0, "build_s": end - build_at, "peak_rss_mib": usage.ru_maxrss / 1024}

    def report(self):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO).stdout.strip()
        a = self.args
        buffers = self.sql('SHOW shared_buffers', url=self.admin_url)[0][0]
        command = f"`bench/ingest.sh{''.join(' ' + x for x in sys.argv[1:])}` at commit {head}"
        if a.via == "import":
            lines = [f"# Ingest: {a.rows:,} contexts x 768 with vectors, through `context-api import --defer-index`",
                     "", f"Measured {time.strftime('%Y-%m-%d')} on this 2-core box by {command}: an export file of "
                     f"the same items as the batch route's (written before the clock starts) imported into an "
                     f"empty database with `--defer-index --jobs 2 --maintenance-work-mem {a.maintenance_work_mem}`"
                     f" (Postgres shared_buffers {buffers}, max_parallel_maintenance_workers "
                     f"{self.sql('SHOW max_parallel_maintenance_workers', url=self.admin_url)[0][0]}); the import "
                     "and Postgres on the same 2 cores, nothing else ran. The clock runs from the start of the "
                     "import to its end, when the HNSW index is built and every row is searchable through it.",
                     "", "| VECTOR_INDEX | contexts/s, empty to searchable | seconds | load (no index) | index build "
                     "| import's peak RSS | index size | recall@10 after (all rows) | search p50 |",
                     "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
            for r in self.results:
                lines.append(f"| `{r['form']}` | {r['rate']:,.0f} | {r['written_s']:.1f} | {r['load_s']:.1f} s "
                             f"({a.rows / r['load_s']:,.0f}/s) | {r['build_s']:.1f} s | {r['peak_rss_mib']:.0f} MiB | "
                             f"{r['index'] / 2**20:,.1f} MiB | {r['recall']:.3f} | {r['search_p50']:.1f} ms |")
            self.write_report(lines)
            return
        lines = [f"# Ingest: {a.rows:,} contexts x 768 with vectors, through POST /contexts/batch", "",
                 f"Measured {time.strftime('%Y-%m-%d')} on this 2-core box by {command}: {a.clients} clients, "
                 f"{a.batch} items a request, the release service, its Postgres (shared_buffers "
                 f"{buffers}) and the clients on the same "
                 "2 cores; nothing else ran. The clock runs from the first request to the last answer; "
                 "every row is then searchable through the index (no deferred build).", "",
                 "| VECTOR_INDEX | contexts/s | seconds | index size | recall@10 after (all rows) | search p50 |",
                 "|---|--:|--:|--:|--:|--:|"]
        for r in self.results:
            lines.append(f"| `{r['form']}` | {r['rate']:,.0f} | {r['written_s']:.1f} | {r['index'] / 2**20:,.1f} MiB "
                         f"| {r['recall']:.3f} | {r['search_p50']:.1f} ms |")
        lines += ["", "Rate by table size (contexts/s):", "",
                  "| rows | " + " | ".join(f"`{r['form']}`" for r in self.results) + " |",
                  "|---|" + "--:|" * len(self.results)]
        if self.results:
            for i, (lo, hi, _) in enumerate(self.results[0]["windows"]):
                cells = [f"{r['windows'][i][2]:,.0f}" if i < len(r["windows"]) else "" for r in self.results]
                lines.append(f"| {lo:,} to {hi:,} | " + " | ".join(cells) + " |")
        self.write_report(lines)

    def write_report(self, lines):
        a = self.args
        name = f"ingest-{'smoke' if a.smoke else a.rows}{'-import' if a.via == 'import' else ''}.md"
        out = REPO / "bench" / (".cache/results" if a.smoke else "results") / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        log(f"report: {out.relative_to(REPO)}")

    def run(self):
        t0 = time.monotonic()
        if self.args.via == "import":
            self.file = self.work / "contexts.ndjson"
            import_file(self.file, self.args.rows, self.args.batch)
            batches = None
            log(f"{self.file.stat().st_size / 2**20:,.0f} MiB of NDJSON written in {time.monotonic() - t0:.1f} s")
        else:
            batches = bodies(self.args.rows, self.args.batch)
            log(f"{len(batches)} bodies of {self.args.batch} items generated in {time.monotonic() - t0:.1f} s")
        for form in self.args.vector_index.split(","):
            self.one_form(form, batches, queries())
        self.report()
        for f in self.failures:
            log(f"FAILED: {f}")
        return 1 if self.failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--vector-index", default="vector,halfvec,bit")
    ap.add_argument("--via", choices=("batch", "import"), default="batch",
                    help="batch: POST /contexts/batch from --clients; import: `context-api import --defer-index` "
                         "of an export file written first")
    ap.add_argument("--maintenance-work-mem", default="8GB", help="--via import: the index build's")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the last form's database")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.maintenance_work_mem = 6_000, "256MB"
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
