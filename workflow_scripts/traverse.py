"""Snakemake script for rule traverse: generator + boundaries -> traversals.parquet + traversal_metrics.json."""

from sharpgen.directions import run_traverse
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
run_traverse(
    sm.input.generator,
    sm.input.boundaries,
    sm.input.latents,
    sm.input.zarr,
    sm.params.directions,
    sm.output.table,
    sm.output.metrics,
    threads=sm.threads,
)
