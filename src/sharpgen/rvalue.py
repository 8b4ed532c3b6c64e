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

Computed by a compiled (numba) kernel, one map at a time with no Python in the loop over maps
(:func:`r_value_flat`). Validated against the header R_VALUE of every magnetogram record in
../shared/data (docs/parameters.md).

The kernels are plain functions compiled on first use (:func:`_jit`; numba caches the machine
code on disk, next to this file). They call only kernels of this module: numba's cache does not
notice when a kernel of another module that it calls changes.
"""

from __future__ import annotations

import functools
import sys
import threading
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


def _r_value_subsample(b: np.ndarray, s: int) -> np.ndarray:
    """JSOC's sub-sampling (fresize.c ``fsample`` with offset 0): pixel (j*s, i*s) of each map
    for j < H//s, i < W//s (a partial block at the end is dropped; no averaging). A view; the
    kernel samples the same pixels itself (:func:`_r_value_sampled` exposes what it samples)."""
    n, h, w = b.shape
    return b[:, : (h // s) * s : s, : (w // s) * s : s]


# --------------------------------------------------------------------------------------------
# compiled kernels (numba; compiled on first use by _jit). Polarity masks are rows of bits
# (bit x of uint64 word x >> 6), so the 3x3 boxcar is a few shifted ORs per 64 pixels.
# --------------------------------------------------------------------------------------------
_BYTES_TO_BITS = np.uint64(0x0102040810204080)  # 8 bytes of 0/1 -> 8 bits (one multiplication)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_TABLE = np.zeros(64, dtype=np.int64)  # index of the set bit of a power of two
for _i in range(64):
    _DEBRUIJN_TABLE[(((1 << _i) * 0x03F79D71B4CB0A89) & 0xFFFFFFFFFFFFFFFF) >> 58] = _i
del _i


def _k_pack_bits(row8, words):
    """Bits of the 0/1 bytes ``row8`` -> uint64 ``words`` (byte i -> bit i & 63 of word i >> 6):
    8 bytes at a time, gathered into 8 bits by one multiplication (little-endian)."""
    r = row8.view(np.uint64)
    s = np.uint64(56)
    for k in range(words.shape[0]):
        g = r[8 * k : 8 * k + 8]  # (a slice: constant indices, no wrap-around tests)
        words[k] = (((g[0] * _BYTES_TO_BITS) >> s)
                    | (((g[1] * _BYTES_TO_BITS) >> s) << np.uint64(8))
                    | (((g[2] * _BYTES_TO_BITS) >> s) << np.uint64(16))
                    | (((g[3] * _BYTES_TO_BITS) >> s) << np.uint64(24))
                    | (((g[4] * _BYTES_TO_BITS) >> s) << np.uint64(32))
                    | (((g[5] * _BYTES_TO_BITS) >> s) << np.uint64(40))
                    | (((g[6] * _BYTES_TO_BITS) >> s) << np.uint64(48))
                    | (((g[7] * _BYTES_TO_BITS) >> s) << np.uint64(56)))


def _k_box_row(src, so, dst, do, nw, lastmask):
    """Bit row ``src[so:so+nw]`` OR-ed with itself shifted by one pixel either way (zero outside
    the map; bits beyond the map cleared with ``lastmask``) -> ``dst[do:do+nw]``."""
    z = np.uint64(0)
    one = np.uint64(1)
    top = np.uint64(63)
    for k in range(nw):
        wv = src[so + k]
        lo = src[so + k - 1] if k > 0 else z
        hi = src[so + k + 1] if k + 1 < nw else z
        dst[do + k] = wv | (wv << one) | (lo >> top) | (wv >> one) | (hi << top)
    dst[do + nw - 1] &= lastmask


def _k_sample(bi, h, w, s, a, bits, rbytes):
    """Point-sample the flat map ``bi`` (h*w) with step s: ``a`` ((ny1+40)*nx1; row j at offset
    (j+20)*nx1) = C's int abs() of the samples as float (NaN -> 0: skipped), ``bits`` = rows
    of the > +150 G (rows 0..ny1-1) and < -150 G (rows ny1..2*ny1-1) masks (via the bytes
    ``rbytes``, 64*nw per row, 0 beyond the map). Returns (ny1, nx1, nw, any pixel of both)."""
    ny1 = h // s
    nx1 = w // s
    nw = (nx1 + 63) // 64
    npos = 0
    nneg = 0
    for j in range(ny1):
        brow = bi[j * s * w : j * s * w + nx1 * s : s]  # (slices: no wrap-around index tests)
        ao = (j + R_VALUE_HWIDTH) * nx1  # 20 zero rows above (see _k_r_value_one)
        arow = a[ao : ao + nx1]
        prow = rbytes[j * 64 * nw : j * 64 * nw + nx1]
        nrow = rbytes[(ny1 + j) * 64 * nw : (ny1 + j) * 64 * nw + nx1]
        for i in range(nx1):
            v = np.float64(brow[i])
            av = abs(v)
            arow[i] = np.trunc(av) if av == av else 0.0
            p = v > STRONG_GAUSS
            q = v < -STRONG_GAUSS
            prow[i] = p
            nrow[i] = q
            npos += p
            nneg += q
    _k_pack_bits(rbytes[: 2 * ny1 * 64 * nw], bits[: 2 * ny1 * nw])
    return ny1, nx1, nw, npos > 0 and nneg > 0


def _k_p1_rows(bits, dil, ny1, nx1, nw):
    """Box-dilate both polarity masks (``bits`` -> ``dil``, same layout): afterwards the
    inversion line of row j is :func:`_k_p1_row`."""
    rem = nx1 - (nw - 1) * 64
    lastmask = np.uint64(0xFFFFFFFFFFFFFFFF) if rem == 64 else (np.uint64(1) << np.uint64(rem)) - np.uint64(1)
    for j in range(2 * ny1):
        _k_box_row(bits, j * nw, dil, j * nw, nw, lastmask)
    return lastmask >> np.uint64(1)  # mask of the last word without the map's last column


def _k_p1_row(dil, j, ny1, nw, innerlast, p1w):
    """Inversion line of row j (1 <= j <= ny1-2) into ``p1w``: pixels whose 3x3 box holds a
    pixel of each polarity, the first and last column excluded (fresize's border of 0).
    Returns whether any."""
    anyrow = False
    pos = (j - 1) * nw
    neg = (ny1 + j - 1) * nw
    for k in range(nw):
        v = (dil[pos + k] | dil[pos + nw + k] | dil[pos + 2 * nw + k]) & (
            dil[neg + k] | dil[neg + nw + k] | dil[neg + 2 * nw + k])
        if k == 0:
            v &= ~np.uint64(1)
        if k == nw - 1:
            v &= innerlast
        p1w[k] = v
        anyrow |= v != 0
    return anyrow


def _k_r_value_one(bi, h, w, s, rk, a, bits, dil, p1w, vpad, rbytes):
    """R_VALUE of one flat (h*w) map with sub-sampling step s (computeR, steps in the module
    docstring). sum(G_y p1 G_x^T * a) is evaluated row by row of p1 as sum over the p1 pixels
    (j, i) of sum_c k[c-i] v_j[c], with v_j = the vertical Gaussian of a at row j, computed only
    over the columns within 20 of the row's p1 pixels. ``a`` holds the sampled map between 20
    rows of zeros above and below, ``vpad`` v_j between 20 zeros on each side (the zero padding
    of computeR), so both sums run over all 41 taps without bounds tests."""
    hw = R_VALUE_HWIDTH
    ny1, nx1, nw, both = _k_sample(bi, h, w, s, a, bits, rbytes)
    if ny1 < 3 or nx1 < 3 or not both:
        return 0.0
    for c in range(hw * nx1):  # zero rows around the map
        a[c] = 0.0
        a[(ny1 + hw) * nx1 + c] = 0.0
    for c in range(hw):
        vpad[c] = 0.0
        vpad[nx1 + hw + c] = 0.0
    innerlast = _k_p1_rows(bits, dil, ny1, nx1, nw)
    total = 0.0
    for j in range(1, ny1 - 1):
        if not _k_p1_row(dil, j, ny1, nw, innerlast, p1w):
            continue
        imin = nx1
        imax = -1
        for k in range(nw):
            v = p1w[k]
            while v:
                low = v & (~v + np.uint64(1))
                i = k * 64 + _DEBRUIJN_TABLE[(low * _DEBRUIJN) >> np.uint64(58)]
                v ^= low
                imin = min(imin, i)
                imax = max(imax, i)
        c0 = max(0, imin - hw)
        c1 = min(nx1, imax + hw + 1)
        oj = (j + hw) * nx1 + c0  # row j of the sampled map in the padded layout, from c0
        nc = c1 - c0
        vj = vpad[hw + c0 : hw + c1]
        aj = a[oj : oj + nc]
        w0 = rk[hw]
        for c in range(nc):
            vj[c] = w0 * aj[c]
        for d in range(1, hw + 1):
            wd = rk[hw + d]
            aa = a[oj - d * nx1 : oj - d * nx1 + nc]
            ab = a[oj + d * nx1 : oj + d * nx1 + nc]
            for c in range(nc):
                vj[c] += (aa[c] + ab[c]) * wd
        for k in range(nw):
            v = p1w[k]
            while v:
                low = v & (~v + np.uint64(1))
                i = k * 64 + _DEBRUIJN_TABLE[(low * _DEBRUIJN) >> np.uint64(58)]
                v ^= low
                t = 0.0
                vi = vpad[i : i + 2 * hw + 1]  # v_j[i - 20 .. i + 20]
                for c in range(2 * hw + 1):
                    t += rk[c] * vi[c]
                total += t
    if total < 1.0:
        return 0.0
    return np.log10(total)


def _k_r_value(b2, h, w, steps, rk, out):
    """R_VALUE of each flat map of ``b2`` (N, h*w) with its sub-sampling step -> out (N,)."""
    n = b2.shape[0]
    smin = max(1, steps.min()) if n else 1
    ny1 = max(1, h // smin)
    nx1 = max(1, w // smin)
    nw = (nx1 + 63) // 64
    a = np.empty((ny1 + 2 * R_VALUE_HWIDTH) * nx1)
    bits = np.empty(2 * ny1 * nw, dtype=np.uint64)
    dil = np.empty(2 * ny1 * nw, dtype=np.uint64)
    p1w = np.empty(nw, dtype=np.uint64)
    vpad = np.empty(nx1 + 2 * R_VALUE_HWIDTH)
    rbytes = np.zeros(2 * ny1 * 64 * nw, dtype=np.uint8)  # bytes beyond the map stay 0
    for i in range(n):
        if i > 0 and steps[i] != steps[i - 1]:  # another row layout: clear stale bytes
            rbytes[:] = 0
        out[i] = _k_r_value_one(b2[i], h, w, steps[i], rk, a, bits, dil, p1w, vpad, rbytes)


def _k_sampled(b2, h, w, s, a_out, p1_out):
    """Test hook: the kernel's own sampled |B| (``a_out`` (N, (ny1+40)*nx1), padded layout of
    :func:`_k_sample`) and inversion line (``p1_out`` (N, ny1*nx1) uint8) of each flat map."""
    ny1 = h // s
    nx1 = w // s
    nw = (nx1 + 63) // 64
    bits = np.empty(2 * max(ny1, 1) * nw, dtype=np.uint64)
    dil = np.empty(2 * max(ny1, 1) * nw, dtype=np.uint64)
    p1w = np.empty(nw, dtype=np.uint64)
    rbytes = np.zeros(2 * max(ny1, 1) * 64 * nw, dtype=np.uint8)
    for n in range(b2.shape[0]):
        _k_sample(b2[n], h, w, s, a_out[n], bits, rbytes)
        p1_out[n, :] = 0
        if ny1 < 3 or nx1 < 3:
            continue
        innerlast = _k_p1_rows(bits, dil, ny1, nx1, nw)
        for j in range(1, ny1 - 1):
            if _k_p1_row(dil, j, ny1, nw, innerlast, p1w):
                for i in range(nx1):
                    p1_out[n, j * nx1 + i] = (p1w[i >> 6] >> np.uint64(i & 63)) & np.uint64(1)


#: kernels and their numba fastmath flags ('reassoc' lets LLVM vectorise the sums: their order
#: then depends on the vector width, a ~1e-16 relative difference; NaN/inf semantics are kept)
_KERNELS = {"_k_pack_bits": False, "_k_box_row": False, "_k_sample": False, "_k_p1_rows": False,
            "_k_p1_row": False, "_k_r_value_one": {"reassoc"}, "_k_r_value": False, "_k_sampled": False}
_JIT_LOCK = threading.Lock()
_JITTED: list[bool] = []


def _jit() -> None:
    """Compile this module's kernels on first use (numba caches the code on disk, so later
    processes load it in well under a second; the first compilation takes ~10-20 s)."""
    if _JITTED:
        return
    with _JIT_LOCK:
        if _JITTED:
            return
        if sys.byteorder != "little":  # pragma: no cover - _k_pack_bits' byte order
            raise RuntimeError("sharpgen's physics kernels need a little-endian machine")
        import numba

        g = globals()
        for name, fastmath in _KERNELS.items():
            g[name] = numba.njit(cache=True, nogil=True, fastmath=fastmath)(g[name])
        _JITTED.append(True)


def flat_maps(b: np.ndarray) -> np.ndarray:
    """(N, H*W) C-contiguous float64 view (or copy) of a (N, H, W) batch. The kernels are
    compiled for float64 only: one signature to compile on a fresh install (~10 s), and a
    float32 map converted costs ~5% of its parameters' time."""
    return np.ascontiguousarray(b, dtype=np.float64).reshape(np.shape(b)[0], -1)


