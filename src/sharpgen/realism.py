"""Realism check of the synthetic records against real SHARP Br records.

Statistics per record (:func:`realism_stats`): the |Br| histogram, the weak-field standard
deviation (pixels with |Br| < 50 G: noise plus weak network), the pixel-to-pixel noise (robust
sigma of neighbour differences in weak-field areas), the log-log slope of the radially averaged
power spectrum over 5-50 pixel scales, and every :mod:`sharpgen.physics` parameter at the
record's header pixel scale. :func:`realism_figure` draws the comparison (rule
``synthetic_realism``; tests/test_synthetic.py asserts the same numbers within tolerances).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sharpgen.parameters import REALISM_TARGETS

# --------------------------------------------------------------------------------------------
HIST_EDGES_G = np.concatenate([[0.0], np.geomspace(5.0, 4000.0, 41)])
PS_K_RANGE = (0.02, 0.2)  # cycles per native pixel fitted by the power-spectrum slope (5-50 px)


def weak_field_sigma(data: np.ndarray, limit_g: float = 50.0) -> float:
    """Standard deviation [G] of the pixels with |Br| < ``limit_g`` (noise plus weak network)."""
    d = data[np.isfinite(data)]
    w = d[np.abs(d) < limit_g]
    return float(w.std()) if w.size else float("nan")


def pixel_noise_sigma(data: np.ndarray, limit_g: float = 100.0) -> float:
    """Pixel-to-pixel noise [G]: robust (MAD) sigma of horizontal neighbour differences / sqrt 2
    where both pixels are weak (|Br| < ``limit_g``)."""
    d = np.nan_to_num(data)
    diff = (d[:, 1:] - d[:, :-1]) / math.sqrt(2.0)
    weak = (np.abs(d[:, 1:]) < limit_g) & (np.abs(d[:, :-1]) < limit_g)
    x = diff[weak]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


def radial_power_spectrum(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a map (NaN -> 0, mean removed, Hann window).

    Returns ``k`` (cycles per pixel, bin centres) and ``power`` (arbitrary units), both (K,).
    """
    d = np.nan_to_num(np.asarray(data, dtype=np.float64))
    d = d - d.mean()
    ny, nx = d.shape
    win = np.outer(np.hanning(ny), np.hanning(nx))
    p = np.abs(np.fft.fft2(d * win)) ** 2
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    k = np.hypot(ky, kx).ravel()
    edges = np.geomspace(1.0 / max(ny, nx), 0.5, 40)
    idx = np.digitize(k, edges)
    sums = np.bincount(idx, weights=p.ravel(), minlength=edges.size + 1)
    cnt = np.bincount(idx, minlength=edges.size + 1)
    ok = (cnt[1:-1] > 0)
    kc = np.sqrt(edges[:-1] * edges[1:])
    power = np.where(ok, sums[1:-1] / np.maximum(cnt[1:-1], 1), np.nan)
    return kc, power


def power_spectrum_slope(data: np.ndarray, k_range: tuple[float, float] = PS_K_RANGE) -> float:
    """Log-log slope of :func:`radial_power_spectrum` over ``k_range`` (cycles/pixel)."""
    k, p = radial_power_spectrum(data)
    sel = (k >= k_range[0]) & (k <= k_range[1]) & np.isfinite(p) & (p > 0)
    return float(np.polyfit(np.log10(k[sel]), np.log10(p[sel]), 1)[0])


def field_histogram(data: np.ndarray) -> np.ndarray:
    """Normalised histogram (probability per bin) of |Br| over :data:`HIST_EDGES_G`."""
    a = np.abs(data[np.isfinite(data)])
    h, _ = np.histogram(np.clip(a, 0, HIST_EDGES_G[-1] - 1e-6), HIST_EDGES_G)
    return h / max(a.size, 1)


