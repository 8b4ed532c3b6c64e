"""End-to-end: the tiny config through Snakemake, then Snakemake's own rerun decisions.

One real run of the whole DAG (tests/configs/tiny.yaml) in a copy of the workflow under a temp
folder (the real results/ is never touched). Then, through `snakemake -n` on that copy:

* a second run does nothing;
* changing one setting reruns exactly the rules whose `params` carry that config section and the
  rules downstream of them (never GAN or SimSiam training for a later stage's setting, never data
  ingestion for a GAN setting);
* editing a sharpgen module reruns exactly the rules that declare it (`input: code=CODE(...)`)
  and their dependants;
* GPU rules never overlap under `--resources gpu=1`.

Everything is derived from the rules present (Snakemake's API and --rulegraph), so the tests keep
holding as stages are added. A last test reruns one stage for real and checks that training
outputs were left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import snakeutil as su
from snakeutil import REPO_ROOT

pytestmark = pytest.mark.slow

TINY_REL = "tests/configs/tiny.yaml"
TRAINING_RULES = {"train_gan", "train_ssl"}
DATA_RULES = {"synthesize", "ingest_local", "download_jsoc"}


def _load(configfiles=(REPO_ROOT / TINY_REL,)):
    try:
        return su.load_rules(REPO_ROOT, configfiles)
    except Exception as err:  # a stage mid-edit: report it at collection
        return {"<workflow does not parse>": err}, {}


RULES, CONFIG = _load()
JOB_RULES = {n: r for n, r in RULES.items() if isinstance(r, su.RuleInfo) and n != "all"}


def _numeric_leaves(node, prefix):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix, node


def _valid_mutation(dotted):
    """(leaf, new value) under config section ``dotted`` that passes the schema, or None."""
    from sharpgen.config import ConfigError, deep_merge, validate_config

    for leaf, value in _numeric_leaves(su.get_path(CONFIG, dotted), dotted):
        if isinstance(value, int):
            candidates = [value + 1, value * 2, value - 1]
        else:
            candidates = [value * 0.5, value * 2, value + 0.1]
        for new in candidates:
            try:
                validate_config(deep_merge(CONFIG, su.set_path({}, leaf, new)))
            except ConfigError:
                continue
            return leaf, new
    return None


# One scenario per config section that some rule reads through `params`.
SECTION_PATHS = sorted({p for r in JOB_RULES.values() for p in r.config_paths} - {""})
# Module -> rules declaring it in CODE(...).
MODULES = sorted({m for r in JOB_RULES.values() for m in r.code_modules})


def _modules_by_users():
    """{first module: all modules} over the groups of modules that the same rules declare: one
    edit per group checks every distinct rerun set Snakemake must compute (each dry run costs
    ~4 s; 56 modules form ~31 groups). CODE(...) turns every module into an input the same way,
    so the other members of a group would only repeat the same check."""
    groups: dict[frozenset, list[str]] = {}
    for m in MODULES:
        users = frozenset(n for n, r in JOB_RULES.items() if m in r.code_modules)
        groups.setdefault(users, []).append(m)
    return {ms[0]: ms for ms in groups.values()}


MODULE_GROUPS = _modules_by_users()

# The named scenarios: (section, preferred key, new value, must rerun, must not rerun).
# When the preferred key is absent the first schema-valid numeric setting of the section is used.
NAMED = [
    ("patches", "clip_gauss", 500.0, {"make_patches"}, DATA_RULES),
    ("gan", "lr_g", 2.5e-4, {"train_gan"}, DATA_RULES | {"make_patches", "train_ssl"}),
    ("sampling", "seed", 7, {"sample_latents"}, DATA_RULES | {"make_patches"} | TRAINING_RULES),
    ("directions", "C", 0.5, {"fit_boundaries"}, DATA_RULES | {"make_patches"} | TRAINING_RULES),
    ("ssl", "lr", 0.02, {"train_ssl"}, DATA_RULES | {"make_patches", "train_gan"}),
    ("retrieval", "k", 3, set(), DATA_RULES | {"make_patches"} | TRAINING_RULES),
    ("report", "dpi", 100, set(), DATA_RULES | {"make_patches"} | TRAINING_RULES),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A copy of the workflow after one complete tiny run (cores 4, gpu=1)."""
    if "<workflow does not parse>" in RULES:
        pytest.fail(f"Snakefile does not parse: {RULES['<workflow does not parse>']}")
    missing = [f"{r.name}: {su.script_path(REPO_ROOT, r)}" for r in JOB_RULES.values()
               if r.script and not su.script_path(REPO_ROOT, r).exists()]
    if missing:
        pytest.skip("workflow scripts not written yet: " + "; ".join(missing))
    work = su.copy_workflow(tmp_path_factory.mktemp("wf"))
    t0 = time.monotonic()
    proc = su.run_snakemake(work, "--cores", "4", "--resources", "gpu=1",
                            "--configfile", TINY_REL, timeout=900)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tiny run failed ({wall:.0f} s):\n{log[-6000:]}"
    graph = su.rule_graph(work, [work / TINY_REL])
    print(f"tiny end-to-end run: {wall:.1f} s, rules {sorted(graph)}")
    return {"work": work, "log": log, "graph": graph, "wall_s": wall}