def r_value_flat(b2: np.ndarray, h: int, w: int, arcsec: np.ndarray) -> np.ndarray:
    """R_VALUE of the flat maps ``b2`` (N, h*w) (see :func:`flat_maps`) of pixel sizes
    ``arcsec`` (N,); shape (N,)."""
    _jit()
    out = np.empty(b2.shape[0])
    if b2.shape[0]:
        steps = np.ascontiguousarray(np.atleast_1d(r_value_scale(arcsec)), dtype=np.int64)
        _k_r_value(b2, int(h), int(w), steps, np.ascontiguousarray(_r_value_kernel()), out)
    return out


def _r_value_sampled(b, s: int) -> tuple[np.ndarray, np.ndarray]:
    """What the kernel computes before the Gaussian, for maps (N,H,W) and step s: (C's int abs
    of the sampled field as float, NaN -> 0; inversion line p1 as bool), each (N, H//s, W//s)."""
    _jit()
    b = np.asarray(b)
    if b.ndim == 2:
        b = b[None]
    n, h, w = b.shape
    ny1, nx1 = h // s, w // s
    hw = R_VALUE_HWIDTH
    a = np.empty((n, (ny1 + 2 * hw) * nx1))
    p1 = np.empty((n, ny1 * nx1), dtype=np.uint8)
    _k_sampled(flat_maps(b), h, w, int(s), a, p1)
    return a[:, hw * nx1 : (hw + ny1) * nx1].reshape(n, ny1, nx1), p1.reshape(n, ny1, nx1).astype(bool)


def r_value(br_gauss, scale) -> np.ndarray:
    """R_VALUE of each map as JSOC's SHARP module computes it (sharp_functions.c computeR);
    shape (N,). No mask (as JSOC: the whole map). JSOC applies it to the line-of-sight
    ``magnetogram`` segment; here it is applied to whatever field is given (Br in the pipeline).
    """
    b = np.asarray(br_gauss)
    if b.ndim == 2:
        b = b[None]
    if b.ndim != 3:
        raise ValueError(f"br_gauss must have shape (N,H,W) or (H,W), got {np.shape(br_gauss)}")
    n, h, w = b.shape
    _, _, arcsec = scale.arrays(n)
    return r_value_flat(flat_maps(b), h, w, arcsec)
