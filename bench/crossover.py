#!/usr/bin/env python3
"""Where an exact scan stops being the right plan for a user's search.

    .bench-venv/bin/python bench/crossover.py [--others 20000] [--queries 40]

Builds a scratch database with the service's own migrations (768-d, vectors
inline), one user per size in SIZES plus --others rows of other users, all with
clustered vectors. For each user, it times the service's search shape with the
user filter three ways, each over the same --queries query vectors:
  - exact: the user's rows from the (user_id) btree, every distance computed, sorted
    (index scans off, so the HNSW index is not used);
  - hnsw: the HNSW index with pgvector's iterative scan and the user filter (the
    user_id btrees dropped inside a transaction that is rolled back);
  - planner: whatever PostgreSQL chooses with no plan forced (what the service gets);
and reports median latencies, the plan the planner chose, and recall@10 of the
HNSW scan against the exact result. Forcing plans (enable_* = off) happens
here only, to measure the alternatives; the service never does it.

Needs TEST_DATABASE_URL (scripts/services.sh env) and a built context-api
binary (target/release or target/debug).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

REPO = Path(__file__).resolve().parent.parent
SIZES = [10, 30, 100, 300, 1000, 3000, 10000]
DIM = 768
K = 10

SEARCH = """
WITH nearest AS MATERIALIZED (
  SELECT id, embedding <=> %(q)s::vector AS distance FROM contexts
  WHERE is_active AND (expires_at IS NULL OR expires_at > now()) AND embedding_status = 'ready'
    AND user_id = %(u)s::uuid
  ORDER BY distance LIMIT 10)
SELECT id FROM nearest ORDER BY distance, id"""


def with_db(url: str, name: str) -> str:
    p = urlparse(url)
    return urlunparse(p._replace(path="/" + name))


def binary() -> str:
    for b in ("target/release/context-api", "target/debug/context-api"):
        if (REPO / b).exists():
            return str(REPO / b)
    sys.exit("crossover: build context-api first (cargo build --release)")


def seed(conn: psycopg.Connection, others: int) -> list[tuple[int, str]]:
    users = []
    with conn.cursor() as cur:
        cur.execute("DROP INDEX IF EXISTS contexts_embedding_hnsw_idx")
        cur.execute(f"""
            CREATE TEMP TABLE cent AS
              SELECT c, array_agg((random() - 0.5)::real) AS v
              FROM generate_series(0, 99) c, generate_series(1, {DIM}) d GROUP BY c""")
        plan = [(n, None) for n in SIZES] + [(others, "others")]
        for n, label in plan:
            cur.execute("SELECT gen_random_uuid()::text")
            uid = cur.fetchone()[0]
            cur.execute(f"""
                INSERT INTO contexts (id, user_id, context_type, content, embedding, embedding_text,
                                      embedding_status, metadata)
                SELECT gen_random_uuid(), %s::uuid, 'note',
                       jsonb_build_object('text', repeat('a memory of realistic length ', 10)),
                       l2_normalize((SELECT array_agg(x + ((random() - 0.5) * 0.4)::real)
                                     FROM unnest(cent.v) x)::vector),
                       repeat('a memory of realistic length ', 10), 'ready', '{{}}'::jsonb
                FROM generate_series(1, %s) i JOIN cent ON cent.c = (i * 37 + length(%s::text)) %% 100""",
                        (uid, n, uid))
            if label is None:
                users.append((n, uid))
        cur.execute("CREATE INDEX contexts_embedding_hnsw_idx ON contexts USING hnsw (embedding vector_cosine_ops)")
        cur.execute("VACUUM ANALYZE contexts")
    return users


def timed(conn: psycopg.Connection, settings: list[str], queries: list[str], uid: str) -> tuple[list[float], list[list[str]]]:
    times, results = [], []
    # Rolled back: the settings, and any index dropped to force a plan, come back.
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        for s in settings:
            cur.execute(s)
        for q in queries:
            t0 = time.perf_counter()
            cur.execute(SEARCH, {"q": q, "u": uid}, prepare=True)
            rows = [r[0] for r in cur.fetchall()]
            times.append((time.perf_counter() - t0) * 1000)
            results.append(rows)
    return times, results


def chosen_plan(conn: psycopg.Connection, q: str, uid: str) -> str:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cur.execute("EXPLAIN (FORMAT JSON) " + SEARCH, {"q": q, "u": uid})
        plan = cur.fetchone()[0][0]["Plan"]
    found = []

    def walk(n):
        if "Index Name" in n:
            found.append(f'{n["Node Type"]} on {n["Index Name"]}')
        for c in n.get("Plans", []):
            walk(c)
    walk(plan)
    return ", ".join(found) or plan["Node Type"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=40)
    args = ap.parse_args()
    admin = os.environ.get("TEST_DATABASE_URL") or sys.exit("crossover: TEST_DATABASE_URL is not set")
    db = "bench_crossover"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db}")
        c.execute(f"CREATE DATABASE {db}")
    url = with_db(admin, db)
    # migrate validates the whole configuration today: give it a key and a provider it will not use.
    env = dict(os.environ, DATABASE_URL=url, EMBEDDING_DIM=str(DIM), API_KEYS="admin:" + "0" * 64,
               EMBEDDING_SERVICE_URL="http://127.0.0.1:9")
    subprocess.run([binary(), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.time()
            users = seed(conn, args.others)
            total = sum(SIZES) + args.others
            print(f"seeded {total:,} rows in {time.time() - t0:.0f} s", file=sys.stderr)
            with conn.cursor() as cur:
                cur.execute("SELECT embedding::text FROM contexts ORDER BY random() LIMIT %s", (args.queries,))
                queries = [r[0] for r in cur.fetchall()]
            iterative = "SET LOCAL hnsw.iterative_scan = relaxed_order"
            print(f"Crossover of exact scan and HNSW for one user's search, k={K}, {total:,} rows of 768-d "
                  f"vectors stored inline; median of {args.queries} queries each (ms, one client, psycopg, prepared).\n")
            print("| user's rows | exact (btree + sort) | HNSW, iterative | planner's choice | its time | HNSW recall@10 |")
            print("|---:|---:|---:|---|---:|---:|")
            for n, uid in users:
                exact_t, exact_r = timed(conn, ["SET LOCAL enable_indexscan = off", "SET LOCAL enable_seqscan = off"],
                                         queries, uid)
                # The btree indexes on user_id go for the length of a rolled-back transaction.
                hnsw_t, hnsw_r = timed(conn, [iterative, "DROP INDEX contexts_user_id_context_type_idx",
                                              "DROP INDEX contexts_user_created_idx",
                                              "SET LOCAL enable_seqscan = off"], queries, uid)
                plan_t, _ = timed(conn, [iterative], queries, uid)
                recall = statistics.mean(
                    len(set(h) & set(e)) / max(1, min(K, len(e))) for h, e in zip(hnsw_r, exact_r))
                plan = chosen_plan(conn, queries[0], uid)
                kind = "HNSW" if "hnsw" in plan else "exact"
                print(f"| {n:,} | {statistics.median(exact_t):.2f} | {statistics.median(hnsw_t):.2f} | {kind} "
                      f"| {statistics.median(plan_t):.2f} | {recall:.3f} |")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
