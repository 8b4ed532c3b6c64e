"""Snakemake script for rule realism_population: the synthetic population's JSOC keywords
(USFLUX over the SHARP mask, R_VALUE, AREA) against the real keyword tables -> JSON + figure."""

import logging

from sharpgen.atomic import write_json
from sharpgen.data import read_manifest
from sharpgen.logutil import setup_logging
from sharpgen.realism_population import (
    compare,
    load_720s,
    load_los,
    population_figure,
    synthetic_population,
)
from sharpgen.report.style import save_figure

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger("realism_population")
cfg = sm.params.cfg
records = read_manifest(sm.input.manifest)
real = load_720s(sm.input.table_720s)
los = load_los(list(sm.input.tables_los))
log.info("real: %d hmi.sharp_720s records (%d regions), %d LOS-table records", len(real),
         real["region"].nunique(), len(los))
syn = synthetic_population(list(records["path"]), workers=int(sm.threads))
summary = compare(real, los, syn, seed=int(cfg.get("seed", 0)))
log.info("KS log10 USFLUX %.3f, KS non-zero R_VALUE %.3f, R_VALUE = 0: synthetic %.3f vs 720s %.3f",
         summary["ks"]["log_usflux"], summary["ks"]["r_value_nonzero"],
         summary["zero_fraction"]["synthetic"], summary["zero_fraction"]["real_720s"])
failed = [k for k, ok in summary["pass"].items() if not ok]
if failed:
    log.warning("synthetic population misses its targets for %s (see %s)", failed, sm.output.numbers)
fig = population_figure(real, los, syn, summary)
save_figure(fig, sm.output.png, sm.output.pdf)
write_json(sm.output.numbers, summary)
