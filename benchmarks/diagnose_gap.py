"""Where the labelled gap of the flux-R pairs comes from (issue 19 diagnostic).

On a finished pipeline run whose generator has a latent structure with r_value
(``gan.structure``; boundaries fitted in z), for each flux (tuf, tpf, tnf) against r_value:
the cosine of the two boundary normals (the gap's first term), each normal's cosine with the
structure's axes (does the flux's normal lean towards R's axis?), and the flux's labelled
Spearman correlation with R step by step from R's latent axis to the pipeline's R
(:func:`sharpgen.directions.linearity.correlation_chain`): the ties of R = 0, where they fall,
R's scatter about its axis. Reads ``gan/generator.pt``, ``samples/latents.parquet`` and
``directions/boundaries.npz``; seconds.

    .venv/bin/python benchmarks/diagnose_gap.py results [more results folders]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen.directions.linearity import correlation_chain  # noqa: E402
from sharpgen.sampling import read_latents  # noqa: E402


def diagnose(results: Path) -> list[str]:
    st = torch.load(results / "gan" / "generator.pt", map_location="cpu", weights_only=False).get("structure")
    if not st or "r_value" not in st["names"]:
        raise SystemExit(f"{results}: the generator has no latent structure with r_value (gan.structure)")
    axes, names = np.asarray(st["axes"], dtype=np.float64), list(st["names"])
    b = np.load(results / "directions" / "boundaries.npz", allow_pickle=True)
    if ("space" in b and str(b["space"]) != "z") or ("folded" in b and np.any(b["folded"])):
        raise SystemExit(f"{results}: boundaries not fitted on unfolded z; this diagnostic handles z only")
    normal = dict(zip((str(n) for n in b["names"]), b["normals"].astype(np.float64)))
    if "r_value" not in normal:
        raise SystemExit(f"{results}: no r_value boundary (directions.parameters)")
    z, table = read_latents(results / "samples" / "latents.parquet")
    a_r = axes[names.index("r_value")]
    u_r = np.asarray(z, dtype=np.float64) @ a_r
    lines = [f"{results}: cos(n_r_value, axis_r_value) {normal['r_value'] @ a_r:.3f}"]
    for flux in ("tuf", "tpf", "tnf"):
        if flux not in normal or flux not in table:
            continue
        c = correlation_chain(table[flux], table["r_value"], u_r)
        cos = float(normal[flux] @ normal["r_value"])
        lines.append(
            f"  {flux}-r_value: cos(normals) {cos:.3f}, cos(n_{flux}, axis_r_value) {normal[flux] @ a_r:.3f} | "
            f"Spearman of {flux} with u_R {c['axis']:.3f} -> tied lowest {c['share']:.2f} {c['axis_tied_lowest']:.3f} "
            f"-> tied where R = 0 {c['axis_tied_observed']:.3f} -> R {c['parameter']:.3f} | gap {cos - c['parameter']:.3f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="pipeline results/ folder(s)")
    for r in ap.parse_args(argv).results:
        print("\n".join(diagnose(r)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
