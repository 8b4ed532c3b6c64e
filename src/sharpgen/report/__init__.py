"""Stage "report": one figure per rule, grouped by what the figures show.

rules/report.smk (fig_<name>) -> workflow_scripts/report_figure.py -> the module of the figure:

* :mod:`.data_gan` -- real vs generated patches, parameter distributions, image realism;
* :mod:`.directions` -- latent maps, traversal strips, SVM table, entanglement, calibration;
* :mod:`.retrieval` -- queries and their matches, query-vs-match scatter;
* :mod:`.inversion` -- held-out patches beside their GAN reconstructions;
* :mod:`.training` -- GAN and SimSiam training curves;
* :mod:`.style` -- the shared look (colours, registry units, Br drawing, saving).

Each ``fig_*`` draws from arrays and returns a matplotlib Figure; the ``build_*`` next to it
reads the pipeline outputs (``inp``: rule input name -> path, ``cfg``: the ``report`` section).
The report only plots: nothing here imports torch or runs a network (tests/test_report.py
imports every module with torch blocked).
"""

from __future__ import annotations

import importlib
from typing import Mapping

#: figure name -> (module under sharpgen.report, builder); latent_map takes a ``param`` wildcard
FIGURES: dict[str, tuple[str, str]] = {
    "samples": ("data_gan", "build_samples"),
    "parameters": ("data_gan", "build_parameters"),
    "realism": ("data_gan", "build_realism"),
    "latent_map": ("directions", "build_latent_map"),
    "traversals": ("directions", "build_traversals"),
    "svm_accuracy": ("directions", "build_svm_accuracy"),
    "entanglement": ("directions", "build_entanglement"),
    "calibration": ("directions", "build_calibration"),
    "retrieval_examples": ("retrieval", "build_retrieval_examples"),
    "retrieval_scatter": ("retrieval", "build_retrieval_scatter"),
    "memorisation": ("retrieval", "build_memorisation"),
    "real_records": ("retrieval", "build_real_records"),
    "inversion": ("inversion", "build_inversion"),
    "training_gan": ("training", "build_training_gan"),
    "training_ssl": ("training", "build_training_ssl"),
}


def figure_module(name: str) -> str:
    """Dotted module that builds figure ``name`` (e.g. 'sharpgen.report.directions')."""
    if name not in FIGURES:
        raise KeyError(f"unknown report figure {name!r}; known: {sorted(FIGURES)}")
    return f"{__name__}.{FIGURES[name][0]}"


def build(name: str, inp: Mapping, cfg: Mapping, **wildcards):
    """Build figure ``name`` from the rule inputs ``inp`` and the ``report`` config section
    (schema defaults filled in under ``cfg``) -> matplotlib Figure."""
    from sharpgen.config import section

    module = importlib.import_module(figure_module(name))
    return getattr(module, FIGURES[name][1])(inp, section("report", cfg), **wildcards)
