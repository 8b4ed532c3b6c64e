"""Report figures of the data and the GAN: real vs generated patches, parameter distributions,
image realism statistics. Each ``fig_*`` draws from arrays; the ``build_*`` next to it reads the
pipeline outputs (``inp``: rule input name -> path; ``cfg``: the ``report`` config section).
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
from matplotlib import ticker as mticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen import imagestats  # noqa: E402
from sharpgen.parameters import DISTRIBUTION  # noqa: E402
from sharpgen.report.style import (  # noqa: E402
    source_name,
    GEN_COLOR,
    REAL_COLOR,
    br_colorbar,
    is_log_param,
    off,
    param_label,
    pick,
    show_br,
    suptitle,
    symmetric_vmax,
)
from sharpgen.store import PatchStore, image_count, read_images  # noqa: E402


def record_label(row, source: str | None = None) -> str:
    """Two-line label of a patch: its record (HARP and T_REC), marked synthetic when it is."""
    tag = "synthetic " if (source or "").startswith("synthetic") else ""
    return f"{tag}HARP {int(row['harpnum'])}\n{row['t_rec']}"


def fig_sample_grid(real_gauss: np.ndarray, gen_gauss: np.ndarray, n_rows: int = 4, n_cols: int = 4,
                    seed: int = 0, real_labels: Sequence[str] | None = None,
                    real_title: str = "training-data patches") -> Figure:
    """Side-by-side grids of randomly chosen data (left) and generated (right) patches.

    real_gauss, gen_gauss: (N, S, S) Br [G]. ``real_labels`` (len N) are drawn under the data
    patches; ``real_title`` names their source (synthetic data is never called real).
    One symmetric colour scale (0 G = mid grey) is shared by both grids.
    """
    n = n_rows * n_cols
    ri = pick(len(real_gauss), n, seed)
    gi = pick(len(gen_gauss), n, seed + 1)
    vmax = symmetric_vmax(np.concatenate([real_gauss[ri].ravel(), gen_gauss[gi].ravel()]))
    fig = plt.figure(figsize=(2 * n_cols * 1.45 + 1.2, n_rows * 1.55 + 0.6), layout="constrained")
    left, right, cbf = fig.subfigures(1, 3, width_ratios=[n_cols, n_cols, 0.75], wspace=0.02)
    im = None
    for sub, imgs, idx, title in ((left, real_gauss, ri, real_title),
                                  (right, gen_gauss, gi, "generated (GAN) patches")):
        axes = sub.subplots(n_rows, n_cols, squeeze=False)
        sub.suptitle(title, fontsize=11)
        for k, ax in enumerate(axes.ravel()):
            off(ax)
            if k < len(idx):
                im = show_br(ax, imgs[idx[k]], vmax)
                if imgs is real_gauss and real_labels is not None:
                    ax.set_xlabel(str(real_labels[idx[k]]), fontsize=6, labelpad=1)
            else:
                ax.axis("off")
    cax = cbf.add_axes([0.08, 0.15, 0.18, 0.7])
    br_colorbar(fig, im, cax=cax)
    return fig


def build_samples(inp: Mapping, cfg: Mapping) -> Figure:
    """Real vs generated patch grid (inputs: patches, table, generated)."""
    seed = int(cfg["seed"])
    rows_n, cols_n = int(cfg["grid"]["rows"]), int(cfg["grid"]["cols"])
    store = PatchStore.open(inp["patches"], inp["table"])
    sources = store.partial_table(["source"])  # the table's other columns: only the shown rows'
    at = pick(store.n, rows_n * cols_n, seed)
    rows = store.table_rows(at, columns=[c for c in ("row", "harpnum", "t_rec", "source") if c in store.table_columns])
    ri = rows["row"].to_numpy()
    gi = pick(image_count(inp["generated"]), rows_n * cols_n, seed + 1)
    real = store.read(ri, gauss=True)
    gen = read_images(inp["generated"], gi) * np.float32(store.clip_gauss)
    labels = [record_label(r, r.get("source")) for _, r in rows.iterrows()]
    return fig_sample_grid(real, gen, rows_n, cols_n, seed=seed, real_labels=labels,
                           real_title=f"{source_name(sources)} patches")


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
        ax.set_xlabel(param_label(p) + (f"  ({n_nonpos} values <= 0 not shown)"
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
    suptitle(fig, "Physical parameters: real vs generated")
    return fig


def build_parameters(inp: Mapping, cfg: Mapping) -> Figure:
    """Parameter distributions real vs generated (inputs: table, latents, quality)."""
    import pyarrow.parquet as pq

    quality = json.loads(Path(inp["quality"]).read_text())
    split = quality.get("real", {}).get("split", "train")
    cols = set(pq.read_schema(inp["table"]).names)  # only the drawn columns, not the paths and times
    table = pd.read_parquet(inp["table"], columns=[c for c in ("split", "source", *DISTRIBUTION) if c in cols])
    real = table if split == "all" else table[table["split"] == split]
    have = set(pq.read_schema(inp["latents"]).names)
    gen = pd.read_parquet(inp["latents"], columns=[p for p in DISTRIBUTION if p in have])
    scores = quality.get("parameters", {})
    fig = fig_parameter_distributions(real, gen, DISTRIBUTION, scores=scores)
    suptitle(fig, f"Physical parameters: {source_name(real)} patches ({split} split) vs generated")
    return fig


def fig_realism(real_gauss: np.ndarray, gen_gauss: np.ndarray, pixel_size_mm: float | None = None
                ) -> Figure:
    """Pixel-noise sigma, radially averaged power spectrum and mean gradient, real vs generated.

    real_gauss, gen_gauss: (N, S, S) Br [G] at the same pixel scale. ``pixel_size_mm`` (pixel side
    [Mm]) converts the spectrum's wavenumber axis and the gradients to physical units.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    sig_r, sig_g = imagestats.noise_sigma(real_gauss), imagestats.noise_sigma(gen_gauss)
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
        k, p = imagestats.radial_power_spectrum(imgs)
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
    g_r = imagestats.mean_gradient(real_gauss) * scale
    g_g = imagestats.mean_gradient(gen_gauss) * scale
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
    suptitle(fig, "Realism statistics: real vs generated")
    return fig


def build_realism(inp: Mapping, cfg: Mapping) -> Figure:
    """Noise sigma / power spectrum / mean gradient (inputs: patches, table, generated)."""
    seed = int(cfg["seed"])
    n = int(cfg["realism_images"])
    store = PatchStore.open(inp["patches"], inp["table"])
    real_rows = store.rows("train")
    real = store.read(real_rows[pick(len(real_rows), n, seed)], gauss=True)
    gen = read_images(inp["generated"], pick(image_count(inp["generated"]), n, seed + 1)) * np.float32(store.clip_gauss)
    return fig_realism(real, gen, store.physical_pixel_mm)
