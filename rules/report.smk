# Stage "report": one rule per figure (results/figures/<name>.png + .pdf), results/metrics.json,
# and the figures registered for `snakemake --report results/report.html`.
#   rules/report.smk -> workflow_scripts/report_figure.py -> sharpgen.report
#                    -> workflow_scripts/metrics.py       -> sharpgen.metrics
#                    -> workflow_scripts/pipeline_graph.py (snakemake --rulegraph | dot)
# Include this file LAST in the Snakefile: a figure rule is defined only when every result file
# it reads is produced by a rule of the workflow, so a stage that is absent drops its figures
# (and its metrics.json section) from the DAG instead of failing.
import os
import shutil

REPORT = config.get("report", {})
FIG = R("figures")
CAPTIONS = "report/captions"


def _produced(path):
    """True if some rule already defined in the workflow lists ``path`` as an output."""
    return any(path in [str(f) for f in r.output] for r in workflow.rules)


# figure name -> (inputs {name: path}, modules imported, report category)
_FIGURES = {
    "samples": (
        {"patches": R("data/patches.zarr"), "table": R("data/patches.parquet"),
         "generated": R("samples/generated.zarr")},
        ("report", "metrics"), "1. Data and GAN"),
    "parameters": (
        {"table": R("data/patches.parquet"), "latents": R("samples/latents.parquet"),
         "quality": R("samples/quality.json")},
        ("report", "physics"), "1. Data and GAN"),
    "realism": (
        {"patches": R("data/patches.zarr"), "table": R("data/patches.parquet"),
         "generated": R("samples/generated.zarr")},
        ("report", "metrics"), "1. Data and GAN"),
    "training_gan": (
        {"log": R("gan/train_log.csv")},
        ("report",), "1. Data and GAN"),
    "svm_accuracy": (
        {"boundaries_json": R("directions/boundaries.json")},
        ("report",), "2. Latent directions"),
    "traversals": (
        {"generator": R("gan/generator.pt"), "boundaries": R("directions/boundaries.npz"),
         "patches": R("data/patches.zarr")},
        ("report", "directions", "gan", "physics", "sampling"), "2. Latent directions"),
    "entanglement": (
        {"traversal_metrics": R("directions/traversal_metrics.json")},
        ("report",), "2. Latent directions"),
    "calibration": (
        {"traversals": R("directions/traversals.parquet"),
         "calibration": R("directions/calibration.json")},
        ("report", "directions"), "2. Latent directions"),
    "training_ssl": (
        {"log": R("ssl/train_log.csv")},
        ("report",), "3. Retrieval"),
    "retrieval_examples": (
        {"matches": R("retrieval/matches.parquet"), "patches": R("data/patches.zarr"),
         "table": R("data/patches.parquet"), "generated": R("samples/generated.zarr")},
        ("report",), "3. Retrieval"),
    "retrieval_scatter": (
        {"matches": R("retrieval/matches.parquet"),
         "evaluation": R("retrieval/evaluation.json")},
        ("report",), "3. Retrieval"),
}

REPORT_FIGURES = []  # names of the figure rules in this DAG (after the availability check)
for _name, (_inputs, _modules, _category) in _FIGURES.items():
    _missing = [p for p in _inputs.values() if not _produced(p)]
    if _missing:
        logger.warning(f"report: figure '{_name}' left out: no rule produces {_missing}")
        continue
    REPORT_FIGURES.append(_name)

    rule:
        name:
            f"fig_{_name}"
        input:
            **_inputs,
            code=CODE(*_modules),
        output:
            png=report(f"{FIG}/{_name}.png", caption=f"{CAPTIONS}/{_name}.rst", category=_category),
            pdf=f"{FIG}/{_name}.pdf",
        params:
            figure=_name,
            cfg=REPORT,
        log:
            LOG(f"fig_{_name}"),
        benchmark:
            BENCH(f"fig_{_name}")
        conda:
            "../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        script:
            "../workflow_scripts/report_figure.py"


# Latent-space map: one figure per parameter (wildcard), same script.
LATENT_MAP_PARAMS = list(REPORT.get("latent_map", {}).get("parameters", []))
_LM_INPUTS = {"latents": R("samples/latents.parquet"), "generated": R("samples/generated.zarr"),
              "boundaries": R("directions/boundaries.npz")}
