"""Synthetic SHARP-like records: reproducibility, solar-physics statistics, FITS form, realism."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from astropy.io import fits

from sharpgen import realism, synthetic
from sharpgen.physics import PixelScale, compute_parameters
from sharpgen.sharp_io import parse_name, read_sharp


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """6 regions x 2 frames written to disk, with their catalogue."""
    out = tmp_path_factory.mktemp("syn")
    manifest = synthetic.synthesize(out, n_regions=6, frames_per_region=2, seed=3, progress=False)
    return out, manifest, synthetic.region_catalogue(6, 3)


@pytest.fixture(scope="module")
def big_catalogue():
    return synthetic.region_catalogue(3000, seed=11)


def test_same_seed_gives_identical_files(tmp_path, small_set):
    out, manifest, _ = small_set
    again = synthetic.synthesize(tmp_path / "b", n_regions=6, frames_per_region=2, seed=3, progress=False)
    assert [p.rsplit("/", 1)[1] for p in manifest.path] == [p.rsplit("/", 1)[1] for p in again.path]
    for a, b in zip(manifest.path, again.path):
        assert open(a, "rb").read() == open(b, "rb").read(), f"{a} differs between two runs"
    pooled = synthetic.synthesize(tmp_path / "p", n_regions=6, frames_per_region=2, seed=3, progress=False,
                                  workers=2)
    for a, b in zip(manifest.path, pooled.path):
        assert open(a, "rb").read() == open(b, "rb").read(), f"{b} differs when written by 2 workers"
    other = synthetic.synthesize(tmp_path / "c", n_regions=6, frames_per_region=2, seed=4, progress=False)
    assert not np.array_equal(read_sharp(other.path[0]).data[:50, :50], read_sharp(manifest.path[0]).data[:50, :50])


def test_manifest_and_file_names(small_set):
    out, manifest, cat = small_set
    assert list(manifest.columns) == ["path", "source", "harpnum", "t_rec"]
    assert len(manifest) == 12 and set(manifest.source) == {"synthetic"}
    assert manifest.harpnum.nunique() == 6
    for row in manifest.itertuples():
        name = parse_name(row.path)
        assert name is not None and name["series"] == "hmi.sharp_cea_720s" and name["segment"] == "Br"
        assert int(name["harpnum"]) == row.harpnum
        # T_REC on the 720 s grid
        t = datetime.strptime(row.t_rec, "%Y.%m.%d_%H:%M:%S_TAI")
        assert (t.minute * 60 + t.second) % 720 == 0


def test_fits_form_and_round_trip(small_set):
    out, manifest, cat = small_set
    path = manifest.path[0]
    with fits.open(path, disable_image_compression=True) as raw:
        assert raw[0].header["NAXIS"] == 0
        h = raw[1].header
        assert h["ZCMPTYPE"] == "RICE_1" and h["ZBITPIX"] == 32 and h["BSCALE"] == 0.01
    rec = read_sharp(path)
    reg = cat[cat.harpnum == rec.harpnum].iloc[0]
    assert rec.data.shape == (reg.ny, reg.nx)
    assert 120 <= rec.data.shape[0] <= 420 and 160 <= rec.data.shape[1] <= 760
    hdr = rec.header
    for key, val in {"CTYPE1": "CRLN-CEA", "CTYPE2": "CRLT-CEA", "CDELT1": 0.03, "CDELT2": 0.03,
                     "CUNIT1": "degree", "RSUN_REF": 696000000.0, "QUALITY": 0, "BUNIT": "Mx/cm^2"}.items():
        assert hdr[key] == val, key
    assert rec.t_rec == manifest.t_rec[0]
    assert (rec.noaa or 0) == reg.noaa
    assert np.isfinite(rec.data).all() and rec.data.dtype == np.float32
    # header USFLUX is what synthetic.unsigned_flux gives on the stored data
    assert hdr["USFLUX"] == pytest.approx(synthetic.unsigned_flux(rec.data.astype(np.float64)), rel=1e-4)
    # pixel area: JSOC formula on the header within 4 % of the nominal 1 AU CEA pixel
    assert rec.scale.area_cm2 == pytest.approx(PixelScale.cea().area_cm2, rel=0.04)
    assert hdr["RSUN_OBS"] == pytest.approx(np.degrees(np.arcsin(696e6 / hdr["DSUN_OBS"])) * 3600, rel=1e-6)


def test_observer_distance_follows_the_year():
    jan = synthetic.observer_geometry(datetime(2013, 1, 3))
    jul = synthetic.observer_geometry(datetime(2013, 7, 4))
    assert jan["dsun_m"] == pytest.approx(1.471e11, rel=2e-3)
    assert jul["dsun_m"] == pytest.approx(1.521e11, rel=2e-3)
    assert jan["rsun_arcsec"] > 970 > 950 > jul["rsun_arcsec"]


def test_catalogue_flux_separation_and_delta_fraction(big_catalogue):
    cat = big_catalogue
    assert cat.harpnum.is_unique and cat.harpnum.is_monotonic_increasing
    # fluxes are drawn as log10 and clipped to [20, 23]; 10**23 need not round-trip exactly
    # (numpy 2.4.6's vectorised pow gives 1.0000000000000001e+23), so compare in log space
    assert np.log10(cat.flux_mx).between(20.0 - 1e-9, 23.0 + 1e-9).all()
    logf = np.log10(cat.flux_mx)
    assert 21.2 < logf.median() < 21.9
    assert np.corrcoef(logf, np.log10(cat.sep_mm))[0, 1] > 0.8
    assert 0.14 <= (cat.delta > 0).mean() <= 0.22
    assert (cat.lon0_deg.abs() <= 60).all()


def test_catalogue_hale_and_joy(big_catalogue):
    cat = big_catalogue
    north = cat.lat_deg > 0
    hale = np.where(north, -1, 1)  # cycle 24: negative leads in the north
    assert 0.9 <= (cat.lead_sign == hale).mean() <= 0.98
    # Joy's law: mean tilt ~ 0.5 |lat|, positive (leading polarity equatorward)
    slope = np.polyfit(cat.lat_deg.abs(), cat.tilt_deg, 1)[0]
    assert 0.3 < slope < 0.7
    assert cat.tilt_deg.mean() > 3


def test_rendered_regions_obey_hale_and_joy():
    """Measure lead polarity and tilt on the rendered images of simple, large regions."""
    cat = synthetic.region_catalogue(150, seed=5)
    sel = cat[(cat.delta == 0) & (cat.flux_mx > 3e21)].head(14)
    assert len(sel) >= 10
    lead, tilt, lat = [], [], []
    for _, reg in sel.iterrows():
        data, _, _ = synthetic.render_region(reg, 1, seed=5)[0]
        p = compute_parameters(data, PixelScale.cea()).iloc[0]
        lead.append(p.lead_sign == reg.lead_sign)
        # measured tilt is from +x toward north; Joy's tilt (equatorward lead) is + in the north... flipped
        expected = reg.tilt_deg if reg.lat_deg < 0 else -reg.tilt_deg
        tilt.append((p.tilt_deg, expected))
    assert np.mean(lead) >= 0.85
    meas, exp = np.array(tilt).T
    assert np.corrcoef(meas, exp)[0, 1] > 0.6


def test_flux_of_rendered_regions_tracks_catalogue():
    cat = synthetic.region_catalogue(40, seed=2)
    ratios = []
    for _, reg in cat.iloc[::5].iterrows():
        data, _, _ = synthetic.render_region(reg, 1, seed=2)[0]
        ratios.append(synthetic.unsigned_flux(data) / reg.flux_mx)
        assert np.abs(data).max() < 3000.0
    assert 0.7 < np.median(ratios) < 1.3


def test_frames_evolve_slowly():
    reg = synthetic.region_catalogue(20, seed=8).iloc[7]
    frames = synthetic.render_region(reg, 3, seed=8)
    a, b = frames[0][0], frames[1][0]
    strong = np.abs(a) > 500
    assert np.corrcoef(a[strong], b[strong])[0, 1] > 0.9
    assert not np.array_equal(a, b)
    assert frames[1][1] > frames[0][1]


@pytest.fixture(scope="module")
def realism_numbers(shared_data, tmp_path_factory):
    real = sorted((shared_data / "sharp").glob("hmi.sharp_cea_720s.*.Br.fits"))
    out = tmp_path_factory.mktemp("realism")
    manifest = synthetic.synthesize(out, n_regions=40, frames_per_region=1, seed=0, progress=False)
    return realism.realism_stats(real), realism.realism_stats(manifest.path)


def test_noise_and_histogram_match_real(realism_numbers):
    rs, ss = realism_numbers
    # weak-field std (noise + network) and pixel-to-pixel noise, real: 20-27 G and 9-14 G
    assert 0.7 * rs.weak_sigma.min() < ss.weak_sigma.median() < 1.3 * rs.weak_sigma.max()
    assert 0.7 * rs.pixel_sigma.min() < ss.pixel_sigma.median() < 1.3 * rs.pixel_sigma.max()
    # fraction of pixels above 100 G and 1000 G
    assert 0.5 * rs.frac_gt_100.median() < ss.frac_gt_100.median() < 2.0 * rs.frac_gt_100.median()
    assert 0.3 * rs.frac_gt_1000.min() < ss.frac_gt_1000.median() < 3.0 * rs.frac_gt_1000.max()
    assert 1500 < ss.bmax.median() < 3000


def test_power_spectrum_slope_matches_real(realism_numbers):
    rs, ss = realism_numbers
    assert abs(ss.ps_slope.median() - rs.ps_slope.mean()) < 0.35


def test_parameter_ranges_cover_real(realism_numbers):
    rs, ss = realism_numbers
    assert ss.tuf.min() < rs.tuf.min() and ss.tuf.max() > rs.tuf.max()
    assert ss.psep.min() < rs.psep.min() and ss.psep.max() > 0.8 * rs.psep.max()
    assert ss.r_value.max() > 0.9 * rs.r_value.max() and (ss.r_value < rs.r_value.min()).any()
    # PSEP grows with flux as in the real records (log-log correlation)
    assert np.corrcoef(np.log10(ss.tuf), np.log10(ss.psep))[0, 1] > 0.7
