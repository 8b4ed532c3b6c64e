"""The one reader of the patch store (``patches.zarr`` + ``patches.parquet``) and of image stores.

The patch store written by the patches stage (:mod:`sharpgen.patches`) is a Zarr group with

* ``patches``: (N, S, S) float32 in [-1, 1] (Br / clip_gauss),
* ``pixel_size_mm``, ``pixel_area_cm2``, ``pixel_size_arcsec``: (N,) float64 per-patch scale,
* attributes ``clip_gauss``, ``mode`` (crop | resize), ``size``, ``n``, ``config_hash`` and the
  nominal (median) pixel scale, the scale at which generated images are measured,

and a Parquet table with one row per patch, in order (``row == 0..N-1``), holding the record's
metadata, its ``split`` (train / val / test, HARP-disjoint) and its parameters.

:class:`PatchStore` opens both lazily and is what every stage uses to select a split, read
patches (in store units or in Gauss) and get their pixel scale. :func:`read_rows` reads rows of
any (N, S, S) Zarr array (also ``generated.zarr``'s ``images``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sharpgen.physics import PixelScale

#: split names that stand for several splits: the patches neither network was trained on
SPLIT_ALIASES = {"heldout": ("val", "test")}
SCALE_ARRAYS = ("pixel_size_mm", "pixel_area_cm2", "pixel_size_arcsec")


class StoreError(ValueError):
    """A missing, empty, inconsistent or corrupt store; the message names it and the problem."""


def split_names(split: str | Sequence[str]) -> tuple[str, ...] | None:
    """'all' -> None (every row); 'heldout' -> ('val', 'test'); 'val+test' or a list -> names."""
    if isinstance(split, str):
        if split == "all":
            return None
        if split in SPLIT_ALIASES:
            return SPLIT_ALIASES[split]
        return tuple(s for s in split.split("+") if s)
    return tuple(split)


def read_rows(arr, rows=None) -> np.ndarray:
    """Rows ``rows`` (int array in any order, repeats allowed; None = all) of a Zarr (N, ...)
    array as float32 (len(rows), ...), reading each chunk once."""
    if rows is None:
        return np.asarray(arr[...], dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if rows.size == 0:
        return np.empty((0, *arr.shape[1:]), dtype=np.float32)
    check_rows(rows, arr.shape[0], "the store's")
    uniq, inv = np.unique(rows, return_inverse=True)
    sel = (uniq,) + (slice(None),) * (arr.ndim - 1)
    return np.asarray(arr.get_orthogonal_selection(sel), dtype=np.float32)[inv]


def check_rows(rows: np.ndarray, n: int, where: str) -> None:
    """StoreError naming the first offending row when an int array ``rows`` reaches outside
    0..n-1 of ``where`` (e.g. "the store's")."""
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise StoreError(f"row {int(rows.max()) if rows.max() >= n else int(rows.min())} is outside {where} {n} rows")


def open_group(path: str | os.PathLike, array: str, what: str = "image store"):
    """Zarr group at ``path`` that must hold ``array``; StoreError naming the path otherwise."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{what} {path} does not exist")
    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises many types for damaged stores
        raise StoreError(f"{what} {path} is unreadable or corrupt: {type(err).__name__}: {err}") from err
    if array not in g:
        raise StoreError(f"{what} {path} has no {array!r} array")
    return g


