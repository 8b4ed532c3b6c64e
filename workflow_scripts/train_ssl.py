"""Snakemake script for rule train_ssl: train split of the patch store -> encoder.pt, train_log.csv."""

import logging

from sharpgen.logutil import setup_logging
from sharpgen.store import PatchStore
from sharpgen.ssl import checkpoint_folder, save_encoder, train_simsiam

setup_logging(snakemake.log[0])  # noqa: F821
log = logging.getLogger("train_ssl")
sm = snakemake  # noqa: F821
cfg = dict(sm.params.cfg)
store = PatchStore.open(sm.input.zarr, sm.input.table)
attrs = store.attrs
split = str(cfg.get("split", "train"))
patches = store.read(store.rows(split))
data_id = f"{attrs.get('config_hash', '')}:{patches.shape}"
folder = checkpoint_folder(sm.params.checkpoint_root, cfg, data_id)
log.info("SimSiam on %d patches of %dx%d (split=%s), checkpoints in %s", *patches.shape, split, folder)
model, rows_log = train_simsiam(patches, cfg, folder, log_csv=sm.output.log_csv,
                                threads=max(1, int(sm.threads)))
digest = save_encoder(sm.output.encoder, model, meta={
    "size": int(patches.shape[1]), "clip_gauss": float(attrs.get("clip_gauss", 1000.0)),
    "mode": str(attrs.get("mode", "")), "bin": int(attrs.get("bin", 1) or 1), "data_id": data_id,
    "n_train": int(patches.shape[0]), "epochs": int(len(rows_log)),
})
log.info("encoder %s written to %s", digest, sm.output.encoder)
