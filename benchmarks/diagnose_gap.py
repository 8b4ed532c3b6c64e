"""Where the labelled gap of the flux-R pairs comes from (issue 19 diagnostic).

On a finished pipeline run whose generator has a latent structure with r_value
(``gan.structure``; boundaries fitted in z), for each flux (tuf, tpf, tnf) against r_value:
the cosine of the two boundary normals (the gap's first term), each normal's cosine with the
structure's axes (does the flux's normal lean towards R's axis?), and the flux's labelled
Spearman correlation with R step by step from R's latent axis to the pipeline's R
(:func:`sharpgen.directions.linearity.correlation_chain`): the ties of R = 0, where they fall,
R's scatter about its axis. Then, for each parameter of the structure, how closely the
pipeline's parameter follows its own axis (:func:`sharpgen.directions.linearity.axis_fit`) and
its term of the structure loss on the first ``--terms`` generated images
(:func:`sharpgen.gan.structure.structure_terms`; before the factors and the weight). Reads
``gan/generator.pt``, ``samples/latents.parquet``, ``samples/generated.zarr`` and
``directions/boundaries.npz``; seconds (a minute for the loss terms).

    .venv/bin/python benchmarks/diagnose_gap.py results [more results folders] [--terms 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sharpgen.directions.linearity import axis_fit, correlation_chain  # noqa: E402
from sharpgen.gan.structure import LatentStructure, structure_terms  # noqa: E402
from sharpgen.sampling import read_latents  # noqa: E402


def diagnose(results: Path, n_terms: int = 2000) -> list[str]:
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
    z = np.asarray(z, dtype=np.float64)
    fits = {n: axis_fit(table[n], z @ axes[k]) for k, n in enumerate(names) if n in table}
    lines.append("  fit to its own axis (Pearson, normal score): "
                 + ", ".join(f"{n} {v:.3f}" for n, v in fits.items()))
    images = results / "samples" / "generated.zarr"
    if n_terms > 0 and images.exists():
        import zarr

        n = min(n_terms, len(z))
        x = torch.from_numpy(np.asarray(zarr.open_group(str(images), mode="r")["images"][:n],
                                        dtype=np.float32))[:, None]
        structure = LatentStructure.from_dict(st)
        terms = structure_terms(x, torch.from_numpy(z[:n]).float(), structure)
        lines.append(f"  structure loss terms on {n} samples (before factors "
                     f"{dict(zip(names, structure.parameter_weights.tolist()))}): "
                     + ", ".join(f"{nm} {t:.3f}" for nm, t in zip(names, terms)))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="pipeline results/ folder(s)")
    ap.add_argument("--terms", type=int, default=2000,
                    help="generated images for the structure loss terms (0 = skip; default 2000)")
    args = ap.parse_args(argv)
    for r in args.results:
        print("\n".join(diagnose(r, args.terms)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
