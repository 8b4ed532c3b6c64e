"""Snakemake script for rule train_ssl: train split of the patch store -> encoder.pt, train_log.csv
(``ssl.devices`` > 1: that many data-parallel processes, started with torchrun)."""

from sharpgen.logutil import setup_logging
from sharpgen.ssl import train_ssl_stage

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
train_ssl_stage(sm.input.zarr, sm.input.table, dict(sm.params.cfg),
                checkpoint_root=sm.params.checkpoint_root, encoder=sm.output.encoder,
                log_csv=sm.output.log_csv, threads=sm.threads)
