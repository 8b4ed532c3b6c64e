"""Headline numbers: the single ``results/metrics.json``.

:func:`build_metrics` gathers every stage's summary (patch table, GAN quality, SVM boundaries,
traversals, calibration, retrieval evaluation, benchmark timings) into one nested dict that is
validated against ``rules/schemas/metrics.schema.yaml`` by :func:`validate_metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sharpgen.parameters import REQUESTABLE

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_SCHEMA = REPO_ROOT / "rules" / "schemas" / "metrics.schema.yaml"
# Parameters every per-parameter metric reports: the registry's requestable parameters.
HEADLINE_PARAMS = REQUESTABLE
#: retrieval methods in metrics.json: SimSiam, the physical-parameter ORACLES (they match on the
#: very parameters they are scored on: an upper reference, not a competing method), random
RETRIEVAL_METHODS = ("simsiam", "oracle_physical_euclidean", "oracle_physical_mahalanobis", "random")

# --------------------------------------------------------------------------------------------
# results/metrics.json
# --------------------------------------------------------------------------------------------

#: evaluation.json / matches.parquet method names -> metrics.json names
METHOD_ALIASES = {"params_euclidean": "oracle_physical_euclidean",
                  "params_mahalanobis": "oracle_physical_mahalanobis"}


def _num(v) -> float | None:
    """JSON number or None (NaN / missing -> None)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def data_metrics(table: pd.DataFrame) -> dict:
    """``data``: number of patches per split (+ total), distinct HARPs and patches per data
    source (``synthetic`` / ``local`` / ``jsoc``: what "real" means in every other number)."""
    counts = table["split"].value_counts() if "split" in table.columns else pd.Series(dtype=int)
    n = {str(k): int(v) for k, v in counts.items()}
    n["total"] = int(len(table))
    out = {"n_patches": n}
    if "harpnum" in table.columns:
        out["n_harps"] = int(table["harpnum"].nunique())
    if "source" in table.columns:  # synthetic / local / jsoc: what the "real" side of every number is
        out["source"] = {str(k): int(v) for k, v in table["source"].value_counts().items()}
    return out


def gan_metrics(quality: Mapping) -> dict:
    """``gan``: normalised Wasserstein and KS per parameter, pixel and spectrum summaries, the
    largest lattice peak of the generated and the real axis spectra (``lattice_log10_peak``), the
    weak-field texture's axis over diagonal power per |k| band (``weak_field_axis_over_diagonal``,
    :func:`sharpgen.sampling.weak_field_orientation`), the share of its blocks where it is
    missing (``weak_field_quiet_blocks``, :func:`sharpgen.sampling.weak_field_quiet_blocks`), and
    ``wasserstein_norm_reference`` (the training split's real patches scored the same way: the
    floor set by the two real splits' own difference), the held-out accuracy of the classifier
    two-sample test (``c2st_accuracy``, fixed protocol
    of :mod:`sharpgen.c2st`: the mean over its repeats, whose standard deviation is
    ``c2st_accuracy_repeats_std``; null when the real split is too small for it)."""
    params = quality.get("parameters", {})
    out: dict[str, Any] = {
        "wasserstein_norm": {p: _num(v.get("wasserstein_norm")) for p, v in params.items()},
        "ks": {p: _num(v.get("ks")) for p, v in params.items()},
    }
    ref = quality.get("reference") or {}
    if ref.get("wasserstein_norm"):  # real training patches scored like the generated ones
        out["wasserstein_norm_reference"] = {p: _num(v) for p, v in ref["wasserstein_norm"].items()}
    px = quality.get("pixels", {})
    if px:
        out["pixels"] = {k: _num(px.get(k)) for k in ("wasserstein_norm", "ks", "js_divergence_bits",
                                                       "hist_intersection") if k in px}
    ps = quality.get("power_spectrum", {})
    if ps:
        out["power_spectrum_log10_ratio"] = {k.replace("log10_ratio_", ""): _num(v) for k, v in ps.items()
                                             if k.startswith("log10_ratio_")}
    lat = quality.get("lattice", {})
    if lat:  # the generator's grid pattern: log10 excess of the axis spectrum at 8/4/2.7/2 px
        out["lattice_log10_peak"] = {"generated": _num(lat.get("log10_peak_generated")),
                                     "real": _num(lat.get("log10_peak_real"))}
    ori = quality.get("orientation", {})
    if ori:  # the weak-field texture's axis / diagonal power per |k| band (1 = isotropic)
        out["weak_field_axis_over_diagonal"] = {
            "generated": [_num(v) for v in ori.get("axis_over_diagonal_generated", [])],
            "real": [_num(v) for v in ori.get("axis_over_diagonal_real", [])],
            "log10_ratio_max_abs": _num(ori.get("log10_ratio_max_abs"))}
    quiet = quality.get("quiet_blocks", {})
    if quiet:  # share of the weak-field texture's blocks where it is missing (real: ~0)
        out["weak_field_quiet_blocks"] = {"generated": _num(quiet.get("mean_share_generated")),
                                          "real": _num(quiet.get("mean_share_real")),
                                          "patchy_images_generated": _num(quiet.get("patchy_images_generated")),
                                          "patchy_images_real": _num(quiet.get("patchy_images_real"))}
    if "real" in quality:
        out["real_split"] = quality["real"].get("split")
    if "c2st" in quality:
        out["c2st_accuracy"] = _num(quality["c2st"].get("accuracy"))
        out["c2st_accuracy_repeats_std"] = _num(quality["c2st"].get("accuracy_repeats_std"))
    return out


