"""Helpers for the end-to-end Snakemake tests (test_workflow.py, test_slurm.py, test_envs.py).

They work generically over whatever rules the Snakefile defines, so the tests keep holding as
stages are added: rules, their params (which config section each reads), their declared code
modules, the rule graph, and which jobs a dry run would execute.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY = REPO_ROOT / "tests" / "configs" / "tiny.yaml"

# What a copy of the workflow needs to run (never results/, checkpoints/, .snakemake/).
WORKFLOW_PATHS = (
    "Snakefile", "config.yaml", "rules", "workflow_scripts", "src", "profiles", "envs",
    "presets", "tests/configs",
)

# sharpgen modules that are plumbing, not results: editing them deliberately reruns nothing, so
# rules need not declare them in CODE(...).
INFRA_MODULES = {"__init__", "atomic", "config", "logutil", "timings", "cli"}


@dataclass
class RuleInfo:
    name: str
    params: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    resources: dict[str, Any]
    threads: Any
    conda_env: str | None
    script: str | None
    code_modules: list[str] = field(default_factory=list)
    config_paths: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    benchmark: str | None = None

    @property
    def gpu(self) -> int:
        value = self.resources.get("gpu", 0)
        return value if isinstance(value, int) else 0


#: numba's on-disk machine code (``cache=True`` kernels: sharpgen.physics_kernels, sharpgen.rvalue)
NUMBA_CACHE_SUFFIXES = (".nbi", ".nbc")


def _ignore_build_files(directory: str, names: list[str]) -> set[str]:
    """Bytecode and egg-info stay behind; numba's cache files are copied (``copy2`` keeps their
    source's mtime, which is what numba checks): compiling the kernels from scratch costs ~14 s
    of CPU in every fresh process of every copy, which is not what these tests measure."""
    in_pycache = Path(directory).name == "__pycache__"
    return {n for n in names if n.endswith((".pyc", ".egg-info"))
            or (in_pycache and not n.endswith(NUMBA_CACHE_SUFFIXES))}


def copy_workflow(dst: Path, src: Path = REPO_ROOT) -> Path:
    """Copy the workflow (Snakefile, rules, scripts, src, configs, profiles) into ``dst``, with
    the numba kernels' disk cache of ``src`` when there is one (see :func:`_ignore_build_files`)."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = _ignore_build_files
    for rel in WORKFLOW_PATHS:
        s = src / rel
        if not s.exists():
            continue
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)
    return dst


def snakemake_env(workdir: Path) -> dict[str, str]:
    """Environment for a Snakemake subprocess on a copy: its scripts import the copy's sharpgen."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(workdir / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_snakemake(workdir: Path, *args: str, timeout: float = 600,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), *args], cwd=workdir, capture_output=True, text=True, timeout=timeout,
        env=dict(env) if env is not None else snakemake_env(workdir),
    )


def _config_paths(config: Mapping, value: Any, prefix: str = "") -> list[str]:
    """Dotted config paths whose value equals ``value`` (a rule param), deepest first."""
    hits = []
    for key, sub in config.items():
        path = f"{prefix}{key}"
        if isinstance(sub, Mapping):
            hits.extend(_config_paths(sub, value, path + "."))
        if isinstance(value, Mapping) and sub == value and isinstance(sub, Mapping):
            hits.append(path)
    return hits


def load_rules(workdir: Path = REPO_ROOT, configfiles: Iterable[Path] = ()) -> tuple[dict[str, RuleInfo], dict]:
    """Parse the Snakefile through Snakemake's API: {rule name: RuleInfo}, and the merged config."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    configfiles = [Path(c) for c in configfiles]
    with SnakemakeApi() as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=configfiles),
            snakefile=workdir / "Snakefile",
            workdir=workdir,
        )
        workflow = wf._workflow
        config = dict(workflow.config)
        rules = {}
        for rule in workflow.rules:
            params = dict(rule.params.items()) if rule.params else {}
            inputs = [str(f) for f in rule.input]
            code = sorted(
                m.group(1) for f in inputs if (m := re.search(r"(?:^|/)src/sharpgen/(.+)\.py$", f))
            )
            cpaths = []
            for value in params.values():
                if isinstance(value, Mapping) and value == config:
                    cpaths.append("")  # the whole config: every setting reruns this rule
                else:
                    cpaths.extend(_config_paths(config, value)[:1])
            resources = {}
            for k, v in dict(rule.resources).items():
                if hasattr(v, "is_evaluable") and v.is_evaluable():
                    continue  # a function of the job (e.g. tmpdir)
                raw = getattr(v, "value", v)
                if isinstance(raw, (int, float, str)):
                    resources[k] = raw
            rules[rule.name] = RuleInfo(
                name=rule.name, params=params, inputs=inputs,
                outputs=[str(f) for f in rule.output], resources=resources,
                threads=resources.get("_cores"), conda_env=rule.conda_env,
                script=rule.script, code_modules=code, config_paths=cpaths,
                logs=[str(f) for f in rule.log],
                benchmark=str(rule.benchmark) if rule.benchmark else None,
            )
    return rules, config


def script_path(workdir: Path, rule: RuleInfo) -> Path | None:
    if not rule.script:
        return None
    return (workdir / "rules" / rule.script).resolve()


