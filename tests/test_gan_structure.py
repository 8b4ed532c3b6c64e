"""The latent structure of the generator (sharpgen.gan.structure, ``gan.structure``): the
differentiable proxies against the pipeline's parameters on real SHARP records, the axes and
quantile targets, the loss, and training with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sharpgen.gan.structure import (
    PIL_TAU_GAUSS,
    R_VALUE_STEP,
    STRUCTURE_PARAMETERS,
    fit_structure,
    has_inversion_line,
    pil_bce,
    pil_log_presence,
    proxies,
    LatentStructure,
    structure_loss,
    structure_terms,
    targets,
)
from sharpgen.parameters import to_fit_space
from sharpgen.physics import compute_parameters
from sharpgen.rvalue import r_value_scale

CLIP = 1000.0


def test_proxies_rank_real_windows_like_the_pipeline(real_windows):
    """On real SHARP windows the proxies order the patches as sharpgen.physics does: Spearman
    1 for the fluxes, >= 0.95 for psep, r_value (both > 0) and r_paper (> 0); lead_sign's sign
    is the leading polarity's in >= 90 % of the windows with one."""
    x, scale = real_windows
    assert x.shape[0] >= 40
    hard = compute_parameters(x * CLIP, scale)
    soft = proxies(torch.from_numpy(x)[:, None], STRUCTURE_PARAMETERS, CLIP).numpy()
    for k, name in enumerate(STRUCTURE_PARAMETERS):
        h = hard[name].to_numpy(float)
        if name == "lead_sign":  # +-1: the proxy's sign is the leading polarity's
            ok = np.isfinite(h) & (h != 0)
            assert ok.sum() >= 20 and np.mean(np.sign(soft[ok, k]) == h[ok]) >= 0.9
            continue
        ok = np.isfinite(h) & (h > 0 if name in ("r_value", "r_paper", "tpf", "tnf") else True)
        assert ok.sum() >= 20, name
        rho = stats.spearmanr(to_fit_space(name, h[ok]), soft[ok, k])[0]
        assert rho >= (0.999 if name in ("tuf", "tpf", "tnf") else 0.95), (name, rho)


def test_proxies_differentiable_and_polarity_symmetric(real_windows):
    x = torch.from_numpy(real_windows[0][:8])[:, None].requires_grad_(True)
    p = proxies(x, STRUCTURE_PARAMETERS, CLIP)
    assert p.shape == (8, len(STRUCTURE_PARAMETERS)) and torch.isfinite(p).all()
    p.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    flipped = proxies(-x.detach(), STRUCTURE_PARAMETERS, CLIP)
    names = list(STRUCTURE_PARAMETERS)
    swap = [names.index({"tpf": "tnf", "tnf": "tpf"}.get(n, n)) for n in names]
    odd = torch.tensor([-1.0 if n == "lead_sign" else 1.0 for n in names])  # B -> -B
    torch.testing.assert_close(flipped, p.detach()[:, swap] * odd, rtol=1e-5, atol=1e-5)


def test_fit_structure_axes_and_targets(real_windows):
    x = real_windows[0]
    names = ("tuf", "psep", "r_value")
    s = fit_structure(x, names, nz=16, weight=2.0, clip_gauss=CLIP)
    # axes: unit rows in the first K coordinates with Gram matrix = the real correlation
    assert s.axes.shape == (3, 16) and np.all(s.axes[:, 3:] == 0)
    np.testing.assert_allclose(s.axes @ s.axes.T, s.correlation, atol=1e-12)
    np.testing.assert_allclose(np.diag(s.correlation), 1.0)
    assert s.correlation[0, 2] > 0.3  # flux and R go together in real active regions
    # targets of z ~ N(0, I): the real marginals (quantiles), in the real rank correlation
    state = s.torch_state("cpu")
    z = torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))
    t = targets(z, state).numpy()
    real = proxies(torch.from_numpy(x)[:, None], names, CLIP).numpy()
    for k in range(3):
        assert stats.ks_2samp(t[:, k], real[:, k]).statistic < 0.08
        assert t[:, k].min() >= real[:, k].min() - 1e-6 and t[:, k].max() <= real[:, k].max() + 1e-6
    rank_corr = stats.spearmanr(t).statistic
    np.testing.assert_allclose(rank_corr, stats.spearmanr(real).statistic, atol=0.06)
    # monotone in the axis: moving z along axis k raises target k
    z0 = torch.zeros(5, 16)
    z0[:, 0] = torch.linspace(-2, 2, 5)
    assert np.all(np.diff(targets(z0, state).numpy()[:, 0]) > 0)


