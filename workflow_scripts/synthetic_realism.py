"""Snakemake script for rule synthetic_realism: figure + numbers comparing synthetic and real records."""

from sharpgen.atomic import write_json
from sharpgen.data import read_manifest
from sharpgen.logutil import setup_logging
from sharpgen.realism import realism_figure

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
records = read_manifest(sm.input.manifest)
summary = realism_figure(
    list(sm.input.real),
    list(records["path"]),
    out_png=sm.output.png,
    out_pdf=sm.output.pdf,
    max_synth=int(sm.params.cfg.get("realism_records", 200)),
    seed=int(sm.params.cfg.get("seed", 0)),
)
write_json(sm.output.numbers, summary)
