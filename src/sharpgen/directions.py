"""Latent-space directions for physical parameters (InterFaceGAN-style), traversals, calibration.

The GAN maps a latent vector ``z`` (shape ``(D,)``, ``D = 100``, ``z ~ N(0, I)``) to a Br image.
For each physical parameter ``p`` (table column names as in :mod:`sharpgen.physics`) we

1. label generated samples by a median split (the paper) or by the top / bottom ``fraction``,
   fit a linear classifier in ``z`` space and keep its unit normal ``n_p`` (shape ``(D,)``)
   -- :func:`train_boundary`, :func:`fit_boundaries`;
2. make *conditional* directions that move ``p`` while holding other parameters, by projecting
   the other normals out of ``n_p`` -- :func:`project_boundary`;
3. walk ``z + eps * n`` for a grid of ``eps`` from a set of base latents, measure every parameter
   on the generated images and quantify monotonicity and entanglement -- :func:`traverse`,
   :func:`traversal_metrics`;
4. calibrate ``eps`` -> change of the parameter in physical units and invert it to generate an
   image with a requested value -- :func:`fit_calibration`, :func:`solve_requests`,
   :func:`generate_request` (the ``sharpgen generate`` command).

**Polarity folding** (``directions.fold: lead_sign``, the default). A GAN trained on both
polarity orders learns the orientation of the bipole as a *signed* latent coordinate: along one
direction ``u`` (the lead_sign boundary normal) the field grows from one orientation through a
weak region to the reversed one, so unsigned quantities such as TUF or R are *even* functions of
``z.u`` and a single hyperplane cannot separate them (median-split accuracy ~0.5). Folding maps
every latent to the ``z.u >= 0`` half-space by the reflection ``H = I - 2 u u^T``
(:func:`fold_latents`); boundaries of polarity-even parameters (:data:`POLARITY_PARTNER`) are
fitted on folded latents, and a base latent on the other side moves along the reflected normal
``H n`` (:class:`Boundaries`). Without folding (``fold: none``, the paper) every base moves along
``n``.

Parameter values live in two spaces: the *physical* value (as in the tables: fluxes in Mx,
distances in Mm, ``r_value`` in log10 Mx) and the *fit space* in which they are close to linear
in ``eps``: ``log10(value)`` for the parameters listed in ``directions.log_params`` (fluxes) and
the value itself otherwise (:func:`to_fit_space`). Relative errors of achieved values are taken
on the linear quantity, i.e. on ``10**r_value`` for the log-valued ``r_value``
(:data:`LOG_VALUED`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: parameters fitted/calibrated as log10(value) unless the config says otherwise
DEFAULT_LOG_PARAMS = ("tuf", "tpf", "tnf", "r_paper")
#: parameters that are stored as log10 of a physical quantity (JSOC convention for R_VALUE)
LOG_VALUED = ("r_value",)
#: parameters the ``sharpgen generate`` command accepts as requests (--name VALUE)
REQUESTABLE = ("tuf", "tpf", "tnf", "psep", "psep_robust", "r_paper", "r_value")


#: partner of each parameter under a global polarity reversal B -> -B: polarity-even
#: parameters map to themselves, TPF and TNF swap. Parameters not listed (net_flux, lead_sign,
#: tilt_deg) change sign or orientation and are never folded.
POLARITY_PARTNER = {
    "tuf": "tuf", "tpf": "tnf", "tnf": "tpf", "psep": "psep", "psep_robust": "psep_robust",
    "r_paper": "r_paper", "r_value": "r_value", "usflux_strong": "usflux_strong",
    "strong_frac": "strong_frac", "bmax": "bmax", "flux_imbalance": "flux_imbalance",
}
#: table column whose boundary defines the fold
FOLD_PARAMETER = "lead_sign"


class DirectionError(ValueError):
    """Bad input for a direction computation; the message names the parameter/direction."""


class RequestOutOfRange(DirectionError):
    """A generation request outside the calibrated range; the message gives the range."""


# --------------------------------------------------------------------------------------------
# value spaces
# --------------------------------------------------------------------------------------------


def to_fit_space(name: str, values, log_params: Iterable[str] = DEFAULT_LOG_PARAMS) -> np.ndarray:
    """Physical values (any shape) -> fit space: log10 for ``log_params`` (non-positive -> NaN)."""
    v = np.asarray(values, dtype=np.float64)
    if name in tuple(log_params):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return v.copy()


def from_fit_space(name: str, y, log_params: Iterable[str] = DEFAULT_LOG_PARAMS) -> np.ndarray:
    """Inverse of :func:`to_fit_space`."""
    y = np.asarray(y, dtype=np.float64)
    return 10.0**y if name in tuple(log_params) else y.copy()


def relative_error(name: str, achieved, requested) -> np.ndarray:
    """|achieved - requested| / |requested| on the linear quantity (``10**x`` for LOG_VALUED)."""
    a = np.asarray(achieved, dtype=np.float64)
    r = np.asarray(requested, dtype=np.float64)
    if name in LOG_VALUED:
        a, r = 10.0**a, 10.0**r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(a - r) / np.abs(r)


# --------------------------------------------------------------------------------------------
# labels and boundaries
# --------------------------------------------------------------------------------------------


def make_labels(values, name: str, mode: str = "median", fraction: float = 0.3):
    """Binary labels for one parameter.

    values: (N,) physical values (NaN allowed; NaN rows are not used).
    mode "median": label 1 where value > median of the finite values (all finite rows kept);
    mode "fraction": label 1 for the top ``fraction``, 0 for the bottom ``fraction``, the
    middle is dropped.
    Returns ``(keep (N,) bool, labels (N,) int8)``; labels are meaningful where ``keep``.
    Raises :class:`DirectionError` naming the parameter when all values are NaN, the values are
    constant, or a class has fewer than 2 members.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.any():
        raise DirectionError(f"parameter {name!r}: all {v.size} values are NaN/inf, cannot label samples")
    fv = v[finite]
    if np.ptp(fv) == 0:
        raise DirectionError(
            f"parameter {name!r} is constant ({fv[0]:g} in all {fv.size} finite samples), cannot label samples"
        )
    if mode == "median":
        thr = float(np.median(fv))
        keep = finite.copy()
        labels = (v > thr).astype(np.int8)
    elif mode == "fraction":
        if not 0 < fraction <= 0.5:
            raise DirectionError(f"parameter {name!r}: label fraction must be in (0, 0.5], got {fraction}")
        lo, hi = np.quantile(fv, [fraction, 1.0 - fraction])
        if lo >= hi:
            raise DirectionError(
                f"parameter {name!r}: top/bottom {fraction:.0%} quantiles coincide ({lo:g}), too many ties to label"
            )
        keep = finite & ((v <= lo) | (v >= hi))
        labels = (v >= hi).astype(np.int8)
    else:
        raise DirectionError(f"unknown label mode {mode!r} (median | fraction)")
    n1 = int(labels[keep].sum())
    n0 = int(keep.sum()) - n1
    if min(n0, n1) < 2:
        raise DirectionError(
            f"parameter {name!r}: degenerate labels ({n0} low / {n1} high samples), too many tied values"
        )
    return keep, labels


def _classifier(kind: str, C: float, seed: int):
    if kind == "linear_svc":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=5000)
    raise DirectionError(f"unknown classifier {kind!r} (linear_svc | logistic)")


def train_boundary(
    latent_codes,
    labels,
    *,
    classifier: str = "linear_svc",
    C: float = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    name: str = "?",
) -> dict:
    """Fit a linear boundary separating ``labels`` in latent space.

    latent_codes: (N, D) float; labels: (N,) in {0, 1}.
    Stratified train/validation split (``val_fraction`` of the rows held out), then a linear
    classifier (LinearSVC by default; z ~ N(0, I) needs no standardisation).
    Returns a dict with ``normal`` (D,) unit vector pointing towards label 1, ``intercept``
    (float, so that the boundary is ``normal @ z + intercept = 0``), ``train_accuracy``,
    ``val_accuracy``, ``n_train``, ``n_val`` and the ``val_index`` (row indices held out).
    """
    from sklearn.model_selection import train_test_split

    X = np.asarray(latent_codes, dtype=np.float64)
    y = np.asarray(labels).astype(int).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise DirectionError(f"parameter {name!r}: latent codes {X.shape} and labels {y.shape} do not match")
    idx = np.arange(X.shape[0])
    tr, va = train_test_split(idx, test_size=val_fraction, stratify=y, random_state=seed)
    clf = _classifier(classifier, C, seed)
    clf.fit(X[tr], y[tr])
    w = np.asarray(clf.coef_, dtype=np.float64).ravel()
    b = float(np.ravel(clf.intercept_)[0])
    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0:
        raise DirectionError(f"parameter {name!r}: the classifier found no direction (zero weight vector)")
    return {
        "normal": w / norm,
        "intercept": b / norm,
        "train_accuracy": float(clf.score(X[tr], y[tr])),
        "val_accuracy": float(clf.score(X[va], y[va])),
        "n_train": int(tr.size),
        "n_val": int(va.size),
        "val_index": va,
    }


