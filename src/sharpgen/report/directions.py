"""Report figures of the latent directions: latent maps, traversal strips, the SVM table,
entanglement and calibration. Each ``fig_*`` draws from arrays; the ``build_*`` next to it reads
the pipeline outputs. Nothing here runs the generator: the strips come from the traverse rule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen.directions.boundaries import load_boundary, load_direction_field  # noqa: E402
from sharpgen.directions.geometry import DirectionSpec, direction_title, folded_values  # noqa: E402
from sharpgen.directions.traverse import within_fold  # noqa: E402
from sharpgen.parameters import is_log_fit, to_fit_space  # noqa: E402
from sharpgen.report.style import (  # noqa: E402
    DIV_CMAP,
    GEN_COLOR,
    br_colorbar,
    canonical_order,
    fig_table,
    format_value,
    is_log_param,
    off,
    param_label,
    param_unit,
    pick,
    show_br,
    suptitle,
    symmetric_vmax,
)
from sharpgen.store import image_store_attrs, read_images  # noqa: E402


def latent_projection(z: np.ndarray, normal: np.ndarray, intercept: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates in which the linear boundary ``z.n + b = 0`` is the line x = 0.

    z: (N, D) latents; normal: (D,) boundary normal; intercept b (in the units of ``z.n``).
    Returns ``xy`` (N, 2): x = signed distance to the boundary ``(z.n + b)/|n|``, y = projection
    on the first principal component of z after removing the n direction; and ``axis2`` (D,), that
    unit vector (orthogonal to n).
    """
    z = np.asarray(z, dtype=float)
    n = np.asarray(normal, dtype=float).ravel()
    norm = np.linalg.norm(n)
    if norm == 0:
        raise ValueError("latent_projection: boundary normal is the zero vector")
    u = n / norm
    x = (z @ n + intercept) / norm
    resid = z - np.outer(z @ u, u)
    resid_c = resid - resid.mean(axis=0)
    _, _, vt = np.linalg.svd(resid_c, full_matrices=False)
    v = vt[0] - (vt[0] @ u) * u
    v /= np.linalg.norm(v)
    y = z @ v
    return np.column_stack([x, y]), v