@dataclass
class PatchStore:
    """Lazy view of ``patches.zarr`` (+ ``patches.parquet`` when ``table_path`` is given)."""

    zarr_path: Path
    table_path: Path | None = None
    _group: Any = field(default=None, repr=False)
    _columns: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, zarr_path: str | os.PathLike, table_path: str | os.PathLike | None = None) -> "PatchStore":
        """Open and check the structure: (N, S, S) ``patches`` with N > 0, and a table with one
        row per patch in order. Raises :class:`StoreError` naming the store."""
        st = cls(Path(zarr_path), None if table_path is None else Path(table_path))
        st._group = open_group(st.zarr_path, "patches", what="patch store")
        arr = st.array
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise StoreError(f"patch store {st.zarr_path}: 'patches' has shape {arr.shape}, expected (N, S, S)")
        if arr.shape[0] == 0:
            raise StoreError(f"patch store {st.zarr_path} is empty (0 patches)")
        if st.table_path is not None:
            # only the row count and the ``row`` column are read here: the whole table (strings
            # and all) is loaded only by :attr:`table`, for the stages that need every column
            n_rows = st._table_file().metadata.num_rows
            row = st.column("row") if "row" in st.table_columns else None
            if n_rows != arr.shape[0] or (row is not None and not np.array_equal(row, np.arange(n_rows))):
                raise StoreError(f"patch table {st.table_path} ({n_rows} rows) does not match patch store "
                                 f"{st.zarr_path} ({arr.shape[0]} patches, rows 0..N-1 in order)")
        return st

    # ---- metadata --------------------------------------------------------------------------
    @property
    def array(self):
        return self._group["patches"]

    @cached_property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def size(self) -> int:
        return int(self.array.shape[1])

    @property
    def clip_gauss(self) -> float:
        if "clip_gauss" not in self.attrs:
            raise StoreError(f"patch store {self.zarr_path} has no 'clip_gauss' attribute")
        return float(self.attrs["clip_gauss"])

    @property
    def mode(self) -> str:
        return str(self.attrs.get("mode", "crop"))

    @property
    def data_id(self) -> str:
        """The config hash the store was made with (identifies the training data)."""
        return str(self.attrs.get("config_hash", ""))

    @cached_property
    def table(self) -> pd.DataFrame:
        """The whole patch table (every column; the stages that select rows or need one column
        use :meth:`rows` / :meth:`column`, which read only what they need)."""
        self._table_file()
        try:
            return pd.read_parquet(self.table_path)
        except Exception as err:
            raise StoreError(f"patch table {self.table_path} is unreadable: {type(err).__name__}: {err}") from err

    def _table_file(self):
        """The table as a ``pyarrow.parquet.ParquetFile`` (footer read, no column data)."""
        import pyarrow.parquet as pq

        if self.table_path is None:
            raise StoreError(f"patch store {self.zarr_path} was opened without its patches.parquet table")
        if not self.table_path.exists():
            raise StoreError(f"patch table {self.table_path} does not exist")
        try:
            return pq.ParquetFile(self.table_path)
        except Exception as err:
            raise StoreError(f"patch table {self.table_path} is unreadable: {type(err).__name__}: {err}") from err

    @cached_property
    def table_columns(self) -> tuple[str, ...]:
        """Column names of the patch table (from its schema; no data read)."""
        return tuple(self._table_file().schema_arrow.names)

    def column(self, name: str) -> np.ndarray:
        """One column of the patch table as a numpy array (N,) (cached), read alone, without
        loading the whole table: a string column comes as a fixed-width ``str`` array decoded
        from Parquet's dictionary (``split``: 20 bytes per row, no Python string per row), other
        columns with the dtype ``table[name].to_numpy()`` would have. StoreError naming the table
        when the column is missing."""
        if name in self._columns:
            return self._columns[name]
        if name not in self.table_columns:
            raise StoreError(f"patch table {self.table_path} has no {name!r} column")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            field = self._table_file().schema_arrow.field(name)
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                col = pq.read_table(self.table_path, columns=[name], read_dictionary=[name]).column(0)
                col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
                if col.null_count:
                    arr = col.to_pandas().astype(object).to_numpy()
                else:
                    arr = np.asarray(col.dictionary.to_pylist(), dtype=str)[col.indices.to_numpy()]
            else:
                arr = pq.read_table(self.table_path, columns=[name]).to_pandas()[name].to_numpy()
        except Exception as err:
            raise StoreError(f"patch table {self.table_path} is unreadable: {type(err).__name__}: {err}") from err
        self._columns[name] = arr
        return arr

    def partial_table(self, columns: Sequence[str]) -> pd.DataFrame:
        """The patch table with only those of ``columns`` it has (in that order, repeats dropped),
        read alone: what the evaluation stages hold instead of the whole table (whose per-record
        strings -- file paths, times -- are most of its memory)."""
        if "table" in self.__dict__:
            t = self.__dict__["table"]
            return t[[c for c in dict.fromkeys(columns) if c in t.columns]].copy()
        return self._arrow_frame([c for c in dict.fromkeys(columns) if c in self.table_columns])

    def _arrow_frame(self, columns: Sequence[str] | None, rows: np.ndarray | None = None) -> pd.DataFrame:
        """``columns`` (None = all) of the table read in Arrow, ``rows`` (None = all) of them
        converted to pandas; StoreError naming the table when it cannot be read."""
        import pyarrow.parquet as pq

        self._table_file()
        try:
            t = pq.read_table(self.table_path, columns=None if columns is None else list(columns))
            return (t if rows is None else t.take(rows)).to_pandas()
        except Exception as err:
            raise StoreError(f"patch table {self.table_path} is unreadable: {type(err).__name__}: {err}") from err

    def table_rows(self, rows, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows ``rows`` (int array, in that order) of the patch table as a DataFrame with a
        fresh 0..n-1 index, like ``table.iloc[rows].reset_index(drop=True)`` but without building
        the whole table in pandas: the columns are read in Arrow (compact) and only the selected
        rows are converted. ``columns``: a subset (default all)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if "table" in self.__dict__:
            t = self.__dict__["table"]
            return t.iloc[rows][list(columns) if columns is not None else t.columns].reset_index(drop=True)
        check_rows(rows, self.n, f"the patch table {self.table_path}'s")
        missing = [c for c in (columns or ()) if c not in self.table_columns]
        if missing:
            raise StoreError(f"patch table {self.table_path} has no {missing} column(s)")
        return self._arrow_frame(columns, rows)

    # ---- selection -------------------------------------------------------------------------
    def rows(self, split: str | Sequence[str] = "all") -> np.ndarray:
        """Sorted int64 row indices of ``split`` ('all', a split name, 'heldout' = val + test,
        'val+test', or a list of names). StoreError naming the split when it selects nothing."""
        names = split_names(split)
        if names is None:
            return np.arange(self.n, dtype=np.int64)
        rows = np.flatnonzero(np.isin(self.split_labels(), names)).astype(np.int64)
        if rows.size == 0:
            raise StoreError(f"patch table {self.table_path} has no rows with split in {list(names)}")
        return rows

    def split_labels(self) -> np.ndarray:
        """(N,) str array of each row's split (``train`` / ``val`` / ``test``), read from the
        table's ``split`` column alone (:meth:`column`)."""
        return self.column("split")

    # ---- data ------------------------------------------------------------------------------
    def read(self, rows=None, *, gauss: bool = False, check: bool = False) -> np.ndarray:
        """Patches ``rows`` (None = all) as float32 (n, S, S): store units ([-1, 1]) or Gauss.
        ``check``: refuse non-finite values or values outside [-1, 1] (training inputs)."""
        try:
            data = read_rows(self.array, rows)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError(f"patch store {self.zarr_path} is unreadable or corrupt: "
                             f"{type(err).__name__}: {err}") from err
        if check and data.size:
            if not np.isfinite(data).all():
                raise StoreError(f"patch store {self.zarr_path} contains NaN/inf values")
            if np.abs(data).max() > 1.0 + 1e-6:
                raise StoreError(f"patch store {self.zarr_path} has values outside [-1, 1] "
                                 f"(max |x| = {np.abs(data).max():.3g})")
        return data * np.float32(self.clip_gauss) if gauss else data

    def iter_read(self, rows=None, chunk: int = 1024, *, gauss: bool = False):
        """Patches ``rows`` (None = all) as consecutive float32 blocks (<= ``chunk``, S, S) in
        that order (:meth:`read` of each slice of ``rows``): a pass over many patches holds one
        block (64 MB of 128x128 patches at the default chunk), whatever their number."""
        rows = np.arange(self.n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
        chunk = max(1, int(chunk))
        for lo in range(0, len(rows), chunk):
            yield self.read(rows[lo: lo + chunk], gauss=gauss)

    def scale(self, rows=None) -> PixelScale:
        """Per-patch :class:`PixelScale` ((n,) float64 arrays) of ``rows`` (None = all)."""
        g = self._group
        missing = [k for k in SCALE_ARRAYS if k not in g]
        if missing:
            raise StoreError(f"patch store {self.zarr_path} has no {missing} arrays")
        idx = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        return PixelScale(*(np.asarray(g[k][...], dtype=np.float64)[idx] for k in SCALE_ARRAYS))

    @property
    def nominal_scale(self) -> PixelScale:
        """The median per-patch scale from the attrs: the scale generated images are measured at
        (in crop mode all patches share it up to the Sun-Earth distance)."""
        try:
            return PixelScale(size_mm=float(self.attrs["pixel_size_mm"]),
                              area_cm2=float(self.attrs["pixel_area_cm2"]),
                              size_arcsec=float(self.attrs["pixel_size_arcsec"]))
        except KeyError as exc:
            raise StoreError(f"patch store {self.zarr_path}: attrs lack {exc} "
                             "(written by an older sharpgen? rerun the patches stage)") from None

    @property
    def physical_pixel_mm(self) -> float | None:
        """Median pixel side [Mm] in crop mode; None in resize mode (not physical)."""
        if self.mode != "crop" or "pixel_size_mm" not in self._group:
            return None
        return float(np.nanmedian(np.asarray(self._group["pixel_size_mm"][...], dtype=float)))


def read_images(zarr_path: str | os.PathLike, rows=None, array: str = "images") -> np.ndarray:
    """Rows of an image store such as ``generated.zarr`` (array ``images``) as float32."""
    return read_rows(open_group(zarr_path, array)[array], rows)


def image_store_attrs(zarr_path: str | os.PathLike, array: str = "images") -> dict:
    """Attributes of an image store (e.g. ``clip_gauss``, ``n``, ``size``)."""
    return dict(open_group(zarr_path, array).attrs)


def image_count(zarr_path: str | os.PathLike, array: str = "images") -> int:
    return int(open_group(zarr_path, array)[array].shape[0])
