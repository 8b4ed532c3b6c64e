"""Known-answer tests of sharpgen.physics on constructed maps (no real data needed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sharpgen import physics, physics_kernels, physics_reference, rvalue  # noqa: F401
from sharpgen.physics import PARAMETER_NAMES, PARAMETERS, PixelScale, compute_parameters

UNIT = PixelScale(size_mm=1.0, area_cm2=1.0, size_arcsec=2.0)  # 1 px = 1 Mm, area 1, no R binning


def blob(shape, cy, cx, sigma, amp):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))


def bipole(s=64, sep=24.0, amp=1000.0, sigma=3.0, angle_deg=0.0, pos_leads=True):
    """Positive and negative Gaussian blobs symmetric about the centre, axis at angle_deg."""
    c = (s - 1) / 2.0
    dx = 0.5 * sep * math.cos(math.radians(angle_deg))
    dy = 0.5 * sep * math.sin(math.radians(angle_deg))
    sgn = 1.0 if pos_leads else -1.0
    return blob((s, s), c + sgn * dy, c + sgn * dx, sigma, amp) - blob((s, s), c - sgn * dy, c - sgn * dx, sigma, amp)


def test_parameter_table_is_documented():
    assert set(PARAMETER_NAMES) >= {"tuf", "tpf", "tnf", "net_flux", "psep", "psep_robust", "tilt_deg", "r_paper", "r_value"}
    for name in PARAMETER_NAMES:
        info = PARAMETERS[name]
        assert info.unit and info.description


def test_pixel_scale_cea_and_bin():
    s1 = PixelScale.cea(0.03)
    s2 = PixelScale.cea(0.03, bin_factor=4)
    # 0.03 deg of a 696 Mm sun = 0.3644 Mm; seen from 1 AU: 696e6 * 5.236e-4 / 1.496e11 rad
    assert s1.size_mm == pytest.approx(696.0 * math.radians(0.03), rel=2e-3)
    assert s1.size_arcsec == pytest.approx(math.degrees(6.96e8 * math.radians(0.03) / 1.495978707e11) * 3600, rel=1e-6)
    assert s2.size_mm == pytest.approx(4 * s1.size_mm)
    assert s2.size_arcsec == pytest.approx(4 * s1.size_arcsec)
    assert s2.area_cm2 == pytest.approx(16 * s1.area_cm2)
    # area is the square of the side (in cm): (size_mm * 1e8 cm)^2
    assert s1.area_cm2 == pytest.approx((s1.size_mm * 1e8) ** 2, rel=1e-9)


def test_pixel_scale_from_header_rejects_missing_keys():
    with pytest.raises(KeyError, match="DSUN_OBS"):
        PixelScale.from_header({"CDELT1": 0.03, "RSUN_REF": 6.96e8, "RSUN_OBS": 970.0})
    with pytest.raises(ValueError, match="RSUN_OBS"):
        PixelScale.from_header({"CDELT1": 0.03, "RSUN_REF": 6.96e8, "RSUN_OBS": "nan", "DSUN_OBS": 1.5e11})


def test_flux_sums_known_answer():
    b = np.zeros((8, 8))
    b[1, 1] = 200.0
    b[2, 2] = 100.0
    b[5, 5] = -50.0
    b[6, 6] = -300.0
    b[0, 7] = np.nan
    sc = PixelScale(size_mm=0.5, area_cm2=2.0e15, size_arcsec=2.0)
    df = compute_parameters(b, sc)
    row = df.iloc[0]
    assert row.tpf == pytest.approx(300.0 * 2e15)
    assert row.tnf == pytest.approx(350.0 * 2e15)  # magnitude
    assert row.tuf == pytest.approx(650.0 * 2e15)
    assert row.net_flux == pytest.approx(-50.0 * 2e15)
    assert row.flux_imbalance == pytest.approx(50.0 / 650.0)
    assert row.usflux_strong == pytest.approx(500.0 * 2e15)
    assert row.strong_frac == pytest.approx(2.0 / 63.0)  # NaN pixel is not valid
    assert row.bmax == 300.0
    # psep: strong centroids are single pixels (1,1) and (6,6)
    assert row.psep == pytest.approx(math.hypot(5, 5) * 0.5)


def test_mask_restricts_fluxes_but_not_r_value():
    b = bipole(48, sep=16, amp=800.0)
    mask = np.zeros_like(b, dtype=bool)
    mask[:, :24] = True  # keeps the eastern half (x < 24), where the negative blob lies
    full = compute_parameters(b, UNIT).iloc[0]
    part = compute_parameters(b, UNIT, mask=mask).iloc[0]
    assert part.tnf == pytest.approx(full.tnf, rel=1e-6)  # negative blob is at x < 24
    assert part.tpf < 1e-3 * full.tpf
    assert math.isnan(part.psep)
    assert part.r_value == full.r_value


def test_psep_of_two_blobs_at_known_distance():
    for sep in (10.0, 14.0, 20.0, 30.0):
        df = compute_parameters(bipole(64, sep=sep, sigma=1.5), UNIT)
        assert df.psep[0] == pytest.approx(sep, abs=0.01)
        # the 2 Mm smoothing makes close polarities partly cancel: slight outward bias below ~7 sigma
        assert df.psep_robust[0] == pytest.approx(sep, abs=0.01 if sep >= 14 else 0.05 * sep)
    # physical scale enters linearly
    sc = PixelScale(size_mm=0.72, area_cm2=5e15, size_arcsec=1.0)
    assert compute_parameters(bipole(64, sep=20.0, sigma=2.5), sc).psep[0] == pytest.approx(14.4, abs=0.05)


@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0, 60.0])
def test_tilt_and_lead_sign(angle):
    pos_lead = compute_parameters(bipole(64, sep=24, angle_deg=angle, pos_leads=True), UNIT).iloc[0]
    neg_lead = compute_parameters(bipole(64, sep=24, angle_deg=angle, pos_leads=False), UNIT).iloc[0]
    assert pos_lead.tilt_deg == pytest.approx(angle, abs=0.5)
    assert neg_lead.tilt_deg == pytest.approx(angle, abs=0.5)
    assert pos_lead.lead_sign == 1.0
    assert neg_lead.lead_sign == -1.0


def test_r_paper_needs_close_opposite_polarities():
    # two 300 G squares 4 px apart: dilated by 7x7 (radius 3) they overlap
    b = np.zeros((32, 32))
    b[10:14, 10:14] = 300.0
    b[10:14, 18:22] = -300.0  # gap of 4 px (cols 14..17): dilations (+-3) overlap at 15..16
    r = compute_parameters(b, UNIT).r_paper[0]
    # overlapping region: cols 15..16 (empty) -> no |B| there -> 0; move closer so pixels overlap
    assert r == 0.0
    b2 = np.zeros((32, 32))
    b2[10:14, 10:14] = 300.0
    b2[10:14, 15:19] = -300.0  # gap of 1 px: pos cols 12,13 within 3 of neg col 15,16
    r2 = compute_parameters(b2, UNIT).r_paper[0]
    # pos pixels with a neg pixel within 3 cols: cols 12,13 (to 15) -> 2 cols x 4 rows; neg cols 15,16
    assert r2 == pytest.approx((2 * 4 + 2 * 4) * 300.0)
    b3 = np.zeros((32, 32))
    b3[10:14, 2:6] = 300.0
    b3[10:14, 24:28] = -300.0
    assert compute_parameters(b3, UNIT).r_paper[0] == 0.0


def test_r_value_zero_without_inversion_line_and_positive_with():
    unipolar = blob((64, 64), 32, 32, 5, 1000.0)
    assert compute_parameters(unipolar, UNIT).r_value[0] == 0.0
    close = bipole(64, sep=10, sigma=3, amp=1500.0)
    far = bipole(64, sep=40, sigma=3, amp=1500.0)
    r_close = compute_parameters(close, UNIT).r_value[0]
    r_far = compute_parameters(far, UNIT).r_value[0]
    assert r_close > 3.0
    assert r_far == 0.0


def test_r_value_subsampling_step_follows_arcsec_scale():
    assert physics.r_value_scale(0.5087) == 4  # native HMI CEA pixel: round(3.93)
    assert physics.r_value_scale(1.02) == 2
    assert physics.r_value_scale(4.07) == 1  # never below one pixel
    # JSOC's C round(): half away from zero (Python's round(2.5) would give 2)
    assert physics.r_value_scale(0.8) == 3
    assert physics.r_value_scale(2.0 / 3.5) == 4
    assert list(physics.r_value_scale(np.array([0.5087, 0.8, 1.02]))) == [4, 3, 2]


def test_r_value_subsample_is_point_sampling():
    """fsample: pixel (j*s, i*s) of each map, a partial block at the end dropped, no mean."""
    b = np.arange(2 * 11 * 14, dtype=float).reshape(2, 11, 14)
    sub = rvalue._r_value_subsample(b, 4)
    assert sub.shape == (2, 2, 3)
    np.testing.assert_array_equal(sub, b[:, [0, 4]][:, :, [0, 4, 8]])
    assert rvalue._r_value_subsample(b, 1) is not None and rvalue._r_value_subsample(b, 1).shape == b.shape
    # the kernel samples the same pixels: C's int abs() of them (NaN -> 0)
    f = np.random.default_rng(3).normal(0.0, 300.0, (2, 11, 14))
    f[1, 4, 8] = np.nan
    a, _ = rvalue._r_value_sampled(f, 4)
    np.testing.assert_array_equal(a, np.nan_to_num(np.trunc(np.abs(f[:, [0, 4]][:, :, [0, 4, 8]])), nan=0.0))
    assert a[1, 1, 2] == 0.0
    # strong opposite polarities only on pixels the sampling skips: no inversion line at all
    m = np.zeros((64, 64))
    m[20:40, 30] = 800.0
    m[20:40, 31] = -800.0
    sc4 = PixelScale(size_mm=1.0, area_cm2=1.0, size_arcsec=0.5)  # step 4: columns 0, 4, ..., 28, 32
    assert physics.r_value(m, sc4)[0] == 0.0
    m2 = np.zeros((64, 64))
    m2[20:40, 28] = 800.0  # sampled columns 28 and 32: adjacent after sub-sampling
    m2[20:40, 32] = -800.0
    assert physics.r_value(m2, sc4)[0] > 2.5


@pytest.mark.parametrize("shape", [(64, 64), (9, 7), (3, 3), (2, 5), (1, 1), (32, 33), (6, 130), (5, 64)])
def test_r_value_inversion_line_matches_c_loops(shape, rng):
    """computeR's boxcar (fresize, hwidth 1) on each polarity mask: mean of the 3x3 box where the
    box fits in the map, fill value 0 on the 1-pixel border; p1 = both ``> 0``. Written as plain
    loops, against the kernel's bit rows (widths above 64 cross word boundaries)."""
    ny, nx = shape
    u = rng.random((2, ny, nx))
    field = np.where(u < 0.15, 200.0 + u, np.where(u > 0.85, -200.0 - u, 100.0 * (u - 0.5)))
    _, p1 = rvalue._r_value_sampled(field, 1)
    for k in range(2):
        pos, neg = field[k] > 150, field[k] < -150
        want = np.zeros((ny, nx), dtype=bool)
        for j in range(1, ny - 1):
            for i in range(1, nx - 1):
                want[j, i] = (pos[j - 1 : j + 2, i - 1 : i + 2].sum() / 9.0 > 0.0) and (
                    neg[j - 1 : j + 2, i - 1 : i + 2].sum() / 9.0 > 0.0)
        assert np.array_equal(p1[k], want)


