"""Stage ``traverse``: walk ``z + eps * n`` along every direction, measure, score monotonicity.

rules/directions.smk (traverse) -> workflow_scripts/traverse.py -> here.

:func:`traverse` generates the images of a grid of eps from a set of base latents and measures
them (:func:`sharpgen.measure.measure`, the same function as latents.parquet);
:func:`traversal_metrics` scores monotonicity and entanglement; :func:`make_strips` renders the
report's traversal strips (one seeded base latent) so that the report itself runs no generator.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.directions.boundaries import load_direction_field
from sharpgen.directions.config import directions_config
from sharpgen.directions.geometry import (
    Boundaries,
    DirectionError,
    DirectionSpec,
    beyond_bounds,
    direction_rows,
    direction_specs,
    latent_from_seed,
)
from sharpgen.measure import MeasurementContext, Renderer, make_renderer, measure, space_codes
from sharpgen.parameters import to_fit_space
from sharpgen.seeds import stream

logger = logging.getLogger(__name__)


def eps_grid(eps_max: float, n_eps: int) -> np.ndarray:
    """Symmetric grid in [-eps_max, eps_max] with ``n_eps`` points, always including 0."""
    return np.union1d(np.linspace(-eps_max, eps_max, int(n_eps)), [0.0])


def traverse(render: Renderer, base_z, vectors: Mapping[str, np.ndarray], eps, chunk: int = 4096,
             bounds: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Walk ``z_b + eps * n_d`` for every base b, direction d and eps; measure every image.

    render: z (M, D) -> DataFrame of M rows of parameters; base_z: (B, D); vectors: direction
    key -> unit (D,), or (B, D) one unit direction per base (polarity-folded directions,
    :meth:`Boundaries.per_base`); eps: (E,). Returns one row per generated image with columns
    ``direction`` (key), ``target``, ``hold`` (comma list), ``base`` (0..B-1), ``eps``,
    ``beyond_fold`` and the parameter columns (physical units): B * E rows per direction.
    bounds: optional direction key -> (B, 2) eps range per base (:meth:`Boundaries.eps_bounds`);
    images outside it are still measured, and flagged ``beyond_fold`` (the within-fold metrics
    leave them out, the full-range ones keep them).
    """
    Z0 = np.asarray(base_z, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64).ravel()
    B, E = Z0.shape[0], eps.size
    frames = []
    for key, n in vectors.items():
        spec = DirectionSpec.parse(key)
        n = direction_rows(n, Z0)
        Z = (Z0[:, None, :] + eps[None, :, None] * n[:, None, :]).reshape(B * E, -1)
        beyond = np.zeros((B, E), bool) if bounds is None or key not in bounds else beyond_bounds(eps, bounds[key])
        parts = [render(Z[i: i + chunk].astype(np.float32)) for i in range(0, len(Z), chunk)]
        meas = pd.concat(parts, ignore_index=True)
        meta = pd.DataFrame({"direction": key, "target": spec.target, "hold": ",".join(spec.hold),
                             "base": np.repeat(np.arange(B), E), "eps": np.tile(eps, B),
                             "beyond_fold": beyond.ravel()})
        frames.append(pd.concat([meta, meas], axis=1))
        logger.info("traversed %s: %d images (%d beyond the polarity fold)", key, len(Z), int(beyond.sum()))
    return pd.concat(frames, ignore_index=True)


def within_fold(df: pd.DataFrame) -> pd.DataFrame:
    """The traversal rows on the base's side of the polarity fold (parameters of the others
    set to NaN, so pivots keep their shape)."""
    if "beyond_fold" not in df.columns or not df["beyond_fold"].any():
        return df
    params = [c for c in df.columns if c not in ("direction", "target", "hold", "base", "eps", "beyond_fold")]
    out = df.copy()
    out.loc[out["beyond_fold"].to_numpy(bool), params] = np.nan
    return out