def parse_rulegraph(dot: str) -> dict[str, set[str]]:
    """``snakemake --rulegraph`` DOT -> {rule: set of rules that consume its outputs}."""
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M))
    children: dict[str, set[str]] = {name: set() for name in labels.values()}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M):
        children[labels[a]].add(labels[b])
    return children


def rule_graph(workdir: Path, configfiles: Iterable[Path] = ()) -> dict[str, set[str]]:
    args = ["--rulegraph", "--quiet", "all"]
    cf = [str(c) for c in configfiles]
    if cf:
        args += ["--configfile", *cf]
    proc = run_snakemake(workdir, *args, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return parse_rulegraph(proc.stdout)


def downstream(graph: Mapping[str, set[str]], roots: Iterable[str]) -> set[str]:
    """The roots and every rule that (transitively) consumes their outputs."""
    seen = set()
    stack = list(roots)
    while stack:
        r = stack.pop()
        if r in seen:
            continue
        seen.add(r)
        stack.extend(graph.get(r, ()))
    return seen


def parse_job_stats(text: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run -> {rule: count}; {} when nothing is to be done."""
    if "Nothing to be done" in text:
        return {}
    m = re.search(r"^job\s+count\s*\n[- ]+\n(.*?)^total\s+\d+", text, flags=re.S | re.M)
    if not m:
        raise AssertionError("no job stats table in Snakemake output:\n" + text[-3000:])
    counts = {}
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def dry_run_jobs(workdir: Path, *args: str, configfiles: Iterable[Path] = ()) -> dict[str, int]:
    """Rules a real run would execute now (Snakemake's own rerun decision), with job counts."""
    cf = [str(c) for c in configfiles]
    cmd = ["-n", "--cores", "1", *args]
    if cf:
        cmd += ["--configfile", *cf]
    proc = run_snakemake(workdir, *cmd, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return parse_job_stats(proc.stdout + proc.stderr)


def get_path(config: Mapping, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def set_path(overlay: dict, dotted: str, value: Any) -> dict:
    """Nested overlay dict with ``dotted`` set to ``value`` (merged over the other configs)."""
    node = overlay
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return overlay


def write_overlay(path: Path, dotted: str, value: Any) -> Path:
    path.write_text(yaml.safe_dump(set_path({}, dotted, value), sort_keys=False))
    return path


def _rel_module(path: Path, src: Path) -> str:
    """src/sharpgen/directions/traverse.py -> 'directions/traverse' (the CODE(...) naming)."""
    return str(Path(path).relative_to(src).with_suffix(""))


def imported_sharpgen_modules(script: Path, src: Path = REPO_ROOT / "src" / "sharpgen") -> set[str]:
    """sharpgen modules a rule's ``script`` runs: every one the script imports, plus what those
    import at module level (imports inside functions are code paths of other rules, e.g. the FITS
    reader behind ``patches``, and are not followed). Names like 'physics', 'directions/traverse'."""
    from sharpgen.codedeps import code_closure

    files = code_closure([script], src=src.parent, top_only_after_start=True)
    return {_rel_module(Path(f), src) for f in files if Path(f) != Path(script)}


def direct_sharpgen_imports(script: Path, src: Path = REPO_ROOT / "src" / "sharpgen") -> set[str]:
    """sharpgen modules ``script`` itself imports (anywhere in the file), with the packages they
    belong to ('directions/__init__')."""
    from sharpgen.codedeps import imported_modules, module_files

    return {_rel_module(f, src) for f in module_files(src.parent, imported_modules(script, src.parent))}


def third_party_imports(paths: Iterable[Path]) -> set[str]:
    """Top-level names of non-stdlib, non-sharpgen modules imported by ``paths``."""
    names: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return {n for n in names if n not in stdlib and n not in {"sharpgen", "snakemake"}}


def job_events(text: str) -> list[tuple[str, str, int]]:
    """Start/finish events of a Snakemake run log, in log order: [("start"|"end", rule, jobid)]."""
    events = []
    pending_rule = None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            pending_rule = m.group(1)
            continue
        m = re.match(r"^\s+jobid: (\d+)\s*$", line)
        if m and pending_rule:
            events.append(("start", pending_rule, int(m.group(1))))
            pending_rule = None
            continue
        m = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", line)
        if m:
            events.append(("end", m.group(2), int(m.group(1))))
    return events


def max_concurrent(events: list[tuple[str, str, int]], rules: set[str]) -> int:
    """Largest number of jobs of ``rules`` running at the same time, from start/finish events."""
    running: set[int] = set()
    peak = 0
    for kind, rule, jobid in events:
        if rule not in rules:
            continue
        if kind == "start":
            running.add(jobid)
            peak = max(peak, len(running))
        else:
            running.discard(jobid)
    return peak


def glob_pattern(pattern: str) -> str:
    """A Snakemake path pattern with its {wildcards} replaced by *."""
    return re.sub(r"\{[^}]+\}", "*", pattern)


def summary(workdir: Path, *args: str, configfiles: Iterable[Path] = ()) -> list[dict[str, str]]:
    """``snakemake --summary``: one dict per output file of the DAG (output_file, date, rule,
    status, plan)."""
    cmd = ["--summary", *args]
    cf = [str(c) for c in configfiles]
    if cf:
        cmd += ["--configfile", *cf]
    proc = run_snakemake(workdir, *cmd, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.count("\t") >= 5]
    assert lines and lines[0].startswith("output_file"), proc.stdout[-2000:]
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]