def test_r_value_gaussian_is_jsoc_kernel_with_zero_padding(rng):
    k = rvalue._r_value_kernel()
    assert k.shape == (41,) and k.sum() == pytest.approx(1.0, abs=1e-15)
    x = np.arange(-20, 21)
    want = np.exp(-0.5 * (x * 2.3548 / 10.0) ** 2)
    np.testing.assert_allclose(k, want / want.sum(), rtol=1e-14)
    # the weighted sum: p1 zero-padded by 20, convolved with the kernel (separable), times the
    # truncated |B|, written out per inversion-line pixel (maps wider than 64 and than 2 x 20)
    for ny, nx in ((40, 57), (23, 150)):
        b = rng.normal(0.0, 200.0, (ny, nx))
        b[3, 5] = np.nan
        _, p1 = rvalue._r_value_sampled(b, 1)
        pad = np.pad(np.nan_to_num(np.trunc(np.abs(b)), nan=0.0), 20)
        total = sum(float(np.outer(k, k).ravel() @ pad[j : j + 41, i : i + 41].ravel()) for j, i in zip(*np.nonzero(p1[0])))
        assert total > 1.0
        assert physics.r_value(b, UNIT)[0] == pytest.approx(math.log10(total), rel=1e-13)


def _r_expected(sources, p1_pixels):
    """Known answer: sum over the inversion-line pixels of the Gaussian weight of each source
    pixel (zero padding) times its truncated |B|."""
    k = rvalue._r_value_kernel()
    total = 0.0
    for r, c in p1_pixels:
        for y, x, v in sources:
            if abs(y - r) <= 20 and abs(x - c) <= 20:
                total += k[y - r + 20] * k[x - c + 20] * math.trunc(abs(v))
    return math.log10(total)


