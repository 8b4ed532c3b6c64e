"""The spectral term of the generator's loss (``gan.spectral_weight``, sharpgen.gan.spectral)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgen.gan.spectral import SpectralLoss, add_losses, mean_radial_power, radial_index
from sharpgen.gan.train import GanConfig
from sharpgen.imagestats import mean_power_spectrum

from test_gan import synthetic_bipoles


def test_mean_radial_power_is_the_quality_reports_spectrum(real_windows):
    """The loss measures what the quality report measures (imagestats.mean_power_spectrum:
    per-image mean removed, annuli of integer radius 1..S/2), on real HMI windows."""
    wins = real_windows[0][:40]
    index, counts = radial_index(wins.shape[-1])
    ours = mean_radial_power(torch.from_numpy(wins)[:, None], index, counts).double().numpy()
    k, ref = mean_power_spectrum(wins)
    assert ours.shape == ref.shape == (wins.shape[-1] // 2,)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_spectral_loss_zero_on_the_data_and_pulls_towards_its_power():
    """The whole training set scores 0; a batch stripped of its fine scale scores > 0, and the
    loss's gradient on the weight of the removed high-pass part asks for it back."""
    patches = synthetic_bipoles(24, 32, seed=2)
    loss = SpectralLoss(patches, weight=3.0)
    x = torch.from_numpy(patches)[:, None]
    assert float(loss(x, None)) < 1e-8
    low = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    a = torch.tensor(0.2, requires_grad=True)   # fake = low + a (x - low); a = 1 is the data
    value = loss(low + a * (x - low), None)
    value.backward()
    assert float(value.detach()) > 0.01 and float(a.grad) < 0
    with torch.no_grad():  # and the loss is lower where the fine scale is back
        assert float(loss(low + 0.9 * (x - low))) < float(value)


def test_add_losses_and_config():
    """Terms add (the structure loss and this one share ``g_extra``); weight 0 is off and out of
    the checkpoint hash (configurations from before the option keep theirs); negative refused."""
    f = lambda fake, z: fake.sum()            # noqa: E731
    g = lambda fake, z: 2 * fake.sum()        # noqa: E731
    t = torch.ones(2, 1, 4, 4)
    assert add_losses(None, None) is None and add_losses(None, f) is f
    assert float(add_losses(f, None, g)(t, None)) == 96.0
    assert "spectral_weight" not in GanConfig.from_dict({}).trajectory_dict()
    assert GanConfig.from_dict({"spectral_weight": 2.5}).trajectory_dict()["spectral_weight"] == 2.5
    with pytest.raises(ValueError, match="spectral_weight"):
        GanConfig.from_dict({"spectral_weight": -1.0})


def test_training_with_the_spectral_term_moves_the_generator(tmp_path):
    """A few steps with the term on train (finite losses), and end elsewhere than without it."""
    from sharpgen import gan

    patches = synthetic_bipoles(16, 32, seed=1)
    base = dict(arch="stable", steps=4, batch_size=8, log_every=2, sample_every=4,
                checkpoint_every=4, keep_checkpoints=1, device="cpu", seed=3, structure=[])
    out = {}
    for w in (0.0, 5.0):
        d = tmp_path / f"w{w}"
        gan.train_gan(patches, GanConfig.from_dict({**base, "spectral_weight": w}),
                      checkpoint_root=d / "ckpt", generator_path=d / "generator.pt",
                      log_csv=d / "log.csv", samples_dir=d / "samples", threads=1, progress=False)
        g_loss = pd.read_csv(d / "log.csv")["g_loss"]
        assert len(g_loss) == 2 and np.isfinite(g_loss).all()
        out[w] = torch.load(d / "generator.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(out[0.0][k], out[5.0][k]) for k in out[0.0])
