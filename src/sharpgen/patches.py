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

import hashlib
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
from .data import SKIP_REASONS
from .patch_cut import cut_records, resolve_path
from .physics import PARAMETER_NAMES, PixelScale, parameter_array
from .sharp_io import t_rec_to_utc

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
#: patches are extracted, measured and handed on (to the Zarr store) this many at a time: the
#: store's chunk length along the patch axis, so a stream writes every chunk once
STREAM_CHUNK = 64
#: rows of the patch table are converted and handed on (one Parquet row group) this many at a time
#: (~1.3 KB per row waits as Python objects until then: ~2.7 MB at most)
TABLE_CHUNK = 2048
#: columns of the patch table before the pixel scale, ``split`` and the parameters
RECORD_COLUMNS = ("row", "source", "path", "harpnum", "t_rec", "t_rec_utc", "noaa", "lon_fwt", "lat_fwt",
                  "nan_fraction", "pad_fraction", "usflux_hdr", "r_value_hdr")
SCALE_COLUMNS = ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec")


def build_patches(records: pd.DataFrame, cfg: PatchConfig, root: str | Path = ".",
                  progress: bool = True, workers: int = 1):
    """Extract the patches of ``records`` (manifest rows) in memory.

    Returns (patches (N, S, S) float32 in [-1, 1], table DataFrame (N rows, contract columns),
    summary dict). Raises :class:`PatchError` if no record is usable. :func:`make_patches`
    streams the same patches into the store and the same rows into the table instead
    (:class:`PatchStream`, :class:`TableStream`), chunk by chunk.
    """
    chunks: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    built = _build(records, cfg, root, progress, chunks.append, frames.append, workers)
    table = with_split(pd.concat(frames, ignore_index=True), built.split_of)
    return np.concatenate(chunks), table, built.summary


@dataclass
class Built:
    """What :func:`_build` returns besides the streamed patches and table rows: the per-patch
    pixel scale (N, 3) float64 (``SCALE_COLUMNS``: 24 bytes per patch, for the store's scale
    arrays and median), HARPNUM -> split, and the summary."""

    scales: np.ndarray
    split_of: dict[int, str]
    summary: dict

    def scale_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.scales, columns=list(SCALE_COLUMNS))


def with_split(frame: pd.DataFrame, split_of: Mapping[int, str]) -> pd.DataFrame:
    """A chunk of table rows (``RECORD_COLUMNS`` + ``SCALE_COLUMNS`` + parameters) with the
    ``split`` column of each row's HARP inserted after the pixel scale (the contract order)."""
    frame = frame.copy()
    frame.insert(frame.columns.get_loc(SCALE_COLUMNS[-1]) + 1, "split",
                 frame["harpnum"].map(split_of).astype(str))
    return frame


def _record_key(harpnum: int, t_rec: str) -> int:
    """128-bit digest of (HARPNUM, T_REC): the duplicate check holds one Python int (~70 bytes
    with its set slot) per patch instead of the key's tuple and string."""
    return int.from_bytes(hashlib.blake2b(f"{harpnum}\x00{t_rec}".encode(), digest_size=16).digest(), "little")


