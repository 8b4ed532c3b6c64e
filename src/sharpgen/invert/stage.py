"""Rule ``invert_real``: invert held-out real patches and score the reconstructions.

rules/invert.smk -> workflow_scripts/invert_real.py -> :func:`run_invert_real`. A seeded subset
of ``invert.n_patches`` patches of ``invert.split`` (default ``heldout`` = val + test: neither
network saw them) is inverted (:func:`sharpgen.invert.invert`); every reconstruction is measured
like every generated image (:func:`sharpgen.measure.measure` at the patch store's scale) and
compared with the real patch's parameters from patches.parquet:

* pixel error: RMS difference in Gauss and relative L2 error ``||G(c*) - x|| / ||x||``;
* Pearson / Spearman per parameter in fit space (:func:`sharpgen.retrieval.correlations`:
  log10 fluxes, r_value only where both are non-zero);
* the share of patches within the edit bound ``invert.max_rel_error`` (what ``sharpgen edit``
  accepts).

Outputs (``results/invert/``): ``inversion.json`` (the summary above, settings, timings),
``inversions.parquet`` (one row per patch: ``row``, ``harpnum``, ``t_rec``, ``split``, errors,
``restart``, ``real_<p>`` / ``rec_<p>`` per parameter, ``code``) and ``reconstructions.npz``
(``real``, ``reconstruction`` (N, S, S) in [-1, 1], ``row``, ``clip_gauss``) for the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from sharpgen.config import section
from sharpgen.invert.optimise import InvertSettings, codes_from_z, invert, nearest_inits, resolve_space
from sharpgen.parameters import PARAMETER_NAMES, REQUESTABLE

logger = logging.getLogger(__name__)

#: headline targets on the default configuration: Pearson (fit space) real vs reconstruction
TARGETS = {"tuf": 0.90, "r_value": 0.70, "psep": 0.60}


def invert_config(cfg: Mapping[str, Any] | None) -> dict:
    """The ``invert`` section with its schema defaults filled in."""
    return section("invert", cfg)


def select_rows(store, split: str, n: int, seed: int) -> np.ndarray:
    """Sorted seeded subset (at most ``n``) of the rows of ``split`` in the patch store."""
    from sharpgen.seeds import stream

    rows = store.rows(split)
    if len(rows) > n:
        rows = np.sort(stream(seed, "inversion_patches").choice(rows, size=n, replace=False))
    return rows


def init_pool(G, space: str, generated_zarr, latents_path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, S, S), codes (M, D)) of a seeded subset of at most ``n`` generated samples
    (generated.zarr row i is latents.parquet row i)."""
    from sharpgen.sampling import read_latents
    from sharpgen.seeds import stream
    from sharpgen.store import image_count, read_images

    z, _ = read_latents(latents_path)
    m = image_count(generated_zarr)
    if m != len(z):
        raise ValueError(f"{generated_zarr} has {m} images but {latents_path} {len(z)} latents")
    idx = np.arange(m) if m <= n else np.sort(stream(seed, "inversion_pool").choice(m, size=n, replace=False))
    return read_images(generated_zarr, idx), codes_from_z(G, np.asarray(z)[idx], space)


def summarise(real: pd.DataFrame, rec: pd.DataFrame, inv, clip_gauss: float, max_rel_error: float) -> dict:
    """The inversion.json numbers for real vs reconstructed parameters and pixel errors."""
    from sharpgen.retrieval import correlations

    rms = inv.rms_gauss(clip_gauss)
    corr = correlations(real, rec, REQUESTABLE)
    pearson = {p: corr[p]["pearson"] for p in corr}
    out = {
        "n_patches": int(len(rms)),
        "pixel": {
            "rms_gauss_median": float(np.median(rms)), "rms_gauss_p90": float(np.percentile(rms, 90)),
            "rel_error_median": float(np.median(inv.rel_error)),
            "rel_error_p90": float(np.percentile(inv.rel_error, 90)),
            "feature_cos_median": float(np.nanmedian(inv.feature_cos)) if np.isfinite(inv.feature_cos).any() else None,
            "match_error_median": (float(np.nanmedian(inv.match_error)) if inv.match_error is not None
                                   and np.isfinite(inv.match_error).any() else None),
        },
        "max_rel_error": float(max_rel_error),
        # parameters the objective asked the reconstruction to match (their Pearson is partly by
        # construction; the others are the independent check)
        "matched_parameters": list(inv.settings.get("match_parameters", [])),
        "match_weight": float(inv.settings.get("match_weight", 0.0)),
        "frac_within_bound": float(np.mean(inv.rel_error <= max_rel_error)),
        "correlations": corr,
        "target_pearson": dict(TARGETS),
        "targets": {f"{p}_pearson_ge_{t:.2f}": bool((pearson.get(p) or 0.0) >= t) for p, t in TARGETS.items()},
    }
    return out


