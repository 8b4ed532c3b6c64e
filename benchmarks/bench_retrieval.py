"""Exact top-k retrieval throughput (queries/s) for 100-d embeddings.

Compares, in one run and on the same random unit vectors:
  * sharpgen  -- sharpgen.retrieval.topk_cosine (chunked torch matmul + topk, exact, ties fixed)
  * numpy     -- brute force: the full (Q, N) score matrix, then argpartition + a sort of the k
                 best of every row (warmed up, best of 2 runs, like the others)
  * faiss     -- faiss.IndexFlatIP (exact inner product), only if `faiss` imports
                 (optional extra: pip install 'sharpgen[bench]' / faiss-cpu)
and checks that every method returns the same top-k indices.

Usage: python benchmarks/bench_retrieval.py [--sizes 10000 100000 1000000] [--queries 1000]
       [--k 5] [--threads 2] [--json out.json]
Runs in about a minute on 2 CPU cores (the numpy brute force uses fewer queries at large N).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sharpgen.retrieval import topk_cosine  # noqa: E402


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn, repeat: int = 1):
    """(best wall-clock seconds over ``repeat`` runs, result of the last run)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def numpy_brute(q: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """A fair numpy reference: one BLAS matmul, then ``argpartition`` (O(N)) for the k best of
    each row and a sort of those k only (ties towards the lower index, like sharpgen)."""
    s = q @ db.T
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--brute-budget", type=float, default=5e7,
                    help="max Q*N score entries for the numpy brute force (fewer queries at large N)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        faiss_version = faiss.__version__
    except ImportError:
        faiss = None
        faiss_version = None
    rng = np.random.default_rng(0)
    print(f"exact top-{args.k}, d={args.dim}, {args.threads} threads, torch {torch.__version__}, "
          f"faiss {faiss_version or 'NOT AVAILABLE (pip install faiss-cpu)'}")
    print(f"{'N':>9} {'Q':>5} {'sharpgen q/s':>13} {'numpy q/s':>11} {'faiss q/s':>11} "
          f"{'vs numpy':>9} {'vs faiss':>9}  same")
    rows = []
    for n in args.sizes:
        db = unit(rng, n, args.dim)
        q = unit(rng, args.queries, args.dim)
        topk_cosine(q[:8], db, args.k, normalized=True)  # warm-up (threads, allocator)
        t_s, (i_s, _) = timed(lambda db=db: topk_cosine(q, db, args.k, normalized=True), repeat=2)
        qb = max(1, min(args.queries, int(args.brute_budget // n)))
        numpy_brute(q[:8], db, args.k)  # warm-up, as for the others
        t_b, i_b = timed(lambda db=db: numpy_brute(q[:qb], db, args.k), repeat=2)
        same = bool(np.array_equal(i_b, i_s[:qb]))
        row = {"n": n, "queries": args.queries, "sharpgen_qps": args.queries / t_s,
               "numpy_queries": qb, "numpy_qps": qb / t_b}
        if faiss is not None:
            index = faiss.IndexFlatIP(args.dim)
            index.add(db)
            index.search(q[:8], args.k)
            t_f, (_, i_f) = timed(lambda: index.search(q, args.k), repeat=2)
            row["faiss_qps"] = args.queries / t_f
            same = same and bool(np.array_equal(i_f, i_s))
            del index
        row["same_results"] = same
        rows.append(row)
        fq = row.get("faiss_qps")
        faiss_col = f"{fq:.0f}" if fq else "-"
        vs_faiss = f"{row['sharpgen_qps'] / fq:.2f}x" if fq else "-"
        vs_numpy = f"{row['sharpgen_qps'] / row['numpy_qps']:.1f}x"
        print(f"{n:>9} {args.queries:>5} {row['sharpgen_qps']:>13.0f} {row['numpy_qps']:>11.0f} "
              f"{faiss_col:>11} {vs_numpy:>9} {vs_faiss:>9}  {same}")
        del db
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "k": args.k, "dim": args.dim,
                                         "faiss": faiss_version, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