def test_r_value_known_answer_interior_and_border():
    """Two opposite pixels: the 3x3 boxes overlap on a 3x2 (interior) resp. 1x2 (map border,
    fresize leaves the outer row 0) inversion line; |B| is truncated to whole Gauss (C abs())."""
    b = np.zeros((32, 32))
    b[10, 10], b[10, 11] = 200.7, -300.9
    b[25, 3] = np.nan  # NaN pixels are skipped
    p1 = [(r, c) for r in (9, 10, 11) for c in (10, 11)]
    want = _r_expected([(10, 10, 200.7), (10, 11, -300.9)], p1)
    assert physics.r_value(b, UNIT)[0] == pytest.approx(want, abs=1e-12)
    assert compute_parameters(b, UNIT).r_value[0] == pytest.approx(want, abs=1e-12)
    e = np.zeros((32, 32))
    e[0, 5], e[0, 6] = 200.0, -300.0
    want_e = _r_expected([(0, 5, 200.0), (0, 6, -300.0)], [(1, 5), (1, 6)])
    assert physics.r_value(e, UNIT)[0] == pytest.approx(want_e, abs=1e-12)
    # a map of two rows has no pixel whose whole 3x3 box fits: no inversion line at all
    thin = np.array([[500.0, -500.0, 500.0, -500.0]] * 2)
    assert physics.r_value(thin, UNIT)[0] == 0.0
    assert physics.r_value(np.vstack([thin, thin[:1]]), UNIT)[0] > 1.5  # 3 rows: row 1 counts


