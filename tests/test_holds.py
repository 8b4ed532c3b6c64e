"""Measured holds of conditional directions (sharpgen.directions.holds, directions.hold: measured)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sharpgen import directions as dr
from sharpgen.parameters import relative_error

D = 8


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def e(i):
    out = np.zeros(D)
    out[i] = 1.0
    return out


def test_projection_coefficients_reproduce_the_projection():
    rng = np.random.default_rng(0)
    n = rng.standard_normal(D)
    C = rng.standard_normal((2, D))
    b = dr.projection_coefficients(n, C)
    np.testing.assert_allclose(dr.combine_hold(n, C, b), dr.project_boundary(n, *C), atol=1e-12)
    one = dr.projection_coefficients(n, C[:1])
    np.testing.assert_allclose(one, [n @ C[0] / (C[0] @ C[0])])


def test_combine_hold_errors():
    with pytest.raises(dr.DirectionError, match="cancel"):
        dr.combine_hold(e(0), [e(0)], [1.0])
    with pytest.raises(dr.DirectionError, match="2 hold coefficients for 1 conditions"):
        dr.combine_hold(e(0), [e(1)], [0.1, 0.2])


def _residual(fn, slope=1.0):
    return lambda b: (fn(np.asarray(b)), {"spearman_median": 1.0, "target_slope_std": slope})


def test_solve_hold_one_and_two_held_parameters():
    # steep and non-linear (as psep|tuf: +0.1 in b swings the residual from 0.08 to -0.7)
    b, hist = dr.solve_hold(_residual(lambda b: np.tanh(8.0 * (0.9 - b)) + 0.02), [0.72], tol=0.01)
    assert abs(np.tanh(8.0 * (0.9 - b[0])) + 0.02) < 0.01 and len(hist) <= 8
    assert hist[0]["b"] == [0.72] and hist[1]["b"] == pytest.approx([0.82])  # start, then the probe
    A = np.array([[1.0, 0.4], [-0.3, 0.8]])
    root = np.array([0.9, 0.2])
    b, hist = dr.solve_hold(_residual(lambda b: A @ (root - b) + 0.3 * (root - b) ** 3), [0.5, 0.5],
                            tol=0.01, max_evaluations=12)
    assert np.max(np.abs(A @ (root - b) + 0.3 * (root - b) ** 3)) < 0.01
    np.testing.assert_allclose(b, root, atol=0.02)


def test_solve_hold_keeps_the_start_when_nothing_is_better():
    b, hist = dr.solve_hold(_residual(lambda b: np.array([0.5 + abs(b[0] - 0.3)])), [0.3], max_evaluations=5)
    assert b.tolist() == [0.3] and len(hist) == 5
    # a combination along which the target no longer increases does not count as a hold
    b, hist = dr.solve_hold(lambda b: (np.array([0.4 - b[0]]), {"spearman_median": 0.0,
                                                              "target_slope_std": 1.0 - b[0] / 0.35}),
                            [0.3], max_evaluations=6)
    assert b[0] < 0.35 and all(h["max_abs"] == np.inf for h in hist if h["b"][0] >= 0.35)


class ToyField:
    """Parameters of a latent z (D,): target a = z0 + 0.2 z2; held h = 0.3 z0 + z1 + 0.1 z1^3.
    The "boundary normals" are a's and a wrong guess for h's, unit(e0 + e1): projecting it out
    of a's normal does not hold h (h's true gradient is (0.3, 1 + 0.3 z1^2, 0, ...))."""

    normals = {"a": unit(e(0) + 0.2 * e(2)), "h": unit(e(0) + e(1))}

    @staticmethod
    def render(Z):
        Z = np.asarray(Z, dtype=np.float64)
        return pd.DataFrame({"a": Z[:, 0] + 0.2 * Z[:, 2], "h": 0.3 * Z[:, 0] + Z[:, 1] + 0.1 * Z[:, 1] ** 3})


def test_measured_hold_holds_on_new_bases_where_the_projection_does_not():
    field = dr.Boundaries(ToyField.normals)
    spec = dr.DirectionSpec("a", ("h",))
    eps = dr.eps_grid(1.0, 5)
    std = {"a": 1.0, "h": 1.0}
    fit_base = np.random.default_rng(1).standard_normal((32, D))
    holds, summary = dr.fit_holds(ToyField.render, field, [dr.DirectionSpec("a"), spec], fit_base, eps, std,
                                  tol=0.01)
    assert set(holds) == set(summary) == {"a|h"}  # unconditional directions have nothing to hold
    rec = summary["a|h"]
    assert rec["method"] == "measured" and rec["converged"]
    assert abs(rec["residual_projection"][0]) > 0.3 and abs(rec["residual"][0]) < 0.01
    assert rec["projection_coefficients"] == pytest.approx([ToyField.normals["a"] @ ToyField.normals["h"]])
    json.dumps(summary)  # boundaries.json

    # on bases the search never saw: the measured hold's held slope is ~0, the projection's is not
    new = np.random.default_rng(2).standard_normal((32, D))
    measured = dr.Boundaries(ToyField.normals, holds=holds)
    r_meas, info = dr.held_residuals(ToyField.render, measured, spec, holds["a|h"], new, eps, std)
    r_proj, _ = dr.held_residuals(ToyField.render, field, spec, rec["projection_coefficients"], new, eps, std)
    assert abs(r_meas[0]) < 0.05 < 0.3 < abs(r_proj[0])
    assert info["spearman_median"] == pytest.approx(1.0) and info["target_slope_std"] > 0
    # the traversal metrics (what traverse reports) agree
    df = dr.traverse(ToyField.render, new, {"a|h": measured.per_base(spec, new), "a": measured.per_base(
        dr.DirectionSpec("a"), new)}, eps)
    m = dr.traversal_metrics(df, ["a", "h"], std)
    assert abs(m["a|h"]["held"]["h"]["conditional"]) < 0.05


def test_holds_round_trip_through_boundaries_npz_and_both_fold_sides(tmp_path):
    rng = np.random.default_rng(3)
    names = ["tuf", "r_value", "psep"]
    N = np.stack([unit(rng.standard_normal(D)) for _ in names])
    fold = unit(rng.standard_normal(D))
    holds = {"tuf|r_value": (0.93,), "psep|r_value,tuf": (0.1, 0.8)}
    arrays = {"names": np.array(names), "normals": N, "folded": np.array([True, True, True]),
              "fold_normal": fold, **dr.hold_arrays(holds)}
    assert arrays["hold_coefficients"].shape == (2, 2) and np.isnan(arrays["hold_coefficients"][0, 1])
    dr.save_boundaries(tmp_path / "b.npz", arrays)
    field = dr.load_direction_field(tmp_path / "b.npz")
    assert field.holds == holds
    spec = dr.DirectionSpec.parse("tuf|r_value")
    pos, neg = field.vectors(spec)
    np.testing.assert_allclose(pos, dr.combine_hold(N[0], [N[1]], [0.93]))
    np.testing.assert_allclose(neg, dr.combine_hold(dr.reflect(N[0], fold), [dr.reflect(N[1], fold)], [0.93]))
    two = field.vectors(dr.DirectionSpec.parse("psep|tuf,r_value"))[0]  # hold order: sorted keys
    np.testing.assert_allclose(two, dr.combine_hold(N[2], [N[1], N[0]], [0.1, 0.8]))
    # a conditional direction without a measured hold projects, as before
    np.testing.assert_allclose(field.vectors(dr.DirectionSpec.parse("r_value|tuf"))[0],
                               dr.project_boundary(N[1], N[0]))
    base = np.stack([fold, -fold])
    rows = field.per_base(spec, base)
    np.testing.assert_allclose(rows, np.stack([pos, neg]))


def test_measured_hold_needs_the_generator(tmp_path):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((200, D))
    table = pd.DataFrame({"z": list(z), "tuf": 10 ** (20 + z[:, 0]), "psep": 5 + z[:, 1]})
    table.to_parquet(tmp_path / "latents.parquet")
    cfg = {"parameters": ["tuf", "psep"], "conditional": [{"target": "psep", "hold": ["tuf"]}], "fold": "none"}
    with pytest.raises(dr.DirectionError, match="hold: projection"):
        dr.run_fit_boundaries(tmp_path / "latents.parquet", cfg, tmp_path / "b.npz", tmp_path / "b.json")
    assert not (tmp_path / "b.npz").exists()
    out = dr.run_fit_boundaries(tmp_path / "latents.parquet", {**cfg, "hold": "projection"}, tmp_path / "b.npz",
                                tmp_path / "b.json")
    assert out["hold"]["method"] == "projection" and out["hold"]["directions"] == {}
    assert dr.load_direction_field(tmp_path / "b.npz").holds == {}


def test_solve_hold_steps_over_a_flat_stretch():
    """A residual flat around the projection (seed-1 generator: b 0.51 -> 0.61 changed the held
    entanglement from 0.416 to 0.423) must not send the search the wrong way."""
    fn = lambda b: np.array([0.42 if b[0] < 0.7 else 0.42 - 2.0 * (b[0] - 0.7)])  # noqa: E731
    b, hist = dr.solve_hold(_residual(fn), [0.51], tol=0.01)
    assert abs(fn(b)[0]) < 0.01 and all(h["b"][0] >= 0.51 for h in hist)


def test_a_median_hold_made_of_moves_of_both_signs_says_so():
    """The measured hold zeroes the *median* held slope; on single walks the held parameter can
    still move either way. traversal_metrics reports that magnitude beside the median."""
    eps = np.linspace(-1.0, 1.0, 5)
    rows = []
    for key, hold in (("a", ""), ("a|b", "b")):
        for base in range(9):
            sb = (0.6 if base % 2 else -0.6) if base != 4 else 0.0  # +-0.6 on 8 walks, 0 on one
            for x in eps:
                rows.append({"direction": key, "target": "a", "hold": hold, "base": base, "eps": x,
                             "beyond_fold": False, "a": 2.0 * x, "b": (sb if hold else 1.0) * x + base})
    m = dr.traversal_metrics(pd.DataFrame(rows), ["a", "b"], {"a": 1.0, "b": 1.0})
    held = m["a|b"]["held"]["b"]
    assert held["conditional"] == pytest.approx(0.0, abs=1e-12)
    assert held["conditional_abs_per_base"] == pytest.approx(0.3)
    # ... and the median itself is fragile: another draw of 9 walks moves it by the +-0.3 of a walk
    assert 0.1 < held["conditional_se"] < 0.4
    assert np.isnan(m["a|b"]["entanglement_se"]["a"])  # the target has none


def test_bootstrap_ratio_se_is_the_sampling_error_of_a_median_ratio():
    from sharpgen.directions.traverse import bootstrap_ratio_se

    rng = np.random.default_rng(1)
    num = rng.normal(0.0, 1.0, 400)
    # median of 400 N(0, 1) values: standard error sqrt(pi / 2) / sqrt(400) = 0.063; a target slope of 2 halves it
    se = bootstrap_ratio_se(num, np.full(400, 2.0), n_boot=400)
    assert 0.025 < se < 0.04
    assert bootstrap_ratio_se(num, np.full(400, 2.0), n_boot=400) == se  # seeded
    assert bootstrap_ratio_se(num[:100], np.full(100, 2.0)) > se  # fewer bases, larger error
    assert np.isnan(bootstrap_ratio_se(num[:2], np.ones(2)))
    assert np.isnan(bootstrap_ratio_se(np.full(5, np.nan), np.ones(5)))


def test_a_held_parameter_that_never_moves_is_held_by_the_projection():
    """Held at a floor on every base (r_value = 0 without a strong-field PIL): residual exactly 0,
    nothing to solve, the projection stays and counts as converged."""
    field = dr.Boundaries(ToyField.normals)
    render = lambda Z: ToyField.render(Z).assign(h=0.0)  # noqa: E731
    holds, summary = dr.fit_holds(render, field, [dr.DirectionSpec("a", ("h",))],
                                  np.random.default_rng(5).standard_normal((8, D)), dr.eps_grid(1.0, 5),
                                  {"a": 1.0, "h": 1.0})
    rec = summary["a|h"]
    assert holds == {} and rec["method"] == "projection" and rec["converged"]
    assert rec["n_evaluations"] == 1 and rec["residual"] == [0.0] and "within tol" in rec["reason"]


# ------------------------------------------------------------------------------- feedback hold (per request)


def _toy_request_render(Z):
    """a = z0 (target); h = 0.6 z0 + z1 + 0.3 z1^2 (held): moving a along e0 drags h along."""
    Z = np.asarray(Z, dtype=np.float64)
    return pd.DataFrame({"a": Z[:, 0], "h": 0.6 * Z[:, 0] + Z[:, 1] + 0.3 * Z[:, 1] ** 2})


def test_held_correctors_prefer_the_direction_that_holds_the_target():
    cals = {"h|a": {"slope": 1.0}, "h": {"slope": 1.0}, "g": {"slope": 2.0}, "g|a": {"calibrated": False}}
    assert dr.held_correctors(cals, dr.DirectionSpec("a", ("h",))) == [("h", "h|a")]
    assert dr.held_correctors(cals, dr.DirectionSpec("a", ("g", "h"))) == [("g", "g"), ("h", "h|a")]
    assert dr.held_correctors({"a": {"slope": 1.0}}, dr.DirectionSpec("a", ("h",))) == []


def test_refine_held_brings_the_held_parameter_back_without_losing_the_target():
    rng = np.random.default_rng(6)
    N = 40
    Zb = rng.standard_normal((N, D))
    base = _toy_request_render(Zb)
    req = base["a"].to_numpy() + rng.uniform(-1.5, 1.5, N)
    eps = req - base["a"].to_numpy()  # the target's own solution along e0: exact for a, drags h
    out = dr.refine_held(_toy_request_render, Zb, e(0), np.tile(e(1), (N, 1, 1)), [1.0, 1.0], req,
                         base[["h"]].to_numpy(), eps, target="a", held=["h"], tol=0.02, steps=6)
    start = relative_error("h", out["start_held_values"][:, 0], base["h"].to_numpy())
    assert np.median(start) > 0.3  # without the feedback h moved
    assert np.median(out["held_rel_error"][:, 0]) < 0.02 and np.median(out["rel_error"]) < 0.02
    # the start served a exactly: no point with a target error above tol may replace it
    assert np.all(out["rel_error"] <= 0.02 + 1e-9)
    again = _toy_request_render(out["z"])  # the returned latents give the reported values
    np.testing.assert_allclose(again["h"], out["held_values"][:, 0], rtol=1e-5)  # rendered in float32
    np.testing.assert_allclose(out["z"], Zb + out["eps"][:, None] * e(0) + out["eps_held"][:, :1] * e(1))
    assert out["calls"].max() <= 7


def test_feedback_hold_of_one_request_through_the_direction_field():
    field = dr.Boundaries({"a": e(0), "h": e(1)})
    cals = {"a|h": {"slope": 1.0}, "h|a": {"slope": 1.0}}
    spec = dr.DirectionSpec("a", ("h",))
    zb = np.random.default_rng(7).standard_normal(D)
    base = _toy_request_render(zb[None]).iloc[0]
    z, info = dr.feedback_hold(_toy_request_render, field, cals, spec, zb, e(0), base["a"] + 1.0, base, 1.0,
                               steps=6)
    after = _toy_request_render(z[None]).iloc[0]
    assert info["correctors"] == {"h": "h|a"} and set(info["eps_held"]) == {"h"}
    assert abs(after["a"] - (base["a"] + 1.0)) < 0.02 * abs(base["a"] + 1.0) + 1e-9
    assert relative_error("h", after["h"], base["h"]) < 0.02
    z0, none = dr.feedback_hold(_toy_request_render, field, cals, spec, zb, e(0), base["a"] + 1.0, base, 1.0,
                                steps=0)
    assert none == {} and np.allclose(z0, zb + e(0))
