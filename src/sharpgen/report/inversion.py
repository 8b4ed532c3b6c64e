"""Report figure of the GAN inversion: held-out patches beside their reconstructions G(c*), and
real-vs-reconstruction scatter of the headline parameters. Reads the ``invert_real`` outputs
(results/invert/: reconstructions.npz, inversions.parquet, inversion.json); runs no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen.parameters import LOG_VALUED, is_log_fit, to_defined_fit_space  # noqa: E402
from sharpgen.report.style import (  # noqa: E402
    GEN_COLOR,
    br_colorbar,
    format_value,
    off,
    param_label,
    show_br,
    source_name,
    suptitle,
    symmetric_vmax,
)

#: patches shown, chosen at evenly spaced quantiles of the real TUF
N_PAIRS = 6


def pick_pairs(real_tuf: np.ndarray, n: int = N_PAIRS) -> np.ndarray:
    """Indices of ``n`` patches at evenly spaced ranks of the real TUF (weakest to strongest)."""
    order = np.argsort(np.nan_to_num(np.asarray(real_tuf, float), nan=-np.inf), kind="stable")
    n = min(n, len(order))
    return order[np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))]


def fig_inversion(real_gauss: np.ndarray, rec_gauss: np.ndarray, real_labels: Sequence[str],
                  rec_labels: Sequence[str], scatter: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                  title: str, matched: Sequence[str] = ()) -> Figure:
    """Top two rows: real patches (G) and their reconstructions, one colour scale; bottom row:
    real vs reconstruction per parameter in fit space (scatter[p] = (real, rec, pearson)); a
    parameter in ``matched`` (fitted by the inversion's parameter-match term) is marked so in its
    panel title, the others "not matched" when any is."""
    n = len(real_gauss)
    ncols = max(n, len(scatter))
    fig = plt.figure(figsize=(2.1 * ncols + 0.8, 7.6), layout="constrained")
    sub_img, sub_sc = fig.subfigures(2, 1, height_ratios=[2.15, 1.25])
    axes = sub_img.subplots(2, ncols, squeeze=False)
    vmax = symmetric_vmax(np.concatenate([np.ravel(real_gauss), np.ravel(rec_gauss)]))
    im = None
    for j in range(ncols):
        for i in range(2):
            off(axes[i, j])
            if j >= n:
                axes[i, j].set_visible(False)
        if j < n:
            im = show_br(axes[0, j], real_gauss[j], vmax)
            show_br(axes[1, j], rec_gauss[j], vmax)
            axes[0, j].set_xlabel(real_labels[j], fontsize=7)
            axes[1, j].set_xlabel(rec_labels[j], fontsize=7)
    axes[0, 0].set_ylabel("real patch", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction G(c*)", fontsize=9)
    if im is not None:
        br_colorbar(sub_img, im, ax=axes, shrink=0.6, aspect=25)
    sax = sub_sc.subplots(1, len(scatter), squeeze=False)[0]
    for ax, (p, (a, b, r)) in zip(sax, scatter.items()):
        fa, fb = to_defined_fit_space(p, a), to_defined_fit_space(p, b)  # R = 0: "no R", not a value
        ok = np.isfinite(fa) & np.isfinite(fb)
        ax.scatter(fa[ok], fb[ok], s=10, color=GEN_COLOR, alpha=0.8)
        if ok.any():
            lo, hi = float(min(fa[ok].min(), fb[ok].min())), float(max(fa[ok].max(), fb[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
        label = f"log10 {param_label(p)}" if is_log_fit(p) else param_label(p)
        ax.set_xlabel(f"real {label}", fontsize=8)
        ax.set_ylabel("reconstruction", fontsize=8)
        extra = " (both R > 0)" if p in LOG_VALUED else ""
        head = (f"{p} [matched]\n" if p in matched else f"{p} [not matched]\n") if matched else f"{p}: "
        ax.set_title(f"{head}Pearson r = {r:.2f}{extra}, n={int(ok.sum())}" if np.isfinite(r)
                     else f"{head}Pearson r undefined{extra}", fontsize=9)
    suptitle(fig, title)
    return fig


def build_inversion(inp: Mapping, cfg: Mapping) -> Figure:
    """Inputs: reconstructions (reconstructions.npz), inversions (inversions.parquet), inversion
    (inversion.json: its ``target_pearson`` parameters get a scatter panel each)."""
    with np.load(inp["reconstructions"], allow_pickle=False) as f:
        real, rec, clip = f["real"], f["reconstruction"], float(f["clip_gauss"])
    table = pd.read_parquet(inp["inversions"])
    summary = json.loads(Path(inp["inversion"]).read_text())
    if len(table) != len(real):
        raise ValueError(f"{inp['inversions']} has {len(table)} rows, {inp['reconstructions']} {len(real)} patches")
    idx = pick_pairs(table["real_tuf"].to_numpy())
    real_labels, rec_labels = [], []
    for k in idx:
        row = table.iloc[k]
        head = f"HARP {row['harpnum']}\n" if "harpnum" in table else ""
        real_labels.append(head + format_value("tuf", row["real_tuf"]))
        rec_labels.append(f"rel. error {row['rel_error']:.2f}\n" + format_value("tuf", row["rec_tuf"]))
    corr = summary.get("correlations", {})
    matched = list(summary.get("matched_parameters", []))
    # the targeted parameters; with a parameter match also r_paper, the independent check when
    # it is not matched itself
    shown = list(summary.get("target_pearson", {})) + (["r_paper"] if matched and "r_paper" not in matched else [])
    scatter = {p: (table[f"real_{p}"].to_numpy(), table[f"rec_{p}"].to_numpy(),
                   float(corr.get(p, {}).get("pearson") if corr.get(p, {}).get("pearson") is not None else np.nan))
               for p in dict.fromkeys(shown) if f"real_{p}" in table}
    px = summary.get("pixel", {})
    title = (f"GAN inversion of {len(table)} held-out {source_name(table)} patches "
             f"({summary.get('space', 'z')} space): median relative pixel error "
             f"{px.get('rel_error_median', float('nan')):.2f}, RMS {px.get('rms_gauss_median', float('nan')):.0f} G")
    if matched:
        title += f"; parameters matched: {', '.join(matched)}"
    return fig_inversion(real[idx] * clip, rec[idx] * clip, real_labels, rec_labels, scatter, title, matched)