def _overlay(tiny, name, dotted, value):
    return su.write_overlay(tiny["work"] / f"overlay_{name}.yaml", dotted, value)


def _expected_for_section(tiny, dotted):
    # "" = a rule whose params carry the whole config (e.g. the pipeline figure): every change
    users = {n for n, r in JOB_RULES.items() if n in tiny["graph"]
             and any(p == "" or dotted == p or dotted.startswith(p + ".") for p in r.config_paths)}
    return su.downstream(tiny["graph"], users)


def test_tiny_run_completes(tiny):
    """Every output of the DAG exists and is up to date (`snakemake --summary` on the copy), and
    every job wrote its log and benchmark."""
    work = tiny["work"]
    rows = su.summary(work, configfiles=[work / TINY_REL])
    assert rows, "empty --summary"
    bad = [(r["output_file"], r["status"], r["plan"]) for r in rows
           if r["date"] == "-" or r["plan"] != "no update"]
    assert not bad, f"outputs missing or out of date after the tiny run: {bad}"
    ran = {r["rule"] for r in rows}
    assert ran == set(tiny["graph"]) - {"all"}, (sorted(ran), sorted(tiny["graph"]))
    for name in ran:
        rule = JOB_RULES[name]
        for pattern in rule.logs + [rule.benchmark]:
            assert list(work.glob(su.glob_pattern(pattern))), f"{name}: no {pattern} after the run"


def test_diagnose_linearity_reads_a_finished_run(tiny, tmp_path):
    """benchmarks/diagnose_linearity.py (not run by `make bench`) on the tiny run's outputs:
    the linear / MLP R^2 of each defined parameter, its grain share (the default generator
    has a grain) and its step ratio, written as JSON."""
    import json
    import sys

    out = tmp_path / "linearity.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "diagnose_linearity.py"),
                           str(tiny["work"] / "results"), "--grain-latents", "24", "--grain-draws", "3",
                           "--step-latents", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    tuf = json.loads(out.read_text())["parameters"]["tuf"]
    assert {"linear", "mlp", "grain_share", "linear_one_draw", "linear_grain_mean", "step_ratio"} <= set(tuf)
    assert tuf["n"] == 64 and 0.0 <= tuf["grain_share"] < 1.0 and tuf["step_ratio"] > 0


