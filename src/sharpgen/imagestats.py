"""Image statistics of Br maps (real patches, generated images): noise, spectra, gradients.

Every function takes Br maps in Gauss, shape (N, S, S) or (S, S), NaN -> 0:

* :func:`noise_sigma` -- robust pixel-noise estimate per image [G];
* :func:`radial_power_spectrum` -- azimuthally averaged power spectrum per image [G^2];
* :func:`mean_power_spectrum` -- the same averaged over the images, without k = 0;
* :func:`mean_gradient` -- mean gradient magnitude per image [G / pixel];
* :func:`axis_power_spectrum` -- 1-D power spectrum along the pixel axes, averaged [G^2];
* :func:`lattice_peaks` -- excess power at the periods an upsampling generator's grid leaves;
* :func:`quiet_block_share` -- share of blocks where an image's texture is (nearly) absent;
* :func:`orientation_ratio` -- power along the pixel axes over power along the diagonals, per
  image and |k| band (1 for isotropic texture; a grid-aligned generator's texture is not).
"""

from __future__ import annotations

import warnings

import numpy as np

_MAD_TO_SIGMA = 1.482602218505602  # sigma of a Gaussian = 1.4826 * MAD


def _stack(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected images of shape (N, S, S) or (S, S), got {a.shape}")
    return np.nan_to_num(a, nan=0.0)


def noise_sigma(images: np.ndarray) -> np.ndarray:
    """Pixel-noise sigma [G] per image, shape (N,).

    Robust estimator: 1.4826 * median absolute deviation of the horizontal first differences,
    divided by sqrt(2) (the difference of two independent noisy pixels has variance 2 sigma^2).
    Structured field (active-region gradients) occupies few pixels and barely moves the median.
    Pairs involving a pixel that is exactly 0 or NaN (off-disk / masked pixels, stored as 0 in
    the patch store) are ignored; an image without any valid pair gives NaN.
    """
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected images of shape (N, S, S) or (S, S), got {a.shape}")
    valid = np.isfinite(a) & (a != 0)
    d = np.diff(a, axis=2)
    ok = valid[:, :, 1:] & valid[:, :, :-1]
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        di = d[i][ok[i]]
        if di.size >= 2:
            out[i] = _MAD_TO_SIGMA * np.median(np.abs(di - np.median(di))) / np.sqrt(2.0)
    return out


def radial_power_spectrum(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthally averaged power spectrum of each image.

    Returns ``k`` (S//2 + 1,) wavenumbers [cycles / pixel] and ``power`` (N, S//2 + 1) [G^2]:
    mean of |FFT(image - mean)|^2 / (H W) over annuli of integer radius in frequency-index units.
    """
    a = _stack(images)
    n, h, w = a.shape
    a = a - a.mean(axis=(1, 2), keepdims=True)
    p2 = np.abs(np.fft.fft2(a)) ** 2 / (h * w)
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    r = np.rint(np.hypot(fy[:, None], fx[None, :])).astype(int)
    nk = min(h, w) // 2 + 1
    sel = r < nk
    counts = np.bincount(r[sel], minlength=nk)
    power = np.stack([np.bincount(r[sel], weights=p[sel], minlength=nk) for p in p2]) / counts
    k = np.arange(nk) / min(h, w)
    return k, power


def mean_gradient(images: np.ndarray) -> np.ndarray:
    """Mean gradient magnitude |grad B_r| [G / pixel] per image, shape (N,) (central differences)."""
    a = _stack(images)
    gy, gx = np.gradient(a, axis=(1, 2))
    return np.hypot(gx, gy).mean(axis=(1, 2))


def mean_power_spectrum(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of :func:`radial_power_spectrum`, without the k = 0 bin (the mean):
    ``k`` (S//2,) [cycles / pixel] and ``power`` (S//2,) [G^2], for integer radii 1..S/2."""
    n = len(images)
    total = None
    for i in range(0, n, chunk):
        k, p = radial_power_spectrum(images[i: i + chunk])
        total = p.sum(axis=0) if total is None else total + p.sum(axis=0)
    return k[1:], total[1:] / n


#: periods [px] of the lattice a generator with an S/8 base grid and three x2 upsamplings can
#: leave (k = m S/8 cycles per S pixels, m = 1..4): 8, 4, 8/3 and 2 (Nyquist) pixels
LATTICE_PERIODS_PX = (8.0, 4.0, 8.0 / 3.0, 2.0)


def axis_power_spectrum(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """1-D power spectrum along the pixel axes, averaged over rows, columns and images.

    ``images`` (N, S, S) [G] -> ``k`` (S//2 + 1,) [cycles / pixel] and ``power`` (S//2 + 1,)
    [G^2]: |FFT of each row|^2 / S and the same for each column, both averaged. Unlike the
    radial spectrum, a pattern aligned with the pixel grid (a checkerboard, a dot lattice)
    stays at its own wavenumber instead of being spread over an annulus.
    """
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected square images (N, S, S) or (S, S), got {a.shape}")
    n, s = a.shape[0], a.shape[1]
    total = np.zeros(s // 2 + 1)
    for i in range(0, n, chunk):
        b = _stack(a[i: i + chunk])
        rows = np.abs(np.fft.rfft(b, axis=2)) ** 2     # (n, S, S//2+1): every row
        cols = np.abs(np.fft.rfft(b, axis=1)) ** 2     # (n, S//2+1, S): every column
        total += rows.sum(axis=(0, 1)) + cols.sum(axis=(0, 2))
    return np.arange(s // 2 + 1) / s, total / (2 * n * s * s)


def lattice_peaks(images: np.ndarray, periods_px=LATTICE_PERIODS_PX) -> dict:
    """How far the axis power spectrum (:func:`axis_power_spectrum`) stands above its neighbours
    at each lattice period: ``log10 P(k) - (log10 P(k-1) + log10 P(k+1)) / 2`` at k = S / period
    (at the Nyquist wavenumber S/2, P(S/2 + 1) = P(S/2 - 1)). 0 for a smooth spectrum (a
    power law gives ~0), > 0 where a grid pattern adds power: 0.3 is twice the neighbours'.

    Returns ``periods_px``, ``k_cycles_per_pixel`` and ``log10_excess`` (one per period) and
    ``log10_peak`` (their maximum). Periods whose wavenumber is not an integer number of
    cycles per image, or is 0, are left out.
    """
    k, p = axis_power_spectrum(images)
    s = 2 * (k.size - 1)
    logp = np.log10(np.maximum(p, np.finfo(float).tiny))
    out_periods, out_k, excess = [], [], []
    for period in periods_px:
        ki = s / float(period)
        if abs(ki - round(ki)) > 1e-9 or round(ki) < 1 or round(ki) > s // 2:
            continue
        ki = int(round(ki))
        hi = ki + 1 if ki < s // 2 else ki - 1
        out_periods.append(float(period))
        out_k.append(float(k[ki]))
        excess.append(float(logp[ki] - 0.5 * (logp[ki - 1] + logp[hi])))
    return {"periods_px": out_periods, "k_cycles_per_pixel": out_k, "log10_excess": excess,
            "log10_peak": max(excess) if excess else None}


#: |k| bands of :func:`orientation_ratio`, as fractions of the Nyquist wavenumber S/2
#: (4-16, 16-32, 32-48 and 48-64 cycles per image at S = 128)
ORIENTATION_BANDS = ((0.0625, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
#: wedges of :func:`orientation_ratio` [deg]: within AXIS_DEG of kx or ky, and DIAGONAL_DEG
#: (equal areas: 4 x 20 deg each)
ORIENTATION_AXIS_DEG = 10.0
ORIENTATION_DIAGONAL_DEG = (35.0, 55.0)


def orientation_ratio(images: np.ndarray, bands=ORIENTATION_BANDS, chunk: int = 256) -> np.ndarray:
    """Axis over diagonal power per image and |k| band: the mean 2-D power |FFT|^2 of each image
    with the wavevector within :data:`ORIENTATION_AXIS_DEG` of a pixel axis, over the mean with it
    within :data:`ORIENTATION_DIAGONAL_DEG` (a diagonal), in each band of ``bands`` (fractions of
    the Nyquist wavenumber S/2, lower edge included).

    ``images`` (N, S, S) or (S, S) -> (N, len(bands)); NaN where an image has no power on the
    diagonals of a band. 1 for isotropic texture; > 1 where it is aligned with the pixel grid
    (rows and columns of blocks, a box-like filter's grain near Nyquist), < 1 where the diagonals
    dominate. Rotating an image by 90 degrees or transposing it leaves the ratios unchanged.
    """
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected square images (N, S, S) or (S, S), got {a.shape}")
    s = a.shape[1]
    k = np.fft.fftfreq(s) * s
    ky, kx = np.meshgrid(k, k, indexing="ij")
    kr = np.hypot(kx, ky)
    ang = np.degrees(np.arctan2(np.abs(ky), np.abs(kx)))            # 0..90 within each quadrant
    on_axis = (ang < ORIENTATION_AXIS_DEG) | (ang > 90.0 - ORIENTATION_AXIS_DEG)
    lo_d, hi_d = ORIENTATION_DIAGONAL_DEG
    on_diag = (ang > lo_d) & (ang < hi_d)
    half = s / 2
    wedges = []
    for lo, hi in bands:
        band = (kr >= lo * half) & ((kr < hi * half) if hi < 1.0 else (kr <= half))
        wedges.append((band & on_axis, band & on_diag))
    out = np.empty((a.shape[0], len(bands)))
    for i in range(0, a.shape[0], chunk):
        p = np.abs(np.fft.fft2(_stack(a[i: i + chunk]))) ** 2         # (n, S, S)
        for j, (ax, dg) in enumerate(wedges):
            num, den = p[:, ax].mean(axis=1), p[:, dg].mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[i: i + chunk, j] = np.where(den > 0, num / den, np.nan)
    return out


#: side [px] of the blocks :func:`quiet_block_share` compares
QUIET_BLOCK_PX = 8
#: a block is quiet when its texture rms is under this fraction of its image's median block rms
QUIET_BLOCK_FRACTION = 1.0 / 3.0


def quiet_block_share(texture: np.ndarray, mask: np.ndarray, block: int = QUIET_BLOCK_PX,
                      fraction: float = QUIET_BLOCK_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """How much of each image's texture is missing in places: the share of its blocks whose rms
    is under ``fraction`` of the image's median block rms.

    texture: (N, S, S) high-passed maps [G] (:func:`sharpgen.c2st.weak_texture`); mask: (N, S, S)
    bool, where the texture counts (the weak field off the zero padding). Only ``block`` x
    ``block`` blocks wholly inside the mask are compared (S a multiple of ``block``). Returns
    ``(share (N,), n_blocks (N,))``: the share of quiet blocks (NaN for an image without a whole
    block) and the number of blocks compared. A record's noise is homogeneous, so in real patches
    the share is near 0; a generator that turns its grain off in places leaves quiet blocks.
    Vectorised over the images (one reshape)."""
    t = np.asarray(texture, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if t.ndim == 2:
        t, m = t[None], m[None]
    n, s = t.shape[0], t.shape[-1]
    if t.shape != m.shape or t.ndim != 3 or t.shape[1] != s or s % block:
        raise ValueError(f"expected texture and mask of one shape (N, S, S), S a multiple of {block}; "
                         f"got {t.shape} and {m.shape}")
    nb = s // block
    inside = m.reshape(n, nb, block, nb, block).all(axis=(2, 4)).reshape(n, -1)
    power = (np.where(m, t, 0.0) ** 2).reshape(n, nb, block, nb, block).mean(axis=(2, 4)).reshape(n, -1)
    rms = np.where(inside, np.sqrt(power), np.nan)
    count = inside.sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: an image without a whole block
        median = np.nanmedian(rms, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        quiet = (rms < fraction * median) & inside
    share = np.where(count > 0, quiet.sum(axis=1) / np.maximum(count, 1), np.nan)
    return share, count