def test_structure_loss_zero_at_target_and_weighted(real_windows):
    x = torch.from_numpy(real_windows[0][:16])[:, None]
    s = fit_structure(real_windows[0], ("tuf", "psep"), nz=8, weight=3.0, clip_gauss=CLIP)
    state = s.torch_state("cpu")
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    loss = structure_loss(x, z, s, state)
    p, t = proxies(x, s.names, CLIP), targets(z, state)
    expected = 3.0 * (((p - t) / state["sd"]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert loss > 0


def test_fit_structure_refuses_bad_requests(real_windows):
    x = real_windows[0]
    with pytest.raises(ValueError, match="no structure proxy"):
        fit_structure(x, ("tuf", "bmax"), nz=8, weight=1.0, clip_gauss=CLIP)
    with pytest.raises(ValueError, match="twice"):
        fit_structure(x, ("tuf", "tuf"), nz=8, weight=1.0, clip_gauss=CLIP)
    with pytest.raises(ValueError, match="more than gan.nz"):
        fit_structure(x, ("tuf", "psep", "r_value"), nz=2, weight=1.0, clip_gauss=CLIP)
    # patches made of a field and its negative: tpf = tnf in every one (a singular correlation)
    balanced = np.concatenate([x[:, :, :64], -x[:, :, :64]], axis=2)
    with pytest.raises(ValueError, match="nearly linearly dependent"):
        fit_structure(balanced, ("tpf", "tnf"), nz=8, weight=1.0, clip_gauss=CLIP)
    with pytest.raises(ValueError, match="constant"):
        fit_structure(np.zeros((10, 32, 32), np.float32), ("tuf",), nz=8, weight=1.0,
                      clip_gauss=CLIP)


# --------------------------------------------------------------------------------------------
# training with the structure loss (tiny 32 x 32 patches)
# --------------------------------------------------------------------------------------------
def _train(tmp, patches, tag, **over):
    from sharpgen.gan.train import GanConfig, train_gan

    max_steps = over.pop("_max", None)
    pixel_scale = over.pop("_scale", None)
    cfg = GanConfig.from_dict({"arch": "stable", "steps": 40, "batch_size": 8, "log_every": 10,
                               "sample_every": 40, "checkpoint_every": 20, "device": "cpu",
                               "seed": 3, **over})
    out = tmp / tag
    train_gan(patches, cfg, checkpoint_root=out / "ckpt", generator_path=out / "generator.pt",
              log_csv=out / "log.csv", data_id="t", threads=1, progress=False,
              max_steps_this_run=max_steps, pixel_scale=pixel_scale)
    return out / "generator.pt"


@pytest.fixture(scope="module")
def bipoles():
    from test_gan import synthetic_bipoles

    return synthetic_bipoles(64, 32, seed=1)


def test_structure_loss_reaches_the_generator_update(bipoles):
    """train_step adds g_extra to the generator's loss: G's gradients with it are those without
    it plus the gradient of the structure loss alone; D's update does not see it."""
    from sharpgen.gan.model import build_discriminator, build_generator
    from sharpgen.gan.steps import train_step

    s = fit_structure(bipoles, ("tuf", "psep"), nz=100, weight=2.0, clip_gauss=CLIP)
    state = s.torch_state("cpu")
    real = torch.from_numpy(bipoles[:8])[:, None]
    z = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))

    def grads(extra):
        torch.manual_seed(0)
        G, D = build_generator("stable", 32, 100), build_discriminator("stable", 32)
        train_step(G, D, real, z, "stable", g_extra=extra)
        return ([p.grad.clone() for p in G.parameters()], [p.grad.clone() for p in D.parameters()])

    g0, d0 = grads(None)
    g1, d1 = grads(lambda fake, zz: structure_loss(fake, zz, s, state))
    torch.manual_seed(0)
    G = build_generator("stable", 32, 100)
    structure_loss(G(z), z, s, state).backward()
    for a, b, c in zip(g1, g0, (p.grad for p in G.parameters())):
        assert float((a - (b + c)).norm()) <= 1e-4 * float((b + c).norm()) + 1e-7
    assert any(float(c.abs().max()) > 0 for c in (p.grad for p in G.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(d1, d0))


def test_training_with_structure_saves_it(tmp_path, bipoles):
    names = ["tuf", "psep"]
    with_s = _train(tmp_path, bipoles, "s", structure=names, structure_weight=5.0, steps=6,
                    checkpoint_every=3)
    without = _train(tmp_path, bipoles, "n", steps=6, checkpoint_every=3, structure=[])
    saved = torch.load(with_s, weights_only=False)["structure"]
    assert saved["names"] == names and saved["weight"] == 5.0
    assert torch.load(without, weights_only=False)["structure"] is None
    sharp = _train(tmp_path, bipoles, "t", structure=names + ["r_value"], structure_tau_gauss=10.0,
                   structure_r_grid="point", steps=2, checkpoint_every=2)
    assert saved["tau_gauss"] == 20.0 and saved["r_grid"] == "mean"
    sharp = torch.load(sharp, weights_only=False)["structure"]
    assert sharp["tau_gauss"] == 10.0 and sharp["r_grid"] == "point"
    s = fit_structure(bipoles, names, nz=100, weight=5.0, clip_gauss=CLIP)
    np.testing.assert_allclose(np.asarray(saved["axes"]), s.axes)
    np.testing.assert_allclose(np.asarray(saved["quantiles"]), s.quantiles)


def test_paper_architecture_with_the_structure_says_it_is_not_the_published_model(
        tmp_path, bipoles, caplog):
    """The structure term applies to every architecture; `gan.arch: paper` alone (structure on
    by default) is therefore not the published model, and the training log says so. The
    stable architecture, or the paper one without the term, logs no such warning."""
    import logging

    with caplog.at_level(logging.WARNING, logger="sharpgen"):
        _train(tmp_path, bipoles, "ps", arch="paper", structure=["tuf"], steps=2, checkpoint_every=2)
    assert any("not the published configuration" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sharpgen"):
        _train(tmp_path, bipoles, "pn", arch="paper", structure=[], steps=2, checkpoint_every=2)
        _train(tmp_path, bipoles, "ss", structure=["tuf"], steps=2, checkpoint_every=2)
    assert not any("published" in r.getMessage() for r in caplog.records)


def test_a_run_that_ends_before_the_structure_starts_says_so(tmp_path, bipoles, caplog):
    """A structure faded in from a step the run never reaches is never applied; the training
    log says so rather than training the plain GAN silently."""
    import logging

    with caplog.at_level(logging.WARNING, logger="sharpgen"):
        _train(tmp_path, bipoles, "late", structure=["tuf"], steps=2, checkpoint_every=2,
               structure_start=2)
    assert any("gan.structure_start 2 is not before gan.steps 2" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sharpgen"):
        _train(tmp_path, bipoles, "in_time", structure=["tuf"], steps=2, checkpoint_every=2,
               structure_start=1)
    assert not any("never applies" in r.getMessage() for r in caplog.records)


def test_structure_resumes_exactly_and_keeps_the_default_hash(tmp_path, bipoles):
    from sharpgen.gan.train import GanConfig

    over = {"structure": ["tuf", "r_value"], "structure_weight": 2.0, "steps": 12,
            "checkpoint_every": 3}
    straight = _train(tmp_path, bipoles, "a", **over)
    _train(tmp_path, bipoles, "b", **over, _max=6)
    resumed = _train(tmp_path, bipoles, "b", **over)
    wa = torch.load(straight, weights_only=False)["state_dict"]
    wb = torch.load(resumed, weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # off (the default until 2026-12-04): the checkpoint hash of configurations from before the option
    assert "structure" not in GanConfig.from_dict({"structure": []}).trajectory_dict()
    assert GanConfig.from_dict({}).structure == ("tuf", "psep", "r_value")  # the default since 2026-12-04
    assert GanConfig.from_dict(over).trajectory_dict()["structure"] == ["tuf", "r_value"]
    with pytest.raises(ValueError, match="gan.structure"):
        GanConfig.from_dict({"structure": ["bmax"]})


def test_soft_threshold_width_is_an_option_that_reaches_the_proxies_and_the_loss(bipoles):
    """``gan.structure_tau_gauss`` (default 20 G, ``TAU_GAUSS``): the width of the proxies' soft
    150 G threshold. A patch with strong positive field beside weak (100 G) negative field has
    no inversion line at 150 G; its soft R collects less at 10 G than at 20 G. The width is fitted into the structure, saved with it and used by the
    loss; at 20 G it stays out of the checkpoint hash."""
    from sharpgen.gan.structure import TAU_GAUSS
    from sharpgen.gan.train import GanConfig

    assert TAU_GAUSS == 20.0
    leak = np.zeros((1, 1, 64, 64), np.float32)
    leak[..., 20:44, 16:32] = 800.0 / CLIP
    leak[..., 20:44, 32:48] = -100.0 / CLIP
    r20, r10 = (float(proxies(torch.from_numpy(leak), ["r_value"], CLIP, t)[0, 0]) for t in (20.0, 10.0))
    assert float(proxies(torch.from_numpy(leak), ["r_value"], CLIP)[0, 0]) == r20  # the default
    assert r10 < r20 - 0.5
    real = torch.from_numpy(np.ascontiguousarray(bipoles[:8], dtype=np.float32))[:, None]
    b20, b10 = (proxies(real, ["tuf", "r_value"], CLIP, t) for t in (20.0, 10.0))
    assert torch.equal(b20[:, 0], b10[:, 0])                      # fluxes have no threshold
    s10 = fit_structure(bipoles, ("tuf", "r_value"), nz=8, weight=1.0, clip_gauss=CLIP,
                        tau_gauss=10.0)
    s20 = fit_structure(bipoles, ("tuf", "r_value"), nz=8, weight=1.0, clip_gauss=CLIP)
    assert s10.tau_gauss == 10.0 and s10.as_dict()["tau_gauss"] == 10.0 and s20.tau_gauss == 20.0
    assert not np.allclose(s10.quantiles[1], s20.quantiles[1])
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    loss = structure_loss(real, z, s10, s10.torch_state("cpu"))
    t = targets(z, s10.torch_state("cpu"))
    want = (((proxies(real, s10.names, CLIP, 10.0) - t) / s10.torch_state("cpu")["sd"]) ** 2).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert "structure_tau_gauss" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"structure_tau_gauss": 10.0}).trajectory_dict()["structure_tau_gauss"] == 10.0
    with pytest.raises(ValueError, match="structure_tau_gauss"):
        GanConfig.from_dict({"structure_tau_gauss": 0.0})


def test_point_grid_reads_jsocs_pixels_and_tracks_r_value_closer(real_windows, bipoles):
    """``gan.structure_r_grid: point`` sub-samples R_VALUE's grid as JSOC's ``fsample`` does (every
    ``R_VALUE_STEP``-th pixel), ``mean`` (the default) by block means. On real SHARP windows the
    point grid follows the pipeline's R_VALUE closer (Spearman >= 0.995, and less than half the
    mean grid's mean absolute difference in log10 R). Pixels off the grid do not move it. The grid
    is fitted into the structure, saved, used by the loss and, at ``mean``, kept out of the hash."""
    from sharpgen.gan.train import GanConfig

    x, scale = real_windows
    hard = compute_parameters(x * CLIP, scale)["r_value"].to_numpy(float)
    ok = hard > 0
    assert ok.sum() >= 20
    h = to_fit_space("r_value", hard[ok])
    xt = torch.from_numpy(x)[:, None]
    soft = {g: proxies(xt, ["r_value"], CLIP, r_grid=g)[:, 0].numpy()[ok] for g in ("mean", "point")}
    assert torch.equal(proxies(xt[:4], ["r_value"], CLIP), proxies(xt[:4], ["r_value"], CLIP, r_grid="mean"))
    assert stats.spearmanr(h, soft["point"])[0] >= 0.995
    assert np.mean(np.abs(h - soft["point"])) < 0.5 * np.mean(np.abs(h - soft["mean"]))
    # off-grid pixels: the point grid does not see them, block means do
    off = xt[:4].clone()
    off[..., 1::R_VALUE_STEP, :] = 0.0
    for g, same in (("point", True), ("mean", False)):
        a, b = (proxies(v, ["r_value"], CLIP, r_grid=g) for v in (xt[:4], off))
        assert torch.equal(a, b) is same, g
    with pytest.raises(ValueError, match="grid"):
        proxies(xt[:1], ["r_value"], CLIP, r_grid="bilinear")
    # fitted, saved and used by the loss
    names = ("tuf", "r_value")
    sp = fit_structure(bipoles, names, nz=8, weight=1.0, clip_gauss=CLIP, r_grid="point")
    sm = fit_structure(bipoles, names, nz=8, weight=1.0, clip_gauss=CLIP)
    assert sp.r_grid == "point" and sp.as_dict()["r_grid"] == "point" and sm.r_grid == "mean"
    assert not np.allclose(sp.quantiles[1], sm.quantiles[1])
    real = torch.from_numpy(np.ascontiguousarray(bipoles[:8], dtype=np.float32))[:, None]
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    state = sp.torch_state("cpu")
    want = (((proxies(real, names, CLIP, r_grid="point") - targets(z, state)) / state["sd"]) ** 2).mean()
    assert float(structure_loss(real, z, sp, state)) == pytest.approx(float(want), rel=1e-5)
    assert "structure_r_grid" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"structure_r_grid": "point"}).trajectory_dict()["structure_r_grid"] == "point"
    with pytest.raises(ValueError, match="structure_r_grid"):
        GanConfig.from_dict({"structure_r_grid": "bilinear"})


