"""Snakemake script for rule calibrate: traversals -> calibration.json (fits + request evaluation)."""

from sharpgen.directions.calibrate import run_calibrate
from sharpgen.logutil import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
run_calibrate(
    sm.input.table,
    sm.input.metrics,
    sm.input.generator,
    sm.input.boundaries,
    sm.params.directions,
    sm.output.calibration,
    threads=sm.threads,
)
