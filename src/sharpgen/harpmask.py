"""JSOC-like ``bitmap`` and ``conf_disambig`` segments for a Br map (the synthetic records).

JSOC's SHARP keywords are sums over a pixel mask built from two segments of each record:

* ``bitmap`` (from the HARP module, ``hmi.Mharp_720s``; values from the full-disk activity mask
  ``hmi.Marmask_720s``): 0 off the disk, **1** quiet and **2** active pixels *outside* the HARP,
  **33** quiet and **34** active pixels *inside* the HARP (values >= 33 are the HARP at that
  time; its boundary is smooth and regular). JSOC wiki ``BitMap_HARP``.
* ``conf_disambig``: 90 where the field is strong enough for the annealing disambiguation,
  60 / 50 in the weak field, 0 off the disk.

USFLUX, CMASK and the other vector keywords sum over ``conf_disambig >= 70 & bitmap >= 30``
(:func:`sharpgen.sharp_io.sharp_mask`); AREA is the HARP (``bitmap >= 33``) and AREA_ACR its active
part (``bitmap == 34``), in micro-hemispheres.

A synthetic record has only Br, so the two segments are emulated from it, with the thresholds
calibrated on the real records of ``../shared/data`` (tests/test_realism_population.py checks
them there):

* activity mask: Gaussian-smoothed (sigma 1 px) ``|Br| mu > 220 G`` (``mu |Br|`` stands for the
  line-of-sight field the activity mask is computed from) -- mean Jaccard index 0.60 with JSOC's
  active pixels (bitmap 2 | 34) over the 14 real Br records with a bitmap (0.45-0.73 each);
* HARP: the activity mask smoothed by a Gaussian of sigma 20 px (7.3 Mm) above 0.02 (a smooth,
  regular envelope; clusters under ~50 active pixels stay outside it, value 2) -- Jaccard 0.69
  with JSOC's HARP when built from JSOC's own active pixels;
* strong field (conf_disambig 90): Gaussian-smoothed (sigma 4 px) ``|Br| > 100 G`` -- on HARP 377
  the USFLUX over this proxy and JSOC's HARP is 1.01 x JSOC's USFLUX (Jaccard 0.67 with JSOC's
  conf_disambig = 90 pixels; the proxy's USFLUX moves by +-6 % over sigma 1-6 px and 50-150 G).

Arrays: (H, W), row 0 south, like the Br map. Units: Gauss, pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

ACTIVE_LOS_GAUSS = 220.0   #: activity mask: smoothed mu |Br| above this [G]
ACTIVE_SMOOTH_PX = 1.0     #: Gaussian sigma [px] of the activity mask's smoothing
HARP_SMOOTH_PX = 20.0      #: Gaussian sigma [px] of the HARP envelope of the active pixels
HARP_LEVEL = 0.02          #: HARP: smoothed activity fraction above this
STRONG_GAUSS = 100.0       #: conf_disambig 90: smoothed |Br| above this [G]
STRONG_SMOOTH_PX = 4.0     #: Gaussian sigma [px] of the strong-field smoothing

#: bitmap values (JSOC): quiet / active, outside / inside the HARP
QUIET_OUT, ACTIVE_OUT, QUIET_IN, ACTIVE_IN = 1, 2, 33, 34
#: conf_disambig values (JSOC): weak field, strong (annealed) field
CONF_WEAK, CONF_STRONG = 60, 90


def activity_mask(br: np.ndarray, mu: float = 1.0) -> np.ndarray:
    """Active pixels: Gaussian-smoothed ``|Br| * mu`` above :data:`ACTIVE_LOS_GAUSS` (bool)."""
    a = np.abs(np.nan_to_num(np.asarray(br, dtype=np.float64)))
    return ndimage.gaussian_filter(a, ACTIVE_SMOOTH_PX) * float(mu) > ACTIVE_LOS_GAUSS


def harp_region(active: np.ndarray) -> np.ndarray:
    """The HARP: a smooth envelope of the active pixels (bool; empty when nothing is active)."""
    env = ndimage.gaussian_filter(active.astype(np.float64), HARP_SMOOTH_PX, mode="constant", truncate=3.0)
    return env > HARP_LEVEL


def bitmap(br: np.ndarray, mu: float = 1.0) -> np.ndarray:
    """JSOC-like ``bitmap`` segment of a Br map seen at ``mu`` = cos(heliocentric angle):
    int16 (H, W) with the values 1, 2, 33, 34 (every synthetic pixel is on the disk)."""
    act = activity_mask(br, mu)
    harp = harp_region(act)
    out = np.where(harp, np.where(act, ACTIVE_IN, QUIET_IN), np.where(act, ACTIVE_OUT, QUIET_OUT))
    return out.astype(np.int16)


def conf_disambig(br: np.ndarray) -> np.ndarray:
    """JSOC-like ``conf_disambig`` segment: int16 (H, W), 90 in the strong field, 60 elsewhere."""
    a = np.abs(np.nan_to_num(np.asarray(br, dtype=np.float64)))
    strong = ndimage.gaussian_filter(a, STRONG_SMOOTH_PX) > STRONG_GAUSS
    return np.where(strong, CONF_STRONG, CONF_WEAK).astype(np.int16)


def vector_mask(bitmap_seg: np.ndarray, conf_seg: np.ndarray) -> np.ndarray:
    """JSOC's mask of the vector keywords: ``conf_disambig >= 70 & bitmap >= 30`` (the thresholds
    of :mod:`sharpgen.sharp_io`)."""
    from sharpgen.sharp_io import BITMAP_MIN, CONF_DISAMBIG_MIN

    with np.errstate(invalid="ignore"):
        return (np.asarray(conf_seg) >= CONF_DISAMBIG_MIN) & (np.asarray(bitmap_seg) >= BITMAP_MIN)


def micro_hemispheres(n_pixels, cdelt_deg: float = 0.03):
    """Area on the sphere [micro-hemispheres] of ``n_pixels`` CEA pixels of ``cdelt_deg``: a
    Lambert cylindrical equal-area pixel covers ``radians(cdelt)^2`` sr of the unit sphere, a
    hemisphere 2 pi sr."""
    return np.asarray(n_pixels, dtype=np.float64) * math.radians(cdelt_deg) ** 2 / (2.0 * math.pi) * 1e6
