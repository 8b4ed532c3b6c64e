# Shared helpers for every stage: config validation (schema defaults filled in), result paths,
# code dependencies (import closures) and the final targets of the DAG.
import glob
import os
import shutil
import sys
from pathlib import Path

BASEDIR = Path(workflow.basedir)
sys.path.insert(0, str(BASEDIR / "src"))
from sharpgen.codedeps import code_closure  # noqa: E402
from sharpgen.config import ConfigError, validate_config  # noqa: E402

try:
    validate_config(config, BASEDIR / "rules" / "schemas" / "config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = config["results_dir"].rstrip("/")
CHECKPOINTS = config["checkpoint_dir"].rstrip("/")
HAVE_DOT = shutil.which("dot") is not None
# data.local.glob: one glob or a list of globs, relative to the working directory
_LOCAL_GLOBS = config["data"]["local"]["glob"]
LOCAL_BR = sorted(
    {
        f
        for g in ([_LOCAL_GLOBS] if isinstance(_LOCAL_GLOBS, str) else _LOCAL_GLOBS)
        for f in glob.glob(g)
    }
)


def R(path):
    """Path below results_dir."""
    return f"{RESULTS}/{path}"


def LOG(rule_name):
    return f"{RESULTS}/logs/{rule_name}.log"


def BENCH(rule_name):
    return f"{RESULTS}/benchmarks/{rule_name}.tsv"


def CODE(*items):
    """The src/sharpgen files a rule depends on, i.e. the import closure (sharpgen.codedeps) of its
    workflow script(s) ("name.py", under workflow_scripts/) and of sharpgen modules ("name" or
    "package.module"), declared as inputs so that editing a module reruns exactly the rules
    that import it, directly or not."""
    scripts = [BASEDIR / "workflow_scripts" / i for i in items if i.endswith(".py")]
    modules = [f"sharpgen.{i}" for i in items if not i.endswith(".py")]
    # relative to the working directory: Snakemake records input paths as given, so absolute
    # ones would rerun every rule of a project that was moved or copied elsewhere
    return [
        os.path.relpath(f) for f in code_closure(scripts, modules, src=BASEDIR / "src")
    ]


def FIGURE_FILES():
    """PNG + PDF of every report figure rule in the DAG (rules/report.smk)."""
    from sharpgen.report import FIGURES

    names = [n for n in FIGURES if n != "latent_map"]
    names += [f"latent_map_{p}" for p in config["report"]["latent_map"]["parameters"]]
    names += ["pipeline"] if HAVE_DOT else []
    return [R(f"figures/{n}.{ext}") for n in names for ext in ("png", "pdf")]


def get_final_output(wildcards=None):
    """Every final target of the DAG: the report figures and metrics.json (which depend on every
    stage), plus the synthetic data's realism figure when real records are available."""
    out = FIGURE_FILES() + [R("metrics.json")]
    if config["data"]["source"] == "synthetic" and LOCAL_BR:
        out += [R("figures/synthetic_realism.png"), R("figures/synthetic_realism.pdf")]
    # without real records in ../shared/data (REAL_RECORD_FILES: rules/retrieval.smk) there is
    # no real-record retrieval to draw
    if not REAL_RECORD_FILES:
        out = [f for f in out if not Path(f).name.startswith("real_records.")]
    # the synthetic population vs the JSOC keyword tables (KEYWORD_TABLES: rules/data.smk)
    if config["data"]["source"] == "synthetic" and KEYWORD_TABLES:
        out += [
            R("figures/realism_population.png"),
            R("figures/realism_population.pdf"),
        ]
    return out