def test_fade_in_schedule():
    from sharpgen.gan.structure import fade_in

    assert [fade_in(s, 0, 0) for s in (0, 1, 50)] == [1.0, 1.0, 1.0]
    assert [fade_in(s, 3, 0) for s in (0, 2, 3, 9)] == [0.0, 0.0, 1.0, 1.0]
    assert [fade_in(s, 2, 4) for s in (1, 2, 3, 5, 6, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]


def test_structure_fade_in_trains_as_off_before_the_start_then_departs(tmp_path, bipoles):
    """A structure term that starts after the last step leaves the trajectory bit-identical to no
    structure at all; one that starts at step 3 follows that trajectory for 3 steps and then departs
    (and resumes exactly mid-ramp); the schedule moves the checkpoint hash only when set."""
    from sharpgen.gan.train import GanConfig

    def weights(path):
        return torch.load(path, weights_only=False)["state_dict"]

    base = {"steps": 6, "checkpoint_every": 3, "structure": []}
    w_off = weights(_train(tmp_path, bipoles, "off", **base))
    on = {**base, "structure": ["tuf", "psep"], "structure_weight": 5.0}
    w_late = weights(_train(tmp_path, bipoles, "late", **on, structure_start=6))
    assert all(torch.equal(w_off[k], w_late[k]) for k in w_off)
    w_now = weights(_train(tmp_path, bipoles, "now", **on))
    assert not all(torch.equal(w_off[k], w_now[k]) for k in w_off)

    mid = {**on, "structure_start": 3, "structure_ramp": 2}
    off3 = weights(_train(tmp_path, bipoles, "off3", **{**base, "steps": 3}))
    mid3 = weights(_train(tmp_path, bipoles, "mid3", **{**mid, "steps": 3}))
    assert all(torch.equal(off3[k], mid3[k]) for k in off3)
    w_mid = weights(_train(tmp_path, bipoles, "mid", **mid))
    assert not all(torch.equal(w_off[k], w_mid[k]) for k in w_off)
    assert not all(torch.equal(w_now[k], w_mid[k]) for k in w_now)
    _train(tmp_path, bipoles, "mid_r", **mid, _max=4)  # stops inside the ramp, then resumes
    w_res = weights(_train(tmp_path, bipoles, "mid_r", **mid))
    assert all(torch.equal(w_mid[k], w_res[k]) for k in w_mid)

    plain = GanConfig.from_dict({"structure": ["tuf"]}).trajectory_dict()
    assert "structure_start" not in plain and "structure_ramp" not in plain
    faded = GanConfig.from_dict({"structure": ["tuf"], "structure_start": 2400}).trajectory_dict()
    assert faded["structure_start"] == 2400
    off = GanConfig.from_dict({"structure": [], "structure_start": 5}).trajectory_dict()
    assert "structure_start" not in off and "structure" not in off  # no structure: no schedule
    with pytest.raises(ValueError, match="structure_ramp"):
        GanConfig.from_dict({"structure_ramp": -1})


# --------------------------------------------------------------------------------------------
# the inversion-line term (gan.structure_pil_weight)
# --------------------------------------------------------------------------------------------
def test_inversion_line_presence_is_r_value_above_zero_on_real_windows(real_windows):
    """On real SHARP windows on R_VALUE's 2 px grid, as observed and weakened to a fifth (where
    only some lines keep 150 G on both sides), the hard presence of a 150 G inversion line is
    exactly the pipeline's R_VALUE > 0, and the soft presence at 5 G (> 0.5) agrees with it."""
    x, scale = real_windows
    on_grid = r_value_scale(scale.size_arcsec) == R_VALUE_STEP
    assert on_grid.sum() >= 40
    for v in (x, 0.2 * x):
        r = compute_parameters(v * CLIP, scale)["r_value"].to_numpy(float)[on_grid]
        xt = torch.from_numpy(v[on_grid])[:, None]
        np.testing.assert_array_equal(has_inversion_line(xt, CLIP).numpy(), r > 0)
        assert np.array_equal(pil_log_presence(xt, CLIP).exp().numpy() > 0.5, r > 0)
    assert 5 <= (r == 0).sum() and 5 <= (r > 0).sum(), (r == 0).sum()  # the weakened: both kinds


def test_pil_bce_is_finite_with_a_gradient_at_both_extremes():
    """A +-1000 G inversion line (presence 1 in float32) labelled 'none', and a weak (< 50 G)
    patch labelled 'line', each get a finite loss and a gradient; the right labels cost ~0; a
    presence of 1/4 costs log 4 for 'line' and log 4/3 for 'none'."""
    line = torch.zeros(1, 1, 16, 16)
    line[..., 4:8, 4:8], line[..., 4:8, 8:12] = 1.0, -1.0
    weak = 0.05 * torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.025
    x = torch.cat([line, weak]).requires_grad_(True)
    wrong = pil_bce(x, torch.tensor([False, True]), CLIP)
    assert torch.isfinite(wrong).all() and (wrong > 10).all()
    wrong.sum().backward()
    assert (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    right = pil_bce(x.detach(), torch.tensor([True, False]), CLIP)
    assert float(right.max()) < 1e-6
    assert has_inversion_line(x.detach(), CLIP).tolist() == [True, False]
    # one pixel pair at exactly 150 G: each soft mask 1/2 (dilated over the neighbour), P = 1/4
    half = torch.zeros(1, 1, 8, 8)
    half[..., 2, 2], half[..., 2, 4] = 0.15, -0.15
    assert float(pil_log_presence(half, CLIP).exp()) == pytest.approx(0.25, rel=1e-5)
    assert float(pil_bce(half, torch.tensor([True]), CLIP)) == pytest.approx(np.log(4), rel=1e-5)
    assert float(pil_bce(half, torch.tensor([False]), CLIP)) == pytest.approx(np.log(4 / 3), rel=1e-5)
    assert PIL_TAU_GAUSS == 5.0


def test_inversion_line_term_fits_the_real_share_and_joins_the_loss(real_windows):
    """fit_structure records the training share of R = 0; the term labels a latent 'line' when
    its R axis lies above that quantile and adds ``pil_weight * mean(BCE)`` to the loss; it
    needs r_value, and at 0 (the default) it is off and out of the checkpoint hash."""
    from sharpgen.gan.train import GanConfig

    x, scale = real_windows
    x = x[r_value_scale(scale.size_arcsec) == R_VALUE_STEP]
    x = np.concatenate([x, 0.2 * x])  # observed and weakened: some without a 150 G line
    names = ("tuf", "r_value")
    off = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP)
    on = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP, pil_weight=0.5)
    share = 1.0 - has_inversion_line(torch.from_numpy(x)[:, None], CLIP).float().mean().item()
    assert 0 < on.r_free_share == pytest.approx(share) and on.as_dict()["pil_weight"] == 0.5
    assert off.pil_weight == 0.0 and np.isnan(fit_structure(x, ("tuf",), 8, 1.0, CLIP).r_free_share)
    imgs = torch.from_numpy(x[:: len(x) // 64][:64])[:, None]
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    state = on.torch_state("cpu")
    labels = torch.special.ndtr(z @ state["axes"][1]) > on.r_free_share
    assert 0 < labels.sum() < 64
    want = structure_loss(imgs, z, off, state) + 0.5 * pil_bce(imgs, labels, CLIP).mean()
    torch.testing.assert_close(structure_loss(imgs, z, on, state), want)
    with pytest.raises(ValueError, match="needs r_value"):
        fit_structure(x, ("tuf", "psep"), nz=8, weight=1.0, clip_gauss=CLIP, pil_weight=0.5)
    with pytest.raises(ValueError, match="needs r_value"):
        GanConfig.from_dict({"structure": ["tuf"], "structure_pil_weight": 0.5})
    with pytest.raises(ValueError, match="structure_pil_weight"):
        GanConfig.from_dict({"structure_pil_weight": -1.0})
    assert "structure_pil_weight" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"structure_pil_weight": 0.5}).trajectory_dict()["structure_pil_weight"] == 0.5