def _kernel_gauss(x, sigma):
    """physics_kernels._k_gauss on one (h, w) map (zero rows around it, as the engine lays it out)."""
    physics_kernels._jit()
    taps = physics._gauss_taps(sigma)
    gr = (len(taps) - 1) // 2
    h, w = x.shape
    src = np.concatenate([np.zeros(gr * w), x.ravel(), np.zeros(gr * w)])
    dst = np.empty(h * w)
    physics_kernels._k_gauss(src, h, w, np.ascontiguousarray(taps), np.empty(h * w), np.empty(w + 2 * gr + 1), dst)
    return dst.reshape(h, w)


def test_gaussian_taps_and_kernel_equal_scipy(rng):
    from scipy import ndimage

    for sigma in (1.35, 4.2, 0.4):
        taps = physics._gauss_taps(sigma)
        assert len(taps) == 2 * int(4.0 * sigma + 0.5) + 1 and taps.sum() == pytest.approx(1.0)
        for shape in ((40, 24), (7, 70), (3, 5)):  # also maps smaller than the kernel
            x = rng.normal(0, 100, shape)
            want = ndimage.gaussian_filter(x, sigma=sigma, mode="constant")
            np.testing.assert_allclose(_kernel_gauss(x, sigma), want, rtol=1e-12, atol=1e-12)


def test_batch_equals_single_and_reference(rng):
    maps = np.stack([bipole(32, sep=s, angle_deg=a) + rng.normal(0, 30, (32, 32)) for s, a in [(8, 0), (12, 30), (16, -20), (20, 80)]])
    maps[2, :5, :5] = np.nan
    batch = compute_parameters(maps, UNIT)
    singles = pd.concat([compute_parameters(m, UNIT) for m in maps], ignore_index=True)
    ref = physics_reference.compute_parameters_reference(maps, UNIT)
    pd.testing.assert_frame_equal(batch, singles, rtol=1e-12)
    pd.testing.assert_frame_equal(batch, ref, rtol=1e-9)


