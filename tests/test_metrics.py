"""results/metrics.json: built from the stage summaries, complete against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sharpgen import metrics as M

P7 = ("tuf", "tpf", "tnf", "psep", "psep_robust", "r_paper", "r_value")


def _inputs(params=P7):
    table = pd.DataFrame({"split": ["train"] * 7 + ["val"] * 2 + ["test"] * 3,
                          "harpnum": np.arange(12) // 2})
    quality = {"real": {"split": "train"},
               "parameters": {p: {"wasserstein_norm": 0.1 + i / 100, "ks": 0.2} for i, p in enumerate(P7)},
               "pixels": {"wasserstein_norm": 0.05, "ks": 0.01, "bin_edges_gauss": [0, 1]},
               "power_spectrum": {"log10_ratio_rms": 0.1, "log10_ratio_low_k": -0.02, "k_cycles_per_pixel": [0.1]},
               "lattice": {"periods_px": [8.0], "log10_excess_generated": [0.4], "log10_excess_real": [0.01],
                           "log10_peak_generated": 0.4, "log10_peak_real": 0.01},
               "c2st": {"accuracy": 0.86, "accuracy_repeats": [0.82, 0.9, 0.86], "accuracy_repeats_std": 0.04},
               "reference": {"split": "train", "n": 7, "wasserstein_norm": {**{p: 0.1 for p in P7}, "psep": 0.27}}}
    boundaries = {"parameters": {**{p: {"val_accuracy": 0.9, "train_accuracy": 0.95,
                                        "regression_cosine": 0.8} for p in params},
                                 "_normal_cosines": {"tuf": {"tuf": 1.0}}}}
    traversal = {"directions": {**{p: {"target": p, "hold": [], "spearman_median": 0.95} for p in params},
                                "r_value|tuf": {"target": "r_value", "hold": ["tuf"], "spearman_median": 0.9,
                                                "held": {"tuf": {"conditional": 0.1, "unconditional": 0.8,
                                                                 "reduction": 0.875, "frac_flat": 0.6,
                                                                 "conditional_moving": 0.3,
                                                                 "conditional_abs_per_base": 0.45,
                                                                 "conditional_se": 0.12}}}}}
    calibration = {"directions": {"tuf": {"r2": 0.9}},
                   "evaluation": {"tuf": {"median_rel_error_calibrated_step": 0.04, "median_rel_error": 0.01,
                                          "p90_rel_error": 0.1, "refusal_rate": 0.25,
                                          "median_abs_change_held_fit_space": {},
                                          "median_abs_change_held_fit_space_no_feedback": {}},
                                  "r_value|tuf": {"median_rel_error_calibrated_step": float("nan"),
                                                  "median_rel_error": float("nan"), "refusal_rate": 0.5,
                                                  "median_abs_change_held_fit_space": {"tuf": 0.003},
                                                  "median_abs_change_held_fit_space_no_feedback": {"tuf": 0.03}}}}
    corr = {m: {p: {"pearson": 0.5, "spearman": 0.6, "n": 10, "pearson_raw": 0.4} for p in P7}
            for m in ("simsiam", "params_euclidean", "params_mahalanobis", "random")}
    for m in corr:
        corr[m]["r_value"].update(pearson_all=0.3, zero_agreement=0.9)
    retrieval = {"generated": {"correlations": corr, "database_split": "heldout"},
                 "generated_all": {"correlations": corr, "database_split": "all"},
                 "real": {"correlations": corr, "database_split": "val"},
                 "self_retrieval": {"simsiam": {"top1": 0.5, "top5": 0.8}, "database_split": "all"}}
    ssl_log = pd.DataFrame({"epoch": [0, 1], "loss": [-0.5, -0.9], "monitor_std": [0.1, 0.2],
                            "monitor_effective_rank": [3.0, 9.0]})
    return dict(table=table, quality=quality, boundaries=boundaries, traversal=traversal,
                calibration=calibration, retrieval=retrieval, ssl_log=ssl_log,
                timings={"train_gan": 12.5, "fig_samples": 1.0})


def test_full_metrics_validate_and_hold_the_headline_numbers():
    m = M.build_metrics(**_inputs())
    M.validate_metrics(m)
    assert m["data"]["n_patches"] == {"train": 7, "val": 2, "test": 3, "total": 12}
    assert m["gan"]["wasserstein_norm"]["tpf"] == pytest.approx(0.11)
    assert m["gan"]["pixels"] == {"wasserstein_norm": 0.05, "ks": 0.01}  # arrays left out
    assert m["gan"]["lattice_log10_peak"] == {"generated": 0.4, "real": 0.01}
    assert m["gan"]["c2st_accuracy"] == 0.86 and m["gan"]["c2st_accuracy_repeats_std"] == 0.04
    assert m["gan"]["wasserstein_norm_reference"]["psep"] == 0.27
    assert m["gan"]["wasserstein_norm_reference"]["tuf"] == 0.1
    assert m["svm"]["accuracy"]["r_value"] == 0.9 and "_normal_cosines" not in m["svm"]["accuracy"]
    assert m["traversal"]["spearman"]["r_value|tuf"] == 0.9
    assert m["traversal"]["held_entanglement"]["r_value|tuf:tuf"] == {
        "conditional": 0.1, "unconditional": 0.8, "reduction": 0.875, "frac_flat": 0.6, "conditional_moving": 0.3,
        "conditional_abs_per_base": 0.45, "conditional_se": 0.12}
    # the calibrated step alone is the headline; re-measured error and refusals under their own keys
    assert m["calibration"]["median_rel_error"] == {"tuf": 0.04, "r_value|tuf": None}  # NaN -> null
    assert m["calibration"]["median_rel_error_refined"]["tuf"] == 0.01
    assert m["calibration"]["refusal_rate"] == {"tuf": 0.25, "r_value|tuf": 0.5}
    assert m["calibration"]["held_abs_change"] == {"r_value|tuf:tuf": 0.003}
    assert m["calibration"]["held_abs_change_no_feedback"] == {"r_value|tuf:tuf": 0.03}
    assert set(m["retrieval"]) == {"database", "simsiam", "oracle_physical_euclidean",
                                   "oracle_physical_mahalanobis", "random", "all_database"}
    assert m["retrieval"]["database"] == "heldout" and m["retrieval_real"]["database"] == "val"
    assert m["retrieval"]["oracle_physical_mahalanobis"]["spearman"]["psep"] == 0.6
    assert m["retrieval"]["simsiam"]["pearson_raw"]["tuf"] == 0.4
    assert m["retrieval"]["simsiam"]["r_value_zero_agreement"] == 0.9
    assert m["retrieval"]["simsiam"]["r_value_pearson_all"] == 0.3
    assert m["self_retrieval"] == {"simsiam": {"top1": 0.5, "top5": 0.8}}
    assert m["ssl"]["monitor_effective_rank"] == 9.0
    assert m["timing"] == {"train_gan": 12.5, "fig_samples": 1.0} and m["timing_total_s"] == 13.5
    assert M.null_keys(m) == ["calibration.median_rel_error.r_value|tuf",
                              "calibration.median_rel_error_refined.r_value|tuf",
                              "calibration.p90_rel_error.r_value|tuf"]
    json.dumps(m, allow_nan=False)  # plain JSON


@pytest.mark.parametrize("drop, message", [
    (("gan", "ks", "psep_robust"), "'psep_robust' is a required property"),
    (("retrieval", "random"), "'random' is a required property"),
    (("retrieval", "simsiam", "pearson_raw"), "'pearson_raw' is a required property"),
    (("data", "n_patches", "val"), "'val' is a required property"),
    (("timing",), "'timing' is a required property"),
])
def test_incomplete_metrics_are_rejected(drop, message):
    m = M.build_metrics(**_inputs())
    node = m
    for k in drop[:-1]:
        node = node[k]
    del node[drop[-1]]
    with pytest.raises(ValueError, match=message):
        M.validate_metrics(m)


def test_direction_parameters_follow_the_config():
    m = M.build_metrics(**_inputs(params=("tuf", "tpf", "tnf")))
    with pytest.raises(ValueError, match="'psep' is a required property"):
        M.validate_metrics(m)
    M.validate_metrics(m, direction_params=["tuf", "tpf", "tnf"])
    with pytest.raises(ValueError, match="'r_value' is a required property"):
        M.validate_metrics(m, direction_params=["tuf", "r_value"])


def test_partial_pipeline_validates_present_stages_only():
    inp = _inputs()
    for k in ("retrieval", "ssl_log"):
        inp[k] = None
    m = M.build_metrics(**inp)
    with pytest.raises(ValueError, match="'retrieval' is a required property"):
        M.validate_metrics(m)
    M.validate_metrics(m, stages=[k for k in m if k != "timing_total_s"])


def test_wrong_type_is_rejected():
    m = M.build_metrics(**_inputs())
    m["svm"]["accuracy"]["tuf"] = "high"
    with pytest.raises(ValueError, match=r"svm\.accuracy\.tuf"):
        M.validate_metrics(m)


def test_read_benchmarks(tmp_path):
    b = tmp_path / "benchmarks"
    b.mkdir()
    for name, s in (("train_gan", 10.0), ("fig_latent_map_tuf", 1.5), ("fig_latent_map_psep", 2.5)):
        (b / f"{name}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:00:10\t100\n")
    out = M.read_benchmarks({"train_gan": str(b / "train_gan.tsv"),
                             "fig_latent_map": str(b / "fig_latent_map_{param}.tsv"),
                             "never_ran": str(b / "never_ran.tsv")})
    assert out == {"train_gan": 10.0, "fig_latent_map_psep": 2.5, "fig_latent_map_tuf": 1.5}


def test_missing_keys_helper():
    m = {"gan": {"ks": {"tuf": 0.1, "tpf": None}}}
    assert M.missing_keys(m, {"gan.ks": ["tuf", "tpf", "tnf"], "svm.accuracy": ["tuf"]}) == [
        "gan.ks.tpf", "gan.ks.tnf", "svm.accuracy.tuf"]


def test_schema_file_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(M.load_schema())
    assert Path(M.METRICS_SCHEMA).name == "metrics.schema.yaml"