def test_training_with_the_inversion_line_term_saves_it(tmp_path, bipoles):
    path = _train(tmp_path, bipoles, "pil", structure=["tuf", "r_value"], structure_pil_weight=0.5,
                  steps=2, checkpoint_every=2)
    saved = torch.load(path, weights_only=False)["structure"]
    assert saved["pil_weight"] == 0.5 and 0.0 <= saved["r_free_share"] < 1.0


def test_axes_take_the_pipeline_parameters_correlation(real_windows, bipoles, tmp_path):
    """``gan.structure_correlation: parameters``: the axes' correlation is that of the normal
    scores (ties averaged) of the pipeline's own parameters of the patches, measured at the
    nominal pixel scale as generated images are; the targets (the proxies' quantiles) are
    unchanged. With weak-field copies of real SHARP windows R = 0 ties a share of them, so R's
    correlation with the flux is lower than the soft proxies' (which have no ties). Saved with the generator; kept out of
    the hash at ``proxies``; needs the scale; unknown sources are refused."""
    from sharpgen.gan.train import GanConfig
    from sharpgen.physics import PixelScale

    x, scale = real_windows
    x = np.concatenate([x, 0.12 * x[::3]])  # weak copies (|Br| <= 120 G): no R, as in plage-only crops
    nominal = PixelScale(size_mm=float(np.median(scale.size_mm)), area_cm2=float(np.median(scale.area_cm2)),
                         size_arcsec=float(np.median(scale.size_arcsec)))
    names = ("tuf", "psep", "r_value")
    sp = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP, correlation="parameters",
                       pixel_scale=nominal)
    sx = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP)
    hard = compute_parameters(x.astype(np.float64) * CLIP, nominal)[list(names)].to_numpy()
    assert np.mean(hard[:, 2] == 0) >= 0.2  # no inversion line: tied at R = 0
    assert np.isnan(hard[:, 1]).sum() >= 5  # psep: no 150 G polarity; each pair over its finite rows
    for i in range(3):
        for j in range(3):
            ok = np.isfinite(hard[:, i]) & np.isfinite(hard[:, j])
            ns = [stats.norm.ppf((stats.rankdata(hard[ok, k]) - 0.5) / ok.sum()) for k in (i, j)]
            assert sp.correlation[i, j] == pytest.approx(np.corrcoef(ns)[0, 1], abs=1e-12)
    np.testing.assert_allclose(sp.axes @ sp.axes.T, sp.correlation, atol=1e-10)
    np.testing.assert_array_equal(sp.quantiles, sx.quantiles)
    np.testing.assert_array_equal(sp.sd, sx.sd)
    assert sp.correlation[0, 2] < sx.correlation[0, 2] - 0.02, (sp.correlation, sx.correlation)
    assert sp.correlation_source == "parameters" and sx.correlation_source == "proxies"
    with pytest.raises(ValueError, match="pixel scale"):
        fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP, correlation="parameters")
    with pytest.raises(ValueError, match="structure_correlation"):
        fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP, correlation="spearman")
    assert "structure_correlation" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"structure_correlation": "parameters"}).trajectory_dict()[
        "structure_correlation"] == "parameters"
    with pytest.raises(ValueError, match="structure_correlation"):
        GanConfig.from_dict({"structure_correlation": "spearman"})
    # training uses and saves it
    g = _train(tmp_path, bipoles, "c", structure=["tuf", "r_value"], structure_correlation="parameters",
               _scale=nominal, steps=2, checkpoint_every=2)
    saved = torch.load(g, weights_only=False)["structure"]
    want = fit_structure(bipoles, ("tuf", "r_value"), nz=100, weight=1.0, clip_gauss=CLIP,
                         correlation="parameters", pixel_scale=nominal)
    assert saved["correlation_source"] == "parameters"
    np.testing.assert_allclose(np.asarray(saved["correlation"]), want.correlation)


