"""Snakemake script for rule real_records: generated queries -> nearest real SHARP records of
../shared/data (cut like the patch store, embedded by the pipeline's SimSiam encoder)."""

from sharpgen.logutil import setup_logging
from sharpgen.real_records import run_real_records, write_outputs

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
summary, arrays = run_real_records(
    sm.input.encoder, sm.input.embeddings, sm.input.zarr, sm.input.table, sm.input.generated,
    sm.input.latents, list(sm.input.real), dict(sm.params.patches), dict(sm.params.cfg),
)
write_outputs(summary, arrays, sm.output.summary, sm.output.patches)
