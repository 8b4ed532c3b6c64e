"""Snakemake script for rule ingest_local: list local SHARP Br FITS files in the manifest."""

from sharpgen.atomic import atomic_path
from sharpgen.data import local_manifest
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
manifest = local_manifest(sm.params.cfg["glob"], root=".")
with atomic_path(sm.output.manifest, suffix=".tsv") as tmp:
    manifest.to_csv(tmp, sep="\t", index=False)
