"""One record -> one patch, for the patch stage (:mod:`sharpgen.patches`): the geometry (NaN-aware
block binning, the flux-weighted centre and the S x S window around it in crop mode, the
antialiased resize in resize mode), the per-record checks (:func:`cut_record`) and the pool of
worker processes that cuts many records in manifest order (:func:`cut_records`).
:mod:`sharpgen.invert.edit` uses the same cut to place an edited patch back in its record.

Shapes: records (H, W) float64 with NaN for missing pixels; windows and patches (S, S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .data import SkipRecord, load_record
from .physics import PixelScale

if TYPE_CHECKING:
    from .patches import PatchConfig

#: |Br| threshold [G] of the pixels whose flux-weighted centre places the crop window
CENTRE_THRESHOLD_G = 100.0


def bin_image(data: np.ndarray, b: int) -> np.ndarray:
    """NaN-aware b x b block mean of (H, W) -> (H//b, W//b); a block with no finite pixel is NaN."""
    data = np.asarray(data, dtype=np.float64)
    if b == 1:
        return data.copy()
    h, w = (data.shape[0] // b) * b, (data.shape[1] // b) * b
    if h == 0 or w == 0:
        raise SkipRecord("too_small", f"record of shape {data.shape} is smaller than one {b}x{b} bin")
    blocks = data[:h, :w].reshape(h // b, b, w // b, b)
    finite = np.isfinite(blocks)
    s = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    n = finite.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def flux_centre(data: np.ndarray, threshold_g: float = CENTRE_THRESHOLD_G) -> tuple[float, float]:
    """(row, col) centroid of |Br| over pixels with |Br| > ``threshold_g`` (all finite pixels if
    none; the image centre if the map is empty)."""
    a = np.abs(np.nan_to_num(data, nan=0.0))
    w = np.where(a > threshold_g, a, 0.0)
    if w.sum() <= 0:
        w = a
    tot = w.sum()
    if tot <= 0:
        return (data.shape[0] - 1) / 2.0, (data.shape[1] - 1) / 2.0
    rows = (w.sum(axis=1) * np.arange(data.shape[0])).sum() / tot
    cols = (w.sum(axis=0) * np.arange(data.shape[1])).sum() / tot
    return float(rows), float(cols)


def _window_1d(centre: float, n: int, s: int) -> tuple[int, int, int]:
    """(src_start, dst_start, length) of an s-window about ``centre`` on an axis of n pixels."""
    if n >= s:
        start = int(round(centre - s / 2.0 + 0.5))
        start = min(max(start, 0), n - s)
        return start, 0, s
    return 0, (s - n) // 2, n


def crop_window(data: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """S x S window of (H, W) ``data`` about its flux-weighted centre, zero-padded where the map
    is smaller than S. Returns (window (S, S) float64 with NaN kept, pad_fraction)."""
    cy, cx = flux_centre(data)
    sy, dy, ly = _window_1d(cy, data.shape[0], size)
    sx, dx, lx = _window_1d(cx, data.shape[1], size)
    out = np.zeros((size, size), dtype=np.float64)
    out[dy:dy + ly, dx:dx + lx] = data[sy:sy + ly, sx:sx + lx]
    pad = 1.0 - (ly * lx) / float(size * size)
    return out, pad


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix of an antialiased linear (triangle) filter whose support
    widens with the reduction factor (the filter of PIL / ``torch.nn.functional.interpolate(...,
    mode="bilinear", antialias=True)``); rows sum to 1."""
    f = n_in / n_out
    support = max(f, 1.0)
    centre = (np.arange(n_out) + 0.5) * f - 0.5
    j = np.arange(n_in)
    w = np.clip(1.0 - np.abs(j[None, :] - centre[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def resize_image(data: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of (H, W) (NaN -> 0) to (S, S) float64: separable triangle
    filter, each output pixel a weighted mean over the input pixels it covers (no aliasing of
    small-scale structure when shrinking, plain bilinear interpolation when enlarging)."""
    from scipy import sparse

    # the filters are banded: sparse products avoid multithreaded BLAS, which thrashes when
    # the cores are shared (100+ ms instead of ~5 ms per record)
    d = np.nan_to_num(np.asarray(data, dtype=np.float64), nan=0.0)
    wy = sparse.csr_matrix(_triangle_weights(d.shape[0], size))
    wx = sparse.csr_matrix(_triangle_weights(d.shape[1], size))
    return np.asarray((wx @ (wy @ d).T).T)


def extract_patch(data: np.ndarray, scale: PixelScale, header, cfg: PatchConfig):
    """One record -> (patch_gauss (S, S) float64 with NaN kept, PixelScale of scalars,
    nan_fraction, pad_fraction). Raises :class:`SkipRecord`."""
    data = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise SkipRecord("all_nan", "every pixel is NaN")
    s = cfg.size
    if cfg.mode == "resize":
        nan_fraction = float(1.0 - finite.mean())
        patch = resize_image(data, s)
        h, w = data.shape
        lin = math.sqrt(h * w) / s
        pscale = PixelScale(size_mm=float(scale.size_mm) * lin,
                            area_cm2=float(scale.area_cm2) * (h * w) / (s * s),
                            size_arcsec=float(scale.size_arcsec) * lin)
        pad = 0.0
    else:
        binned = bin_image(data, cfg.bin)
        patch, pad = crop_window(binned, s)
        nan_fraction = float(np.isnan(patch).mean())
        pscale = PixelScale.from_header(header, bin_factor=cfg.bin)
    return patch, pscale, nan_fraction, pad


@dataclass
class Cut:
    """One record read and cut (what :func:`cut_record` hands back, also from a worker process):
    ``ident`` (HARPNUM, T_REC) once the file could be read, ``skip`` (reason, message) when the
    record is unusable, else the patch (S, S) float32 in [-1, 1] (NaN -> 0, clipped), its pixel
    scale (size_mm, area_cm2, size_arcsec) and the table columns read from the record."""

    ident: tuple[int, str] | None
    skip: tuple[str, str] | None
    patch: np.ndarray | None = None
    scale: tuple[float, float, float] | None = None
    meta: dict | None = None


def cut_record(path: str | Path, harpnum: int, t_rec: str, cfg: PatchConfig) -> Cut:
    """Read the record at ``path`` and cut its patch; ``harpnum`` / ``t_rec`` (the manifest's)
    stand in where the header has none. Every check except the duplicate one (which needs the
    records before it) is made here."""
    from .sharp_io import header_float

    try:
        rec = load_record(path, cfg.quality_mask)
    except SkipRecord as exc:
        return Cut(None, (exc.reason, str(exc)))
    ident = (int(rec.harpnum if rec.harpnum >= 0 else harpnum), rec.t_rec or str(t_rec))
    try:
        record_nan = float(1.0 - np.isfinite(rec.data).mean())
        patch, pscale, nan_frac, pad = extract_patch(rec.data, rec.scale, rec.header, cfg)
        if pad > cfg.max_pad_fraction:
            raise SkipRecord("too_small", f"{path}: record of {rec.data.shape[0]} x "
                             f"{rec.data.shape[1]} pixels fills only {1 - pad:.1%} of the "
                             f"{cfg.size} x {cfg.size} window: pad_fraction {pad:.3f} > "
                             f"max_pad_fraction {cfg.max_pad_fraction}")
        if max(nan_frac, record_nan) > cfg.max_nan_fraction:
            where = "" if cfg.mode == "resize" else f" ({nan_frac:.3f} in the patch window)"
            raise SkipRecord("nan_fraction", f"{path}: NaN fraction {record_nan:.3f} of the "
                             f"record{where} > max_nan_fraction {cfg.max_nan_fraction}")
    except SkipRecord as exc:
        return Cut(ident, (exc.reason, str(exc)))
    clipped = np.clip(np.nan_to_num(patch, nan=0.0), -cfg.clip_gauss, cfg.clip_gauss)
    return Cut(ident, None, (clipped / cfg.clip_gauss).astype(np.float32),
               (float(pscale.size_mm), float(pscale.area_cm2), float(pscale.size_arcsec)),
               {"noaa": rec.noaa, "lon_fwt": header_float(rec.header, "LON_FWT"),
                "lat_fwt": header_float(rec.header, "LAT_FWT"), "nan_fraction": nan_frac,
                "pad_fraction": pad, "usflux_hdr": header_float(rec.header, "USFLUX"),
                "r_value_hdr": header_float(rec.header, "R_VALUE")})


def _cut_batch(tasks: list[tuple], cfg: PatchConfig) -> list[Cut]:
    return [cut_record(*t, cfg) for t in tasks]


#: records per task handed to a worker process, and tasks in flight per worker: at most
#: workers x CUT_BATCH x CUT_AHEAD patches wait in memory (64 MB for 16 workers of 128 px)
CUT_BATCH = 16
CUT_AHEAD = 4


def cut_records(records: pd.DataFrame, cfg: PatchConfig, root: str | Path = ".", workers: int = 1):
    """:func:`cut_record` of every manifest row, yielded in manifest order. ``workers`` > 1
    spreads them over that many processes (spawned, so no lock or thread of this process is
    inherited), ``CUT_BATCH`` records per task with at most ``CUT_AHEAD`` tasks per worker in
    flight, so memory stays bounded; an error in a worker (other than an unusable record)
    is raised here."""
    root = Path(root)
    tasks = ((str(resolve_path(str(r.path), root)), r.harpnum, str(r.t_rec)) for r in records.itertuples(index=False))
    if workers <= 1 or len(records) <= CUT_BATCH:
        for t in tasks:
            yield cut_record(*t, cfg)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from itertools import islice

    with ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        while batch := list(islice(tasks, CUT_BATCH)):
            pending.append(pool.submit(_cut_batch, batch, cfg))
            if len(pending) >= CUT_AHEAD * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def resolve_path(path: str, root: Path) -> Path:
    """A manifest path: absolute as it is, relative from ``root``."""
    p = Path(path)
    return p if p.is_absolute() else root / p
