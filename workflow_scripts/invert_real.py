"""Snakemake script for rule invert_real: held-out real patches -> latent codes, reconstructions
and their scores (results/invert/)."""

from sharpgen.invert.stage import run_invert_real
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_invert_real(
    sm.input.generator,
    sm.input.encoder,
    sm.input.zarr,
    sm.input.table,
    sm.input.generated,
    sm.input.latents,
    sm.params.cfg,
    sm.output.summary,
    sm.output.table,
    sm.output.images,
    threads=sm.threads,
)
