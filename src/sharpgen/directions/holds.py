"""Measured holds: conditional directions along which the held parameters do not move.

rules/directions.smk (fit_boundaries, ``directions.hold: measured``) -> here.

The paper's conditional direction ``target|held`` removes from the target's boundary normal
``n_t`` its components along the held normals (:func:`~sharpgen.directions.geometry.project_boundary`).
That holds a held parameter only as far as it is linear in the latent: on the default generator
of 2026-12-02, ``tuf|r_value`` still moved r_value by 0.47 population std per std of tuf.
A measured hold keeps the direction in the span of the same normals,

    d(b) = unit(n_t - sum_k b_k n_hk)        (b: (K,), one coefficient per held parameter)

and solves for ``b`` so that along ``d(b)`` the median slope of every held parameter is zero,
measured as the traverse stage measures it (images generated along ``z + eps d``, the eps grid of
``directions.traversal``, parameters standardised by the generated population's std, slopes over
the bases where the held parameter moves), on ``hold_fit.n_base`` base latents drawn from their
own random stream (never the traversal bases the metrics are computed on). The search starts at
the projection (``b`` = least-squares coefficients of ``n_t`` on the held normals), probes each
coefficient once, then takes quasi-Newton (Broyden) steps -- for one held parameter, a secant
that keeps a sign-change bracket once it has one. Each evaluation generates
``n_base * n_eps`` images. One direction per condition, a combination of the boundary normals:
still a single straight line in the latent, but one whose "hold" is measured on the generator.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Sequence

import numpy as np

from sharpgen.directions.geometry import Boundaries, DirectionSpec, projection_coefficients
from sharpgen.measure import Renderer

logger = logging.getLogger(__name__)

#: a residual function: coefficients b (K,) -> (held entanglements (K,), info dict)
Residual = Callable[[np.ndarray], "tuple[np.ndarray, dict]"]


def held_residuals(render: Renderer, field: Boundaries, spec: DirectionSpec, coefficients, base_z,
                   eps, std: Mapping[str, float]) -> tuple[np.ndarray, dict]:
    """Measured entanglement of each held parameter along ``d(coefficients)``.

    render: z (M, D) -> parameter table; base_z: (B, D) base latents; eps: (E,) grid.
    Returns ``(r (K,), info)``: ``r_k`` = median slope of held parameter k over the bases where it
    moves / median slope of the target, both per population std (the traverse stage's
    ``entanglement_moving``); 0 for a held parameter that moves on no base. ``info`` has the
    target's ``spearman_median`` and ``target_slope_std``.
    """
    from sharpgen.directions.traverse import traversal_metrics, traverse

    f = dataclasses.replace(field, holds={**field.holds, spec.key: tuple(float(b) for b in coefficients)})
    df = traverse(render, base_z, {spec.key: f.per_base(spec, base_z)}, eps,
                  bounds={spec.key: f.eps_bounds(spec, base_z)})
    m = traversal_metrics(df, [spec.target, *spec.hold], std)[spec.key]
    r = np.array([0.0 if m["frac_flat"][h] == 1.0 else m["entanglement_moving"][h] for h in spec.hold])
    return r, {"spearman_median": m["spearman_median"], "target_slope_std": m["slope_std"][spec.target]}


def _score(r: np.ndarray, info: dict) -> float:
    """max |r| of a usable point (finite, target still increasing along d), else inf."""
    ok = np.isfinite(r).all() and np.isfinite(info.get("target_slope_std", np.nan)) and info["target_slope_std"] > 0
    return float(np.max(np.abs(r))) if ok else np.inf


def solve_hold(residual: Residual, b0, *, tol: float = 0.03, max_evaluations: int = 8,
               probe: float = 0.1, max_step: float = 0.3) -> tuple[np.ndarray, list[dict]]:
    """Find ``b`` (K,) with ``residual(b) ~ 0`` starting from ``b0`` (K,).

    Evaluations: ``b0``; one probe of ``probe`` per coefficient (towards smaller residual when
    the residual falls as b grows); then Broyden steps clipped to ``max_step`` (for K = 1, the
    secant through the closest points on either side of the root once the residual has changed
    sign, and a step of ``max_step`` towards it while the secant slope has the wrong sign). Stops at ``max |r| < tol`` or after ``max_evaluations``. A point counts only when its
    residual is finite and the target still increases along ``d(b)``.
    Returns ``(b_best (K,), history)``: the best point found (``b0`` if none beats it) and one
    dict per evaluation (``b``, ``residual``, ``max_abs``, plus the residual's info).
    """
    b = np.asarray(b0, dtype=np.float64).ravel().copy()
    K = b.size
    history: list[dict] = []

    def evaluate(x):
        r, info = residual(x)
        r = np.asarray(r, dtype=np.float64).ravel()
        history.append({"b": x.tolist(), "residual": r.tolist(), "max_abs": _score(r, info), **info})
        return r

    r = evaluate(b)
    if history[-1]["max_abs"] < tol or not np.isfinite(history[-1]["max_abs"]):
        return b, history
    J = np.zeros((K, K))
    for k in range(K):
        if len(history) >= max_evaluations:
            break
        h = probe * (1.0 if r[k] > 0 else -1.0)
        x = b.copy()
        x[k] += h
        rk = evaluate(x)
        J[:, k] = (rk - r) / h if np.isfinite(rk).all() else np.nan
    while len(history) < max_evaluations and np.isfinite(J).all():
        best = min(history, key=lambda e: e["max_abs"])
        if best["max_abs"] < tol:
            break
        pts = [(e["b"][0], e["residual"][0]) for e in history if np.isfinite(e["max_abs"])]
        lo = [p for p in pts if p[1] < 0]
        hi = [p for p in pts if p[1] > 0]
        if K == 1 and lo and hi:
            (bl, rl), (bh, rh) = max(lo, key=lambda p: p[1]), min(hi, key=lambda p: p[1])
            step = np.array([bl + (bh - bl) * (0.0 - rl) / (rh - rl)]) - b
        elif K == 1 and J[0, 0] >= 0:
            # subtracting more of the held normal lowers the held slope; a secant that says
            # otherwise is noise (measured: a flat stretch of 0.1 in b): step on towards the root
            step = np.array([max_step * np.sign(r[0])])
        else:
            step = -np.linalg.lstsq(J, r, rcond=None)[0]
            norm = np.linalg.norm(step)
            if not np.isfinite(norm) or norm == 0:
                break
            step *= min(1.0, max_step / norm)
        x = b + step
        rx = evaluate(x)
        if not np.isfinite(rx).all():
            break
        J += np.outer(rx - r - J @ step, step) / float(step @ step)
        b, r = x, rx
    best = min(history, key=lambda e: e["max_abs"])
    return np.asarray(best["b"], dtype=np.float64), history


def fit_holds(render: Renderer, field: Boundaries, specs: Sequence[DirectionSpec], base_z, eps,
              std: Mapping[str, float], *, tol: float = 0.03, max_evaluations: int = 8) -> tuple[dict, dict]:
    """Measured hold of every conditional spec (unconditional ones are skipped).

    render, base_z (B, D), eps (E,), std: as :func:`held_residuals`; field: the fitted normals
    (its ``holds`` ignored). Returns ``(holds, summary)``: holds = key -> coefficients (K,) tuple
    for the conditions whose search improved on the projection (the others keep the projection
    and are absent); summary = key -> JSON-able record (projection and chosen coefficients, their
    residuals, evaluations, whether it converged below ``tol``).
    """
    field = dataclasses.replace(field, holds={})
    holds, summary = {}, {}
    for spec in specs:
        if not spec.hold:
            continue
        b0 = projection_coefficients(*spec.normals_of(field.normals))
        b, history = solve_hold(lambda x, _s=spec: held_residuals(render, field, _s, x, base_z, eps, std),
                                b0, tol=tol, max_evaluations=max_evaluations)
        start, best = history[0], min(history, key=lambda e: e["max_abs"])
        improved = best["max_abs"] < start["max_abs"]
        converged = bool(min(best["max_abs"], start["max_abs"]) < tol)
        for e in history:  # JSON has no inf: an unusable point (target not increasing) is null
            e["max_abs"] = e["max_abs"] if np.isfinite(e["max_abs"]) else None
        rec = {
            "hold": list(spec.hold),
            "method": "measured" if improved else "projection",
            "coefficients": b.tolist() if improved else b0.tolist(),
            "projection_coefficients": b0.tolist(),
            "residual_projection": start["residual"],
            "residual": best["residual"] if improved else start["residual"],
            "converged": converged,
            "target_spearman_median": best["spearman_median"] if improved else start["spearman_median"],
            "n_evaluations": len(history),
            "history": history,
        }
        if improved:
            holds[spec.key] = tuple(b.tolist())
        else:
            rec["reason"] = ("the projection already holds within tol" if start["max_abs"] < tol else
                             "no evaluated combination held better than the projection")
        summary[spec.key] = rec
        logger.info("%s: held entanglement %s (projection) -> %s (%s, b %s -> %s, %d evaluations)", spec.key,
                    np.round(start["residual"], 3).tolist(), np.round(rec["residual"], 3).tolist(),
                    rec["method"], np.round(b0, 3).tolist(), np.round(rec["coefficients"], 3).tolist(),
                    len(history))
    return holds, summary