def directions_metrics(boundaries: Mapping) -> dict:
    """``directions``: the latent the boundaries live in, the cosine between every pair of
    boundary normals (``normal_cosine``) beside the correlation of the two parameters among the
    generated samples (``parameter_correlation``: Pearson in fit space -- log10 fluxes -- on
    the values the boundaries were fitted on, over samples where both are defined, r_value = 0
    ("no R") left out; ``parameter_correlation_spearman``), and the
    largest |cosine - correlation| over the pairs (for parameters linear in an isotropic latent
    the two agree); ``parameter_correlation_labelled``: Spearman over the rows the boundaries were
    labelled on (no R ranks lowest instead of being left out: the normals' population) and
    ``cosine_minus_correlation_labelled_max_abs``, the same largest gap against it; ``linear_r2``: each parameter's validation R^2 of a linear regression on
    the latent (fit space), and ``linear_part_correlation``: cosine x R_a x R_b, the part of the
    correlation the linear components carry (the rest is in the non-linear residuals)."""
    params = boundaries.get("parameters", {})
    cos = params.get("_normal_cosines", {})
    corr = params.get("_parameter_correlations", {})

    def matrix(m: Mapping) -> dict:
        return {a: {b: _num(v) for b, v in row.items()} for a, row in m.items()}

    out: dict[str, Any] = {"latent_space": boundaries.get("latent_space", "z"),
                           "normal_cosine": matrix(cos)}
    if corr:
        def max_gap(m: Mapping):  # largest |cosine - correlation| over the pairs both define
            devs = [abs(c - m[a][b]) for a, row in out["normal_cosine"].items() for b, c in row.items()
                    if a != b and c is not None and m.get(a, {}).get(b) is not None]
            return max(devs) if devs else None

        out["parameter_correlation"] = matrix(corr.get("pearson", {}))
        out["parameter_correlation_spearman"] = matrix(corr.get("spearman", {}))
        out["cosine_minus_correlation_max_abs"] = max_gap(out["parameter_correlation"])
        if "spearman_labelled" in corr:  # boundaries.json written since 2026-12-03
            out["parameter_correlation_labelled"] = matrix(corr["spearman_labelled"])
            out["cosine_minus_correlation_labelled_max_abs"] = max_gap(out["parameter_correlation_labelled"])
    # how linear each parameter is in the latent: validation R^2 of its fit-space regression.
    # For p_k = a_k . z + e_k (z isotropic), corr(p_i, p_j) = cos(a_i, a_j) R_i R_j
    # + corr(e_i, e_j) sqrt((1 - R_i^2)(1 - R_j^2)): cosine and correlation agree only as R^2 -> 1
    r2 = {p: _num(v.get("regression_r2")) for p, v in params.items()
          if not p.startswith("_") and v.get("regression_r2") is not None}
    if r2:
        out["linear_r2"] = r2
        root = {p: max(v, 0.0) ** 0.5 for p, v in r2.items() if v is not None}
        out["linear_part_correlation"] = {
            a: {b: (None if c is None or a not in root or b not in root else c * root[a] * root[b])
                for b, c in row.items()} for a, row in out["normal_cosine"].items()}
    return out


