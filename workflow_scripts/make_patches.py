"""Snakemake script for rule make_patches: records.tsv -> patches.zarr, patches.parquet, summary.

The rule's threads are worker processes (spawned: they import this file as ``__mp_main__``, so
the work runs only under ``__main__``)."""

from sharpgen.data import read_manifest
from sharpgen.logutil import setup_logging
from sharpgen.patches import make_patches

if __name__ == "__main__":
    setup_logging(snakemake.log[0])  # noqa: F821
    sm = snakemake  # noqa: F821
    make_patches(
        read_manifest(sm.input.manifest),
        sm.params.cfg,
        zarr_path=sm.output.zarr,
        table_path=sm.output.table,
        summary_path=sm.output.summary,
        root=".",
        workers=sm.threads,  # processes reading and cutting records (same outputs for any number)
    )
