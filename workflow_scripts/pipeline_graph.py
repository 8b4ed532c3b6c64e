"""Snakemake script for rule fig_pipeline: `snakemake --rulegraph` of this very workflow (same
merged config) -> pipeline.dot, rendered by graphviz `dot` to PNG and PDF."""

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from sharpgen.atomic import atomic_path
from sharpgen.logutil import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
log = logging.getLogger("pipeline_graph")
dot = shutil.which("dot")
if dot is None:
    raise RuntimeError("graphviz `dot` is not installed (the rule fig_pipeline should not exist)")
with tempfile.TemporaryDirectory() as tmp:
    cfg = Path(tmp) / "config.yaml"
    cfg.write_text(yaml.safe_dump(dict(sm.params.config), sort_keys=False))
    cmd = [sm.params.snakemake, "--rulegraph", "--forceall", "--nolock", "--quiet", "all",
           "--configfile", str(cfg), "--cores", "1",
           "--snakefile", sm.params.snakefile, "--directory", str(Path.cwd())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
if proc.returncode != 0:
    raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
text = proc.stdout
start = text.find("digraph")
if start < 0:
    raise RuntimeError(f"`snakemake --rulegraph` printed no graph:\n{text[-2000:]}")
graph = text[start:]
with atomic_path(sm.output.dot, suffix=".dot") as t:
    t.write_text(graph)
for fmt in ("png", "pdf"):
    with atomic_path(sm.output[fmt], suffix=f".{fmt}") as t:
        subprocess.run([dot, f"-T{fmt}", "-Gdpi=110", "-o", str(t)], input=graph, text=True,
                       check=True, timeout=60)
log.info("pipeline graph: %d rules -> %s", graph.count("label ="), sm.output.png)