def svm_metrics(boundaries: Mapping) -> dict:
    """``svm``: validation accuracy per parameter (on polarity-folded latents where the boundary
    was fitted folded), the same classifier's accuracy on unfolded latents (the paper's set-up)
    and the regression cosine."""
    params = {p: v for p, v in boundaries.get("parameters", {}).items() if not p.startswith("_")}
    return {"accuracy": {p: _num(v.get("val_accuracy")) for p, v in params.items()},
            "train_accuracy": {p: _num(v.get("train_accuracy")) for p, v in params.items()},
            "accuracy_unfolded": {p: _num(v.get("val_accuracy_unfolded", v.get("val_accuracy")))
                                  for p, v in params.items()},
            "regression_cosine": {p: _num(v.get("regression_cosine")) for p, v in params.items()}}


def traversal_metrics(tm: Mapping) -> dict:
    """``traversal``: per direction (conditional keys like ``r_value|tuf``) the median Spearman
    of the target along its direction on the base's side of the polarity fold (``spearman``),
    over the whole eps range across the fold (``spearman_full``), the fraction of the eps grid
    beyond the fold (``frac_beyond_fold``), and for conditional directions the entanglement of
    each held parameter (cond. vs uncond.), with the share of bases on which it sits at a floor
    (``frac_flat``; it pulls the median ``conditional`` towards 0, to exactly 0 at >= 0.5) and its entanglement over the
    bases where it moves (``conditional_moving``) and the median over bases of its absolute
    per-walk entanglement (``conditional_abs_per_base``: a median of 0 from moves of both signs
    is a hold on average only), and the bootstrap standard error of ``conditional`` over the
    traversal bases (``conditional_se``: the sampling error of a median over ``n_base`` walks)."""
    dirs = tm.get("directions", {})
    out: dict[str, Any] = {
        "spearman": {k: _num(v.get("spearman_median")) for k, v in dirs.items()},
        "spearman_full": {k: _num(v.get("spearman_full_median", v.get("spearman_median"))) for k, v in dirs.items()},
        "frac_beyond_fold": {k: _num(v.get("frac_beyond_fold", 0.0)) for k, v in dirs.items()},
    }
    held = {}
    for k, v in dirs.items():
        for h, d in (v.get("held") or {}).items():
            held[f"{k}:{h}"] = {kk: _num(d.get(kk)) for kk in ("conditional", "unconditional", "reduction",
                                                                 "frac_flat", "conditional_moving",
                                                                 "conditional_abs_per_base",
                                                                 "conditional_se")}
    if held:
        out["held_entanglement"] = held
    return out


