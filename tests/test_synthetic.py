"""Synthetic SHARP-like records: reproducibility, solar-physics statistics, FITS form, realism."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from astropy.io import fits

from sharpgen import harpmask, realism, synthetic, synthetic_fits
from sharpgen.physics import PixelScale, compute_parameters
from sharpgen.sharp_io import parse_name, read_sharp, sharp_mask


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
    # the header's USFLUX is what `sharpgen params --sharp-mask` computes from the stored files:
    # |Br| over conf_disambig >= 70 & bitmap >= 30 (the record's own segments), JSOC's pixel area
    mask = sharp_mask(path)
    assert mask is not None and mask.shape == rec.data.shape and mask.any()
    p = compute_parameters(rec.data, rec.scale, mask=mask).iloc[0]
    assert hdr["USFLUX"] == pytest.approx(p.tuf, rel=1e-6)
    assert hdr["CMASK"] == int(mask.sum())
    assert hdr["R_VALUE"] == pytest.approx(p.r_value, abs=1e-9)
    # pixel area: JSOC formula on the header within 4 % of the nominal 1 AU CEA pixel
    assert rec.scale.area_cm2 == pytest.approx(PixelScale.cea().area_cm2, rel=0.04)
    assert hdr["RSUN_OBS"] == pytest.approx(np.degrees(np.arcsin(696e6 / hdr["DSUN_OBS"])) * 3600, rel=1e-6)


def test_bitmap_and_conf_disambig_segments_like_jsoc(small_set):
    """Every Br file has JSOC-form bitmap (1/2 outside, 33/34 inside the HARP) and conf_disambig
    (60 weak / 90 strong) siblings; the HARP encloses the strong field, AREA/AREA_ACR match."""
    out, manifest, cat = small_set
    for path in manifest.path:
        rec = read_sharp(path)
        bm = read_sharp(path.replace(".Br.", ".bitmap."), segment_check="bitmap")
        cd = read_sharp(path.replace(".Br.", ".conf_disambig."), segment_check="conf_disambig")
        with fits.open(bm.path, disable_image_compression=True) as raw:
            assert raw[1].header["ZCMPTYPE"] == "RICE_1" and raw[1].header["ZBITPIX"] == 16
        assert bm.data.shape == cd.data.shape == rec.data.shape
        assert set(np.unique(bm.data)) <= {1, 2, 33, 34} and set(np.unique(cd.data)) <= {60, 90}
        assert bm.harpnum == rec.harpnum and bm.t_rec == rec.t_rec and bm.scale == rec.scale
        harp = bm.data >= 33
        a = np.abs(rec.data)
        assert (bm.data == 34).sum() < harp.sum() or not harp.any()
        if (a > 1000).sum() > 50:  # a region with spots: the HARP holds (nearly) all its strong field
            assert a[harp & (a > 500)].sum() > 0.9 * a[a > 500].sum()
        assert rec.header["AREA"] == pytest.approx(harpmask.micro_hemispheres(harp.sum()), rel=1e-9)
        assert rec.header["AREA_ACR"] == pytest.approx(harpmask.micro_hemispheres((bm.data == 34).sum()), rel=1e-9)


def test_synthetic_records_say_so_and_cannot_collide_with_real_ones(small_set, shared_data):
    out, manifest, cat = small_set
    assert (cat.harpnum > synthetic_fits.SYNTHETIC_HARPNUM_BASE).all()
    assert ((cat.noaa == 0) | (cat.noaa > synthetic_fits.SYNTHETIC_NOAA_BASE)).all()
    rec = read_sharp(manifest.path[0])
    h = rec.header
    assert h["TELESCOP"] == "SYNTHETIC" and h["INSTRUME"] == "SHARPGEN_SYNTHETIC"
    assert h["ORIGIN"] == "sharpgen.synthetic" and "not an observation" in h["CONTENT"]
    assert synthetic_fits.is_synthetic(h)
    for seg in ("bitmap", "conf_disambig"):
        assert synthetic_fits.is_synthetic(read_sharp(manifest.path[0].replace(".Br.", f".{seg}."),
                                                      segment_check=seg).header)
    # the real records of ../shared/data are not synthetic, and their HARPs are far below the base
    for p in sorted(shared_data.glob("sharp*/hmi.sharp_cea_720s.*.Br.fits")):
        real = read_sharp(p)
        assert not synthetic_fits.is_synthetic(real.header), p
        assert real.harpnum < synthetic_fits.SYNTHETIC_HARPNUM_BASE / 50
    # a header is synthetic by its HARP number alone as well
    assert synthetic_fits.is_synthetic({"HARPNUM": 900_001}) and not synthetic_fits.is_synthetic({"HARPNUM": 377})


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
    # skewed log-normal (median 21.97, sigma 0.62 below / 0.45 above), stratified: the quantiles
    # are those of the distribution, not of a noisy sample
    assert logf.median() == pytest.approx(synthetic.LOG_FLUX_MEDIAN, abs=0.01)
    assert np.percentile(logf, 16) == pytest.approx(synthetic.LOG_FLUX_MEDIAN - 0.62 * 0.994, abs=0.02)
    assert np.percentile(logf, 84) == pytest.approx(synthetic.LOG_FLUX_MEDIAN + 0.45 * 0.994, abs=0.02)
    assert np.corrcoef(logf, np.log10(cat.sep_mm))[0, 1] > 0.6
    assert 0.07 <= (cat.delta > 0).mean() <= 0.14
    assert (cat.lon0_deg.abs() <= 60).all()
    # Gnevyshev-Waldmeier: small regions are mostly seen decayed, large ones young
    assert cat.age[logf < 21.3].mean() > 0.6 > 0.4 > cat.age[logf > 22.5].mean()
    # a small catalogue follows the distribution too (stratified sampling)
    small = np.log10(synthetic.region_catalogue(40, seed=3).flux_mx)
    assert small.median() == pytest.approx(synthetic.LOG_FLUX_MEDIAN, abs=0.05)


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
    lead, tilt = [], []
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


def _usflux(data, mu=1.0):
    """USFLUX [Mx] of a rendered map over its emulated JSOC mask, nominal CEA pixel area."""
    mask = harpmask.vector_mask(harpmask.bitmap(data, mu), harpmask.conf_disambig(data))
    return float(np.abs(data)[mask].sum() * PixelScale.cea().area_cm2)


def test_flux_of_rendered_regions_tracks_catalogue():
    """USFLUX over the strong-field HARP mask follows the catalogue flux: close to it for young
    regions, lower for decayed ones (their dispersed plage falls below the strong-field mask)."""
    cat = synthetic.region_catalogue(40, seed=2)
    young, old = [], []
    for _, reg in cat.iloc[::3].iterrows():
        data, _, _ = synthetic.render_region(reg, 1, seed=2)[0]
        (young if reg.age < 0.4 else old).append(_usflux(data) / reg.flux_mx)
        assert np.abs(data).max() < 3000.0
    assert young and old
    assert 0.75 < np.median(young) < 1.1
    assert 0.4 < np.median(old) < np.median(young)


def test_cancellation_leaves_simple_decayed_regions_without_a_strong_pil():
    """R_VALUE (JSOC's algorithm) is 0 for most small decayed simple regions and positive for
    young large ones, as in the real population (R_VALUE = 0 in 29 % of SHARP records)."""
    cat = synthetic.region_catalogue(400, seed=9)
    small_old = cat[(cat.delta == 0) & (cat.flux_mx < 3e21) & (cat.age > 0.6)].head(8)
    big_young = cat[(cat.flux_mx > 2e22) & (cat.age < 0.3)].head(6)
    assert len(small_old) >= 6 and len(big_young) >= 4
    r = {}
    for name, sel in (("small_old", small_old), ("big_young", big_young)):
        r[name] = [compute_parameters(synthetic.render_region(reg, 1, seed=9)[0][0], PixelScale.cea()).iloc[0].r_value
                   for _, reg in sel.iterrows()]
    assert np.mean(np.array(r["small_old"]) == 0) >= 0.6, r
    assert min(r["big_young"]) > 3.0, r


def test_flux_cancellation_removes_opposite_flux_in_contact():
    """Two opposite plage elements in contact lose the weaker one; a fresh (emerging) pair and a
    distant pair are untouched."""
    el = synthetic._Elements(x=np.array([50.0, 51.0, 10.0, 90.0, 70.0, 71.0]),
                             y=np.array([50.0, 50.0, 10.0, 90.0, 20.0, 20.0]),
                             flux=np.array([2e18, -1e18, 1e18, -1e18, 1e18, -1e18]),
                             wide=np.zeros(6, bool))
    fresh = np.array([False, False, False, False, True, True])
    synthetic._cancel(el, fresh, [], (100, 100))
    assert el.flux[1] == 0.0 and 0.0 < el.flux[0] < 2e18  # the weaker side vanishes, the other shrinks
    np.testing.assert_array_equal(el.flux[2:], [1e18, -1e18, 1e18, -1e18])


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
