"""Report figures of the trainings: GAN and SimSiam curves from their CSV logs."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpgen.report.style import (  # noqa: E402
    suptitle,
)


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
    suptitle(fig, title)
    return fig


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