def calibration_metrics(cal: Mapping) -> dict:
    """``calibration`` per evaluated direction: ``median_rel_error`` is the error of the
    calibrated step alone (the calibration's own accuracy, the headline);
    ``median_rel_error_refined`` after up to ``refine_steps`` secant steps that re-measure the
    generated image (what ``sharpgen generate`` delivers); ``refusal_rate`` of in-range requests
    the fold / calibrated range could not serve; ``p90_rel_error`` (refined); slope R^2;
    ``held_abs_change`` / ``held_abs_change_no_feedback`` (``"direction:held"``: the median
    absolute change of a held parameter in fit space, with and without the feedback hold)."""
    ev = cal.get("evaluation", {})
    return {"median_rel_error": {k: _num(v.get("median_rel_error_calibrated_step")) for k, v in ev.items()},
            "median_rel_error_refined": {k: _num(v.get("median_rel_error")) for k, v in ev.items()},
            "refusal_rate": {k: _num(v.get("refusal_rate", v.get("n_refused", 0) / max(v.get("n_requests", 1), 1)))
                             for k, v in ev.items()},
            "p90_rel_error": {k: _num(v.get("p90_rel_error")) for k, v in ev.items()},
            "slope_r2": {k: _num(v.get("r2")) for k, v in cal.get("directions", {}).items()},
            # median |change| of each held parameter (fit space) over the requests, with the
            # feedback hold (what generate / edit deliver) and by the direction alone
            "held_abs_change": {f"{k}:{h}": _num(x) for k, v in ev.items()
                                for h, x in (v.get("median_abs_change_held_fit_space") or {}).items()},
            "held_abs_change_no_feedback": {
                f"{k}:{h}": _num(x) for k, v in ev.items()
                for h, x in (v.get("median_abs_change_held_fit_space_no_feedback") or {}).items()}}


def _corr_block(corr: Mapping) -> dict:
    """{method: {param: stats}} -> {method: {pearson: {param}, spearman, pearson_raw, and for
    log-valued parameters (r_value) <p>_pearson_all and <p>_zero_agreement}}."""
    out = {}
    for method, per_param in corr.items():
        m = METHOD_ALIASES.get(method, method)
        block = {"pearson": {p: _num(v.get("pearson")) for p, v in per_param.items()},
                 "spearman": {p: _num(v.get("spearman")) for p, v in per_param.items()},
                 "pearson_raw": {p: _num(v.get("pearson_raw", v.get("pearson"))) for p, v in per_param.items()}}
        for p, v in per_param.items():
            if "zero_agreement" in v:
                block[f"{p}_pearson_all"] = _num(v.get("pearson_all"))
                block[f"{p}_zero_agreement"] = _num(v.get("zero_agreement"))
        out[m] = block
    return out


def retrieval_metrics(ev: Mapping) -> dict:
    """``retrieval``: generated queries vs their top-1 real match per method, against the
    held-out database (headline; ``database`` names it), with the same against every patch under
    ``all_database``; ``retrieval_real`` the same for augmented real test queries;
    ``self_retrieval`` rates; ``memorisation`` (generated vs held-out nearest-training
    distances)."""
    gen = ev.get("generated", {})
    out: dict[str, Any] = {"retrieval": {"database": gen.get("database_split", "all"),
                                         **_corr_block(gen.get("correlations", {}))}}
    if "generated_all" in ev:
        out["retrieval"]["all_database"] = _corr_block(ev["generated_all"].get("correlations", {}))
    if "real" in ev:
        out["retrieval_real"] = {"database": ev["real"].get("database_split"),
                                 **_corr_block(ev["real"].get("correlations", {}))}
        if "real_all" in ev:
            out["retrieval_real"]["all_database"] = _corr_block(ev["real_all"].get("correlations", {}))
    sr = ev.get("self_retrieval")
    if sr:
        out["self_retrieval"] = {METHOD_ALIASES.get(m, m): {k: _num(x) for k, x in v.items()}
                                 for m, v in sr.items() if isinstance(v, Mapping)}
    mem = ev.get("memorisation")
    if mem:
        out["memorisation"] = {space: {k: _num(x) for k, x in v.items()}
                               for space, v in mem.items() if space not in ("closest_pairs", "distances")}
    return out


