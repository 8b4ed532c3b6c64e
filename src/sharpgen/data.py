"""Data stage: the record manifest, local SHARP files, and loading + checking one record.

Every data source (``synthetic`` -> :mod:`sharpgen.synthetic`, ``jsoc`` -> :mod:`sharpgen.jsoc`,
``local`` -> :func:`local_manifest` here) writes the same manifest, ``results/data/records.tsv``
with the columns :data:`MANIFEST_COLUMNS` (one row per Br FITS file). Every file is then read by
:func:`load_record` (through :func:`sharpgen.sharp_io.read_sharp`), which refuses a record that
cannot be used with a :class:`SkipRecord` naming the file and the reason; the patch stage skips
such records and counts them per reason (:data:`SKIP_REASONS`).

Local ingest (:func:`local_manifest`):

* ``data.local.glob`` is one glob or a list of globs; relative patterns are taken from ``root``
  (the Snakemake working directory) and the manifest keeps them relative.
* HARPNUM and T_REC come from the JSOC file names
  (``hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.Br.fits``); other files are ignored with
  a log line. The patch stage checks the names against the headers (:func:`load_record`).
* The same record found twice (the same path matched by two globs, or a copy of a record in two
  folders) is listed once: rows are sorted by (harpnum, t_rec, path), the first path is kept and
  every dropped one is logged with the path kept in its place, as the JSOC path drops duplicate
  records of a query.
"""

from __future__ import annotations

import filecmp
import glob
import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

logger = logging.getLogger(__name__)

SERIES = "hmi.sharp_cea_720s"
MANIFEST_COLUMNS = ("path", "source", "harpnum", "t_rec")

#: reasons a record is skipped (keys of the patch summary's ``skipped``)
SKIP_REASONS = (
    "missing",          # file does not exist
    "not_fits",         # not a FITS file
    "wrong_series",     # not hmi.sharp_cea_720s (e.g. the CCD series hmi.sharp_720s)
    "wrong_segment",    # a segment other than Br
    "missing_segment",  # FITS file without image data
    "unreadable",       # corrupt or truncated FITS, or unusable header
    "name_mismatch",    # the header's HARPNUM / T_REC / segment contradict the file name
    "quality",          # QUALITY flags set (outside patches.quality_mask)
    "all_nan",          # no finite pixel
    "nan_fraction",     # NaN fraction above patches.max_nan_fraction
    "too_small",        # smaller than one bin, or crop padding above patches.max_pad_fraction
    "duplicate",        # a second file of a (HARPNUM, T_REC) that already gave a patch
)


class ManifestError(ValueError):
    """A record manifest cannot be read or written (message names the file and the problem)."""