def realism_stats(paths) -> pd.DataFrame:
    """Per-record realism statistics of SHARP Br files (read with sharp_io).

    Columns: ``path``, ``harpnum``, ``ny``, ``nx``, ``weak_sigma`` [G], ``pixel_sigma`` [G],
    ``ps_slope``, ``frac_gt_100``, ``frac_gt_1000`` (pixel fractions above 100 / 1000 G),
    ``p99_abs`` [G], plus every :data:`sharpgen.physics.PARAMETER_NAMES` column computed on the
    full record at its header pixel scale.
    """
    from .physics import compute_parameters
    from .sharp_io import read_sharp

    rows = []
    for p in paths:
        rec = read_sharp(p)
        d = rec.data.astype(np.float64)
        a = np.abs(d[np.isfinite(d)])
        row = {"path": str(p), "harpnum": rec.harpnum, "ny": d.shape[0], "nx": d.shape[1],
               "weak_sigma": weak_field_sigma(d), "pixel_sigma": pixel_noise_sigma(d),
               "ps_slope": power_spectrum_slope(d), "frac_gt_100": float((a > 100).mean()),
               "frac_gt_1000": float((a > 1000).mean()), "p99_abs": float(np.percentile(a, 99))}
        row.update(compute_parameters(d, rec.scale).iloc[0].to_dict())
        rows.append(row)
    return pd.DataFrame(rows)


