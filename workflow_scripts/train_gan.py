"""Snakemake script for rule train_gan: patch store -> generator.pt, train_log.csv, sample grids
(``gan.devices`` > 1: that many data-parallel processes, started with torchrun)."""

from sharpgen.gan.train import train_gan_stage
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
train_gan_stage(sm.input.zarr, sm.input.table, dict(sm.params.gan),
                checkpoint_root=sm.params.checkpoint_root, generator=sm.output.generator,
                log_csv=sm.output.log_csv, samples_dir=sm.output.grids, threads=sm.threads)
