"""Image statistics of Br maps (real patches, generated images): noise, spectra, gradients.

Every function takes Br maps in Gauss, shape (N, S, S) or (S, S), NaN -> 0:

* :func:`noise_sigma` -- robust pixel-noise estimate per image [G];
* :func:`radial_power_spectrum` -- azimuthally averaged power spectrum per image [G^2];
* :func:`mean_power_spectrum` -- the same averaged over the images, without k = 0;
* :func:`mean_gradient` -- mean gradient magnitude per image [G / pixel].
"""

from __future__ import annotations

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
