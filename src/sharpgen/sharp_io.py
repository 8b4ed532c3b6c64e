"""Reading SDO/HMI SHARP CEA FITS records (series ``hmi.sharp_cea_720s``).

JSOC ``protocol=fits`` exports hold an empty primary HDU plus a RICE_1 tile-compressed image HDU
(int32 scaled by BSCALE 0.01 for the field segments, unit Mx/cm^2 = Gauss); a few segments (e.g.
the HARP 377 ``bitmap`` of the reference data) are plain uncompressed primary-HDU images. Headers
carry non-standard cards (lowercase exponents such as ``2.714760e+22``, bare ``nan`` values) that
astropy refuses to parse; :func:`read_sharp` repairs them card by card instead of crashing.

File names follow the JSOC convention ``<series>.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.<segment>.fits``;
:func:`find_segment` uses it to find sibling segments (``bitmap``, ``conf_disambig``, ...).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from sharpgen.physics import PixelScale

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# <series>.<harpnum>.<date>_<time>_TAI.<segment>.fits
_NAME_RE = re.compile(
    r"^(?P<series>.+?)\.(?P<harpnum>\d+)\.(?P<date>\d{8})_(?P<time>\d{6})_TAI\.(?P<segment>[A-Za-z_]+)\.fits$"
)

#: SHARP mask thresholds used by JSOC for the vector-field keywords (USFLUX, CMASK, ...).
CONF_DISAMBIG_MIN = 70
BITMAP_MIN = 30


class SharpReadError(ValueError):
    """A SHARP FITS file could not be read; the message names the file and the problem."""


@dataclass
class SharpRecord:
    """One SHARP segment image.

    Attributes
    ----------
    path : the file read.
    data : (H, W) float32 image in the segment's unit (Gauss for Br/Bp/Bt/magnetogram), NaN kept.
    header : astropy Header with the JSOC keywords (non-standard cards repaired).
    harpnum, t_rec, noaa : record identity (``noaa`` is NOAA_AR, or None when absent/0).
    scale : :class:`sharpgen.physics.PixelScale` from the header (JSOC formula).
    segment : segment name (from the file name, else the header's SEGMENT/CONTENT, else None).
    """

    path: Path
    data: np.ndarray
    header: fits.Header
    harpnum: int
    t_rec: str
    noaa: int | None
    scale: PixelScale
    segment: str | None = None


def parse_name(path: str | Path) -> dict | None:
    """Split a JSOC SHARP file name into series, harpnum, date, time, segment (None if it does not match)."""
    m = _NAME_RE.match(Path(path).name)
    return m.groupdict() if m else None


#: segments whose values are magnetic field in Gauss (JSOC BUNIT 'Mx/cm^2')
FIELD_SEGMENTS = ("Br", "Bp", "Bt", "Br_err", "Bp_err", "Bt_err", "magnetogram")
_FIELD_UNITS = {"mx/cm^2", "mx/cm**2", "mx/cm2", "gauss", "g"}
_T_REC_RE = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})_(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:_TAI)?$")


def name_header_mismatches(path: str | Path, header: fits.Header) -> list[str]:
    """Where a JSOC file name (``<series>.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.<segment>.fits``)
    contradicts the file's header; [] when they agree or the name is not a JSOC name.

    Compared: HARPNUM; T_REC (to the second); the segment, where the header tells it: an explicit
    ``SEGMENT`` keyword, and ``BUNIT``, which for a field segment (Br, Bp, Bt, ..., magnetogram)
    must be a field unit (a bitmap, conf_disambig, continuum or Dopplergram file carries '', 'DN/s'
    or 'cm/s'). JSOC headers do not name the segment and Br, Bp and Bt share BUNIT, so a Bp file of
    the *same* record renamed ``.Br.fits`` cannot be told from the header alone; one of another
    HARP or time is caught by HARPNUM / T_REC. Keywords missing from the header are not compared.
    """
    name = parse_name(path)
    if name is None:
        return []
    out = []
    h = header.get("HARPNUM")
    if h is not None:
        try:
            hn = int(h)
        except (TypeError, ValueError):
            out.append(f"header HARPNUM {h!r} is not an integer (file name: {int(name['harpnum'])})")
        else:
            if hn != int(name["harpnum"]):
                out.append(f"header HARPNUM {hn} != file name's {int(name['harpnum'])}")
    t = header.get("T_REC")
    if t is not None:
        m = _T_REC_RE.match(str(t).strip())
        want = name["date"] + name["time"]
        if m is None:
            out.append(f"header T_REC {t!r} is not a JSOC time (file name: {name['date']}_{name['time']}_TAI)")
        elif "".join(m.groups()) != want:
            out.append(f"header T_REC {str(t).strip()} != file name's {name['date']}_{name['time']}_TAI")
    seg = header.get("SEGMENT")
    if isinstance(seg, str) and seg.strip() and seg.strip() != name["segment"]:
        out.append(f"header SEGMENT {seg.strip()!r} != file name's {name['segment']!r}")
    unit = header.get("BUNIT")
    if name["segment"] in FIELD_SEGMENTS and unit is not None \
            and str(unit).strip().lower() not in _FIELD_UNITS:
        out.append(f"header BUNIT {str(unit).strip()!r} is not a magnetic field unit, so this is not "
                   f"a {name['segment']} file (bitmap/conf_disambig: '', continuum: 'DN/s', "
                   "Dopplergram: 'cm/s')")
    return out


def _parse_raw_value(raw: str):
    """Parse the value field of a card astropy could not parse (``nan``, ``2.7e+22``, ``'x'``)."""
    text = raw.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        return text[1:end].rstrip() if end > 0 else text[1:].rstrip()
    text = text.split("/", 1)[0].strip()
    low = text.lower()
    if low in ("nan", "+nan", "-nan"):
        return float("nan")
    if low in ("inf", "+inf", "infinity"):
        return float("inf")
    if low in ("-inf", "-infinity"):
        return float("-inf")
    if low == "t":
        return True
    if low == "f":
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(low.replace("d", "e"))
    except ValueError:
        return text


def clean_header(header: fits.Header) -> fits.Header:
    """Return a copy of ``header`` in which every card has a parseable value.

    Cards that astropy cannot parse (JSOC writes e.g. ``R_VALUE = nan``) are re-created from
    their raw text and other numbers are parsed leniently. Non-finite values are stored as the
    strings ``'nan'``/``'inf'`` (astropy cannot hold NaN floats): read numbers with
    :func:`header_float`. COMMENT and HISTORY cards are dropped; VerifyWarnings are suppressed.
    """
    out = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        for card in header.cards:
            key = card.keyword
            if key in ("", "COMMENT", "HISTORY"):
                continue
            try:
                value = card.value
                comment = card.comment
            except Exception:  # astropy VerifyError for non-standard values
                image = card._image if getattr(card, "_image", None) else card.image
                body = image[10:] if len(image) > 10 and image[8:10] == "= " else image.split("=", 1)[-1]
                value = _parse_raw_value(body)
                comment = ""
            if isinstance(value, float) and not math.isfinite(value):
                # FITS headers cannot hold NaN/inf floats: keep the JSOC text ("nan");
                # header_float() turns it back into a float.
                value = repr(value)
            try:
                out[key] = (value, comment)
            except Exception:  # a value astropy still refuses: keep it as text
                out[key] = (str(value), comment)
    return out


def header_float(header: fits.Header, key: str, default: float = float("nan")) -> float:
    """Header value as float; NaN/``default`` when missing or not numeric."""
    try:
        v = header.get(key, default)
    except Exception:
        return default
    if v is None:
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _short(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of an exception."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"


def _damage_message(caught, size: int) -> str | None:
    """Problem reported by astropy's warnings while opening (truncation, broken header), if any."""
    for w in caught:
        msg = str(w.message)
        if "truncated" in msg:
            return f"truncated FITS file ({msg.splitlines()[0]})"
        if "Error validating header" in msg or "Header size is not" in msg or "Header missing END" in msg:
            first = " ".join(line.strip() for line in msg.splitlines()[:3])
            hint = "" if size % 2880 == 0 else f"; file size {size} is not a multiple of 2880, truncated?"
            return f"corrupt or truncated FITS header ({first}{hint})"
    return None


def _image_hdu(hdul: fits.HDUList, path: Path):
    """First HDU that holds image data (compressed image HDU or a primary image)."""
    for hdu in hdul:
        if isinstance(hdu, (fits.CompImageHDU, fits.ImageHDU, fits.PrimaryHDU)) and hdu.header.get("NAXIS", 0) >= 2:
            return hdu
    raise SharpReadError(f"{path}: no image data in any HDU (found {len(hdul)} HDU(s) without a 2-D image)")


def read_sharp(path: str | Path, segment_check: str | None = "Br") -> SharpRecord:
    """Read one SHARP CEA segment file.

    Parameters
    ----------
    path : FITS file (RICE tile-compressed or plain).
    segment_check : expected segment name (compared with the file name's segment, case-sensitive
        as JSOC names them, e.g. "Br"); None to accept any segment.

    Returns
    -------
    SharpRecord with ``data`` (H, W) float32 (NaN kept) and the repaired header.

    Raises
    ------
    SharpReadError naming the file and the problem (missing, not FITS, truncated/corrupt, no image
    data, wrong segment, 1-D/empty image).
    """
    path = Path(path)
    if not path.exists():
        raise SharpReadError(f"{path}: file not found")
    if not path.is_file():
        raise SharpReadError(f"{path}: not a regular file")
    name = parse_name(path)
    if segment_check is not None and name is not None and name["segment"] != segment_check:
        raise SharpReadError(
            f"{path}: wrong segment {name['segment']!r} (expected {segment_check!r})"
        )
    with open(path, "rb") as fh:
        magic = fh.read(30)
    if not magic.startswith(b"SIMPLE  ="):
        raise SharpReadError(f"{path}: not a FITS file (does not start with a SIMPLE card)")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                damaged = _damage_message(caught, size)
                if damaged:
                    raise SharpReadError(f"{path}: {damaged}")
                hdu = _image_hdu(hdul, path)
                raw_header = hdu.header
                data = hdu.data
                if data is None:
                    raise SharpReadError(f"{path}: image HDU has no data")
                data = np.array(data, dtype=np.float32, copy=True)
                damaged = _damage_message(caught, size)
                if damaged:
                    raise SharpReadError(f"{path}: {damaged}")
                header = clean_header(raw_header)
    except SharpReadError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise SharpReadError(f"{path}: corrupt or truncated FITS file ({_short(exc)})") from exc
    except Exception as exc:  # astropy raises assorted errors on damaged tiles
        raise SharpReadError(f"{path}: unreadable FITS file ({_short(exc)})") from exc
    if data.ndim != 2 or data.size == 0:
        raise SharpReadError(f"{path}: expected a 2-D image, got shape {data.shape}")

    seg = name["segment"] if name else None
    if seg is None:
        for key in ("SEGMENT", "CONTENT"):
            v = header.get(key)
            if isinstance(v, str) and v:
                seg = v
                break
    harpnum = header.get("HARPNUM")
    if harpnum is None and name is not None:
        harpnum = int(name["harpnum"])
    t_rec = header.get("T_REC")
    if not t_rec and name is not None:
        d, t = name["date"], name["time"]
        t_rec = f"{d[:4]}.{d[4:6]}.{d[6:]}_{t[:2]}:{t[2:4]}:{t[4:]}_TAI"
    noaa_v = header_float(header, "NOAA_AR")
    noaa = int(noaa_v) if math.isfinite(noaa_v) and noaa_v > 0 else None
    try:
        scale = PixelScale.from_header(header)
    except (KeyError, ValueError) as exc:
        raise SharpReadError(f"{path}: cannot derive the pixel scale ({exc})") from exc
    return SharpRecord(
        path=path,
        data=data,
        header=header,
        harpnum=int(harpnum) if harpnum is not None else -1,
        t_rec=str(t_rec) if t_rec else "",
        noaa=noaa,
        scale=scale,
        segment=seg,
    )


def find_segment(br_path: str | Path, segment: str) -> Path | None:
    """Sibling file of ``br_path`` holding ``segment`` (JSOC naming), or None if absent."""
    br_path = Path(br_path)
    name = parse_name(br_path)
    if name is None:
        return None
    cand = br_path.with_name(
        f"{name['series']}.{name['harpnum']}.{name['date']}_{name['time']}_TAI.{segment}.fits"
    )
    return cand if cand.is_file() else None


def sharp_mask(br_path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """JSOC's vector-keyword pixel mask ``conf_disambig >= 70 & bitmap >= 30`` for ``br_path``.

    Returns a (H, W) bool array, or None when either sibling file is missing. Raises
    SharpReadError when a sibling is unreadable, when the two siblings' shapes differ, or when
    ``shape`` (the Br image's) is given and the mask's differs from it.
    """
    conf_p = find_segment(br_path, "conf_disambig")
    bit_p = find_segment(br_path, "bitmap")
    if conf_p is None or bit_p is None:
        return None
    conf = read_sharp(conf_p, segment_check="conf_disambig").data
    bitmap = read_sharp(bit_p, segment_check="bitmap").data
    if conf.shape != bitmap.shape:
        raise SharpReadError(f"{br_path}: conf_disambig shape {conf.shape} != bitmap shape {bitmap.shape}")
    if shape is not None and conf.shape != tuple(shape):
        raise SharpReadError(f"{br_path}: mask shape {conf.shape} != image shape {tuple(shape)}")
    with np.errstate(invalid="ignore"):
        return (conf >= CONF_DISAMBIG_MIN) & (bitmap >= BITMAP_MIN)


def t_rec_to_utc(t_rec) -> pd.Series:
    """JSOC T_REC strings (``YYYY.MM.DD_hh:mm:ss_TAI``, :func:`sharpgen.config.parse_tai`) ->
    UTC timestamps (datetime64[ns, UTC]); TAI - UTC (34 s in 2010, 35 s from 2012-07, 36 s from
    2015-07, 37 s from 2017) comes from astropy's leap-second table; an instant inside a leap
    second (23:59:60.x UTC) becomes 00:00:00.x of the next day. A value that is not a TAI time
    gives NaT (logged once with the count)."""
    import pandas as pd
    from astropy.time import Time

    from sharpgen.config import parse_tai

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
