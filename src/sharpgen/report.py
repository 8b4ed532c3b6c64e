"""Report figures: pure plotting functions (arrays / DataFrames in, matplotlib Figure out).

Every function here takes plain NumPy arrays or pandas DataFrames, draws with matplotlib (Agg
backend, no display needed) and returns a :class:`matplotlib.figure.Figure`; nothing reads or
writes result files except :func:`save_figure`. The thin scripts in ``workflow_scripts/fig_*.py``
load the pipeline outputs and call one function each, so every figure has its own Snakemake rule.

Conventions
-----------
* Magnetograms are passed in Gauss, shape ``(N, S, S)`` (or ``(S, S)``), and drawn with a grey
  colour map centred on 0 G (symmetric ``vmin = -vmax``) with a labelled ``B_r [G]`` colour bar.
* Parameter names are the table column names of :mod:`sharpgen.physics` (``tuf``, ``psep``,
  ``r_value`` ...); units come from ``sharpgen.physics.PARAMETERS`` when that module is present.
* Randomness (which samples are shown) is driven by an explicit ``seed`` argument.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker as mticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

from sharpgen.atomic import atomic_path  # noqa: E402
from sharpgen import metrics as M  # noqa: E402

logger = logging.getLogger(__name__)

BR_CMAP = "gray"
DIV_CMAP = "RdBu_r"
REAL_COLOR = "tab:blue"
GEN_COLOR = "tab:orange"
METHOD_LABELS = {
    "simsiam": "SimSiam",
    "physical_euclidean": "physical (Euclidean)",
    "physical_mahalanobis": "physical (Mahalanobis)",
    "random": "random",
}
# Parameters whose distribution spans decades: drawn on log axes (absolute value).
LOG_PARAMS = frozenset({"tuf", "tpf", "tnf", "r_paper", "usflux", "flux"})

_FALLBACK_UNITS = {
    "tuf": "Mx", "tpf": "Mx", "tnf": "Mx", "net_flux": "Mx", "psep": "Mm", "psep_robust": "Mm",
    "tilt_deg": "deg", "r_paper": "Mx", "r_value": "log10 Mx",
}


def param_unit(name: str) -> str:
    """Unit string of parameter ``name`` (from sharpgen.physics.PARAMETERS when available)."""
    try:
        from sharpgen.physics import PARAMETERS

        info = PARAMETERS.get(name)
        if info is not None:
            unit = getattr(info, "unit", None)
            if unit is None and isinstance(info, Mapping):
                unit = info.get("unit")
            if unit is not None:
                return str(unit)
    except Exception:  # physics module absent or different: fall back to the documented units
        pass
    return _FALLBACK_UNITS.get(name, "")


def param_label(name: str, log: bool = False) -> str:
    """Axis label ``name [unit]`` (``log`` is accepted for symmetry with the callers)."""
    unit = param_unit(name)
    return f"{name} [{unit}]" if unit else name


def is_log_param(name: str, values: np.ndarray | None = None) -> bool:
    """True for flux-like parameters drawn on log axes (ignores all-zero columns)."""
    if name not in LOG_PARAMS:
        return False
    if values is None:
        return True
    v = np.abs(np.asarray(values, dtype=float))
    return bool(np.any(np.isfinite(v) & (v > 0)))


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------

def save_figure(fig: Figure, png: str | Path, pdf: str | Path | None = None, dpi: int = 130) -> None:
    """Write ``fig`` to ``png`` (and ``pdf``) atomically, without time stamps, then close it."""
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    if pdf is not None:
        with atomic_path(pdf, suffix=".pdf") as tmp:
            fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None,
                                                     "Producer": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# image helpers
# --------------------------------------------------------------------------------------------

def symmetric_vmax(images: np.ndarray, percentile: float = 99.5, floor: float = 1.0) -> float:
    """Symmetric colour limit [G]: the ``percentile`` of |B_r| over ``images`` (at least ``floor``)."""
    a = np.abs(np.asarray(images, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return floor
    return float(max(np.percentile(a, percentile), floor))


def show_br(ax, img_gauss: np.ndarray, vmax: float, extent=None, aspect="equal"):
    """Draw one Br map (S,S) [G] on ``ax`` with a grey map centred on 0 G; returns the image."""
    im = ax.imshow(np.asarray(img_gauss, dtype=float), cmap=BR_CMAP, vmin=-vmax, vmax=vmax,
                   origin="lower", interpolation="nearest", extent=extent, aspect=aspect)
    return im


def br_colorbar(fig: Figure, mappable, ax=None, cax=None, **kw):
    """Labelled Gauss colour bar for a Br image."""
    cb = fig.colorbar(mappable, ax=ax, cax=cax, **kw)
    cb.set_label(r"$B_r$ [G]")
    return cb


def _suptitle(fig: Figure, text: str, fontsize: float = 11) -> None:
    """Figure title wrapped to the figure width (never clipped at the edges)."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")),
                 fontsize=fontsize)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = min(n, n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


# --------------------------------------------------------------------------------------------
# 1. real vs generated grid
# --------------------------------------------------------------------------------------------

def fig_sample_grid(real_gauss: np.ndarray, gen_gauss: np.ndarray, n_rows: int = 4, n_cols: int = 4,
                    seed: int = 0, real_labels: Sequence[str] | None = None) -> Figure:
    """Side-by-side grids of randomly chosen real (left) and generated (right) patches.

    real_gauss, gen_gauss: (N, S, S) Br [G]. ``real_labels`` (len N) are drawn under real patches.
    One symmetric colour scale (0 G = mid grey) is shared by both grids.
    """
    n = n_rows * n_cols
    ri = _pick(len(real_gauss), n, seed)
    gi = _pick(len(gen_gauss), n, seed + 1)
    vmax = symmetric_vmax(np.concatenate([real_gauss[ri].ravel(), gen_gauss[gi].ravel()]))
    fig = plt.figure(figsize=(2 * n_cols * 1.45 + 1.2, n_rows * 1.55 + 0.6), layout="constrained")
    left, right, cbf = fig.subfigures(1, 3, width_ratios=[n_cols, n_cols, 0.75], wspace=0.02)
    im = None
    for sub, imgs, idx, title in ((left, real_gauss, ri, "real SHARP patches"),
                                  (right, gen_gauss, gi, "generated (GAN) patches")):
        axes = sub.subplots(n_rows, n_cols, squeeze=False)
        sub.suptitle(title, fontsize=11)
        for k, ax in enumerate(axes.ravel()):
            _off(ax)
            if k < len(idx):
                im = show_br(ax, imgs[idx[k]], vmax)
                if imgs is real_gauss and real_labels is not None:
                    ax.set_xlabel(str(real_labels[idx[k]]), fontsize=6, labelpad=1)
            else:
                ax.axis("off")
    cax = cbf.add_axes([0.08, 0.15, 0.18, 0.7])
    br_colorbar(fig, im, cax=cax)
    return fig


# --------------------------------------------------------------------------------------------
# 2. parameter distributions
# --------------------------------------------------------------------------------------------

def fig_parameter_distributions(real: pd.DataFrame, gen: pd.DataFrame, params: Sequence[str],
                                scores: Mapping[str, Mapping[str, float]] | None = None,
                                n_bins: int = 30, ncols: int = 4) -> Figure:
    """Histograms (fraction of each sample per bin) of each parameter, real vs generated.

    Flux-like parameters (``LOG_PARAMS``) use log-spaced bins of |value| on a log x axis.
    ``scores``: optional {param: {"wasserstein_norm": w, "ks": d}} written in each panel.
    """
    params = [p for p in params if p in real.columns and p in gen.columns]
    nrows = max(1, math.ceil(len(params) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel()[len(params):]:
        ax.axis("off")
    for ax, p in zip(axes.ravel(), params):
        r = real[p].to_numpy(dtype=float)
        g = gen[p].to_numpy(dtype=float)
        r, g = r[np.isfinite(r)], g[np.isfinite(g)]
        log = is_log_param(p, np.concatenate([r, g]))
        n_nonpos = 0
        if log:
            n_nonpos = int(np.sum(r <= 0) + np.sum(g <= 0))
            r, g = r[r > 0], g[g > 0]
        both = np.concatenate([r, g])
        if both.size == 0:
            ax.text(0.5, 0.5, f"{p}: no finite values", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        lo, hi = np.percentile(both, [0.5, 99.5])
        if log:
            bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 1.01)), n_bins + 1)
            ax.set_xscale("log")
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, n_bins + 1)
        # fraction of each sample per bin (a density on log-spaced bins would favour small x)
        ax.hist(r, bins=bins, weights=np.full(r.size, 1.0 / max(r.size, 1)), histtype="stepfilled",
                alpha=0.45, color=REAL_COLOR, label=f"real (n={r.size})")
        ax.hist(g, bins=bins, weights=np.full(g.size, 1.0 / max(g.size, 1)), histtype="step",
                lw=1.6, color=GEN_COLOR, label=f"generated (n={g.size})")
        ax.set_xlabel(param_label(p, log) + (f"  ({n_nonpos} values <= 0 not shown)"
                                             if n_nonpos else ""))
        ax.set_yticks([])
        if scores and p in scores:
            s = scores[p]
            txt = "\n".join(f"{k_lab} = {s[k]:.3f}" for k, k_lab in
                            (("wasserstein_norm", "$W_{norm}$"), ("ks", "KS")) if
                            s.get(k) is not None and np.isfinite(s.get(k)))
            if txt:
                ax.text(0.98, 0.97, txt, ha="right", va="top", transform=ax.transAxes, fontsize=8,
                        bbox=dict(fc="white", ec="0.7", alpha=0.85))
    axes.ravel()[0].legend(loc="upper left", fontsize=7, frameon=False)
    axes.ravel()[0].set_ylabel("fraction per bin")
    _suptitle(fig, "Physical parameters: real vs generated")
    return fig


