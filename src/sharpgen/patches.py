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
Records that cannot be used are skipped with the reason logged and counted in the summary.
Splits are assigned per HARPNUM (a region is never in two splits).

Shapes: patches (N, S, S) float32; per-patch scale arrays (N,) float64.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .physics import PARAMETER_NAMES, PixelScale, compute_parameters

logger = logging.getLogger(__name__)

SERIES = "hmi.sharp_cea_720s"
MANIFEST_COLUMNS = ("path", "source", "harpnum", "t_rec")
CENTRE_THRESHOLD_G = 100.0
SPLITS = ("train", "val", "test")

#: reasons a record is skipped (keys of the summary's ``skipped``)
SKIP_REASONS = (
    "missing",          # file does not exist
    "not_fits",         # not a FITS file
    "wrong_series",     # not hmi.sharp_cea_720s (e.g. the CCD series hmi.sharp_720s)
    "wrong_segment",    # a segment other than Br
    "missing_segment",  # FITS file without image data
    "unreadable",       # corrupt or truncated FITS, or unusable header
    "quality",          # QUALITY flags set (outside patches.quality_mask)
    "all_nan",          # no finite pixel
    "nan_fraction",     # NaN fraction above patches.max_nan_fraction
    "too_small",        # smaller than one bin
)


class PatchError(RuntimeError):
    """The patch stage cannot produce any output (e.g. zero usable records)."""


