"""Atomic file writes: nothing half-written survives a crash; metadata other tools read back.

Every writer in sharpgen writes to a temporary sibling and renames it into place; a rename on
the same file system is atomic on POSIX, so readers see either the old file or the new one.
A full disk (or exhausted quota) surfaces as :class:`DiskFullError` naming the folder instead
of a bare ``[Errno 28]`` or torch's ``unexpected pos`` message.

Parquet tables carry the unit of every known column and sharpgen's file metadata
(:func:`with_parquet_metadata`); Zarr stores end with consolidated metadata
(:func:`consolidate_zarr`), so pandas, polars, pyarrow and xarray read them as they are.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

#: torch's zip writer reports a failed write (e.g. ENOSPC when writing to a path) only as text
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed")


class DiskFullError(OSError):
    """No space (or quota) left where a file was being written; the message names the folder.
    ``errno`` is ENOSPC or EDQUOT, ``filename`` the file being written."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _free_bytes(folder: Path) -> str:
    """Free space of the file system holding ``folder``, as text (``?`` if unknown)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "?"


def disk_full_error(path: str | os.PathLike, err: BaseException) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``err`` raised while writing ``path``, if ``err`` means the
    disk or quota is full (OSError ENOSPC/EDQUOT, or torch's zip-writer failure), else None."""
    if isinstance(err, DiskFullError):
        return None
    quota = isinstance(err, OSError) and err.errno == errno.EDQUOT
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    torch_write = isinstance(err, RuntimeError) and _TORCH_WRITE_FAILED.search(str(err))
    if not (quota or full or torch_write):
        return None
    path = Path(path)
    what = "disk quota exceeded" if quota else "no space left"
    new = DiskFullError(
        errno.EDQUOT if quota else errno.ENOSPC,
        f"{what} on {path.parent} while writing {path.name} (free now: "
        f"{_free_bytes(path.parent)}; {type(err).__name__}: {str(err)[:200]}); free some space "
        "or move the folder (results_dir / checkpoint_dir) to a larger file system, then rerun")
    new.filename = str(path)
    return new


@contextlib.contextmanager
def translate_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a disk-full error inside the block as :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        new = disk_full_error(path, err)
        if new is None:
            raise
        raise new from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Works for files and directories (e.g. a Zarr store). On any exception the temporary is
    removed and ``path`` is left untouched; a full disk is re-raised as :class:`DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the caller creates a file or a directory under this name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        new = disk_full_error(path, err)
        if new is None:
            raise
        raise new from err


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], Any],
                 suffix: str = "") -> None:
    """Call ``write(fh)`` on a binary file handle whose file becomes ``path`` atomically and
    durably (flushed and fsynced before the rename); a full disk raises :class:`DiskFullError`.

    Writers that name something after the file they write to -- ``torch.save`` names the zip
    archive inside a ``.pt`` file after it, which made identical weights saved through
    :func:`atomic_path`'s random temporary name differ in bytes -- get a handle instead
    (``sharpgen.training.write_torch``).
    """
    with atomic_path(path, suffix=suffix) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN written as null)."""

    def _clean(o: Any) -> Any:
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, dict):
            return {str(k): _clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [_clean(v) for v in o]
        if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:  # numpy scalar
            return _clean(o.item())
        return o

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Zarr and Parquet metadata: what other tools (xarray, pandas, polars, pyarrow) read back
# --------------------------------------------------------------------------------------------
def consolidate_zarr(path: str | os.PathLike) -> None:
    """Write consolidated metadata into the Zarr store at ``path`` (its last write), so
    ``xarray.open_zarr(path)`` opens it without its fallback warning. zarr warns that
    consolidated metadata is not in the v3 specification yet; other readers ignore it."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


#: units of table columns that are not parameters of the registry (sharpgen.parameters)
COLUMN_UNITS = {
    "pixel_size_mm": "Mm", "pixel_area_cm2": "cm2", "pixel_size_arcsec": "arcsec",
    "lon_fwt": "deg", "lat_fwt": "deg", "usflux_hdr": "Mx", "r_value_hdr": "log10 Mx (JSOC)",
    "nan_fraction": "1", "pad_fraction": "1", "t_rec": "TAI (JSOC T_REC string)", "t_rec_utc": "UTC",
}
#: column-name prefixes of tables that hold a parameter twice (matches.parquet)
_UNIT_PREFIXES = ("query_", "match_")
#: key of sharpgen's metadata in a Parquet file (JSON); pandas reads the same JSON from
#: PANDAS_ATTRS into ``DataFrame.attrs``
PARQUET_METADATA_KEY = "sharpgen"


def column_unit(name: str, mode: str | None = None) -> str | None:
    """Unit of a table column: the parameter registry's (image units in patches mode
    ``resize``), :data:`COLUMN_UNITS`, or None; ``query_<p>`` / ``match_<p>`` as ``<p>``."""
    from sharpgen.parameters import PARAMETERS, unit_of

    for prefix in ("", *_UNIT_PREFIXES):
        if prefix and not name.startswith(prefix):
            continue
        base = name[len(prefix):]
        if base in PARAMETERS:
            return unit_of(base, mode) if mode else PARAMETERS[base].unit
        if base in COLUMN_UNITS:
            return COLUMN_UNITS[base]
    return None


def with_parquet_metadata(table, metadata: dict | None = None):
    """The pyarrow Table ``table`` with units and file metadata attached.

    Each column with a known unit (:func:`column_unit`) gets field metadata ``unit``. The file
    metadata (key :data:`PARQUET_METADATA_KEY`, JSON, also as ``PANDAS_ATTRS`` so that
    ``pandas.read_parquet(...).attrs`` holds it; polars: ``polars.read_parquet_metadata``) has
    ``sharpgen_version``, ``units`` (column -> unit) and the keys of ``metadata`` (e.g.
    ``patch_mode``, ``clip_gauss``, ``config_hash``). Without a ``patch_mode`` the parameter
    units are the physical ones of crop mode, and ``units_note`` says so.
    """
    import pyarrow as pa

    from sharpgen import __version__

    meta = {k: v for k, v in (metadata or {}).items() if v is not None}
    mode = meta.get("patch_mode")
    units = {}
    fields = []
    for field in table.schema:
        unit = column_unit(field.name, mode)
        if unit is not None:
            units[field.name] = unit
            field = field.with_metadata({**(field.metadata or {}), b"unit": unit.encode()})
        fields.append(field)
    doc = {"sharpgen_version": __version__, **meta, "units": units}
    if not mode:
        doc["units_note"] = ("parameter units are physical in patches mode crop; in mode resize "
                             "they are image units (not physical)")
    text = json.dumps(_json_safe(doc), sort_keys=True)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta.update({PARQUET_METADATA_KEY.encode(): text.encode(), b"PANDAS_ATTRS": text.encode()})
    return table.cast(pa.schema(fields, metadata=schema_meta))


def _json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:  # numpy scalar
        return o.item()
    return o


def dataframe_to_parquet(df, file: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a pandas DataFrame (no index) to ``file`` as it is (not atomically: for a temporary
    path of :func:`atomic_path`), with units and file metadata (:func:`with_parquet_metadata`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(with_parquet_metadata(table, metadata), file)


def write_parquet(path: str | os.PathLike, df, metadata: dict | None = None) -> None:
    """Write a pandas DataFrame to Parquet atomically, with the unit of every known column and
    file metadata (:func:`with_parquet_metadata`; ``metadata``: e.g. ``patch_mode``,
    ``clip_gauss``, ``config_hash``)."""
    with atomic_path(path, suffix=".parquet") as tmp:
        dataframe_to_parquet(df, tmp, metadata)