def regression_direction(latent_codes, target, val_index=None) -> dict:
    """Least-squares fit ``target ~ z @ coef + c``; returns unit ``direction`` (D,) and R^2.

    latent_codes: (N, D); target: (N,) (fit space, e.g. log10 flux), finite.
    R^2 is reported on ``val_index`` rows (fit on the others) when given, else in-sample.
    """
    from sklearn.linear_model import LinearRegression

    X = np.asarray(latent_codes, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64).ravel()
    mask = np.ones(len(t), bool)
    if val_index is not None:
        mask[np.asarray(val_index)] = False
    reg = LinearRegression().fit(X[mask], t[mask])
    r2 = reg.score(X[~mask], t[~mask]) if (~mask).sum() > 1 else reg.score(X, t)
    coef = np.asarray(reg.coef_, dtype=np.float64)
    return {"direction": coef / np.linalg.norm(coef), "r2": float(r2), "slope_per_unit_z": float(np.linalg.norm(coef))}


def project_boundary(primal, *conditions, tol: float = 1e-6) -> np.ndarray:
    """Conditional direction: remove from ``primal`` its components along ``conditions``.

    primal: (D,) direction (need not be unit). conditions: any number of (D,) vectors or
    (K, D) arrays. One condition ``c`` gives ``n - (n.c) c`` (``c`` normalised); several are
    orthonormalised with a QR decomposition and ``n - Q Q^T n`` is returned. The result is a unit
    (D,) vector orthogonal to every condition.
    Raises :class:`DirectionError` when the conditions are linearly dependent (or zero), or when
    ``primal`` lies in their span (nothing left to move).
    """
    n = np.asarray(primal, dtype=np.float64).ravel()
    if not np.isfinite(n).all() or np.linalg.norm(n) == 0:
        raise DirectionError("primal direction is zero or not finite")
    if not conditions:
        return n / np.linalg.norm(n)
    cols = []
    for c in conditions:
        c = np.asarray(c, dtype=np.float64)
        cols.extend(np.atleast_2d(c))
    C = np.stack(cols, axis=1)  # (D, K)
    if C.shape[0] != n.size:
        raise DirectionError(f"condition dimension {C.shape[0]} does not match the primal direction dimension {n.size}")
    norms = np.linalg.norm(C, axis=0)
    if (norms == 0).any() or not np.isfinite(C).all():
        raise DirectionError("a condition direction is zero or not finite")
    C = C / norms
    if C.shape[1] > n.size:
        raise DirectionError(f"{C.shape[1]} conditions are linearly dependent in {n.size} dimensions")
    Q, R = np.linalg.qr(C)
    diag = np.abs(np.diag(R))
    if diag.min() < tol:
        raise DirectionError(
            f"the {C.shape[1]} condition directions are linearly dependent "
            f"(|R_kk| = {diag.min():.2e} < {tol:g}); drop one of them"
        )
    out = n - Q @ (Q.T @ n)
    norm = np.linalg.norm(out)
    if norm < tol * np.linalg.norm(n):
        raise DirectionError("the primal direction lies in the span of the conditions: nothing left to move")
    return out / norm


# --------------------------------------------------------------------------------------------
# polarity folding
# --------------------------------------------------------------------------------------------


def reflect(vectors, fold) -> np.ndarray:
    """Householder reflection ``H v = v - 2 (v.u) u`` across the hyperplane normal to ``fold``.

    vectors: (D,) or (N, D); fold: (D,) unit vector u. Returns the same shape. H is its own
    inverse and preserves lengths and angles.
    """
    v = np.asarray(vectors, dtype=np.float64)
    u = np.asarray(fold, dtype=np.float64).ravel()
    return v - 2.0 * (v @ u)[..., None] * u


def fold_latents(latent_codes, fold) -> tuple[np.ndarray, np.ndarray]:
    """Map latents to the ``z.u >= 0`` half-space.

    latent_codes: (N, D); fold: (D,) unit u, or None (no fold: a copy, nothing reflected).
    Returns ``(folded (N, D), negative (N,) bool)`` where ``negative`` marks the rows that were
    reflected (``z.u < 0``).
    """
    Z = np.asarray(latent_codes, dtype=np.float64)
    if fold is None:
        return Z.copy(), np.zeros(Z.shape[0], bool)
    negative = Z @ np.asarray(fold, dtype=np.float64).ravel() < 0
    out = Z.copy()
    out[negative] = reflect(Z[negative], fold)
    return out, negative


def folded_values(table: pd.DataFrame, name: str, negative) -> np.ndarray:
    """Values of ``name`` seen from the folded side: rows that were reflected take the value of
    the polarity partner (TPF <-> TNF; even parameters are unchanged). -> (N,) float64."""
    partner = POLARITY_PARTNER.get(name, name)
    v = table[name].to_numpy(dtype=np.float64)
    if partner == name:
        return v.copy()
    if partner not in table.columns:
        raise DirectionError(f"parameter {name!r} is folded with its polarity partner {partner!r}, "
                             "which is not a column of the latent table")
    return np.where(np.asarray(negative, bool), table[partner].to_numpy(dtype=np.float64), v)


def fit_polarity_fold(latents, table: pd.DataFrame, cfg: Mapping) -> tuple[np.ndarray | None, dict]:
    """Fold direction u: unit normal of a linear boundary between lead_sign = +1 and -1 samples.

    latents: (N, D); table: N rows with a ``lead_sign`` column (+1 / -1, NaN or 0 where there is
    no bipole). Returns ``(u (D,) or None, info)``; u is None (no folding, reason in ``info``)
    when the column is missing, fewer than 20 samples of a sign exist, or the boundary's
    validation accuracy is below ``cfg['fold_min_accuracy']`` (default 0.8): then the latent does
    not encode the polarity order linearly and reflecting across it would mix unrelated samples.
    """
    info: dict = {"mode": "lead_sign", "parameter": FOLD_PARAMETER}
    if FOLD_PARAMETER not in table.columns:
        info["reason"] = f"the latent table has no {FOLD_PARAMETER!r} column"
        return None, info
    s = table[FOLD_PARAMETER].to_numpy(dtype=np.float64)
    keep = np.isfinite(s) & (s != 0)
    n_pos, n_neg = int((s[keep] > 0).sum()), int((s[keep] < 0).sum())
    info.update(n_positive=n_pos, n_negative=n_neg)
    if min(n_pos, n_neg) < 20:
        info["reason"] = f"too few samples of one leading polarity ({n_pos} +1 / {n_neg} -1)"
        return None, info
    b = train_boundary(
        np.asarray(latents, dtype=np.float64)[keep], (s[keep] > 0).astype(int),
        classifier=cfg.get("classifier", "linear_svc"), C=float(cfg.get("C", 1.0)),
        val_fraction=float(cfg.get("val_fraction", 0.2)), seed=int(cfg.get("seed", 0)), name=FOLD_PARAMETER,
    )
    info.update(val_accuracy=b["val_accuracy"], intercept=b["intercept"])
    min_acc = float(cfg.get("fold_min_accuracy", 0.8))
    if b["val_accuracy"] < min_acc:
        info["reason"] = (f"{FOLD_PARAMETER} boundary validation accuracy {b['val_accuracy']:.3f} < "
                          f"fold_min_accuracy {min_acc:g}: the latent does not encode the polarity order linearly")
        return None, info
    return b["normal"], info


