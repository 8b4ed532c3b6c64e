"""Where the parameters' non-linear part lives in the latent (issue 19 diagnostic).

On a finished pipeline run (its generator, patch store, samples and boundaries), for each
polarity-even parameter, in fit space and on the latents the boundaries were fitted on (folded
across the lead_sign boundary when the run folded):

* ``linear`` / ``mlp``: validation R^2 of a linear fit and of a small MLP on the run's samples
  (:func:`sharpgen.directions.linearity.linear_and_mlp_r2`);
* ``grain_share``: the share of the variance the grain's white map carries at a fixed latent --
  ``--grain-latents`` latents, each generated with its own map and ``--grain-draws - 1`` others
  (the map of a randomly rotated copy of z: another white map, the rest of the generator unchanged);
  ``linear_grain_mean``: the linear R^2 of the map-averaged value on the same latents, beside
  ``linear_one_draw`` (these are on fewer rows than ``linear``, hence lower);
* ``step_ratio``: median change after a step of 0.5 over that after 0.05 along random unit
  directions (10 for a parameter smooth in z, 1 for one that jumps).

Not a benchmark (not run by ``make bench``); ~5 minutes on one CPU thread with the defaults.

    .venv/bin/python benchmarks/diagnose_linearity.py results
    .venv/bin/python benchmarks/diagnose_linearity.py results --json linearity.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen.directions.geometry import fold_latents  # noqa: E402
from sharpgen.directions.linearity import grain_variance_share, linear_and_mlp_r2, step_ratio  # noqa: E402
from sharpgen.gan import load_generator  # noqa: E402
from sharpgen.gan.layers import projected_noise  # noqa: E402
from sharpgen.measure import MeasurementContext, generate_and_measure  # noqa: E402
from sharpgen.parameters import to_defined_fit_space as fit_values  # noqa: E402
from sharpgen.sampling import read_latents  # noqa: E402
from sharpgen.store import PatchStore  # noqa: E402

PARAMS = ("tuf", "psep", "psep_robust", "r_value", "r_paper")


@contextlib.contextmanager
def rotated_grain(G, rotation: torch.Tensor):
    """Within the block G draws its grain's white map from ``z @ rotation.T`` instead of z."""
    def speckle_map(z):
        return projected_noise(z @ rotation.T.to(z.dtype), G.speckle_proj, G.size)
    G.speckle_map = speckle_map  # an instance attribute shadows the method
    try:
        yield G
    finally:
        del G.speckle_map


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a pipeline's results/ folder")
    ap.add_argument("--grain-latents", type=int, default=1000)
    ap.add_argument("--grain-draws", type=int, default=4)
    ap.add_argument("--step-latents", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = a.results
    G = load_generator(r / "gan" / "generator.pt")
    store = PatchStore.open(r / "data" / "patches.zarr", r / "data" / "patches.parquet")
    ctx = MeasurementContext.from_store(store)
    b = np.load(r / "directions" / "boundaries.npz", allow_pickle=True)
    space = str(b["space"]) if "space" in b else "z"
    if space != "z":
        raise SystemExit(f"{r}: boundaries fitted in {space}; this diagnostic handles z only")
    z, table = read_latents(r / "samples" / "latents.parquet")
    fold = b["fold_normal"].astype(np.float64).ravel() if "fold_normal" in b else np.zeros(1)
    fold = fold / np.linalg.norm(fold) if np.linalg.norm(fold) > 0 else None
    params = [p for p in PARAMS if p in table]
    out: dict = {"results": str(r), "folded": fold is not None, "parameters": {}}

    def measure(codes):
        return generate_and_measure(G, codes, ctx, batch_size=250, keep_images=False)[1]

    zf = fold_latents(z, fold)[0]
    for p in list(params):
        try:
            out["parameters"][p] = linear_and_mlp_r2(zf, fit_values(p, table[p]))
        except ValueError as e:  # e.g. a generator whose R is 0 everywhere ("no R")
            out.setdefault("skipped", {})[p] = str(e)
            params.remove(p)
            continue
        print(p, "linear / mlp", out["parameters"][p], flush=True)

    if getattr(G, "speckle", "none") != "none":
        n = min(a.grain_latents, len(z))
        zg = z[:n]
        draws = [measure(zg)]
        for k in range(1, a.grain_draws):
            q = torch.linalg.qr(torch.randn(G.nz, G.nz, generator=torch.Generator().manual_seed(k)))[0]
            with rotated_grain(G, q):
                draws.append(measure(zg))
        zgf = fold_latents(zg, fold)[0]
        for p in params:
            vals = np.stack([fit_values(p, d[p]) for d in draws], axis=1)
            full = np.isfinite(vals).all(axis=1)
            try:
                out["parameters"][p].update(
                    grain_share=grain_variance_share(vals),
                    linear_one_draw=linear_and_mlp_r2(zgf, np.where(full, vals[:, 0], np.nan), mlp=False)["linear"],
                    linear_grain_mean=linear_and_mlp_r2(zgf, np.where(full, vals.mean(axis=1), np.nan), mlp=False)["linear"])
            except ValueError as e:
                out.setdefault("skipped", {})[f"{p} grain"] = str(e)
                continue
            print(p, "grain", {k: out["parameters"][p][k] for k in ("grain_share", "linear_one_draw", "linear_grain_mean")}, flush=True)

    n = min(a.step_latents, len(z))
    u = np.random.default_rng(1).standard_normal((n, z.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    base, small, large = (measure(z[:n] + s * u) for s in (0.0, 0.05, 0.5))
    for p in params:
        try:
            out["parameters"][p]["step_ratio"] = step_ratio(*(fit_values(p, t[p]) for t in (base, small, large)))
        except ValueError as e:
            out.setdefault("skipped", {})[f"{p} step"] = str(e)
    print("step ratio (0.5 / 0.05)", {p: out["parameters"][p].get("step_ratio") for p in params})
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
