"""Latent sampling, outputs and quality numbers (sharpgen.sampling). Tiny sizes, CPU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sharpgen import gan, sampling
from sharpgen.physics import PARAMETER_NAMES, compute_parameters
from test_gan import make_patch_store, synthetic_bipoles


def test_draw_latents_seeded():
    a = sampling.draw_latents(7, 100, seed=5)
    assert a.shape == (7, 100) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sampling.draw_latents(7, 100, seed=5))
    assert not np.array_equal(a, sampling.draw_latents(7, 100, seed=6))
    with pytest.raises(ValueError):
        sampling.draw_latents(0)


def test_latents_parquet_schema_roundtrip(tmp_path):
    z = sampling.draw_latents(5, 100, 0)
    params = pd.DataFrame({n: np.arange(5, dtype=float) for n in PARAMETER_NAMES})
    sampling.write_latents(tmp_path / "l.parquet", z, params)
    schema = pq.read_schema(tmp_path / "l.parquet")
    assert schema.field("z").type == pa.list_(pa.float32(), 100)
    assert schema.field("sample").type == pa.int64()
    assert set(PARAMETER_NAMES) <= set(schema.names)
    z2, df = sampling.read_latents(tmp_path / "l.parquet")
    np.testing.assert_array_equal(z, z2)
    assert list(df["sample"]) == list(range(5))


def test_quality_report_identical_and_shifted():
    imgs = synthetic_bipoles(40, 32, seed=0)
    from sharpgen.physics import PixelScale

    params = compute_parameters(imgs.astype(np.float64) * 1000, PixelScale.cea(0.03, 4))
    same = sampling.quality_report(params, params, imgs, imgs, 1000.0)
    for name in ("tuf", "r_value", "r_paper"):
        assert same["parameters"][name]["wasserstein_norm"] == pytest.approx(0.0, abs=1e-12)
        assert same["parameters"][name]["ks"] == pytest.approx(0.0, abs=1e-12)
    assert same["targets"]["pass"] is True
    assert same["pixels"]["js_divergence_bits"] == pytest.approx(0.0, abs=1e-12)
    assert same["power_spectrum"]["log10_ratio_rms"] == pytest.approx(0.0, abs=1e-12)
    # generated maps twice as strong: tuf shifted by ~its own mean, spectra by log10(4)
    gen = np.clip(2 * imgs, -1, 1)
    gparams = compute_parameters(gen.astype(np.float64) * 1000, PixelScale.cea(0.03, 4))
    rep = sampling.quality_report(params, gparams, imgs, gen, 1000.0)
    assert rep["parameters"]["tuf"]["wasserstein_norm"] > 1.0
    assert rep["parameters"]["tuf"]["ks"] > 0.5
    assert rep["targets"]["pass"] is False
    assert 0.4 < rep["power_spectrum"]["log10_ratio_low_k"] < 0.61
    assert rep["pixels"]["frac_abs_gt_150G"]["gen"] > rep["pixels"]["frac_abs_gt_150G"]["real"]
    # the worst spectrum bin: at least the rms and the low-k mean
    ps = rep["power_spectrum"]
    assert ps["log10_ratio_max_abs"] >= max(ps["log10_ratio_rms"], ps["log10_ratio_low_k"])
    assert ps["k_of_max_abs"] in ps["k_cycles_per_pixel"]
    assert same["power_spectrum"]["log10_ratio_max_abs"] == pytest.approx(0.0, abs=1e-12)
    lat = same["lattice"]
    assert lat["periods_px"] == pytest.approx([8, 4, 8 / 3, 2])
    assert lat["log10_excess_generated"] == lat["log10_excess_real"]
    assert lat["log10_peak_generated"] == max(lat["log10_excess_generated"])


def test_power_spectrum_of_white_noise_is_flat():
    from sharpgen.imagestats import mean_power_spectrum

    x = np.random.default_rng(1).standard_normal((64, 32, 32))
    k, p = mean_power_spectrum(x)
    assert k.shape == (16,) and k[-1] == pytest.approx(0.5)
    assert np.allclose(p, 1.0, rtol=0.15)


def test_run_sampling_end_to_end(tmp_path):
    zpath, tpath = make_patch_store(tmp_path, n=16, size=32)
    patches, attrs = gan.read_patch_store(zpath, tpath, split="train")
    cfg = gan.GanConfig.from_dict({"arch": "paper", "steps": 2, "batch_size": 4, "device": "cpu",
                                   "log_every": 1, "sample_every": 2, "checkpoint_every": 2,
                                   "structure": []})
    gan.train_gan(patches, cfg, checkpoint_root=tmp_path / "ck",
                  generator_path=tmp_path / "generator.pt", log_csv=tmp_path / "log.csv",
                  clip_gauss=attrs["clip_gauss"], progress=False)
    out = tmp_path / "samples"
    rep = sampling.run_sampling(
        tmp_path / "generator.pt", zpath, tpath,
        {"n": 20, "seed": 2, "batch_size": 8, "real_split": "train", "quality_images": 10},
        latents_path=out / "latents.parquet", images_path=out / "generated.zarr",
        quality_path=out / "quality.json", progress=False)
    import zarr

    images = np.asarray(zarr.open_group(str(out / "generated.zarr"), mode="r")["images"][...])
    assert images.shape == (20, 32, 32) and images.dtype == np.float32
    z, table = sampling.read_latents(out / "latents.parquet")
    np.testing.assert_array_equal(z, sampling.draw_latents(20, 100, 2))
    # the stored parameters are those of the stored images at the patch store's pixel scale
    from sharpgen.store import PatchStore

    expect = compute_parameters(images.astype(np.float64) * 1000.0, PatchStore.open(zpath).nominal_scale)
    for name in ("tuf", "r_value", "psep"):
        np.testing.assert_allclose(table[name].to_numpy(), expect[name].to_numpy(), rtol=1e-6)
    # images regenerate from the stored latents
    G = gan.load_generator(tmp_path / "generator.pt")
    np.testing.assert_allclose(gan.generate(G, z[:3]), images[:3], atol=1e-6)
    q = json.loads((out / "quality.json").read_text())
    assert q["real"] == {"split": "train", "n": 8}
    assert q["generated"]["n"] == 20
    assert set(q["targets"]["wasserstein_norm"]) == {"tuf", "psep", "r_value", "r_paper"}
    assert rep["parameters"]["tuf"]["n_gen"] == 20
    assert "reference" not in q  # scored against the training split itself: no real-vs-real floor


def test_reference_distances_score_real_patches_like_generated_ones():
    rng = np.random.default_rng(0)
    real = pd.DataFrame({"tuf": rng.normal(10.0, 2.0, 400), "psep": rng.normal(40.0, 10.0, 400)})
    ref = sampling.reference_distances(real, real, "train")
    assert ref["split"] == "train" and ref["n"] == 400
    assert ref["wasserstein_norm"] == {"tuf": 0.0, "psep": 0.0} and ref["ks"] == {"tuf": 0.0, "psep": 0.0}
    shifted = real.assign(psep=real["psep"] + 5.0)  # W of a shift is the shift: 5 / std
    ref = sampling.reference_distances(real, shifted, "train")
    assert ref["wasserstein_norm"]["psep"] == pytest.approx(5.0 / real["psep"].std(ddof=0))
    # the same number quality_report gives a "generated" table equal to the reference patches
    imgs = rng.uniform(-1, 1, (4, 16, 16)).astype(np.float32)
    q = sampling.quality_report(real, shifted, imgs, imgs, 1000.0)
    assert q["parameters"]["psep"]["wasserstein_norm"] == pytest.approx(ref["wasserstein_norm"]["psep"])


def test_generator_size_mismatch_is_refused(tmp_path):
    zpath, tpath = make_patch_store(tmp_path, n=8, size=64)
    (tmp_path / "o").mkdir()
    other, _ = make_patch_store(tmp_path / "o", n=8, size=32)
    patches, _ = gan.read_patch_store(other)
    cfg = gan.GanConfig.from_dict({"arch": "paper", "steps": 1, "batch_size": 2, "device": "cpu",
                                   "structure": []})
    gan.train_gan(patches, cfg, checkpoint_root=tmp_path / "ck",
                  generator_path=tmp_path / "g.pt", log_csv=tmp_path / "l.csv", progress=False)
    with pytest.raises(ValueError, match="makes 32x32 maps but patch store"):
        sampling.run_sampling(tmp_path / "g.pt", zpath, tpath, {"n": 4, "seed": 0},
                              latents_path=tmp_path / "a", images_path=tmp_path / "b",
                              quality_path=tmp_path / "c", progress=False)


def test_metrics_sections_for_c2st_and_normal_cosines():
    """gan.c2st_accuracy and the directions section (normal cosines beside the parameter
    correlations) of metrics.json, validated by the schema."""
    from sharpgen import metrics

    names = ["tuf", "psep", "r_value"]
    cos = {a: {b: 1.0 if a == b else 0.9 for b in names} for a in names}
    pear = {a: {b: 1.0 if a == b else 0.5 for b in names} for a in names}
    pear["tuf"]["psep"] = pear["psep"]["tuf"] = 0.85
    boundaries = {"latent_space": "w", "parameters": {"_normal_cosines": cos,
                  "_parameter_correlations": {"pearson": pear, "spearman": pear},
                  "tuf": {"regression_r2": 0.81}, "psep": {"regression_r2": 0.25},
                  "r_value": {"regression_r2": -0.01}}}
    d = metrics.directions_metrics(boundaries)
    assert d["latent_space"] == "w" and d["normal_cosine"]["tuf"]["psep"] == 0.9
    assert d["parameter_correlation"]["psep"]["r_value"] == 0.5
    assert d["cosine_minus_correlation_max_abs"] == pytest.approx(0.4)
    # linear parts: cos x R_a x R_b; a negative R^2 (worse than the mean) counts as 0
    assert d["linear_r2"] == {"tuf": 0.81, "psep": 0.25, "r_value": -0.01}
    assert d["linear_part_correlation"]["tuf"]["psep"] == pytest.approx(0.9 * 0.9 * 0.5)
    assert d["linear_part_correlation"]["tuf"]["tuf"] == pytest.approx(0.81)
    assert d["linear_part_correlation"]["psep"]["r_value"] == 0.0
    g = metrics.gan_metrics({"parameters": {}, "c2st": {"accuracy": 0.61}})
    assert g["c2st_accuracy"] == 0.61
    assert metrics.gan_metrics({"parameters": {}, "c2st": {"accuracy": None}})["c2st_accuracy"] is None
    schema = metrics.load_schema()
    metrics.validate_metrics({"directions": d}, schema, stages=[])
    with pytest.raises(ValueError, match="latent_space"):
        metrics.validate_metrics({"directions": {**d, "latent_space": "x"}}, schema, stages=[])


def test_axis_power_spectrum_parseval():
    """All S wavenumbers of the axis spectrum (a per-row periodogram |FFT|^2 / S, like the
    radial spectrum's |FFT2|^2 / (H W)) add up to S times the mean square of the pixels."""
    from sharpgen.imagestats import axis_power_spectrum

    x = np.random.default_rng(1).normal(3.0, 2.0, size=(5, 32, 32))
    k, p = axis_power_spectrum(x, chunk=2)
    assert k.shape == p.shape == (17,) and k[-1] == 0.5
    assert p[0] + p[-1] + 2 * p[1:-1].sum() == pytest.approx(32 * np.mean(x ** 2), rel=1e-12)


def test_lattice_peaks_find_grid_patterns_only():
    from scipy.ndimage import gaussian_filter

    from sharpgen.imagestats import lattice_peaks

    rng = np.random.default_rng(2)
    # white noise and a smooth field: no peak
    for x in (rng.normal(size=(40, 128, 128)),
              np.stack([gaussian_filter(rng.normal(size=(128, 128)), 2) for _ in range(20)])):
        lat = lattice_peaks(x)
        assert lat["k_cycles_per_pixel"] == pytest.approx([1 / 8, 1 / 4, 3 / 8, 1 / 2])
        assert max(abs(e) for e in lat["log10_excess"]) < 0.03
    smooth = np.stack([gaussian_filter(rng.normal(size=(128, 128)), 2) for _ in range(20)])
    yy, xx = np.mgrid[:128, :128]
    # a checkerboard: power at Nyquist only
    cb = lattice_peaks(smooth + 0.05 * smooth.std() * (-1.0) ** (xx + yy))
    assert cb["log10_excess"][3] > 1.0 and max(abs(e) for e in cb["log10_excess"][:3]) < 0.03
    # a dot every 8 px (the S/8 base grid): all its harmonics, periods 8, 4, 8/3 and 2, stand out
    dots = lattice_peaks(smooth + 0.5 * smooth.std() * ((xx % 8 == 0) & (yy % 8 == 0)))
    assert min(dots["log10_excess"]) > 0.05 and dots["log10_peak"] == max(dots["log10_excess"])
    # periods that are not a whole number of cycles per image are left out
    assert lattice_peaks(smooth[:, :96, :96], periods_px=(8.0, 5.0))["periods_px"] == [8.0]


def test_lattice_peaks_of_real_records_are_flat(real_windows):
    """HMI Br has no pixel-grid pattern: the real SHARP windows (the 64 of HARP 377; the
    other records are smaller than a 2x2-binned 128-px window) stay near 0 at every period
    (measured: 0.038 at most)."""
    from sharpgen.imagestats import lattice_peaks

    x, _ = real_windows
    lat = lattice_peaks(x * 1000.0)
    assert len(x) > 20
    assert max(abs(e) for e in lat["log10_excess"]) < 0.05


def test_orientation_ratio_tells_grid_aligned_texture_from_isotropic():
    """imagestats.orientation_ratio: ~1 in every band for white noise and for noise through a
    radially symmetric filter (FFT Gaussian); a 3x3 box filter -- what the free grain filter
    of the default generator learned (docs/gan.md) -- passes far more power along the axes near
    Nyquist and less at half of it. Exactly invariant under transposition and 90-degree turns."""
    from scipy import ndimage

    from sharpgen.imagestats import ORIENTATION_BANDS, orientation_ratio

    rng = np.random.default_rng(3)
    white = rng.standard_normal((24, 128, 128))
    r = orientation_ratio(white)
    assert r.shape == (24, len(ORIENTATION_BANDS))
    assert np.all(np.abs(np.median(r, axis=0) - 1.0) < 0.1)
    smooth = ndimage.fourier_gaussian(np.fft.fft2(white), (0, 1.0, 1.0))
    iso = np.median(orientation_ratio(np.fft.ifft2(smooth).real), axis=0)
    assert np.all(np.abs(iso - 1.0) < 0.2)  # a steep spectrum samples a band's wedges unevenly
    box = np.median(orientation_ratio(ndimage.uniform_filter(white, (1, 3, 3), mode="wrap")), axis=0)
    assert box[3] > 5.0 and box[2] < 0.7
    np.testing.assert_allclose(orientation_ratio(white.transpose(0, 2, 1)), r, rtol=1e-9)
    np.testing.assert_allclose(orientation_ratio(np.rot90(white, axes=(1, 2))), r, rtol=1e-9)
    assert np.isnan(orientation_ratio(np.zeros((64, 64)))).all()
    with pytest.raises(ValueError, match="square"):
        orientation_ratio(np.zeros((2, 32, 16)))


def test_weak_field_orientation_in_the_quality_report(real_windows):
    """quality.json's ``orientation``: the real HMI windows' weak-field texture is isotropic
    (axis / diagonal power 0.89-1.08 per band, median over the 64 binned windows of HARP 377),
    and a copy with box-filtered noise (150 G before the filter) added is told apart."""
    from scipy import ndimage

    x, _ = real_windows
    gauss = x * 1000.0
    ori = sampling.weak_field_orientation(gauss, gauss)
    assert ori["bands_cycles_per_image"][0] == [4.0, 16.0] and ori["log10_ratio_max_abs"] == 0.0
    assert all(0.8 < v < 1.25 for v in ori["axis_over_diagonal_real"])
    noise = 150.0 * np.random.default_rng(0).standard_normal(gauss.shape)
    grid = gauss + ndimage.uniform_filter(noise, (0, 3, 3), mode="wrap")
    grid_ori = sampling.weak_field_orientation(gauss, grid)
    assert grid_ori["axis_over_diagonal_generated"][3] > 2.0
    assert grid_ori["log10_ratio_max_abs"] > 0.3


def test_quiet_block_share_finds_texture_switched_off_in_places():
    """imagestats.quiet_block_share: homogeneous noise has (almost) no quiet 8 x 8 blocks; the same
    noise with a 32 x 32 square turned down to 10 % has exactly that square's 16 of 256 blocks
    quiet; blocks partly outside the mask are not compared; an image without a whole block is NaN."""
    from sharpgen.imagestats import quiet_block_share

    rng = np.random.default_rng(5)
    noise = 30.0 * rng.standard_normal((6, 128, 128))
    full = np.ones(noise.shape, bool)
    share, count = quiet_block_share(noise, full)
    assert np.all(count == 256) and np.all(share == 0.0)
    patchy = noise.copy()
    patchy[:, 40:72, 64:96] *= 0.1
    share, _ = quiet_block_share(patchy, full)
    np.testing.assert_allclose(share, 16 / 256)
    mask = full.copy()
    mask[:, :, :4] = False  # the first column of blocks is no longer whole
    share, count = quiet_block_share(patchy, mask)
    assert np.all(count == 256 - 16)
    np.testing.assert_allclose(share, 16 / 240)
    share, count = quiet_block_share(noise[:1], np.zeros((1, 128, 128), bool))
    assert np.isnan(share[0]) and count[0] == 0
    with pytest.raises(ValueError, match="multiple of 8"):
        quiet_block_share(np.zeros((1, 20, 20)), np.ones((1, 20, 20), bool))


def test_weak_field_quiet_blocks_in_the_quality_report(real_windows):
    """quality.json's ``quiet_blocks``: the real HMI windows' weak-field texture is there
    everywhere (under 2 % of the blocks quiet, no patchy image among the 64 windows of HARP 377);
    the same windows with their weak field flattened in a square (as a generator that turns its
    grain off in places makes them) are told apart, and metrics.json carries both shares."""
    from sharpgen.metrics import gan_metrics

    x, _ = real_windows
    gauss = x * 1000.0
    q = sampling.weak_field_quiet_blocks(gauss, gauss)
    assert q["mean_share_real"] == q["mean_share_generated"] < 0.02
    assert q["patchy_images_real"] == 0.0
    flat = gauss.copy()
    weak = np.abs(flat[:, 16:112, 16:112]) < 150.0
    flat[:, 16:112, 16:112] = np.where(weak, 0.05 * flat[:, 16:112, 16:112], flat[:, 16:112, 16:112])
    q2 = sampling.weak_field_quiet_blocks(gauss, flat)
    assert q2["mean_share_generated"] > 0.2 and q2["patchy_images_generated"] > 0.9
    m = gan_metrics({"quiet_blocks": q2})["weak_field_quiet_blocks"]
    assert m["generated"] == q2["mean_share_generated"] and m["real"] == q["mean_share_real"]