@dataclass(frozen=True)
class Boundaries:
    """Fitted boundary normals plus the optional polarity fold.

    normals: parameter -> unit (D,) normal, fitted on folded latents for the parameters in
    ``folded``; fold: unit (D,) u or None; folded: names fitted on folded latents.
    A base latent z with ``z.u >= 0`` moves along the normals as fitted; one with ``z.u < 0``
    along the reflected normal of the polarity partner, ``H n_partner`` (:meth:`side_normals`).
    """

    normals: Mapping[str, np.ndarray]
    fold: np.ndarray | None = None
    folded: frozenset = frozenset()

    @property
    def dim(self) -> int:
        return int(next(iter(self.normals.values())).size)

    def side_normals(self, negative: bool) -> dict[str, np.ndarray]:
        """Normals in raw z coordinates for bases on the positive (False) or negative side."""
        if not negative or self.fold is None:
            return dict(self.normals)
        out = {}
        for p, n in self.normals.items():
            q = POLARITY_PARTNER.get(p, p)
            out[p] = reflect(self.normals.get(q, n), self.fold) if p in self.folded else n
        return out

    def side(self, latent_codes) -> np.ndarray:
        """(N, D) -> (N,) bool, True where z.u < 0 (all False without a fold)."""
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        if self.fold is None:
            return np.zeros(Z.shape[0], bool)
        return Z @ self.fold < 0

    def vectors(self, spec: "DirectionSpec") -> tuple[np.ndarray, np.ndarray]:
        """(positive-side, negative-side) unit (D,) directions of ``spec``."""
        pos = spec.vector(self.side_normals(False))
        return pos, (spec.vector(self.side_normals(True)) if self.fold is not None else pos)

    def per_base(self, spec: "DirectionSpec", latent_codes) -> np.ndarray:
        """Direction of ``spec`` for each base latent: (N, D) -> (N, D) unit rows."""
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        pos, neg = self.vectors(spec)
        return np.where(self.side(Z)[:, None], neg[None, :], pos[None, :])

    def eps_bounds(self, spec: "DirectionSpec", latent_codes) -> np.ndarray:
        """Range of eps that keeps ``z + eps * d(z)`` on the base's side of the fold: (N, D) -> (N, 2).

        A direction whose target is folded is defined on one half-space: at the fold the bipole
        amplitude passes through zero and beyond it the polarity-reversed region grows again
        (an even parameter cannot decrease below its value at the fold along that line).
        [-inf, inf] rows without a fold or for an unfolded target.
        """
        Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
        out = np.tile([-np.inf, np.inf], (Z.shape[0], 1))
        if self.fold is None or spec.target not in self.folded:
            return out
        a = Z @ self.fold
        du = self.per_base(spec, Z) @ self.fold
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -a / du
        pos = a >= 0
        lower = (pos & (du > 0)) | (~pos & (du < 0))
        upper = ~lower & (du != 0)
        out[lower, 0] = np.minimum(t[lower], 0.0)
        out[upper, 1] = np.maximum(t[upper], 0.0)
        return out

    def fold_latents(self, latent_codes) -> tuple[np.ndarray, np.ndarray]:
        """:func:`fold_latents` with this fold (identity without one)."""
        return fold_latents(latent_codes, self.fold)


def as_boundaries(normals) -> Boundaries:
    """A :class:`Boundaries` from itself or from a plain {name: normal} mapping (no fold)."""
    return normals if isinstance(normals, Boundaries) else Boundaries(dict(normals))


def beyond_bounds(eps, bounds) -> np.ndarray:
    """eps (E,) against per-base eps ranges bounds (B, 2) -> (B, E) bool, True outside the range."""
    eps = np.asarray(eps, dtype=np.float64).ravel()
    lim = np.atleast_2d(np.asarray(bounds, dtype=np.float64))
    return (eps[None, :] < lim[:, :1] - 1e-12) | (eps[None, :] > lim[:, 1:] + 1e-12)


def _direction_rows(vector, latent_codes) -> np.ndarray:
    """(D,) vector, (N, D) rows or callable z -> rows, for N base latents -> (N, D)."""
    Z = np.atleast_2d(np.asarray(latent_codes, dtype=np.float64))
    v = vector(Z) if callable(vector) else np.asarray(vector, dtype=np.float64)
    return np.broadcast_to(v, Z.shape) if v.ndim == 1 else v


# --------------------------------------------------------------------------------------------
# fitting all parameters, storage
# --------------------------------------------------------------------------------------------


def latents_from_table(table: pd.DataFrame) -> np.ndarray:
    """The ``z`` column (list<float32>[D] per row) -> (N, D) float64."""
    if "z" not in table.columns:
        raise DirectionError("latent table has no 'z' column")
    return np.stack([np.asarray(v, dtype=np.float64) for v in table["z"].to_numpy()])


def _fit_one(Z, values, name, cfg) -> tuple[dict, np.ndarray, np.ndarray]:
    """Labels + boundary for one parameter on latents Z (N, D) -> (boundary, keep, labels)."""
    keep, labels = make_labels(values, name, cfg.get("labels", "median"), float(cfg.get("fraction", 0.3)))
    b = train_boundary(
        Z[keep],
        labels[keep],
        classifier=cfg.get("classifier", "linear_svc"),
        C=float(cfg.get("C", 1.0)),
        val_fraction=float(cfg.get("val_fraction", 0.2)),
        seed=int(cfg.get("seed", 0)),
        name=name,
    )
    return b, keep, labels


