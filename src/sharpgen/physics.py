"""Physical parameters of (real or generated) radial-field magnetograms, vectorised over a batch.

All functions take a batch ``br_gauss`` of shape (N, H, W) (or a single (H, W) map) of the radial
field B_r in Gauss, NaN allowed (NaN pixels contribute nothing), and a :class:`PixelScale` giving
the physical pixel size (scalars, or (N,) arrays for one scale per map). The work is done by
compiled (numba) kernels that fuse the passes over each map and loop over the maps of the batch
in compiled code: there is no Python loop over images or pixels in :func:`compute_parameters`.

Conventions
-----------
* Array axis 1 (rows) is ``y`` (solar north for SHARP CEA maps as read from FITS, row 0 = south),
  axis 2 (columns) is ``x`` (increasing westward, i.e. in the direction of solar rotation).
* Fluxes are in Mx, distances in Mm, ``r_paper`` in Mx, ``r_value`` in JSOC's R_VALUE units
  (log10 of a Gauss-weighted sum over ~2 arcsec pixels; JSOC's documentation labels it Mx).
* ``tnf`` is the MAGNITUDE of the negative flux (>= 0), so ``tuf = tpf + tnf`` and
  ``net_flux = tpf - tnf``.
* A map with no valid pixel (all NaN, or an empty mask) gets NaN for every parameter.

See docs/parameters.md for the definitions, their rationale and the validation numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

# the parameter registry (names, units, fit space, polarity partners) lives in
# sharpgen.parameters; PARAMETERS / PARAMETER_NAMES are re-exported here as the physics API
from sharpgen.parameters import (  # noqa: F401
    PARAMETER_NAMES,
    PARAMETERS,
    R_PAPER_DILATION,
    ROBUST_GRID_MM,
    ROBUST_SMOOTH_MM,
    ROBUST_THRESHOLD_GAUSS,
    STRONG_GAUSS,
    ParamInfo,
)
from sharpgen.rvalue import (  # noqa: F401  (R_VALUE: JSOC's algorithm, in its own module)
    R_VALUE_BIN_ARCSEC,
    R_VALUE_HWIDTH,
    R_VALUE_SIGMA,
    r_value,
    r_value_scale,
)

# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------
RSUN_REF_M = 696_000_000.0  #: JSOC RSUN_REF [m]
AU_M = 149_597_870_700.0  #: 1 astronomical unit [m]

_SIGMA_QUANTUM_PX = 0.05  #: smoothing sigmas are rounded to this [px] so batches share kernels


# --------------------------------------------------------------------------------------------
# pixel scale
# --------------------------------------------------------------------------------------------
def _hget(header: Any, key: str) -> float:
    """Numeric header value (astropy Header or mapping); raises KeyError/ValueError."""
    try:
        v = header[key]
    except (KeyError, IndexError) as exc:
        raise KeyError(f"header keyword {key} missing") from exc
    try:
        out = float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"header keyword {key}={v!r} is not a number") from exc
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"header keyword {key}={v!r} is not a positive finite number")
    return out


@dataclass(frozen=True)
class PixelScale:
    """Physical size of a map pixel.

    Each field is a float, or a float64 array of shape (N,) with one value per map of a batch.

    size_mm : pixel side [Mm] on the solar surface.
    area_cm2 : pixel area [cm^2] (JSOC's USFLUX convention).
    size_arcsec : pixel side as seen from Earth [arcsec] (sets R_VALUE's ~2 arcsec binning).
    """

    size_mm: float | np.ndarray
    area_cm2: float | np.ndarray
    size_arcsec: float | np.ndarray

    @classmethod
    def from_header(cls, header: Any, bin_factor: int = 1) -> "PixelScale":
        """JSOC's formula (mbobra/SHARPs, reproduces USFLUX to 1e-7):

        ``cdelt1_arcsec = degrees(atan(RSUN_REF * radians(CDELT1) / DSUN_OBS)) * 3600``,
        metres per arcsec ``RSUN_REF / RSUN_OBS``, area ``cdelt1_arcsec**2 * (m/arcsec)**2 * 1e4``.
        ``bin_factor`` b (maps block-averaged by b x b) multiplies the side by b, the area by b**2.
        """
        cdelt1 = _hget(header, "CDELT1")
        rsun_ref = _hget(header, "RSUN_REF")
        rsun_obs = _hget(header, "RSUN_OBS")
        dsun_obs = _hget(header, "DSUN_OBS")
        cdelt1_arcsec = math.degrees(math.atan(rsun_ref * math.radians(cdelt1) / dsun_obs)) * 3600.0
        m_per_arcsec = rsun_ref / rsun_obs
        b = float(bin_factor)
        return cls(
            size_mm=cdelt1_arcsec * m_per_arcsec * 1e-6 * b,
            area_cm2=cdelt1_arcsec**2 * m_per_arcsec**2 * 1e4 * b * b,
            size_arcsec=cdelt1_arcsec * b,
        )

    @classmethod
    def cea(cls, cdelt_deg: float = 0.03, bin_factor: int = 1) -> "PixelScale":
        """Nominal CEA pixel of ``cdelt_deg`` heliographic degrees seen from 1 AU (times ``bin_factor``)."""
        rsun_obs = math.degrees(math.asin(RSUN_REF_M / AU_M)) * 3600.0
        return cls.from_header(
            {"CDELT1": cdelt_deg, "RSUN_REF": RSUN_REF_M, "RSUN_OBS": rsun_obs, "DSUN_OBS": AU_M},
            bin_factor=bin_factor,
        )

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(size_mm, area_cm2, size_arcsec) broadcast to float64 arrays of shape (n,)."""
        out = []
        for name in ("size_mm", "area_cm2", "size_arcsec"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.ndim == 0:
                v = np.full(n, float(v))
            elif v.shape != (n,):
                raise ValueError(f"PixelScale.{name} has shape {v.shape}, expected () or ({n},)")
            if not np.all(np.isfinite(v) & (v > 0)):
                raise ValueError(f"PixelScale.{name} must be positive and finite")
            out.append(v)
        return out[0], out[1], out[2]

    def select(self, idx) -> "PixelScale":
        """Scale of the maps ``idx`` (index or index array) of a batch."""
        def pick(v):
            a = np.asarray(v, dtype=np.float64)
            return float(a) if a.ndim == 0 else a[idx]

        return PixelScale(pick(self.size_mm), pick(self.area_cm2), pick(self.size_arcsec))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_batch(br_gauss, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,H,W) view of the field (dtype kept) and the (N,H,W) bool mask or None; checks shapes."""
    b = np.asarray(br_gauss)
    if b.ndim == 2:
        b = b[None]
    if b.ndim != 3:
        raise ValueError(f"br_gauss must have shape (N,H,W) or (H,W), got {np.shape(br_gauss)}")
    if not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"br_gauss must be a real-valued array, got dtype {b.dtype}")
    if mask is None:
        return b, None
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.shape != b.shape:
        raise ValueError(f"mask shape {np.shape(mask)} does not match br_gauss shape {b.shape}")
    return b, m


def _as_batch(br_gauss, mask) -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W) float64 copy of the field and the (N,H,W) bool validity mask."""
    b = np.asarray(br_gauss, dtype=np.float64)
    if b.ndim == 2:
        b = b[None]
    if b.ndim != 3:
        raise ValueError(f"br_gauss must have shape (N,H,W) or (H,W), got {np.shape(br_gauss)}")
    valid = np.isfinite(b)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 2:
            m = m[None]
        if m.shape != b.shape:
            raise ValueError(f"mask shape {np.shape(mask)} does not match br_gauss shape {b.shape}")
        valid &= m
    return b, valid


def _quantize_sigma(sigma_px: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(sigma_px / _SIGMA_QUANTUM_PX) * _SIGMA_QUANTUM_PX, _SIGMA_QUANTUM_PX)


def robust_grid_factor(size_mm) -> np.ndarray:
    """Block size (px, >= 1) that brings pixels of ``size_mm`` to about ROBUST_GRID_MM."""
    return np.maximum(1, np.round(ROBUST_GRID_MM / np.asarray(size_mm, dtype=np.float64))).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _gauss_taps(sigma: float) -> np.ndarray:
    """Taps of scipy's ``gaussian_filter1d(sigma)`` (truncate 4, radius ``int(4 sigma + 0.5)``),
    read off scipy itself by filtering a unit impulse (exact: products with 1 and sums with 0)."""
    radius = int(4.0 * float(sigma) + 0.5)
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    taps = ndimage.gaussian_filter1d(delta, float(sigma), mode="constant", cval=0.0)
    taps.setflags(write=False)
    return taps


_NOUT = len(PARAMETER_NAMES)
_COL = {name: k for k, name in enumerate(PARAMETER_NAMES)}


# --------------------------------------------------------------------------------------------
# main entry point
# --------------------------------------------------------------------------------------------
def compute_parameters(br_gauss, scale: PixelScale, mask=None) -> pd.DataFrame:
    """Every parameter of :data:`PARAMETER_NAMES` for each map of a batch.

    Parameters
    ----------
    br_gauss : (N,H,W) or (H,W) array, radial field in Gauss; NaN pixels are ignored.
    scale : PixelScale with scalar or (N,) fields.
    mask : optional (N,H,W) / (H,W) bool; pixels outside it are treated like NaN for every
        parameter except ``r_value`` (JSOC computes R_VALUE on the whole map, unmasked).

    Returns
    -------
    DataFrame with N rows (index 0..N-1) and one float64 column per PARAMETER_NAMES entry, in
    the units of :data:`PARAMETERS`. Maps with no valid pixel get NaN everywhere.
    """
    b, m = _check_batch(br_gauss, mask)
    return pd.DataFrame(parameter_array(b, scale, m), columns=list(PARAMETER_NAMES))


_CHUNK_MAPS = 256  #: maps converted at a time when the input is not C-contiguous float64


def parameter_array(b: np.ndarray, scale: PixelScale, m: np.ndarray | None = None) -> np.ndarray:
    """:func:`compute_parameters` as an (N, len(PARAMETER_NAMES)) float64 array, for a checked
    (N,H,W) batch ``b`` and mask ``m`` (N,H,W) bool or None. A C-contiguous float64 batch
    without mask goes to the kernels as it is; anything else (float32, other dtypes, views, a
    mask) is converted ``_CHUNK_MAPS`` maps at a time, so memory stays bounded for any N."""
    from sharpgen import physics_kernels as pk
    from sharpgen.rvalue import flat_maps, r_value_flat

    pk._jit()

    n, h, w = b.shape
    size_mm, area, arcsec = scale.arrays(n)
    out = np.empty((n, _NOUT))
    if n == 0:
        return out
    fac = robust_grid_factor(size_mm)
    sig = _quantize_sigma(ROBUST_SMOOTH_MM / (size_mm * fac))
    uniq, gidx = np.unique(sig, return_inverse=True)
    tap_list = [_gauss_taps(float(s)) for s in uniq]
    width = max(len(t) for t in tap_list)
    taps = np.zeros((len(tap_list), width))
    for k, t in enumerate(tap_list):  # centred, zero-padded to a common odd length
        o = (width - len(t)) // 2
        taps[k, o : o + len(t)] = t
    tlen = np.array([len(t) for t in tap_list], dtype=np.int64)
    gidx = np.ascontiguousarray(gidx.ravel(), dtype=np.int64)
    nvalid = np.empty(n)
    no_mask = np.zeros((1, 1), dtype=bool)
    direct = b.dtype == np.float64 and b.flags.c_contiguous and m is None
    step = n if direct else _CHUNK_MAPS
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        b2 = flat_maps(b[sl])
        m2 = no_mask if m is None else np.ascontiguousarray(m[sl]).reshape(b2.shape)
        pk._k_parameters(b2, m2, m is not None, h, w, size_mm[sl], area[sl], fac[sl], gidx[sl], taps,
                      tlen, out[sl], nvalid[sl])
        out[sl, _COL["r_value"]] = r_value_flat(b2, h, w, arcsec[sl])  # unmasked, as JSOC
    out[nvalid == 0, _COL["r_value"]] = np.nan
    return out
