"""Snakemake script for the fig_<name> rules: result files -> one figure (PNG + PDF).

The figure is chosen by ``params.figure`` (a key of ``sharpgen.report.FIGURES``); wildcards of
the rule (e.g. ``param`` of fig_latent_map) are passed to the builder as keyword arguments.
"""

import logging

from sharpgen import report
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger("report_figure")
name = sm.params.figure
cfg = dict(sm.params.cfg)
inputs = {k: str(v) for k, v in sm.input.items() if k != "code"}
kwargs = {k: v for k, v in sm.wildcards.items()}
log.info("figure %s%s from %s", name, f" {kwargs}" if kwargs else "", inputs)
fig = report.FIGURES[name](inputs, cfg, **kwargs)
report.save_figure(fig, sm.output.png, sm.output.pdf, dpi=int(cfg.get("dpi", 130)))
log.info("wrote %s and %s", sm.output.png, sm.output.pdf)
