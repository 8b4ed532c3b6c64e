"""Snakemake script for rule train_ssl: train split of the patch store -> encoder.pt, train_log.csv."""

import logging

import torch

from sharpgen.logutil import setup_logging
from sharpgen.retrieval import open_patch_store, read_rows, split_rows
from sharpgen.ssl import checkpoint_folder, save_encoder, train_simsiam

setup_logging(snakemake.log[0])  # noqa: F821
log = logging.getLogger("train_ssl")
sm = snakemake  # noqa: F821
cfg = dict(sm.params.cfg)
torch.set_num_threads(max(1, int(sm.threads)))
arr, attrs, table = open_patch_store(sm.input.zarr, sm.input.table)
split = str(cfg.get("split", "train"))
rows = split_rows(table, split)
patches = read_rows(arr, rows)
data_id = f"{attrs.get('config_hash', '')}:{patches.shape}"
folder = checkpoint_folder(sm.params.checkpoint_root, cfg, data_id)
log.info("SimSiam on %d patches of %dx%d (split=%s), checkpoints in %s", *patches.shape, split, folder)
model, rows_log = train_simsiam(patches, cfg, folder, log_csv=sm.output.log_csv)
digest = save_encoder(sm.output.encoder, model, meta={
    "size": int(patches.shape[1]), "clip_gauss": float(attrs.get("clip_gauss", 1000.0)),
    "mode": str(attrs.get("mode", "")), "bin": int(attrs.get("bin", 1) or 1), "data_id": data_id,
    "n_train": int(patches.shape[0]), "epochs": int(len(rows_log)),
})
log.info("encoder %s written to %s", digest, sm.output.encoder)
