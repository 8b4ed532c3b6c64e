"""Snakemake script for rule fit_boundaries: latents.parquet (+ generator.pt and patches.zarr for
the measured holds of the conditional directions) -> boundaries.npz + boundaries.json."""

from sharpgen.directions.boundaries import run_fit_boundaries
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_fit_boundaries(sm.input.latents, sm.params.directions, sm.output.npz, sm.output.json,
                   generator_path=sm.input.generator, patches_zarr=sm.input.zarr, threads=sm.threads)
