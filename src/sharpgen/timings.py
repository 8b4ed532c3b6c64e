"""Print per-rule wall-clock timings from Snakemake ``benchmark:`` files.

Usage: ``python -m sharpgen.timings results/benchmarks``
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def read_timings(bench_dir: str | Path) -> pd.Series:
    """Seconds per rule (file stem), from Snakemake benchmark TSVs below ``bench_dir``."""
    rows = {}
    for tsv in sorted(Path(bench_dir).rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        if "s" in df.columns and len(df):
            rows[str(tsv.relative_to(bench_dir).with_suffix(""))] = float(df["s"].iloc[-1])
    return pd.Series(rows, name="seconds", dtype=float)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_dir = Path(argv[0] if argv else "results/benchmarks")
    t = read_timings(bench_dir)
    if t.empty:
        print(f"no benchmark files under {bench_dir}")
        return 0
    width = max(len(k) for k in t.index)
    print("per-rule wall-clock time (s)")
    for rule, sec in t.sort_values(ascending=False).items():
        print(f"  {rule:<{width}}  {sec:8.1f}")
    print(f"  {'total':<{width}}  {t.sum():8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