def test_r_straight_through_takes_the_pipelines_r_value_and_the_soft_gradient(real_windows, bipoles, tmp_path):
    """``gan.structure_r_straight_through``: :func:`r_value_exact` is the pipeline's R_VALUE
    (sharpgen.rvalue, JSOC's computeR) window by window on real SHARP windows at the step the
    proxies assume, 0 on weak-field copies with no inversion line; r_value's proxy then takes
    that value with the soft proxy's gradient; R's targets are the exact values' quantiles
    (R = 0 for the patches without a line), the correlation and the other parameters' targets
    stay the soft proxies'. Saved, kept out of the hash when off, refused without r_value."""
    from sharpgen.gan.structure import r_value_exact
    from sharpgen.gan.train import GanConfig

    x, scale = real_windows
    x = np.concatenate([x, 0.12 * x[::3]])  # weak copies (|Br| <= 120 G): R = 0
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    assert set(r_value_scale(scale.size_arcsec)) == {R_VALUE_STEP}
    from sharpgen.rvalue import r_value
    from sharpgen.physics import PixelScale

    nominal = PixelScale(size_mm=float(np.median(scale.size_mm)), area_cm2=float(np.median(scale.area_cm2)),
                         size_arcsec=float(np.median(scale.size_arcsec)))
    want = r_value(xt[:, 0].double().numpy() * CLIP, nominal)
    got = r_value_exact(xt, CLIP).numpy()
    assert np.mean(want == 0) >= 0.2 and np.mean(want > 0) >= 0.4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # straight-through: the exact value forward, the soft proxy's gradient backward
    a = xt[:6].clone().requires_grad_(True)
    b = xt[:6].clone().requires_grad_(True)
    st = proxies(a, ["tuf", "r_value"], CLIP, r_straight_through=True)
    soft = proxies(b, ["tuf", "r_value"], CLIP)
    np.testing.assert_allclose(st[:, 1].detach().numpy(), want[:6], atol=1e-5)
    assert torch.equal(st[:, 0], soft[:, 0])
    st[:, 1].sum().backward()
    soft[:, 1].sum().backward()
    assert torch.allclose(a.grad, b.grad) and a.grad.abs().sum() > 0
    # fitted: R's quantiles from the exact values, everything else as without
    names = ("tuf", "r_value")
    s1 = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP, r_straight_through=True)
    s0 = fit_structure(x, names, nz=8, weight=1.0, clip_gauss=CLIP)
    probs = (np.arange(s1.quantiles.shape[1]) + 0.5) / s1.quantiles.shape[1]
    np.testing.assert_allclose(s1.quantiles[1], np.quantile(want, probs), atol=1e-9)
    assert s1.quantiles[1, 0] == 0.0 and s0.quantiles[1, 0] > 0.0
    assert s1.sd[1] == pytest.approx(want.std(), rel=1e-9)
    np.testing.assert_array_equal(s1.quantiles[0], s0.quantiles[0])
    np.testing.assert_array_equal(s1.correlation, s0.correlation)
    assert s1.as_dict()["r_straight_through"] is True and s0.r_straight_through is False
    real = xt[:8]
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    state = s1.torch_state("cpu")
    p = torch.stack([proxies(real, ["tuf"], CLIP)[:, 0], torch.from_numpy(want[:8]).float()], dim=1)
    assert float(structure_loss(real, z, s1, state)) == pytest.approx(
        float((((p - targets(z, state)) / state["sd"]) ** 2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="r_value"):
        fit_structure(x, ("tuf", "psep"), nz=8, weight=1.0, clip_gauss=CLIP, r_straight_through=True)
    assert "structure_r_straight_through" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"structure_r_straight_through": True}).trajectory_dict()[
        "structure_r_straight_through"] is True
    with pytest.raises(ValueError, match="structure_r_straight_through"):
        GanConfig.from_dict({"structure_r_straight_through": "yes"})
    g = _train(tmp_path, bipoles, "st", structure=["tuf", "r_value"], structure_r_straight_through=True,
               steps=2, checkpoint_every=2)
    assert torch.load(g, weights_only=False)["structure"]["r_straight_through"] is True


