"""Snakemake script for rule traverse: generator + boundaries -> traversals.parquet,
traversal_metrics.json and the report's strips.npz."""

from sharpgen.directions.traverse import run_traverse
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_traverse(
    sm.input.generator,
    sm.input.boundaries,
    sm.input.latents,
    sm.input.zarr,
    sm.params.directions,
    sm.output.table,
    sm.output.metrics,
    strips_out=sm.output.strips,
    threads=sm.threads,
)