def inversion_metrics(summary: Mapping) -> dict:
    """``inversion`` (invert/inversion.json): held-out real patches vs their GAN reconstructions
    -- Pearson (with its pairs and 95 % interval) / Spearman per parameter in fit space (r_value
    where both are non-zero), pixel
    errors (relative L2 and RMS in G), SimSiam cosine, the share within the edit bound."""
    corr = summary.get("correlations", {})
    px = summary.get("pixel", {})
    return {"n_patches": int(summary.get("n_patches", 0)), "space": summary.get("space"),
            "pearson": {p: _num(v.get("pearson")) for p, v in corr.items()},
            # pairs behind each Pearson and its 95 % interval: r_value counts only the pairs
            # where both R are non-zero, often a handful, and then the interval is wide
            "pairs": {p: int(v.get("n", 0)) for p, v in corr.items()},
            "pearson_ci95": {p: [_num(x) for x in v.get("pearson_ci95", [float("nan")] * 2)]
                             for p, v in corr.items()},
            "spearman": {p: _num(v.get("spearman")) for p, v in corr.items()},
            "rel_error_median": _num(px.get("rel_error_median")),
            "rel_error_p90": _num(px.get("rel_error_p90")),
            "rms_gauss_median": _num(px.get("rms_gauss_median")),
            "feature_cos_median": _num(px.get("feature_cos_median")),
            "max_rel_error": _num(summary.get("max_rel_error")),
            "frac_within_bound": _num(summary.get("frac_within_bound")),
            # what the objective matched: those parameters' Pearson is partly by construction
            "matched_parameters": list(summary.get("matched_parameters", [])),
            "match_weight": _num(summary.get("match_weight", 0.0)),
            "seconds_per_patch": _num(summary.get("seconds_per_patch"))}


def realism_population_metrics(rp: Mapping) -> dict:
    """``realism_population`` (data/realism_population.json, :mod:`sharpgen.realism_population`):
    the synthetic records' JSOC keywords against the real keyword tables -- KS distances of log10
    USFLUX and of the non-zero R_VALUEs (vs the hmi.sharp_720s table and the line-of-sight
    table), of AREA / AREA_ACR, the fractions with R_VALUE = 0, the KS a real sample of the
    synthetic set's size scores (``ks_noise_*_p95``) and the sample sizes."""
    ks, zero = rp.get("ks", {}), rp.get("zero_fraction", {})
    noise, n = rp.get("noise_floor", {}), rp.get("n", {})
    out = {f"ks_{k}": _num(v) for k, v in ks.items()}
    out.update({f"zero_fraction_{k}": _num(v) for k, v in zero.items()})
    out.update({f"ks_noise_{k[3:]}": _num(v) for k, v in noise.items() if k.startswith("ks_")})
    out.update({f"n_{k}": _num(n.get(k)) for k in ("synthetic_selected", "real_720s", "real_los") if k in n})
    return out


def real_records_metrics(rr: Mapping) -> dict:
    """``real_records`` (retrieval/real_records.json, :mod:`sharpgen.real_records`): generated
    queries against the real SHARP records of ../shared/data -- top-1 cosine medians (to the
    real records, to synthetic held-out subsets of the same size, of the real records and of
    held-out synthetic patches to the synthetic training set), query-vs-match Pearson (fit space)
    per method over the real records and for SimSiam over the synthetic subsets, how often
    SimSiam's top-1 is the physical oracle's (chance: 1 / n), real-to-real same-HARP top-1."""
    cos = rr.get("cosine", {})
    sub = rr.get("synthetic_subsets", {})
    selfr = rr.get("real_self_retrieval", {})
    out: dict[str, Any] = {"n_real_records": _num(rr.get("n_real_records")),
                           "n_queries": _num(rr.get("n_queries"))}
    out.update({f"cosine_{k}_median": _num(v.get("median")) for k, v in cos.items()})
    out["pearson"] = {METHOD_ALIASES.get(m, m): {p: _num(v.get("pearson")) for p, v in c.items()}
                      for m, c in rr.get("correlations", {}).items()}
    out["pearson"]["simsiam_synthetic_subsets"] = {p: _num(v) for p, v in
                                                   sub.get("simsiam_pearson_median", {}).items()}
    out.update({"oracle_agreement_top1": _num(rr.get("oracle_agreement_top1")),
                "oracle_agreement_top1_synthetic_subsets": _num(sub.get("oracle_agreement_top1")),
                "chance_top1": _num(rr.get("chance_top1")),
                "real_same_harp_top1": _num(selfr.get("same_harp_top1")),
                "real_same_harp_chance": _num(selfr.get("chance")),
                "max_top1_share": _num(rr.get("hubness", {}).get("max_top1_share"))})
    return out


