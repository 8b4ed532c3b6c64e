"""Snakemake script for rule embed: every real patch -> l2-normalised SimSiam embedding store."""

import logging

import numpy as np
import torch

from sharpgen.logutil import setup_logging
from sharpgen.retrieval import open_patch_store, save_embeddings
from sharpgen.ssl import embed, load_encoder

setup_logging(snakemake.log[0])  # noqa: F821
log = logging.getLogger("embed")
sm = snakemake  # noqa: F821
cfg = dict(sm.params.cfg)
torch.set_num_threads(max(1, int(sm.threads)))
enc, info = load_encoder(sm.input.encoder)
arr, attrs, table = open_patch_store(sm.input.zarr, sm.input.table)
if int(info["meta"].get("size", arr.shape[1])) != arr.shape[1]:
    raise ValueError(f"encoder {sm.input.encoder} expects {info['meta']['size']} px patches, "
                     f"the store {sm.input.zarr} has {arr.shape[1]} px")
bs = int(cfg.get("embed_batch_size", 256))
chunk = max(bs, 2048)
emb = np.concatenate([embed(enc, np.asarray(arr[i:i + chunk], dtype=np.float32), batch_size=bs)
                      for i in range(0, arr.shape[0], chunk)])
save_embeddings(sm.output.embeddings, emb, np.arange(len(table)), table["split"].astype(str).to_numpy(),
                info["hash"])
log.info("embedded %d patches (dim %d) with encoder %s -> %s", *emb.shape, info["hash"], sm.output.embeddings)
