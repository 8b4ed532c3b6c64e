"""Physical parameters of (real or generated) radial-field magnetograms, vectorised over a batch.

All functions take a batch ``br_gauss`` of shape (N, H, W) (or a single (H, W) map) of the radial
field B_r in Gauss, NaN allowed (NaN pixels contribute nothing), and a :class:`PixelScale` giving
the physical pixel size (scalars, or (N,) arrays for one scale per map). The heavy lifting is done
with whole-batch numpy / ``scipy.ndimage`` calls whose filters have size 1 along the batch axis, so
there is no Python loop over images in :func:`compute_parameters` (only over the few distinct
pixel scales in a batch, for the operations whose kernel size depends on the scale).

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
import threading
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
    _r_value_arrays,
    groups as _groups,
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
_LABEL_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_LABEL_STRUCTURE[1] = True  # 8-connectivity inside a map, never across maps of the batch
_LABEL_STRUCTURE_2D = np.ones((3, 3), dtype=bool)  # 8-connectivity (maps stacked with gaps)


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


def _dilate_square(m: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation of a (N,H,W) bool batch by a centred k x k square (k odd), False outside.

    Same result as ``ndimage.binary_dilation(m, np.ones((1,k,k)))`` but separable, and along
    each axis by window doubling: OR-ing windows of width 1, 2, 4, ... covers width k with
    O(log k) in-place shifted ORs instead of k*k tests per pixel.
    """
    r = k // 2
    out = m
    for axis in (1, 2):
        length = out.shape[axis]
        shape = list(out.shape)
        shape[axis] = length + 2 * r
        cur = np.zeros(shape, dtype=bool)  # zero-padded copy: cur[j] covers [j, j + width)
        sl = [slice(None)] * 3
        sl[axis] = slice(r, r + length)
        cur[tuple(sl)] = out
        total = length + 2 * r
        width = 1
        while width < k:
            step = min(width, k - width)
            a = [slice(None)] * 3
            bsl = [slice(None)] * 3
            a[axis] = slice(0, total - step)
            bsl[axis] = slice(step, total)
            np.bitwise_or(cur[tuple(a)], cur[tuple(bsl)], out=cur[tuple(a)])
            width += step
        sl[axis] = slice(0, length)
        out = cur[tuple(sl)]  # out[i] = any(m[i - r .. i + r])
    return out


