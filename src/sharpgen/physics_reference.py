"""Straightforward per-image reference of :func:`sharpgen.physics.compute_parameters`.

Loops over images with plain numpy / scipy calls, written for clarity, not speed: the tests
check the vectorised engine against it and benchmarks/bench_physics.py times both. Its R_VALUE
is an independent implementation of JSOC's algorithm (scipy filters, no shared code with
:mod:`sharpgen.rvalue` beyond the constants).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from sharpgen.physics import (
    PARAMETER_NAMES,
    R_PAPER_DILATION,
    ROBUST_SMOOTH_MM,
    ROBUST_THRESHOLD_GAUSS,
    STRONG_GAUSS,
    PixelScale,
    _as_batch,
    _quantize_sigma,
    robust_grid_factor,
)
from sharpgen.rvalue import R_VALUE_BOX_HWIDTH, R_VALUE_HWIDTH, R_VALUE_SIGMA, r_value_scale


def _reference_r_value(b: np.ndarray, arcsec: float) -> float:
    """R_VALUE of ONE raw (H,W) map (unmasked, as JSOC), step by step as JSOC's computeR
    (sharp_functions.c) with scipy filters: independent of :mod:`sharpgen.rvalue`'s code."""
    s = r_value_scale(arcsec)
    ny1, nx1 = b.shape[0] // s, b.shape[1] // s
    rim = b[0 : ny1 * s : s, 0 : nx1 * s : s]  # point sampling, partial blocks dropped
    box = np.ones((2 * R_VALUE_BOX_HWIDTH + 1,) * 2) / (2 * R_VALUE_BOX_HWIDTH + 1) ** 2
    inner = np.zeros(rim.shape, dtype=bool)  # fresize fills the border it cannot cover with 0
    inner[R_VALUE_BOX_HWIDTH : ny1 - R_VALUE_BOX_HWIDTH, R_VALUE_BOX_HWIDTH : nx1 - R_VALUE_BOX_HWIDTH] = True
    with np.errstate(invalid="ignore"):
        p1p = ndimage.correlate((rim > STRONG_GAUSS).astype(float), box, mode="constant") * inner
        p1n = ndimage.correlate((rim < -STRONG_GAUSS).astype(float), box, mode="constant") * inner
    p1 = ((p1p > 0) & (p1n > 0)).astype(float)
    hw = R_VALUE_HWIDTH
    p1pad = np.pad(p1, hw)
    pmap = ndimage.gaussian_filter(p1pad, R_VALUE_SIGMA, mode="constant", truncate=(hw + 0.25) / R_VALUE_SIGMA)
    pmapn = pmap[hw : hw + ny1, hw : hw + nx1]
    total = float(np.nansum(pmapn * np.trunc(np.abs(rim)))) if rim.size else 0.0  # C's int abs()
    return 0.0 if total < 1.0 else math.log10(total)


def _reference_one(b: np.ndarray, valid: np.ndarray, size_mm: float, area: float, arcsec: float) -> dict:
    """All parameters of ONE (H,W) map, written plainly with per-image scipy calls."""
    if not valid.any():
        return {k: np.nan for k in PARAMETER_NAMES}
    bz = np.where(valid, b, 0.0)
    out: dict[str, float] = {}
    out["tpf"] = float(bz[bz > 0].sum() * area)
    out["tnf"] = float(-bz[bz < 0].sum() * area)
    out["tuf"] = out["tpf"] + out["tnf"]
    out["net_flux"] = out["tpf"] - out["tnf"]
    out["flux_imbalance"] = abs(out["net_flux"]) / out["tuf"] if out["tuf"] > 0 else np.nan
    strong = np.abs(bz) > STRONG_GAUSS
    out["usflux_strong"] = float(np.abs(bz[strong]).sum() * area)
    out["strong_frac"] = float(strong.sum() / valid.sum())
    out["bmax"] = float(np.abs(bz).max())

    def centroid(w):
        return ndimage.center_of_mass(w) if w.sum() > 0 else (np.nan, np.nan)

    py, px = centroid(np.where(bz > STRONG_GAUSS, bz, 0.0))
    ny_, nx_ = centroid(np.where(bz < -STRONG_GAUSS, -bz, 0.0))
    out["psep"] = float(np.hypot(py - ny_, px - nx_) * size_mm)

    # psep_robust: block-average to ~ROBUST_GRID_MM, smooth, largest cluster per polarity
    f = int(robust_grid_factor(size_mm))
    sig = float(_quantize_sigma(np.array([ROBUST_SMOOTH_MM / (size_mm * f)]))[0])
    hh, ww = -(-bz.shape[0] // f) * f, -(-bz.shape[1] // f) * f
    padded = np.zeros((hh, ww))
    padded[: bz.shape[0], : bz.shape[1]] = bz
    coarse = padded.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    sm = ndimage.gaussian_filter(coarse, sigma=sig, mode="constant", cval=0.0)
    cents = []
    for sign in (1.0, -1.0):
        weight = sign * sm
        lab, nlab = ndimage.label(weight > ROBUST_THRESHOLD_GAUSS, structure=np.ones((3, 3)))
        if nlab == 0:
            cents.append((np.nan, np.nan))
            continue
        fluxes = ndimage.sum_labels(weight, lab, index=np.arange(1, nlab + 1))
        best = int(np.argmax(fluxes)) + 1
        cy, cx = ndimage.center_of_mass(weight, lab, best)
        cents.append(((cy + 0.5) * f - 0.5, (cx + 0.5) * f - 0.5))
    (ryp, rxp), (ryn, rxn) = cents
    out["psep_robust"] = float(np.hypot(ryp - ryn, rxp - rxn) * size_mm)
    dx, dy = rxp - rxn, ryp - ryn
    if np.isnan(dx):
        out["tilt_deg"] = out["lead_sign"] = np.nan
    else:
        if dx < 0:
            dx, dy = -dx, -dy
        t = math.degrees(math.atan2(dy, dx))
        out["tilt_deg"] = t + 180.0 if t <= -90.0 else t
        out["lead_sign"] = float(np.sign(rxp - rxn))

    fp = np.ones((R_PAPER_DILATION, R_PAPER_DILATION), dtype=bool)
    both = ndimage.binary_dilation(bz > STRONG_GAUSS, structure=fp) & ndimage.binary_dilation(
        bz < -STRONG_GAUSS, structure=fp
    )
    out["r_paper"] = float(np.abs(bz[both]).sum() * area)

    out["r_value"] = _reference_r_value(b, arcsec)
    return out


def compute_parameters_reference(br_gauss, scale: PixelScale, mask=None) -> pd.DataFrame:
    """Same result as :func:`compute_parameters`, computed one image at a time (slow reference)."""
    b, valid = _as_batch(br_gauss, mask)
    size_mm, area, arcsec = scale.arrays(b.shape[0])
    rows = [
        _reference_one(b[i], valid[i], size_mm[i], area[i], arcsec[i]) for i in range(b.shape[0])
    ]
    # r_value is unmasked (JSOC): recompute it on the raw map when a mask was given
    if mask is not None:
        for i, row in enumerate(rows):
            if valid[i].any():
                row["r_value"] = _reference_r_value(b[i], arcsec[i])
    return pd.DataFrame(rows, columns=list(PARAMETER_NAMES))