def test_scalar_and_per_sample_scale():
    maps = np.stack([bipole(32, sep=12), bipole(32, sep=12)])
    sizes = np.array([0.5, 1.5])
    per = PixelScale(size_mm=sizes, area_cm2=np.array([1.0, 9.0]), size_arcsec=np.array([1.0, 3.0]))
    df = compute_parameters(maps, per)
    one = compute_parameters(maps[:1], PixelScale(0.5, 1.0, 1.0))
    assert df.psep[1] == pytest.approx(3 * df.psep[0])
    assert df.tuf[1] == pytest.approx(9 * df.tuf[0])
    assert df.psep[0] == pytest.approx(one.psep[0], rel=1e-12)
    assert df.tuf[0] == pytest.approx(one.tuf[0], rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        compute_parameters(maps, PixelScale(size_mm=np.ones(3), area_cm2=1.0, size_arcsec=1.0))


def test_all_nan_and_empty_mask_give_nan_not_crash():
    maps = np.stack([np.full((32, 32), np.nan), bipole(32, sep=10)])
    df = compute_parameters(maps, UNIT)
    assert df.iloc[0].isna().all()
    assert np.isfinite(df.iloc[1][["tuf", "psep", "psep_robust", "r_value"]]).all()
    dm = compute_parameters(bipole(32, sep=10), UNIT, mask=np.zeros((32, 32), bool))
    assert dm.iloc[0].isna().all()
    # weak field only: no polarity above 150 G -> NaN separations, zero strong flux
    weak = compute_parameters(np.full((32, 32), 10.0), UNIT).iloc[0]
    assert math.isnan(weak.psep) and math.isnan(weak.psep_robust) and math.isnan(weak.tilt_deg)
    assert weak.usflux_strong == 0.0 and weak.r_value == 0.0


def test_float32_input_and_shape_errors():
    m = bipole(32, sep=12, sigma=1.5).astype(np.float32)
    assert compute_parameters(m, UNIT).psep[0] == pytest.approx(12.0, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        compute_parameters(np.zeros((2, 2, 2, 2)), UNIT)
    with pytest.raises(ValueError, match="mask shape"):
        compute_parameters(m, UNIT, mask=np.ones((16, 16), bool))


def _rel_change(a, b):
    return np.abs(a - b) / np.abs(b)


def perturb(maps, rng, noise_g=20.0, n_elements=6, element_g=400.0):
    """Add Gaussian noise and small (2-px) flux elements of random sign at random places."""
    out = maps + rng.normal(0.0, noise_g, maps.shape)
    n, h, w = maps.shape
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        for _ in range(n_elements):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            out[i] += rng.choice([-1.0, 1.0]) * element_g * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.0**2))
    return out


def test_psep_robust_is_more_stable_than_psep(rng):
    """Noise + small scattered flux elements move psep far more than psep_robust."""
    base = np.stack(
        [bipole(64, sep=s, angle_deg=a, sigma=3.0, amp=1500.0) for s, a in [(14, 0), (20, 15), (26, -10), (32, 40)]]
    )
    clean = compute_parameters(base, UNIT)
    noisy = compute_parameters(perturb(base, rng), UNIT)
    d_psep = np.median(_rel_change(noisy.psep.to_numpy(), clean.psep.to_numpy()))
    d_rob = np.median(_rel_change(noisy.psep_robust.to_numpy(), clean.psep_robust.to_numpy()))
    assert d_rob < 0.02, d_rob
    assert d_psep > 3 * d_rob, (d_psep, d_rob)


def test_mixed_scales_nan_and_mask_match_reference(rng):
    """Several pixel scales in one batch (several r_value binnings and robust grids), NaN holes
    and a mask: the vectorised engine equals the per-image reference."""
    n = 20
    maps = np.stack([bipole(48, sep=rng.uniform(8, 30), angle_deg=rng.uniform(-60, 60), amp=rng.uniform(300, 2000)) for _ in range(n)])
    maps += rng.normal(0, 40, maps.shape)
    maps[3, 10:20, 10:20] = np.nan
    maps[7] = np.nan
    mask = rng.random(maps.shape) > 0.05
    size_mm = rng.choice([0.36, 0.73, 1.46, 2.9], n)
    scale = PixelScale(size_mm=size_mm, area_cm2=(size_mm * 1e8) ** 2, size_arcsec=size_mm / 0.7245)
    for m in (None, mask):
        fast = compute_parameters(maps, scale, mask=m)
        ref = physics_reference.compute_parameters_reference(maps, scale, mask=m)
        pd.testing.assert_frame_equal(fast, ref, rtol=1e-9)
    assert fast.iloc[7].isna().all()


