"""The JSOC record form of the synthetic data set (:mod:`sharpgen.synthetic` renders the maps).

Each synthetic record is written like a JSOC ``protocol=fits`` export of ``hmi.sharp_cea_720s``:
three segment files named ``hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.<segment>.fits``,

* ``Br``: empty primary HDU + RICE_1 tile-compressed int32 image, ``BSCALE = 0.01`` (Gauss);
* ``bitmap`` and ``conf_disambig``: RICE_1 int16 images (JSOC's values, emulated from Br by
  :mod:`sharpgen.harpmask`),

so that every keyword a real record carries is computed by the same code path: USFLUX and CMASK
over ``conf_disambig >= 70 & bitmap >= 30`` (:func:`sharpgen.sharp_io.sharp_mask`), AREA and
AREA_ACR from the bitmap, R_VALUE with JSOC's algorithm (:func:`sharpgen.rvalue.r_value`; JSOC
computes it on the line-of-sight ``magnetogram`` segment, which a synthetic record does not have:
here the synthetic Br stands in for it).

**Synthetic records can never pass for real ones.** Their headers say so (``TELESCOP =
'SYNTHETIC'``, ``INSTRUME = 'SHARPGEN_SYNTHETIC'``, ``ORIGIN = 'sharpgen.synthetic'``,
``CONTENT`` "... not an observation") and their identifiers lie far outside the real ranges:
HARPNUM from :data:`SYNTHETIC_HARPNUM_BASE` = 900,000 (JSOC numbers about 1,000 HARPs a year:
7,300 by 2018, ~14,000 by 2025, so 900,000 is centuries away; six digits, so it still fits
every int32 and the JSOC file-name pattern) and NOAA numbers from :data:`SYNTHETIC_NOAA_BASE`
= 90,000 (NOAA assigns ~300 a year and reached ~14,000 in 2025). :func:`is_synthetic` tells a
synthetic header from a real one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SERIES = "hmi.sharp_cea_720s"
CDELT_DEG = 0.03                   # CEA pixel, degrees of heliographic arc
RSUN_REF_M = 696_000_000.0         # JSOC RSUN_REF [m]
AU_M = 149_597_870_691.0           # JSOC DSUN_REF [m]
BLANK = -2147483648
BLANK16 = -32768
SYNTHETIC_HARPNUM_BASE = 900_000   #: synthetic HARPNUMs are > this (real ones: < ~15,000)
SYNTHETIC_NOAA_BASE = 90_000       #: synthetic NOAA numbers are > this (real ones: < ~15,000)
ORIGIN = "sharpgen.synthetic"
TELESCOP = "SYNTHETIC"
INSTRUME = "SHARPGEN_SYNTHETIC"
SEGMENTS = ("Br", "bitmap", "conf_disambig")


def is_synthetic(header: Any) -> bool:
    """True for the header of a synthetic record (ORIGIN / TELESCOP / INSTRUME say so, or the
    HARPNUM lies in the synthetic range); False for a JSOC record."""
    def text(key):
        try:
            return str(header.get(key, "")).strip().upper()
        except Exception:
            return ""

    if text("ORIGIN") == ORIGIN.upper() or text("TELESCOP").startswith(TELESCOP) \
            or text("INSTRUME") == INSTRUME:
        return True
    try:
        return int(header.get("HARPNUM", 0)) > SYNTHETIC_HARPNUM_BASE
    except (TypeError, ValueError):
        return False


def t_rec_string(t: datetime) -> str:
    """JSOC T_REC form, e.g. ``2011.02.15_02:00:00_TAI``."""
    return t.strftime("%Y.%m.%d_%H:%M:%S_TAI")


def sharp_filename(harpnum: int, t: datetime, segment: str = "Br") -> str:
    """``hmi.sharp_cea_720s.<HARPNUM>.<YYYYMMDD_HHMMSS>_TAI.<segment>.fits``."""
    return f"{SERIES}.{int(harpnum)}.{t.strftime('%Y%m%d_%H%M%S')}_TAI.{segment}.fits"


def record_keywords(data: np.ndarray, bitmap: np.ndarray, conf: np.ndarray, scale) -> dict:
    """JSOC's keywords of one record from its Br map [G] and segments, at ``scale``
    (:class:`sharpgen.physics.PixelScale` of the header): USFLUX [Mx] and CMASK over
    ``conf_disambig >= 70 & bitmap >= 30``, AREA / AREA_ACR [micro-hemispheres] of the HARP
    (bitmap >= 33) / its active pixels (34), R_VALUE (JSOC's algorithm, on Br)."""
    from .harpmask import ACTIVE_IN, QUIET_IN, micro_hemispheres, vector_mask
    from .rvalue import r_value

    mask = vector_mask(bitmap, conf)
    a = np.abs(np.asarray(data, dtype=np.float64))
    return {"USFLUX": float(np.nansum(a[mask]) * float(scale.area_cm2)),
            "CMASK": int(mask.sum()),
            "AREA": float(micro_hemispheres(np.count_nonzero(bitmap >= QUIET_IN), CDELT_DEG)),
            "AREA_ACR": float(micro_hemispheres(np.count_nonzero(bitmap == ACTIVE_IN), CDELT_DEG)),
            "R_VALUE": float(r_value(data, scale)[0])}


_KEY_COMMENTS = {
    "USFLUX": "[Mx] conf_disambig>=70 & bitmap>=30",
    "CMASK": "pixels of the USFLUX mask",
    "AREA": "[uHem] HARP, bitmap>=33",
    "AREA_ACR": "[uHem] active HARP pixels, bitmap=34",
    "R_VALUE": "computeR on Br (no LOS segment)",
}


def sharp_header(reg: pd.Series, data: np.ndarray, t: datetime, meta: dict,
                 bitmap: np.ndarray | None = None, conf: np.ndarray | None = None):
    """JSOC-like header for one synthetic Br record; with its ``bitmap`` and ``conf`` segments
    also the keywords of :func:`record_keywords`."""
    from astropy.io import fits

    from .physics import PixelScale

    ny, nx = data.shape
    crln_obs = meta["crln_obs_deg"]
    crpix1, crpix2 = (nx + 1) / 2.0, (ny + 1) / 2.0
    crval1 = (crln_obs + meta["lon_deg"]) % 360.0
    crval2 = float(reg.lat_deg)
    a = np.abs(np.nan_to_num(data))
    yy, xx = np.indices(data.shape)
    w = np.where(a > 100.0, a, 0.0)
    tot = w.sum() or 1.0
    x_fwt = (w * xx).sum() / tot + 1.0
    y_fwt = (w * yy).sum() / tot + 1.0
    pos = np.nan_to_num(data) > 100.0
    neg = np.nan_to_num(data) < -100.0
    h = fits.Header()
    h["DATE"] = (t + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S")
    h["DATE-OBS"] = (t - timedelta(seconds=108)).strftime("%Y-%m-%dT%H:%M:%S.00")
    h["T_OBS"] = t_rec_string(t - timedelta(seconds=6))
    h["T_REC"] = t_rec_string(t)
    h["TRECEPOC"] = "1993.01.01_00:00:00_TAI"
    h["TRECSTEP"] = 720.0
    h["TRECUNIT"] = "secs"
    h["CADENCE"] = 720.0
    h["CTYPE1"] = "CRLN-CEA"
    h["CTYPE2"] = "CRLT-CEA"
    h["CRPIX1"] = crpix1
    h["CRPIX2"] = crpix2
    h["CRVAL1"] = round(crval1, 6)
    h["CRVAL2"] = round(crval2, 6)
    h["CDELT1"] = CDELT_DEG
    h["CDELT2"] = CDELT_DEG
    h["CUNIT1"] = "degree"
    h["CUNIT2"] = "degree"
    h["CROTA2"] = 0.0
    h["WCSNAME"] = "Carrington Heliographic"
    h["DSUN_OBS"] = round(meta["dsun_m"], 2)
    h["DSUN_REF"] = AU_M
    h["RSUN_REF"] = RSUN_REF_M
    h["CRLN_OBS"] = round(crln_obs, 6)
    h["CRLT_OBS"] = round(meta["b0_deg"], 6)
    h["CAR_ROT"] = meta["car_rot"]
    h["RSUN_OBS"] = round(meta["rsun_arcsec"], 6)
    h["TELESCOP"] = (TELESCOP, "not SDO/HMI: synthetic record")
    h["INSTRUME"] = (INSTRUME, "rendered by sharpgen.synthetic")
    h["WAVELNTH"] = 6173.0
    h["QUALITY"] = 0
    h["BUNIT"] = "Mx/cm^2"
    h["ORIGIN"] = ORIGIN
    h["CONTENT"] = "synthetic SHARP-like Br (not an observation)"
    h["HARPNUM"] = (int(reg.harpnum), "synthetic, not a JSOC HARP")
    h["LAT_FWT"] = round(crval2 + (y_fwt - crpix2) * CDELT_DEG, 6)
    h["LON_FWT"] = round(meta["lon_deg"] + (x_fwt - crpix1) * CDELT_DEG, 6)
    for key, m in (("POS", pos), ("NE", neg)):
        wk = a * m
        tk = wk.sum() or 1.0
        h[f"LATFWT{key[:2]}"] = round(crval2 + ((wk * yy).sum() / tk + 1 - crpix2) * CDELT_DEG, 6)
        h[f"LONFWT{key[:2]}"] = round(meta["lon_deg"] + ((wk * xx).sum() / tk + 1 - crpix1) * CDELT_DEG, 6)
    h["NOAA_AR"] = int(reg.noaa)
    h["NOAA_NUM"] = int(reg.noaa > 0)
    h["NOAA_ARS"] = str(int(reg.noaa)) if reg.noaa > 0 else ""
    if bitmap is not None and conf is not None:
        for key, value in record_keywords(data, bitmap, conf, PixelScale.from_header(h)).items():
            h[key] = (value, _KEY_COMMENTS[key])
    h["SYN_FLUX"] = (float(reg.flux_mx), "synthetic: catalogue total unsigned flux [Mx]")
    h["SYN_TILT"] = (float(reg.tilt_deg), "synthetic: Joy tilt [deg], + = lead equatorward")
    h["SYN_SEP"] = (float(reg.sep_mm), "synthetic: bipole separation [Mm]")
    h["SYN_LEAD"] = (int(reg.lead_sign), "synthetic: leading polarity sign")
    h["SYN_DLTA"] = (int(reg.delta), "synthetic: 0 simple, 1 delta spot, 2 colliding")
    if "age" in reg:
        h["SYN_AGE"] = (round(float(reg.age), 4), "synthetic: 0 emerged .. 1 decayed")
    return h


def write_sharp_fits(path: str | Path, data: np.ndarray, header) -> None:
    """Write ``data`` [G] like a JSOC export: empty primary HDU + RICE_1 CompImageHDU of int32
    with BSCALE 0.01 (NaN stored as BLANK), one tile per row. Written atomically."""
    from astropy.io import fits

    from .atomic import atomic_path

    data = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(data)
    q = np.where(finite, np.round(np.where(finite, data, 0.0) / 0.01), BLANK)
    q = np.clip(q, BLANK, 2**31 - 1).astype(np.int32)
    hdu = fits.CompImageHDU(data=q, header=header, compression_type="RICE_1",
                            tile_shape=(1, data.shape[1]))
    hdu.header["BSCALE"] = 0.01
    hdu.header["BZERO"] = 0.0
    hdu.header["BLANK"] = BLANK
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)


#: keywords a segment file carries: identity, provenance and what the pixel scale needs
SEGMENT_KEYS = ("T_REC", "HARPNUM", "NOAA_AR", "QUALITY", "CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2",
                "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CUNIT1", "CUNIT2", "DSUN_OBS", "RSUN_REF",
                "RSUN_OBS", "CRLN_OBS", "CRLT_OBS", "LON_FWT", "LAT_FWT", "TELESCOP", "INSTRUME",
                "ORIGIN", "CONTENT")


def write_segment_fits(path: str | Path, values: np.ndarray, header) -> None:
    """Write an integer segment (``bitmap``, ``conf_disambig``) like JSOC: empty primary HDU +
    RICE_1 CompImageHDU of int16 (BLANK -32768, 64-row tiles) with the record's identity,
    geometry and provenance keywords (:data:`SEGMENT_KEYS`) and an empty BUNIT. Atomic."""
    from astropy.io import fits

    from .atomic import atomic_path

    h = fits.Header([header.cards[k] for k in SEGMENT_KEYS if k in header])
    h["BUNIT"] = ""
    values = np.asarray(values, dtype=np.int16)
    hdu = fits.CompImageHDU(data=values, header=h, compression_type="RICE_1",
                            tile_shape=(min(64, values.shape[0]), values.shape[1]))
    hdu.header["BLANK"] = BLANK16
    with atomic_path(path, suffix=".fits") as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)


def write_record(out_dir: str | Path, reg: pd.Series, data: np.ndarray, t: datetime,
                 meta: dict) -> Path:
    """Write the three segment files of one synthetic record (Br, bitmap, conf_disambig) into
    ``out_dir``; returns the Br path. ``meta`` is :func:`sharpgen.synthetic.render_region`'s
    (``mu`` sets the line-of-sight proxy of the activity mask)."""
    from .harpmask import bitmap as make_bitmap, conf_disambig

    bitmap = make_bitmap(data, max(float(meta.get("mu", 1.0)), 0.0))
    conf = conf_disambig(data)
    header = sharp_header(reg, data, t, meta, bitmap, conf)
    out = Path(out_dir)
    br = out / sharp_filename(reg.harpnum, t, "Br")
    write_sharp_fits(br, data, header)
    write_segment_fits(out / sharp_filename(reg.harpnum, t, "bitmap"), bitmap, header)
    write_segment_fits(out / sharp_filename(reg.harpnum, t, "conf_disambig"), conf, header)
    return br
