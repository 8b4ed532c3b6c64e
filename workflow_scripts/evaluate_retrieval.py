"""Snakemake script for rule evaluate_retrieval: evaluation.json + matches.parquet."""

from sharpgen.logutil import setup_logging
from sharpgen.retrieval import run_evaluate_retrieval

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
run_evaluate_retrieval(
    sm.input.encoder, sm.input.embeddings, sm.input.zarr, sm.input.table, sm.input.generated,
    sm.input.latents, dict(sm.params.cfg), sm.output.evaluation, sm.output.matches, threads=sm.threads,
)
