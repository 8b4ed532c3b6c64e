"""Paper scale, simulated (issue 16.3): time per record and peak memory of each stage vs N.

For each N in ``--sizes`` (default 1000 4000 16000; ``--quick``: 100 200 400) the script runs,
on N synthetic SHARP-like records, each stage in a fresh subprocess (so its peak RSS is its own):

* ``synthesize`` -- sharpgen.synthetic.synthesize: N records (N/4 regions x 4 frames) as
  RICE-compressed FITS + manifest, one worker;
* ``patches``    -- sharpgen.patches.make_patches with the default ``patches`` config: every
  record read, binned, cropped, clipped, measured (compute_parameters, one chunk of 64 at a time)
  and streamed into the Zarr store + Parquet table;
* ``parameters`` -- the parameters of every stored patch again, reading the store in chunks of
  1024 (what sampling / calibration / retrieval do with generated or augmented patches);
* ``embed``      -- sharpgen.embed.run_embed with an untrained encoder of the default ``ssl``
  architecture (same cost as the trained one), reading the store in chunks;
* ``retrieval``  -- exact top-5 cosine search (sharpgen.retrieval.topk_cosine) of 1000 query
  embeddings against all N (the evaluation's query count is fixed, so it is linear in N).
* ``evaluate``   -- the whole retrieval evaluation (sharpgen.retrieval.run_evaluation, rule
  evaluate_retrieval, default ``retrieval`` config): 1000 generated queries (stand-ins: the first
  1000 patches) and 500 augmented real ones against the database by SimSiam and the parameter
  baselines, self-retrieval, and the memorisation check against every training patch (streamed).

``synthesize`` runs at every N; the other stages at each N read the first N records of the
largest N's set (a prefix), so what differs between two N is the number of records, not which
records were drawn (the largest record sets a stage's peak RSS, and would otherwise move it by
tens of MB from one N to the next). ``--records DIR`` skips ``synthesize`` and uses the records
of an earlier run (e.g. to compare two versions of the code on the same records);
``--patch-workers K`` runs the patches stage with K worker processes.

It prints, per stage, wall and CPU seconds per record and the peak RSS at each N, then least
squares fits ``time = a + b N`` and ``peak RSS = c + d N`` with their extrapolations to 44k
(the paper's data set) and 1M records. ``import`` alone (the ``baseline`` row: numpy, pandas,
torch, zarr, sharpgen) is measured the same way, so a stage's own memory is its peak minus it.
On a shared machine the times are noisy: compare the fits' slopes, not single numbers.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000 4000 16000] [--quick]
        [--records DIR] [--patch-workers K] [--workdir DIR] [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

STAGES = ("synthesize", "patches", "parameters", "embed", "retrieval", "evaluate")
DATA_STAGES = ("synthesize", "patches", "parameters")
N_QUERIES = 1000
#: the evaluate stage needs held-out (val, test) patches: it is skipped below this many records
EVALUATE_MIN_N = 40
EXTRAPOLATE = (44_000, 1_000_000)


# --------------------------------------------------------------------------------------------
# one stage (runs in its own process)
# --------------------------------------------------------------------------------------------
def _imports():
    import pandas  # noqa: F401
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import sharpgen.embed  # noqa: F401
    import sharpgen.patches  # noqa: F401
    import sharpgen.physics  # noqa: F401
    import sharpgen.retrieval  # noqa: F401


def run_stage(stage: str, n: int, d: Path, patch_workers: int = 1) -> dict:
    import torch

    torch.set_num_threads(1)
    _imports()

    from sharpgen.config import section

    c0, w0 = time.process_time(), time.perf_counter()
    out: dict = {}
    if stage == "baseline":
        from sharpgen import physics_kernels, rvalue

        physics_kernels._jit()
        rvalue._jit()
    elif stage == "synthesize":
        from sharpgen.synthetic import synthesize

        m = synthesize(d / "records", n_regions=-(-n // 4), frames_per_region=4, seed=0, workers=1,
                       progress=False).head(n)
        m.to_csv(d / "records.tsv", sep="\t", index=False)
        out["records"] = len(m)
    elif stage == "patches":
        from sharpgen.data import read_manifest
        from sharpgen.patches import make_patches

        m = read_manifest(d / "records.tsv")
        kw = {"workers": patch_workers} if patch_workers != 1 else {}  # (older versions: no workers)
        s = make_patches(m, section("patches", {}), d / "patches.zarr", d / "patches.parquet",
                         d / "patches_summary.json", progress=False, **kw)
        out["patches"] = s["n_patches"]
    elif stage == "parameters":
        from sharpgen.physics import compute_parameters
        from sharpgen.store import PatchStore

        st = PatchStore.open(d / "patches.zarr", d / "patches.parquet")
        scale = st.scale()
        clip = st.clip_gauss
        for lo in range(0, st.n, 1024):
            rows = np.arange(lo, min(st.n, lo + 1024))
            p = compute_parameters(clip * st.read(rows).astype(np.float64), scale.select(rows))
        out["last_tuf"] = float(p["tuf"].iloc[-1])
    elif stage == "embed":
        from sharpgen.embed import run_embed
        from sharpgen.ssl import SimSiam, arch_from_config, save_encoder

        torch.manual_seed(0)
        model = SimSiam(arch_from_config(section("ssl", {})))
        save_encoder(d / "encoder.pt", model, {"size": int(section("patches", {})["size"])})
        emb = run_embed(d / "encoder.pt", d / "patches.zarr", d / "patches.parquet", d / "embeddings.npz",
                        threads=1, device="cpu")
        out["dim"] = int(emb.shape[1])
    elif stage == "retrieval":
        from sharpgen.embed import load_embeddings
        from sharpgen.retrieval import topk_cosine

        emb = load_embeddings(d / "embeddings.npz")["embeddings"]
        q = emb[: min(N_QUERIES, len(emb))]
        s, i = topk_cosine(q, emb, k=5, normalized=True)  # the store is l2-normalised, as the stages use it
        out["queries"] = int(len(q))
    elif stage == "evaluate":
        from sharpgen.parameters import PARAMETER_NAMES
        from sharpgen.retrieval import run_evaluation
        from sharpgen.sampling import write_images, write_latents
        from sharpgen.store import PatchStore

        # stand-ins for the generated images: the first N_QUERIES patches with their table's
        # parameters (the stage's cost does not depend on what the images show); the encoder and
        # embeddings are the embed stage's
        st = PatchStore.open(d / "patches.zarr", d / "patches.parquet")
        ng = min(N_QUERIES, st.n)
        write_images(d / "generated.zarr", st.read(np.arange(ng)))
        write_latents(d / "latents.parquet", np.zeros((ng, 100), np.float32),
                      st.table_rows(np.arange(ng), columns=list(PARAMETER_NAMES)))
        del st
        res, matches = run_evaluation(d / "encoder.pt", d / "embeddings.npz", d / "patches.zarr",
                                      d / "patches.parquet", d / "generated.zarr", d / "latents.parquet",
                                      section("retrieval", {}))
        out["matches"] = int(len(matches))
        out["memorisation_ratio"] = res["memorisation"]["pixels_gauss"]["ratio_generated_to_heldout"]
    else:
        raise ValueError(stage)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes (patches --patch-workers)
    out["cpu_s"] = time.process_time() - c0 + kids.ru_utime + kids.ru_stime
    out["wall_s"] = time.perf_counter() - w0
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    if kids.ru_maxrss:
        out["worker_maxrss_mb"] = kids.ru_maxrss / 1024.0  # the largest worker
    return out


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def _child(stage: str, n: int, d: Path, patch_workers: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__, "--stage", stage, "--n", str(n), "--dir", str(d),
                        "--patch-workers", str(patch_workers)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"stage {stage} at N={n} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def linear_fit(x, y) -> tuple[float, float, float]:
    """(intercept, slope, R^2) of the least-squares line y = a + b x."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    b, a = np.polyfit(x, y, 1)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - (a + b * x)) ** 2).sum()) / ss if ss > 0 else 1.0
    return float(a), float(b), r2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--quick", action="store_true", help="small N (100 200 400): a smoke run")
    ap.add_argument("--workdir", type=Path, default=None, help="where the records and stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None,
                    help="print the fits of a saved --json run again (no measurement)")
    ap.add_argument("--records", type=Path, default=None,
                    help="a folder with records.tsv of >= max N synthesized records (e.g. the --dir of a "
                         "'--stage synthesize' run): skip the synthesize stage and use its first N records")
    ap.add_argument("--patch-workers", type=int, default=1, help="worker processes of the patches stage")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:  # child process: one stage
        print(json.dumps(run_stage(args.stage, args.n, args.dir, args.patch_workers)))
        return 0
    if args.from_json:
        summarise(json.loads(args.from_json.read_text()))
        return 0

    sizes = sorted(args.sizes or ([100, 200, 400] if args.quick else [1000, 4000, 16000]))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sharpgen-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"sizes": sizes, "stages": {}, "baseline": None, "patch_workers": args.patch_workers}

    def run(stage: str, n: int, d: Path) -> None:
        r = _child(stage, n, d, args.patch_workers)
        results["stages"].setdefault(stage, []).append({"n": n, **r})
        print(f"  N={n:>7} {stage:<10} wall {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  "
              f"{1e3 * r['cpu_s'] / n:7.2f} ms/record (cpu)  peak RSS {r['maxrss_mb']:7.0f} MB", flush=True)

    def fresh(d: Path) -> Path:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        return d

    records = args.records
    try:
        results["baseline"] = _child("baseline", 0, work)
        print(f"baseline (imports + compiled kernels loaded): peak RSS {results['baseline']['maxrss_mb']:.0f} MB",
              flush=True)
        if records is None:
            # synthesize at every N (its own time and memory); the other stages at each N read
            # the first N records of the largest set, so a smaller N's records are a prefix of a
            # larger N's and peak memory is not moved by which records happen to be drawn
            for n in sizes:
                d = fresh(work / f"synthesized{n}")
                run("synthesize", n, d)
                if n != sizes[-1] and not args.keep:
                    shutil.rmtree(d)
            records = work / f"synthesized{sizes[-1]}"
        from sharpgen.data import read_manifest

        manifest = read_manifest(records / "records.tsv")
        if len(manifest) < sizes[-1]:
            raise SystemExit(f"{records / 'records.tsv'} lists {len(manifest)} records, fewer than N = {sizes[-1]}")
        for n in sizes:
            d = fresh(work / f"n{n}")
            manifest.head(n).to_csv(d / "records.tsv", sep="\t", index=False)
            for stage in STAGES[1:]:
                if stage == "evaluate" and n < EVALUATE_MIN_N:
                    print(f"  N={n:>7} {stage:<10} skipped (fewer than {EVALUATE_MIN_N} records: no held-out split)")
                    continue
                run(stage, n, d)
            if not args.keep:
                shutil.rmtree(d)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    summarise(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def summarise(results: dict) -> None:
    """Fits (time and peak RSS vs N), extrapolations and the flat-memory verdict, printed and
    stored in ``results["fits"]``. The verdict uses the *marginal* memory slope between the two
    largest N: below one chunk (1024-2048 patches, 64 MB score blocks) a stage's memory grows
    while its chunk fills, which a fit over all N would extrapolate as if it went on."""
    sizes = results["sizes"]
    base = results["baseline"]["maxrss_mb"]
    if len(sizes) < 2:
        print("one size only: no fits")
        return
    print(f"\nfits over N = {sizes} (time = a + b N, peak RSS = c + d N); extrapolated to "
          + ", ".join(f"{e:,}" for e in EXTRAPOLATE))
    print(f"  {'stage':<10} {'cpu ms/rec':>10} {'R^2':>6} {'RSS MB':>7} {'RSS MB/1k rec':>13}   "
          + "   ".join(f"N={e:<9,} cpu h / RSS GB" for e in EXTRAPOLATE))
    results["fits"] = {}
    stages = [s for s in STAGES if s in results["stages"]]
    for stage in stages:
        rows = results["stages"][stage]
        ns = [r["n"] for r in rows]
        a, b, r2 = linear_fit(ns, [r["cpu_s"] for r in rows])
        aw, bw, r2w = linear_fit(ns, [r["wall_s"] for r in rows])
        c, dm, _ = linear_fit(ns, [r["maxrss_mb"] for r in rows])
        ext = {e: {"cpu_h": (a + b * e) / 3600.0, "wall_h": (aw + bw * e) / 3600.0,
                   "rss_gb": (c + dm * e) / 1024.0} for e in EXTRAPOLATE}
        results["fits"][stage] = {"cpu_intercept_s": a, "cpu_s_per_record": b, "cpu_r2": r2,
                                  "wall_intercept_s": aw, "wall_s_per_record": bw, "wall_r2": r2w,
                                  "rss_intercept_mb": c, "rss_mb_per_record": dm,
                                  "rss_above_baseline_mb": [r["maxrss_mb"] - base for r in rows],
                                  "rss_mb_per_record_marginal": _marginal(rows),
                                  "extrapolated": {str(k): v for k, v in ext.items()}}
        print(f"  {stage:<10} {1e3 * b:10.2f} {r2:6.3f} {c:7.0f} {1e3 * dm:13.2f}   "
              + "   ".join(f"{ext[e]['cpu_h']:8.2f} h / {ext[e]['rss_gb']:6.2f} GB      " for e in EXTRAPOLATE))
    print(f"  marginal peak-RSS slope between N = {sizes[-2]:,} and {sizes[-1]:,} [MB per 1k records]: "
          + ", ".join(f"{s} {1e3 * results['fits'][s]['rss_mb_per_record_marginal']:.1f}" for s in stages))
    flat = all(results["fits"][s]["rss_mb_per_record_marginal"] * 1e6 / 1024 < 1.0 for s in DATA_STAGES if s in stages)
    results["data_stages_memory_flat"] = flat
    print(f"  data stages' peak RSS flat in N (marginal slope: < 1 GB more at 1M records): "
          f"{'yes' if flat else 'NO'}")
    dims = [r.get("dim") for r in results["stages"]["embed"] if r.get("dim")]
    if dims:
        # embed holds the (N, d) float32 matrix it fills, retrieval the loaded store; a search
        # also holds one score block (queries x min(N, 65536) float32, <= 64 MB) that keeps
        # growing with N until N = 16,384 for 1000 queries; evaluate also holds the training and
        # held-out rows' embeddings (copies) and the parameter columns of the table
        emb_kb = 4 * dims[0] / 1e3
        results["embedding_kb_per_record"] = emb_kb
        print(f"  embedding matrix: {emb_kb:.2f} KB per record (d = {dims[0]}, float32); marginal slope / matrix: "
              + ", ".join(f"{s} {results['fits'][s]['rss_mb_per_record_marginal'] * 1e3 / emb_kb:.1f}x"
                          for s in ("embed", "retrieval", "evaluate") if s in results["fits"])
              + f" (retrieval's score block fills until N = {2**24 // N_QUERIES:,})")


def _marginal(rows: list[dict]) -> float:
    """Peak-RSS slope [MB per record] between the two largest N of ``rows``."""
    (n0, m0), (n1, m1) = [(r["n"], r["maxrss_mb"]) for r in sorted(rows, key=lambda r: r["n"])[-2:]]
    return (m1 - m0) / (n1 - n0)


if __name__ == "__main__":
    sys.exit(main())
