"""Classifier two-sample test (sharpgen.c2st): the protocol on small synthetic samples, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharpgen import c2st as c2st_mod
from sharpgen.c2st import C2stError, c2st, stratified_folds
from test_gan import synthetic_bipoles

#: small and quick: 32x32 maps, 3 folds, the protocol's epochs
FAST = dict(folds=3, epochs=15)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_identical_distributions_give_chance_accuracy():
    a = synthetic_bipoles(90, 32, seed=1)
    b = synthetic_bipoles(90, 32, seed=2)  # the same distribution, other draws
    r = c2st(a, b, seed=0, **FAST)
    assert r["n_per_class"] == 90 and len(r["fold_accuracy"]) == 3
    assert 0.35 <= r["accuracy"] <= 0.65, r
    assert r["p_value"] > 0.01


def test_clearly_different_distributions_are_told_apart():
    a = synthetic_bipoles(90, 32, seed=1)
    b = synthetic_bipoles(90, 32, seed=2)
    yy, xx = np.mgrid[0:32, 0:32]
    checker = 0.05 * np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(np.float32)
    r = c2st(a, np.clip(b + checker, -1, 1), seed=0, **FAST)  # a checkerboard on top
    assert r["accuracy"] >= 0.9 and r["p_value"] < 1e-6, r
    blurred = np.clip(b * 0.0 + np.sign(b) * np.abs(b) ** 0.5, -1, 1)  # flat, saturated plateaus
    assert c2st(a, blurred, seed=0, **FAST)["accuracy"] >= 0.9


def test_near_duplicate_groups_need_grouped_folds():
    # 15 "regions" per class, 6 near-identical frames each, all from one distribution: an
    # ungrouped split lets the classifier recognise the regions it saw with their label
    rng = np.random.default_rng(0)
    base = synthetic_bipoles(30, 32, seed=3)
    frames = np.repeat(base, 6, axis=0) + 0.01 * rng.standard_normal((180, 32, 32)).astype(np.float32)
    groups = np.repeat(np.arange(30), 6)
    real, gen = frames[:90], frames[90:]
    ungrouped = c2st(real, gen, seed=0, **FAST)
    grouped = c2st(real, gen, real_groups=groups[:90], generated_groups=groups[90:], seed=0, **FAST)
    assert ungrouped["accuracy"] > 0.75, ungrouped
    assert grouped["accuracy"] < 0.7, grouped
    assert grouped["n_groups"] == {"real": 15, "generated": 15}
    assert grouped["accuracy"] < ungrouped["accuracy"] - 0.15


def test_stratified_grouped_folds():
    labels = np.repeat([1, 0], [40, 40])
    groups = np.concatenate([np.repeat(np.arange(8), 5), 100 + np.arange(40)])
    fold = stratified_folds(labels, 4, np.random.default_rng(0), groups)
    for g in np.unique(groups):  # a group never spans folds
        assert np.unique(fold[groups == g]).size == 1
    for c in (0, 1):  # each fold holds a quarter of each class
        counts = np.bincount(fold[labels == c], minlength=4)
        assert counts.tolist() == [10, 10, 10, 10]


def test_deterministic_and_seeded():
    a = synthetic_bipoles(40, 32, seed=1)
    b = np.clip(synthetic_bipoles(40, 32, seed=2) * 1.5, -1, 1)
    r1 = c2st(a, b, seed=3, **FAST)
    r2 = c2st(a, b, seed=3, **FAST)
    r1.pop("seconds"), r2.pop("seconds")
    assert r1 == r2
    assert r1["protocol"]["seed"] == 3 and r1["protocol"]["folds"] == 3
    assert r1["protocol"]["classifier"] == c2st_mod.PROTOCOL["classifier"]


def test_input_errors():
    a = synthetic_bipoles(8, 32, seed=1)
    with pytest.raises(C2stError, match="images per class"):
        c2st(a, a, folds=5)
    with pytest.raises(C2stError, match="same S"):
        c2st(a, synthetic_bipoles(8, 64, seed=1), folds=2)
    with pytest.raises(C2stError, match="groups must have shape"):
        c2st(a, a, real_groups=np.arange(3), folds=2, epochs=1)