def test_benchmark_script_runs_and_agrees(tmp_path, capsys):
    """benchmarks/bench_physics.py (run by `make bench`) on a tiny batch: it checks agreement."""
    import importlib.util
    import json

    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_physics.py"
    spec = importlib.util.spec_from_file_location("bench_physics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    assert mod.main(["--n", "6", "--size", "32", "--repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["max_rel_diff"] < 1e-9 and res["engine_maps_per_s_cpu"] > 0 and res["speedup_cpu"] > 0
    assert "speed-up" in capsys.readouterr().out


def test_chunks_and_dtypes_do_not_change_results(rng, monkeypatch):
    """Inputs that need a conversion (a mask, a non-contiguous view, integers) go through the
    kernels a few maps at a time; with small, misaligned chunks (NaN maps, a mask, mixed scales)
    the result still equals the reference, and float32 / strided inputs equal contiguous float64."""
    n = 11
    maps = np.stack([bipole(32, sep=rng.uniform(6, 20), angle_deg=rng.uniform(-60, 60)) for _ in range(n)])
    maps += rng.normal(0, 40, maps.shape)
    maps[2, 3:9, 4:12] = np.nan
    maps[5] = np.nan
    mask = rng.random(maps.shape) > 0.05
    size_mm = rng.choice([0.36, 0.73, 1.46], n)
    scale = PixelScale(size_mm=size_mm, area_cm2=(size_mm * 1e8) ** 2, size_arcsec=size_mm / 0.7245)
    monkeypatch.setattr(physics, "_CHUNK_MAPS", 3)
    for m in (None, mask):
        pd.testing.assert_frame_equal(
            compute_parameters(maps, scale, mask=m),
            physics_reference.compute_parameters_reference(maps, scale, mask=m),
            rtol=1e-9,
        )
    full = compute_parameters(maps, scale)
    wide = np.zeros((n, 32, 64))
    wide[:, :, ::2] = maps
    pd.testing.assert_frame_equal(compute_parameters(wide[:, :, ::2], scale), full, rtol=1e-15)
    m32 = np.nan_to_num(maps).astype(np.float32)
    pd.testing.assert_frame_equal(compute_parameters(m32, scale), compute_parameters(m32.astype(np.float64), scale),
                                  rtol=1e-15)
    mi = np.round(np.nan_to_num(maps)).astype(np.int32)
    pd.testing.assert_frame_equal(compute_parameters(mi, scale), compute_parameters(mi.astype(np.float64), scale),
                                  rtol=1e-15)


def _bit_rows(mask):
    """(h, w) bool -> the kernels' bit rows: (h * nw,) uint64, bit x of word x >> 6."""
    h, w = mask.shape
    nw = (w + 63) // 64
    padded = np.zeros((h, 64 * nw), dtype=np.uint8)
    padded[:, :w] = mask
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).ravel(), nw


