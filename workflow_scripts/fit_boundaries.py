"""Snakemake script for rule fit_boundaries: latents.parquet -> boundaries.npz + boundaries.json."""

from sharpgen.directions.boundaries import run_fit_boundaries
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
run_fit_boundaries(sm.input.latents, sm.params.directions, sm.output.npz, sm.output.json)
