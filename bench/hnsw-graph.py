"""How the HNSW graph's density (m, ef_construction) buys recall, on a database
bench/scale.sh left behind (--keep): the `halfvec` index built with each m and
ef_construction given, then 50 stored vectors searched over all rows, top 10 by
the index alone (no re-ranking), against the exact ranking.

    bench/scale.sh --rows 300000 --vector-index halfvec --keep
    URL=postgres://postgres@127.0.0.1:54329/bench_scale .bench-venv/bin/python bench/hnsw-graph.py 24 128

Prints one table row per ef_search (100, 400); it drops and rebuilds the index.
Results: bench/results/hnsw-graph-300000.md.
"""
import os
import statistics
import sys
import time

import psycopg

url = os.environ["URL"]
m, efc = int(sys.argv[1]), int(sys.argv[2])
with psycopg.connect(url, autocommit=True) as c:
    c.execute("DROP INDEX IF EXISTS contexts_embedding_hnsw_idx")
    c.execute("SET maintenance_work_mem = '4GB'")
    c.execute("SET max_parallel_maintenance_workers = 1")
    t0 = time.monotonic()
    c.execute(f"CREATE INDEX contexts_embedding_hnsw_idx ON contexts USING hnsw ((l2_normalize(embedding)::halfvec(768)) halfvec_cosine_ops) WITH (m = {m}, ef_construction = {efc})")
    build = time.monotonic() - t0
    size = c.execute("SELECT pg_relation_size('contexts_embedding_hnsw_idx')").fetchone()[0]
    c.execute("SELECT setseed(0.42)")
    qs = [r[0] for r in c.execute("SELECT embedding::text FROM contexts ORDER BY random() LIMIT 50").fetchall()]
    exact = []
    for q in qs:
        exact.append({r[0] for r in c.execute("SELECT id FROM contexts ORDER BY (embedding <=> %s::vector) + 0 LIMIT 10", (q,))})
    for ef in (100, 400):
        c.execute(f"SET hnsw.ef_search = {ef}")
        rec, lat = [], []
        for q, ex in zip(qs, exact):
            t0 = time.perf_counter()
            got = {r[0] for r in c.execute("SELECT id FROM contexts ORDER BY l2_normalize(embedding)::halfvec(768) <=> l2_normalize(%s::vector)::halfvec(768) LIMIT 10", (q,))}
            lat.append((time.perf_counter() - t0) * 1000)
            rec.append(len(got & ex) / 10)
        print(f"| m {m}, ef_construction {efc} | {build:.0f} s | {size / 2**20:,.0f} MiB | {ef} | {statistics.median(lat):.1f} ms | {statistics.mean(rec):.3f} |", flush=True)