def test_diagnose_gap_reads_a_finished_run(tiny, tmp_path):
    """benchmarks/diagnose_gap.py on the tiny run's samples and boundaries: it refuses a generator
    without a latent structure (the tiny run's), and with one (the same run's files beside a
    generator.pt holding only a structure on [tuf, r_value]) prints each flux-R pair's normal
    cosine and the correlation chain of sharpgen.directions.linearity.correlation_chain."""
    import shutil
    import sys

    import numpy as np
    import torch

    from sharpgen.directions.linearity import correlation_chain
    from sharpgen.sampling import read_latents

    script = str(REPO_ROOT / "benchmarks" / "diagnose_gap.py")
    res = tiny["work"] / "results"
    proc = subprocess.run([sys.executable, script, str(res)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no latent structure with r_value" in proc.stderr
    fake = tmp_path / "results"
    for sub in ("samples", "directions", "gan"):
        (fake / sub).mkdir(parents=True)
    shutil.copy(res / "samples" / "latents.parquet", fake / "samples" / "latents.parquet")
    z, table = read_latents(res / "samples" / "latents.parquet")
    axes = np.zeros((2, z.shape[1]))
    axes[0, 0], axes[1, :2] = 1.0, (0.8, 0.6)
    torch.save({"structure": {"names": ["tuf", "r_value"], "axes": axes.tolist()}}, fake / "gan" / "generator.pt")
    normals = np.random.default_rng(0).standard_normal((3, z.shape[1]))  # the tiny run fits no r_value boundary
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    np.savez(fake / "directions" / "boundaries.npz", names=np.array(["tuf", "tpf", "r_value"]), normals=normals,
             folded=np.zeros(3, dtype=bool), space=np.array("z"))
    proc = subprocess.run([sys.executable, script, str(fake)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    normal = dict(zip(["tuf", "tpf", "r_value"], normals))
    c = correlation_chain(table["tuf"], table["r_value"], np.asarray(z, np.float64) @ axes[1])
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("tuf-r_value"))
    assert f"cos(normals) {normal['tuf'] @ normal['r_value']:.3f}" in line
    assert f"-> R {c['parameter']:.3f}" in line and f"with u_R {c['axis']:.3f}" in line


def test_second_run_does_nothing(tiny):
    jobs = su.dry_run_jobs(tiny["work"], configfiles=[tiny["work"] / TINY_REL])
    assert jobs == {}, f"a second run would execute {jobs}"


def test_gpu_rules_never_overlap(tiny):
    """`--resources gpu=1`: at most one GPU job at a time (from the run's start/finish log)."""
    gpu_rules = {n for n, r in JOB_RULES.items() if r.gpu and n in tiny["graph"]}
    if not gpu_rules:
        pytest.skip("no rule declares resources gpu=1 yet")
    events = su.job_events(tiny["log"])
    started = {rule for kind, rule, _ in events if kind == "start"}
    assert gpu_rules <= started, f"GPU rules not seen in the run log: {gpu_rules - started}"
    assert su.max_concurrent(events, gpu_rules) == 1
    # the run had room for parallel work: CPU-only jobs did overlap when the DAG allowed it
    # (sanity of the log parser: all jobs together never exceeded --cores 4 jobs)
    assert su.max_concurrent(events, set(tiny["graph"])) <= 4


def _mutation_for(section):
    """The issue's named change for this section when its key exists, else a generic one."""
    for sec, key, value, must, must_not in NAMED:
        if sec == section:
            try:
                if su.get_path(CONFIG, f"{sec}.{key}") != value:
                    return f"{sec}.{key}", value, must, must_not
            except (KeyError, TypeError):
                pass
    mutation = _valid_mutation(section)
    if mutation is None:
        return None
    never = next((n[4] for n in NAMED if n[0] == section), set())
    return mutation[0], mutation[1], set(), never


@pytest.mark.parametrize("section", SECTION_PATHS or ["<none>"])
def test_setting_change_reruns_exactly_its_rules_and_dependants(tiny, section):
    """Snakemake's own plan after one changed setting == the rules carrying that section in
    params + their dependants; plus the issue's named cases (an SVM setting never reruns GAN or
    SimSiam training, a GAN setting never reruns data ingestion or patches, ...)."""
    if section == "<none>":
        pytest.skip("no rule carries a config section in params")
    mutation = _mutation_for(section)
    if mutation is None:
        pytest.skip(f"no numeric setting under {section} to change")
    leaf, new, must, must_not = mutation
    overlay = _overlay(tiny, section.replace(".", "_"), leaf, new)
    jobs = set(su.dry_run_jobs(tiny["work"], configfiles=[tiny["work"] / TINY_REL, overlay]))
    expected = _expected_for_section(tiny, section)
    assert jobs - {"all"} == expected - {"all"}, (
        f"changing {leaf} -> {new}: Snakemake would run {sorted(jobs)}, expected {sorted(expected)}"
    )
    present = set(tiny["graph"])
    assert must & present <= jobs, f"{leaf} change does not rerun {must & present - jobs}"
    assert not (jobs & must_not), f"{leaf} change would rerun {jobs & must_not}"


@pytest.mark.parametrize("module", sorted(MODULE_GROUPS) or ["<none>"])
def test_module_edit_reruns_exactly_its_users(tiny, module):
    """Editing a module (one per group of modules with the same users, MODULE_GROUPS) reruns
    exactly the rules declaring it and their dependants."""
    if module == "<none>":
        pytest.skip("no rule declares CODE(...) inputs")
    path = tiny["work"] / "src" / "sharpgen" / f"{module}.py"
    original = path.read_bytes()
    st = path.stat()
    try:
        path.write_bytes(original + b"\n# edited by test_workflow\n")
        future = time.time() + 5
        os.utime(path, (future, future))
        jobs = set(su.dry_run_jobs(tiny["work"], configfiles=[tiny["work"] / TINY_REL]))
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    users = {n for n, r in JOB_RULES.items() if module in r.code_modules and n in tiny["graph"]}
    expected = su.downstream(tiny["graph"], users)
    assert jobs - {"all"} == expected - {"all"}, (
        f"editing sharpgen/{module}.py: Snakemake would run {sorted(jobs)}, expected {sorted(expected)}"
    )
    data_side = {m for n in DATA_RULES | {"make_patches"} if n in JOB_RULES for m in JOB_RULES[n].code_modules}
    if module not in data_side:
        # a GAN/SSL-side module (one no data rule imports) never sends the data stage back
        assert not (jobs & (DATA_RULES | {"make_patches"}))


@pytest.mark.parametrize("rule", sorted(JOB_RULES) or ["<none>"])
def test_code_inputs_cover_imports(rule):
    """Every sharpgen module a rule's script imports is declared in CODE(...), so editing it
    reruns the rule. Plumbing modules (logging, atomic writes, config) are exempt; modules those
    import in turn are the rule author's call (e.g. the report figures declare `metrics` only
    where a figure uses it)."""
    if rule == "<none>":
        pytest.skip("no rules")
    info = JOB_RULES[rule]
    script = su.script_path(REPO_ROOT, info)
    if script is None or not script.exists():
        pytest.skip(f"{rule}: script not written yet")
    imported = su.direct_sharpgen_imports(script) - su.INFRA_MODULES
    missing = imported - set(info.code_modules)
    assert not missing, f"rule {rule} imports sharpgen {sorted(missing)} but lacks them in CODE(...)"


def test_real_rerun_leaves_training_alone(tiny):
    """Change the latest stage's setting that does not feed training, run for real: only the
    dry run's rules execute, training outputs keep their timestamps, and the run settles."""
    candidates = []
    for section in SECTION_PATHS:
        expected = _expected_for_section(tiny, section)
        if expected & (TRAINING_RULES | DATA_RULES | {"make_patches"}):
            continue
        if _valid_mutation(section):
            candidates.append((len(expected), section))
    if not candidates:
        pytest.skip("no stage downstream of training yet")
    _, section = min(candidates)
    leaf, new = _valid_mutation(section)
    work = tiny["work"]
    overlay = _overlay(tiny, "real", leaf, new)
    cfgs = [work / TINY_REL, overlay]
    watched = [work / o for n in TRAINING_RULES | {"make_patches"} if n in JOB_RULES
               for o in JOB_RULES[n].outputs]
    before = {p: p.stat().st_mtime_ns for p in watched if p.exists()}
    planned = set(su.dry_run_jobs(work, configfiles=cfgs))
    proc = su.run_snakemake(work, "--cores", "2", "--resources", "gpu=1",
                            "--configfile", *map(str, cfgs), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    ran = {rule for kind, rule, _ in su.job_events(proc.stdout + proc.stderr) if kind == "start"}
    assert ran == planned
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was rewritten by a {leaf} change"
    assert su.dry_run_jobs(work, configfiles=cfgs) == {}


@pytest.mark.parametrize("rule", sorted(JOB_RULES) or ["<none>"])
def test_scripts_take_settings_only_from_params(rule):
    """A script that read `snakemake.config` directly would escape the params rerun trigger."""
    if rule == "<none>":
        pytest.skip("no rules")
    script = su.script_path(REPO_ROOT, JOB_RULES[rule])
    if script is None or not script.exists():
        pytest.skip(f"{rule}: script not written yet")
    assert "snakemake.config" not in script.read_text(), (
        f"{script.name} reads snakemake.config; pass the setting through the rule's params"
    )


# Training rules that checkpoint outside Snakemake's outputs and resume: (rule, config section,
# overlay making the run long enough to be killed after its first checkpoint).
RESUMABLE = [
    ("train_gan", "gan", {"steps": 24, "checkpoint_every": 2, "log_every": 2,
                          "sample_every": 1000, "keep_checkpoints": 2}),
    ("train_ssl", "ssl", {"epochs": 4}),
]


def _checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.pt") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("rule, section, overlay", RESUMABLE, ids=[r[0] for r in RESUMABLE])
def test_killed_training_resumes_under_snakemake(tiny, tmp_path, rule, section, overlay):
    """Kill the whole Snakemake process group once the first checkpoint exists (a node crash),
    unlock, rerun: the job resumes from the checkpoint (its log says so) and completes."""
    if rule not in JOB_RULES:
        pytest.skip(f"rule {rule} not in the Snakefile yet")
    # a copy of the finished tiny run: the data stage is done, so the kill lands in training
    work = tmp_path / "wf"
    shutil.copytree(tiny["work"], work, symlinks=True)
    shutil.rmtree(work / ".snakemake" / "locks", ignore_errors=True)
    over = work / "resume.yaml"
    over.write_text(yaml.safe_dump({section: overlay}))
    cfgs = ["--configfile", TINY_REL, str(over)]
    ck_root = work / CONFIG["checkpoint_dir"] / section
    shutil.rmtree(ck_root, ignore_errors=True)  # the tiny run's checkpoints: start from scratch
    outputs = [work / o for o in JOB_RULES[rule].outputs]
    cmd = [str(su.SNAKEMAKE), rule, "--cores", "2", "--resources", "gpu=1", *cfgs]
    p = subprocess.Popen(cmd, cwd=work, env=su.snakemake_env(work), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _checkpoints(ck_root) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _checkpoints(ck_root), f"no checkpoint under {ck_root} (rc={p.poll()})"
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert not all(o.exists() for o in outputs), "training finished before the kill; raise steps"
    first = _checkpoints(ck_root)
    unlock = su.run_snakemake(work, "--unlock", *cfgs, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    proc = su.run_snakemake(work, rule, "--cores", "2", "--resources", "gpu=1", *cfgs,
                            timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    log = (work / CONFIG["results_dir"] / "logs" / f"{rule}.log").read_text()
    assert re.search(r"\bresum(ed|ing)\b", log, flags=re.I), f"{rule} log does not mention resuming:\n{log[-2000:]}"
    assert first, "no checkpoint survived the kill"
    for o in outputs:
        assert o.exists(), f"{o} missing after the resumed run"
    assert su.dry_run_jobs(work, rule, configfiles=[work / TINY_REL, over]) == {}