def _build(records: pd.DataFrame, cfg: PatchConfig, root: str | Path, progress: bool, emit, emit_rows,
           workers: int = 1) -> Built:
    """Extract the patches of ``records`` and hand them to ``emit`` in order, ``STREAM_CHUNK``
    at a time ((k, S, S) float32 in [-1, 1]), and their table rows (without ``split``, which
    depends on every HARP) to ``emit_rows``, ``TABLE_CHUNK`` at a time (DataFrames). Each chunk's
    parameters are measured before it is handed on. What is held grows by ~100 bytes per patch
    (the duplicate check, the pixel scale and the HARP number), not by the patches or rows.
    ``workers`` > 1 reads and cuts the records in that many processes (:func:`cut_records`);
    the result is the same whatever the number."""
    from tqdm import tqdm

    root = Path(root)
    t0 = time.perf_counter()
    patches: list[np.ndarray] = []  # the current chunk of patches
    rows: list[dict] = []  # table rows not yet handed on
    params: list[np.ndarray] = []  # parameters of the patches of ``rows`` that are measured
    scale_chunks: list[np.ndarray] = []
    harp_chunks: list[np.ndarray] = []
    scales: list[tuple[float, float, float]] = []  # of ``rows``
    skipped: list[dict] = []
    n_skipped = 0
    n_out = n_clipped = n_pixels = 0
    reasons: Counter = Counter()

    def flush_patches():
        nonlocal n_clipped, n_pixels
        arr = np.stack(patches)
        sc = np.asarray(scales[len(scales) - len(patches):], dtype=np.float64)
        scale = PixelScale(size_mm=sc[:, 0], area_cm2=sc[:, 1], size_arcsec=sc[:, 2])
        params.append(parameter_array(cfg.clip_gauss * arr.astype(np.float64), scale))
        n_clipped += int(np.count_nonzero(np.abs(arr) >= 1.0))
        n_pixels += arr.size
        patches.clear()
        emit(arr)

    def flush_rows():
        nonlocal n_out
        frame = pd.DataFrame(rows, columns=list(RECORD_COLUMNS[1:5] + RECORD_COLUMNS[6:]))
        frame.insert(0, "row", np.arange(n_out, n_out + len(frame), dtype=np.int64))
        frame["noaa"] = frame["noaa"].astype("Int64")
        frame.insert(frame.columns.get_loc("t_rec") + 1, "t_rec_utc", t_rec_to_utc(frame["t_rec"]))
        sc = np.asarray(scales, dtype=np.float64).reshape(-1, 3)
        for j, name in enumerate(SCALE_COLUMNS):
            frame[name] = sc[:, j]
        par = np.concatenate(params)
        for j, name in enumerate(PARAMETER_NAMES):
            frame[name] = par[:, j]
        scale_chunks.append(sc)
        harp_chunks.append(np.array(frame["harpnum"], dtype=np.int64))  # a copy: a view would keep the frame's block
        n_out += len(frame)
        rows.clear()
        scales.clear()
        params.clear()
        emit_rows(frame)

    done: dict[int, int] = {}  # _record_key(harpnum, t_rec) -> manifest position of its patch
    paths = records["path"]
    bar = tqdm(total=len(records), desc="patches", disable=not progress)
    for i, (rec_row, cut) in enumerate(zip(records.itertuples(index=False),
                                           cut_records(records, cfg, root, workers))):
        bar.update()
        key = None if cut.ident is None else _record_key(*cut.ident)
        skip = cut.skip
        if skip is not None or (key is not None and key in done):
            path = resolve_path(str(rec_row.path), root)
        if key is not None and key in done:  # checked before the cut's own checks, as one process would
            skip = ("duplicate", f"{path}: HARP {cut.ident[0]} {cut.ident[1]} already gave a "
                                 f"patch (from {paths.iloc[done[key]]})")
        if skip is not None:
            reason, message = skip
            logger.warning("skipping record %s: %s (%s)", path, reason, message)
            n_skipped += 1
            reasons[reason] += 1
            if len(skipped) < MAX_SKIPPED_LISTED:
                skipped.append({"path": str(rec_row.path), "reason": reason, "message": message})
            continue
        done[key] = i
        patches.append(cut.patch)
        scales.append(cut.scale)
        rows.append({"source": str(rec_row.source), "path": str(rec_row.path),
                     "harpnum": cut.ident[0], "t_rec": cut.ident[1], **cut.meta})
        if len(patches) == STREAM_CHUNK:
            flush_patches()
            if len(rows) >= TABLE_CHUNK:
                flush_rows()
    bar.close()
    n_records = len(records)
    if not done:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "manifest is empty"
        raise PatchError(f"no usable record among {n_records} in the manifest ({detail})")
    if patches:
        flush_patches()
    if rows:
        flush_rows()
    del done
    sc = np.concatenate(scale_chunks)
    harps = np.concatenate(harp_chunks)
    uniq, inv = np.unique(harps, return_inverse=True)
    split_of = assign_splits(uniq, cfg.split_fractions(), cfg.split_seed())
    split = np.asarray([split_of[int(h)] for h in uniq], dtype=object)
    row_split = split[inv]
    per_split = {
        s: {"patches": int((row_split == s).sum()), "harps": int((split == s).sum())}
        for s in SPLITS
    }
    summary = {
        "n_records": int(n_records),
        "n_patches": int(len(harps)),
        "n_skipped": int(n_skipped),
        "skipped": {r: int(reasons.get(r, 0)) for r in SKIP_REASONS},
        "skipped_records": skipped,
        "splits": per_split,
        "n_harps": int(uniq.size),
        "mode": cfg.mode,
        "size": int(cfg.size),
        "bin": int(cfg.bin),
        "clip_gauss": float(cfg.clip_gauss),
        "clipped_fraction": float(n_clipped / n_pixels),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Built(scales=sc, split_of=split_of, summary=summary)


#: the summary lists the first this many skipped records (all are counted and logged)
MAX_SKIPPED_LISTED = 200


def store_attrs(cfg: PatchConfig, table: pd.DataFrame, config_hash: str) -> dict:
    """Group attributes of the patch store (contract keys plus the nominal median scale);
    ``table``: the patch table or any frame with its ``SCALE_COLUMNS`` (one row per patch)."""
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
    ``zarr_path`` (the rest of the group is written here). ``table``: the patch table or any
    frame with its ``SCALE_COLUMNS`` (one row per patch)."""
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


class TableStream:
    """Writes the rows of the patch table as they come (DataFrames from :func:`_build`, without
    ``split``) to a Parquet part file, one row group per chunk, so the table is never whole in
    memory; :meth:`finish` then copies it, row group by row group, to the final file with each
    row's ``split`` inserted and the units / file metadata attached. The final file reads back
    (pandas, polars, pyarrow) exactly as the in-memory table of :func:`build_patches`. Used as a
    context manager, which removes the part file however the block ends."""

    def __init__(self, part_path: str | Path):
        self.part_path = Path(part_path)
        self._writer = None
        self._schema = None

    def append(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self._writer is None:
            self._schema = t.schema
            self._writer = pq.ParquetWriter(self.part_path, self._schema)
        self._writer.write_table(t)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TableStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.part_path.unlink(missing_ok=True)

    def finish(self, table_path: str | Path, split_of: Mapping[int, str], metadata: dict) -> None:
        """Write the final table to ``table_path`` (a temporary path of the caller)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .atomic import with_parquet_metadata

        self.close()
        part = pq.ParquetFile(self.part_path)
        writer = schema = None
        try:
            for i in range(part.num_row_groups):
                frame = with_split(part.read_row_group(i).to_pandas(), split_of)
                t = with_parquet_metadata(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), metadata)
                if writer is None:
                    schema = t.schema
                    writer = pq.ParquetWriter(table_path, schema)
                writer.write_table(t)
        finally:
            if writer is not None:
                writer.close()


