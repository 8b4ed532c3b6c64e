"""Classifier two-sample test (sharpgen.c2st): the protocol on small synthetic samples, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharpgen import c2st as c2st_mod
from sharpgen.c2st import C2stError, c2st, stratified_folds
from test_gan import synthetic_bipoles

#: small and quick: 32x32 maps, 3 folds, the protocol's epochs, one repeat
FAST = dict(folds=3, epochs=15, repeats=1)


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


def test_repeats_average_independent_runs_and_keep_the_first():
    """The protocol's accuracy is the mean of `repeats` runs with seeds seed, seed + 1, ...; the
    first repeat is the single run (the number before repeats existed), each repeat differs."""
    a = synthetic_bipoles(40, 32, seed=1)
    b = synthetic_bipoles(60, 32, seed=2)  # the same distribution: accuracies around 0.5
    fast = dict(folds=3, epochs=15)
    single = [c2st(a, b, seed=s, repeats=1, **fast) for s in (5, 6, 7)]
    rep = c2st(a, b, seed=5, repeats=3, **fast)
    assert rep["accuracy_repeats"] == [r["accuracy"] for r in single]
    assert rep["accuracy"] == pytest.approx(np.mean(rep["accuracy_repeats"]))
    assert rep["accuracy_repeats_std"] == pytest.approx(np.std(rep["accuracy_repeats"], ddof=1))
    assert len(set(rep["accuracy_repeats"])) > 1  # other subsets, folds and networks
    assert rep["fold_accuracy"] == [f for r in single for f in r["fold_accuracy"]]
    assert rep["n_correct"] == sum(r["n_correct"] for r in single)
    assert rep["p_value"] == max(r["p_value"] for r in single)
    assert rep["auc"] == pytest.approx(np.mean([r["auc"] for r in single]))
    assert rep["protocol"]["repeats"] == 3 and rep["protocol"]["seed"] == 5
    assert single[0]["accuracy_repeats_std"] == 0.0
    assert c2st_mod.PROTOCOL["repeats"] == 3  # the pipeline's default
    with pytest.raises(C2stError, match="repeat"):
        c2st(a, b, repeats=0, **fast)


def test_input_errors():
    a = synthetic_bipoles(8, 32, seed=1)
    with pytest.raises(C2stError, match="images per class"):
        c2st(a, a, folds=5)
    with pytest.raises(C2stError, match="same S"):
        c2st(a, synthetic_bipoles(8, 64, seed=1), folds=2)
    with pytest.raises(C2stError, match="groups must have shape"):
        c2st(a, a, real_groups=np.arange(3), folds=2, epochs=1)


def test_diagnostic_views_remove_what_they_name():
    from sharpgen.c2st import block_mean, diagnostic_views, low_pass, polarity_masks, quantile_map

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    ref = rng.normal(0, 0.2, (5, 16, 16)).astype(np.float32)
    # quantile map: the pooled histogram becomes the reference's, the pixel ranks stay
    q = quantile_map(x, ref)
    picks = np.linspace(0, ref.size - 1, q.size).round().astype(int)
    assert np.allclose(np.sort(q.ravel()), np.sort(ref.ravel())[picks], atol=0.05)
    assert (np.argsort(q.ravel(), kind="stable") == np.argsort(x.ravel(), kind="stable")).all()
    # low pass kills the Nyquist checkerboard, keeps a constant
    yy, xx = np.mgrid[0:16, 0:16]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(np.float32)[None]
    assert np.abs(low_pass(checker, 1.0)[:, 3:-3, 3:-3]).max() < 0.02  # interior (edges replicated)
    assert np.allclose(low_pass(np.full((1, 16, 16), 0.3, np.float32), 2.0), 0.3)
    assert set(np.unique(polarity_masks(x, 0.5))) <= {-1.0, 0.0, 1.0}
    assert (polarity_masks(x, 0.5) == np.sign(x) * (np.abs(x) > 0.5)).all()
    assert np.allclose(block_mean(x, 4)[0, 0, 0], x[0, :4, :4].mean())
    views = diagnostic_views(1000.0)
    r, g = views["strong_polarity_masks"](x, x * 0.1)
    assert np.abs(g).max() == 0 and np.abs(r).max() == 1  # 0.1 x never exceeds 150 G
    # the high-pass split by the low-passed field: weak + strong = the whole high-pass
    from sharpgen.c2st import high_pass_where

    field = np.where(xx < 8, 0.6, 0.01).astype(np.float32)[None] + 0.05 * x[:1]
    weak, strong = high_pass_where(field, 0.15, True), high_pass_where(field, 0.15, False)
    np.testing.assert_allclose(weak + strong, field - low_pass(field, 2.0), atol=1e-6)
    assert np.abs(weak[:, :, :6]).max() == 0 and np.abs(strong[:, :, 10:]).max() == 0
    assert np.abs(weak[:, :, 10:]).max() > 0 and np.abs(strong[:, :, :6]).max() > 0
    r, g = views["high_pass_weak_field"](field, field)
    np.testing.assert_array_equal(r, weak)


def test_diagnostics_find_the_giveaway():
    # generated = real distribution + a checkerboard: told apart as is, not after a low-pass
    from sharpgen.c2st import c2st_diagnostics

    a = synthetic_bipoles(90, 32, seed=1)
    b = synthetic_bipoles(90, 32, seed=2)
    yy, xx = np.mgrid[0:32, 0:32]
    checker = 0.05 * np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(np.float32)
    d = c2st_diagnostics(a, np.clip(b + checker, -1, 1), clip_gauss=1000.0,
                         views=["as_is", "low_pass_2px"], seed=0, **FAST)
    assert d["as_is"]["accuracy"] >= 0.9, d
    assert d["low_pass_2px"]["accuracy"] <= 0.7, d
    with pytest.raises(C2stError, match="unknown C2ST diagnostic"):
        c2st_diagnostics(a, b, clip_gauss=1000.0, views=["nope"])


def test_weak_texture_views_keep_what_they_name():
    from sharpgen.c2st import (diagnostic_views, low_pass, randomise_phases, shuffle_where,
                               weak_texture, whiten_where)

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    # a strong block on the left, smooth-correlated weak texture elsewhere, zero padding at the top
    tex = low_pass(rng.normal(0, 0.02, (6, 64, 64)).astype(np.float32), 1.0)
    x = np.where(xx < 10, 0.6, 0.0).astype(np.float32)[None] + tex
    x[:, :3] = 0.0
    hp, weak = weak_texture(x, 0.15)
    np.testing.assert_allclose(hp, x - low_pass(x, 2.0), atol=1e-6)
    assert not weak[:, :3].any() and not weak[:, :, :6].any() and weak[:, 5:, 16:].all()
    # shuffled: each image keeps its own masked values, nothing outside, lag-1 correlation gone
    s = shuffle_where(hp, weak, seed=0)
    for i in range(6):
        np.testing.assert_array_equal(np.sort(s[i][weak[i]]), np.sort(hp[i][weak[i]]))
    assert (s[~weak] == 0).all()

    def lag1(h, m):
        both = m[:, :, 1:] & m[:, :, :-1]
        return float((h[:, :, 1:] * h[:, :, :-1])[both].mean() / (h[m] ** 2).mean())

    assert lag1(hp, weak) > 0.3 and abs(lag1(s, weak)) < 0.1
    np.testing.assert_array_equal(shuffle_where(hp, weak, seed=0), s)  # seeded
    assert not np.array_equal(shuffle_where(hp, weak, seed=1), s)
    # whitened: a texture whose amplitude doubles across the image comes out with one amplitude
    amp = np.where(xx < 32, 1.0, 2.0)[None] * rng.normal(0, 0.05, (2, 64, 64))
    w = whiten_where(amp, np.ones_like(amp, bool))
    left, right = w[:, 8:56, 4:24].std(), w[:, 8:56, 40:60].std()
    assert abs(left / right - 1) < 0.1 and abs(w.std() - 0.1) < 0.02
    # phase-randomised (no mask): every image keeps its 2D power spectrum, not its pixels
    full = np.ones_like(hp, bool)
    p = randomise_phases(hp, full, seed=0)
    np.testing.assert_allclose(np.abs(np.fft.fft2(p)), np.abs(np.fft.fft2(hp)), rtol=1e-3, atol=1e-5)
    assert np.abs(p - hp).max() > 0.01
    views = diagnostic_views(1000.0)
    for name in ("weak_texture_shuffled", "weak_texture_whitened", "weak_texture_phase_random"):
        r, g = views[name](x, x)
        assert r.shape == g.shape == x.shape and (r[~weak] == 0).all()
    r, g = views["weak_texture_shuffled"](x, x)  # the two sides draw other permutations
    assert not np.array_equal(r, g)