def _block_mean(b: np.ndarray, s: int) -> np.ndarray:
    """skimage-style block_reduce(mean) of (N,H,W) by s x s: zero-pad the end, NaN propagates."""
    if s == 1:
        return b
    n, h, w = b.shape
    hh, ww = -(-h // s) * s, -(-w // s) * s
    if (hh, ww) != (h, w):
        b = np.pad(b, ((0, 0), (0, hh - h), (0, ww - w)), mode="constant", constant_values=0.0)
    t = b[:, :, 0::s].copy()
    for k in range(1, s):
        t += b[:, :, k::s]
    out = t[:, 0::s].copy()
    for k in range(1, s):
        out += t[:, k::s]
    out *= 1.0 / (s * s)
    return out  # strided adds: ~15x faster than reshape(...).mean(axis=(2, 4)) for small s


@functools.lru_cache(maxsize=128)
def _filter_matrix(length: int, kind: str, param: float, mode: str) -> np.ndarray:
    """(length, length) matrix M with ``M @ x`` == the 1-D scipy.ndimage filter of x.

    Only kind "gauss" (gaussian_filter1d with sigma=param, boundary ``mode``, cval 0). Built by
    filtering the identity with scipy itself, so kernel and boundary handling are scipy's exactly.
    """
    if kind != "gauss":  # pragma: no cover - internal
        raise ValueError(kind)
    m = ndimage.gaussian_filter1d(np.eye(length), float(param), axis=0, mode=mode, cval=0.0)
    m.setflags(write=False)
    return m


def _separable(x: np.ndarray, my: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """Apply a separable linear filter to every map of (N,H,W): my @ x @ mx.T (BLAS matmuls)."""
    return np.matmul(np.matmul(my, x), mx.T)


@functools.lru_cache(maxsize=128)
def _band_blocks(length: int, kind: str, param: float, mode: str) -> tuple[tuple[int, int, int, int], ...]:
    """Row blocks (r0, r1, c0, c1) of ``_filter_matrix(length, kind, param, mode)``: rows r0:r1
    are zero outside columns c0:c1.

    Banded filter matrices (short Gaussian kernels) are applied block by block so that BLAS
    skips the zero parts; a single full block when banding would not save much.
    """
    n = length
    nz = _filter_matrix(length, kind, param, mode) != 0
    best = ((0, n, 0, n),)
    best_cost = n * n
    for nb in (2, 4, 8):
        if n % nb or n // nb < 8:
            continue
        blocks = []
        for r0 in range(0, n, n // nb):
            r1 = r0 + n // nb
            cols = np.flatnonzero(nz[r0:r1].any(axis=0))
            c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
            blocks.append((r0, r1, c0, c1))
        cost = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in blocks) + 64 * nb  # + call overhead
        if cost < 0.8 * best_cost:
            best, best_cost = tuple(blocks), cost
    return best


def _separable_banded(x: np.ndarray, kind: str, param: float, mode: str) -> np.ndarray:
    """Same as ``_separable(x, my, mx)`` with my, mx = ``_filter_matrix(H or W, kind, param,
    mode)``: the zero blocks of the banded matrices are skipped (one BLAS call per band block,
    over the whole batch; the right factor as one flat GEMM)."""
    n, h, w = x.shape
    x = np.ascontiguousarray(x)
    my = _filter_matrix(h, kind, param, mode)
    mx = _filter_matrix(w, kind, param, mode)
    bx = _band_blocks(w, kind, param, mode)
    y = np.empty((n * h, w))
    xf = x.reshape(n * h, w)
    for r0, r1, c0, c1 in bx:
        np.matmul(xf[:, c0:c1], mx[r0:r1, c0:c1].T, out=y[:, r0:r1])
    y = y.reshape(n, h, w)
    by = _band_blocks(h, kind, param, mode)
    out = np.empty((n, h, w))
    for r0, r1, c0, c1 in by:
        np.matmul(my[r0:r1, c0:c1], y[:, c0:c1], out=out[:, r0:r1])
    return out


def _dominant_clusters(bz: np.ndarray, size_mm: np.ndarray, coarse_cache: dict | None = None):
    """Dominant positive / negative flux cluster centroids of each map.

    The map is block-averaged to ~ROBUST_GRID_MM pixels, smoothed by a Gaussian of sigma
    ROBUST_SMOOTH_MM (zero outside the map), and thresholded at +-ROBUST_THRESHOLD_GAUSS; the
    8-connected cluster with the largest summed |smoothed B| is each polarity's dominant one.

    bz : (N,H,W) field in G with invalid pixels set to 0; size_mm : (N,) pixel side [Mm].
    coarse_cache : optional {block size: _block_mean(bz, block size)} already computed.
    Returns ((yp, xp), (yn, xn)) centroid arrays of shape (N,) in px, NaN where no cluster.
    """
    n = bz.shape[0]
    f = robust_grid_factor(size_mm)
    sig = _quantize_sigma(ROBUST_SMOOTH_MM / (size_mm * f))
    cents = np.full((2, 2, n), np.nan)  # (polarity, y/x, map)
    for (fk, sk), idx in _groups(np.stack([f, sig], axis=1)):
        fk = int(fk)
        if coarse_cache is not None and fk in coarse_cache and isinstance(idx, slice):
            coarse = coarse_cache[fk]
        else:
            coarse = _block_mean(bz[idx], fk)
        sm = _separable_banded(coarse, "gauss", float(sk), "constant")
        (yp, xp), (yn, xn) = _cluster_centroids(sm)
        for j, (cy, cx) in enumerate(((yp, xp), (yn, xn))):
            cents[j, 0, idx] = (cy + 0.5) * fk - 0.5  # coarse -> original pixel coordinates
            cents[j, 1, idx] = (cx + 0.5) * fk - 0.5
    return (cents[0, 0], cents[0, 1]), (cents[1, 0], cents[1, 1])


def robust_grid_factor(size_mm) -> np.ndarray:
    """Block size (px, >= 1) that brings pixels of ``size_mm`` to about ROBUST_GRID_MM."""
    return np.maximum(1, np.round(ROBUST_GRID_MM / np.asarray(size_mm, dtype=np.float64))).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _flat_coords(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map index int64, row float64, column float64) of each pixel of a flattened (n,h,w) array."""
    img = np.repeat(np.arange(n, dtype=np.int64), h * w)
    yy = np.tile(np.repeat(np.arange(h, dtype=np.float64), w), n)
    xx = np.tile(np.arange(w, dtype=np.float64), n * h)
    for v in (img, yy, xx):
        v.setflags(write=False)
    return img, yy, xx


def _cluster_centroids(sm: np.ndarray):
    """Centroids (px) of the largest-flux cluster of each polarity in smoothed maps (N,h,w)."""
    n, h, w = sm.shape
    imgc, yc, xc = _flat_coords(n, h, w)
    smf = sm.reshape(-1)
    out = []
    for sign in (1.0, -1.0):
        sel = sm > ROBUST_THRESHOLD_GAUSS if sign > 0 else sm < -ROBUST_THRESHOLD_GAUSS
        # 2-D labelling of the maps stacked vertically with an empty row between consecutive
        # maps (8-connectivity never links two maps); faster than a 3-D structure
        selp = np.zeros((n, h + 1, w), dtype=bool)
        selp[:, :h] = sel
        labels, nlab = ndimage.label(selp.reshape(n * (h + 1), w), structure=_LABEL_STRUCTURE_2D)
        cy = np.full(n, np.nan)
        cx = np.full(n, np.nan)
        if nlab:
            pix = np.flatnonzero(sel)  # labelled pixels (nonzero of bools is faster than of ints)
            lab = labels.reshape(n, h + 1, w)[:, :h][sel]  # same (C) order as pix
            wt = smf[pix]
            if sign < 0:
                wt = -wt
            flux = np.bincount(lab, weights=wt, minlength=nlab + 1)
            sy = np.bincount(lab, weights=wt * yc[pix], minlength=nlab + 1)
            sx = np.bincount(lab, weights=wt * xc[pix], minlength=nlab + 1)
            img = np.zeros(nlab + 1, dtype=np.int64)
            img[lab] = imgc[pix]
            labs = np.arange(1, nlab + 1)
            order = np.lexsort((-flux[labs], img[labs]))
            best_lab = labs[order]
            img_sorted = img[best_lab]
            first = np.ones(img_sorted.shape, dtype=bool)
            first[1:] = img_sorted[1:] != img_sorted[:-1]
            images, best = img_sorted[first], best_lab[first]
            cy[images] = sy[best] / flux[best]
            cx[images] = sx[best] / flux[best]
        out.append((cy, cx))
    return out[0], out[1]


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
    with _one_blas_thread():
        return _compute_parameters(b, m, scale)


_BLAS_CONTROLLER: list = []


def _one_blas_thread():
    """Context limiting BLAS to one thread: the matrix products here are small (a block of maps
    times a 64x64 filter), so BLAS threads only add synchronisation; on a loaded machine they
    made the engine several times slower (wall time). The threadpoolctl controller is created
    once (a fresh ``threadpool_limits`` costs ~0.5 ms, ``controller.limit`` a few us)."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER.append(ThreadpoolController())
        except Exception:  # pragma: no cover - threadpoolctl missing: leave BLAS as it is
            _BLAS_CONTROLLER.append(None)
    ctl = _BLAS_CONTROLLER[0]
    if ctl is None:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")


def _compute_parameters(b: np.ndarray, m: np.ndarray | None, scale: PixelScale) -> pd.DataFrame:
    """Body of :func:`compute_parameters` on a checked (N,H,W) batch and (N,H,W) mask or None."""
    n, h, w = b.shape
    size_mm, area, arcsec = scale.arrays(n)
    cols: dict[str, np.ndarray] = {k: np.empty(n) for k in PARAMETER_NAMES}
    nvalid = np.empty(n, dtype=np.int64)

    # full-resolution parameters in cache-sized blocks of maps (a loop over blocks of ~8 128x128
    # maps, not over images); each block is converted to float64 on its own, so memory stays
    # small for any N
    allvalid = np.empty(n, dtype=bool)
    step = max(1, _CHUNK_PIXELS // (h * w))
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        bb, bz, valid = _valid_block(b, m, sl)
        if valid is None:
            nvalid[sl] = h * w
            allvalid[sl] = True
        else:
            nvalid[sl] = np.count_nonzero(valid, axis=(1, 2))
            allvalid[sl] = nvalid[sl] == h * w
        for k, v in _full_res_block(bz, nvalid[sl], size_mm[sl], area[sl]).items():
            cols[k][sl] = v

    # coarse-grid parameters: R_VALUE (unmasked) and dominant clusters (psep_robust, tilt), in
    # larger blocks (their arrays are block-averaged, and per-call costs dominate); when every
    # pixel of a block is valid both start from the same block mean (computed once)
    step = max(1, _COARSE_CHUNK_PIXELS // (h * w))
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        bb, bz, _ = _valid_block(b, m, sl, known_valid=bool(allvalid[sl].all()))
        cache: dict = {}
        cols["r_value"][sl] = _r_value_arrays(bb, arcsec[sl])
        (ryp, rxp), (ryn, rxn) = _dominant_clusters(bz, size_mm[sl], cache if bz is bb else None)
        cols["psep_robust"][sl] = np.hypot(ryp - ryn, rxp - rxn) * size_mm[sl]
        dx, dy = rxp - rxn, ryp - ryn  # negative -> positive
        flip = dx < 0
        tilt = np.degrees(np.arctan2(np.where(flip, -dy, dy), np.where(flip, -dx, dx)))
        cols["tilt_deg"][sl] = np.where(tilt <= -90.0, tilt + 180.0, tilt)
        cols["lead_sign"][sl] = np.sign(dx)

    empty = nvalid == 0
    if empty.any():
        for k in cols:
            cols[k][empty] = np.nan
    return pd.DataFrame(cols, columns=list(PARAMETER_NAMES))


_CHUNK_PIXELS = 1 << 17  #: maps are processed in blocks of about this many pixels (cache-sized)
_COARSE_CHUNK_PIXELS = 1 << 19  #: blocks (in full-resolution pixels) of the coarse-grid stage


def _valid_block(b: np.ndarray, m: np.ndarray | None, sl: slice, known_valid: bool = False):
    """(float64 field, field with invalid pixels set to 0, validity mask or None when every
    pixel is valid) of the maps ``sl`` of a batch; ``known_valid`` skips the NaN scan."""
    bb = np.asarray(b[sl], dtype=np.float64)
    if known_valid:
        return bb, bb, None
    valid = np.isfinite(bb)
    if m is not None:
        valid &= m[sl]
    if valid.all():
        return bb, bb, None
    return bb, np.where(valid, bb, 0.0), valid  # invalid pixels carry no flux


_WORK = threading.local()


def _workspace(key: tuple, count: int) -> list[np.ndarray]:
    """``count`` uninitialised arrays of (dtype, shape) ``key``, reused between calls of the same
    thread (fresh multi-MB temporaries would cost page faults on every block)."""
    store = getattr(_WORK, "store", None)
    if store is None:
        store = _WORK.store = {}
    bufs = store.get(key)
    if bufs is None or len(bufs) < count:
        if len(store) > 8:  # a few shapes per run at most; drop stale ones
            store.clear()
        bufs = [np.empty(key[1], dtype=key[0]) for _ in range(count)]
        store[key] = bufs
    return bufs[:count]


@functools.lru_cache(maxsize=16)
def _moment_vectors(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ones(h*w), ones(w), x index of each flattened pixel (h*w), arange(h)) as float64."""
    out = (np.ones(h * w), np.ones(w), np.tile(np.arange(w, dtype=np.float64), h), np.arange(h, dtype=np.float64))
    for v in out:
        v.setflags(write=False)
    return out


def _count_true(m: np.ndarray) -> np.ndarray:
    """Number of True pixels of each map of a contiguous (n,H,W) bool array, shape (n,)."""
    n = m.shape[0]
    if m.flags.c_contiguous and (m[0].size % 8 == 0) and hasattr(np, "bitwise_count"):  # numpy>=2
        # bools are bytes 0/1: popcount of 8 of them at a time
        return np.bitwise_count(m.reshape(-1).view(np.uint64)).reshape(n, -1).sum(axis=1, dtype=np.int64)
    return np.count_nonzero(m, axis=(1, 2))


def _full_res_block(bz, nvalid, size_mm, area) -> dict[str, np.ndarray]:
    """Flux sums, psep, r_paper, bmax of a block of maps bz (n,H,W) [G], invalid pixels = 0.

    Sums over a map are BLAS matrix-vector products with a ones / coordinate vector (one
    memory pass each, about twice as fast as ufunc reductions over two axes).
    """
    n, h, w = bz.shape
    ones_hw, ones_w, x_hw, iy = _moment_vectors(h, w)
    absb, tmp = _workspace(("f8", bz.shape), 2)
    pos, neg = _workspace(("b1", bz.shape), 2)
    bzf = np.ascontiguousarray(bz).reshape(n, h * w)
    np.abs(bz, out=absb)
    absf = absb.reshape(n, h * w)
    tmpf = tmp.reshape(n, h * w)
    net = bzf @ ones_hw
    usum = absf @ ones_hw
    np.greater(bz, STRONG_GAUSS, out=pos)
    np.less(bz, -STRONG_GAUSS, out=neg)

    # paper's PSEP: flux-weighted centroids of the 150 G polarities, from the row sums (n,H) and
    # the x-weighted sum of the masked field (no per-polarity copy is kept)
    np.multiply(bz, pos, out=tmp)  # branch-free masking (sum(where=) is slow on ragged masks)
    rows_p = (tmp.reshape(n * h, w) @ ones_w).reshape(n, h)
    sx_p = tmpf @ x_hw
    np.multiply(bz, neg, out=tmp)
    rows_n = -(tmp.reshape(n * h, w) @ ones_w).reshape(n, h)
    sx_n = -(tmpf @ x_hw)
    fp = rows_p.sum(axis=1)
    fn = rows_n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        imbalance = np.abs(net) / usum
        strong_frac = (_count_true(pos) + _count_true(neg)) / nvalid
        py, px = (rows_p @ iy) / fp, sx_p / fp
        ny_, nx_ = (rows_n @ iy) / fn, sx_n / fn

    # paper's R: overlap of the 7x7-dilated polarity masks
    both = _dilate_square(pos, R_PAPER_DILATION)
    both &= _dilate_square(neg, R_PAPER_DILATION)

    return {
        "tuf": usum * area,
        "tpf": 0.5 * (usum + net) * area,
        "tnf": 0.5 * (usum - net) * area,
        "net_flux": net * area,
        "flux_imbalance": imbalance,
        "usflux_strong": (fp + fn) * area,
        "strong_frac": strong_frac,
        "bmax": absf.max(axis=1),
        "psep": np.hypot(py - ny_, px - nx_) * size_mm,
        "r_paper": (np.multiply(absb, both, out=tmp).reshape(n, h * w) @ ones_hw) * area,
    }
