"""Throughput of the compiled parameter engine vs a straightforward per-image reference.

Both compute every parameter of :data:`sharpgen.physics.PARAMETER_NAMES` on the same batch of
128x128 Br patches (Gauss) at the default patch pixel scale (0.03 deg CEA binned 2x):

* engine: ``sharpgen.physics.compute_parameters`` (numba kernels, one fused pass per map and
  stage, the loop over maps compiled too);
* reference: ``sharpgen.physics_reference.compute_parameters_reference`` (a Python loop over images, one
  scipy call per operation and image: center_of_mass, binary_dilation, label/sum_labels, ...).

The patches are random crops (random flips, 90-degree rotations, added 10 G noise) of the real
SHARP Br maps in ../shared/data/sharp binned 2x; without that folder, synthetic multi-blob active
regions. The script checks that both give the same values, then times them on one thread (BLAS
and numba), interleaved: each of ``--repeats`` rounds runs the engine and the reference back to
back, so both see the same machine load; it prints maps/s of each (median CPU process time and
wall time over the rounds) and the median of the per-round ratios. The engine's first call
(compilation, or loading numba's on-disk cache) is timed separately.

    .venv/bin/python benchmarks/bench_physics.py [--n 256] [--size 128] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen.physics import (  # noqa: E402
    PARAMETER_NAMES,
    PixelScale,
    compute_parameters,
)
from sharpgen.physics_reference import compute_parameters_reference  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sharp"


def real_patches(n: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Random crops of the real Br maps binned 2x, or None without ../shared/data."""
    files = sorted(SHARED.glob("*.Br.fits"))
    if not files:
        return None
    from sharpgen.sharp_io import read_sharp

    maps = []
    for f in files:
        d = np.nan_to_num(read_sharp(f).data.astype(np.float64))
        h, w = d.shape[0] // 2 * 2, d.shape[1] // 2 * 2
        d = d[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        if min(d.shape) >= size:
            maps.append(d)
        else:  # small region: pad with noise to the patch size
            p = rng.normal(0.0, 10.0, (max(size, d.shape[0]), max(size, d.shape[1])))
            p[: d.shape[0], : d.shape[1]] = d
            maps.append(p)
    out = np.empty((n, size, size))
    for i in range(n):
        m = maps[i % len(maps)]
        y = rng.integers(0, m.shape[0] - size + 1)
        x = rng.integers(0, m.shape[1] - size + 1)
        p = m[y : y + size, x : x + size]
        p = np.rot90(p, rng.integers(0, 4))
        if rng.random() < 0.5:
            p = p[:, ::-1]
        out[i] = p + rng.normal(0.0, 10.0, (size, size))
    return out


def synthetic_patches(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bipolar regions: a few spots per polarity plus scattered small elements and noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    out = rng.normal(0.0, 10.0, (n, size, size))
    for i in range(n):
        c = rng.uniform(0.3 * size, 0.7 * size, 2)
        sep = rng.uniform(0.1, 0.4) * size
        ang = rng.uniform(-np.pi / 4, np.pi / 4)
        for sign in (1.0, -1.0):
            cy = c[0] + sign * 0.5 * sep * np.sin(ang)
            cx = c[1] + sign * 0.5 * sep * np.cos(ang)
            for _ in range(rng.integers(1, 4)):
                oy, ox = rng.normal(0, 0.03 * size, 2)
                w = rng.uniform(1.5, 0.05 * size)
                out[i] += sign * rng.uniform(400, 2500) * np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * w * w))
        for _ in range(20):
            cy, cx = rng.uniform(0, size, 2)
            out[i] += rng.choice([-1, 1]) * rng.uniform(100, 500) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
    return out


