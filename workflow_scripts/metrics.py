"""Snakemake script for rule metrics: stage summaries + benchmark files -> results/metrics.json."""

from sharpgen.logutil import setup_logging
from sharpgen.metrics import run_metrics

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_metrics({k: str(v) for k, v in sm.input.items()}, sm.params.benchmarks, sm.input.schema,
            sm.output.metrics, direction_params=sm.params.direction_params)
