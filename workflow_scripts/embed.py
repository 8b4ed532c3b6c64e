"""Snakemake script for rule embed: every real patch -> l2-normalised SimSiam embedding store."""

from sharpgen.embed import run_embed
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_embed(sm.input.encoder, sm.input.zarr, sm.input.table, sm.output.embeddings,
          batch_size=int(sm.params.cfg["embed_batch_size"]), threads=sm.threads, device=sm.params.cfg["device"])
