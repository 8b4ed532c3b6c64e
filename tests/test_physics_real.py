"""sharp_io + physics validated against JSOC's own numbers on real SHARP records (../shared/data)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from sharpgen.physics import PixelScale, compute_parameters, r_value
from sharpgen.sharp_io import (
    SharpReadError,
    find_segment,
    header_float,
    parse_name,
    read_sharp,
    sharp_mask,
)

R377 = "hmi.sharp_cea_720s.377.20110215_020000_TAI"
R6060_0 = "hmi.sharp_cea_720s.6060.20151030_000000_TAI"
R6060_12 = "hmi.sharp_cea_720s.6060.20151030_001200_TAI"


@pytest.fixture(scope="module")
def sharp_dir(shared_data):
    return shared_data / "sharp"


@pytest.fixture(scope="module")
def rec377(sharp_dir):
    return read_sharp(sharp_dir / f"{R377}.Br.fits")


def test_read_compressed_br(rec377):
    assert rec377.data.shape == (377, 744)
    assert rec377.data.dtype == np.float32
    assert rec377.harpnum == 377
    assert rec377.t_rec == "2011.02.15_02:00:00_TAI"
    assert rec377.noaa == 11158
    assert rec377.segment == "Br"
    assert np.nanmax(np.abs(rec377.data)) > 1000  # Gauss (BSCALE applied)
    # non-standard cards: lowercase exponent parsed, bare nan kept readable
    assert header_float(rec377.header, "USFLUX") == pytest.approx(2.71476e22)
    assert math.isnan(header_float(rec377.header, "R_VALUE"))


def test_read_uncompressed_bitmap(sharp_dir):
    rec = read_sharp(sharp_dir / f"{R377}.bitmap.fits", segment_check="bitmap")
    assert rec.data.shape == (377, 744)
    assert set(np.unique(rec.data)) <= {0, 1, 2, 33, 34}


def test_pixel_scale_from_header(rec377):
    h = rec377.header
    cdelt1_arcsec = math.degrees(math.atan(h["RSUN_REF"] * math.radians(h["CDELT1"]) / h["DSUN_OBS"])) * 3600
    area = cdelt1_arcsec**2 * (h["RSUN_REF"] / h["RSUN_OBS"]) ** 2 * 1e4
    assert rec377.scale.area_cm2 == pytest.approx(area, rel=1e-12)
    assert rec377.scale.size_arcsec == pytest.approx(cdelt1_arcsec, rel=1e-12)
    assert rec377.scale.size_mm == pytest.approx(cdelt1_arcsec * h["RSUN_REF"] / h["RSUN_OBS"] / 1e6, rel=1e-12)
    b2 = PixelScale.from_header(h, bin_factor=2)
    assert b2.size_mm == pytest.approx(2 * rec377.scale.size_mm)
    assert b2.area_cm2 == pytest.approx(4 * rec377.scale.area_cm2)


def test_usflux_and_cmask_reproduced(rec377):
    mask = sharp_mask(rec377.path)
    assert mask is not None and mask.shape == rec377.data.shape
    assert int((mask & np.isfinite(rec377.data)).sum()) == 45703  # CMASK
    tuf = compute_parameters(rec377.data, rec377.scale, mask=mask).tuf[0]
    usflux = header_float(rec377.header, "USFLUX")
    assert abs(tuf / usflux - 1) < 1e-5


# Regression values of our r_value, i.e. JSOC's C algorithm (sharp_functions.c computeR; see
# tests/test_r_value_jsoc.py for the match with JSOC's own R_VALUE keyword). They used to be the
# values of the published Python port (mbobra/SHARPs computeR: 4.607, 4.861, 2.708, 2.708), which
# is not JSOC's algorithm: it block-averages instead of point-sampling to ~2 arcsec, shifts the
# 3x3 box and reflects at the edges, does not truncate the Gaussian to 41 taps with zero padding,
# and uses |B| instead of C's integer abs().
@pytest.mark.parametrize(
    "name,segment,expected",
    [
        (R377, "magnetogram", 4.8256),
        (R377, "Br", 5.0212),
        (R6060_0, "Br", 2.4479),  # JSOC's LOS-based R_VALUE is 0.0 here
        (R6060_12, "Br", 2.4428),  # JSOC's LOS-based R_VALUE is 1.995
    ],
)
def test_r_value_regression_values(sharp_dir, name, segment, expected):
    rec = read_sharp(sharp_dir / f"{name}.{segment}.fits", segment_check=segment)
    got = r_value(rec.data, rec.scale)[0]
    assert abs(got - expected) < 5e-4
    assert compute_parameters(rec.data, rec.scale).r_value[0] == got


def test_find_segment_and_missing_mask(sharp_dir):
    br = sharp_dir / f"{R6060_0}.Br.fits"
    assert find_segment(br, "Bp") == sharp_dir / f"{R6060_0}.Bp.fits"
    assert find_segment(br, "bitmap") is None
    assert sharp_mask(br) is None
    assert parse_name(br)["harpnum"] == "6060"


def test_wrong_segment_and_corrupt_files(sharp_dir, tmp_path):
    with pytest.raises(SharpReadError, match=r"wrong segment 'Bp'.*expected 'Br'"):
        read_sharp(sharp_dir / f"{R6060_0}.Bp.fits")
    with pytest.raises(SharpReadError, match="file not found"):
        read_sharp(tmp_path / "nope.Br.fits")
    text = tmp_path / "hmi.sharp_cea_720s.1.20110101_000000_TAI.Br.fits"
    text.write_text("this is not FITS\n")
    with pytest.raises(SharpReadError, match=r"not a FITS file") as ei:
        read_sharp(text)
    assert str(text) in str(ei.value)
    src = sharp_dir / f"{R6060_0}.Br.fits"
    data = src.read_bytes()
    trunc = tmp_path / f"{R6060_0}.Br.fits"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(SharpReadError, match="truncated FITS file") as ei:
        read_sharp(trunc)
    assert str(trunc) in str(ei.value)
    header_only = tmp_path / "h" / f"{R6060_0}.Br.fits"
    header_only.parent.mkdir()
    header_only.write_bytes(data[:2880])  # primary header only, no image HDU
    with pytest.raises(SharpReadError, match=str(header_only.name)):
        read_sharp(header_only)
    # a mask sibling that is corrupt is reported, not silently ignored
    d = tmp_path / "m"
    d.mkdir()
    for seg in ("Br", "conf_disambig"):
        shutil.copy(sharp_dir / f"{R377}.{seg}.fits", d / f"{R377}.{seg}.fits")
    (d / f"{R377}.bitmap.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    with pytest.raises(SharpReadError, match="bitmap"):
        sharp_mask(d / f"{R377}.Br.fits")


def test_psep_robust_stable_on_real_region(rec377, rng):
    """Real HARP 377, binned 2x as in the patch store: added noise + small flux elements."""
    b = rec377.data.astype(np.float64)
    h, w = (b.shape[0] // 2) * 2, (b.shape[1] // 2) * 2
    b2 = np.nan_to_num(b[:h, :w]).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    sc = PixelScale.from_header(rec377.header, bin_factor=2)
    clean = compute_parameters(b2, sc).iloc[0]
    yy, xx = np.mgrid[: b2.shape[0], : b2.shape[1]]
    psep_d, rob_d = [], []
    for _ in range(4):
        noisy = b2 + rng.normal(0, 20.0, b2.shape)
        for _ in range(8):
            cy, cx = rng.uniform(0, b2.shape[0]), rng.uniform(0, b2.shape[1])
            noisy += rng.choice([-1, 1]) * 400.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
        got = compute_parameters(noisy, sc).iloc[0]
        psep_d.append(abs(got.psep / clean.psep - 1))
        rob_d.append(abs(got.psep_robust / clean.psep_robust - 1))
    assert np.median(rob_d) < 0.01
    assert np.median(psep_d) > 2 * np.median(rob_d)