class SkipRecord(Exception):
    """A record is unusable; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PatchConfig:
    """The ``patches`` config section (see config.yaml)."""

    mode: str = "crop"
    size: int = 128
    bin: int = 2
    clip_gauss: float = 1000.0
    max_nan_fraction: float = 0.25
    quality_mask: int = 0
    split: Mapping[str, float] | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "PatchConfig":
        known = {k: cfg[k] for k in ("mode", "size", "bin", "clip_gauss", "max_nan_fraction",
                                     "quality_mask", "split") if k in cfg}
        pc = cls(**known)
        if pc.mode not in ("crop", "resize"):
            raise ValueError(f"patches.mode must be 'crop' or 'resize', got {pc.mode!r}")
        if pc.size < 2 or pc.bin < 1 or pc.clip_gauss <= 0:
            raise ValueError(f"invalid patches config: size={pc.size}, bin={pc.bin}, clip_gauss={pc.clip_gauss}")
        return pc

    def split_fractions(self) -> dict[str, float]:
        s = dict(self.split or {})
        fr = {k: float(s.get(k, d)) for k, d in zip(SPLITS, (0.7, 0.15, 0.15))}
        if sum(fr.values()) <= 0:
            raise ValueError(f"patches.split fractions sum to 0: {fr}")
        return fr

    def split_seed(self) -> int:
        return int((self.split or {}).get("seed", 0))


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
# records
# --------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``records.tsv``; error naming the file and the missing columns."""
    df = pd.read_csv(path, sep="\t", dtype={"path": str, "source": str, "t_rec": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise PatchError(f"manifest {path} lacks column(s) {missing} (has {list(df.columns)})")
    return df


def local_manifest(pattern: str, root: str | Path = ".") -> pd.DataFrame:
    """Manifest of local SHARP Br files matching the glob ``pattern`` (relative patterns are
    taken from ``root``). HARPNUM and T_REC come from the JSOC file names
    (``hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.Br.fits``); the files themselves are
    checked by the patch stage, which skips bad ones with a reason. Raises FileNotFoundError
    naming the pattern when nothing matches."""
    import glob

    from .sharp_io import parse_name

    root = Path(root)
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    rows = []
    for f in sorted(glob.glob(full)):
        name = parse_name(f)
        if name is None or name["segment"] != "Br":
            logger.warning("ignoring %s: not a SHARP Br file name (<series>.<HARPNUM>."
                           "<YYYYMMDD_HHMMSS>_TAI.Br.fits)", f)
            continue
        d, t = name["date"], name["time"]
        rel = os.path.relpath(f, root) if not os.path.isabs(pattern) else f
        rows.append({"path": rel, "source": "local", "harpnum": int(name["harpnum"]),
                     "t_rec": f"{d[:4]}.{d[4:6]}.{d[6:]}_{t[:2]}:{t[2:4]}:{t[4:]}_TAI"})
    if not rows:
        raise FileNotFoundError(
            f"data.local.glob {pattern!r} matches no SHARP Br FITS file (looked in "
            f"{root.resolve()}); point it at files named hmi.sharp_cea_720s.<HARPNUM>."
            "<YYYYMMDD_HHMMSS>_TAI.Br.fits")
    logger.info("found %d local Br records of %d HARPs matching %s", len(rows),
                len({r['harpnum'] for r in rows}), pattern)
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _classify_read_error(msg: str) -> str:
    m = msg.lower()
    if "file not found" in m:
        return "missing"
    if "not a fits file" in m:
        return "not_fits"
    if "wrong segment" in m:
        return "wrong_segment"
    if "no image data" in m or "has no data" in m or "expected a 2-d image" in m:
        return "missing_segment"
    return "unreadable"


def load_record(path: str | Path, quality_mask: int = 0):
    """Read and check one Br record; returns a SharpRecord or raises :class:`SkipRecord`."""
    from .sharp_io import SharpReadError, parse_name, read_sharp

    path = Path(path)
    if not path.exists():
        raise SkipRecord("missing", f"{path}: file not found")
    name = parse_name(path)
    if name is not None and name["series"] != SERIES:
        raise SkipRecord("wrong_series", f"{path}: series {name['series']!r} is not {SERIES!r}")
    try:
        rec = read_sharp(path, segment_check="Br")
    except SharpReadError as exc:
        raise SkipRecord(_classify_read_error(str(exc)), str(exc)) from None
    ctype = str(rec.header.get("CTYPE1", "CRLN-CEA")).strip().upper()
    if ctype != "CRLN-CEA":
        raise SkipRecord("wrong_series", f"{path}: CTYPE1={ctype!r}, not a CEA (CRLN-CEA) map")
    q = rec.header.get("QUALITY", 0)
    try:
        qi = int(q, 0) if isinstance(q, str) else int(q)
    except (TypeError, ValueError):
        raise SkipRecord("unreadable", f"{path}: QUALITY={q!r} is not an integer") from None
    if qi & ~int(quality_mask):
        raise SkipRecord("quality", f"{path}: QUALITY=0x{qi & 0xFFFFFFFF:08x} has flags outside mask 0x{quality_mask:x}")
    return rec


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


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def build_patches(records: pd.DataFrame, cfg: PatchConfig, root: str | Path = ".",
                  progress: bool = True):
    """Extract the patches of ``records`` (manifest rows) in memory.

    Returns (patches (N, S, S) float32 in [-1, 1], table DataFrame (N rows, contract columns),
    summary dict). Raises :class:`PatchError` if no record is usable.
    """
    from tqdm import tqdm

    from .sharp_io import header_float

    root = Path(root)
    t0 = time.perf_counter()
    patches, rows, scales, skipped = [], [], [], []
    for rec_row in tqdm(records.itertuples(index=False), total=len(records), desc="patches",
                        disable=not progress):
        path = _resolve(str(rec_row.path), root)
        try:
            rec = load_record(path, cfg.quality_mask)
            patch, pscale, nan_frac, pad = extract_patch(rec.data, rec.scale, rec.header, cfg)
            if nan_frac > cfg.max_nan_fraction:
                raise SkipRecord("nan_fraction", f"{path}: NaN fraction {nan_frac:.3f} > "
                                 f"max_nan_fraction {cfg.max_nan_fraction}")
        except SkipRecord as exc:
            logger.warning("skipping record %s: %s (%s)", path, exc.reason, exc)
            skipped.append({"path": str(rec_row.path), "reason": exc.reason, "message": str(exc)})
            continue
        clipped = np.clip(np.nan_to_num(patch, nan=0.0), -cfg.clip_gauss, cfg.clip_gauss)
        patches.append((clipped / cfg.clip_gauss).astype(np.float32))
        scales.append((float(pscale.size_mm), float(pscale.area_cm2), float(pscale.size_arcsec)))
        rows.append({
            "source": str(rec_row.source),
            "path": str(rec_row.path),
            "harpnum": int(rec.harpnum if rec.harpnum >= 0 else rec_row.harpnum),
            "t_rec": rec.t_rec or str(rec_row.t_rec),
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
    if not patches:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "manifest is empty"
        raise PatchError(f"no usable record among {n_records} in the manifest ({detail})")
    arr = np.stack(patches)
    sc = np.asarray(scales, dtype=np.float64)
    table = pd.DataFrame(rows)
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    table["noaa"] = table["noaa"].astype("Int64")
    table["pixel_size_mm"] = sc[:, 0]
    table["pixel_area_cm2"] = sc[:, 1]
    table["pixel_size_arcsec"] = sc[:, 2]
    split_of = assign_splits(table["harpnum"], cfg.split_fractions(), cfg.split_seed())
    table["split"] = table["harpnum"].map(split_of).astype(str)
    scale = PixelScale(size_mm=sc[:, 0], area_cm2=sc[:, 1], size_arcsec=sc[:, 2])
    params = compute_parameters(cfg.clip_gauss * arr.astype(np.float64), scale)
    for name in PARAMETER_NAMES:
        table[name] = params[name].to_numpy()
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
        "clipped_fraction": float((np.abs(arr) >= 1.0).mean()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return arr, table, summary


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


def write_store(zarr_path: str | Path, arr: np.ndarray, table: pd.DataFrame, attrs: dict) -> None:
    """Write the Zarr v3 group at ``zarr_path`` (must not exist yet: callers write to a temp path)."""
    import zarr

    n, s, _ = arr.shape
    g = zarr.open_group(str(zarr_path), mode="w", zarr_format=3)
    a = g.create_array("patches", shape=arr.shape, chunks=(min(64, n), s, s), dtype="float32")
    a[...] = arr
    for name in ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec"):
        v = table[name].to_numpy(dtype=np.float64)
        g.create_array(name, shape=v.shape, chunks=(max(n, 1),), dtype="float64")[...] = v
    g.attrs.update(attrs)


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

    from .atomic import atomic_path
    from .config import section_hash

    pc = cfg if isinstance(cfg, PatchConfig) else PatchConfig.from_mapping(cfg)
    raw_cfg = dict(cfg) if not isinstance(cfg, PatchConfig) else pc.__dict__
    arr, table, summary = build_patches(records, pc, root=root, progress=progress)
    attrs = store_attrs(pc, table, section_hash(raw_cfg))
    with atomic_path(zarr_path, suffix=".zarr") as tz, \
            atomic_path(table_path, suffix=".parquet") as tp, \
            atomic_path(summary_path, suffix=".json") as ts:
        write_store(tz, arr, table, attrs)
        table.to_parquet(tp, index=False)
        ts.write_text(json.dumps(_json_clean(summary), indent=2, sort_keys=True, allow_nan=False) + "\n")
    logger.info("wrote %d patches (%s mode, %dx%d) from %d records, %d skipped %s",
                summary["n_patches"], pc.mode, pc.size, pc.size, summary["n_records"],
                summary["n_skipped"], {k: v for k, v in summary["skipped"].items() if v})
    return summary


# --------------------------------------------------------------------------------------------
# readers for consumers
# --------------------------------------------------------------------------------------------
def patch_scale(attrs: Mapping[str, Any]) -> PixelScale:
    """Nominal (median) pixel scale of a patch store from its attrs: the scale at which
    generated images are measured."""
    try:
        return PixelScale(size_mm=float(attrs["pixel_size_mm"]), area_cm2=float(attrs["pixel_area_cm2"]),
                          size_arcsec=float(attrs["pixel_size_arcsec"]))
    except KeyError as exc:
        raise KeyError(f"patch store attrs lack {exc} (written by an older sharpgen?)") from None


def load_patches(zarr_path: str | Path) -> tuple[np.ndarray, dict, PixelScale]:
    """Read a patch store: (patches (N, S, S) float32 in [-1, 1], attrs dict, per-patch
    PixelScale with (N,) arrays)."""
    import zarr

    try:
        g = zarr.open_group(str(zarr_path), mode="r")
        arr = np.asarray(g["patches"][...], dtype=np.float32)
        scale = PixelScale(*(np.asarray(g[k][...], dtype=np.float64)
                             for k in ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec")))
    except Exception as exc:
        raise PatchError(f"cannot read patch store {zarr_path}: {type(exc).__name__}: {exc}") from exc
    return arr, dict(g.attrs), scale
