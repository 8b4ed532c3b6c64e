"""Snakemake script for rule sample_latents: generator -> latents.parquet, generated.zarr, quality.json."""

from sharpgen.logutil import setup_logging
from sharpgen.sampling import run_sampling

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
run_sampling(
    sm.input.generator,
    sm.input.zarr,
    sm.input.table,
    sm.params.sampling,
    latents_path=sm.output.latents,
    images_path=sm.output.images,
    quality_path=sm.output.quality,
    threads=sm.threads,
)