def realism_figure(real_paths, synth_paths, out_png: str | Path, out_pdf: str | Path | None = None,
                   max_synth: int = 200, seed: int = 0) -> dict:
    """Figure comparing synthetic with real SHARP Br records; returns the summary numbers.

    Panels: example maps (real and synthetic, colour scale centred on 0 G), the |Br|
    histogram, the radially averaged power spectrum, the weak-field/pixel noise, and the
    parameters TUF vs PSEP and TUF vs R_VALUE. ``synth_paths`` is subsampled (seeded) to at most
    ``max_synth`` records. Both files are written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from .atomic import atomic_path
    from .sharp_io import read_sharp

    real_paths = [str(p) for p in real_paths]
    synth_paths = [str(p) for p in synth_paths]
    if not real_paths or not synth_paths:
        raise ValueError(f"realism_figure needs real and synthetic records "
                         f"(got {len(real_paths)} real, {len(synth_paths)} synthetic)")
    rng = np.random.default_rng(seed)
    if len(synth_paths) > max_synth:
        synth_paths = [synth_paths[i] for i in np.sort(rng.choice(len(synth_paths), max_synth, replace=False))]
    rs = realism_stats(real_paths)
    ss = realism_stats(synth_paths)

    # examples: first real record of each HARP; synthetic: one simple and one complex (largest r_value)
    real_ex = rs.drop_duplicates("harpnum").head(2)
    syn_ex = pd.concat([ss.iloc[[int((ss.tuf - rs.tuf.median()).abs().idxmin())]],
                        ss.iloc[[int(ss.r_value.idxmax())]]])
    examples = [("real", r.path, r.harpnum) for r in real_ex.itertuples()]
    examples += [("synthetic", r.path, r.harpnum) for r in syn_ex.itertuples()]

    fig = plt.figure(figsize=(16, 11.5), constrained_layout=True)
    gs = fig.add_gridspec(3, 4, height_ratios=[1.0, 1.0, 1.0])
    vmax = 1500.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    im = None
    for j, (kind, path, harp) in enumerate(examples):
        ax = fig.add_subplot(gs[0, j])
        rec = read_sharp(path)
        im = ax.imshow(rec.data, origin="lower", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"{kind}: HARP {harp}\n{rec.t_rec}  ({rec.data.shape[0]}x{rec.data.shape[1]} px)",
                     fontsize=10)
        ax.set_xlabel("x [CEA px, 0.03°]")
        if j == 0:
            ax.set_ylabel("y [CEA px]")
    cb = fig.colorbar(im, ax=fig.axes[:4], orientation="vertical", fraction=0.02, pad=0.01, extend="both")
    cb.set_label("Br [G]")

    centres = np.sqrt(HIST_EDGES_G[1:] * np.maximum(HIST_EDGES_G[:-1], 1.0))
    ax = fig.add_subplot(gs[1, 0:2])
    for path in rs.path:
        ax.step(centres, field_histogram(read_sharp(path).data), where="mid", color="k", lw=1.5, alpha=0.8)
    hs = np.array([field_histogram(read_sharp(p).data) for p in synth_paths])
    lo, med, hi = np.percentile(hs, [10, 50, 90], axis=0)
    ax.fill_between(centres, np.maximum(lo, 1e-7), np.maximum(hi, 1e-7), step="mid", color="C1",
                    alpha=0.35, label="synthetic 10-90 %")
    ax.step(centres, med, where="mid", color="C1", lw=2, label="synthetic median")
    ax.plot([], [], color="k", label="real records")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_ylim(1e-6, 0.5)
    ax.set_xlabel("|Br| [G]"); ax.set_ylabel("fraction of pixels per bin")
    ax.set_title("field-strength distribution"); ax.legend(fontsize=9)

    ax = fig.add_subplot(gs[1, 2])
    for path in rs.path:
        k, p = radial_power_spectrum(read_sharp(path).data)
        ax.loglog(k, p / np.nanmax(p), color="k", lw=1.5, alpha=0.8)
    for path in synth_paths[:40]:
        k, p = radial_power_spectrum(read_sharp(path).data)
        ax.loglog(k, p / np.nanmax(p), color="C1", lw=0.6, alpha=0.35)
    ax.axvspan(*PS_K_RANGE, color="0.85", zorder=0, label="slope fit range")
    ax.set_xlabel("k [cycles / CEA pixel]"); ax.set_ylabel("normalised power")
    ax.set_title(f"power spectrum: slope real {rs.ps_slope.mean():.2f}, "
                 f"synthetic {ss.ps_slope.median():.2f}", fontsize=10)
    ax.legend(fontsize=9)

    ax = fig.add_subplot(gs[1, 3])
    data = [rs.weak_sigma, ss.weak_sigma, rs.pixel_sigma, ss.pixel_sigma]
    ax.boxplot([ss.weak_sigma, ss.pixel_sigma], positions=[1, 2], widths=0.5)
    ax.scatter(np.r_[np.full(len(rs), 1.0), np.full(len(rs), 2.0)] + 0.3,
               np.r_[rs.weak_sigma, rs.pixel_sigma], color="k", marker="*", s=80, label="real", zorder=3)
    ax.set_xticks([1, 2], ["|Br|<50 G\nstd", "pixel noise\n(neighbour diff.)"])
    ax.set_ylabel("[G]"); ax.set_title("weak field and noise (box: synthetic)"); ax.legend(fontsize=9)
    del data

    for j, (col, label, logy) in enumerate([("psep", "PSEP [Mm]", False),
                                             ("r_value", "R_VALUE [log10 Mx]", False),
                                             ("bmax", "max |Br| [G]", False),
                                             ("flux_imbalance", "flux imbalance |net|/TUF", False)]):
        ax = fig.add_subplot(gs[2, j])
        ax.scatter(ss.tuf, ss[col], s=10, color="C1", alpha=0.6, label=f"synthetic (n={len(ss)})")
        ax.scatter(rs.tuf, rs[col], s=120, color="k", marker="*", label="real")
        ax.set_xscale("log")
        ax.set_xlabel("TUF [Mx]"); ax.set_ylabel(label)
        if j == 0:
            ax.legend(fontsize=9)
    fig.suptitle("synthetic vs real SHARP Br records (hmi.sharp_cea_720s)", fontsize=14)

    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    if out_pdf is not None:
        with atomic_path(out_pdf, suffix=".pdf") as tmp:
            fig.savefig(tmp, format="pdf")
    plt.close(fig)
    summary = {}
    for name, df in (("real", rs), ("synthetic", ss)):
        summary[name] = {
            "n": int(len(df)),
            **{f"{c}_median": float(df[c].median()) for c in
               ("weak_sigma", "pixel_sigma", "ps_slope", "frac_gt_100", "frac_gt_1000", "bmax")},
            **{f"{c}_range": [float(df[c].min()), float(df[c].max())] for c in REALISM_TARGETS},
        }
    return summary
