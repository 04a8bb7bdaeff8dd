"""Measure pgvector retrieval: an HNSW index against an exact scan, on 100,000 clustered 384-d vectors.

Run with ``python -m core.launcher run -- python bench/retrieval.py`` (embedded PostgreSQL with
pgvector is started for it). Options: ``--rows 100000 --clusters 200 --queries 200 --k 10``.

What it does, in one run:

1. Generates ``--rows`` unit vectors of 384 floats (the width of ``agents.Chunk.embedding``),
   clustered as real embeddings are: ``--clusters`` random centres, each point a centre plus
   Gaussian noise (``--spread``, relative to the centre's norm), normalised. Seeded (``--seed``).
2. Loads them with a binary ``COPY`` into a scratch table ``bench_retrieval_vectors`` (dropped at
   the end), then builds the same index the knowledge base uses: ``hnsw (embedding
   vector_cosine_ops)`` with ``m=16, ef_construction=64`` (``agents.models.Chunk``).
3. For ``--queries`` new points from the same distribution, finds the ``--k`` nearest by cosine
   distance twice: exactly (sequential scan, index scans switched off) and through the index at each
   ``hnsw.ef_search`` of ``--ef-search`` (Parley's default, ``KB_HNSW_EF_SEARCH``, is 64).
4. Reports recall@k (the share of the exact top-k the index returned, averaged over queries) and the
   p50 (median) latency of each way, and the ratio p50 HNSW / p50 exact. Targets: recall@10 >= 0.95
   and a latency ratio <= 0.1.

Latencies are wall-clock time of the query round trip from this process, median over the queries:
the machine may be busy with other work. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from harness import django_setup

TABLE = "bench_retrieval_vectors"
DIMENSIONS = 384
TARGET_RECALL = 0.95
TARGET_RATIO = 0.1


def vectors(*, count: int, centres, spread: float, rng):
    """Return ``count`` unit vectors around random ``centres`` (numpy array, float32, count x 384)."""
    import numpy as np

    picks = rng.integers(0, len(centres), size=count)
    points = centres[picks] + rng.normal(0.0, spread / np.sqrt(DIMENSIONS), size=(count, DIMENSIONS))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def load(raw, data) -> float:
    """Create the scratch table and COPY ``data`` into it (binary); return seconds taken."""
    started = time.perf_counter()
    with raw.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, embedding vector({DIMENSIONS}) NOT NULL)")
        with cursor.copy(f"COPY {TABLE} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for index, vector in enumerate(data):
                copy.write_row([index, vector])
    raw.commit()
    return time.perf_counter() - started


def build_index(raw) -> float:
    started = time.perf_counter()
    with raw.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")  # the whole graph in memory: a faster build
        cursor.execute(
            f"CREATE INDEX {TABLE}_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        cursor.execute(f"ANALYZE {TABLE}")
    raw.commit()
    return time.perf_counter() - started


def search(
    raw, queries, *, k: int, exact: bool, ef_search: int | None = None, analyze: bool = False
) -> tuple[list[list[int]], list[float]]:
    """Return the ids of the ``k`` nearest rows of each query and each query's latency (ms).

    ``analyze``: also print the server-side execution time of the first query (``EXPLAIN ANALYZE``).
    """
    results, latencies = [], []
    with raw.cursor() as cursor:
        if exact:
            cursor.execute("SET enable_indexscan = off")
            cursor.execute("SET enable_bitmapscan = off")
        else:
            cursor.execute("SET enable_indexscan = on")
            cursor.execute("SET enable_seqscan = off")
            cursor.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        sql = f"SELECT id FROM {TABLE} ORDER BY embedding <=> %s LIMIT %s"  # noqa: S608 (a constant table name)
        cursor.execute("EXPLAIN " + sql, [queries[0], k])
        plan = " ".join(row[0] for row in cursor.fetchall())
        uses_index = "hnsw" in plan
        if uses_index == exact:
            raise RuntimeError(f"Unexpected plan for {'exact' if exact else 'HNSW'} search: {plan}")
        if analyze:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, [queries[0], k])
            analyzed = cursor.fetchone()[0][0]
            print(f"  server-side execution of one query: {analyzed['Execution Time']:.2f} ms", flush=True)
        for query in queries:
            started = time.perf_counter()
            cursor.execute(sql, [query, k])
            ids = [row[0] for row in cursor.fetchall()]
            latencies.append((time.perf_counter() - started) * 1000)
            results.append(ids)
        cursor.execute("RESET ALL")
    raw.commit()
    return results, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=0.6, help="noise norm relative to a centre (default 0.6)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[40, 64, 100, 200])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    django_setup(migrate=False)  # a scratch table of its own: Parley's tables are not used
    import numpy as np
    from django.db import connection
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.clusters, DIMENSIONS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = vectors(count=args.rows, centres=centres, spread=args.spread, rng=rng)
    queries = vectors(count=args.queries, centres=centres, spread=args.spread, rng=rng)

    connection.ensure_connection()
    raw = connection.connection
    raw.autocommit = False
    with raw.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
    raw.commit()
    register_vector(raw)
    try:
        load_s = load(raw, data)
        print(f"loaded {args.rows:,} vectors ({args.clusters} clusters) in {load_s:.1f} s", flush=True)
        index_s = build_index(raw)
        print(f"built the HNSW index (m=16, ef_construction=64) in {index_s:.1f} s", flush=True)
        search(raw, queries[:5], k=args.k, exact=True)  # warm the cache: the table in shared buffers
        exact_ids, exact_ms = search(raw, queries, k=args.k, exact=True, analyze=True)
        exact_p50 = statistics.median(exact_ms)
        print(f"exact scan: p50 {exact_p50:.2f} ms")
        rows = []
        for ef in args.ef_search:
            search(raw, queries[:5], k=args.k, exact=False, ef_search=ef)
            hnsw_ids, hnsw_ms = search(raw, queries, k=args.k, exact=False, ef_search=ef, analyze=True)
            recall = statistics.fmean(len(set(h) & set(e)) / len(e) for h, e in zip(hnsw_ids, exact_ids, strict=True))
            p50 = statistics.median(hnsw_ms)
            row = {
                "ef_search": ef,
                "recall": round(recall, 4),
                "p50_ms": round(p50, 3),
                "ratio": round(p50 / exact_p50, 4),
            }
            rows.append(row)
            ok = "ok" if recall >= TARGET_RECALL and p50 / exact_p50 <= TARGET_RATIO else "MISSES TARGET"
            print(
                f"hnsw ef_search={ef:<4} recall@{args.k} {recall:.4f}  p50 {p50:.2f} ms  "
                f"ratio {p50 / exact_p50:.4f}  {ok}"
            )
    finally:
        with raw.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        raw.commit()
    summary = {
        "rows": args.rows,
        "clusters": args.clusters,
        "queries": args.queries,
        "k": args.k,
        "exact_p50_ms": round(exact_p50, 3),
        "hnsw": rows,
        "targets": {"recall": TARGET_RECALL, "ratio": TARGET_RATIO},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
