# Stage "report": one rule per figure (results/figures/<name>.png + .pdf), results/metrics.json,
# and the figures registered for `snakemake --report results/report.html`.
#   rules/report.smk -> workflow_scripts/report_figure.py -> sharpgen.report.<group> (one module
#                       per group of figures: data_gan, directions, retrieval, training)
#                    -> workflow_scripts/metrics.py       -> sharpgen.metrics
#                    -> workflow_scripts/pipeline_graph.py (snakemake --rulegraph | dot)
# The report only plots: its rules read stage outputs and run no network (envs/report.yaml has
# no torch). The many small figure jobs run locally even under SLURM (localrules below).
import os

from sharpgen.report import FIGURES as _FIGURE_BUILDERS

REPORT = config["report"]
FIG = R("figures")
CAPTIONS = "report/captions"


# the front page of `snakemake --report`: what the pipeline does, with this run's settings
report: "report/workflow.rst"


# figure name -> (inputs {name: path}, report category); the code inputs are the import closure
# of report_figure.py and of the figure's module (sharpgen.report.FIGURES)
_FIGURES = {
    "samples": (
        {
            "patches": R("data/patches.zarr"),
            "table": R("data/patches.parquet"),
            "generated": R("samples/generated.zarr"),
        },
        "1. Data and GAN",
    ),
    "parameters": (
        {
            "table": R("data/patches.parquet"),
            "latents": R("samples/latents.parquet"),
            "quality": R("samples/quality.json"),
        },
        "1. Data and GAN",
    ),
    "realism": (
        {
            "patches": R("data/patches.zarr"),
            "table": R("data/patches.parquet"),
            "generated": R("samples/generated.zarr"),
        },
        "1. Data and GAN",
    ),
    "training_gan": ({"log": R("gan/train_log.csv")}, "1. Data and GAN"),
    "svm_accuracy": (
        {"boundaries_json": R("directions/boundaries.json")},
        "2. Latent directions",
    ),
    "traversals": (
        {
            "strips": R("directions/strips.npz"),
            "traversal_metrics": R("directions/traversal_metrics.json"),
        },
        "2. Latent directions",
    ),
    "entanglement": (
        {"traversal_metrics": R("directions/traversal_metrics.json")},
        "2. Latent directions",
    ),
    "calibration": (
        {
            "traversals": R("directions/traversals.parquet"),
            "calibration": R("directions/calibration.json"),
        },
        "2. Latent directions",
    ),
    "training_ssl": ({"log": R("ssl/train_log.csv")}, "3. Retrieval"),
    "retrieval_examples": (
        {
            "matches": R("retrieval/matches.parquet"),
            "patches": R("data/patches.zarr"),
            "table": R("data/patches.parquet"),
            "generated": R("samples/generated.zarr"),
        },
        "3. Retrieval",
    ),
    "retrieval_scatter": (
        {
            "matches": R("retrieval/matches.parquet"),
            "evaluation": R("retrieval/evaluation.json"),
        },
        "3. Retrieval",
    ),
    "memorisation": (
        {
            "evaluation": R("retrieval/evaluation.json"),
            "patches": R("data/patches.zarr"),
            "generated": R("samples/generated.zarr"),
        },
        "3. Retrieval",
    ),
    # only in `all` when ../shared/data has real records (REAL_RECORD_FILES: retrieval.smk)
    "real_records": (
        {
            "summary": R("retrieval/real_records.json"),
            "real_patches": R("retrieval/real_records.npz"),
        },
        "3. Retrieval",
    ),
    "inversion": (
        {
            "reconstructions": R("invert/reconstructions.npz"),
            "inversions": R("invert/inversions.parquet"),
            "inversion": R("invert/inversion.json"),
        },
        "3. Retrieval",
    ),
}

for _name, (_inputs, _category) in _FIGURES.items():

    rule:
        name:
            f"fig_{_name}"
        input:
            **_inputs,
            code=CODE("report_figure.py", f"report.{_FIGURE_BUILDERS[_name][0]}"),
        output:
            png=report(
                f"{FIG}/{_name}.png",
                caption=f"{CAPTIONS}/{_name}.rst",
                category=_category,
            ),
            pdf=f"{FIG}/{_name}.pdf",
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
        params:
            figure=_name,
            cfg=REPORT,
        script:
            "../workflow_scripts/report_figure.py"