def ssl_metrics(log: pd.DataFrame) -> dict:
    """``ssl``: last-epoch loss and collapse monitors of the SimSiam training log."""
    last = log.iloc[-1]
    return {k: _num(last[k]) for k in ("epoch", "loss", "monitor_std", "monitor_effective_rank")
            if k in log.columns}


def read_benchmarks(patterns: Mapping[str, str]) -> dict[str, float]:
    """{rule: benchmark path (may hold ``{wildcard}`` fields)} -> {job name: seconds}.

    Paths with wildcards are globbed (``{x}`` -> ``*``) and keyed by the file stem; rules whose
    benchmark file does not exist are skipped with a warning.
    """
    import glob
    import re

    out: dict[str, float] = {}
    for rule, pattern in sorted(patterns.items()):
        if "{" in pattern:
            paths = sorted(glob.glob(re.sub(r"\{[^}]+\}", "*", pattern)))
        else:
            paths = [pattern] if Path(pattern).exists() else []
        if not paths:
            logger.warning("no benchmark file for rule %s (%s)", rule, pattern)
        for p in paths:
            df = pd.read_csv(p, sep="\t")
            if "s" in df.columns and len(df):
                out[rule if "{" not in pattern else Path(p).stem] = float(df["s"].iloc[-1])
    return out


def build_metrics(*, table: pd.DataFrame | None = None, quality: Mapping | None = None,
                  boundaries: Mapping | None = None, traversal: Mapping | None = None,
                  calibration: Mapping | None = None, retrieval: Mapping | None = None,
                  ssl_log: pd.DataFrame | None = None, timings: Mapping[str, float] | None = None,
                  inversion: Mapping | None = None, realism_population: Mapping | None = None,
                  real_records: Mapping | None = None) -> dict:
    """Assemble metrics.json from the stage summaries that exist (None = stage absent).

    table: patches.parquet; quality: samples/quality.json; boundaries: directions/boundaries.json;
    traversal: directions/traversal_metrics.json; calibration: directions/calibration.json;
    retrieval: retrieval/evaluation.json; ssl_log: ssl/train_log.csv; timings: {rule: seconds};
    inversion: invert/inversion.json; realism_population: data/realism_population.json;
    real_records: retrieval/real_records.json.
    """
    m: dict[str, Any] = {}
    if table is not None:
        m["data"] = data_metrics(table)
    if quality is not None:
        m["gan"] = gan_metrics(quality)
    if boundaries is not None:
        m["svm"] = svm_metrics(boundaries)
        m["directions"] = directions_metrics(boundaries)
    if traversal is not None:
        m["traversal"] = traversal_metrics(traversal)
    if calibration is not None:
        m["calibration"] = calibration_metrics(calibration)
    if retrieval is not None:
        m.update(retrieval_metrics(retrieval))
    if ssl_log is not None and len(ssl_log):
        m["ssl"] = ssl_metrics(ssl_log)
    if inversion is not None:
        m["inversion"] = inversion_metrics(inversion)
    if realism_population is not None:
        m["realism_population"] = realism_population_metrics(realism_population)
    if real_records is not None:
        m["real_records"] = real_records_metrics(real_records)
    m["timing"] = {k: float(v) for k, v in (timings or {}).items()}
    if timings:
        m["timing_total_s"] = float(sum(timings.values()))
    return m


def load_schema(path: str | Path = METRICS_SCHEMA) -> dict:
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


