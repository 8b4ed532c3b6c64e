"""Snakemake script for the fig_<name> rules: result files -> one figure (PNG + PDF).

The figure is chosen by ``params.figure`` (a key of ``sharpgen.report.FIGURES``); wildcards of
the rule (e.g. ``param`` of fig_latent_map) are passed to the builder as keyword arguments.
"""

import logging

from sharpgen.logutil import setup_logging
from sharpgen.report import build
from sharpgen.report.style import save_figure

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger("report_figure")
name = sm.params.figure
inputs = {k: str(v) for k, v in sm.input.items() if k != "code"}
kwargs = dict(sm.wildcards.items())
log.info("figure %s%s from %s", name, f" {kwargs}" if kwargs else "", inputs)
fig = build(name, inputs, sm.params.cfg, **kwargs)
save_figure(fig, sm.output.png, sm.output.pdf, dpi=int(sm.params.cfg["dpi"]))
log.info("wrote %s and %s", sm.output.png, sm.output.pdf)