def per_base_slopes(eps: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of Y (B, E) against eps (E,), NaN-aware -> (B,)."""
    out = np.full(Y.shape[0], np.nan)
    for b in range(Y.shape[0]):
        ok = np.isfinite(Y[b])
        if ok.sum() >= 2 and np.ptp(eps[ok]) > 0:
            x = eps[ok] - eps[ok].mean()
            out[b] = float(x @ (Y[b, ok] - Y[b, ok].mean()) / (x @ x))
    return out


def bootstrap_ratio_se(num: np.ndarray, den: np.ndarray, n_boot: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error, over bases, of ``nanmedian(num) / nanmedian(den)``.

    num, den: (B,) per-base slopes of the same walks (a held parameter's and the target's). The
    bases are resampled with replacement, the same ones for both (``n_boot`` seeded resamples,
    one vectorised median each): the sampling error of an entanglement measured on B bases, i.e.
    how far another draw of B base latents would typically move it. NaN with fewer than 3 bases
    where both are finite."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = np.isfinite(num) & np.isfinite(den)
    if ok.sum() < 3:
        return float("nan")
    num, den = num[ok], den[ok]
    idx = np.random.default_rng(seed).integers(0, num.size, (int(n_boot), num.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.median(num[idx], axis=1) / np.median(den[idx], axis=1)
    r = r[np.isfinite(r)]
    return float(np.std(r, ddof=1)) if r.size > 1 else float("nan")


def flat_bases(Y: np.ndarray) -> np.ndarray:
    """Rows of Y (B, E) that do not change along the walk (>= 2 finite values, all equal):
    the parameter sits at a floor there (r_value = 0 with no strong-field polarity inversion
    line), so its slope is exactly 0 whatever the direction does -> (B,) bool."""
    finite = np.isfinite(Y)
    lo = np.where(finite, Y, np.inf).min(axis=1)
    hi = np.where(finite, Y, -np.inf).max(axis=1)
    return (finite.sum(axis=1) >= 2) & (hi == lo)


def pivot(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one direction -> (eps (E,), values (B, E))."""
    p = df.pivot_table(index="base", columns="eps", values=col, aggfunc="first", dropna=False)
    return p.columns.to_numpy(dtype=np.float64), p.to_numpy(dtype=np.float64)


def traversal_metrics(df: pd.DataFrame, params: Sequence[str], std: Mapping[str, float]) -> dict:
    """Monotonicity and entanglement of every traversed direction.

    df: the table of :func:`traverse`; params: parameter columns to assess; std: parameter ->
    standard deviation of the generated population in fit space (log10 for the registry's
    log_fit parameters), used to standardise. Per direction: ``spearman_median`` (median over
    bases of the Spearman correlation of the target with eps), ``spearman_frac_ge_0.9``,
    ``slope_std`` (median over bases of d(param_j / std_j)/d eps) and ``entanglement``
    (slope_std[j] / slope_std[target]: change of every parameter per unit change of the target,
    in standardised units), ``entanglement_moving`` (the same from the median slope over the
    bases where the parameter moves), ``entanglement_abs_per_base`` (median over bases of
    abs(slope_j / slope_target) on each base: how far a parameter moves on a typical single walk,
    whichever way; a median slope of 0 can hide large moves of both signs), ``entanglement_se``
    (its bootstrap standard error over the bases, :func:`bootstrap_ratio_se`: how far another draw
    of as many bases would typically move it; NaN for the target), ``frac_flat`` (share
    of bases on which the parameter does not change at all along the walk, :func:`flat_bases`). For conditional directions, ``held`` gives for
    each held parameter the entanglement under the conditional and the unconditional direction,
    ``reduction = 1 - |cond| / |uncond|``, the held parameter's ``frac_flat`` under the
    conditional direction, ``conditional_moving`` (the entanglement from the median slope
    over the bases where it moves; NaN if it moves on none), ``conditional_abs_per_base``
    (from ``entanglement_abs_per_base``) and ``conditional_se`` (``entanglement_se``). Flat bases pull the median slope
    towards 0 (exactly 0 when ``frac_flat`` >= 0.5), so ``conditional`` then reads as a better
    hold than there is: read ``conditional_moving`` beside it.
    """
    from scipy.stats import spearmanr

    def spearmans(Y: np.ndarray, eps: np.ndarray) -> np.ndarray:
        rhos = []
        for row in Y:
            ok = np.isfinite(row)
            rhos.append(float(spearmanr(eps[ok], row[ok])[0]) if ok.sum() >= 3 and np.ptp(row[ok]) > 0 else np.nan)
        return np.array(rhos)

    out: dict = {}
    ent_moving: dict = {}  # direction -> entanglement over the moving bases (for ``held``)
    for key, g_all in df.groupby("direction", sort=False):
        spec = DirectionSpec.parse(key)
        g = within_fold(g_all)
        slopes, slopes_moving, frac_flat, per_base_std = {}, {}, {}, {}
        for p in params:
            eps, Y = pivot(g.assign(_y=to_fit_space(p, g[p])), "_y")
            s = std.get(p, np.nan)
            flat = flat_bases(Y)
            frac_flat[p] = float(flat.mean()) if len(flat) else np.nan
            if not (s and np.isfinite(s) and s > 0):
                slopes[p] = slopes_moving[p] = np.nan
                continue
            per_base = per_base_slopes(eps, Y / s)
            per_base_std[p] = per_base
            slopes[p] = float(np.nanmedian(per_base))
            moving = per_base[~flat]
            slopes_moving[p] = float(np.nanmedian(moving)) if np.isfinite(moving).any() else np.nan
        eps, Y = pivot(g, spec.target)
        rhos = spearmans(Y, eps)
        eps_f, Y_f = pivot(g_all, spec.target)
        rhos_full = spearmans(Y_f, eps_f)
        st = slopes.get(spec.target, np.nan)
        ent = {p: (slopes[p] / st if st and np.isfinite(st) else np.nan) for p in params}
        ent_moving[key] = {p: (slopes_moving[p] / st if st and np.isfinite(st) else np.nan) for p in params}
        pt = per_base_std.get(spec.target)
        ent_abs, ent_se = {}, {}
        for p in params:
            ent_se[p] = (bootstrap_ratio_se(per_base_std[p], pt)
                         if pt is not None and p in per_base_std and p != spec.target else np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.abs(per_base_std[p] / pt) if pt is not None and p in per_base_std else np.array([np.nan])
            ent_abs[p] = float(np.nanmedian(r)) if np.isfinite(r).any() else np.nan
        out[key] = {
            "target": spec.target,
            "hold": list(spec.hold),
            "n_base": int(Y.shape[0]),
            "frac_beyond_fold": float(g_all["beyond_fold"].mean()) if "beyond_fold" in g_all else 0.0,
            # within the base's side of the polarity fold (the walk the calibration uses)
            "spearman_median": float(np.nanmedian(rhos)) if np.isfinite(rhos).any() else np.nan,
            "spearman_frac_ge_0.9": float(np.mean(np.nan_to_num(rhos, nan=-1) >= 0.9)),
            # over the whole eps grid, across the fold: how monotone the raw straight line is
            "spearman_full_median": float(np.nanmedian(rhos_full)) if np.isfinite(rhos_full).any() else np.nan,
            "slope_std": slopes,
            "entanglement": ent,
            "entanglement_moving": ent_moving[key],
            "entanglement_abs_per_base": ent_abs,
            "entanglement_se": ent_se,
            "frac_flat": frac_flat,
        }
    for key, m in out.items():
        if not m["hold"] or m["target"] not in out:
            continue
        unc = out[m["target"]]["entanglement"]
        held = {}
        for h in m["hold"]:
            c, u = m["entanglement"].get(h, np.nan), unc.get(h, np.nan)
            held[h] = {"conditional": c, "unconditional": u,
                       "reduction": float(1 - abs(c) / abs(u)) if u and np.isfinite(u) and np.isfinite(c) else np.nan,
                       "frac_flat": m["frac_flat"].get(h, np.nan),
                       "conditional_moving": ent_moving[key].get(h, np.nan),
                       "conditional_abs_per_base": m["entanglement_abs_per_base"].get(h, np.nan),
                       "conditional_se": m["entanglement_se"].get(h, np.nan)}
        m["held"] = held
    return out


def generated_std(latents, params: Sequence[str]) -> dict:
    """Std of each parameter (fit space) over the generated population: latents.parquet's path,
    or its table already read."""
    table = latents if isinstance(latents, pd.DataFrame) else pd.read_parquet(latents, columns=list(params))
    return {p: float(np.nanstd(to_fit_space(p, table[p]))) for p in params}


def make_strips(G, field: Boundaries, ctx: MeasurementContext, keys: Sequence[str], seed: int,
                n_steps: int, eps_max: float) -> dict:
    """The report's traversal strips: from the base latent of ``seed``, images at ``n_steps``
    eps in [-eps_max, eps_max] along each direction key, measured like every generated image.

    Returns arrays for strips.npz: ``keys`` (K,), ``eps`` (E,), ``images`` (K, E, S, S) float32
    in [-1, 1], ``beyond_fold`` (K, E) bool, ``parameters`` (P,) names, ``values`` (K, E, P)
    float64 (physical units), ``clip_gauss``, ``base_reflected`` (the base is on the reflected
    side of the polarity fold), ``has_fold``, ``seed``. The base is drawn in z and mapped to
    the field's latent space (whitened W for boundaries fitted in W).
    """
    from sharpgen.gan import generate

    eps = np.linspace(-float(eps_max), float(eps_max), int(n_steps))
    z0 = space_codes(G, latent_from_seed(seed, G.nz)[None, :], field.space)[0]
    images, values, beyond = [], [], []
    names = None
    for key in keys:
        spec = DirectionSpec.parse(key)
        v = field.per_base(spec, z0[None, :])[0]
        z = (z0[None, :] + eps[:, None] * v[None, :]).astype(np.float32)
        imgs = generate(G, z, space=field.space)
        meas = measure(imgs, ctx)
        names = list(meas.columns)
        images.append(imgs)
        values.append(meas.to_numpy(dtype=np.float64))
        beyond.append(beyond_bounds(eps, field.eps_bounds(spec, z0[None, :]))[0])
    return {"keys": np.array(list(keys)), "eps": eps, "images": np.stack(images).astype(np.float32),
            "beyond_fold": np.stack(beyond), "parameters": np.array(names), "values": np.stack(values),
            "clip_gauss": np.float64(ctx.clip_gauss), "base_reflected": bool(field.side(z0[None, :])[0]),
            "has_fold": field.fold is not None, "seed": int(seed)}


def run_traverse(generator_path, boundaries_path, latents_path, patches_zarr, cfg, parquet_out,
                 metrics_out, strips_out=None, threads: int | None = None) -> dict:
    """Stage traverse: walk every configured direction; write traversals.parquet, the metrics
    JSON and (when ``strips_out`` is given) strips.npz for the report figure."""
    from sharpgen.atomic import atomic_path, write_json, write_parquet
    from sharpgen.gan import load_generator
    from sharpgen.store import PatchStore
    from sharpgen.training import setup_device

    cfg = directions_config(cfg)
    tc = cfg.traversal
    device = setup_device(tc.device, key="directions.traversal.device", threads=threads, log=logger)
    params = list(cfg.parameters)
    field = load_direction_field(boundaries_path)
    specs = direction_specs(params, cfg.conditional)
    try:
        unfolded = {s.key: field.vectors(s)[0] for s in specs}
    except DirectionError as err:
        raise DirectionError(f"{boundaries_path}: {err}") from None
    ctx = MeasurementContext.from_store(PatchStore.open(patches_zarr))
    G = load_generator(generator_path, device=device)
    render = make_renderer(G, ctx, params, batch_size=tc.batch_size, space=field.space)
    # bases drawn in z; in W mapped to whitened W codes (the space the boundaries live in)
    base = space_codes(G, stream(cfg.seed, "traversal_bases").standard_normal((tc.n_base, G.nz)),
                       field.space)
    vectors = {s.key: field.per_base(s, base) for s in specs}
    bounds = {s.key: field.eps_bounds(s, base) for s in specs}
    eps = eps_grid(tc.eps_max, tc.n_eps)
    df = traverse(render, base, vectors, eps, bounds=bounds)
    std = generated_std(latents_path, params)
    metrics = traversal_metrics(df, params, std)
    out = {
        "directions": metrics,
        "std_fit_space": std,
        "eps": eps.tolist(),
        "n_base": int(base.shape[0]),
        "latent_space": field.space,
        "measurement": ctx.to_dict(),
        "units": ctx.units,
        # cosines between the directions of a base on the positive side of the fold
        "cosines": {a: {b: float(unfolded[a] @ unfolded[b]) for b in unfolded} for a in unfolded},
        "fold": {"folded": sorted(field.folded), "n_base_reflected": int(field.side(base).sum())}
        if field.fold is not None else None,
        "targets": {f"{k}_spearman_ge_0.9": bool((m.get("spearman_median") or 0) >= 0.9)
                    for k, m in metrics.items() if not m["hold"]},
    }
    if strips_out is not None:
        sc = cfg.strips
        keys = [k for k in sc.directions
                if {DirectionSpec.parse(k).target, *DirectionSpec.parse(k).hold} <= set(field.normals)]
        if len(keys) < len(sc.directions):
            logger.warning("strips: leaving out %s (no boundary for their parameters; fitted: %s)",
                           sorted(set(sc.directions) - set(keys)), sorted(field.normals))
        strips = make_strips(G, field, ctx, keys or [specs[0].key], sc.seed, sc.n_steps, sc.eps_max)
        with atomic_path(strips_out, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **strips)
    write_parquet(parquet_out, df, metadata={"patch_mode": ctx.mode, "clip_gauss": ctx.clip_gauss})
    write_json(metrics_out, out)
    for k, m in metrics.items():
        logger.info("%s: median Spearman %.3f; entanglement %s", k, m["spearman_median"],
                    {p: round(v, 2) for p, v in m["entanglement"].items() if np.isfinite(v)})
    return out