def fit_boundaries(latents, table: pd.DataFrame, cfg: Mapping) -> tuple[dict, dict]:
    """Fit one boundary (and one regression direction) per configured parameter.

    latents: (N, D); table: N rows with one column per parameter (physical units).
    cfg: the ``directions`` config section (keys parameters, log_params, labels, fraction,
    val_fraction, classifier, C, seed, fold, fold_min_accuracy).
    With ``fold: lead_sign`` the polarity fold u is fitted first (:func:`fit_polarity_fold`) and
    the boundaries of polarity-even parameters (:data:`POLARITY_PARTNER`) are fitted on folded
    latents with partner-swapped values (:func:`folded_values`); their unfolded (paper) accuracy
    is reported beside it.
    Returns ``(arrays, summary)``: arrays = {"names": (P,) str, "normals": (P, D),
    "intercepts": (P,), "val_accuracy": (P,), "regression_directions": (P, D), "folded": (P,)
    bool, "fold_normal": (D,) (zeros without a fold)}; summary = JSON-able per-parameter dict
    (accuracies, class sizes, threshold, regression R^2 and its cosine with the normal) plus
    ``_fold`` (how the fold was fitted, or why there is none).
    """
    Z = np.asarray(latents, dtype=np.float64)
    params = list(cfg.get("parameters", REQUESTABLE))
    log_params = tuple(cfg.get("log_params", DEFAULT_LOG_PARAMS))
    for p in params:
        if p not in table.columns:
            raise DirectionError(f"parameter {p!r} is not a column of the latent table ({list(table.columns)})")
    fold_mode = cfg.get("fold", "none")
    if fold_mode == "lead_sign":
        fold, fold_info = fit_polarity_fold(Z, table, cfg)
        if fold is None:
            logger.warning("no polarity fold: %s", fold_info["reason"])
        else:
            logger.info("polarity fold: lead_sign boundary val accuracy %.3f", fold_info["val_accuracy"])
    elif fold_mode == "none":
        fold, fold_info = None, {"mode": "none"}
    else:
        raise DirectionError(f"unknown directions.fold {fold_mode!r} (none | lead_sign)")
    Zf, negative = fold_latents(Z, fold)
    fold_info["n_reflected"] = int(negative.sum())
    names, normals, intercepts, accs, regs, folded = [], [], [], [], [], []
    summary: dict = {}
    for p in params:
        # TPF/TNF are folded only together: a reflected base needs its partner's normal
        is_folded = fold is not None and POLARITY_PARTNER.get(p) in params
        values = folded_values(table, p, negative) if is_folded else table[p].to_numpy(dtype=np.float64)
        Zp = Zf if is_folded else Z
        b, keep, labels = _fit_one(Zp, values, p, cfg)
        y = to_fit_space(p, values, log_params)
        ok = np.isfinite(y)
        reg_val = np.flatnonzero(np.isin(np.flatnonzero(ok), np.flatnonzero(keep)[b["val_index"]]))
        reg = regression_direction(Zp[ok], y[ok], val_index=reg_val)
        cos = float(reg["direction"] @ b["normal"])
        unfolded_acc = _fit_one(Z, table[p].to_numpy(dtype=np.float64), p, cfg)[0]["val_accuracy"] if is_folded \
            else b["val_accuracy"]
        logger.info(
            "%s: val accuracy %.3f%s (train %.3f, n=%d/%d), regression R2 %.3f, cos(regression, normal) %.3f",
            p, b["val_accuracy"], f" folded, {unfolded_acc:.3f} unfolded" if is_folded else "",
            b["train_accuracy"], b["n_train"], b["n_val"], reg["r2"], cos,
        )
        names.append(p)
        normals.append(b["normal"])
        intercepts.append(b["intercept"])
        accs.append(b["val_accuracy"])
        regs.append(reg["direction"])
        folded.append(is_folded)
        summary[p] = {
            "val_accuracy": b["val_accuracy"],
            "val_accuracy_unfolded": unfolded_acc,
            "folded": bool(is_folded),
            "train_accuracy": b["train_accuracy"],
            "n_train": b["n_train"],
            "n_val": b["n_val"],
            "n_high": int(labels[keep].sum()),
            "n_low": int(keep.sum() - labels[keep].sum()),
            "median": float(np.nanmedian(values)),
            "intercept": b["intercept"],
            "fit_space": "log10" if p in log_params else "identity",
            "regression_r2": reg["r2"],
            "regression_cosine": cos,
        }
    N = np.array(normals)
    summary["_normal_cosines"] = {a: {b: float(N[i] @ N[j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
    summary["_fold"] = fold_info
    arrays = {
        "names": np.array(names),
        "normals": N,
        "intercepts": np.array(intercepts),
        "val_accuracy": np.array(accs),
        "regression_directions": np.array(regs),
        "folded": np.array(folded, dtype=bool),
        "fold_normal": np.zeros(Z.shape[1]) if fold is None else np.asarray(fold, dtype=np.float64),
    }
    return arrays, summary


def save_boundaries(npz_path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the arrays of :func:`fit_boundaries` to ``npz_path`` atomically."""
    from sharpgen.atomic import atomic_path

    with atomic_path(npz_path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def load_boundaries(npz_path) -> dict[str, np.ndarray]:
    """boundaries.npz -> {parameter name: unit normal (D,)} (as fitted; see :func:`load_direction_field`)."""
    with np.load(npz_path) as f:
        return {str(n): np.asarray(v, dtype=np.float64) for n, v in zip(f["names"], f["normals"])}


def load_direction_field(npz_path) -> Boundaries:
    """boundaries.npz -> :class:`Boundaries` (normals + polarity fold; files without the fold
    arrays, or with a zero fold normal, give no fold)."""
    with np.load(npz_path) as f:
        names = [str(n) for n in f["names"]]
        normals = {n: np.asarray(v, dtype=np.float64) for n, v in zip(names, f["normals"])}
        fold = np.asarray(f["fold_normal"], dtype=np.float64) if "fold_normal" in f.files else None
        folded = [n for n, k in zip(names, f["folded"]) if k] if "folded" in f.files else []
    if fold is None or not np.any(fold):
        return Boundaries(normals)
    return Boundaries(normals, fold / np.linalg.norm(fold), frozenset(folded))


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# direction specifications
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectionSpec:
    """Move ``target`` while holding the parameters ``hold`` (sorted tuple; empty = unconditional)."""

    target: str
    hold: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "hold", tuple(sorted(set(self.hold))))
        if self.target in self.hold:
            raise DirectionError(f"direction {self.target!r} cannot hold its own target")

    @property
    def key(self) -> str:
        return self.target if not self.hold else f"{self.target}|{','.join(self.hold)}"

    @classmethod
    def parse(cls, key: str) -> "DirectionSpec":
        target, _, hold = key.partition("|")
        return cls(target.strip(), tuple(h.strip() for h in hold.split(",") if h.strip()))

    def vector(self, normals: Mapping[str, np.ndarray]) -> np.ndarray:
        """Unit (D,) direction from the boundary normals (conditions projected out)."""
        missing = [p for p in (self.target, *self.hold) if p not in normals]
        if missing:
            raise DirectionError(f"direction {self.key!r}: no boundary for {missing} (available: {sorted(normals)})")
        try:
            return project_boundary(normals[self.target], *[normals[h] for h in self.hold])
        except DirectionError as err:
            raise DirectionError(f"direction {self.key!r}: {err}") from None


def direction_specs(cfg: Mapping) -> list[DirectionSpec]:
    """Unconditional direction of every traversed parameter + the configured conditional ones."""
    params = list(cfg.get("traversal", {}).get("parameters") or cfg.get("parameters", REQUESTABLE))
    specs = [DirectionSpec(p) for p in params]
    for c in cfg.get("conditional", []) or []:
        specs.append(DirectionSpec(c["target"], tuple(c["hold"])))
    seen, out = set(), []
    for s in specs:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# rendering: z -> images -> parameters
# --------------------------------------------------------------------------------------------

Renderer = Callable[[np.ndarray], pd.DataFrame]


def latent_from_seed(seed: int, dim: int) -> np.ndarray:
    """The base latent of ``sharpgen generate --seed``: (dim,) float32 from default_rng(seed)."""
    return np.random.default_rng(int(seed)).standard_normal(dim).astype(np.float32)


def _load_generator(path, device="cpu"):
    from sharpgen.gan import load_generator

    return load_generator(path, device=device)


def _generate(G, z: np.ndarray, batch_size: int) -> np.ndarray:
    from sharpgen.gan import generate

    return generate(G, z, batch_size=batch_size)


def measurement_context(patches_zarr) -> dict:
    """How generated images are measured, from the patch store: clip_gauss, mode, size and the
    pixel scale (the median per-patch scale, :func:`sharpgen.sampling.generated_scale`, exactly
    as latents.parquet was measured). JSON-able dict."""
    import zarr

    from sharpgen.sampling import generated_scale

    attrs = dict(zarr.open_group(str(patches_zarr), mode="r").attrs)
    if "clip_gauss" not in attrs:
        raise DirectionError(f"patch store {patches_zarr} has no 'clip_gauss' attribute")
    scale = generated_scale(patches_zarr)
    return {
        "clip_gauss": float(attrs["clip_gauss"]),
        "mode": str(attrs.get("mode", "crop")),
        "size": int(attrs.get("size", 0)),
        "pixel_size_mm": float(scale.size_mm),
        "pixel_area_cm2": float(scale.area_cm2),
        "pixel_size_arcsec": float(scale.size_arcsec),
    }


def scale_from_context(ctx: Mapping):
    from sharpgen.physics import PixelScale

    return PixelScale(
        size_mm=float(ctx["pixel_size_mm"]),
        area_cm2=float(ctx["pixel_area_cm2"]),
        size_arcsec=float(ctx["pixel_size_arcsec"]),
    )


def unit_of(name: str, mode: str) -> str:
    """Unit string of a parameter; in patches mode 'resize' the values are in image units."""
    if mode == "resize":
        return "image units (patches mode 'resize': not physical)"
    try:
        from sharpgen.physics import PARAMETERS

        return str(PARAMETERS[name].unit)
    except (ImportError, KeyError, AttributeError):
        return {"psep": "Mm", "psep_robust": "Mm", "r_value": "log10 Mx"}.get(name, "Mx")


def make_renderer(G, ctx: Mapping, params: Sequence[str] | None = None, batch_size: int = 256) -> Renderer:
    """z (N, D) -> DataFrame of parameters (N rows) measured on clip_gauss * G(z) at ctx's scale."""
    from sharpgen.physics import compute_parameters

    scale = scale_from_context(ctx)
    clip = float(ctx["clip_gauss"])

    def render(z: np.ndarray) -> pd.DataFrame:
        images = _generate(G, np.asarray(z, dtype=np.float32), batch_size)
        df = compute_parameters(clip * images.astype(np.float32), scale)
        return df if params is None else df[list(params)]

    return render


# --------------------------------------------------------------------------------------------
# traversals
# --------------------------------------------------------------------------------------------


def eps_grid(eps_max: float, n_eps: int) -> np.ndarray:
    """Symmetric grid in [-eps_max, eps_max] with ``n_eps`` points, always including 0."""
    return np.union1d(np.linspace(-eps_max, eps_max, int(n_eps)), [0.0])


def traverse(
    render: Renderer,
    base_z,
    vectors: Mapping[str, np.ndarray],
    eps,
    chunk: int = 4096,
    bounds: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Walk ``z_b + eps * n_d`` for every base b, direction d and eps; measure the images.

    render: z (M, D) -> DataFrame of M rows of parameters; base_z: (B, D); vectors: direction
    key -> unit (D,), or (B, D) one unit direction per base (polarity-folded directions,
    :meth:`Boundaries.per_base`); eps: (E,). Returns one row per generated image with columns
    ``direction`` (key), ``target``, ``hold`` (comma list), ``base`` (0..B-1), ``eps`` and the
    parameter columns (physical units): B * E rows per direction.
    bounds: optional direction key -> (B, 2) eps range per base (:meth:`Boundaries.eps_bounds`);
    images outside it are not measured (parameters NaN, ``beyond_fold`` True).
    """
    Z0 = np.asarray(base_z, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64).ravel()
    B, E = Z0.shape[0], eps.size
    frames = []
    for key, n in vectors.items():
        spec = DirectionSpec.parse(key)
        n = _direction_rows(n, Z0)
        Z = (Z0[:, None, :] + eps[None, :, None] * n[:, None, :]).reshape(B * E, -1)
        beyond = np.zeros((B, E), bool) if bounds is None or key not in bounds else beyond_bounds(eps, bounds[key])
        beyond = beyond.ravel()
        inside = np.flatnonzero(~beyond)
        parts = [render(Z[inside[i : i + chunk]].astype(np.float32)) for i in range(0, len(inside), chunk)]
        meas = pd.concat(parts, ignore_index=True)
        meas.index = inside
        meas = meas.reindex(np.arange(len(Z)))
        meta = pd.DataFrame(
            {
                "direction": key,
                "target": spec.target,
                "hold": ",".join(spec.hold),
                "base": np.repeat(np.arange(B), E),
                "eps": np.tile(eps, B),
                "beyond_fold": beyond,
            }
        )
        frames.append(pd.concat([meta, meas.reset_index(drop=True)], axis=1))
        logger.info("traversed %s: %d images", key, len(Z))
    return pd.concat(frames, ignore_index=True)


def _per_base_slopes(eps: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of Y (B, E) against eps (E,), NaN-aware -> (B,)."""
    out = np.full(Y.shape[0], np.nan)
    for b in range(Y.shape[0]):
        ok = np.isfinite(Y[b])
        if ok.sum() >= 2 and np.ptp(eps[ok]) > 0:
            x = eps[ok] - eps[ok].mean()
            out[b] = float(x @ (Y[b, ok] - Y[b, ok].mean()) / (x @ x))
    return out


def _pivot(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one direction -> (eps (E,), values (B, E))."""
    p = df.pivot_table(index="base", columns="eps", values=col, aggfunc="first", dropna=False)
    return p.columns.to_numpy(dtype=np.float64), p.to_numpy(dtype=np.float64)


def traversal_metrics(
    df: pd.DataFrame,
    params: Sequence[str],
    std: Mapping[str, float],
    log_params: Iterable[str] = DEFAULT_LOG_PARAMS,
) -> dict:
    """Monotonicity and entanglement of every traversed direction.

    df: the table of :func:`traverse`; params: parameter columns to assess; std: parameter ->
    standard deviation of the generated population in fit space (log10 for log_params), used to
    standardise. Per direction: ``spearman_median`` (median over bases of the Spearman
    correlation of the target with eps), ``spearman_frac_ge_0.9``, ``slope_std`` (median over bases
    of d(param_j / std_j)/d eps) and ``entanglement`` (slope_std[j] / slope_std[target]: change of
    every parameter per unit change of the target, in standardised units). For conditional
    directions, ``held`` gives for each held parameter the entanglement under the conditional
    and the unconditional direction and ``reduction = 1 - |cond| / |uncond|``.
    """
    from scipy.stats import spearmanr

    log_params = tuple(log_params)
    out: dict = {}
    for key, g in df.groupby("direction", sort=False):
        spec = DirectionSpec.parse(key)
        slopes = {}
        for p in params:
            eps, Y = _pivot(g.assign(_y=to_fit_space(p, g[p], log_params)), "_y")
            s = std.get(p, np.nan)
            slopes[p] = float(np.nanmedian(_per_base_slopes(eps, Y / s))) if s and np.isfinite(s) and s > 0 else np.nan
        eps, Y = _pivot(g, spec.target)
        rhos = []
        for row in Y:
            ok = np.isfinite(row)
            if ok.sum() >= 3 and np.ptp(row[ok]) > 0:
                rhos.append(float(spearmanr(eps[ok], row[ok])[0]))
            else:
                rhos.append(np.nan)
        rhos = np.array(rhos)
        st = slopes.get(spec.target, np.nan)
        ent = {p: (slopes[p] / st if st and np.isfinite(st) else np.nan) for p in params}
        out[key] = {
            "target": spec.target,
            "hold": list(spec.hold),
            "n_base": int(Y.shape[0]),
            "frac_beyond_fold": float(g["beyond_fold"].mean()) if "beyond_fold" in g else 0.0,
            "spearman_median": float(np.nanmedian(rhos)) if np.isfinite(rhos).any() else np.nan,
            "spearman_frac_ge_0.9": float(np.mean(np.nan_to_num(rhos, nan=-1) >= 0.9)),
            "slope_std": slopes,
            "entanglement": ent,
        }
    for key, m in out.items():
        if not m["hold"] or m["target"] not in out:
            continue
        unc = out[m["target"]]["entanglement"]
        held = {}
        for h in m["hold"]:
            c, u = m["entanglement"].get(h, np.nan), unc.get(h, np.nan)
            held[h] = {
                "conditional": c,
                "unconditional": u,
                "reduction": float(1 - abs(c) / abs(u)) if u and np.isfinite(u) and np.isfinite(c) else np.nan,
            }
        m["held"] = held
    return out


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def fit_calibration(
    df: pd.DataFrame,
    key: str,
    log_params: Iterable[str] = DEFAULT_LOG_PARAMS,
    n_bootstrap: int = 200,
    seed: int = 0,
    range_quantiles: tuple[float, float] = (0.02, 0.98),
) -> dict:
    """Fit ``y(z + eps n) - y(z) = slope * eps`` for one direction (``y`` = target in fit space).

    df: traversal table (rows of direction ``key``, grid containing eps = 0). The fit is pooled
    over bases through the origin; ``resid_sigma`` is the residual scatter (fit units) and
    ``slope_std`` / ``slope_ci68`` come from a bootstrap over bases. ``eps_min``/``eps_max`` bound
    the calibrated eps; ``range_fit`` / ``range`` are the (quantile) range of the target seen in
    the traversals (fit space / physical units) -- requests outside are refused.
    """
    log_params = tuple(log_params)
    g = df[df["direction"] == key]
    if g.empty:
        raise DirectionError(f"direction {key!r} is not in the traversal table")
    spec = DirectionSpec.parse(key)
    eps, Y = _pivot(g.assign(_y=to_fit_space(spec.target, g[spec.target], log_params)), "_y")
    i0 = np.flatnonzero(np.isclose(eps, 0.0))
    if i0.size == 0:
        raise DirectionError(f"direction {key!r}: the traversal eps grid has no eps = 0")
    D = Y - Y[:, [i0[0]]]
    X = np.broadcast_to(eps, D.shape)

    def slope_of(rows):
        d, x = D[rows].ravel(), X[rows].ravel()
        ok = np.isfinite(d)
        return float(x[ok] @ d[ok] / (x[ok] @ x[ok])) if ok.any() and (x[ok] @ x[ok]) > 0 else np.nan

    allrows = np.arange(D.shape[0])
    slope = slope_of(allrows)
    if not np.isfinite(slope) or slope == 0:
        raise DirectionError(f"direction {key!r}: the target {spec.target!r} does not change along the direction")
    ok = np.isfinite(D)
    resid = (D - slope * X)[ok]
    ss_tot = float(np.sum((D[ok] - D[ok].mean()) ** 2))
    rng = np.random.default_rng(seed)
    boots = np.array([slope_of(rng.integers(0, D.shape[0], D.shape[0])) for _ in range(n_bootstrap)])
    boots = boots[np.isfinite(boots)]
    yq = np.nanquantile(Y, range_quantiles)
    rng_phys = from_fit_space(spec.target, yq, log_params)
    return {
        "direction": key,
        "target": spec.target,
        "hold": list(spec.hold),
        "fit_space": "log10" if spec.target in log_params else "identity",
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


def solve_requests(
    render_target: Callable[[np.ndarray], np.ndarray],
    z_base,
    vector,
    requested,
    cal: Mapping,
    *,
    log_params: Iterable[str] = DEFAULT_LOG_PARAMS,
    refine_steps: int = 2,
    tol: float = 0.02,
    y0=None,
    eps_bounds=None,
) -> dict:
    """Find eps so that ``target(z_base + eps * vector)`` equals ``requested``, for N requests.

    render_target: z (M, D) -> target values (M,) (physical units); z_base: (N, D); vector: (D,)
    unit, or (N, D) one unit direction per base; requested: (N,) physical; cal: a :func:`fit_calibration` dict; y0: optional (N,) fit-space
    target at the bases (measured here otherwise); eps_bounds: optional (N, 2) eps range per base
    (the polarity fold, :meth:`Boundaries.eps_bounds`): requests needing eps outside it are
    refused and refinement stays inside it.
    First step eps = (y_req - y0) / slope from the calibration; then up to ``refine_steps`` secant
    steps on the MEASURED value for requests whose relative error exceeds ``tol`` (falling back to
    the calibrated slope when the secant is unusable). eps is kept within 1.5x the calibrated range.
    Returns dict of (N,) arrays: ``eps``, ``achieved`` (physical), ``rel_error``, ``rel_error_first``
    (after the calibrated step only), ``steps`` (generator calls after the base), ``in_range``
    (bool: the first-step eps was inside [eps_min, eps_max]; out-of-range requests are not solved).
    """
    log_params = tuple(log_params)
    name = cal["target"]
    Zb = np.asarray(z_base, dtype=np.float64)
    n = _direction_rows(vector, Zb)
    req = np.asarray(requested, dtype=np.float64).ravel()
    y_req = to_fit_space(name, req, log_params)
    if y0 is None:
        y0 = to_fit_space(name, render_target(Zb.astype(np.float32)), log_params)
    y0 = np.asarray(y0, dtype=np.float64)
    slope = float(cal["slope"])
    lo, hi = float(cal["eps_min"]), float(cal["eps_max"])
    eps = (y_req - y0) / slope
    in_range = np.isfinite(eps) & (eps >= lo - 1e-9) & (eps <= hi + 1e-9)
    fold_lo = np.full(len(eps), -np.inf) if eps_bounds is None else np.asarray(eps_bounds, np.float64)[:, 0]
    fold_hi = np.full(len(eps), np.inf) if eps_bounds is None else np.asarray(eps_bounds, np.float64)[:, 1]
    in_range &= (eps >= fold_lo) & (eps <= fold_hi)
    N = len(req)
    best_eps = np.full(N, np.nan)
    best_val = np.full(N, np.nan)
    best_err = np.full(N, np.inf)
    first_err = np.full(N, np.nan)
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
        y = to_fit_space(name, vals, log_params)
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
    return {
        "eps": best_eps,
        "achieved": best_val,
        "rel_error": best_err,
        "rel_error_first": first_err,
        "steps": steps,
        "in_range": in_range,
        "y0": y0,
    }


def seed_range(cal: Mapping, y0: float, log_params: Iterable[str] = DEFAULT_LOG_PARAMS,
               eps_bounds=None) -> tuple[float, float]:
    """Physical target range reachable from a base with fit-space value y0 (calibrated eps range,
    intersected with the base's fold range ``eps_bounds`` (2,) when given)."""
    e_lo, e_hi = float(cal["eps_min"]), float(cal["eps_max"])
    if eps_bounds is not None:
        e_lo, e_hi = max(e_lo, float(eps_bounds[0])), min(e_hi, float(eps_bounds[1]))
    ends = from_fit_space(cal["target"], y0 + float(cal["slope"]) * np.array([e_lo, e_hi]), log_params)
    return float(ends.min()), float(ends.max())


def evaluate_requests(
    render: Renderer,
    vectors: Mapping[str, np.ndarray],
    calibrations: Mapping[str, Mapping],
    dim: int,
    *,
    n_requests: int = 200,
    seed: int = 0,
    log_params: Iterable[str] = DEFAULT_LOG_PARAMS,
    refine_steps: int = 2,
    tol: float = 0.02,
    margin: float = 0.05,
    bounds: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> dict:
    """Achieved relative error over random in-range requests, per calibrated direction.

    vectors: direction key -> unit (D,) or a callable mapping base latents (N, D) to one unit
    direction per base (N, D) (:meth:`Boundaries.per_base`); bounds: optional direction key ->
    callable mapping base latents (N, D) to their eps range (N, 2) (:meth:`Boundaries.eps_bounds`).
    For each direction: ``n_requests`` random seeds give base latents (:func:`latent_from_seed`);
    the requested value is drawn uniformly (in fit space) inside the range reachable from that
    base (calibrated eps range, shrunk by ``margin`` at each end) intersected with the global
    calibrated range. Reports median / 90th percentile of the achieved relative error (after
    refinement and after the calibrated step alone), the fraction below 10%, the mean number of
    generator calls and, for conditional directions, the median absolute change of each held
    parameter (fit space, physical value for identity parameters).
    """
    log_params = tuple(log_params)
    rng = np.random.default_rng(seed)
    out = {}
    for key, cal in calibrations.items():
        spec = DirectionSpec.parse(key)
        seeds = rng.integers(0, 2**31 - 1, n_requests)
        Zb = np.stack([latent_from_seed(s, dim) for s in seeds]).astype(np.float64)
        base_df = render(Zb.astype(np.float32))
        y0 = to_fit_space(spec.target, base_df[spec.target], log_params)
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
        req = from_fit_space(spec.target, y_req, log_params)
        held_after = {}

        def render_target(z, _t=spec.target):
            return render(z)[_t].to_numpy(dtype=np.float64)

        idx = np.flatnonzero(ok)
        V = _direction_rows(vectors[key], Zb)
        res = solve_requests(
            render_target, Zb[idx], V[idx], req[idx], cal,
            log_params=log_params, refine_steps=refine_steps, tol=tol, y0=y0[idx], eps_bounds=lim[idx],
        )
        solved = res["in_range"] & np.isfinite(res["rel_error"])
        err = res["rel_error"][solved]
        first = res["rel_error_first"][solved]
        if spec.hold and solved.any():
            zf = Zb[idx][solved] + res["eps"][solved, None] * V[idx][solved]
            final_df = render(zf.astype(np.float32))
            for h in spec.hold:
                a = to_fit_space(h, final_df[h], log_params)
                b = to_fit_space(h, base_df[h].to_numpy()[idx][solved], log_params)
                held_after[h] = float(np.nanmedian(np.abs(a - b)))
        out[key] = {
            "target": spec.target,
            "hold": list(spec.hold),
            "n_requests": int(n_requests),
            "n_solved": int(solved.sum()),
            "n_refused": int(n_requests - solved.sum()),
            "median_rel_error": float(np.median(err)) if err.size else np.nan,
            "p90_rel_error": float(np.quantile(err, 0.9)) if err.size else np.nan,
            "frac_below_10pct": float(np.mean(err < 0.1)) if err.size else np.nan,
            "median_rel_error_calibrated_step": float(np.nanmedian(first)) if first.size else np.nan,
            # how far the requests are from the base value (relative error of doing nothing)
            "median_rel_offset_from_base": float(np.nanmedian(relative_error(
                spec.target, from_fit_space(spec.target, y0[idx][solved], log_params), req[idx][solved])))
            if solved.any() else np.nan,
            "median_reachable_span_fit_space": float(np.nanmedian(np.abs(cal["slope"]) * (cal["eps_max"] - cal["eps_min"]))),
            "mean_generator_calls": float(res["steps"][solved].mean()) if solved.any() else np.nan,
            "median_abs_change_held_fit_space": held_after,
        }
        logger.info(
            "requests %s: median relative error %.3f (calibrated step alone %.3f), %d/%d solved",
            key, out[key]["median_rel_error"], out[key]["median_rel_error_calibrated_step"],
            out[key]["n_solved"], n_requests,
        )
    return out


# --------------------------------------------------------------------------------------------
# `sharpgen generate`
# --------------------------------------------------------------------------------------------


def generate_request(
    render: Renderer,
    G,
    normals: "Boundaries | Mapping[str, np.ndarray]",
    calibration: Mapping,
    target: str,
    value: float,
    hold: Sequence[str] = (),
    seed: int = 0,
    refine_steps: int = 2,
    tol: float = 0.02,
    batch_size: int = 16,
) -> dict:
    """Generate one image whose ``target`` equals ``value`` (physical units of the calibration).

    normals: a :class:`Boundaries` (the direction of a base on the far side of the polarity fold
    is the reflected one) or a plain {name: unit normal (D,)} mapping.
    calibration: the calibration.json dict (keys ``directions``, ``log_params``, ``measurement``).
    Raises :class:`DirectionError` for an uncalibrated direction and :class:`RequestOutOfRange`
    (message with the available range) for values outside the calibrated range.
    Returns dict with ``image`` (S, S) float32 in [-1, 1], ``z_base`` (D,), ``z`` (D,), ``eps``,
    ``achieved``, ``rel_error``, ``measured`` (parameter -> value), ``base_measured``, ``key``,
    ``unit``.
    """
    spec = DirectionSpec(target, tuple(hold))
    cals = calibration["directions"]
    mode = calibration.get("measurement", {}).get("mode", "crop")
    unit = unit_of(target, mode)
    if spec.key not in cals:
        raise DirectionError(
            f"direction {spec.key!r} is not calibrated; calibrated directions: {sorted(cals)} "
            "(add it to directions.conditional in the config and rerun the pipeline)"
        )
    cal = cals[spec.key]
    if not cal.get("calibrated", True):
        raise DirectionError(f"direction {spec.key!r} could not be calibrated: {cal.get('reason', 'unknown reason')}")
    log_params = tuple(calibration.get("log_params", DEFAULT_LOG_PARAMS))
    glo, ghi = cal["range"]
    if not (glo <= value <= ghi):
        raise RequestOutOfRange(
            f"requested {target}={value:g} is outside the calibrated range [{glo:g}, {ghi:g}] {unit} "
            f"of direction {spec.key!r}"
        )
    field = as_boundaries(normals)
    z_base = latent_from_seed(seed, field.dim)
    vector = field.per_base(spec, z_base[None, :])[0]
    base_df = render(z_base[None, :])
    y0 = to_fit_space(target, base_df[target].to_numpy(dtype=np.float64), log_params)
    lim = field.eps_bounds(spec, z_base[None, :])
    slo, shi = seed_range(cal, float(y0[0]), log_params, eps_bounds=lim[0])
    if not (np.isfinite(y0[0]) and slo <= value <= shi):
        raise RequestOutOfRange(
            f"requested {target}={value:g} is outside the range [{slo:g}, {shi:g}] {unit} reachable from "
            f"seed {seed} along {spec.key!r} (calibrated eps in [{cal['eps_min']:g}, {cal['eps_max']:g}]"
            + (f", polarity fold at eps {lim[0][np.isfinite(lim[0])][0]:.3g}" if np.isfinite(lim[0]).any() else "")
            + f", global calibrated range [{glo:g}, {ghi:g}]); try another --seed"
        )
    def render_target(z):
        return render(z)[target].to_numpy(dtype=np.float64)

    res = solve_requests(
        render_target, z_base[None, :], vector, [value], cal,
        log_params=log_params, refine_steps=refine_steps, tol=tol, y0=y0, eps_bounds=lim,
    )
    eps = float(res["eps"][0])
    z = (z_base.astype(np.float64) + eps * vector).astype(np.float32)
    image = _generate(G, z[None, :], batch_size)[0]
    measured = render(z[None, :]).iloc[0].to_dict()
    return {
        "key": spec.key,
        "image": image,
        "z_base": z_base,
        "z": z,
        "eps": eps,
        "achieved": float(measured[target]),
        "rel_error": float(relative_error(target, measured[target], value)),
        "measured": {k: float(v) for k, v in measured.items()},
        "base_measured": {k: float(v) for k, v in base_df.iloc[0].to_dict().items()},
        "unit": unit,
        "mode": mode,
        "cal": cal,
    }


def write_generated_fits(path, result: Mapping, *, seed: int, target: str, value: float, hold: Sequence[str],
                         clip_gauss: float, generator_path: str | None = None) -> None:
    """Write the generated image (Gauss, or image units x clip in resize mode) + provenance to FITS.

    Primary HDU: (S, S) float32 Br = clip_gauss * image. Header: SEED, ZSHA (sha256 of the float32
    z bytes, 16 hex), DIRECTN, TARGET, HOLD, EPS, REQVAL, ACHVAL, RELERR, UNITMODE and one
    ``HIERARCH MEAS <PARAM>`` per measured parameter. Extension ``LATENT``: binary table with the
    columns ``z_base`` and ``z`` (D float32 each).
    """
    from astropy.io import fits

    from sharpgen.atomic import atomic_path

    z = np.asarray(result["z"], dtype=np.float32)
    hdr = fits.Header()
    hdr["BUNIT"] = ("Gauss", "Br = clip_gauss * generator output")
    hdr["SEED"] = (int(seed), "z_base = default_rng(SEED).standard_normal(D)")
    hdr["ZSHA"] = (hashlib.sha256(z.tobytes()).hexdigest()[:16], "sha256 of float32 z bytes")
    hdr["DIRECTN"] = (result["key"], "latent direction (target|held)")
    hdr["TARGET"] = (target, "requested parameter")
    hdr["HOLD"] = (",".join(hold) or "none", "held parameters (projected out)")
    hdr["EPS"] = (float(result["eps"]), "z = z_base + EPS * direction")
    hdr["REQVAL"] = (float(value), "requested value")
    hdr["ACHVAL"] = (float(result["achieved"]), "achieved (measured) value")
    hdr["RELERR"] = (float(result["rel_error"]), "relative error |ach-req|/req")
    hdr["UNITMODE"] = (result["mode"], "crop: physical units; resize: image units")
    hdr["UNIT"] = (result["unit"][:60], "unit of REQVAL/ACHVAL")
    hdr["CLIPG"] = (float(clip_gauss), "clip_gauss of the patch store")
    if generator_path:
        hdr["GENERATR"] = (str(generator_path)[-60:], "generator weights")
    for k, v in result["measured"].items():
        hdr[f"HIERARCH MEAS {k.upper()}"] = float(v) if np.isfinite(v) else "nan"
    primary = fits.PrimaryHDU(data=(clip_gauss * np.asarray(result["image"], dtype=np.float32)), header=hdr)
    D = z.size
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="z_base", format=f"{D}E", array=np.asarray(result["z_base"], np.float32)[None, :]),
            fits.Column(name="z", format=f"{D}E", array=z[None, :]),
        ],
        name="LATENT",
    )
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([primary, table]).writeto(tmp)


def add_generate_parser(subparsers) -> None:
    """Register ``sharpgen generate`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "generate",
        help="generate a magnetogram with a requested parameter value (latent-direction edit)",
        description="Pick a base latent from --seed, move it along the calibrated direction of the "
        "requested parameter (optionally holding others) and write a FITS file.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    for name in REQUESTABLE:
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, metavar="VALUE",
                       help=f"requested {name} (units of sharpgen.physics.PARAMETERS)")
    p.add_argument("--hold", action="append", default=[], metavar="PARAM",
                   help="parameter(s) to hold (repeat or comma-separate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the base latent")
    p.add_argument("-o", "--output", required=True, help="output FITS path")
    p.add_argument("--generator", default="results/gan/generator.pt")
    p.add_argument("--boundaries", default="results/directions/boundaries.npz")
    p.add_argument("--calibration", default="results/directions/calibration.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--refine-steps", type=int, default=None, help="secant refinement steps (default: calibration's)")
    p.add_argument("--tol", type=float, default=None, help="relative tolerance that stops refinement")
    p.set_defaults(func=cli_generate)


def cli_generate(args) -> int:
    """``sharpgen generate``: see :func:`add_generate_parser`. Returns the exit status."""
    import json
    import sys

    target = next(n for n in REQUESTABLE if getattr(args, n, None) is not None)
    value = float(getattr(args, target))
    hold = [h.strip() for item in args.hold for h in item.split(",") if h.strip()]
    for path, what in ((args.generator, "generator"), (args.boundaries, "boundaries"), (args.calibration, "calibration")):
        if not Path(path).exists():
            print(f"sharpgen generate: {what} file {path} not found (run the pipeline or pass --{what})", file=sys.stderr)
            return 2
    calibration = json.loads(Path(args.calibration).read_text())
    sha = calibration.get("boundaries_sha256")
    if sha and sha != file_sha256(args.boundaries):
        print(f"sharpgen generate: {args.calibration} was made with other boundaries than {args.boundaries} "
              "(rerun the directions stage)", file=sys.stderr)
        return 2
    ctx = calibration["measurement"]
    G = _load_generator(args.generator, device=args.device)
    render = make_renderer(G, ctx, batch_size=16)
    normals = load_direction_field(args.boundaries)
    gen_cfg = calibration.get("settings", {})
    try:
        res = generate_request(
            render, G, normals, calibration, target, value, hold, seed=args.seed,
            refine_steps=args.refine_steps if args.refine_steps is not None else int(gen_cfg.get("refine_steps", 2)),
            tol=args.tol if args.tol is not None else float(gen_cfg.get("tol", 0.02)),
        )
    except DirectionError as err:
        print(f"sharpgen generate: {err}", file=sys.stderr)
        return 2
    write_generated_fits(args.output, res, seed=args.seed, target=target, value=value, hold=hold,
                         clip_gauss=float(ctx["clip_gauss"]), generator_path=args.generator)
    print(f"{target}: requested {value:.4g}, achieved {res['achieved']:.4g} {res['unit']} "
          f"(relative error {res['rel_error']:.2%}), eps={res['eps']:.3f} along {res['key']!r}")
    for h in hold:
        print(f"  held {h}: {res['base_measured'][h]:.4g} -> {res['measured'][h]:.4g} {unit_of(h, res['mode'])}")
    print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------------------------
# stage drivers (called by workflow_scripts/*.py)
# --------------------------------------------------------------------------------------------


def build_calibration(
    traversals: pd.DataFrame,
    cfg: Mapping,
    measurement: Mapping,
    boundaries_sha256: str | None = None,
) -> dict:
    """calibration.json content (without the request evaluation): one :func:`fit_calibration`
    per traversed direction whose target is requestable, plus what ``sharpgen generate`` needs
    (log_params, measurement context, refinement settings, units)."""
    log_params = tuple(cfg.get("log_params", DEFAULT_LOG_PARAMS))
    cc = cfg.get("calibration", {})
    mode = str(measurement.get("mode", "crop"))
    cals = {}
    for key in traversals["direction"].unique():
        spec = DirectionSpec.parse(key)
        if spec.target not in REQUESTABLE:
            continue
        try:
            cal = fit_calibration(
                traversals, key, log_params, n_bootstrap=int(cc.get("n_bootstrap", 200)), seed=int(cfg.get("seed", 0))
            )
            cal["calibrated"] = True
        except DirectionError as err:  # e.g. R identically 0 along the direction: not usable
            logger.warning("direction %s not calibrated: %s", key, err)
            cal = {"direction": key, "target": spec.target, "hold": list(spec.hold), "calibrated": False,
                   "reason": str(err)}
        cal["unit"] = unit_of(spec.target, mode)
        cals[key] = cal
    return {
        "directions": cals,
        "log_params": list(log_params),
        "measurement": dict(measurement),
        "units": "physical" if mode == "crop" else "image units (patches mode 'resize': not physical)",
        "settings": {"refine_steps": int(cc.get("refine_steps", 2)), "tol": float(cc.get("tol", 0.02))},
        "boundaries_sha256": boundaries_sha256,
    }


def run_fit_boundaries(latents_path, cfg: Mapping, npz_out, json_out) -> dict:
    """Stage fit_boundaries: latents.parquet -> boundaries.npz + boundaries.json."""
    from sharpgen.atomic import write_json

    table = pd.read_parquet(latents_path)
    Z = latents_from_table(table)
    arrays, summary = fit_boundaries(Z, table, cfg)
    save_boundaries(npz_out, arrays)
    summary = {
        "parameters": summary,
        "n_samples": int(len(table)),
        "latent_dim": int(Z.shape[1]),
        "labels": cfg.get("labels", "median"),
        "classifier": cfg.get("classifier", "linear_svc"),
        "fold": summary.pop("_fold"),
        "targets": {
            "tuf_val_accuracy_ge_0.90": bool(summary.get("tuf", {}).get("val_accuracy", 0) >= 0.90),
            "r_value_val_accuracy_ge_0.85": bool(summary.get("r_value", {}).get("val_accuracy", 0) >= 0.85),
            "r_paper_val_accuracy_ge_0.85": bool(summary.get("r_paper", {}).get("val_accuracy", 0) >= 0.85),
        },
    }
    write_json(json_out, summary)
    return summary


def generated_std(latents_path, params: Sequence[str], log_params: Iterable[str]) -> dict:
    """Std of each parameter (fit space) over the generated population of latents.parquet."""
    table = pd.read_parquet(latents_path, columns=list(params))
    return {p: float(np.nanstd(to_fit_space(p, table[p], log_params))) for p in params}


def _setup_torch(cfg: Mapping, threads: int | None) -> str:
    """Set torch threads; resolve directions.traversal.device (auto -> cuda if available)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    name = cfg.get("traversal", {}).get("device", "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DirectionError("directions.traversal.device is 'cuda' but CUDA is not available")
    return name


def run_traverse(generator_path, boundaries_path, latents_path, patches_zarr, cfg: Mapping,
                 parquet_out, metrics_out, threads: int | None = None) -> dict:
    """Stage traverse: walk every configured direction, write traversals.parquet + metrics JSON."""
    from sharpgen.atomic import write_json, write_parquet

    device = _setup_torch(cfg, threads)
    tc = cfg.get("traversal", {})
    params = list(cfg.get("parameters", REQUESTABLE))
    log_params = tuple(cfg.get("log_params", DEFAULT_LOG_PARAMS))
    field = load_direction_field(boundaries_path)
    specs = direction_specs(cfg)
    try:
        unfolded = {s.key: field.vectors(s)[0] for s in specs}
    except DirectionError as err:
        raise DirectionError(f"{boundaries_path}: {err}") from None
    ctx = measurement_context(patches_zarr)
    G = _load_generator(generator_path, device=device)
    render = make_renderer(G, ctx, params, batch_size=int(tc.get("batch_size", 256)))
    base = np.random.default_rng(int(cfg.get("seed", 0)) + 1).standard_normal((int(tc.get("n_base", 32)), field.dim))
    vectors = {s.key: field.per_base(s, base) for s in specs}
    bounds = {s.key: field.eps_bounds(s, base) for s in specs}
    eps = eps_grid(float(tc.get("eps_max", 3.0)), int(tc.get("n_eps", 13)))
    df = traverse(render, base, vectors, eps, bounds=bounds)
    std = generated_std(latents_path, params, log_params)
    metrics = traversal_metrics(df, params, std, log_params)
    out = {
        "directions": metrics,
        "std_fit_space": std,
        "log_params": list(log_params),
        "eps": eps.tolist(),
        "n_base": int(base.shape[0]),
        "measurement": ctx,
        "units": "physical" if ctx["mode"] == "crop" else "image units (patches mode 'resize': not physical)",
        # cosines between the directions of a base on the positive side of the fold
        "cosines": {a: {b: float(unfolded[a] @ unfolded[b]) for b in unfolded} for a in unfolded},
        "fold": {"folded": sorted(field.folded), "n_base_reflected": int(field.side(base).sum())}
        if field.fold is not None else None,
        "targets": {
            f"{k}_spearman_ge_0.9": bool((metrics.get(k, {}).get("spearman_median") or 0) >= 0.9)
            for k in ("tuf", "r_value", "r_paper")
            if k in metrics
        },
    }
    write_parquet(parquet_out, df)
    write_json(metrics_out, out)
    for k, m in metrics.items():
        logger.info("%s: median Spearman %.3f; entanglement %s", k, m["spearman_median"],
                    {p: round(v, 2) for p, v in m["entanglement"].items() if np.isfinite(v)})
    return out


def run_calibrate(traversals_path, metrics_path, generator_path, boundaries_path, cfg: Mapping,
                  json_out, threads: int | None = None) -> dict:
    """Stage calibrate: fit eps -> parameter change per direction, evaluate random requests."""
    import json

    from sharpgen.atomic import write_json

    device = _setup_torch(cfg, threads)
    df = pd.read_parquet(traversals_path)
    tmetrics = json.loads(Path(metrics_path).read_text())
    ctx = tmetrics["measurement"]
    cal = build_calibration(df, cfg, ctx, file_sha256(boundaries_path))
    cc = cfg.get("calibration", {})
    field = load_direction_field(boundaries_path)
    wanted = [DirectionSpec.parse(k).key for k in (cc.get("evaluate") or list(cal["directions"]))]
    missing = [k for k in wanted if k not in cal["directions"]]
    if missing:
        logger.warning("directions.calibration.evaluate names untraversed directions %s (skipped)", missing)
    keys = [k for k in wanted if k in cal["directions"]]
    skipped = [k for k in keys if not cal["directions"][k].get("calibrated", True)]
    if skipped:
        logger.warning("not evaluating uncalibrated directions %s", skipped)
    keys = [k for k in keys if k not in skipped]
    vectors = {k: (lambda Z, _s=DirectionSpec.parse(k): field.per_base(_s, Z)) for k in keys}
    bounds = {k: (lambda Z, _s=DirectionSpec.parse(k): field.eps_bounds(_s, Z)) for k in keys}
    G = _load_generator(generator_path, device=device)
    params = list(cfg.get("parameters", REQUESTABLE))
    render = make_renderer(G, ctx, params, batch_size=int(cfg.get("traversal", {}).get("batch_size", 256)))
    cal["evaluation"] = evaluate_requests(
        render, vectors, {k: cal["directions"][k] for k in keys}, field.dim,
        n_requests=int(cc.get("n_requests", 200)), seed=int(cfg.get("seed", 0)) + 2,
        log_params=cal["log_params"], refine_steps=cal["settings"]["refine_steps"], tol=cal["settings"]["tol"],
        bounds=bounds,
    )
    cal["targets"] = {
        f"{k}_median_rel_error_lt_0.10": bool(np.nan_to_num(v["median_rel_error"], nan=1.0) < 0.10)
        for k, v in cal["evaluation"].items()
    }
    cal["targets"].update({f"{k}_median_rel_error_lt_0.10": False for k in skipped})
    write_json(json_out, cal)
    return cal