class SkipRecord(Exception):
    """A record is unusable; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r} (known: {SKIP_REASONS})")
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------
def t_rec_from_name(name: dict) -> str:
    """T_REC string from a parsed JSOC file name (:func:`sharpgen.sharp_io.parse_name`)."""
    d, t = name["date"], name["time"]
    return f"{d[:4]}.{d[4:6]}.{d[6:]}_{t[:2]}:{t[2:4]}:{t[4:]}_TAI"


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``records.tsv``; ManifestError naming the file and the missing columns."""
    df = pd.read_csv(path, sep="\t", dtype={"path": str, "source": str, "t_rec": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing} (has {list(df.columns)})")
    return df


def _patterns(pattern: str | Sequence[str]) -> list[str]:
    pats = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    if not pats or not all(isinstance(p, (str, os.PathLike)) and str(p) for p in pats):
        raise ValueError(f"data.local.glob must be a glob or a non-empty list of globs, got {pattern!r}")
    return [str(p) for p in pats]


def local_manifest(pattern: str | Sequence[str], root: str | Path = ".") -> pd.DataFrame:
    """Manifest of the local SHARP Br files matching ``pattern`` (one glob or a list of globs;
    relative patterns are taken from ``root`` and kept relative in ``path``).

    HARPNUM and T_REC come from the JSOC file names; files whose name is not a SHARP Br name are
    ignored with a warning. A record matched twice (same (harpnum, t_rec)) is listed once: rows
    sorted by (harpnum, t_rec, path), the first path kept, each dropped path logged with the one
    kept and whether the contents are identical. Raises FileNotFoundError naming the pattern(s)
    when nothing matches.
    """
    from .sharp_io import parse_name

    root = Path(root)
    pats = _patterns(pattern)
    rows, seen = [], {}
    for pat in pats:
        absolute = os.path.isabs(pat)
        full = pat if absolute else str(root / pat)
        for f in sorted(glob.glob(full)):
            real = os.path.realpath(f)
            rel = f if absolute else os.path.relpath(f, root)
            if real in seen:
                logger.info("%s: already listed as %s (matched by more than one glob)", rel, seen[real])
                continue
            seen[real] = rel
            name = parse_name(f)
            if name is None or name["segment"] != "Br":
                logger.warning("ignoring %s: not a SHARP Br file name (<series>.<HARPNUM>."
                               "<YYYYMMDD_HHMMSS>_TAI.Br.fits)", rel)
                continue
            rows.append({"path": rel, "source": "local", "harpnum": int(name["harpnum"]),
                         "t_rec": t_rec_from_name(name), "abspath": f})
    if not rows:
        raise FileNotFoundError(
            f"data.local.glob {pats[0] if len(pats) == 1 else pats!r} matches no SHARP Br FITS file "
            f"(relative globs are taken from {root.resolve()}); point it at files named "
            "hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.Br.fits")
    df = pd.DataFrame(rows).sort_values(["harpnum", "t_rec", "path"], kind="stable")
    dup = df.duplicated(["harpnum", "t_rec"], keep="first")
    if dup.any():
        kept = df[~dup].set_index(["harpnum", "t_rec"])
        for r in df[dup].itertuples(index=False):
            k = kept.loc[(r.harpnum, r.t_rec)]
            same = filecmp.cmp(r.abspath, k["abspath"], shallow=False)
            logger.warning("dropping duplicate record HARP %d %s: %s (kept %s; %s)", r.harpnum, r.t_rec,
                           r.path, k["path"], "identical content" if same else "the contents DIFFER")
        logger.warning("dropped %d duplicate record(s) matched by data.local.glob", int(dup.sum()))
    df = df[~dup].drop(columns="abspath").reset_index(drop=True)
    logger.info("found %d local Br records of %d HARPs matching %s", len(df), df["harpnum"].nunique(),
                pats[0] if len(pats) == 1 else pats)
    return df.loc[:, list(MANIFEST_COLUMNS)]


# --------------------------------------------------------------------------------------------
# one record
# --------------------------------------------------------------------------------------------
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
    """Read and check one Br record; returns a :class:`sharpgen.sharp_io.SharpRecord` or raises
    :class:`SkipRecord` naming the file and the problem.

    Checks, in order: the file exists; the file name's series is hmi.sharp_cea_720s; the FITS file
    is a readable Br image (:func:`sharpgen.sharp_io.read_sharp`); the header's HARPNUM, T_REC and
    segment evidence agree with the file name (:func:`sharpgen.sharp_io.name_header_mismatches`);
    the map is CEA; ``QUALITY & ~quality_mask == 0``.
    """
    from .sharp_io import SharpReadError, name_header_mismatches, parse_name, read_sharp

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
    mismatches = name_header_mismatches(path, rec.header)
    if mismatches:
        raise SkipRecord("name_mismatch", f"{path}: file name and header disagree: " + "; ".join(mismatches))
    ctype = str(rec.header.get("CTYPE1", "CRLN-CEA")).strip().upper()
    if ctype != "CRLN-CEA":
        raise SkipRecord("wrong_series", f"{path}: CTYPE1={ctype!r}, not a CEA (CRLN-CEA) map")
    q = rec.header.get("QUALITY", 0)
    try:
        qi = int(q, 0) if isinstance(q, str) else int(q)
    except (TypeError, ValueError):
        raise SkipRecord("unreadable", f"{path}: QUALITY={q!r} is not an integer") from None
    if qi & ~int(quality_mask):
        raise SkipRecord("quality", f"{path}: QUALITY=0x{qi & 0xFFFFFFFF:08x} has flags outside mask "
                         f"0x{int(quality_mask):x}")
    return rec