def _single_thread():
    """BLAS (used by the reference's scipy calls) on one thread; the engine is single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def timed(fn) -> tuple[float, float, object]:
    """(process CPU s, wall s, result) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    res = fn()
    return time.process_time() - c0, time.perf_counter() - w0, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="patches per batch")
    ap.add_argument("--size", type=int, default=128, help="patch side [px]")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (engine, reference)")
    ap.add_argument("--ref-n", type=int, default=None,
                    help="patches the reference times per round (default: all; fewer is quicker, "
                         "the rate is per map either way)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    patches = real_patches(args.n, args.size, rng)
    source = "real SHARP crops (binned 2x)"
    if patches is None:
        patches = synthetic_patches(args.n, args.size, rng)
        source = "synthetic bipolar regions"
    scale = PixelScale.cea(0.03, bin_factor=2)
    n = args.n
    nref = min(n, args.ref_n or n)

    with _single_thread():
        first_cpu, first_wall, _ = timed(lambda: compute_parameters(patches[:2], scale))
        compute_parameters_reference(patches[:2], scale)
        fast = compute_parameters(patches, scale)
        ref = compute_parameters_reference(patches, scale)
        rounds = []
        for _ in range(args.repeats):
            e_cpu, e_wall, _ = timed(lambda: compute_parameters(patches, scale))
            r_cpu, r_wall, _ = timed(lambda: compute_parameters_reference(patches[:nref], scale))
            rounds.append((e_cpu / n, e_wall / n, r_cpu / nref, r_wall / nref))
    per = np.array(rounds)  # seconds per map: engine cpu, engine wall, reference cpu, reference wall

    a, b = fast.to_numpy(), ref.to_numpy()
    both_nan = np.isnan(a) & np.isnan(b)
    rel = np.where(both_nan, 0.0, np.abs(a - b) / np.maximum(np.abs(b), 1e-300))
    worst = {k: float(np.nanmax(rel[:, j])) for j, k in enumerate(PARAMETER_NAMES)}
    if not (np.array_equal(np.isnan(a), np.isnan(b)) and max(worst.values()) < 1e-9):
        print(f"MISMATCH between engine and reference results: {worst}", file=sys.stderr)
        return 1

    med = np.median(per, axis=0)
    ratio_cpu = per[:, 2] / per[:, 0]
    ratio_wall = per[:, 3] / per[:, 1]
    res = {
        "patches": n,
        "size": args.size,
        "source": source,
        "parameters": list(PARAMETER_NAMES),
        "repeats": args.repeats,
        "engine_maps_per_s_cpu": 1.0 / med[0],
        "reference_maps_per_s_cpu": 1.0 / med[2],
        "engine_maps_per_s_wall": 1.0 / med[1],
        "reference_maps_per_s_wall": 1.0 / med[3],
        "speedup_cpu": float(np.median(ratio_cpu)),
        "speedup_cpu_range": [float(ratio_cpu.min()), float(ratio_cpu.max())],
        "speedup_wall": float(np.median(ratio_wall)),
        "first_call_s_wall": first_wall,
        "max_rel_diff": max(worst.values()),
    }
    print(f"physics parameters: {n} patches {args.size}x{args.size} ({source}), {len(PARAMETER_NAMES)} parameters, "
          f"one thread, {args.repeats} interleaved rounds (medians)")
    print(f"  engine      {res['engine_maps_per_s_cpu']:9.1f} maps/s CPU  {res['engine_maps_per_s_wall']:9.1f} maps/s wall"
          f"  ({1e6 * med[0]:.1f} us/map CPU)")
    print(f"  reference   {res['reference_maps_per_s_cpu']:9.1f} maps/s CPU  {res['reference_maps_per_s_wall']:9.1f} maps/s wall"
          f"  ({1e6 * med[2]:.1f} us/map CPU)")
    print(f"  speed-up    {res['speedup_cpu']:9.2f} x CPU      {res['speedup_wall']:9.2f} x wall"
          f"   (per-round CPU ratios {ratio_cpu.min():.1f}-{ratio_cpu.max():.1f})")
    print(f"  engine's first call (compile or load numba's cache): {first_wall:.2f} s wall")
    print(f"  results agree: max relative difference {res['max_rel_diff']:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
