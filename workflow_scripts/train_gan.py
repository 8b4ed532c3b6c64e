"""Snakemake script for rule train_gan: patch store -> generator.pt, train_log.csv, sample grids."""

import logging

from sharpgen.gan.train import GanConfig, read_patch_store, train_gan
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
log = logging.getLogger("train_gan")
sm = snakemake  # noqa: F821
cfg = GanConfig.from_dict(sm.params.gan)
patches, attrs = read_patch_store(sm.input.zarr, sm.input.table, split=cfg.split)
log.info("training %s GAN on %d patches of %dx%d from %s (split=%s)", cfg.arch, patches.shape[0],
         patches.shape[1], patches.shape[2], sm.input.zarr, cfg.split)
train_gan(
    patches,
    cfg,
    checkpoint_root=sm.params.checkpoint_root,
    generator_path=sm.output.generator,
    log_csv=sm.output.log_csv,
    samples_dir=sm.output.grids,
    clip_gauss=float(attrs.get("clip_gauss", 1000.0)),
    data_id=str(attrs.get("config_hash", "")),
    threads=sm.threads,
)