def test_parameter_weights_scale_each_parameters_term(real_windows, bipoles, tmp_path):
    """``gan.structure_parameter_weights``: each listed parameter's squared, sd-scaled error is
    multiplied by its factor before the mean over parameters and latents (unlisted: 1, so no
    factors is the unweighted loss, bit for bit); the axes, targets and sd do not change. Saved
    in generator.pt, out of the hash when empty or all 1, refused for a parameter not in the
    structure or a factor below 0."""
    from sharpgen.gan.train import GanConfig

    x = torch.from_numpy(real_windows[0][:16])[:, None]
    names = ("tuf", "psep", "r_value")
    s1 = fit_structure(real_windows[0], names, nz=8, weight=2.0, clip_gauss=CLIP)
    sw = fit_structure(real_windows[0], names, nz=8, weight=2.0, clip_gauss=CLIP,
                       parameter_weights={"tuf": 3.0, "r_value": 0.5})
    np.testing.assert_array_equal(s1.parameter_weights, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(sw.parameter_weights, [3.0, 1.0, 0.5])
    for k in ("axes", "quantiles", "sd", "correlation"):
        np.testing.assert_array_equal(getattr(sw, k), getattr(s1, k))
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    state1, statew = s1.torch_state("cpu"), sw.torch_state("cpu")
    sq = (((proxies(x, names, CLIP) - targets(z, state1)) / state1["sd"]) ** 2).mean(dim=0)  # (K,)
    assert torch.equal(structure_loss(x, z, s1, state1), 2.0 * (((proxies(x, names, CLIP) - targets(z, state1))
                                                                 / state1["sd"]) ** 2).mean())
    want = 2.0 * (3.0 * sq[0] + sq[1] + 0.5 * sq[2]) / 3
    assert float(structure_loss(x, z, sw, statew)) == pytest.approx(float(want), rel=1e-5)
    assert float(structure_loss(x, z, sw, statew)) != pytest.approx(float(structure_loss(x, z, s1, state1)), rel=1e-3)
    with pytest.raises(ValueError, match="psep_robust|r_paper"):
        fit_structure(real_windows[0], names, nz=8, weight=1.0, clip_gauss=CLIP, parameter_weights={"r_paper": 2})
    with pytest.raises(ValueError, match=">= 0"):
        fit_structure(real_windows[0], names, nz=8, weight=1.0, clip_gauss=CLIP, parameter_weights={"tuf": -1})
    # config: checked, normalised to floats, out of the hash when it changes nothing
    base = GanConfig.from_dict({}).trajectory_dict()
    assert "structure_parameter_weights" not in base
    assert GanConfig.from_dict({"structure_parameter_weights": {"tuf": 1}}).trajectory_dict() == base
    on = GanConfig.from_dict({"structure_parameter_weights": {"tuf": 3}})
    assert on.structure_parameter_weights == {"tuf": 3.0}
    assert on.trajectory_dict()["structure_parameter_weights"] == {"tuf": 3.0}
    for bad, msg in (({"r_paper": 2}, "not in gan.structure"), ({"tuf": -1}, ">= 0"),
                     ({"tuf": True}, ">= 0"), ([3.0], "must map")):
        with pytest.raises(ValueError, match=msg):
            GanConfig.from_dict({"structure_parameter_weights": bad})
    g = _train(tmp_path, bipoles, "pw", structure=["tuf", "psep"], structure_parameter_weights={"psep": 2},
               steps=2, checkpoint_every=2)
    assert torch.load(g, weights_only=False)["structure"]["parameter_weights"] == [1.0, 2.0]


def test_structure_terms_decompose_the_loss_and_the_structure_reloads(real_windows):
    """:func:`structure_terms` gives each parameter's term: ``weight * mean(factors * terms)``
    is :func:`structure_loss` (no inversion-line term), in any batch size; a target moved away
    from the images raises its parameter's term. :meth:`LatentStructure.from_dict`
    rebuilds a structure from :meth:`LatentStructure.as_dict` (what generator.pt holds), and a
    dict from before an option takes the option's off setting."""
    names = ("tuf", "psep", "r_value")
    s = fit_structure(real_windows[0], names, nz=8, weight=1.5, clip_gauss=CLIP,
                      parameter_weights={"tuf": 3.0, "psep": 2.0})
    x = torch.from_numpy(real_windows[0][:24])[:, None]
    z = torch.randn(24, 8, generator=torch.Generator().manual_seed(3))
    terms = structure_terms(x, z, s, batch=7)
    assert terms.shape == (3,) and np.all(terms > 0)
    np.testing.assert_allclose(terms, structure_terms(x, z, s, batch=500), rtol=1e-6)
    loss = float(structure_loss(x, z, s, s.torch_state("cpu")))
    assert 1.5 * float(np.mean(s.parameter_weights * terms)) == pytest.approx(loss, rel=1e-5)
    # the same images asked for 3 sd more of tuf: tuf's term grows by ~9 sd^2
    moved = structure_terms(x, z + 3.0 * torch.from_numpy(s.axes[0]).float(), s)
    assert moved[0] > terms[0] + 1.0
    back = LatentStructure.from_dict(s.as_dict())
    for k in ("axes", "quantiles", "sd", "correlation", "parameter_weights"):
        np.testing.assert_array_equal(getattr(back, k), getattr(s, k))
    assert back.names == s.names and back.weight == s.weight
    old = {k: v for k, v in s.as_dict().items() if k not in ("parameter_weights", "r_straight_through", "r_grid")}
    older = LatentStructure.from_dict(old)
    np.testing.assert_array_equal(older.parameter_weights, [1.0, 1.0, 1.0])
    assert older.r_grid == "mean" and older.r_straight_through is False
