"""R_VALUE (Schrijver 2007) exactly as JSOC's SHARP module computes the keyword.

JSOC: ``sharp_functions.c`` (``computeR``) with ``fsample`` / ``fresize`` of ``fresize.c``:

1. point-sample the map by ``scale = round(2 / cdelt1)`` (cdelt1 in arcsec; C rounding), i.e.
   take every ``scale``-th pixel, dropping a partial block at the end;
2. 150 G positive / negative masks, each smoothed by a centred 3x3 boxcar (``fresize`` writes 0
   on the 1-pixel border) and thresholded > 0: the dilated polarity masks;
3. their product (the polarity-inversion-line map) convolved with a normalised 41-tap Gaussian
   of sigma 10 / 2.3548 sub-sampled pixels (the map zero-padded by 20 pixels);
4. R = log10 of sum(weight * |B|) with |B| truncated to whole Gauss (C ``abs`` of an int cast);
   0 where the sum is < 1.

Vectorised over a batch (N, H, W): one pass per distinct sub-sampling step. Validated against
the header R_VALUE of every magnetogram record in ../shared/data (docs/parameters.md).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from sharpgen.parameters import STRONG_GAUSS

# R_VALUE as JSOC's SHARP module computes it (sharp_functions.c computeR, called from sharp.c)
R_VALUE_BIN_ARCSEC = 2.0  #: R_VALUE: sub-sample the map to about this pixel size [arcsec]
R_VALUE_BOX_HWIDTH = 1  #: R_VALUE: half-width of the boxcar smoothing each polarity mask (3x3)
R_VALUE_SIGMA = 10.0 / 2.3548  #: R_VALUE Gaussian sigma [sub-sampled px] (FWHM 10)
R_VALUE_HWIDTH = 20  #: R_VALUE Gaussian half-width: 41 taps, normalised; also the zero padding


def groups(values: np.ndarray) -> list[tuple[Any, np.ndarray | slice]]:
    """[(value, indices)] for each distinct row/value (a handful per batch, usually one).

    ``values`` is (N,) or (N, k); when all rows are equal (the usual case) the index is a slice.
    """
    values = np.asarray(values)
    if values.shape[0] == 0:
        return []
    if (values == values[0]).all():
        return [(values[0], slice(None))]
    uniq, inv = np.unique(values, axis=0, return_inverse=True)
    inv = inv.ravel()
    return [(u, np.flatnonzero(inv == k)) for k, u in enumerate(uniq)]


def r_value_scale(size_arcsec):
    """Sub-sampling step (px, >= 1) that brings pixels of ``size_arcsec`` to ~2 arcsec: JSOC's
    ``scale = round(2.0 / cdelt1)`` (C ``round``: half away from zero; cdelt1 in arcsec, see
    :meth:`PixelScale.from_header`); int for a scalar, else an int64 array."""
    x = R_VALUE_BIN_ARCSEC / np.asarray(size_arcsec, dtype=np.float64)
    s = np.maximum(1, np.floor(x + 0.5)).astype(np.int64)
    return int(s) if s.ndim == 0 else s


@functools.lru_cache(maxsize=1)
def _r_value_kernel() -> np.ndarray:
    """JSOC's R_VALUE Gaussian (fresize.c ``init_fresize_gaussian(sigma, 20, 1)``): the 41 taps
    ``exp(-x**2 / 2)``, ``x = (i - 20) / sigma``, normalised to sum 1 (JSOC computes them in
    float32; float64 here, a relative difference of ~1e-7)."""
    x = (np.arange(2 * R_VALUE_HWIDTH + 1) - R_VALUE_HWIDTH) / R_VALUE_SIGMA
    k = np.exp(-0.5 * x * x)
    k /= k.sum()
    k.setflags(write=False)
    return k


@functools.lru_cache(maxsize=64)
def _r_value_gauss_matrix(length: int) -> np.ndarray:
    """(length, length) matrix M with ``M @ x`` == JSOC's Gaussian step along one axis of x.

    computeR zero-pads the map by the kernel half-width (20) before the Gaussian and keeps the
    unpadded part, so output i is sum_r k[r - i + 20] x[r] over the map (zero outside): a
    symmetric band matrix.
    """
    k = _r_value_kernel()
    h = R_VALUE_HWIDTH
    i = np.arange(length)
    d = i[None, :] - i[:, None]
    m = np.where(np.abs(d) <= h, k[np.clip(d + h, 0, 2 * h)], 0.0)
    m.setflags(write=False)
    return m


def _r_value_subsample(b: np.ndarray, s: int) -> np.ndarray:
    """JSOC's sub-sampling (fresize.c ``fsample`` with offset 0): pixel (j*s, i*s) of each map
    for j < H//s, i < W//s (a partial block at the end is dropped; no averaging). A view."""
    n, h, w = b.shape
    return b[:, : (h // s) * s : s, : (w // s) * s : s]


def _r_value_box_any(m: np.ndarray) -> np.ndarray:
    """computeR's boxcar step on a (N,h,w) bool mask, as ``> 0`` of its output: True where the
    (2R+1)^2 box (R = R_VALUE_BOX_HWIDTH) centred on the pixel holds a True pixel. fresize only
    fills pixels whose whole box lies inside the map; the R-pixel border is its fill value 0."""
    n, h, w = m.shape
    r = R_VALUE_BOX_HWIDTH
    out = np.zeros(m.shape, dtype=bool)
    if h <= 2 * r or w <= 2 * r:
        return out
    cols = m[:, :, : w - 2 * r].copy()  # OR along x: columns r .. w-r-1
    for k in range(1, 2 * r + 1):
        cols |= m[:, :, k : w - 2 * r + k]
    box = cols[:, : h - 2 * r].copy()  # then along y: rows r .. h-r-1
    for k in range(1, 2 * r + 1):
        box |= cols[:, k : h - 2 * r + k]
    out[:, r : h - r, r : w - r] = box
    return out


def _r_value_batch(rim: np.ndarray) -> np.ndarray:
    """R_VALUE of a batch of already sub-sampled maps ``rim`` (N,h,w) in Gauss (NaN allowed).

    The steps of JSOC's computeR (sharp_functions.c):

    1. masks ``rim > 150`` and ``rim < -150`` (NaN in neither);
    2. each smoothed by a 3x3 boxcar (border pixels 0), polarity inversion line p1 where both
       smoothed masks are > 0 (:func:`_r_value_box_any`);
    3. p1 zero-padded by 20 and convolved with the 41-tap Gaussian: ``pmap = G_y p1 G_x^T``
       (:func:`_r_value_gauss_matrix`);
    4. ``sum(pmap * abs(rim))`` over non-NaN pixels, where C's integer ``abs`` truncates |B|
       to whole Gauss; log10 of the sum, 0 when the sum < 1.

    Since only the weighted sum is needed, sum(G_y p1 G_x^T * a) is evaluated as
    sum(p1 * G_y^T a G_x): one flat GEMM for ``a G_x`` and a dot product per p1 pixel (p1 is
    sparse), no second full filter pass.
    """
    n, ny1, nx1 = rim.shape
    with np.errstate(invalid="ignore"):
        p1 = _r_value_box_any(rim > STRONG_GAUSS)
        p1 &= _r_value_box_any(rim < -STRONG_GAUSS)
    s = np.zeros(n)
    pix = np.flatnonzero(p1)  # p1 pixels (flat nonzero of bools is the fast one)
    if pix.size:
        gy = _r_value_gauss_matrix(ny1)
        gx = _r_value_gauss_matrix(nx1)
        k, rem = np.divmod(pix, ny1 * nx1)
        i, j = np.divmod(rem, nx1)
        a = np.abs(rim)  # a new array: rim may be a view of the caller's maps
        np.trunc(a, out=a)  # C: abs(float) converts to int, i.e. truncates toward zero
        a[np.isnan(a)] = 0.0  # NaN pixels are skipped
        # sum over the p1 pixels (k,i,j) of (gy^T a gx)[k,i,j] = gy[:,i] . (a_k gx)[:,j]
        u = (a.reshape(n * ny1, nx1) @ gx).reshape(n, ny1, nx1)
        s += np.bincount(k, weights=np.einsum("pr,rp->p", u[k, :, j], gy[:, i]), minlength=n)
    with np.errstate(divide="ignore"):
        return np.where(s < 1.0, 0.0, np.log10(np.maximum(s, 1e-300)))


def r_value(br_gauss, scale) -> np.ndarray:
    """R_VALUE of each map as JSOC's SHARP module computes it (sharp_functions.c computeR);
    shape (N,). No mask (as JSOC: the whole map). JSOC applies it to the line-of-sight
    ``magnetogram`` segment; here it is applied to whatever field is given (Br in the pipeline).
    """
    b = np.asarray(br_gauss, dtype=np.float64)
    if b.ndim == 2:
        b = b[None]
    n = b.shape[0]
    _, _, arcsec = scale.arrays(n)
    return _r_value_arrays(b, arcsec)


def _r_value_arrays(b: np.ndarray, arcsec: np.ndarray) -> np.ndarray:
    """R_VALUE of (N,H,W) float maps with pixel sizes ``arcsec`` (N,): one pass per distinct
    sub-sampling step in the batch."""
    out = np.empty(b.shape[0])
    for s, idx in groups(r_value_scale(arcsec)):
        out[idx] = _r_value_batch(_r_value_subsample(b[idx], int(s)))
    return out