# Latent-space map: one figure per parameter (wildcard), same script.
rule fig_latent_map:
    input:
        latents=R("samples/latents.parquet"),
        generated=R("samples/generated.zarr"),
        boundaries=R("directions/boundaries.npz"),
        code=CODE("report_figure.py", "report.directions"),
    output:
        png=report(
            f"{FIG}/latent_map_{{param}}.png",
            caption=f"{CAPTIONS}/latent_map.rst",
            category="2. Latent directions",
            subcategory="latent maps",
        ),
        pdf=f"{FIG}/latent_map_{{param}}.pdf",
    log:
        LOG("fig_latent_map_{param}"),
    benchmark:
        BENCH("fig_latent_map_{param}")
    wildcard_constraints:
        param="[a-z_]+",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figure="latent_map",
        cfg=REPORT,
    script:
        "../workflow_scripts/report_figure.py"


# Pipeline schematic: `snakemake --rulegraph` rendered by graphviz `dot` when it is installed.
# Without dot the rule is absent; the rule graph text is still written by `snakemake --rulegraph`.
if HAVE_DOT:

    rule fig_pipeline:
        input:
            workflow.main_snakefile,
            "config.yaml",
            [
                f"rules/{f}"
                for f in sorted(os.listdir(Path(workflow.basedir) / "rules"))
                if f.endswith(".smk")
            ],
        output:
            png=report(
                f"{FIG}/pipeline.png",
                caption=f"{CAPTIONS}/pipeline.rst",
                category="4. Pipeline",
            ),
            pdf=f"{FIG}/pipeline.pdf",
            dot=f"{FIG}/pipeline.dot",
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
        params:
            config=config,
            # the first input is the main Snakefile (a function of the input: --lint clean)
            snakefile=lambda w, input: str(input[0]),
            snakemake=str(Path(sys.executable).with_name("snakemake")),
        script:
            "../workflow_scripts/pipeline_graph.py"

else:
    logger.warning(
        "report: graphviz `dot` not found: pipeline schematic left out "
        "(install graphviz, or run `snakemake --rulegraph` to get the graph as text)"
    )


# metrics.json: every headline number; it waits for every other final target so that all the
# benchmark files it reads exist (it cannot read its own).
# optional sections of metrics.json: the synthetic population and the real-record retrieval,
# when their rules are in the DAG (rules/data.smk, rules/retrieval.smk)
_OPTIONAL_METRICS = {}
if config["data"]["source"] == "synthetic" and KEYWORD_TABLES:
    _OPTIONAL_METRICS["realism_population"] = R("data/realism_population.json")
if REAL_RECORD_FILES:
    _OPTIONAL_METRICS["real_records"] = R("retrieval/real_records.json")


rule metrics:
    input:
        **_OPTIONAL_METRICS,
        table=R("data/patches.parquet"),
        quality=R("samples/quality.json"),
        boundaries=R("directions/boundaries.json"),
        traversal=R("directions/traversal_metrics.json"),
        calibration=R("directions/calibration.json"),
        retrieval=R("retrieval/evaluation.json"),
        inversion=R("invert/inversion.json"),
        ssl_log=R("ssl/train_log.csv"),
        targets=lambda wildcards: [
            t for t in get_final_output() if t != R("metrics.json")
        ],
        code=CODE("metrics.py"),
        schema=str(BASEDIR / "rules" / "schemas" / "metrics.schema.yaml"),
    output:
        metrics=report(
            R("metrics.json"), caption=f"{CAPTIONS}/metrics.rst", category="5. Metrics"
        ),
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
    params:
        benchmarks=lambda wildcards: {
            r.name: str(r.benchmark)
            for r in workflow.rules
            if r.benchmark and r.name not in ("all", "metrics")
        },
        direction_params=config["directions"]["parameters"],
    script:
        "../workflow_scripts/metrics.py"


# Figure jobs take seconds: run them in the main Snakemake process even under SLURM (the
# `localrules:` directive takes literal names only; this is the call it compiles to).
workflow.localrules(
    "fig_latent_map",
    "metrics",
    *[f"fig_{n}" for n in _FIGURES],
    *(["fig_pipeline"] if HAVE_DOT else []),
)
