"""Stage ``calibrate``: eps -> change of the parameter in physical units, and its accuracy.

rules/directions.smk (calibrate) -> workflow_scripts/calibrate.py -> here.

:func:`fit_calibration` fits ``y(z + eps n) - y(z) = slope * eps`` per direction from the
traversal table (``y`` in fit space); :func:`solve_requests` inverts it for requested values
(a calibrated step, then optional secant steps that re-measure the image);
:func:`evaluate_requests` measures how well that works on random in-range requests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from sharpgen.directions.boundaries import file_sha256, load_direction_field
from sharpgen.directions.config import directions_config
from sharpgen.directions.geometry import DirectionError, DirectionSpec, direction_rows, latent_from_seed
from sharpgen.directions.traverse import pivot, within_fold
from sharpgen.measure import MeasurementContext, Renderer, make_renderer, space_codes
from sharpgen.seeds import int_seed
from sharpgen.parameters import LOG_FIT, REQUESTABLE, from_fit_space, is_log_fit, relative_error, to_fit_space, unit_of

logger = logging.getLogger(__name__)


def fit_calibration(df: pd.DataFrame, key: str, n_bootstrap: int = 200, seed: int = 0,
                    range_quantiles: tuple[float, float] = (0.02, 0.98)) -> dict:
    """Fit ``y(z + eps n) - y(z) = slope * eps`` for one direction (``y`` = target in fit space).

    df: traversal table (rows of direction ``key``, grid containing eps = 0; images beyond the
    polarity fold are left out: the calibrated walk stops at the fold). The fit is pooled
    over bases through the origin; ``resid_sigma`` is the residual scatter (fit units) and
    ``slope_std`` / ``slope_ci68`` come from a bootstrap over bases. ``eps_min``/``eps_max`` bound
    the calibrated eps; ``range_fit`` / ``range`` are the (quantile) range of the target seen in
    the traversals (fit space / physical units) -- requests outside are refused.
    """
    g = within_fold(df[df["direction"] == key])
    if g.empty:
        raise DirectionError(f"direction {key!r} is not in the traversal table")
    spec = DirectionSpec.parse(key)
    eps, Y = pivot(g.assign(_y=to_fit_space(spec.target, g[spec.target])), "_y")
    i0 = np.flatnonzero(np.isclose(eps, 0.0))
    if i0.size == 0:
        raise DirectionError(f"direction {key!r}: the traversal eps grid has no eps = 0")
    D = Y - Y[:, [i0[0]]]
    X = np.broadcast_to(eps, D.shape)

    def slope_of(rows):
        d, x = D[rows].ravel(), X[rows].ravel()
        ok = np.isfinite(d)
        return float(x[ok] @ d[ok] / (x[ok] @ x[ok])) if ok.any() and (x[ok] @ x[ok]) > 0 else np.nan

    slope = slope_of(np.arange(D.shape[0]))
    if not np.isfinite(slope) or slope == 0:
        raise DirectionError(f"direction {key!r}: the target {spec.target!r} does not change along the direction")
    ok = np.isfinite(D)
    resid = (D - slope * X)[ok]
    ss_tot = float(np.sum((D[ok] - D[ok].mean()) ** 2))
    rng = np.random.default_rng(seed)
    boots = np.array([slope_of(rng.integers(0, D.shape[0], D.shape[0])) for _ in range(n_bootstrap)])
    boots = boots[np.isfinite(boots)]
    yq = np.nanquantile(Y, range_quantiles)
    rng_phys = from_fit_space(spec.target, yq)
    return {
        "direction": key,
        "target": spec.target,
        "hold": list(spec.hold),
        "fit_space": "log10" if is_log_fit(spec.target) else "identity",
        "slope": slope,
        "slope_std": float(boots.std(ddof=1)) if boots.size > 1 else np.nan,
        "slope_ci68": [float(v) for v in np.quantile(boots, [0.16, 0.84])] if boots.size else [np.nan, np.nan],
        "resid_sigma": float(resid.std(ddof=1)) if resid.size > 1 else np.nan,
        "r2": float(1 - np.sum(resid**2) / ss_tot) if ss_tot > 0 else np.nan,
        "n_base": int(D.shape[0]),
        "eps_min": float(eps.min()),
        "eps_max": float(eps.max()),
        "range_fit": [float(yq[0]), float(yq[1])],
        "range": [float(min(rng_phys)), float(max(rng_phys))],
    }


def solve_requests(render_target: Callable[[np.ndarray], np.ndarray], z_base, vector, requested,
                   cal: Mapping, *, refine_steps: int = 2, tol: float = 0.02, y0=None,
                   eps_bounds=None) -> dict:
    """Find eps so that ``target(z_base + eps * vector)`` equals ``requested``, for N requests.

    render_target: z (M, D) -> target values (M,) (physical units); z_base: (N, D); vector: (D,)
    unit, or (N, D) one unit direction per base; requested: (N,) physical; cal: a
    :func:`fit_calibration` dict; y0: optional (N,) fit-space target at the bases (measured here
    otherwise); eps_bounds: optional (N, 2) eps range per base (the polarity fold,
    :meth:`Boundaries.eps_bounds`): requests needing eps outside it are refused and refinement
    stays inside it.
    First step eps = (y_req - y0) / slope from the calibration; then up to ``refine_steps`` secant
    steps on the MEASURED value for requests whose relative error exceeds ``tol`` (falling back to
    the calibrated slope when the secant is unusable). eps is kept within 1.5x the calibrated range.
    Returns dict of (N,) arrays: ``eps``, ``achieved`` (physical), ``rel_error``, ``rel_error_first``
    (after the calibrated step only), ``steps`` (generator calls after the base), ``in_range``
    (bool: the first-step eps was inside [eps_min, eps_max]; out-of-range requests are not solved).
    """
    name = cal["target"]
    Zb = np.asarray(z_base, dtype=np.float64)
    n = direction_rows(vector, Zb)
    req = np.asarray(requested, dtype=np.float64).ravel()
    y_req = to_fit_space(name, req)
    if y0 is None:
        y0 = to_fit_space(name, render_target(Zb.astype(np.float32)))
    y0 = np.asarray(y0, dtype=np.float64)
    slope = float(cal["slope"])
    lo, hi = float(cal["eps_min"]), float(cal["eps_max"])
    eps = (y_req - y0) / slope
    in_range = np.isfinite(eps) & (eps >= lo - 1e-9) & (eps <= hi + 1e-9)
    fold_lo = np.full(len(eps), -np.inf) if eps_bounds is None else np.asarray(eps_bounds, np.float64)[:, 0]
    fold_hi = np.full(len(eps), np.inf) if eps_bounds is None else np.asarray(eps_bounds, np.float64)[:, 1]
    in_range &= (eps >= fold_lo) & (eps <= fold_hi)
    N = len(req)
    best_eps, best_val = np.full(N, np.nan), np.full(N, np.nan)
    best_err, first_err = np.full(N, np.inf), np.full(N, np.nan)
    steps = np.zeros(N, int)
    prev_eps, prev_y = np.zeros(N), y0.copy()
    active = in_range.copy()
    for step in range(1 + int(refine_steps)):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        vals = np.asarray(render_target((Zb[idx] + eps[idx, None] * n[idx]).astype(np.float32)), dtype=np.float64)
        steps[idx] += 1
        err = relative_error(name, vals, req[idx])
        err = np.where(np.isfinite(err), err, np.inf)
        if step == 0:
            first_err[idx] = err
        better = err < best_err[idx]
        best_err[idx[better]] = err[better]
        best_val[idx[better]] = vals[better]
        best_eps[idx[better]] = eps[idx[better]]
        y = to_fit_space(name, vals)
        with np.errstate(divide="ignore", invalid="ignore"):
            sec = (y - prev_y[idx]) / (eps[idx] - prev_eps[idx])
        usable = np.isfinite(sec) & (np.sign(sec) == np.sign(slope)) & (np.abs(sec) > 0.2 * abs(slope))
        sec = np.where(usable, sec, slope)
        new_eps = eps[idx] + np.where(np.isfinite(y), (y_req[idx] - y) / sec, 0.0)
        new_eps = np.clip(np.clip(new_eps, 1.5 * min(lo, 0), 1.5 * max(hi, 0)), fold_lo[idx], fold_hi[idx])
        prev_eps[idx], prev_y[idx] = eps[idx], np.where(np.isfinite(y), y, prev_y[idx])
        eps[idx] = new_eps
        active[idx] = err > tol
    best_err[~np.isfinite(best_err)] = np.nan
    return {"eps": best_eps, "achieved": best_val, "rel_error": best_err, "rel_error_first": first_err,
            "steps": steps, "in_range": in_range, "y0": y0}


def held_correctors(calibrations: Mapping, spec: DirectionSpec) -> list[tuple[str, str]]:
    """For each held parameter ``h`` of ``spec``, the calibrated direction that moves it while
    holding the target (and the other held parameters): ``h|target,others``, else ``h|target``,
    else ``h``. Returns ``[(h, key), ...]``; a held parameter with no calibrated direction is
    left out (it is then held only by the direction itself)."""
    out = []
    for h in spec.hold:
        others = tuple(x for x in spec.hold if x != h)
        for cand in (DirectionSpec(h, (spec.target, *others)), DirectionSpec(h, (spec.target,)), DirectionSpec(h)):
            c = calibrations.get(cand.key)
            if c is not None and c.get("calibrated", True) and "slope" in c:
                out.append((h, cand.key))
                break
    return out


def refine_held(render: Callable[[np.ndarray], pd.DataFrame], z_base, vector, held_vectors, slopes, requested,
                held0, eps, *, target: str, held, tol: float = 0.02, steps: int = 6,
                eps_bounds=None) -> dict:
    """Feedback hold: after the target's own solve, also bring each held parameter back to its
    base value by re-measuring it, one request per row.

    render: z (M, D) -> table with the ``target`` and ``held`` columns (physical); z_base (N, D);
    vector (N, D) the target's direction; held_vectors (N, K, D) one correcting direction per held
    parameter (:func:`held_correctors`); slopes (1 + K,) fit-space change per unit eps of the
    target along ``vector`` and of each held parameter along its corrector (the initial Jacobian,
    diagonal); requested (N,) physical; held0 (N, K) physical held values at the base; eps (N,)
    the target's solution (:func:`solve_requests`); eps_bounds: optional (N, 2) range of the
    target's eps (the polarity fold).
    The start ``z_base + eps * vector`` is measured, then up to ``steps`` Broyden steps on
    ``F = (y_target - y_requested, y_h - y_h0)`` in fit space (steps clipped to a unit norm in
    eps). A point replaces the best one only when its target error is at most
    ``max(tol, the start's)`` -- the target is never served worse than without the hold -- and its
    largest held relative error (:func:`relative_error`) is smaller; a request stops once both
    are within ``tol``.
    Returns (N,...) arrays: ``z`` (N, D) the best latent, ``eps``, ``eps_held`` (N, K),
    ``achieved``, ``rel_error``, ``held_values`` (N, K), ``held_rel_error`` (N, K), ``start_held_values``
    (N, K) (before the feedback) and ``calls`` (generator calls made here).
    """
    held = list(held)
    Zb = np.asarray(z_base, dtype=np.float64)
    V = direction_rows(vector, Zb)
    H = np.asarray(held_vectors, dtype=np.float64).reshape(Zb.shape[0], len(held), Zb.shape[1])
    N, K = Zb.shape[0], len(held)
    req = np.asarray(requested, dtype=np.float64).ravel()
    h0 = np.asarray(held0, dtype=np.float64).reshape(N, K)
    goal = np.column_stack([to_fit_space(target, req)] + [to_fit_space(h, h0[:, k]) for k, h in enumerate(held)])
    lim = np.tile([-np.inf, np.inf], (N, 1)) if eps_bounds is None else np.asarray(eps_bounds, np.float64)
    E = np.column_stack([np.asarray(eps, np.float64), np.zeros((N, K))])

    def measure_at(E, idx):
        z = Zb[idx] + E[idx, :1] * V[idx] + np.einsum("nk,nkd->nd", E[idx, 1:], H[idx])
        m = render(z.astype(np.float32))
        vals = np.column_stack([m[target].to_numpy(np.float64)] + [m[h].to_numpy(np.float64) for h in held])
        return z, vals

    def errors(vals, idx):
        t = relative_error(target, vals[:, 0], req[idx])
        hh = np.column_stack([relative_error(h, vals[:, 1 + k], h0[idx, k]) for k, h in enumerate(held)])
        return np.where(np.isfinite(t), t, np.inf), np.where(np.isfinite(hh), hh, np.inf)

    def fit(vals):
        return np.column_stack([to_fit_space(target, vals[:, 0])] +
                               [to_fit_space(h, vals[:, 1 + k]) for k, h in enumerate(held)])

    everyone = np.arange(N)
    z, vals = measure_at(E, everyone)
    calls = np.ones(N, int)
    t_err, h_err = errors(vals, everyone)
    best = {"z": z.copy(), "E": E.copy(), "vals": vals.copy(), "t": t_err.copy(), "h": h_err.copy()}
    t_cap = np.maximum(tol, t_err)
    F = fit(vals) - goal
    J = np.tile(np.diag(np.asarray(slopes, np.float64))[None], (N, 1, 1))
    active = np.isfinite(F).all(1) & ((t_err > tol) | (h_err.max(1) > tol))
    for _ in range(int(steps)):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        step = -np.einsum("nij,nj->ni", np.linalg.pinv(J[idx]), F[idx])  # least squares, batched
        step *= np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12))
        En = E.copy()
        En[idx] = E[idx] + step
        En[idx, 0] = np.clip(En[idx, 0], lim[idx, 0], lim[idx, 1])
        step = En[idx] - E[idx]
        zn, vn = measure_at(En, idx)
        calls[idx] += 1
        Fn = fit(vn) - goal[idx]
        good = np.isfinite(Fn).all(1) & (np.einsum("nk,nk->n", step, step) > 0)
        upd = (Fn - F[idx] - np.einsum("nij,nj->ni", J[idx], step))[:, :, None] * step[:, None, :]
        upd /= np.maximum(np.einsum("nk,nk->n", step, step), 1e-12)[:, None, None]
        J[idx[good]] += upd[good]
        E[idx[good]], F[idx[good]] = En[idx[good]], Fn[good]
        t_n, h_n = errors(vn, idx)
        better = good & (t_n <= t_cap[idx]) & (h_n.max(1) < best["h"][idx].max(1))
        b = idx[better]
        best["z"][b], best["E"][b], best["vals"][b] = zn[better], En[b], vn[better]
        best["t"][b], best["h"][b] = t_n[better], h_n[better]
        active[idx] = good & ((best["t"][idx] > tol) | (best["h"][idx].max(1) > tol))
    return {"z": best["z"], "eps": best["E"][:, 0], "eps_held": best["E"][:, 1:], "achieved": best["vals"][:, 0],
            "rel_error": best["t"], "held_values": best["vals"][:, 1:], "held_rel_error": best["h"],
            "start_held_values": vals[:, 1:], "calls": calls}


def feedback_hold(render: Callable[[np.ndarray], pd.DataFrame], field, calibrations: Mapping, spec: DirectionSpec,
                  z_base, vector, value: float, base_values: Mapping, eps: float, *, tol: float = 0.02,
                  steps: int = 0, eps_bounds=None) -> tuple[np.ndarray, dict]:
    """One request's feedback hold (``sharpgen generate`` / ``edit``): :func:`refine_held` from the
    target's solution ``eps`` along ``vector`` (D,), the held parameters corrected along their
    calibrated directions (:func:`held_correctors` over ``calibrations``, vectors from ``field``,
    a :class:`Boundaries`). base_values: the base image's measured parameters. Returns ``(z (D,),
    info)``; info is empty (and z the plain step) with ``steps = 0``, no held parameter or no
    corrector, else ``eps`` (the target's, possibly moved), ``eps_held`` {h: eps} and
    ``correctors`` {h: key}."""
    zb = np.asarray(z_base, dtype=np.float64)[None, :]
    z = zb[0] + float(eps) * np.asarray(vector, dtype=np.float64)
    corr = held_correctors(calibrations, spec) if steps > 0 and spec.hold else []
    if not corr:
        return z, {}
    hs = [h for h, _ in corr]
    fb = refine_held(render, zb, np.asarray(vector, np.float64)[None, :],
                     np.stack([field.per_base(DirectionSpec.parse(c), zb) for _, c in corr], axis=1),
                     [calibrations[spec.key]["slope"]] + [calibrations[c]["slope"] for _, c in corr], [value],
                     np.array([[float(base_values[h]) for h in hs]]), [float(eps)], target=spec.target, held=hs,
                     tol=tol, steps=steps, eps_bounds=None if eps_bounds is None else np.atleast_2d(eps_bounds))
    return fb["z"][0], {"eps": float(fb["eps"][0]), "eps_held": dict(zip(hs, map(float, fb["eps_held"][0]))),
                        "correctors": dict(corr)}


def seed_range(cal: Mapping, y0: float, eps_bounds=None) -> tuple[float, float]:
    """Physical target range reachable from a base with fit-space value y0 (calibrated eps range,
    intersected with the base's fold range ``eps_bounds`` (2,) when given)."""
    e_lo, e_hi = float(cal["eps_min"]), float(cal["eps_max"])
    if eps_bounds is not None:
        e_lo, e_hi = max(e_lo, float(eps_bounds[0])), min(e_hi, float(eps_bounds[1]))
    ends = from_fit_space(cal["target"], y0 + float(cal["slope"]) * np.array([e_lo, e_hi]))
    return float(ends.min()), float(ends.max())


def evaluate_requests(render: Renderer, vectors: Mapping, calibrations: Mapping[str, Mapping], dim: int, *,
                      n_requests: int = 200, seed: int = 0, refine_steps: int = 2, tol: float = 0.02,
                      margin: float = 0.05, bounds: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                      to_codes: Callable[[np.ndarray], np.ndarray] | None = None, hold_steps: int = 0,
                      correctors: Mapping | None = None) -> dict:
    """Achieved relative error over random in-range requests, per calibrated direction.

    vectors: direction key -> unit (D,) or a callable mapping base latents (N, D) to one unit
    direction per base (N, D) (:meth:`Boundaries.per_base`); bounds: optional direction key ->
    callable mapping base latents (N, D) to their eps range (N, 2) (:meth:`Boundaries.eps_bounds`);
    to_codes: optional map of the seeded z (N, dim) to the latent space the directions live in
    (whitened W: :func:`sharpgen.measure.space_codes`).
    For each direction: ``n_requests`` random seeds give base latents (:func:`latent_from_seed`);
    the requested value is drawn uniformly (in fit space) inside the range reachable from that
    base (calibrated eps range, shrunk by ``margin`` at each end) intersected with the global
    calibrated range. Reports median / 90th percentile of the achieved relative error (after
    refinement and after the calibrated step alone), the fraction below 10%, the mean number of
    generator calls and, for conditional directions, the median absolute change of each held
    parameter (fit space, physical value for identity parameters).
    hold_steps, correctors: with ``hold_steps > 0``, conditional requests also get the feedback
    hold (:func:`refine_held`) along ``correctors`` (key -> [(held parameter, corrector key,
    its unit vector or per-base callable like ``vectors``, its calibrated slope)]); the held
    change is then reported after it and, as ``median_abs_change_held_fit_space_no_feedback``,
    before it.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, cal in calibrations.items():
        spec = DirectionSpec.parse(key)
        seeds = rng.integers(0, 2**31 - 1, n_requests)
        Zb = np.stack([latent_from_seed(s, dim) for s in seeds]).astype(np.float64)
        if to_codes is not None:
            Zb = np.asarray(to_codes(Zb), dtype=np.float64)
        base_df = render(Zb.astype(np.float32))
        y0 = to_fit_space(spec.target, base_df[spec.target])
        lim = bounds[key](Zb) if bounds is not None and key in bounds else np.tile([-np.inf, np.inf], (n_requests, 1))
        e_lo = np.maximum(cal["eps_min"], lim[:, 0])
        e_hi = np.minimum(cal["eps_max"], lim[:, 1])
        ends = y0[:, None] + cal["slope"] * np.stack([e_lo, e_hi], axis=1)
        lo = np.maximum(ends.min(1), cal["range_fit"][0])
        hi = np.minimum(ends.max(1), cal["range_fit"][1])
        width = hi - lo
        lo, hi = lo + margin * width, hi - margin * width
        ok = np.isfinite(y0) & (hi > lo)
        y_req = np.where(ok, lo + rng.random(n_requests) * np.where(ok, hi - lo, 0), np.nan)
        req = from_fit_space(spec.target, y_req)
        held_after = {}

        def render_target(z, _t=spec.target):
            return render(z)[_t].to_numpy(dtype=np.float64)

        idx = np.flatnonzero(ok)
        V = direction_rows(vectors[key], Zb)
        res = solve_requests(render_target, Zb[idx], V[idx], req[idx], cal, refine_steps=refine_steps,
                             tol=tol, y0=y0[idx], eps_bounds=lim[idx])
        solved = res["in_range"] & np.isfinite(res["rel_error"])
        err = res["rel_error"][solved]
        first = res["rel_error_first"][solved]
        held_before, calls = {}, res["steps"].astype(float)
        corr = list((correctors or {}).get(key, ())) if hold_steps > 0 else []
        if spec.hold and solved.any():
            zs, rows = Zb[idx][solved], idx[solved]
            z_start = zs + res["eps"][solved, None] * V[idx][solved]
            z_final = z_start
            if corr:
                hs = [c[0] for c in corr]
                fb = refine_held(render, zs, V[idx][solved],
                                 np.stack([direction_rows(v, zs) for _, _, v, _ in corr], axis=1),
                                 [cal["slope"]] + [slope for _, _, _, slope in corr], req[rows],
                                 base_df[hs].to_numpy(np.float64)[rows], res["eps"][solved], target=spec.target,
                                 held=hs, tol=tol, steps=hold_steps, eps_bounds=lim[rows])
                err, z_final = fb["rel_error"], fb["z"]
                calls[solved] += fb["calls"]
            final_df = render(z_final.astype(np.float32))
            start_df = render(z_start.astype(np.float32)) if corr else final_df
            for h in spec.hold:
                b = to_fit_space(h, base_df[h].to_numpy()[rows])
                held_after[h] = float(np.nanmedian(np.abs(to_fit_space(h, final_df[h]) - b)))
                held_before[h] = float(np.nanmedian(np.abs(to_fit_space(h, start_df[h]) - b)))
        out[key] = {
            "target": spec.target,
            "hold": list(spec.hold),
            "n_requests": int(n_requests),
            "n_solved": int(solved.sum()),
            "n_refused": int(n_requests - solved.sum()),
            "refusal_rate": float(1.0 - solved.sum() / n_requests) if n_requests else np.nan,
            "median_rel_error": float(np.median(err)) if err.size else np.nan,
            "p90_rel_error": float(np.quantile(err, 0.9)) if err.size else np.nan,
            "frac_below_10pct": float(np.mean(err < 0.1)) if err.size else np.nan,
            "median_rel_error_calibrated_step": float(np.nanmedian(first)) if first.size else np.nan,
            # how far the requests are from the base value (relative error of doing nothing)
            "median_rel_offset_from_base": float(np.nanmedian(relative_error(
                spec.target, from_fit_space(spec.target, y0[idx][solved]), req[idx][solved])))
            if solved.any() else np.nan,
            "median_reachable_span_fit_space": float(np.nanmedian(np.abs(cal["slope"]) * (cal["eps_max"] - cal["eps_min"]))),
            "mean_generator_calls": float(calls[solved].mean()) if solved.any() else np.nan,
            "median_abs_change_held_fit_space": held_after,
            "median_abs_change_held_fit_space_no_feedback": held_before,
            "feedback_hold": {c[0]: c[1] for c in corr},
        }
        logger.info("requests %s: median relative error %.3f (calibrated step alone %.3f), %d/%d solved",
                    key, out[key]["median_rel_error"], out[key]["median_rel_error_calibrated_step"],
                    out[key]["n_solved"], n_requests)
    return out


def build_calibration(traversals: pd.DataFrame, cfg, measurement: Mapping,
                      boundaries_sha256: str | None = None) -> dict:
    """calibration.json content (without the request evaluation): one :func:`fit_calibration`
    per traversed direction whose target is requestable, plus what ``sharpgen generate`` needs
    (measurement context, refinement settings, units)."""
    cfg = directions_config(cfg)
    cc = cfg.calibration
    mode = str(measurement.get("mode", "crop"))
    cals = {}
    for key in traversals["direction"].unique():
        spec = DirectionSpec.parse(key)
        if spec.target not in REQUESTABLE:
            continue
        try:
            cal = fit_calibration(traversals, key, n_bootstrap=cc.n_bootstrap, seed=cfg.seed)
            cal["calibrated"] = True
        except DirectionError as err:  # e.g. R identically 0 along the direction: not usable
            logger.warning("direction %s not calibrated: %s", key, err)
            cal = {"direction": key, "target": spec.target, "hold": list(spec.hold), "calibrated": False,
                   "reason": str(err)}
        cal["unit"] = unit_of(spec.target, mode)
        cals[key] = cal
    return {
        "directions": cals,
        "log_params": list(LOG_FIT),  # provenance: the registry's fit space when this was made
        "measurement": dict(measurement),
        "units": "physical" if mode == "crop" else "image units (patches mode 'resize': not physical)",
        "settings": {"refine_steps": cc.refine_steps, "tol": cc.tol, "hold_steps": cc.hold_steps},
        "boundaries_sha256": boundaries_sha256,
    }


def run_calibrate(traversals_path, metrics_path, generator_path, boundaries_path, cfg, json_out,
                  threads: int | None = None) -> dict:
    """Stage calibrate: fit eps -> parameter change per direction, evaluate random requests."""
    from sharpgen.atomic import write_json
    from sharpgen.gan import load_generator
    from sharpgen.training import setup_device

    cfg = directions_config(cfg)
    device = setup_device(cfg.traversal.device, key="directions.traversal.device", threads=threads, log=logger)
    df = pd.read_parquet(traversals_path)
    ctx_dict = json.loads(Path(metrics_path).read_text())["measurement"]
    cal = build_calibration(df, cfg, ctx_dict, file_sha256(boundaries_path))
    cc = cfg.calibration
    field = load_direction_field(boundaries_path)
    wanted = [DirectionSpec.parse(k).key for k in (cc.evaluate or list(cal["directions"]))]
    missing = [k for k in wanted if k not in cal["directions"]]
    if missing:
        logger.warning("directions.calibration.evaluate names untraversed directions %s (skipped)", missing)
    keys = [k for k in wanted if k in cal["directions"]]
    skipped = [k for k in keys if not cal["directions"][k].get("calibrated", True)]
    if skipped:
        logger.warning("not evaluating uncalibrated directions %s", skipped)
    keys = [k for k in keys if k not in skipped]
    vectors = {k: (lambda Z, _s=DirectionSpec.parse(k): field.per_base(_s, Z)) for k in keys}
    correctors = {k: [(h, c, (lambda Z, _s=DirectionSpec.parse(c): field.per_base(_s, Z)), cal["directions"][c]["slope"])
                      for h, c in held_correctors(cal["directions"], DirectionSpec.parse(k))] for k in keys}
    bounds = {k: (lambda Z, _s=DirectionSpec.parse(k): field.eps_bounds(_s, Z)) for k in keys}
    G = load_generator(generator_path, device=device)
    render = make_renderer(G, MeasurementContext.from_dict(ctx_dict), list(cfg.parameters),
                           batch_size=cfg.traversal.batch_size, space=field.space)
    cal["evaluation"] = evaluate_requests(
        render, vectors, {k: cal["directions"][k] for k in keys}, G.nz,
        n_requests=cc.n_requests, seed=int_seed(cfg.seed, "calibration_requests"), refine_steps=cc.refine_steps, tol=cc.tol, bounds=bounds,
        to_codes=lambda Z: space_codes(G, Z, field.space), hold_steps=cc.hold_steps, correctors=correctors)
    cal["targets"] = {f"{k}_median_rel_error_lt_0.10": bool(np.nan_to_num(v["median_rel_error"], nan=1.0) < 0.10)
                      for k, v in cal["evaluation"].items()}
    cal["targets"].update({f"{k}_median_rel_error_lt_0.10": False for k in skipped})
    write_json(json_out, cal)
    return cal
