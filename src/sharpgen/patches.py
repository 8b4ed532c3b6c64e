"""SHARP Br records -> fixed-size training patches (Zarr store + Parquet table).

Every record of the manifest (``results/data/records.tsv``: ``path``, ``source``, ``harpnum``,
``t_rec``) becomes at most one patch of S x S pixels:

* ``resize`` mode (the paper): the whole record, NaN set to 0 G, is resized to S x S with an
  antialiased bilinear (triangle) filter, as ``torch...interpolate(antialias=True)``. The
  pixel becomes anisotropic (H/S native pixels tall, W/S wide); it is recorded with the exact
  area (native area x H W / S^2) and, as side, the geometric mean sqrt(H W)/S native pixels.
  Parameters computed on such patches are therefore in *image units*: areas and fluxes are
  exact, distances are only approximately physical (a stretched map distorts them).
* ``crop`` mode (fixed physical scale): the record is block-averaged by ``bin`` x ``bin``
  (NaN-aware; trailing rows/columns that do not fill a block are dropped), then an S x S window
  is cut around the flux-weighted centre of |Br| over pixels with |Br| > 100 G (all pixels if
  none is that strong), shifted to lie inside the record. Where the binned record is smaller
  than S the window is padded with 0 G. Padding is NOT counted as NaN (``nan_fraction`` counts
  only missing pixels of the record inside the window; padded pixels are reported separately
  in ``pad_fraction``): the region beyond a HARP box is quiet Sun, for which 0 G is the
  expected value. Every pixel then has the exact physical scale ``PixelScale.from_header(h, bin)``.

Then Br is clipped to +-``clip_gauss`` and divided by it (values in [-1, 1]), NaN -> 0.
Records that cannot be used are skipped with the reason logged and counted in the summary: the
file checks of :func:`sharpgen.data.load_record`, then here a second file of a (HARPNUM, T_REC)
already used (``duplicate``), crop padding above ``max_pad_fraction`` (``too_small``) and a NaN
fraction above ``max_nan_fraction`` in the record, or in crop mode in the window (``nan_fraction``).
Splits are assigned per HARPNUM (a region is never in two splits); the fractions must sum to 1.

Shapes: patches (N, S, S) float32; per-patch scale arrays (N,) float64.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .config import split_fractions
from .data import SKIP_REASONS, SkipRecord, load_record
from .physics import PARAMETER_NAMES, PixelScale, parameter_array

logger = logging.getLogger(__name__)

CENTRE_THRESHOLD_G = 100.0
SPLITS = ("train", "val", "test")


class PatchError(RuntimeError):
    """The patch stage cannot produce any output (e.g. zero usable records)."""


@dataclass
class PatchConfig:
    """The ``patches`` config section (defaults: the config schema, spelled out in config.yaml)."""

    mode: str
    size: int
    bin: int
    clip_gauss: float
    max_nan_fraction: float
    max_pad_fraction: float
    quality_mask: int
    split: Mapping[str, float] | None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "PatchConfig":
        """From a (partial) ``patches`` section: schema defaults fill what is not given."""
        from sharpgen.config import section

        full = section("patches", cfg)
        pc = cls(**{f: full[f] for f in ("mode", "size", "bin", "clip_gauss", "max_nan_fraction",
                                         "max_pad_fraction", "quality_mask", "split")})
        if pc.mode not in ("crop", "resize"):
            raise ValueError(f"patches.mode must be 'crop' or 'resize', got {pc.mode!r}")
        if pc.size < 2 or pc.bin < 1 or pc.clip_gauss <= 0:
            raise ValueError(f"invalid patches config: size={pc.size}, bin={pc.bin}, clip_gauss={pc.clip_gauss}")
        if not 0.0 <= pc.max_pad_fraction <= 1.0:
            raise ValueError(f"patches.max_pad_fraction must be in [0, 1], got {pc.max_pad_fraction!r}")
        split_fractions(pc.split)  # fail before any record is read
        return pc

    def split_fractions(self) -> dict[str, float]:
        return split_fractions(self.split)

    def split_seed(self) -> int:
        return int(self.split["seed"])


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def assign_splits(harpnums, fractions: Mapping[str, float], seed: int = 0) -> dict[int, str]:
    """HARPNUM -> split. The sorted unique HARP numbers are permuted with ``seed`` and cut by the
    cumulative (normalised) fractions, so each region lands in exactly one split and the result
    depends only on the set of HARPs, the fractions and the seed. With at least one HARP and a
    positive train fraction, train is never empty."""
    harps = np.unique(np.asarray(list(harpnums), dtype=np.int64))
    fr = np.array([max(float(fractions.get(k, 0.0)), 0.0) for k in SPLITS])
    if fr.sum() <= 0:
        raise ValueError(f"split fractions sum to 0: {dict(fractions)}")
    perm = np.random.default_rng(seed).permutation(harps)
    n = harps.size
    cuts = np.round(np.cumsum(fr / fr.sum()) * n).astype(int)
    cuts[-1] = n
    if n and fr[0] > 0:
        cuts[0] = max(cuts[0], 1)
        cuts = np.maximum.accumulate(cuts)
    out: dict[int, str] = {}
    lo = 0
    for name, hi in zip(SPLITS, cuts):
        for h in perm[lo:hi]:
            out[int(h)] = name
        lo = hi
    return out


def t_rec_to_utc(t_rec) -> pd.Series:
    """JSOC T_REC strings (``YYYY.MM.DD_hh:mm:ss_TAI``, :func:`sharpgen.config.parse_tai`) ->
    UTC timestamps (datetime64[ns, UTC]); TAI - UTC (34 s in 2010, 35 s from 2012-07, 36 s from
    2015-07, 37 s from 2017) comes from astropy's leap-second table; an instant inside a leap
    second (23:59:60.x UTC) becomes 00:00:00.x of the next day. A value that is not a TAI time
    gives NaT (logged once with the count)."""
    from astropy.time import Time

    from .config import parse_tai

    values = pd.Series(t_rec, dtype=object).reset_index(drop=True)
    parsed = {}
    for v in values.dropna().unique():
        try:
            parsed[v] = parse_tai(str(v))
        except ValueError:
            pass
    bad = values[values.notna() & ~values.isin(list(parsed))]
    if len(bad) or values.isna().any():
        logger.warning("%d T_REC value(s) are not JSOC TAI times (e.g. %r): t_rec_utc left empty there",
                       int(len(bad) + values.isna().sum()), None if bad.empty else bad.iloc[0])
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if parsed:
        keys = list(parsed)
        f = Time(list(parsed.values()), scale="tai").utc.ymdhms  # seconds 60.x inside a leap second
        utc = (pd.to_datetime({k: f[k] for k in ("year", "month", "day", "hour", "minute")}, utc=True)
               + pd.to_timedelta(np.round(f["second"], 6), unit="s"))
        out = values.map(dict(zip(keys, utc))).astype("datetime64[ns, UTC]")
    if isinstance(t_rec, pd.Series):
        out.index = t_rec.index
    return out


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
#: patches are extracted, measured and handed on (to the Zarr store) this many at a time: the
#: store's chunk length along the patch axis, so a stream writes every chunk once
STREAM_CHUNK = 64


def build_patches(records: pd.DataFrame, cfg: PatchConfig, root: str | Path = ".",
                  progress: bool = True):
    """Extract the patches of ``records`` (manifest rows) in memory.

    Returns (patches (N, S, S) float32 in [-1, 1], table DataFrame (N rows, contract columns),
    summary dict). Raises :class:`PatchError` if no record is usable. :func:`make_patches`
    streams the same patches into the store instead (:class:`PatchStream`), chunk by chunk.
    """
    chunks: list[np.ndarray] = []
    table, summary = _build(records, cfg, root, progress, chunks.append)
    return np.concatenate(chunks), table, summary


def _build(records: pd.DataFrame, cfg: PatchConfig, root: str | Path, progress: bool, emit):
    """Extract the patches of ``records`` and hand them to ``emit`` in order, ``STREAM_CHUNK``
    at a time ((k, S, S) float32 in [-1, 1]); each chunk's parameters are measured before it is
    handed on, so no more than one chunk of patches is held here. Returns (table, summary)."""
    from tqdm import tqdm

    from .sharp_io import header_float

    root = Path(root)
    t0 = time.perf_counter()
    patches, rows, scales, skipped = [], [], [], []
    params: list[np.ndarray] = []
    n_clipped = n_pixels = 0

    def flush():
        nonlocal n_clipped, n_pixels
        arr = np.stack(patches)
        sc = np.asarray(scales[len(scales) - len(patches):], dtype=np.float64)
        scale = PixelScale(size_mm=sc[:, 0], area_cm2=sc[:, 1], size_arcsec=sc[:, 2])
        params.append(parameter_array(cfg.clip_gauss * arr.astype(np.float64), scale))
        n_clipped += int(np.count_nonzero(np.abs(arr) >= 1.0))
        n_pixels += arr.size
        patches.clear()
        emit(arr)

    done: dict[tuple[int, str], str] = {}  # (harpnum, t_rec) -> path of the patch made from it
    for rec_row in tqdm(records.itertuples(index=False), total=len(records), desc="patches",
                        disable=not progress):
        path = _resolve(str(rec_row.path), root)
        try:
            rec = load_record(path, cfg.quality_mask)
            ident = (int(rec.harpnum if rec.harpnum >= 0 else rec_row.harpnum),
                     rec.t_rec or str(rec_row.t_rec))
            if ident in done:
                raise SkipRecord("duplicate", f"{path}: HARP {ident[0]} {ident[1]} already gave a "
                                 f"patch (from {done[ident]})")
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
            logger.warning("skipping record %s: %s (%s)", path, exc.reason, exc)
            skipped.append({"path": str(rec_row.path), "reason": exc.reason, "message": str(exc)})
            continue
        done[ident] = str(rec_row.path)
        clipped = np.clip(np.nan_to_num(patch, nan=0.0), -cfg.clip_gauss, cfg.clip_gauss)
        patches.append((clipped / cfg.clip_gauss).astype(np.float32))
        scales.append((float(pscale.size_mm), float(pscale.area_cm2), float(pscale.size_arcsec)))
        if len(patches) == STREAM_CHUNK:
            flush()
        rows.append({
            "source": str(rec_row.source),
            "path": str(rec_row.path),
            "harpnum": ident[0],
            "t_rec": ident[1],
            "noaa": rec.noaa,
            "lon_fwt": header_float(rec.header, "LON_FWT"),
            "lat_fwt": header_float(rec.header, "LAT_FWT"),
            "nan_fraction": nan_frac,
            "pad_fraction": pad,
            "usflux_hdr": header_float(rec.header, "USFLUX"),
            "r_value_hdr": header_float(rec.header, "R_VALUE"),
        })
    n_records = len(records)
    reasons = Counter(s["reason"] for s in skipped)
    if not scales:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "manifest is empty"
        raise PatchError(f"no usable record among {n_records} in the manifest ({detail})")
    if patches:
        flush()
    sc = np.asarray(scales, dtype=np.float64)
    table = pd.DataFrame(rows)
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    table["noaa"] = table["noaa"].astype("Int64")
    table.insert(table.columns.get_loc("t_rec") + 1, "t_rec_utc", t_rec_to_utc(table["t_rec"]))
    table["pixel_size_mm"] = sc[:, 0]
    table["pixel_area_cm2"] = sc[:, 1]
    table["pixel_size_arcsec"] = sc[:, 2]
    split_of = assign_splits(table["harpnum"], cfg.split_fractions(), cfg.split_seed())
    table["split"] = table["harpnum"].map(split_of).astype(str)
    params = np.concatenate(params)
    for j, name in enumerate(PARAMETER_NAMES):
        table[name] = params[:, j]
    per_split = {
        s: {"patches": int((table["split"] == s).sum()),
            "harps": int(table.loc[table["split"] == s, "harpnum"].nunique())}
        for s in SPLITS
    }
    summary = {
        "n_records": int(n_records),
        "n_patches": int(len(table)),
        "n_skipped": int(len(skipped)),
        "skipped": {r: int(reasons.get(r, 0)) for r in SKIP_REASONS},
        "skipped_records": skipped[:200],
        "splits": per_split,
        "n_harps": int(table["harpnum"].nunique()),
        "mode": cfg.mode,
        "size": int(cfg.size),
        "bin": int(cfg.bin),
        "clip_gauss": float(cfg.clip_gauss),
        "clipped_fraction": float(n_clipped / n_pixels),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return table, summary


def store_attrs(cfg: PatchConfig, table: pd.DataFrame, config_hash: str) -> dict:
    """Group attributes of the patch store (contract keys plus the nominal median scale)."""
    units = ("physical (exact pixel scale of each patch)" if cfg.mode == "crop" else
             "image units: parameters measured on resized records; areas/fluxes exact, "
             "pixel side is the geometric mean of an anisotropic pixel")
    return {
        "clip_gauss": float(cfg.clip_gauss),
        "mode": cfg.mode,
        "size": int(cfg.size),
        "bin": int(cfg.bin),
        "n": int(len(table)),
        "config_hash": config_hash,
        "pixel_size_mm": float(table["pixel_size_mm"].median()),
        "pixel_area_cm2": float(table["pixel_area_cm2"].median()),
        "pixel_size_arcsec": float(table["pixel_size_arcsec"].median()),
        "parameter_units": units,
        "nan_policy": "NaN -> 0 G; crop-mode padding beyond the record is 0 G and not counted as NaN",
    }


#: units of the per-patch scale arrays of the store (CF ``units`` attributes)
SCALE_UNITS = {"pixel_size_mm": "Mm", "pixel_area_cm2": "cm2", "pixel_size_arcsec": "arcsec"}


def store_array_metadata(name: str, clip_gauss: float) -> dict:
    """``create_array`` keywords of the store's array ``name``: zarr v3 ``dimension_names``
    (``patch``, ``y``, ``x``) and CF attributes, so ``xarray.open_zarr(store)`` names the
    dimensions and decodes ``patches`` to Gauss (``scale_factor`` = clip_gauss, ``units`` G).
    Readers of the raw array (:class:`sharpgen.store.PatchStore`) still get values in [-1, 1]."""
    if name == "patches":
        return {"dimension_names": ("patch", "y", "x"),
                "attributes": {"units": "G", "scale_factor": float(clip_gauss),
                               "long_name": "radial magnetic field Br (stored as Br / clip_gauss, "
                                            "clipped to [-1, 1]; NaN -> 0)"}}
    return {"dimension_names": ("patch",),
            "attributes": {"units": SCALE_UNITS[name], "long_name": name.replace("_", " ")}}


class PatchStream:
    """Writes patches into a new Zarr v3 group as they come, ``STREAM_CHUNK`` per chunk, so the
    store is never held in memory: :meth:`append` (k, S, S) float32 arrays in order, then
    :func:`write_store` with the stream finishes the group. The result is byte-identical to
    :func:`write_store` of all patches at once (same chunk shape ``(min(STREAM_CHUNK, N), S, S)``: the
    array is created when the first full chunk is ready, or at the end for fewer patches)."""

    def __init__(self, zarr_path: str | Path, size: int, clip_gauss: float):
        self.path = Path(zarr_path)
        self.size = int(size)
        self.clip_gauss = float(clip_gauss)
        self.n = 0  # patches written to the array
        self._pending: list[np.ndarray] = []
        self._group = None
        self._array = None

    def append(self, arr: np.ndarray) -> None:
        self._pending.append(np.asarray(arr, dtype=np.float32))
        if sum(len(a) for a in self._pending) >= STREAM_CHUNK:
            self._write(final=False)

    def _write(self, final: bool) -> None:
        import zarr

        buf = np.concatenate(self._pending) if self._pending else np.empty((0, self.size, self.size), np.float32)
        k = len(buf) if final else len(buf) // STREAM_CHUNK * STREAM_CHUNK
        if self._array is None:
            if k == 0:
                return
            chunk = STREAM_CHUNK if (k >= STREAM_CHUNK or not final) else k
            self._group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self._array = self._group.create_array(
                "patches", shape=(0, self.size, self.size), chunks=(chunk, self.size, self.size),
                dtype="float32", **store_array_metadata("patches", self.clip_gauss))
        if k:
            self._array.resize((self.n + k, self.size, self.size))
            self._array[self.n : self.n + k] = buf[:k]
            self.n += k
        self._pending = [buf[k:]] if k < len(buf) else []

    def finish(self):
        """Write what is left; returns the open group (patches array complete)."""
        self._write(final=True)
        if self._group is None:
            raise PatchError("no patch was written to the store")
        return self._group


def write_store(zarr_path: str | Path, arr, table: pd.DataFrame, attrs: dict) -> None:
    """Write the Zarr v3 group at ``zarr_path`` (must not exist yet: callers write to a temp path).
    ``arr``: the (N, S, S) patches, or the :class:`PatchStream` that has been writing them to
    ``zarr_path`` (the rest of the group is written here)."""
    import zarr

    from .atomic import consolidate_zarr

    clip = float(attrs["clip_gauss"])
    if isinstance(arr, PatchStream):
        g = arr.finish()
        n = arr.n
    else:
        n, s, _ = arr.shape
        g = zarr.open_group(str(zarr_path), mode="w", zarr_format=3)
        a = g.create_array("patches", shape=arr.shape, chunks=(min(STREAM_CHUNK, n), s, s), dtype="float32",
                           **store_array_metadata("patches", clip))
        a[...] = arr
    for name in ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec"):
        v = table[name].to_numpy(dtype=np.float64)
        g.create_array(name, shape=v.shape, chunks=(max(n, 1),), dtype="float64",
                       **store_array_metadata(name, clip))[...] = v
    g.attrs.update(attrs)
    consolidate_zarr(zarr_path)  # the last write: xarray.open_zarr opens it without a warning


def _json_clean(o: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(o, dict):
        return {str(k): _json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_clean(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def make_patches(records: pd.DataFrame, cfg: Mapping[str, Any] | PatchConfig, zarr_path, table_path,
                 summary_path, root: str | Path = ".", progress: bool = True) -> dict:
    """Build and write the patch store, table and summary; all three atomically (a failure at
    any point leaves none of them behind, nor any temporary). Returns the summary."""
    import json

    from .atomic import atomic_path, dataframe_to_parquet
    from .config import section_hash

    pc = cfg if isinstance(cfg, PatchConfig) else PatchConfig.from_mapping(cfg)
    raw_cfg = dict(cfg) if not isinstance(cfg, PatchConfig) else pc.__dict__
    with atomic_path(zarr_path, suffix=".zarr") as tz, \
            atomic_path(table_path, suffix=".parquet") as tp, \
            atomic_path(summary_path, suffix=".json") as ts:
        # patches go to the (temporary) store as they are made, one chunk at a time
        stream = PatchStream(tz, pc.size, pc.clip_gauss)
        table, summary = _build(records, pc, root, progress, stream.append)
        attrs = store_attrs(pc, table, section_hash(raw_cfg))
        write_store(tz, stream, table, attrs)
        dataframe_to_parquet(table, tp, metadata={
            "patch_mode": pc.mode, "clip_gauss": float(pc.clip_gauss), "bin": int(pc.bin),
            "size": int(pc.size), "config_hash": attrs["config_hash"]})
        ts.write_text(json.dumps(_json_clean(summary), indent=2, sort_keys=True, allow_nan=False) + "\n")
    logger.info("wrote %d patches (%s mode, %dx%d) from %d records, %d skipped %s",
                summary["n_patches"], pc.mode, pc.size, pc.size, summary["n_records"],
                summary["n_skipped"], {k: v for k, v in summary["skipped"].items() if v})
    return summary