def grid_thumbnails(xy: np.ndarray, n_cols: int, n_rows: int, lims=None
                    ) -> list[tuple[int, tuple[float, float, float, float]]]:
    """Choose at most one sample per cell of an ``n_cols x n_rows`` grid over ``lims``.

    Returns ``[(index, (x0, x1, y0, y1)), ...]``: the sample nearest each cell centre among the
    samples inside that cell, with the cell bounds; thumbnails drawn in these cells never overlap.
    """
    if lims is None:
        (x0, x1), (y0, y1) = np.percentile(xy[:, 0], [1, 99]), np.percentile(xy[:, 1], [1, 99])
    else:
        (x0, x1), (y0, y1) = lims
    xe = np.linspace(x0, x1, n_cols + 1)
    ye = np.linspace(y0, y1, n_rows + 1)
    out = []
    ix = np.digitize(xy[:, 0], xe) - 1
    iy = np.digitize(xy[:, 1], ye) - 1
    for i in range(n_cols):
        for j in range(n_rows):
            inside = np.flatnonzero((ix == i) & (iy == j))
            if inside.size == 0:
                continue
            cx, cy = (xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2
            d = np.hypot((xy[inside, 0] - cx) / (xe[1] - xe[0]), (xy[inside, 1] - cy) / (ye[1] - ye[0]))
            out.append((int(inside[np.argmin(d)]), (xe[i], xe[i + 1], ye[j], ye[j + 1])))
    return out


def fig_latent_map(z: np.ndarray, values: np.ndarray, images_gauss: np.ndarray, normal: np.ndarray,
                   intercept: float, param: str, threshold: float | None = None,
                   accuracy: float | None = None, n_cols: int = 9, n_rows: int = 6) -> Figure:
    """Latent space seen along one parameter's SVM normal (paper figure 3 style).

    z: (N, D) latents of generated samples; values: (N,) parameter measured on each sample;
    images_gauss: (N, S, S) the samples [G], or a callable mapping sample indices (n,) to their
    images (n, S, S) [G] (only the thumbnails are then loaded); normal/intercept: the SVM boundary for ``param``
    (decision function z.n + b, positive = high class). Left: every sample, coloured by the
    parameter; right: thumbnails on a regular grid of the same plane (one per cell, no overlap),
    framed in the parameter colour. The boundary is the vertical line x = 0.
    """
    xy, _ = latent_projection(z, normal, intercept)
    v = np.asarray(values, dtype=float)
    log = is_log_param(param, v)
    if log:  # values <= 0 have no logarithm: drawn in grey
        with np.errstate(divide="ignore", invalid="ignore"):
            cval = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    else:
        cval = v
    finite = np.isfinite(cval)
    vmin, vmax = np.percentile(cval[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    cnorm = mcolors.Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.6")
    clabel = ("log10 " if log else "") + param_label(param)

    (x0, x1), (y0, y1) = np.percentile(xy[:, 0], [1, 99]), np.percentile(xy[:, 1], [1, 99])
    padx, pady = 0.04 * (x1 - x0), 0.04 * (y1 - y0)
    lims = ((x0 - padx, x1 + padx), (y0 - pady, y1 + pady))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13.5, 5.6), layout="constrained",
                                 gridspec_kw={"width_ratios": [1, 1.35]})
    order = np.argsort(cval)
    sc = a1.scatter(xy[order, 0], xy[order, 1], c=cval[order], s=7, cmap=cmap, norm=cnorm, lw=0,
                    rasterized=True)
    cb = fig.colorbar(sc, ax=a1, shrink=0.85)
    cb.set_label(clabel)
    for ax in (a1, a2):
        ax.axvline(0, color="crimson", lw=1.5, ls="--")
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        sub = param.replace("_", r"\_")
        ax.set_xlabel(rf"signed distance to the {param} boundary along $n_{{\mathrm{{{sub}}}}}$")
    a1.set_ylabel(r"first principal component of $z$ orthogonal to $n$")
    title = f"{param}: samples in the (n, PC1) plane"
    if accuracy is not None:
        title += f"  (SVM accuracy {accuracy:.2f})"
    a1.set_title(title, fontsize=10)
    a1.text(0.02, 0.98, "low", transform=a1.transAxes, va="top", fontsize=9, color="0.3")
    a1.text(0.98, 0.98, "high", transform=a1.transAxes, va="top", ha="right", fontsize=9,
            color="0.3")

    cells = grid_thumbnails(xy, n_cols, n_rows, lims)
    idxs = np.array([c[0] for c in cells], dtype=np.int64)
    if callable(images_gauss):
        thumbs = np.asarray(images_gauss(idxs)) if idxs.size else np.empty((0, 1, 1))
    else:
        thumbs = np.asarray(images_gauss)[idxs]
    bvmax = symmetric_vmax(thumbs) if idxs.size else 1.0
    im = None
    for k, (idx, (cx0, cx1, cy0, cy1)) in enumerate(cells):
        mx, my = 0.06 * (cx1 - cx0), 0.06 * (cy1 - cy0)
        ext = (cx0 + mx, cx1 - mx, cy0 + my, cy1 - my)
        im = show_br(a2, thumbs[k], bvmax, extent=ext, aspect="auto")
        col = cmap(cnorm(cval[idx])) if np.isfinite(cval[idx]) else "0.5"
        a2.add_patch(plt.Rectangle((ext[0], ext[2]), ext[1] - ext[0], ext[3] - ext[2], fill=False,
                                   ec=col, lw=2.2))
    a2.set_title(f"{param}: one generated sample per grid cell (frame colour = {param})",
                 fontsize=10)
    a2.set_yticks([])
    if im is not None:
        br_colorbar(fig, im, ax=a2, shrink=0.85)
    return fig


def build_latent_map(inp: Mapping, cfg: Mapping, param: str) -> Figure:
    """Latent map of one parameter (inputs: latents, generated, boundaries)."""
    from sharpgen.sampling import read_latents

    lm = cfg["latent_map"]
    seed = int(cfg["seed"])
    z, table = read_latents(inp["latents"])
    if param not in table.columns:
        raise ValueError(f"{inp['latents']}: no column {param!r}")
    sel = pick(len(z), int(lm["max_points"]), seed)
    normal, intercept, acc = load_boundary(inp["boundaries"], param)
    field = load_direction_field(inp["boundaries"])
    values = table[param].to_numpy(float)
    if param in field.folded:  # the boundary lives in folded coordinates: show the samples there
        z, negative = field.fold_latents(z)
        values = folded_values(table, param, negative)
    clip = float(image_store_attrs(inp["generated"]).get("clip_gauss", 1.0))
    rows = table["sample"].to_numpy()[sel] if "sample" in table.columns else sel

    def images(idx):
        return read_images(inp["generated"], rows[np.asarray(idx)]) * clip

    fig = fig_latent_map(z[sel], values[sel], images, normal, intercept, param, accuracy=acc,
                         n_cols=int(lm["cols"]), n_rows=int(lm["rows"]))
    if param in field.folded:  # say so where the reader looks: on the distance axes
        for ax in fig.axes[:2]:
            ax.set_xlabel(ax.get_xlabel() + " (polarity-folded z)")
    return fig


def fig_traversals(strips: Sequence[Mapping], title: str = "Latent traversals") -> Figure:
    """Rows of images generated along latent directions, each image annotated with measurements.

    strips: sequence of mappings with keys ``label`` (row title), ``images`` (K, S, S) [G],
    ``steps`` (K,) the step along the direction (in units of the latent norm), ``annotations``
    (list of K strings, e.g. the measured parameter values, one or two lines each) and
    optionally ``note`` (a line written beside the row title, e.g. what the population of walks
    measured, where one row is one walk).
    """
    n_rows = len(strips)
    k_max = max(len(s["images"]) for s in strips)
    vmax = symmetric_vmax(np.concatenate([np.asarray(s["images"]).ravel() for s in strips]))
    fig, axes = plt.subplots(n_rows, k_max, figsize=(1.45 * k_max + 1.6, 2.15 * n_rows + 0.5),
                             layout="constrained", squeeze=False)
    im = None
    for row, s in zip(axes, strips):
        for k, ax in enumerate(row):
            off(ax)
            if k >= len(s["images"]):
                ax.axis("off")
                continue
            im = show_br(ax, s["images"][k], vmax)
            ax.set_title(f"step {s['steps'][k]:+.1f}", fontsize=7, pad=2)
            ax.set_xlabel(s["annotations"][k], fontsize=6.5, labelpad=2)
        row[0].set_ylabel(s["label"], fontsize=9, fontweight="bold")
        if s.get("note"):
            row[0].text(-0.3, 0.5, s["note"], transform=row[0].transAxes, rotation=90,
                        ha="center", va="center", fontsize=6.5)
    suptitle(fig, title)
    br_colorbar(fig, im, ax=axes, shrink=0.5, pad=0.01, aspect=30)
    return fig


def held_note(direction: Mapping) -> str:
    """What all the walks of a conditional direction measured for its held parameters, for the
    one walk a strip shows: ``direction`` is a ``traversal_metrics.json`` ``directions`` entry
    (``held`` -> per held parameter its median slope ``conditional`` in population std per std
    of the target, ``conditional_se``, ``conditional_abs_per_base``; ``n_base`` walks)."""
    parts = [f"{h}: median {v['conditional']:+.2f} \u00b1 {v['conditional_se']:.2f}, "
             f"per walk |{v['conditional_abs_per_base']:.2f}|"
             for h, v in direction.get("held", {}).items()]
    if not parts:
        return ""
    return (f"held, std per std over {int(direction['n_base'])} walks\n" + "; ".join(parts))


def build_traversals(inp: Mapping, cfg: Mapping) -> Figure:
    """Traversal strips (inputs: strips = directions/strips.npz, written by the traverse rule:
    one seeded base latent, images and their measured values along each direction; optional
    traversal_metrics = directions/traversal_metrics.json: beside each conditional row, what
    the held parameters did over all the measured walks, since the row is one walk)."""
    with np.load(inp["strips"], allow_pickle=False) as f:
        s = {k: f[k] for k in f.files}
    walks = {}
    if inp.get("traversal_metrics"):
        walks = json.loads(Path(inp["traversal_metrics"]).read_text()).get("directions", {})
    names = [str(p) for p in s["parameters"]]
    clip = float(s["clip_gauss"])
    strips = []
    for i, key in enumerate(str(k) for k in s["keys"]):
        spec = DirectionSpec.parse(key)
        shown = [spec.target, *spec.hold]
        ann = ["\n".join(format_value(p, float(s["values"][i, j, names.index(p)])) for p in shown)
               + ("\nbeyond the fold" if s["beyond_fold"][i, j] else "")
               for j in range(len(s["eps"]))]
        strips.append({"label": direction_title(key), "images": s["images"][i] * clip, "steps": s["eps"],
                       "annotations": ann, "note": held_note(walks[key]) if key in walks else ""})
    side = ("; base on the reflected side of the polarity fold" if bool(s["base_reflected"]) else
            "; polarity-folded directions" if bool(s["has_fold"]) else "")
    return fig_traversals(strips, title="Latent traversals along the SVM normals "
                                        f"(same base latent{side}; values measured on each image)")


def build_svm_accuracy(inp: Mapping, cfg: Mapping) -> Figure:
    """SVM accuracy table (inputs: boundaries_json)."""

    js = json.loads(Path(inp["boundaries_json"]).read_text())
    rows = {p: js["parameters"][p] for p in canonical_order(js["parameters"]) if not p.startswith("_")}
    cols = {"val_accuracy": "val. accuracy", "val_accuracy_unfolded": "val. acc. unfolded",
            "train_accuracy": "train accuracy",
            "n_val": "n val.", "regression_r2": "regression $R^2$",
            "regression_cosine": "cos(regr., normal)"}
    df = pd.DataFrame({lab: [rows[p].get(k, np.nan) for p in rows] for k, lab in cols.items()},
                      index=list(rows))
    df["n val."] = df["n val."].map(lambda v: f"{int(v)}" if np.isfinite(v) else "-")
    fold = js.get("fold") or {}
    if fold.get("mode") == "lead_sign" and "reason" not in fold:
        how = f"polarity-folded: lead_sign boundary accuracy {fold.get('val_accuracy', float('nan')):.3f}"
    elif fold.get("mode") == "lead_sign":
        how = "not folded: " + str(fold["reason"])[:60]
    else:
        how = "unfolded"
    return fig_table(df, f"Linear boundaries in latent space ({js.get('classifier', 'SVM')}, "
                         f"{js.get('labels', 'median')} split, n = {js.get('n_samples', '?')})\n{how}")


def fig_entanglement(matrices: Mapping[str, pd.DataFrame], title: str = "Entanglement",
                     cbar_label: str = "Δ parameter / Δ target [population std]",
                     errors: Mapping[str, pd.DataFrame] | None = None) -> Figure:
    """Heat maps (RdBu_r, centred on 0, symmetric range) of direction x parameter matrices.

    matrices: {panel title: DataFrame (rows = direction moved, columns = parameter measured)}.
    Values are written in each cell; the colour range is symmetric, at least [-1, 1].
    errors: {panel title: DataFrame of the same shape}, optional: each finite value is written
    under its cell's value as "± se" (the standard error of the median slope over the bases).
    """
    n = len(matrices)
    k = max(m.shape[1] for m in matrices.values())
    allv = np.concatenate([m.to_numpy(dtype=float).ravel() for m in matrices.values()])
    allv = allv[np.isfinite(allv)]
    lim = float(max(1.0, np.percentile(np.abs(allv), 98))) if allv.size else 1.0
    heights = [max(2, m.shape[0]) for m in matrices.values()]
    fig, axes = plt.subplots(1, n, figsize=(0.8 * k * n + 2.6, 0.6 * max(heights) + 2.2),
                             layout="constrained", squeeze=False)
    im = None
    for ax, (name, mat) in zip(axes[0], matrices.items()):
        a = mat.to_numpy(dtype=float)
        im = ax.imshow(a, cmap=DIV_CMAP, norm=mcolors.TwoSlopeNorm(0.0, -lim, lim))
        ax.set_xticks(range(a.shape[1]), [str(c) for c in mat.columns], rotation=45, ha="right",
                      fontsize=8)
        ax.set_yticks(range(a.shape[0]), [str(c) for c in mat.index], fontsize=8)
        ax.set_xlabel("parameter measured")
        ax.set_ylabel("direction traversed")
        ax.set_title(name, fontsize=10)
        se = (errors or {}).get(name)
        se = se.reindex(index=mat.index, columns=mat.columns).to_numpy(dtype=float) if se is not None else None
        for (r, c), v in np.ndenumerate(a):
            if np.isfinite(v):
                err = f"\n±{se[r, c]:.2f}" if se is not None and np.isfinite(se[r, c]) else ""
                ax.text(c, r, f"{v:.2f}{err}", ha="center", va="center", fontsize=7 if not err else 6,
                        color="white" if abs(v) > 0.6 * lim else "black", linespacing=0.9)
            else:  # undefined, e.g. a target that does not change along its direction
                ax.text(c, r, "n/a", ha="center", va="center", fontsize=6.5, color="0.5")
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    cb.set_label(cbar_label, fontsize=8)
    suptitle(fig, title)
    return fig


def build_entanglement(inp: Mapping, cfg: Mapping) -> Figure:
    """Entanglement matrices unconditional vs conditional (inputs: traversal_metrics)."""

    js = json.loads(Path(inp["traversal_metrics"]).read_text())
    dirs = js["directions"]
    params = canonical_order(js.get("std_fit_space") or next(iter(dirs.values()))["entanglement"])

    def mat(keys, field="entanglement"):
        return pd.DataFrame([[dirs[k].get(field, {}).get(p, np.nan) for p in params] for k in keys],
                            index=[direction_title(k) for k in keys], columns=params, dtype=float)

    unc = canonical_order([k for k, v in dirs.items() if not v.get("hold")])
    cond = canonical_order([k for k, v in dirs.items() if v.get("hold")])
    panels = {"unconditional directions": unc}
    if cond:
        # each conditional direction next to its unconditional counterpart
        both = []
        for k in cond:
            t = dirs[k]["target"]
            if t in dirs and t not in both:
                both.append(t)
            both.append(k)
        panels["conditional vs unconditional"] = both
    errors = {t: mat(k, "entanglement_se") for t, k in panels.items()}
    n_base = sorted({int(v["n_base"]) for v in dirs.values() if "n_base" in v})
    has_se = any(np.isfinite(e.to_numpy()).any() for e in errors.values())
    walks = (f"; ± the standard error of the median over {'/'.join(map(str, n_base))} walks"
             if has_se and n_base else "")
    return fig_entanglement({t: mat(k) for t, k in panels.items()}, errors=errors,
                            title="Entanglement: d(parameter)/d(target) along each direction, in "
                                  "population-std units" + walks)


def calibration_curves(traversals: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Traversal table -> per direction and eps: median / 16% / 84% over bases of the change of
    the target (fit space) from eps = 0; columns direction, eps, median, lo, hi, ylabel."""
    out = []
    for key in keys:
        g = within_fold(traversals[traversals["direction"] == key])
        if g.empty:
            continue
        t = DirectionSpec.parse(key).target
        y = to_fit_space(t, g[t])
        piv = g.assign(_y=y).pivot_table(index="base", columns="eps", values="_y",
                                         aggfunc="first", dropna=False)
        eps = piv.columns.to_numpy(float)
        Y = piv.to_numpy(float)
        i0 = int(np.argmin(np.abs(eps)))
        D = Y - Y[:, [i0]]
        with np.errstate(all="ignore"):
            med = np.nanmedian(D, axis=0)
            lo, hi = np.nanpercentile(D, [16, 84], axis=0)
        unit = param_unit(t)
        ylab = (f"Δ log10 {t} [dex]" if is_log_fit(t) else f"Δ {t}" + (f" [{unit}]" if unit else ""))
        out.append(pd.DataFrame({"direction": direction_title(key), "eps": eps, "median": med,
                                 "lo": lo, "hi": hi, "ylabel": ylab}))
    if not out:
        raise ValueError(f"no traversal rows for the calibrated directions {list(keys)}")
    return pd.concat(out, ignore_index=True)


def fig_calibration(curves: pd.DataFrame, fits: Mapping[str, Mapping] | None = None,
                    ncols: int = 4) -> Figure:
    """Calibration curves: change of the target parameter vs step ``eps`` along its direction.

    curves: long table with columns ``direction``, ``eps``, ``median``, ``lo``, ``hi`` (the
    change of the target from eps = 0, in fit space: log10 for fluxes, the value otherwise;
    median and 16th/84th percentile over base latents) and ``ylabel``. fits: optional
    {direction: {"slope", "slope_std", "r2", "median_rel_error_calibrated" (median relative error
    of the calibrated step alone: the calibration's accuracy), "median_rel_error_refined" (after
    secant steps that re-measure the image, as ``sharpgen generate`` does), "refusal_rate"}}
    drawn as the calibrated line
    ``slope * eps`` and written in the panel.
    """
    keys = list(pd.unique(curves["direction"]))
    nrows = max(1, math.ceil(len(keys) / ncols))
    ncols = min(ncols, max(1, len(keys)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.0 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.ravel(), keys):
        d = curves[curves["direction"] == key].sort_values("eps")
        e = d["eps"].to_numpy(float)
        ax.fill_between(e, d["lo"].to_numpy(float), d["hi"].to_numpy(float), color=GEN_COLOR,
                        alpha=0.25, lw=0, label="16-84% over bases")
        ax.plot(e, d["median"].to_numpy(float), "o", color=GEN_COLOR, ms=3.5, label="median")
        ax.axhline(0, color="0.7", lw=0.8)
        f = (fits or {}).get(key)
        if f and f.get("slope") is not None and np.isfinite(f["slope"]):
            ax.plot(e, f["slope"] * e, color="0.2", ls="--", lw=1.1, label="calibrated slope")
            lines = [f"slope = {f['slope']:.3g}" + (f" ± {f['slope_std']:.2g}"
                                                    if f.get("slope_std") is not None
                                                    and np.isfinite(f["slope_std"]) else "")]
            if f.get("r2") is not None and np.isfinite(f["r2"]):
                lines.append(f"$R^2$ = {f['r2']:.2f}")
            for k, lab in (("median_rel_error_calibrated", "calibrated step"),
                           ("median_rel_error_refined", "after re-measuring"),
                           ("refusal_rate", "requests refused")):
                v = f.get(k)
                if v is not None and np.isfinite(v):
                    lines.append(f"{lab}: {v:.1%}" if k != "refusal_rate" else f"{lab}: {v:.0%}")
            ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7.5,
                    bbox=dict(fc="white", ec="0.7", alpha=0.85))
        ax.set_xlabel(r"step $\epsilon$ along direction", fontsize=8.5)
        ax.set_ylabel(str(d["ylabel"].iloc[0]), fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.set_title(key, fontsize=10)
    axes.ravel()[0].legend(fontsize=7, frameon=False, loc="lower right")
    suptitle(fig, "Calibration: change of the target parameter along its direction")
    return fig


def build_calibration(inp: Mapping, cfg: Mapping) -> Figure:
    """Calibration curves (inputs: traversals, calibration)."""

    cal = json.loads(Path(inp["calibration"]).read_text())
    keys = canonical_order(cal["directions"])
    tr = pd.read_parquet(inp["traversals"])
    curves = calibration_curves(tr, keys)
    ev = cal.get("evaluation", {})
    fits = {}
    for k in keys:
        d = cal["directions"][k]
        fits[direction_title(k)] = {
            "slope": d.get("slope"), "slope_std": d.get("slope_std"), "r2": d.get("r2"),
            "median_rel_error_calibrated": ev.get(k, {}).get("median_rel_error_calibrated_step"),
            "median_rel_error_refined": ev.get(k, {}).get("median_rel_error"),
            "refusal_rate": ev.get(k, {}).get("refusal_rate")}
    fits = {k: {kk: (np.nan if vv is None else vv) for kk, vv in v.items()} for k, v in fits.items()}
    return fig_calibration(curves, fits)