def make_patches(records: pd.DataFrame, cfg: Mapping[str, Any] | PatchConfig, zarr_path, table_path,
                 summary_path, root: str | Path = ".", progress: bool = True, workers: int = 1) -> dict:
    """Build and write the patch store, table and summary; all three atomically (a failure at
    any point leaves none of them behind, nor any temporary). Patches and table rows are
    streamed to disk chunk by chunk (:class:`PatchStream`, :class:`TableStream`): memory does not
    grow with the number of records beyond ~100 bytes per patch. ``workers``: processes that read
    and cut the records (:func:`cut_records`; same outputs for any number). Returns the summary."""
    import json

    from .atomic import atomic_path
    from .config import section_hash

    pc = cfg if isinstance(cfg, PatchConfig) else PatchConfig.from_mapping(cfg)
    raw_cfg = dict(cfg) if not isinstance(cfg, PatchConfig) else pc.__dict__
    with atomic_path(zarr_path, suffix=".zarr") as tz, \
            atomic_path(table_path, suffix=".parquet") as tp, \
            atomic_path(summary_path, suffix=".json") as ts:
        # patches go to the (temporary) store as they are made, one chunk at a time, and the
        # table rows to a part file next to the temporary table
        stream = PatchStream(tz, pc.size, pc.clip_gauss)
        with TableStream(tp.with_name(tp.name + ".part")) as rows:
            built = _build(records, pc, root, progress, stream.append, rows.append, workers)
            scales = built.scale_frame()
            attrs = store_attrs(pc, scales, section_hash(raw_cfg))
            write_store(tz, stream, scales, attrs)
            rows.finish(tp, built.split_of, metadata={
                "patch_mode": pc.mode, "clip_gauss": float(pc.clip_gauss), "bin": int(pc.bin),
                "size": int(pc.size), "config_hash": attrs["config_hash"]})
        summary = built.summary
        ts.write_text(json.dumps(_json_clean(summary), indent=2, sort_keys=True, allow_nan=False) + "\n")
    logger.info("wrote %d patches (%s mode, %dx%d) from %d records, %d skipped %s",
                summary["n_patches"], pc.mode, pc.size, pc.size, summary["n_records"],
                summary["n_skipped"], {k: v for k, v in summary["skipped"].items() if v})
    return summary