def run_invert_real(generator_path, encoder_path, patches_zarr, patches_table, generated_zarr, latents_path,
                    cfg: Mapping[str, Any], summary_out, table_out, images_out, threads: int | None = None) -> dict:
    """The ``invert_real`` stage (module docstring); returns the summary written to ``summary_out``.
    ``encoder_path`` None: no SimSiam feature loss and random starting codes."""
    from sharpgen.atomic import atomic_path, write_json, write_parquet
    from sharpgen.gan import load_generator
    from sharpgen.measure import MeasurementContext, measure
    from sharpgen.ssl import load_encoder
    from sharpgen.store import PatchStore
    from sharpgen.training import setup_device

    cfg = invert_config(cfg)
    settings = InvertSettings.from_mapping(cfg)
    device = setup_device(cfg["device"], key="invert.device", threads=threads, log=logger)
    store = PatchStore.open(patches_zarr, patches_table)
    rows = select_rows(store, cfg["split"], int(cfg["n_patches"]), settings.seed)
    x = store.read(rows, check=True)
    G = load_generator(generator_path, device=device)
    space = resolve_space(G, cfg["space"])
    encoder, enc_info = load_encoder(encoder_path, device=device) if encoder_path else (None, {"hash": None})
    if encoder is None and settings.init == "nearest":
        logger.warning("no SimSiam encoder: pixel + prior loss only, random starting codes")
    init = None
    if settings.init == "nearest" and encoder is not None:
        pool_img, pool_codes = init_pool(G, space, generated_zarr, latents_path, int(cfg["init_pool"]), settings.seed)
        init, _ = nearest_inits(encoder, x, pool_img, pool_codes, settings.restarts)
    logger.info("inverting %d %s patches in %s space: %d steps x %d restarts, init %s",
                len(rows), cfg["split"], space, settings.steps, settings.restarts, settings.init)

    def progress(done, total):
        logger.info("  %d / %d codes optimised", done, total)

    inv = invert(G, x, encoder=encoder, init_codes=init, settings=settings, space=space,
                 clip_gauss=store.clip_gauss, progress=progress)
    ctx = MeasurementContext.from_store(store)
    rec = measure(inv.images, ctx)
    real = store.table_rows(rows)
    summary = summarise(real, rec, inv, store.clip_gauss, float(cfg["max_rel_error"]))
    summary.update({"split": cfg["split"], "space": space, "settings": inv.settings,
                    "encoder_hash": enc_info["hash"], "measurement": ctx.to_dict(),
                    "seconds": inv.seconds, "seconds_per_patch": inv.seconds / max(len(rows), 1)})
    per = pd.DataFrame({"row": rows})
    for col in ("harpnum", "t_rec", "split", "source"):
        if col in real:
            per[col] = real[col].to_numpy()
    per["rms_gauss"] = inv.rms_gauss(store.clip_gauss)
    per["rel_error"] = inv.rel_error
    per["feature_cos"] = inv.feature_cos
    per["prior_shell"] = inv.prior
    per["objective"] = inv.objective
    per["restart"] = inv.restart
    for p in PARAMETER_NAMES:
        per[f"real_{p}"] = real[p].to_numpy(dtype=float) if p in real else np.nan
        per[f"rec_{p}"] = rec[p].to_numpy(dtype=float)
    per["code"] = list(inv.codes.astype(np.float32))
    write_parquet(table_out, per, metadata={"space": space, "clip_gauss": store.clip_gauss,
                                            "patch_mode": store.mode})
    with atomic_path(images_out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, real=x, reconstruction=inv.images, row=rows.astype(np.int64),
                     clip_gauss=np.float64(store.clip_gauss))
    write_json(summary_out, summary)
    pr = {p: round(v["pearson"], 3) if v["pearson"] == v["pearson"] else None
          for p, v in summary["correlations"].items()}
    logger.info("inverted %d patches in %.1f s (%.2f s/patch): median rel. error %.3f, RMS %.1f G; Pearson %s",
                len(rows), inv.seconds, summary["seconds_per_patch"], summary["pixel"]["rel_error_median"],
                summary["pixel"]["rms_gauss_median"], pr)
    return summary


def read_inversion_table(path: str | Path) -> pd.DataFrame:
    """inversions.parquet with ``code`` as lists (rows as written)."""
    return pd.read_parquet(path)
