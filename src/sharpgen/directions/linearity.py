"""Where a parameter's non-linear part lives in the latent (an issue-19 diagnostic, no I/O).

For a parameter linear in an isotropic latent plus a residual, the cosine between two boundary
normals equals the two parameters' correlation only as the linear share R^2 -> 1 (docs/gan.md,
"Why the boundary normals are nearly one vector"). Three measurements say what the residual is,
each on a parameter in fit space (:func:`sharpgen.parameters.to_fit_space`):

* :func:`grain_variance_share` -- the share of the parameter's variance that the grain's white
  map carries at a fixed latent (several images of one ``z``, each with another white map). No
  direction of ``z`` moves that share: it is noise to every linear method.
* :func:`linear_and_mlp_r2` -- the validation R^2 of a linear fit beside a small MLP's on the same
  rows. An MLP that does no better says the rest is not a smooth function of ``z`` that a
  larger model finds at this sample size.
* :func:`step_ratio` -- how the change grows with the step along random unit directions: ~the
  ratio of the steps for a parameter smooth in ``z``, ~1 for one that jumps.

``benchmarks/diagnose_linearity.py`` runs them on a finished pipeline's generator.

A fourth, :func:`correlation_chain`, follows a flux's labelled Spearman correlation with R
from R's latent axis (``gan.structure``) to the pipeline's R, one cause per step, and a fifth,
:func:`axis_fit`, says how closely a parameter follows its own latent axis
(``benchmarks/diagnose_gap.py``).
"""

from __future__ import annotations

import numpy as np


def grain_variance_share(values) -> float:
    """values: (N, K), one parameter (fit space) of N latents, each generated with K white maps of
    the grain (any order). Returns the mean over latents of the within-latent variance (ddof=1)
    over the variance of the first column, on the rows where all K values are finite.
    Raises ValueError for K < 2 or fewer than 2 complete rows."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"need (N, K >= 2) values, got shape {v.shape}")
    v = v[np.isfinite(v).all(axis=1)]
    if len(v) < 2:
        raise ValueError("fewer than 2 latents with every draw finite")
    total = np.var(v[:, 0], ddof=1)
    if total == 0:
        return 0.0
    return float(np.mean(np.var(v, axis=1, ddof=1)) / total)


def linear_and_mlp_r2(codes, target, seed: int = 0, train_fraction: float = 0.8,
                      hidden: tuple[int, ...] = (256, 256), mlp: bool = True) -> dict:
    """codes: (N, D); target: (N,) fit space (non-finite rows dropped). Fits a linear regression
    and (``mlp``) an MLP (scikit-learn, ``hidden`` layers, early stopping, standardised target)
    on one seeded random ``train_fraction`` of the rows and scores both on the rest.
    Returns ``{"linear": R^2, "mlp": R^2 (with ``mlp``), "n": rows used}``."""
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPRegressor

    X = np.asarray(codes, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).ravel()
    ok = np.isfinite(y)
    X, y = X[ok], y[ok]
    if len(y) < 10:
        raise ValueError(f"only {len(y)} finite values")
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(train_fraction * len(y))
    tr, va = order[:cut], order[cut:]

    def r2(pred):
        return float(1.0 - np.mean((pred - y[va]) ** 2) / np.var(y[va]))

    out = {"linear": r2(LinearRegression().fit(X[tr], y[tr]).predict(X[va])), "n": int(len(y))}
    if mlp:
        mu, sd = y[tr].mean(), y[tr].std() or 1.0
        net = MLPRegressor(hidden_layer_sizes=hidden, alpha=1e-3, max_iter=300, early_stopping=True,
                           random_state=seed).fit(X[tr], (y[tr] - mu) / sd)
        out["mlp"] = r2(net.predict(X[va]) * sd + mu)
    return out


def step_ratio(base, small, large) -> float:
    """base, small, large: (N,) a parameter at N latents and after a small and a large step along
    the same random unit directions. Returns median |large - base| / median |small - base| (NaN
    rows dropped; inf when the small step never moves it)."""
    b, s, g = (np.asarray(a, dtype=np.float64).ravel() for a in (base, small, large))
    ok = np.isfinite(b) & np.isfinite(s) & np.isfinite(g)
    if not ok.any():
        raise ValueError("no finite rows")
    ds = np.median(np.abs(s[ok] - b[ok]))
    dg = np.median(np.abs(g[ok] - b[ok]))
    return float(dg / ds) if ds > 0 else float("inf")


def correlation_chain(flux, r_value, u_r) -> dict:
    """Where a flux's labelled Spearman correlation with R is lost, one step at a time (issue 19's
    worst pairs). flux, r_value, u_r: (N,) a flux and R (0 = "no R", as labelled) of N generated
    samples and the samples' coordinate on R's latent axis (``gan.structure``). Returns the
    Spearman correlation of ``flux`` with:

    * ``axis``: ``u_r`` itself (R a monotone function of its axis, no ties);
    * ``axis_tied_lowest``: ``u_r`` with its lowest ``share`` tied, ``share`` the samples' share of
      R = 0 (the ties alone, where a monotone R would put them);
    * ``axis_tied_observed``: ``u_r`` tied at the rows that have R = 0 (where they fall);
    * ``parameter``: ``r_value`` (the labelled correlation; the rest of the drop is R's scatter
      about its axis on the rows with R);

    and ``share``. Rows with a non-finite value are dropped. Raises ValueError for fewer than 3
    rows."""
    from scipy.stats import spearmanr

    f, r, u = (np.asarray(a, dtype=np.float64).ravel() for a in (flux, r_value, u_r))
    ok = np.isfinite(f) & np.isfinite(r) & np.isfinite(u)
    f, r, u = f[ok], r[ok], u[ok]
    if len(f) < 3:
        raise ValueError(f"only {len(f)} finite rows")
    zero = r == 0
    share = float(zero.mean())
    tied = np.zeros(len(u), dtype=bool)
    tied[np.argsort(u, kind="stable")[: int(round(share * len(u)))]] = True
    low = u.min() - 1.0

    def rho(v):
        return float(spearmanr(f, v)[0])

    return {"axis": rho(u), "axis_tied_lowest": rho(np.where(tied, low, u)),
            "axis_tied_observed": rho(np.where(zero, low, u)), "parameter": rho(r), "share": share}


def axis_fit(values, u) -> float:
    """How closely a parameter follows its latent axis (``gan.structure``): the Pearson
    correlation of the normal scores of ``values`` (N,) (average ranks for ties, so any
    monotone transform of the parameter gives the same number) with the samples' coordinates
    ``u`` (N,) on the axis. 1 when the parameter is a strictly monotone function of a Gaussian
    ``u``; the structure loss's residual lowers it. Rows with a non-finite value are dropped;
    ValueError for fewer than 3 rows."""
    from sharpgen.gan.structure import normal_scores  # the structure's own (fit_structure)

    v, a = (np.asarray(x, dtype=np.float64).ravel() for x in (values, u))
    ok = np.isfinite(v) & np.isfinite(a)
    v, a = v[ok], a[ok]
    if len(v) < 3:
        raise ValueError(f"only {len(v)} finite rows")
    return float(np.corrcoef(normal_scores(v[:, None])[:, 0], a)[0, 1])
