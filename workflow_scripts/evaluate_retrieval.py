"""Snakemake script for rule evaluate_retrieval: evaluation.json + matches.parquet."""

import json
import logging

import torch

from sharpgen.atomic import write_json, write_parquet
from sharpgen.logutil import setup_logging
from sharpgen.retrieval import run_evaluation

setup_logging(snakemake.log[0])  # noqa: F821
log = logging.getLogger("evaluate_retrieval")
sm = snakemake  # noqa: F821
torch.set_num_threads(max(1, int(sm.threads)))
result, matches = run_evaluation(
    sm.input.encoder, sm.input.embeddings, sm.input.zarr, sm.input.table,
    sm.input.generated, sm.input.latents, dict(sm.params.cfg),
)
write_parquet(sm.output.matches, matches)
write_json(sm.output.evaluation, result)
for qset in ("generated", "real"):
    for method, corr in result[qset]["correlations"].items():
        log.info("%s %s Pearson: %s", qset, method,
                 json.dumps({p: round(v["pearson"], 3) for p, v in corr.items()}))
log.info("self-retrieval: %s", json.dumps({m: v for m, v in result["self_retrieval"].items()
                                             if isinstance(v, dict)}))
