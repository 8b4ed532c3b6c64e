# Shared helpers for every stage: config validation, result paths, code dependencies.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from sharpgen.config import validate_config, ConfigError  # noqa: E402

try:
    validate_config(config, Path(workflow.basedir) / "rules" / "schemas" / "config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = config["results_dir"].rstrip("/")
CHECKPOINTS = config["checkpoint_dir"].rstrip("/")


def R(path):
    """Path below results_dir."""
    return f"{RESULTS}/{path}"


def LOG(rule_name):
    return f"{RESULTS}/logs/{rule_name}.log"


def BENCH(rule_name):
    return f"{RESULTS}/benchmarks/{rule_name}.tsv"


def CODE(*modules):
    """The sharpgen modules a rule imports, declared as inputs so that editing one reruns
    exactly the rules that use it (Snakemake compares modification times)."""
    return [f"src/sharpgen/{m}.py" for m in modules]


# Final targets, appended to by each stage's .smk.
ALL_TARGETS = []