@pytest.mark.parametrize("shape", [(37, 53), (32, 32), (5, 9), (20, 130), (9, 64), (3, 200)])
def test_bit_dilations_and_block_mean_match_scipy(shape, rng):
    """r_paper's sum over the overlap of the dilated polarity masks (bit rows, shifted ORs)
    equals scipy's binary_dilation for several window sizes; the block mean equals the
    zero-padded reshape mean (skimage block_reduce)."""
    from scipy import ndimage

    physics_kernels._jit()
    h, w = shape
    pos = rng.random(shape) > 0.93
    neg = ~pos & (rng.random(shape) > 0.93)
    bz = rng.normal(0, 100, shape)
    bp, nw = _bit_rows(pos)
    bn, _ = _bit_rows(neg)
    bits = np.concatenate([bp, bn])
    for k in (3, 7, 9):
        fp = np.ones((k, k), dtype=bool)
        both = ndimage.binary_dilation(pos, fp) & ndimage.binary_dilation(neg, fp)
        got = physics_kernels._k_r_paper_sum(bits, np.empty_like(bits), bz.ravel(), h, w, nw, k)
        assert got == pytest.approx(np.abs(bz[both]).sum(), rel=1e-12, abs=1e-12), k
    for f in (1, 2, 3, 4):
        hc, wc = -(-h // f), -(-w // f)
        padded = np.zeros((hc * f, wc * f))
        padded[:h, :w] = bz
        want = padded.reshape(hc, f, wc, f).mean(axis=(1, 3))
        gr = 2
        coarse = np.full((hc + 2 * gr) * wc, np.nan)
        physics_kernels._k_block_mean(bz.ravel(), h, w, f, coarse, hc, wc, gr, np.empty(w))
        coarse = coarse.reshape(hc + 2 * gr, wc)
        np.testing.assert_allclose(coarse[gr : gr + hc], want, rtol=1e-14, atol=1e-12)
        assert not coarse[:gr].any() and not coarse[gr + hc :].any()  # the Gaussian's zero rows


def _scipy_largest_cluster(sm, sign, thr):
    from scipy import ndimage

    weight = sign * sm
    lab, nlab = ndimage.label(weight > thr, structure=np.ones((3, 3)))
    if nlab == 0:
        return (np.nan, np.nan)
    flux = ndimage.sum_labels(weight, lab, index=np.arange(1, nlab + 1))
    return ndimage.center_of_mass(weight, lab, int(np.argmax(flux)) + 1)


@pytest.mark.parametrize("shape", [(64, 64), (17, 90), (1, 7), (40, 3)])
def test_cluster_search_matches_scipy_label(shape, rng):
    """The run-based union-find equals scipy's 8-connected label + largest summed weight +
    center_of_mass, for both signs, on smooth random fields with many clusters, and on ties
    (two identical clusters: the first in raster order wins, like argmax over the labels)."""
    from scipy import ndimage

    physics_kernels._jit()
    h, w = shape
    nr = h * ((w + 1) // 2)
    bufs = (np.empty(w, np.uint8), np.empty((nr, 2), np.int64), np.empty(nr, np.int64), np.empty((nr, 3)))
    for trial in range(6):
        sm = ndimage.gaussian_filter(rng.normal(0, 400, shape), 1.5 + trial % 3)
        for sign in (1.0, -1.0):
            got = physics_kernels._k_largest_cluster(sm.ravel(), h, w, sign, 50.0, *bufs)
            np.testing.assert_allclose(got, _scipy_largest_cluster(sm, sign, 50.0), rtol=1e-12)
    tie = np.zeros((12, 20))
    tie[2:5, 3:6] = 100.0
    tie[7:10, 12:15] = 100.0
    tie[3, 16] = -80.0  # a single-pixel negative cluster
    bufs = (np.empty(20, np.uint8), np.empty((120, 2), np.int64), np.empty(120, np.int64), np.empty((120, 3)))
    assert physics_kernels._k_largest_cluster(tie.ravel(), 12, 20, 1.0, 50.0, *bufs) == pytest.approx((3.0, 4.0))
    assert physics_kernels._k_largest_cluster(tie.ravel(), 12, 20, -1.0, 50.0, *bufs) == pytest.approx((3.0, 16.0))
    assert np.isnan(physics_kernels._k_largest_cluster(tie.ravel(), 12, 20, -1.0, 90.0, *bufs)).all()
    # a U-shaped cluster whose arms meet only in the last row (two runs merged late)
    u = np.zeros((6, 9))
    u[0:5, 1] = u[0:5, 7] = 60.0
    u[5, 1:8] = 60.0
    u[0, 4] = 70.0  # a separate, smaller cluster that comes first in raster order
    bufs = (np.empty(9, np.uint8), np.empty((54, 2), np.int64), np.empty(54, np.int64), np.empty((54, 3)))
    np.testing.assert_allclose(physics_kernels._k_largest_cluster(u.ravel(), 6, 9, 1.0, 50.0, *bufs),
                               _scipy_largest_cluster(u, 1.0, 50.0), rtol=1e-12)