if LATENT_MAP_PARAMS and all(_produced(p) for p in _LM_INPUTS.values()):

    rule fig_latent_map:
        input:
            **_LM_INPUTS,
            code=CODE("report", "sampling"),
        output:
            png=report(f"{FIG}/latent_map_{{param}}.png", caption=f"{CAPTIONS}/latent_map.rst",
                       category="2. Latent directions", subcategory="latent maps"),
            pdf=f"{FIG}/latent_map_{{param}}.pdf",
        wildcard_constraints:
            param="[a-z_]+",
        params:
            figure="latent_map",
            cfg=REPORT,
        log:
            LOG("fig_latent_map_{param}"),
        benchmark:
            BENCH("fig_latent_map_{param}")
        conda:
            "../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        script:
            "../workflow_scripts/report_figure.py"

    REPORT_FIGURES += [f"latent_map_{p}" for p in LATENT_MAP_PARAMS]
elif LATENT_MAP_PARAMS:
    logger.warning(f"report: latent maps left out: no rule produces one of {list(_LM_INPUTS.values())}")


# Pipeline schematic: `snakemake --rulegraph` rendered by graphviz `dot` when it is installed.
# Without dot the rule is absent; the rule graph text is still written by `snakemake --rulegraph`.
if shutil.which("dot"):

    rule fig_pipeline:
        input:
            workflow.main_snakefile,
            "config.yaml",
            [f"rules/{f}" for f in sorted(os.listdir(Path(workflow.basedir) / "rules")) if f.endswith(".smk")],
        output:
            png=report(f"{FIG}/pipeline.png", caption=f"{CAPTIONS}/pipeline.rst",
                       category="4. Pipeline"),
            pdf=f"{FIG}/pipeline.pdf",
            dot=f"{FIG}/pipeline.dot",
        params:
            config=config,
            snakefile=str(workflow.main_snakefile),
            snakemake=str(Path(sys.executable).with_name("snakemake")),
        log:
            LOG("fig_pipeline"),
        benchmark:
            BENCH("fig_pipeline")
        conda:
            "../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        script:
            "../workflow_scripts/pipeline_graph.py"

    REPORT_FIGURES.append("pipeline")
else:
    logger.warning("report: graphviz `dot` not found: pipeline schematic left out "
                   "(install graphviz, or run `snakemake --rulegraph` to get the graph as text)")


# metrics.json: every headline number; depends on every other final target so that all the
# benchmark files it reads exist (it cannot read its own).
_METRIC_INPUTS = {
    "table": R("data/patches.parquet"),
    "quality": R("samples/quality.json"),
    "boundaries": R("directions/boundaries.json"),
    "traversal": R("directions/traversal_metrics.json"),
    "calibration": R("directions/calibration.json"),
    "retrieval": R("retrieval/evaluation.json"),
    "ssl_log": R("ssl/train_log.csv"),
}
_METRIC_INPUTS = {k: v for k, v in _METRIC_INPUTS.items() if _produced(v)}
REPORT_FIGURE_FILES = [f"{FIG}/{n}.{ext}" for n in REPORT_FIGURES for ext in ("png", "pdf")]


def _metrics_targets(wildcards):
    own = {R("metrics.json")}
    return [t for t in list(ALL_TARGETS) + REPORT_FIGURE_FILES if str(t) not in own]


def _benchmark_patterns(wildcards):
    return {r.name: str(r.benchmark) for r in workflow.rules
            if r.benchmark and r.name not in ("all", "metrics")}


rule metrics:
    input:
        **_METRIC_INPUTS,
        targets=_metrics_targets,
        code=CODE("metrics"),
        schema="rules/schemas/metrics.schema.yaml",
    output:
        metrics=report(R("metrics.json"), caption=f"{CAPTIONS}/metrics.rst", category="5. Metrics"),
    params:
        benchmarks=_benchmark_patterns,
        direction_params=config.get("directions", {}).get("parameters"),
    log:
        LOG("metrics"),
    benchmark:
        BENCH("metrics")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/metrics.py"


ALL_TARGETS.extend(REPORT_FIGURE_FILES)
ALL_TARGETS.append(R("metrics.json"))
