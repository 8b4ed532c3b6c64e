"""Outputs other tools open correctly (issue 15.2): the FITS of `sharpgen generate` is a
Carrington map for sunpy, the Zarr stores open in xarray in Gauss, and the Parquet tables carry
units and metadata that pandas, polars and pyarrow read back."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from sharpgen import __version__
from sharpgen.directions import generate as gen
from sharpgen.measure import MeasurementContext, measure
from sharpgen.parameters import PARAMETER_NAMES, PARAMETERS
from sharpgen.physics import PixelScale

S = 32
LONG_UNIT = "image units (patches mode 'resize': not physical), a string longer than one FITS card"


def bipole(size=S, amp=0.8):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    g = lambda x0: np.exp(-((xx - x0) ** 2 + (yy - size / 2) ** 2) / (2 * (size / 10) ** 2))  # noqa: E731
    return np.clip(amp * (g(size * 0.35) - g(size * 0.65)), -1, 1).astype(np.float32)


def fake_result(ctx: MeasurementContext, unit="Mx"):
    """What generate_request returns, for an image whose measurement is real."""
    image = bipole(ctx.size)
    measured = measure(image[None], ctx).iloc[0].to_dict()
    z = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    return {"key": "tuf|r_value", "image": image, "z_base": z, "z": z + 0.5, "eps": 0.5,
            "achieved": measured["tuf"], "rel_error": 0.01, "measured": measured, "unit": unit,
            "mode": ctx.mode}


def crop_ctx(bin_=8, size=S):
    return MeasurementContext(1000.0, "crop", size, PixelScale.cea(0.03, bin_factor=bin_))


def write(tmp_path, ctx, name="gen.fits", unit="Mx", generator="gan/generator.pt"):
    path = tmp_path / name
    res = fake_result(ctx, unit)
    gen.write_generated_fits(path, res, seed=3, target="tuf", value=res["achieved"], hold=["r_value"],
                             clip_gauss=ctx.clip_gauss, measurement=ctx.to_dict(), generator_path=generator)
    return path, res


# ------------------------------------------------------------------------------------ FITS


def test_generated_fits_is_a_carrington_map_for_sunpy(tmp_path):
    sunpy_map = pytest.importorskip("sunpy.map", reason="sunpy.map needs sunpy[map] (reproject)")
    import astropy.units as u
    from astropy.time import Time
    from sunpy.coordinates import HeliographicCarrington

    ctx = crop_ctx(bin_=8)
    path, res = write(tmp_path, ctx)
    m = sunpy_map.Map(path)
    assert isinstance(m, sunpy_map.GenericMap)  # one map: the LATENT table is not an image
    assert isinstance(m.coordinate_frame, HeliographicCarrington)
    assert m.scale.axis1.to_value(u.deg / u.pix) == pytest.approx(0.24)
    assert m.scale.axis2.to_value(u.deg / u.pix) == pytest.approx(0.24)
    assert m.spatial_units == (u.deg, u.deg)
    assert m.unit == u.G
    assert m.dimensions.x == S * u.pix and m.dimensions.y == S * u.pix
    np.testing.assert_array_equal(m.data, np.float32(1000.0) * res["image"])
    # nominal date and position: central meridian, equator, Earth as observer
    assert m.date == Time("2011-12-31T23:59:26", scale="utc")  # T_REC 2012.01.01_00:00:00_TAI - 34 s
    assert m.reference_coordinate.lon.to_value(u.deg) == pytest.approx(gen.NOMINAL_CRLN_OBS)
    assert m.reference_coordinate.lat.to_value(u.deg) == pytest.approx(0.0)
    assert m.rsun_meters == 696_000_000 * u.m
    hgs = m.observer_coordinate
    assert abs(hgs.lon.to_value(u.deg)) < 0.01 and hgs.lat.to_value(u.deg) == pytest.approx(gen.NOMINAL_CRLT_OBS)
    # the centre of the patch is (L0, 0); one pixel east is 0.24 deg of Carrington longitude
    c = m.pixel_to_world((S - 1) / 2 * u.pix, (S - 1) / 2 * u.pix)
    e = m.pixel_to_world(((S - 1) / 2 + 1) * u.pix, (S - 1) / 2 * u.pix)
    assert c.lon.to_value(u.deg) == pytest.approx(gen.NOMINAL_CRLN_OBS, abs=1e-9)
    assert (e.lon - c.lon).to_value(u.deg) == pytest.approx(0.24, rel=1e-9)
    assert m.meta["telescop"] == "sharpgen" and m.meta["origin"] == f"sharpgen {__version__}"


def test_nominal_observer_is_earth_at_the_nominal_date():
    pytest.importorskip("sunpy.coordinates")
    from astropy.time import Time
    from sunpy.coordinates import sun

    from sharpgen.config import parse_tai

    t = Time(parse_tai(gen.NOMINAL_T_REC), scale="tai")
    assert sun.L0(t).deg == pytest.approx(gen.NOMINAL_CRLN_OBS, abs=1e-5)
    assert sun.B0(t).deg == pytest.approx(gen.NOMINAL_CRLT_OBS, abs=1e-5)


def test_generated_fits_header_strings_and_pixel_scale(tmp_path):
    from astropy.io import fits

    ctx = crop_ctx(bin_=8)
    deep = tmp_path / ("a_folder_name_long_enough_" * 3) / "generator.pt"
    path, res = write(tmp_path, ctx, unit=LONG_UNIT, generator=str(deep))
    with fits.open(path) as hdul:
        h = hdul[0].header
        assert h["UNIT"] == LONG_UNIT  # CONTINUE cards, no truncation at 60 characters
        assert h["GENERATR"] == str(deep.resolve()) and len(h["GENERATR"]) > 68
        assert h["CTYPE1"] == "CRLN-CEA" and h["CTYPE2"] == "CRLT-CEA" and h["BUNIT"] == "G"
        assert h["CDELT1"] == pytest.approx(0.24) and h["CRPIX1"] == (S + 1) / 2
        assert h["T_REC"] == gen.NOMINAL_T_REC and h["DATE-OBS"].startswith("2011-12-31T23:59:26")
        # JSOC's pixel-scale formula on this header gives the measurement's scale back exactly
        back = PixelScale.from_header(h)
        for name in ("size_mm", "area_cm2", "size_arcsec"):
            assert getattr(back, name) == pytest.approx(getattr(ctx.scale, name), rel=1e-12)
        hdul.verify("exception")  # a valid FITS file


def test_sharpgen_params_measures_the_generated_file_as_generate_did(tmp_path, capsys):
    """`sharpgen params` reads the pixel scale from the WCS keywords and gets the values
    `generate` recorded (HIERARCH MEAS) -- every parameter, r_value's arcsec binning included."""
    from astropy.io import fits

    from sharpgen import cli

    ctx = crop_ctx(bin_=8)
    path, _ = write(tmp_path, ctx)
    assert cli.main(["params", str(path), "--format", "json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)["records"]
    assert rec["segment"] == "Br" and rec["t_rec"] == gen.NOMINAL_T_REC
    h = fits.getheader(path)
    for name in PARAMETER_NAMES:
        want = h[f"HIERARCH MEAS {name.upper()}"]
        if want == "nan":
            assert rec[name] is None
        else:
            assert rec[name] == pytest.approx(want, rel=1e-5, abs=1e-9), name


def test_resize_mode_fits_says_the_scale_is_not_physical(tmp_path):
    from astropy.io import fits

    native = PixelScale.cea(0.03)
    lin = 7.3  # a record squeezed by 7.3 per side (geometric mean)
    ctx = MeasurementContext(1000.0, "resize", S, PixelScale(size_mm=native.size_mm * lin,
                                                             area_cm2=native.area_cm2 * lin * lin * 1.2,
                                                             size_arcsec=native.size_arcsec * lin))
    path, _ = write(tmp_path, ctx)
    h = fits.getheader(path)
    comments = " ".join(str(c) for c in h["COMMENT"])
    assert "resize mode" in comments and "NOT physical" in comments
    assert h["CDELT1"] == pytest.approx(0.03 * lin, rel=1e-4)
    assert h["UNITMODE"] == "resize"


# ------------------------------------------------------------------------------------ Zarr + Parquet


def tai_minus_utc(t: pd.Timestamp) -> int:
    """TAI - UTC in seconds, 2009-2020 (IERS Bulletin C: leap seconds at the ends of June 2012,
    June 2015 and December 2016)."""
    return 34 + sum(t >= pd.Timestamp(d) for d in ("2012-07-01 00:00:35", "2015-07-01 00:00:36",
                                                   "2017-01-01 00:00:37"))


@pytest.fixture(scope="module")
def patch_outputs(tmp_path_factory):
    """patches.zarr / patches.parquet made by make_patches from synthetic records."""
    from sharpgen import patches, synthetic

    d = tmp_path_factory.mktemp("interop")
    records = synthetic.synthesize(d / "syn", n_regions=4, frames_per_region=2, seed=2, progress=False)
    cfg = {"mode": "crop", "size": 32, "bin": 8, "clip_gauss": 1000.0, "max_nan_fraction": 0.5,
           "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0}}
    patches.make_patches(records, cfg, d / "patches.zarr", d / "patches.parquet", d / "summary.json",
                         progress=False)
    return d


def test_patch_store_opens_in_xarray_in_gauss(patch_outputs):
    xr = pytest.importorskip("xarray")
    from sharpgen.store import PatchStore

    store = PatchStore.open(patch_outputs / "patches.zarr", patch_outputs / "patches.parquet")
    raw = store.read(np.arange(store.n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata" fallback warning either
        ds = xr.open_zarr(patch_outputs / "patches.zarr")
    assert ds["patches"].dims == ("patch", "y", "x")
    assert ds["patches"].attrs["units"] == "G"
    np.testing.assert_allclose(ds["patches"].values, 1000.0 * raw.astype(np.float64), rtol=1e-7)
    assert np.abs(ds["patches"].values).max() <= 1000.0
    for name, unit in (("pixel_size_mm", "Mm"), ("pixel_area_cm2", "cm2"), ("pixel_size_arcsec", "arcsec")):
        assert ds[name].dims == ("patch",) and ds[name].attrs["units"] == unit
    assert ds.attrs["clip_gauss"] == 1000.0 and ds.attrs["mode"] == "crop"
    assert ds.sizes["patch"] == store.n and raw.min() >= -1 and raw.max() <= 1  # raw readers unchanged


def test_generated_store_opens_in_xarray_in_gauss(tmp_path):
    xr = pytest.importorskip("xarray")
    from sharpgen.sampling import write_images
    from sharpgen.store import open_group

    images = np.stack([bipole(), -bipole(amp=0.5)])
    write_images(tmp_path / "generated.zarr", images, {"clip_gauss": 500.0, "seed": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(tmp_path / "generated.zarr")
    assert ds["images"].dims == ("sample", "y", "x") and ds["images"].attrs["units"] == "G"
    np.testing.assert_allclose(ds["images"].values, 500.0 * images, rtol=1e-7)
    np.testing.assert_array_equal(open_group(tmp_path / "generated.zarr", "images")["images"][...], images)


def test_patches_parquet_units_metadata_and_utc_time(patch_outputs):
    pl = pytest.importorskip("polars")
    import pyarrow.parquet as pq

    path = patch_outputs / "patches.parquet"
    df = pd.read_parquet(path)
    meta = df.attrs  # pandas restores sharpgen's metadata from PANDAS_ATTRS
    assert meta["sharpgen_version"] == __version__
    assert meta["patch_mode"] == "crop" and meta["clip_gauss"] == 1000.0 and meta["bin"] == 8
    assert meta["config_hash"] and "units_note" not in meta
    assert meta["units"]["tuf"] == "Mx" and meta["units"]["psep"] == "Mm"
    assert meta["units"]["pixel_area_cm2"] == "cm2" and meta["units"]["t_rec_utc"] == "UTC"
    # UTC beside the JSOC TAI string; the synthetic records span 2011-2016, three leap seconds
    assert str(df["t_rec_utc"].dtype) == "datetime64[ns, UTC]"
    assert list(df.columns).index("t_rec_utc") == list(df.columns).index("t_rec") + 1
    tai = pd.to_datetime(df["t_rec"].str.replace("_TAI", ""), format="%Y.%m.%d_%H:%M:%S")
    assert tai.dt.year.nunique() >= 3
    want = [tai_minus_utc(t) for t in tai]
    assert ((tai - df["t_rec_utc"].dt.tz_localize(None)).dt.total_seconds() == want).all()
    # polars: the same JSON in the file metadata, a tz-aware datetime column
    pmeta = json.loads(pl.read_parquet_metadata(path)["sharpgen"])
    assert pmeta == meta
    pdf = pl.read_parquet(path)
    assert pdf.schema["t_rec_utc"] == pl.Datetime("ns", "UTC")
    assert pdf["t_rec_utc"].to_list()[0].isoformat() == df["t_rec_utc"][0].isoformat()
    # pyarrow: the unit on the field itself
    schema = pq.read_schema(path)
    for name in PARAMETER_NAMES:
        assert schema.field(name).metadata[b"unit"].decode() == PARAMETERS[name].unit


def test_latents_parquet_units_and_metadata(tmp_path):
    pl = pytest.importorskip("polars")
    from sharpgen.sampling import read_latents, write_latents

    ctx = crop_ctx()
    images = np.stack([bipole(), bipole(amp=0.4)])
    z = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    params = measure(images, ctx)
    write_latents(tmp_path / "latents.parquet", z, params, {"patch_mode": "resize", "clip_gauss": 1000.0,
                                                             "patches_config_hash": "abc"})
    z2, table = read_latents(tmp_path / "latents.parquet")
    np.testing.assert_array_equal(z2, z)
    df = pd.read_parquet(tmp_path / "latents.parquet")
    assert df.attrs["patch_mode"] == "resize" and df.attrs["patches_config_hash"] == "abc"
    assert df.attrs["units"]["tuf"].startswith("image units")  # resize mode: not physical
    pmeta = json.loads(pl.read_parquet_metadata(tmp_path / "latents.parquet")["sharpgen"])
    assert pmeta["units"] == df.attrs["units"] and set(PARAMETER_NAMES) <= set(pmeta["units"])


def test_write_parquet_units_of_match_tables_without_a_mode(tmp_path):
    """traversals.parquet / matches.parquet go through write_parquet: query_<p> and match_<p>
    columns get <p>'s unit; without a patch mode the note says which mode the units are for."""
    pl = pytest.importorskip("polars")
    from sharpgen.atomic import write_parquet

    df = pd.DataFrame({"query_tuf": [1e21], "match_tuf": [2e21], "match_t_rec": ["2011.01.01_00:00:00_TAI"],
                       "method": ["simsiam"], "psep": [12.0]})
    write_parquet(tmp_path / "m.parquet", df)
    back = pd.read_parquet(tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(back, df)
    units = back.attrs["units"]
    assert units == {"query_tuf": "Mx", "match_tuf": "Mx", "psep": "Mm", "match_t_rec": "TAI (JSOC T_REC string)"}
    assert "crop" in back.attrs["units_note"]
    assert json.loads(pl.read_parquet_metadata(tmp_path / "m.parquet")["sharpgen"])["units"] == units


@pytest.mark.parametrize("t_rec, offset_s", [
    ("2010.06.01_00:00:00_TAI", 34), ("2012.07.01_00:00:33_TAI", 34), ("2012.07.01_00:00:36_TAI", 35),
    ("2015.07.01_00:12:00_TAI", 36), ("2016.12.31_23:00:00_TAI", 36), ("2017.01.01_00:12:00_TAI", 37),
])
def test_t_rec_to_utc_follows_the_leap_seconds(t_rec, offset_s):
    from sharpgen.sharp_io import t_rec_to_utc

    (utc,) = t_rec_to_utc([t_rec])
    tai = pd.to_datetime(t_rec[:-4], format="%Y.%m.%d_%H:%M:%S")
    assert (tai - utc.tz_localize(None)).total_seconds() == offset_s == tai_minus_utc(tai)


def test_t_rec_to_utc_inside_a_leap_second():
    """2012-06-30 23:59:60 UTC has no datetime64; it becomes the start of the next second."""
    from sharpgen.sharp_io import t_rec_to_utc

    out = t_rec_to_utc(["2012.07.01_00:00:34_TAI", "2012.07.01_00:00:34.5_TAI", "2012.07.01_00:00:35_TAI"])
    assert list(out) == [pd.Timestamp("2012-07-01 00:00:00", tz="UTC"),
                         pd.Timestamp("2012-07-01 00:00:00.5", tz="UTC"),
                         pd.Timestamp("2012-07-01 00:00:00", tz="UTC")]


def test_t_rec_to_utc_leaves_bad_values_empty():
    from sharpgen.sharp_io import t_rec_to_utc

    out = t_rec_to_utc(pd.Series(["x", "2011.02.15_02:00:00_TAI"], index=[5, 7]))
    assert list(out.index) == [5, 7] and pd.isna(out[5])
    assert out[7] == pd.Timestamp("2011-02-15 01:59:26", tz="UTC")
    assert math.isclose(out.astype("int64")[7] / 1e9 % 60, 26.0)
