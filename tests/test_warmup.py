"""CPU kernel warm-up (sharpgen.warmup): a rehearsed first step and the once-per-shape passes
leave every model, optimiser and random stream as it was, and the trainings that use them
(GAN, SimSiam, C2ST) give the runs they gave without them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from sharpgen import c2st, ssl, warmup
from sharpgen.gan.train import GanConfig, train_gan

from test_gan import TINY as GAN_TINY
from test_gan import _weights
from test_ssl import TINY as SSL_TINY
from test_ssl import bipoles


def test_rehearse_runs_the_step_on_copies_and_restores_every_random_stream():
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    states = (gen.get_state(), torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    seen = {}

    def step(m, o):
        x = torch.randn(3, 4, generator=gen) + torch.randn(3, 4)  # both streams
        np.random.random(), random.random()
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
        seen["moved"] = not torch.equal(m.weight, before["weight"])
        seen["copy"] = m is not net and o is not opt

    warmup.rehearse(step, net, opt, generators=[gen])
    assert seen == {"moved": True, "copy": True}  # the optimiser copy updated the model copy
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert opt.state_dict()["state"] == {}
    assert torch.equal(gen.get_state(), states[0]) and torch.equal(torch.get_rng_state(), states[1])
    assert np.array_equal(np.random.get_state()[1], states[2]) and random.getstate() == states[3]


def test_once_runs_each_key_once(monkeypatch):
    monkeypatch.setattr(warmup, "_DONE", set())
    calls = []
    assert warmup.once(("a", 1), lambda: calls.append(1))
    assert not warmup.once(("a", 1), lambda: calls.append(2))
    assert warmup.once(("a", 2), lambda: calls.append(3))
    assert calls == [1, 3]


_REHEARSE = warmup.rehearse


def _count_rehearsals(monkeypatch, enabled: bool) -> list:
    """Count the trainings' calls of warmup.rehearse, letting them run or not."""
    calls, real = [], _REHEARSE

    def counted(*args, **kw):
        calls.append(1)
        if enabled:
            real(*args, **kw)

    monkeypatch.setattr(warmup, "rehearse", counted)
    return calls


def _gan(tmp, tag, patches, max_steps=None):
    # R1 and path length at step 0 too: the rehearsed step draws from the training stream
    cfg = GanConfig.from_dict({**GAN_TINY, "r1_gamma": 1.0, "pl_weight": 1.0})
    train_gan(patches, cfg, checkpoint_root=tmp / tag / "ck", generator_path=tmp / tag / "g.pt",
              log_csv=tmp / tag / "log.csv", data_id="t", threads=1, progress=False,
              max_steps_this_run=max_steps)
    return tmp / tag / "g.pt"


def test_gan_training_rehearses_its_first_step_without_changing_the_run(tmp_path, monkeypatch):
    patches = bipoles(16, 32, seed=1)
    calls = _count_rehearsals(monkeypatch, enabled=False)
    plain = _gan(tmp_path, "plain", patches)
    assert calls == [1]
    calls = _count_rehearsals(monkeypatch, enabled=True)
    rehearsed = _gan(tmp_path, "rehearsed", patches)
    _gan(tmp_path, "resumed", patches, max_steps=3)
    resumed = _gan(tmp_path, "resumed", patches)  # a new first step of this process: rehearsed
    assert calls == [1, 1, 1]
    wa, wb, wc = _weights(plain), _weights(rehearsed), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)


def test_simsiam_training_rehearses_its_first_step_without_changing_the_run(tmp_path, monkeypatch):
    # width 8, not TINY's 4: torch 2.13's CPU backward of a channels_last 1x1 stride-2 conv with
    # 2-7 input channels (the width-4 shortcut) gives a different weight gradient every call
    x, cfg = bipoles(24, 32, seed=2), dict(SSL_TINY, width=8)
    calls = _count_rehearsals(monkeypatch, enabled=False)
    plain, log_plain = ssl.train_simsiam(x, cfg, tmp_path / "a")
    calls2 = _count_rehearsals(monkeypatch, enabled=True)
    rehearsed, log_rehearsed = ssl.train_simsiam(x, cfg, tmp_path / "b")
    assert calls == [1] and calls2 == [1]
    sa, sb = plain.state_dict(), rehearsed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in log_plain] == [r["loss"] for r in log_rehearsed]


@pytest.mark.parametrize("enabled", [False, True])
def test_c2st_gives_the_same_verdict_with_and_without_the_warm_up(monkeypatch, enabled):
    real = bipoles(40, 32, seed=3)
    fake = np.clip(bipoles(40, 32, seed=4) * 1.6, -1, 1)
    monkeypatch.setattr(warmup, "_DONE", set())
    ref = c2st.c2st(real, fake, seed=0, folds=2, epochs=2, threads=1)
    monkeypatch.setattr(warmup, "_DONE", set())
    calls = _count_rehearsals(monkeypatch, enabled=enabled)
    out = c2st.c2st(real, fake, seed=0, folds=2, epochs=2, threads=1)
    assert calls  # the first step of each batch shape was rehearsed
    assert out["accuracy"] == ref["accuracy"] and out["auc"] == ref["auc"]
