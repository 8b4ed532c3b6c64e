"""Stage ``fit_boundaries``: one linear boundary per parameter in latent space (InterFaceGAN).

rules/directions.smk (fit_boundaries) -> workflow_scripts/fit_boundaries.py -> here.

For each parameter ``p`` the generated samples are labelled by a median split (the paper) or by
the top / bottom ``fraction`` (:func:`make_labels`), a linear classifier is fitted in ``z``
(:func:`train_boundary`) and its unit normal ``n_p`` (D,) is the latent direction of ``p``.
With ``fold: lead_sign`` the polarity fold ``u`` is fitted first (:func:`fit_polarity_fold`) and
polarity-even parameters are fitted on folded latents (see :mod:`sharpgen.directions`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.directions.config import DirectionsConfig, directions_config
from sharpgen.directions.geometry import (
    FOLD_PARAMETER,
    Boundaries,
    DirectionError,
    DirectionSpec,
    direction_specs,
    fold_latents,
    folded_values,
)
from sharpgen.parameters import LOG_VALUED, POLARITY_PARTNER, is_log_fit, to_fit_space

logger = logging.getLogger(__name__)


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


def train_boundary(latent_codes, labels, *, classifier: str = "linear_svc", C: float = 1.0,
                   val_fraction: float = 0.2, seed: int = 0, name: str = "?") -> dict:
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


def _fit_one(Z, values, name, cfg: DirectionsConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    """Labels + boundary for one parameter on latents Z (N, D) -> (boundary, keep, labels)."""
    keep, labels = make_labels(values, name, cfg.labels, cfg.fraction)
    b = train_boundary(Z[keep], labels[keep], classifier=cfg.classifier, C=cfg.C,
                       val_fraction=cfg.val_fraction, seed=cfg.seed, name=name)
    return b, keep, labels


def fit_polarity_fold(latents, table: pd.DataFrame, cfg) -> tuple[np.ndarray | None, dict]:
    """Fold direction u: unit normal of a linear boundary between lead_sign = +1 and -1 samples.

    latents: (N, D); table: N rows with a ``lead_sign`` column (+1 / -1, NaN or 0 where there is
    no bipole). Returns ``(u (D,) or None, info)``; u is None (no folding, reason in ``info``)
    when the column is missing, fewer than 20 samples of a sign exist, one sign is rarer than
    ``cfg.fold_min_balance`` (the reflection is through the origin, so it assumes a generator
    making both leading polarities about equally often; one that mostly makes one of them is not
    polarity-symmetric and its reflected samples are not the reversed regions), or the boundary's
    validation accuracy is below ``cfg.fold_min_accuracy``: then the latent does not encode the
    polarity order linearly and reflecting across it would mix unrelated samples.
    """
    cfg = directions_config(cfg)
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
    if min(n_pos, n_neg) < cfg.fold_min_balance * (n_pos + n_neg):
        info["reason"] = (f"one leading polarity is rare ({n_pos} +1 / {n_neg} -1; fold_min_balance "
                          f"{cfg.fold_min_balance:g}): the generator is not polarity-symmetric, so "
                          "reflecting through the origin would not reverse the regions")
        return None, info
    b = train_boundary(np.asarray(latents, dtype=np.float64)[keep], (s[keep] > 0).astype(int),
                       classifier=cfg.classifier, C=cfg.C, val_fraction=cfg.val_fraction,
                       seed=cfg.seed, name=FOLD_PARAMETER)
    info.update(val_accuracy=b["val_accuracy"], intercept=b["intercept"])
    if b["val_accuracy"] < cfg.fold_min_accuracy:
        info["reason"] = (f"{FOLD_PARAMETER} boundary validation accuracy {b['val_accuracy']:.3f} < "
                          f"fold_min_accuracy {cfg.fold_min_accuracy:g}: the latent does not encode "
                          "the polarity order linearly")
        return None, info
    return b["normal"], info


def fit_boundaries(latents, table: pd.DataFrame, cfg) -> tuple[dict, dict]:
    """Fit one boundary (and one regression direction) per configured parameter.

    latents: (N, D); table: N rows with one column per parameter (physical units).
    cfg: the ``directions`` section (mapping or :class:`DirectionsConfig`).
    With ``fold: lead_sign`` the polarity fold u is fitted first (:func:`fit_polarity_fold`) and
    the boundaries of polarity-even parameters (registry partners) are fitted on folded latents
    with partner-swapped values (:func:`folded_values`); their unfolded (paper) accuracy is
    reported beside it. Regressions are in fit space (log10 for the registry's log_fit fluxes).
    Returns ``(arrays, summary)``: arrays = {"names": (P,) str, "normals": (P, D),
    "intercepts": (P,), "val_accuracy": (P,), "regression_directions": (P, D), "folded": (P,)
    bool, "fold_normal": (D,) (zeros without a fold)}; summary = JSON-able per-parameter dict
    (accuracies, class sizes, threshold, regression R^2 and its cosine with the normal) plus
    ``_fold`` (how the fold was fitted, or why there is none) and ``_normal_cosines``.
    """
    cfg = directions_config(cfg)
    Z = np.asarray(latents, dtype=np.float64)
    params = list(cfg.parameters)
    for p in params:
        if p not in table.columns:
            raise DirectionError(f"parameter {p!r} is not a column of the latent table ({list(table.columns)})")
    if cfg.fold == "lead_sign":
        fold, fold_info = fit_polarity_fold(Z, table, cfg)
        if fold is None:
            logger.warning("no polarity fold: %s", fold_info["reason"])
        else:
            logger.info("polarity fold: lead_sign boundary val accuracy %.3f", fold_info["val_accuracy"])
    elif cfg.fold == "none":
        fold, fold_info = None, {"mode": "none"}
    else:
        raise DirectionError(f"unknown directions.fold {cfg.fold!r} (none | lead_sign)")
    Zf, negative = fold_latents(Z, fold)
    fold_info["n_reflected"] = int(negative.sum())
    names, normals, intercepts, accs, regs, folded = [], [], [], [], [], []
    fit_values: dict[str, np.ndarray] = {}
    label_values: dict[str, np.ndarray] = {}
    summary: dict = {}
    for p in params:
        # TPF/TNF are folded only together: a reflected base needs its partner's normal
        is_folded = fold is not None and POLARITY_PARTNER.get(p) in params
        values = folded_values(table, p, negative) if is_folded else table[p].to_numpy(dtype=np.float64)
        Zp = Zf if is_folded else Z
        b, keep, labels = _fit_one(Zp, values, p, cfg)
        y = to_fit_space(p, values)
        fit_values[p] = y
        label_values[p] = values
        ok = np.isfinite(y)
        reg_val = np.flatnonzero(np.isin(np.flatnonzero(ok), np.flatnonzero(keep)[b["val_index"]]))
        reg = regression_direction(Zp[ok], y[ok], val_index=reg_val)
        cos = float(reg["direction"] @ b["normal"])
        unfolded_acc = (_fit_one(Z, table[p].to_numpy(dtype=np.float64), p, cfg)[0]["val_accuracy"]
                        if is_folded else b["val_accuracy"])
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
            "fit_space": "log10" if is_log_fit(p) else "identity",
            "regression_r2": reg["r2"],
            "regression_cosine": cos,
        }
    N = np.array(normals)
    summary["_normal_cosines"] = {a: {b: float(N[i] @ N[j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
    summary["_parameter_correlations"] = parameter_correlations(fit_values, labelled=label_values)
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


def parameter_correlations(values: Mapping[str, np.ndarray],
                           labelled: Mapping[str, np.ndarray] | None = None) -> dict:
    """Pearson and Spearman correlation of every pair of parameters among the samples, in fit
    space (log10 for the registry's log_fit fluxes) and with the values the boundaries were fitted
    on (partner-swapped on reflected rows for folded TPF/TNF), over the rows where both are
    defined: finite, and non-zero for the registry's log-valued parameters (JSOC stores "no R" as
    R_VALUE = 0, not a point of the log scale; the retrieval correlations do the same):
    ``{"pearson": {a: {b: r}}, "spearman": {...}}``. For parameters linear in an isotropic
    latent (z, or whitened W) the Pearson correlation equals the cosine of the boundary normals.

    ``labelled`` (the physical values the boundaries were labelled on, same keys, (N,) each) adds
    ``"spearman_labelled"``: Spearman over every row where both are finite -- the rows the median
    split labelled, so a region with no R (r_value or r_paper 0) ranks lowest, as it sits in the
    boundary's low class, instead of being left out. It compares the correlation with the
    normals on the same population; the Pearson above drops those rows (35-46 % of the samples
    for r_value on the generators of docs/gan.md) and so correlates a range-restricted subset."""
    from scipy.stats import spearmanr

    def log_valued_defined(name, v):
        return np.isfinite(v) & ((v != 0) if name in LOG_VALUED else True)

    def pairs(table, defined, kinds):
        names = list(table)
        out = {k: {a: {} for a in names} for k in kinds}
        for i, a in enumerate(names):
            for b in names[i:]:
                x, y = np.asarray(table[a], float), np.asarray(table[b], float)
                ok = defined(a, x) & defined(b, y)
                spread = ok.sum() > 2 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0
                for k in kinds:
                    r = float("nan")
                    if spread:
                        r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if k == "pearson" else float(spearmanr(x[ok], y[ok])[0])
                    out[k][a][b] = out[k][b][a] = r
        return out

    out = pairs(values, log_valued_defined, ("pearson", "spearman"))
    if labelled is not None:
        out["spearman_labelled"] = pairs(labelled, lambda name, v: np.isfinite(v), ("spearman",))["spearman"]
    return out


# --------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------


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


def load_boundary(npz_path, param: str) -> tuple[np.ndarray, float, float]:
    """(unit normal (D,), intercept, validation accuracy) of ``param`` from boundaries.npz."""
    with np.load(npz_path) as f:
        names = [str(x) for x in f["names"]]
        if param not in names:
            raise DirectionError(f"{npz_path}: no boundary for parameter {param!r} (has {names})")
        i = names.index(param)
        acc = float(f["val_accuracy"][i]) if "val_accuracy" in f.files else float("nan")
        return np.asarray(f["normals"][i], dtype=float), float(f["intercepts"][i]), acc


def direction_field(arrays: Mapping[str, np.ndarray]) -> Boundaries:
    """The arrays of boundaries.npz (or of :func:`fit_boundaries`) -> :class:`Boundaries`
    (normals + polarity fold + latent space + measured holds; without the fold arrays, or with a
    zero fold normal, no fold; without ``space``, z; without ``hold_keys``, every conditional
    direction projects its held normals out)."""
    names = [str(n) for n in arrays["names"]]
    normals = {n: np.asarray(v, dtype=np.float64) for n, v in zip(names, arrays["normals"])}
    fold = np.asarray(arrays["fold_normal"], dtype=np.float64) if "fold_normal" in arrays else None
    folded = frozenset(n for n, k in zip(names, arrays["folded"]) if k) if "folded" in arrays else frozenset()
    space = str(arrays["space"]) if "space" in arrays else "z"
    holds = {}
    if "hold_keys" in arrays:
        for key, row in zip(arrays["hold_keys"], np.atleast_2d(arrays["hold_coefficients"])):
            k = len(DirectionSpec.parse(str(key)).hold)
            holds[str(key)] = tuple(float(b) for b in row[:k])
    if fold is None or not np.any(fold):
        return Boundaries(normals, space=space, holds=holds)
    return Boundaries(normals, fold / np.linalg.norm(fold), folded, space=space, holds=holds)


def hold_arrays(holds: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """Measured holds -> the boundaries.npz arrays ``hold_keys`` (M,) and ``hold_coefficients``
    (M, K_max) (NaN beyond each key's number of held parameters)."""
    keys = list(holds)
    kmax = max((len(v) for v in holds.values()), default=1)
    coef = np.full((len(keys), kmax), np.nan)
    for i, k in enumerate(keys):
        coef[i, :len(holds[k])] = holds[k]
    return {"hold_keys": np.array(keys, dtype=str), "hold_coefficients": coef}


def load_direction_field(npz_path) -> Boundaries:
    """boundaries.npz -> :class:`Boundaries` (:func:`direction_field`)."""
    with np.load(npz_path) as f:
        return direction_field({k: f[k] for k in f.files})


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def latents_from_table(table: pd.DataFrame, space: str = "z") -> np.ndarray:
    """The ``z`` column (or ``w``: whitened W codes, for ``space="w"``; list<float32>[D] per
    row) -> (N, D) float64."""
    if space not in table.columns:
        raise DirectionError(f"latent table has no {space!r} column")
    return np.stack([np.asarray(v, dtype=np.float64) for v in table[space].to_numpy()])


def resolve_space(requested: str, columns) -> str:
    """``directions.space`` -> ``"z"`` or ``"w"``: ``auto`` is W when the latent table has a
    ``w`` column (a generator with a mapping network wrote it), z otherwise."""
    if requested == "auto":
        return "w" if "w" in columns else "z"
    if requested not in ("z", "w"):
        raise DirectionError(f"unknown directions.space {requested!r} (auto | z | w)")
    if requested not in columns:
        raise DirectionError(f"directions.space: {requested} but the latent table has no {requested!r} column "
                             "(W codes exist only for a generator with a mapping network, gan.arch: mapping)")
    return requested


def measure_holds(arrays: Mapping[str, np.ndarray], cfg: DirectionsConfig, generator_path, patches_zarr,
                  table: pd.DataFrame, threads: int | None = None) -> tuple[dict, dict]:
    """``directions.hold: measured``: solve every configured conditional direction's hold on the
    generator (:func:`sharpgen.directions.holds.fit_holds`; base latents from their own stream,
    the traversal's eps grid and device; parameters standardised by their std over ``table``,
    latents.parquet). Returns ``(holds, summary)``."""
    from sharpgen.directions.holds import fit_holds
    from sharpgen.directions.traverse import eps_grid, generated_std
    from sharpgen.gan import load_generator
    from sharpgen.measure import MeasurementContext, make_renderer, space_codes
    from sharpgen.seeds import stream
    from sharpgen.store import PatchStore
    from sharpgen.training import setup_device

    specs = [s for s in direction_specs(cfg.parameters, cfg.conditional) if s.hold]
    if not specs:
        return {}, {}
    if generator_path is None or patches_zarr is None:
        raise DirectionError("directions.hold: measured needs the generator and the patch store "
                             "(or set directions.hold: projection)")
    field = direction_field(arrays)
    tc = cfg.traversal
    device = setup_device(tc.device, key="directions.traversal.device", threads=threads, log=logger)
    ctx = MeasurementContext.from_store(PatchStore.open(patches_zarr))
    G = load_generator(generator_path, device=device)
    params = sorted({p for s in specs for p in (s.target, *s.hold)})
    render = make_renderer(G, ctx, params, batch_size=tc.batch_size, space=field.space)
    base = space_codes(G, stream(cfg.seed, "hold_fit_bases").standard_normal((cfg.hold_fit.n_base, G.nz)),
                       field.space)
    return fit_holds(render, field, specs, base, eps_grid(tc.eps_max, tc.n_eps), generated_std(table, params),
                     tol=cfg.hold_fit.tol, max_evaluations=cfg.hold_fit.max_evaluations)


def run_fit_boundaries(latents_path, cfg, npz_out, json_out, generator_path=None, patches_zarr=None,
                       threads: int | None = None) -> dict:
    """Stage fit_boundaries: latents.parquet (+ generator.pt and patches.zarr for measured holds)
    -> boundaries.npz + boundaries.json."""
    from sharpgen.atomic import write_json

    cfg = directions_config(cfg)
    table = pd.read_parquet(latents_path)
    space = resolve_space(cfg.space, table.columns)
    Z = latents_from_table(table, space)
    logger.info("fitting boundaries in %s", "whitened W" if space == "w" else "z")
    arrays, summary = fit_boundaries(Z, table, cfg)
    arrays["space"] = np.array(space)
    holds_summary: dict = {}
    if cfg.hold == "measured":
        holds, holds_summary = measure_holds(arrays, cfg, generator_path, patches_zarr, table, threads)
        arrays.update(hold_arrays(holds))
    elif cfg.hold != "projection":
        raise DirectionError(f"unknown directions.hold {cfg.hold!r} (measured | projection)")
    save_boundaries(npz_out, arrays)
    summary = {
        "parameters": summary,
        "n_samples": int(len(table)),
        "latent_dim": int(Z.shape[1]),
        "latent_space": space,
        "labels": cfg.labels,
        "classifier": cfg.classifier,
        "fold": summary.pop("_fold"),
        "hold": {"method": cfg.hold, "n_base": cfg.hold_fit.n_base, "tol": cfg.hold_fit.tol,
                 "directions": holds_summary},
        "targets": {
            "tuf_val_accuracy_ge_0.90": bool(summary.get("tuf", {}).get("val_accuracy", 0) >= 0.90),
            "r_value_val_accuracy_ge_0.85": bool(summary.get("r_value", {}).get("val_accuracy", 0) >= 0.85),
            "r_paper_val_accuracy_ge_0.85": bool(summary.get("r_paper", {}).get("val_accuracy", 0) >= 0.85),
        },
    }
    write_json(json_out, summary)
    return summary