# --------------------------------------------------------------------------------------------
# 3. realism statistics
# --------------------------------------------------------------------------------------------

def fig_realism(real_gauss: np.ndarray, gen_gauss: np.ndarray, pixel_size_mm: float | None = None
                ) -> Figure:
    """Pixel-noise sigma, radially averaged power spectrum and mean gradient, real vs generated.

    real_gauss, gen_gauss: (N, S, S) Br [G] at the same pixel scale. ``pixel_size_mm`` (pixel side
    [Mm]) converts the spectrum's wavenumber axis and the gradients to physical units.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    sig_r, sig_g = M.noise_sigma(real_gauss), M.noise_sigma(gen_gauss)
    sig_r, sig_g = sig_r[np.isfinite(sig_r)], sig_g[np.isfinite(sig_g)]
    lo, hi = np.percentile(np.concatenate([sig_r, sig_g]), [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    ax = axes[0]
    ax.hist(sig_r, bins=bins, density=True, alpha=0.45, color=REAL_COLOR,
            label=f"real, median {np.median(sig_r):.1f} G")
    ax.hist(sig_g, bins=bins, density=True, histtype="step", lw=1.6, color=GEN_COLOR,
            label=f"generated, median {np.median(sig_g):.1f} G")
    ax.set_xlabel(r"pixel-noise $\sigma$ [G] (MAD of pixel differences)")
    ax.set_ylabel("density")
    ax.set_yticks([])
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("noise level")

    ax = axes[1]
    scale = 1.0 / pixel_size_mm if pixel_size_mm else 1.0
    for imgs, col, lab in ((real_gauss, REAL_COLOR, "real"), (gen_gauss, GEN_COLOR, "generated")):
        k, p = M.radial_power_spectrum(imgs)
        k = k * scale
        sel = k > 0
        med = np.median(p, axis=0)
        q16, q84 = np.percentile(p, [16, 84], axis=0)
        ax.fill_between(k[sel], q16[sel], q84[sel], color=col, alpha=0.25, lw=0)
        ax.plot(k[sel], med[sel], color=col, label=f"{lab} (median, 16-84%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_xlabel("wavenumber [1/Mm]" if pixel_size_mm else "wavenumber [1/pixel]")
    ax.set_ylabel(r"power [G$^2$]")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("radially averaged power spectrum")

    ax = axes[2]
    g_r = M.mean_gradient(real_gauss) * scale
    g_g = M.mean_gradient(gen_gauss) * scale
    lo, hi = np.percentile(np.concatenate([g_r, g_g]), [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    unit = "G/Mm" if pixel_size_mm else "G/pixel"
    ax.hist(g_r, bins=bins, density=True, alpha=0.45, color=REAL_COLOR,
            label=f"real, median {np.median(g_r):.3g} {unit}")
    ax.hist(g_g, bins=bins, density=True, histtype="step", lw=1.6, color=GEN_COLOR,
            label=f"generated, median {np.median(g_g):.3g} {unit}")
    ax.set_xlabel(rf"mean $|\nabla B_r|$ [{unit}]")
    ax.set_yticks([])
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("mean gradient")
    _suptitle(fig, "Realism statistics: real vs generated")
    return fig


# --------------------------------------------------------------------------------------------
# 4. latent-space maps
# --------------------------------------------------------------------------------------------

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
    clabel = ("log10 " if log else "") + param_label(param, log)

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


# --------------------------------------------------------------------------------------------
# 5. traversals
# --------------------------------------------------------------------------------------------

def format_value(param: str, value: float) -> str:
    """Short text for a parameter value with its unit, e.g. ``tuf=3.1e+22 Mx``."""
    if value is None or not np.isfinite(value):
        return f"{param}=nan"
    unit = param_unit(param)
    if abs(value) >= 1e4 or (abs(value) < 1e-2 and value != 0):
        s = f"{value:.2e}"
    else:
        s = f"{value:.3g}"
    return f"{param}={s}" + (f" {unit}" if unit and not unit.startswith("log") else "")


def fig_traversals(strips: Sequence[Mapping], title: str = "Latent traversals") -> Figure:
    """Rows of images generated along latent directions, each image annotated with measurements.

    strips: sequence of mappings with keys ``label`` (row title), ``images`` (K, S, S) [G],
    ``steps`` (K,) the step along the direction (in units of the latent norm), ``annotations``
    (list of K strings, e.g. the measured parameter values, one or two lines each).
    """
    n_rows = len(strips)
    k_max = max(len(s["images"]) for s in strips)
    vmax = symmetric_vmax(np.concatenate([np.asarray(s["images"]).ravel() for s in strips]))
    fig, axes = plt.subplots(n_rows, k_max, figsize=(1.45 * k_max + 1.6, 2.15 * n_rows + 0.5),
                             layout="constrained", squeeze=False)
    im = None
    for row, s in zip(axes, strips):
        for k, ax in enumerate(row):
            _off(ax)
            if k >= len(s["images"]):
                ax.axis("off")
                continue
            im = show_br(ax, s["images"][k], vmax)
            ax.set_title(f"step {s['steps'][k]:+.1f}", fontsize=7, pad=2)
            ax.set_xlabel(s["annotations"][k], fontsize=6.5, labelpad=2)
        row[0].set_ylabel(s["label"], fontsize=9, fontweight="bold")
    _suptitle(fig, title)
    br_colorbar(fig, im, ax=axes, shrink=0.5, pad=0.01, aspect=30)
    return fig


# --------------------------------------------------------------------------------------------
# 6. retrieval examples
# --------------------------------------------------------------------------------------------

def fig_retrieval_examples(queries_gauss: np.ndarray, matches_gauss: Mapping[str, np.ndarray],
                           match_labels: Mapping[str, Sequence[str]],
                           query_labels: Sequence[str] | None = None) -> Figure:
    """Generated queries (first column) and the real record each method retrieves for them.

    queries_gauss: (Q, S, S) [G]; matches_gauss: {method: (Q, S, S) [G]}; match_labels: {method:
    Q strings, e.g. "HARP 377\\n2011.02.15_00:00"}. One colour scale for the whole figure.
    """
    methods = list(matches_gauss)
    q = len(queries_gauss)
    cols = 1 + len(methods)
    vmax = symmetric_vmax(np.concatenate([queries_gauss.ravel()] +
                                         [np.asarray(m).ravel() for m in matches_gauss.values()]))
    fig, axes = plt.subplots(q, cols, figsize=(2.15 * cols + 0.9, 2.3 * q + 0.4),
                             layout="constrained", squeeze=False)
    im = None
    for i in range(q):
        im = show_br(axes[i, 0], queries_gauss[i], vmax)
        axes[i, 0].set_xlabel(query_labels[i] if query_labels is not None else f"query {i}",
                              fontsize=7)
        for j, m in enumerate(methods, start=1):
            show_br(axes[i, j], matches_gauss[m][i], vmax)
            axes[i, j].set_xlabel(match_labels[m][i], fontsize=7)
    for ax in axes.ravel():
        _off(ax)
    axes[0, 0].set_title("generated query", fontsize=9)
    for j, m in enumerate(methods, start=1):
        axes[0, j].set_title(METHOD_LABELS.get(m, m), fontsize=9)
    br_colorbar(fig, im, ax=axes, shrink=0.4, aspect=30)
    _suptitle(fig, "Retrieval: nearest real SHARP patch to a generated query")
    return fig


# --------------------------------------------------------------------------------------------
# 7. query vs match scatter
# --------------------------------------------------------------------------------------------

def fig_retrieval_scatter(pairs: pd.DataFrame, params: Sequence[str], methods: Sequence[str],
                          n_bins: int = 25, reference: Mapping[str, float] | None = None,
                          reference_label: str = "paper") -> Figure:
    """2-D histograms of query vs matched parameter value, one row per parameter, one column per
    retrieval method, with Pearson r and Spearman rho in each panel.

    pairs: long table with columns ``method``, ``parameter``, ``query``, ``match`` (physical units).
    Flux-like parameters are shown as log10 |value|; Pearson r is computed on the physical
    values (as in retrieval/evaluation.json and the paper), Spearman rho on ranks. ``reference``:
    optional {param: Pearson r} (e.g. the paper's SimSiam values) written in the first column.
    """
    params = [p for p in params if (pairs["parameter"] == p).any()]
    methods = [m for m in methods if (pairs["method"] == m).any()]
    fig, axes = plt.subplots(len(params), len(methods),
                             figsize=(2.75 * len(methods) + 0.6, 2.55 * len(params) + 0.4),
                             layout="constrained", squeeze=False)
    for i, p in enumerate(params):
        sub = pairs[pairs["parameter"] == p]
        allv = np.concatenate([sub["query"].to_numpy(float), sub["match"].to_numpy(float)])
        log = is_log_param(p, allv)

        def tr(a, _log=log):
            if not _log:
                return a
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(a > 0, np.log10(np.where(a > 0, a, 1.0)), np.nan)

        tv = tr(allv)
        tv = tv[np.isfinite(tv)]
        lo, hi = np.percentile(tv, [1, 99]) if tv.size else (0, 1)
        hi = hi if hi > lo else lo + 1
        edges = np.linspace(lo, hi, n_bins + 1)
        for j, m in enumerate(methods):
            ax = axes[i, j]
            d = sub[sub["method"] == m]
            xr, yr = d["query"].to_numpy(float), d["match"].to_numpy(float)
            ok = np.isfinite(xr) & np.isfinite(yr)
            xr, yr = xr[ok], yr[ok]
            x, y = tr(xr), tr(yr)
            drawn = np.isfinite(x) & np.isfinite(y)
            ax.hist2d(x[drawn], y[drawn], bins=[edges, edges], cmap="Blues", cmin=1,
                      rasterized=True)
            ax.plot([lo, hi], [lo, hi], color="crimson", lw=0.9, ls="--")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            if x.size > 2 and np.std(xr) > 0 and np.std(yr) > 0:
                pr = stats.pearsonr(xr, yr)[0]  # physical values, as in evaluation.json
                sr = stats.spearmanr(xr, yr)[0]
                txt = f"r = {pr:.2f}\n" + r"$\rho$ = " + f"{sr:.2f}\nn = {x.size}"
            else:
                txt = f"n = {x.size}"
            n_off = int(np.sum(~(np.isfinite(x) & np.isfinite(y))))
            if n_off:
                txt += f"\n{n_off} pairs <= 0 not drawn"
            if j == 0 and reference and p in reference:
                txt += f"\n{reference_label} r = {reference[p]:.2f}"
            ax.text(0.04, 0.96, txt, transform=ax.transAxes, va="top", fontsize=7.5,
                    bbox=dict(fc="white", ec="0.7", alpha=0.85))
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(METHOD_LABELS.get(m, m), fontsize=9)
            lab = ("log10 " if log else "") + param_label(p, log)
            if j == 0:
                ax.set_ylabel(f"match {lab}", fontsize=7.5)
            ax.set_xlabel(f"query {lab}", fontsize=7.5)
    _suptitle(fig, "Query vs retrieved-match parameters")
    return fig


# --------------------------------------------------------------------------------------------
# 8. directions: accuracy table, entanglement, calibration
# --------------------------------------------------------------------------------------------

def fig_table(df: pd.DataFrame, title: str, fmt: str = "{:.3f}") -> Figure:
    """Render a small DataFrame (index = row labels) as a table figure."""
    cells = [[fmt.format(v) if isinstance(v, (float, np.floating)) and np.isfinite(v)
              else ("-" if isinstance(v, (float, np.floating)) else str(v)) for v in row]
             for row in df.to_numpy()]
    fig, ax = plt.subplots(figsize=(1.6 + 1.55 * len(df.columns), 0.9 + 0.33 * len(df)),
                           layout="constrained")
    ax.axis("off")
    t = ax.table(cellText=cells, rowLabels=[str(i) for i in df.index],
                 colLabels=[str(c) for c in df.columns], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.35)
    ax.set_title(title)
    return fig


def fig_entanglement(matrices: Mapping[str, pd.DataFrame], title: str = "Entanglement",
                     cbar_label: str = "Δ parameter / Δ target [population std]",
                     ) -> Figure:
    """Heat maps (RdBu_r, centred on 0, symmetric range) of direction x parameter matrices.

    matrices: {panel title: DataFrame (rows = direction moved, columns = parameter measured)}.
    Values are written in each cell; the colour range is symmetric, at least [-1, 1].
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
        for (r, c), v in np.ndenumerate(a):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
            else:  # undefined, e.g. a target that does not change along its direction
                ax.text(c, r, "n/a", ha="center", va="center", fontsize=6.5, color="0.5")
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    cb.set_label(cbar_label, fontsize=8)
    _suptitle(fig, title)
    return fig


def fig_calibration(curves: pd.DataFrame, fits: Mapping[str, Mapping] | None = None,
                    ncols: int = 4) -> Figure:
    """Calibration curves: change of the target parameter vs step ``eps`` along its direction.

    curves: long table with columns ``direction``, ``eps``, ``median``, ``lo``, ``hi`` (the
    change of the target from eps = 0, in fit space: log10 for fluxes, the value otherwise;
    median and 16th/84th percentile over base latents) and ``ylabel``. fits: optional
    {direction: {"slope", "slope_std", "r2", "median_rel_error"}} drawn as the calibrated line
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
            if f.get("median_rel_error") is not None and np.isfinite(f["median_rel_error"]):
                lines.append(f"median rel. error = {f['median_rel_error']:.3f}")
            ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7.5,
                    bbox=dict(fc="white", ec="0.7", alpha=0.85))
        ax.set_xlabel(r"step $\epsilon$ along direction", fontsize=8.5)
        ax.set_ylabel(str(d["ylabel"].iloc[0]), fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.set_title(key, fontsize=10)
    axes.ravel()[0].legend(fontsize=7, frameon=False, loc="lower right")
    _suptitle(fig, "Calibration: change of the target parameter along its direction")
    return fig


# --------------------------------------------------------------------------------------------
# 9. training curves
# --------------------------------------------------------------------------------------------

def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over ``window`` points (edges use the available points)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or y.size < 3:
        return y
    window = min(window, y.size)
    k = np.ones(window)
    ok = np.isfinite(y)
    num = np.convolve(np.where(ok, y, 0.0), k, mode="same")
    den = np.convolve(ok.astype(float), k, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def fig_training_curves(log: pd.DataFrame, x: str, panels: Sequence[tuple[str, Sequence[str], str]],
                        title: str, logy: Sequence[str] = ()) -> Figure:
    """One panel per group of columns of a training log.

    log: the training log table; x: its step column; panels: [(panel title, [columns], y label)];
    raw values are drawn thin and a running mean (window ~ len/50) thick. ``logy``: panel titles
    drawn with a log y axis.
    """
    panels = [(t, [c for c in cols if c in log.columns], yl) for t, cols, yl in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4), layout="constrained",
                             squeeze=False)
    xs = log[x].to_numpy(float)
    w = max(1, len(log) // 50)
    for ax, (ptitle, cols, ylabel) in zip(axes[0], panels):
        for i, c in enumerate(cols):
            y = log[c].to_numpy(float)
            col = f"C{i}"
            if w > 1:
                ax.plot(xs, y, color=col, lw=0.5, alpha=0.35)
            ax.plot(xs, smooth(y, w), color=col, lw=1.5, label=c)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(ptitle, fontsize=10)
        if ptitle in logy:
            ax.set_yscale("log")
        # below the axes: never on top of the curves
        ax.legend(fontsize=7.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=len(cols))
    _suptitle(fig, title)
    return fig


# ============================================================================================
# Pipeline adapters: result files -> Figure. One builder per figure (one Snakemake rule each).
# ``inp`` maps the rule's input names to paths; ``cfg`` is the ``report`` config section.
# ============================================================================================

#: parameters of the distribution figure, in this order
DISTRIBUTION_PARAMS = ("tuf", "tpf", "tnf", "net_flux", "psep", "psep_robust", "r_paper", "r_value")
#: retrieval method names in matches.parquet -> names used in the report and metrics.json
RETRIEVAL_METHOD_ALIASES = {"params_euclidean": "physical_euclidean",
                            "params_mahalanobis": "physical_mahalanobis"}


def _zarr_group(path):
    import zarr

    return zarr.open_group(str(path), mode="r")


def read_images(zarr_path, key: str, rows=None) -> np.ndarray:
    """Rows ``rows`` (int array, any order; None = all) of array ``key`` of a Zarr group,
    as float32 (n, S, S) in the stored units."""
    arr = _zarr_group(zarr_path)[key]
    if rows is None:
        return np.asarray(arr[...], dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.empty((0, *arr.shape[1:]), dtype=np.float32)
    uniq, inv = np.unique(rows, return_inverse=True)
    got = np.asarray(arr.get_orthogonal_selection((uniq, slice(None), slice(None))), dtype=np.float32)
    return got[inv]


def store_attrs(zarr_path) -> dict:
    return dict(_zarr_group(zarr_path).attrs)


def clip_gauss_of(zarr_path) -> float:
    attrs = store_attrs(zarr_path)
    if "clip_gauss" not in attrs:
        raise ValueError(f"patch store {zarr_path} has no 'clip_gauss' attribute")
    return float(attrs["clip_gauss"])


def physical_pixel_mm(patches_zarr) -> float | None:
    """Median pixel side [Mm] of the patch store in crop mode; None in resize mode (not physical)."""
    g = _zarr_group(patches_zarr)
    if str(g.attrs.get("mode", "crop")) != "crop" or "pixel_size_mm" not in g:
        return None
    return float(np.nanmedian(np.asarray(g["pixel_size_mm"][...], dtype=float)))


def _record_label(row) -> str:
    return f"HARP {int(row['harpnum'])}\n{row['t_rec']}"


def _real_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    if split in (None, "all"):
        return table
    sub = table[table["split"] == split]
    return sub if len(sub) else table


def build_samples(inp: Mapping, cfg: Mapping) -> Figure:
    """Real vs generated patch grid (inputs: patches, table, generated)."""
    seed = int(cfg.get("seed", 0))
    rows_n, cols_n = int(cfg["grid"]["rows"]), int(cfg["grid"]["cols"])
    clip = clip_gauss_of(inp["patches"])
    table = pd.read_parquet(inp["table"], columns=["row", "harpnum", "t_rec"])
    n_gen = _zarr_group(inp["generated"])["images"].shape[0]
    ri = table["row"].to_numpy()[_pick(len(table), rows_n * cols_n, seed)]
    gi = _pick(n_gen, rows_n * cols_n, seed + 1)
    real = read_images(inp["patches"], "patches", ri) * clip
    gen = read_images(inp["generated"], "images", gi) * clip
    labels = [_record_label(r) for _, r in table.set_index("row").loc[ri].reset_index().iterrows()]
    return fig_sample_grid(real, gen, rows_n, cols_n, seed=seed, real_labels=labels)


def build_parameters(inp: Mapping, cfg: Mapping) -> Figure:
    """Parameter distributions real vs generated (inputs: table, latents, quality)."""
    import json

    quality = json.loads(Path(inp["quality"]).read_text())
    split = quality.get("real", {}).get("split", "train")
    real = _real_rows(pd.read_parquet(inp["table"]), split)
    import pyarrow.parquet as pq

    have = set(pq.read_schema(inp["latents"]).names)
    gen = pd.read_parquet(inp["latents"], columns=[p for p in DISTRIBUTION_PARAMS if p in have])
    scores = quality.get("parameters", {})
    fig = fig_parameter_distributions(real, gen, DISTRIBUTION_PARAMS, scores=scores)
    _suptitle(fig, f"Physical parameters: real ({split} split) vs generated")
    return fig


def build_realism(inp: Mapping, cfg: Mapping) -> Figure:
    """Noise sigma / power spectrum / mean gradient (inputs: patches, table, generated)."""
    seed = int(cfg.get("seed", 0))
    n = int(cfg.get("realism_images", 500))
    clip = clip_gauss_of(inp["patches"])
    table = pd.read_parquet(inp["table"], columns=["row", "split"])
    real_rows = _real_rows(table, "train")["row"].to_numpy()
    real = read_images(inp["patches"], "patches", real_rows[_pick(len(real_rows), n, seed)]) * clip
    n_gen = _zarr_group(inp["generated"])["images"].shape[0]
    gen = read_images(inp["generated"], "images", _pick(n_gen, n, seed + 1)) * clip
    return fig_realism(real, gen, physical_pixel_mm(inp["patches"]))


def load_boundary(npz_path, param: str) -> tuple[np.ndarray, float, float]:
    """(unit normal (D,), intercept, validation accuracy) of ``param`` from boundaries.npz."""
    with np.load(npz_path) as f:
        names = [str(x) for x in f["names"]]
        if param not in names:
            raise ValueError(f"{npz_path}: no boundary for parameter {param!r} (has {names})")
        i = names.index(param)
        acc = float(f["val_accuracy"][i]) if "val_accuracy" in f.files else float("nan")
        return np.asarray(f["normals"][i], dtype=float), float(f["intercepts"][i]), acc


def build_latent_map(inp: Mapping, cfg: Mapping, param: str) -> Figure:
    """Latent map of one parameter (inputs: latents, generated, boundaries)."""
    from sharpgen.sampling import read_latents

    lm = cfg.get("latent_map", {})
    seed = int(cfg.get("seed", 0))
    z, table = read_latents(inp["latents"])
    if param not in table.columns:
        raise ValueError(f"{inp['latents']}: no column {param!r}")
    sel = _pick(len(z), int(lm.get("max_points", 3000)), seed)
    normal, intercept, acc = load_boundary(inp["boundaries"], param)
    from sharpgen import directions as dr

    field = dr.load_direction_field(inp["boundaries"])
    values = table[param].to_numpy(float)
    if param in field.folded:  # the boundary lives in folded coordinates: show the samples there
        z, negative = field.fold_latents(z)
        values = dr.folded_values(table, param, negative)
    clip = float(store_attrs(inp["generated"]).get("clip_gauss", 1.0))
    rows = table["sample"].to_numpy()[sel] if "sample" in table.columns else sel

    def images(idx):
        return read_images(inp["generated"], "images", rows[np.asarray(idx)]) * clip

    fig = fig_latent_map(z[sel], values[sel], images, normal, intercept,
                         param, accuracy=acc, n_cols=int(lm.get("cols", 9)),
                         n_rows=int(lm.get("rows", 6)))
    if param in field.folded:  # say so where the reader looks: on the distance axes
        for ax in fig.axes[:2]:
            ax.set_xlabel(ax.get_xlabel() + " (polarity-folded z)")
    return fig


def direction_title(key: str) -> str:
    """'r_value|tuf' -> 'r_value (tuf held)'; 'tuf' -> 'tuf'."""
    target, _, hold = key.partition("|")
    return f"{target} ({hold.replace(',', ', ')} held)" if hold else target


def build_traversals(inp: Mapping, cfg: Mapping) -> Figure:
    """Traversal strips (inputs: generator, boundaries, patches). Images are regenerated from one
    seeded base latent and measured exactly like the generated population."""
    from sharpgen import directions as dr
    from sharpgen.gan import generate, load_generator
    from sharpgen.physics import compute_parameters

    tc = cfg.get("traversal", {})
    keys = list(tc.get("directions", ["tuf", "psep", "r_value", "r_value|tuf"]))
    eps = np.linspace(-float(tc.get("eps_max", 3.0)), float(tc.get("eps_max", 3.0)),
                      int(tc.get("n_steps", 7)))
    field = dr.load_direction_field(inp["boundaries"])
    ctx = dr.measurement_context(inp["patches"])
    scale = dr.scale_from_context(ctx)
    G = load_generator(inp["generator"])
    z0 = dr.latent_from_seed(int(cfg.get("seed", 0)), field.dim).astype(np.float64)
    strips = []
    for key in keys:
        spec = dr.DirectionSpec.parse(key)
        v = field.per_base(spec, z0[None, :])[0]
        z = (z0[None, :] + eps[:, None] * v[None, :]).astype(np.float32)
        imgs = generate(G, z) * ctx["clip_gauss"]
        meas = compute_parameters(imgs.astype(np.float64), scale)
        shown = [spec.target, *spec.hold]
        beyond = dr.beyond_bounds(eps, field.eps_bounds(spec, z0[None, :]))[0]
        ann = ["\n".join(format_value(p, float(meas[p].iloc[k])) for p in shown)
               + ("\nbeyond the fold" if beyond[k] else "")
               for k in range(len(eps))]
        strips.append({"label": direction_title(key), "images": imgs, "steps": eps,
                       "annotations": ann})
    side = ("; base on the reflected side of the polarity fold" if field.side(z0[None, :])[0] else
            "; polarity-folded directions" if field.fold is not None else "")
    return fig_traversals(strips, title="Latent traversals along the SVM normals "
                                        f"(same base latent{side}; values measured on each image)")


_ORDER = ("tuf", "tpf", "tnf", "net_flux", "psep", "psep_robust", "tilt_deg", "r_paper", "r_value")


def canonical_order(names) -> list[str]:
    """Parameter (or direction) names in the order of the paper's tables: fluxes, separations,
    R; conditional keys right after their target; unknown names last (alphabetical)."""
    def key(n):
        target, _, hold = str(n).partition("|")
        i = _ORDER.index(target) if target in _ORDER else len(_ORDER)
        return (i, target, hold)

    return sorted(names, key=key)


def _method_name(m: str) -> str:
    return RETRIEVAL_METHOD_ALIASES.get(m, m)


def read_matches(path, query_set: str | None) -> pd.DataFrame:
    """matches.parquet restricted to one query set (if the column exists), method names
    normalised to simsiam / physical_euclidean / physical_mahalanobis / random."""
    df = pd.read_parquet(path)
    if query_set and "query_set" in df.columns:
        if not (df["query_set"] == query_set).any():
            raise ValueError(f"{path}: no matches for query set {query_set!r} "
                             f"(has {sorted(df['query_set'].unique())})")
        df = df[df["query_set"] == query_set]
    df = df.assign(method=df["method"].map(_method_name))
    if "rank" in df.columns:
        df = df[df["rank"] == df["rank"].min()]
    return df


def build_retrieval_examples(inp: Mapping, cfg: Mapping) -> Figure:
    """Generated queries with their SimSiam / physical matches (inputs: matches, patches, table,
    generated)."""
    rc = cfg.get("retrieval", {})
    qset = rc.get("query_set", "generated")
    df = read_matches(inp["matches"], qset)
    methods = [m for m in ("simsiam", "physical_euclidean", "physical_mahalanobis")
               if (df["method"] == m).any()]
    common = set(df["query_id"])
    for m in methods:
        common &= set(df.loc[df["method"] == m, "query_id"])
    qids = np.array(sorted(common))
    qids = qids[_pick(len(qids), int(rc.get("n_examples", 4)), int(cfg.get("seed", 0)))]
    clip = clip_gauss_of(inp["patches"])
    if qset == "generated":
        queries = read_images(inp["generated"], "images", qids) * clip
        qlabels = [f"generated #{q}" for q in qids]
    else:  # real query set: query_id is a patch-table row
        queries = read_images(inp["patches"], "patches", qids) * clip
        t = pd.read_parquet(inp["table"], columns=["row", "harpnum", "t_rec"]).set_index("row")
        qlabels = [f"query HARP {int(t.loc[q, 'harpnum'])}\n{t.loc[q, 't_rec']}" for q in qids]
    matches, labels = {}, {}
    for m in methods:
        d = df[df["method"] == m].drop_duplicates("query_id").set_index("query_id").loc[qids]
        matches[m] = read_images(inp["patches"], "patches", d["match_row"].to_numpy()) * clip
        labels[m] = [f"HARP {int(h)}\n{t}" for h, t in zip(d["match_harpnum"], d["match_t_rec"])]
    return fig_retrieval_examples(queries, matches, labels, qlabels)


def matches_long(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Wide matches table (query_<p>, match_<p>) -> long (method, parameter, query, match)."""
    parts = []
    for p in params:
        if f"query_{p}" in df.columns and f"match_{p}" in df.columns:
            parts.append(pd.DataFrame({"method": df["method"].to_numpy(), "parameter": p,
                                       "query": df[f"query_{p}"].to_numpy(float),
                                       "match": df[f"match_{p}"].to_numpy(float)}))
    if not parts:
        raise ValueError("matches table has no query_<p>/match_<p> columns")
    return pd.concat(parts, ignore_index=True)


def build_retrieval_scatter(inp: Mapping, cfg: Mapping) -> Figure:
    """Query vs match per parameter and method (inputs: matches)."""
    qset = cfg.get("retrieval", {}).get("query_set", "generated")
    df = read_matches(inp["matches"], qset)
    params = ("tuf", "psep", "psep_robust", "r_paper", "r_value")
    ref = None
    if inp.get("evaluation") and qset == "generated":
        import json

        ref = json.loads(Path(inp["evaluation"]).read_text()).get("paper_pearson")
    fig = fig_retrieval_scatter(matches_long(df, params), params,
                                ["simsiam", "physical_euclidean", "physical_mahalanobis", "random"],
                                reference=ref, reference_label="paper (SimSiam)")
    _suptitle(fig, f"Query ({qset}) vs retrieved-match parameters")
    return fig


def build_svm_accuracy(inp: Mapping, cfg: Mapping) -> Figure:
    """SVM accuracy table (inputs: boundaries_json)."""
    import json

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


def build_entanglement(inp: Mapping, cfg: Mapping) -> Figure:
    """Entanglement matrices unconditional vs conditional (inputs: traversal_metrics)."""
    import json

    js = json.loads(Path(inp["traversal_metrics"]).read_text())
    dirs = js["directions"]
    params = canonical_order(js.get("std_fit_space") or next(iter(dirs.values()))["entanglement"])

    def mat(keys):
        return pd.DataFrame([[dirs[k]["entanglement"].get(p, np.nan) for p in params] for k in keys],
                            index=[direction_title(k) for k in keys], columns=params, dtype=float)

    unc = canonical_order([k for k, v in dirs.items() if not v.get("hold")])
    cond = canonical_order([k for k, v in dirs.items() if v.get("hold")])
    panels = {"unconditional directions": mat(unc)}
    if cond:
        # each conditional direction next to its unconditional counterpart
        both = []
        for k in cond:
            t = dirs[k]["target"]
            if t in dirs and t not in both:
                both.append(t)
            both.append(k)
        panels["conditional vs unconditional"] = mat(both)
    return fig_entanglement(panels, title="Entanglement: d(parameter)/d(target) along each "
                                          "direction, in population-std units")


def calibration_curves(traversals: pd.DataFrame, keys: Sequence[str],
                       log_params: Sequence[str]) -> pd.DataFrame:
    """Traversal table -> per direction and eps: median / 16% / 84% over bases of the change of
    the target (fit space) from eps = 0; columns direction, eps, median, lo, hi, ylabel."""
    from sharpgen.directions import DirectionSpec, to_fit_space

    out = []
    for key in keys:
        g = traversals[traversals["direction"] == key]
        if g.empty:
            continue
        t = DirectionSpec.parse(key).target
        y = to_fit_space(t, g[t], log_params)
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
        ylab = (f"Δ log10 {t} [dex]" if t in log_params else f"Δ {t}" + (f" [{unit}]" if unit else ""))
        out.append(pd.DataFrame({"direction": direction_title(key), "eps": eps, "median": med,
                                 "lo": lo, "hi": hi, "ylabel": ylab}))
    if not out:
        raise ValueError(f"no traversal rows for the calibrated directions {list(keys)}")
    return pd.concat(out, ignore_index=True)


def build_calibration(inp: Mapping, cfg: Mapping) -> Figure:
    """Calibration curves (inputs: traversals, calibration)."""
    import json

    cal = json.loads(Path(inp["calibration"]).read_text())
    keys = canonical_order(cal["directions"])
    tr = pd.read_parquet(inp["traversals"])
    curves = calibration_curves(tr, keys, cal.get("log_params", ()))
    ev = cal.get("evaluation", {})
    fits = {}
    for k in keys:
        d = cal["directions"][k]
        fits[direction_title(k)] = {
            "slope": d.get("slope"), "slope_std": d.get("slope_std"), "r2": d.get("r2"),
            "median_rel_error": ev.get(k, {}).get("median_rel_error")}
    fits = {k: {kk: (np.nan if vv is None else vv) for kk, vv in v.items()} for k, v in fits.items()}
    return fig_calibration(curves, fits)


def build_training_gan(inp: Mapping, cfg: Mapping) -> Figure:
    """GAN training curves (inputs: log)."""
    log = pd.read_csv(inp["log"])
    return fig_training_curves(
        log, "step",
        [("losses", ["d_loss", "g_loss"], "loss"),
         ("discriminator outputs", ["d_real", "d_fake"], "D(x) (mean)"),
         ("throughput", ["images_per_s"], "images / s")],
        title="GAN training")


def build_training_ssl(inp: Mapping, cfg: Mapping) -> Figure:
    """SimSiam training curves (inputs: log)."""
    log = pd.read_csv(inp["log"])
    x = "epoch" if "epoch" in log.columns else log.columns[0]
    return fig_training_curves(
        log, x,
        [("SimSiam loss (-cosine, min -1)", ["loss"], "loss"),
         ("collapse monitor: normalised std", ["std_z", "std_p", "monitor_std"],
          "std of l2-normalised output"),
         ("collapse monitor: effective rank", ["monitor_effective_rank"], "effective rank"),
         ("throughput", ["seconds"], "seconds / epoch")],
        title="SimSiam training (collapse if std -> 0 or effective rank -> 1)")


#: figure name -> builder; names ending in "_{param}" take the ``param`` wildcard.
FIGURES = {
    "samples": build_samples,
    "parameters": build_parameters,
    "realism": build_realism,
    "latent_map": build_latent_map,
    "traversals": build_traversals,
    "retrieval_examples": build_retrieval_examples,
    "retrieval_scatter": build_retrieval_scatter,
    "svm_accuracy": build_svm_accuracy,
    "entanglement": build_entanglement,
    "calibration": build_calibration,
    "training_gan": build_training_gan,
    "training_ssl": build_training_ssl,
}
