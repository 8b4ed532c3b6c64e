"""sharpgen.directions.linearity: where a parameter's non-linear part lives (issue 19). < 10 s."""

import numpy as np
import pytest

from sharpgen.directions.linearity import grain_variance_share, linear_and_mlp_r2, step_ratio


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
