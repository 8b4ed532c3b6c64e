"""sharpgen.directions.linearity: where a parameter's non-linear part lives (issue 19). < 10 s."""

import numpy as np
import pytest

from sharpgen.directions.linearity import (axis_fit, correlation_chain, grain_variance_share, linear_and_mlp_r2,
                                           step_ratio)


def test_grain_variance_share_recovers_the_planted_noise_share():
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    signal = rng.standard_normal((n, 1))                    # the part z sets: variance 1
    for s in (0.0, 0.5, 1.0):
        vals = signal + s * rng.standard_normal((n, k))     # each draw of the map adds s^2
        assert grain_variance_share(vals) == pytest.approx(s * s / (1 + s * s), abs=0.03)
    vals = signal + rng.standard_normal((n, k))
    vals[:10, 2] = np.nan                                   # incomplete rows are dropped
    assert grain_variance_share(vals) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="K >= 2"):
        grain_variance_share(vals[:, :1])


def test_linear_and_mlp_r2_tell_a_smooth_non_linearity_from_a_linear_one():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3000, 8))
    a = np.zeros(8)
    a[0] = 1.0
    lin = linear_and_mlp_r2(z, z @ a + 0.5 * rng.standard_normal(3000))
    assert lin["linear"] == pytest.approx(0.8, abs=0.05) and lin["mlp"] < lin["linear"] + 0.05
    sq = (z @ a) ** 2                                       # even in z: no linear part at all
    both = linear_and_mlp_r2(z, sq)
    assert both["linear"] < 0.05 and both["mlp"] > 0.6
    y = sq.copy()
    y[:100] = np.nan
    only = linear_and_mlp_r2(z, y, mlp=False)
    assert only["n"] == 2900 and "mlp" not in only


def test_step_ratio_grows_with_the_step_only_for_a_smooth_parameter():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((500, 20))
    u = rng.standard_normal((500, 20))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a = rng.standard_normal(20)

    def smooth(x):
        return x @ a

    def jumpy(x):  # changes sign on a fine grid along a: any step of 0.05 already scrambles it
        return np.sign(np.sin(200.0 * (x @ a)))

    assert step_ratio(smooth(z), smooth(z + 0.05 * u), smooth(z + 0.5 * u)) == pytest.approx(10.0, rel=1e-6)
    assert step_ratio(jumpy(z), jumpy(z + 0.05 * u), jumpy(z + 0.5 * u)) < 2.0


def test_correlation_chain_separates_the_ties_where_they_fall_and_the_scatter():
    """A flux and R on a Gaussian copula of correlation 0.84 (R's latent axis u): R a monotone
    function of u with its lowest 40 % at 0 loses only the ties (0.828 -> ~0.79, as the
    closed form of docs/gan.md's simulation), every later step is exact; zeros drawn where u
    is low but not only there lose more at the third step; scatter about the axis loses at the
    last step alone."""
    rng = np.random.default_rng(0)
    n = 40_000
    u = rng.standard_normal(n)
    flux = 0.84 * u + np.sqrt(1 - 0.84 ** 2) * rng.standard_normal(n)
    cut = np.quantile(u, 0.4)
    exact = correlation_chain(flux, np.where(u > cut, np.exp(u), 0.0), u)
    assert exact["share"] == pytest.approx(0.4, abs=1e-3)
    assert exact["axis"] == pytest.approx(6 / np.pi * np.arcsin(0.42), abs=0.01)
    assert 0.77 < exact["axis_tied_lowest"] < exact["axis"] - 0.02
    assert exact["axis_tied_observed"] == pytest.approx(exact["axis_tied_lowest"], abs=1e-9)
    assert exact["parameter"] == pytest.approx(exact["axis_tied_lowest"], abs=1e-9)
    # zeros where a noisy copy of u is low: same share, they fall elsewhere
    noisy = u + 0.5 * rng.standard_normal(n)
    fuzzy = correlation_chain(flux, np.where(noisy > np.quantile(noisy, 0.4), np.exp(u), 0.0), u)
    assert fuzzy["axis_tied_lowest"] == pytest.approx(exact["axis_tied_lowest"], abs=1e-9)
    assert fuzzy["axis_tied_observed"] < exact["axis_tied_observed"] - 0.02
    assert fuzzy["parameter"] == pytest.approx(fuzzy["axis_tied_observed"], abs=1e-9)
    # scatter about the axis on the rows with R
    scatter = correlation_chain(flux, np.where(u > cut, np.exp(u + 0.7 * rng.standard_normal(n)), 0.0), u)
    assert scatter["axis_tied_observed"] == pytest.approx(exact["axis_tied_observed"], abs=1e-9)
    assert scatter["parameter"] < scatter["axis_tied_observed"] - 0.02
    with pytest.raises(ValueError, match="finite"):
        correlation_chain([1.0, np.nan], [0.0, 1.0], [0.0, 1.0])


def test_axis_fit_is_one_for_a_monotone_function_and_falls_with_the_scatter():
    """A parameter that is a strictly monotone function of its Gaussian axis fits it with
    Pearson ~1, whatever the function; scatter of sd s about the axis gives ~1/sqrt(1 + s^2)
    (the normal scores of a Gaussian sum are that sum standardised); non-finite rows are
    dropped; fewer than 3 rows refused."""
    rng = np.random.default_rng(1)
    n = 20_000
    u = rng.standard_normal(n)
    assert axis_fit(np.exp(2 * u), u) > 0.999
    assert axis_fit(np.exp(2 * u), u) == pytest.approx(axis_fit(u ** 3, u), abs=1e-12)  # ranks only
    assert axis_fit(-u, u) < -0.999
    noisy = u + 0.5 * rng.standard_normal(n)
    assert axis_fit(np.exp(noisy), u) == pytest.approx(1 / np.sqrt(1.25), abs=0.01)
    with_nan = np.exp(noisy)
    with_nan[:100] = np.nan
    assert axis_fit(with_nan, u) == pytest.approx(axis_fit(np.exp(noisy[100:]), u[100:]), abs=1e-12)
    with pytest.raises(ValueError, match="finite rows"):
        axis_fit([1.0, np.nan, 2.0], [0.0, 1.0, 2.0])
