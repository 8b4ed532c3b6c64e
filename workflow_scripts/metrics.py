"""Snakemake script for rule metrics: stage summaries + benchmark files -> results/metrics.json."""

import json
import logging
from pathlib import Path

import pandas as pd

from sharpgen import metrics
from sharpgen.atomic import write_json
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger("metrics")
inp = dict(sm.input.items())


def _json(key):
    return json.loads(Path(inp[key]).read_text()) if key in inp else None


m = metrics.build_metrics(
    table=pd.read_parquet(inp["table"]) if "table" in inp else None,
    quality=_json("quality"),
    boundaries=_json("boundaries"),
    traversal=_json("traversal"),
    calibration=_json("calibration"),
    retrieval=_json("retrieval"),
    ssl_log=pd.read_csv(inp["ssl_log"]) if "ssl_log" in inp else None,
    timings=metrics.read_benchmarks(sm.params.benchmarks),
)
# a stage absent from the DAG has no section; everything present must be complete
present = [k for k in ("data", "gan", "svm", "traversal", "calibration", "retrieval", "timing") if k in m]
missing_stages = sorted({"data", "gan", "svm", "traversal", "calibration", "retrieval"} - set(present))
if missing_stages:
    log.warning("metrics.json has no section for %s (stage not in the workflow)", missing_stages)
metrics.validate_metrics(m, inp["schema"], stages=present,
                         direction_params=sm.params.direction_params)
nulls = metrics.null_keys(m)
if nulls:
    log.warning("undefined (null) values in metrics.json: %s", nulls)
write_json(sm.output.metrics, m)
log.info("wrote %s (%d timing entries, total %.1f s)", sm.output.metrics, len(m["timing"]),
         m.get("timing_total_s", 0.0))