def validate_metrics(metrics: Mapping, schema: str | Path | Mapping = METRICS_SCHEMA,
                     stages: Sequence[str] | None = None,
                     direction_params: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` listing every missing/invalid key (dotted path).

    ``stages``: the top-level sections that must be present (default: every section the schema
    lists in ``required``). Passing fewer validates a partial pipeline (a stage not in the DAG).
    ``direction_params``: the parameters that have a latent direction (config
    ``directions.parameters``); svm / traversal sections must hold exactly these (default: the
    schema's headline list).
    """
    import copy

    import jsonschema

    schema = copy.deepcopy(dict(schema) if isinstance(schema, Mapping) else load_schema(schema))
    if direction_params is not None:
        schema["$defs"]["per_direction_param"]["required"] = list(direction_params)
    if stages is not None:
        schema["required"] = [s for s in schema.get("required", []) if s in stages]
    v = jsonschema.Draft202012Validator(schema)
    errs = sorted(v.iter_errors(dict(metrics)), key=lambda e: list(e.absolute_path))
    if errs:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errs]
        raise ValueError("metrics.json is incomplete or invalid:\n  " + "\n  ".join(lines))


def missing_keys(metrics: Mapping, expected: Mapping[str, Sequence[str]]) -> list[str]:
    """Dotted keys of ``expected`` ({"gan.ks": [params], ...}) absent or null in ``metrics``."""
    out = []
    for dotted, leaves in expected.items():
        node: Any = metrics
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        for leaf in leaves:
            if not isinstance(node, Mapping) or node.get(leaf) is None:
                out.append(f"{dotted}.{leaf}")
    return out


def null_keys(metrics: Mapping, prefix: str = "") -> list[str]:
    """Dotted paths of every null leaf of a nested metrics dict."""
    out = []
    for k, v in metrics.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += null_keys(v, path + ".")
        elif v is None or (isinstance(v, float) and not np.isfinite(v)):
            out.append(path)
    return out


#: stage sections metrics.json must hold when their stage is in the workflow
STAGE_SECTIONS = ("data", "gan", "svm", "traversal", "calibration", "retrieval")


def load_inputs(paths: Mapping[str, str]) -> dict[str, Any]:
    """Rule inputs -> the keyword arguments of :func:`build_metrics`: ``table`` (Parquet),
    ``ssl_log`` (CSV) and every other keyword that build_metrics accepts from its JSON file.
    Inputs build_metrics does not know (code, schema, targets) are ignored."""
    import inspect
    import json

    accepted = set(inspect.signature(build_metrics).parameters) - {"timings"}
    out: dict[str, Any] = {}
    for key, path in paths.items():
        if key not in accepted:
            continue
        if key == "table":
            out[key] = pd.read_parquet(path)
        elif key == "ssl_log":
            out[key] = pd.read_csv(path)
        else:
            out[key] = json.loads(Path(path).read_text())
    return out


def run_metrics(paths: Mapping[str, str], benchmarks: Mapping[str, str], schema, out_path,
                direction_params: Sequence[str] | None = None) -> dict:
    """Rule metrics: stage summaries + benchmark files -> validated results/metrics.json."""
    from sharpgen.atomic import write_json

    m = build_metrics(**load_inputs(paths), timings=read_benchmarks(benchmarks))
    present = [k for k in (*STAGE_SECTIONS, "timing") if k in m]
    missing = sorted(set(STAGE_SECTIONS) - set(present))
    if missing:
        logger.warning("metrics.json has no section for %s (stage not in the workflow)", missing)
    validate_metrics(m, schema, stages=present, direction_params=direction_params)
    nulls = null_keys(m)
    if nulls:
        logger.warning("undefined (null) values in metrics.json: %s", nulls)
    write_json(out_path, m)
    logger.info("wrote %s (%d timing entries, total %.1f s)", out_path, len(m["timing"]),
                m.get("timing_total_s", 0.0))
    return m
