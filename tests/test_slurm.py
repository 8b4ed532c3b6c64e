"""profiles/slurm: consistent with the rules, and a real run on a one-node SLURM cluster.

The real run needs root and SLURM installed (`sudo .ci/slurm_setup.sh install`, which CI does);
the test starts its own slurmctld/slurmd/munged (.ci/slurm_setup.sh start: own ports and config
under /tmp/sharpgen-slurm, partitions ci_cpu/ci_gpu, Gres=gpu:1 on /dev/null, no accounting),
runs the tiny pipeline through `--workflow-profile` (a copy of profiles/slurm with the partition
names, memory and time edited as a user would), checks what was submitted, and stops the daemons
it started.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import snakeutil as su
from snakeutil import REPO_ROOT

PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"
SETUP = REPO_ROOT / ".ci" / "slurm_setup.sh"
SLURM_DIR = Path(os.environ.get("SHARPGEN_SLURM_DIR", "/tmp/sharpgen-slurm"))
SLURM_CONF = SLURM_DIR / "slurm.conf"
CPU_PART, GPU_PART = "ci_cpu", "ci_gpu"
#: GPU rules whose GPU count comes from the config (gan/ssl.devices), not from the profile
CONFIG_COUNTED = {"train_gan", "train_ssl"}
TINY_REL = "tests/configs/tiny.yaml"
RUN_TIMEOUT_S = 600

RULES, CONFIG = su.load_rules(REPO_ROOT, [su.TINY])
JOB_RULES = {n: r for n, r in RULES.items() if n != "all"}


def _profile():
    return yaml.safe_load(PROFILE.read_text())


def _has_plugin() -> bool:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False
    return True


needs_plugin = pytest.mark.skipif(
    not _has_plugin(),
    reason="snakemake-executor-plugin-slurm not installed: pip install -e '.[slurm]'",
)


# --------------------------------------------------------------------------- profile, no SLURM


def test_profile_uses_the_slurm_executor_with_squeue_status():
    prof = _profile()
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"
    assert "resources" not in prof, "a global gpu resource would cap GPU jobs cluster-wide"
    assert prof["default-resources"]["gpu"] == 0
    assert prof["default-resources"]["slurm_partition"]
    assert prof["retries"] >= 1 and prof["latency-wait"] >= 10


def test_profile_gpu_rules_match_the_rules():
    """Rules declaring resources gpu=N <=> profile entries on a GPU partition with gpu: 1, or with
    no gpu key where the count comes from the config (the training rules: gan/ssl.devices)."""
    prof = _profile()
    cpu_part = prof["default-resources"]["slurm_partition"]
    for name in CONFIG_COUNTED:
        assert "gpu" not in prof["set-resources"][name], (
            f"{name}: a gpu key in the profile would override the rule's gpu=<devices>")
    profile_gpu = {n for n, res in prof["set-resources"].items()
                   if res.get("gpu") or n in CONFIG_COUNTED}
    rules_gpu = {n for n, r in JOB_RULES.items() if r.gpu}
    missing = rules_gpu - profile_gpu
    assert not missing, f"GPU rules without a GPU entry in profiles/slurm: {sorted(missing)}"
    extra = {n for n in profile_gpu & set(JOB_RULES) if not JOB_RULES[n].gpu}
    assert not extra, f"profiles/slurm gives a GPU to rules that do not declare gpu=1: {sorted(extra)}"
    for name in profile_gpu:
        part = prof["set-resources"][name].get("slurm_partition")
        assert part and part != cpu_part, f"{name}: GPU rule not on a GPU partition"


@needs_plugin
def test_dry_run_with_the_slurm_profile(tmp_path):
    """-n plans every job (no sbatch, no SLURM needed)."""
    work = su.copy_workflow(tmp_path / "wf")
    proc = su.run_snakemake(work, "-n", "--workflow-profile", "profiles/slurm",
                            "--configfile", TINY_REL, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    jobs = su.parse_job_stats(proc.stdout + proc.stderr)
    assert set(jobs) - {"all"}, jobs


# --------------------------------------------------------------------------- real SLURM


def _slurm_env():
    env = dict(os.environ, SLURM_CONF=str(SLURM_CONF))
    return env


def _node_idle(env) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split()[:1] == ["idle"]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root to start slurmctld/slurmd/munged (CI runs as root)")
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")
               if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): "
                    "run `sudo .ci/slurm_setup.sh install`")
    if not _has_plugin():
        pytest.skip("snakemake-executor-plugin-slurm not installed: pip install -e '.[slurm]'")
    env = _slurm_env()
    started = False
    if not _node_idle(env):
        proc = subprocess.run(["bash", str(SETUP), "start"], capture_output=True, text=True,
                              timeout=120)
        started = True
        if proc.returncode != 0 or not _node_idle(env):
            subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, timeout=60)
            pytest.skip("SLURM daemons did not come up:\n" + (proc.stdout + proc.stderr)[-2000:])
    yield env
    if started:
        subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, timeout=60)


def _ci_profile(work: Path) -> str:
    """profiles/slurm edited as a user would: partitions, memory and time for this tiny node."""
    prof = _profile()
    prof["default-resources"]["slurm_partition"] = CPU_PART
    prof["default-resources"]["mem_mb"] = 500
    prof["default-resources"]["runtime"] = 10
    for name, res in prof["set-resources"].items():
        if "slurm_partition" in res:
            res["slurm_partition"] = GPU_PART if res.get("gpu") or name in CONFIG_COUNTED else CPU_PART
        if "mem_mb" in res:
            res["mem_mb"] = 1000
        if "runtime" in res:
            res["runtime"] = 10
    prof["slurm-init-seconds-before-status-checks"] = 2
    prof["slurm-keep-successful-logs"] = True
    prof["retries"] = 0
    prof["latency-wait"] = 5
    d = work / "profiles" / "slurm_ci"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return "profiles/slurm_ci"


def _scontrol_job(env, jobid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    env = slurm_cluster
    missing = [r.name for r in JOB_RULES.values()
               if r.script and not su.script_path(REPO_ROOT, r).exists()]
    if missing:
        pytest.skip(f"workflow scripts not written yet for {missing}")
    work = su.copy_workflow(tmp_path_factory.mktemp("slurm_wf"))
    profile = _ci_profile(work)
    run_env = {**su.snakemake_env(work), **env}
    # Targets: the first GPU rules of the DAG (those no other GPU rule feeds) and everything
    # upstream of them; later GPU rules use the same profile mechanism (checked statically
    # above) and the whole tiny DAG runs locally in test_workflow.py. Keeps this test ~1-2 min.
    graph = su.rule_graph(work, [work / TINY_REL])
    gpu = {n for n, r in JOB_RULES.items() if r.gpu and n in graph}
    targets = sorted(g for g in gpu
                     if not any(g in su.downstream(graph, [o]) for o in gpu - {g})) or ["all"]
    t0 = time.monotonic()
    proc = su.run_snakemake(work, *targets, "--workflow-profile", profile,
                            "--configfile", TINY_REL, timeout=RUN_TIMEOUT_S, env=run_env)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    print(f"SLURM tiny run: {wall:.1f} s")
    assert proc.returncode == 0, f"SLURM run failed after {wall:.0f} s:\n{log[-6000:]}"
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    assert submitted, "no sbatch submission in the Snakemake log:\n" + log[-3000:]
    jobs = {}
    for _, slurm_id in submitted:
        info = _scontrol_job(env, slurm_id)
        m = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", info.get("Comment", ""))
        jobs[slurm_id] = {"rule": m.group(1) if m else info.get("Comment", "?"), **info}
    for sid, j in sorted(jobs.items(), key=lambda kv: int(kv[0])):
        print(f"  slurm job {sid}: rule={j['rule']} partition={j.get('Partition')} "
              f"tres={j.get('TresPerJob') or j.get('TresPerNode') or '-'} state={j.get('JobState')}")
    return {"work": work, "log": log, "jobs": jobs, "wall_s": wall, "targets": targets}


@pytest.mark.slow
def test_slurm_run_completes(slurm_run):
    work = slurm_run["work"]
    targets = slurm_run["targets"]
    outputs = RULES["all"].inputs if targets == ["all"] else [
        o for t in targets for o in JOB_RULES[t].outputs]
    for target in outputs:
        assert (work / target).exists(), f"{target} missing after the SLURM run"
    states = {j["rule"]: j.get("JobState") for j in slurm_run["jobs"].values()}
    assert all(s == "COMPLETED" for s in states.values()), states
    # every job of the DAG went through sbatch (rule all is local)
    dag_rules = {r for kind, r, _ in su.job_events(slurm_run["log"]) if kind == "start"} - {"all"}
    assert dag_rules <= set(states), f"rules not submitted: {dag_rules - set(states)}"
    # a second run submits nothing
    again = su.dry_run_jobs(work, *targets, configfiles=[work / TINY_REL])
    assert again == {}, again


@pytest.mark.slow
def test_slurm_cpu_rules_on_cpu_partition_without_gpu(slurm_run):
    cpu_jobs = [j for j in slurm_run["jobs"].values()
                if j["rule"] in JOB_RULES and not JOB_RULES[j["rule"]].gpu]
    assert cpu_jobs
    for job in cpu_jobs:
        assert job["Partition"] == CPU_PART, (job["rule"], job["Partition"])
        assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job["rule"]


@pytest.mark.slow
def test_slurm_gpu_rules_request_a_gpu_on_gpu_partition(slurm_run):
    gpu_jobs = [j for j in slurm_run["jobs"].values()
                if j["rule"] in JOB_RULES and JOB_RULES[j["rule"]].gpu]
    if not gpu_jobs:
        pytest.skip("no rule with resources gpu=1 in the DAG yet")
    for job in gpu_jobs:
        assert job["Partition"] == GPU_PART, (job["rule"], job["Partition"])
        tres = job.get("TresPerJob", "") + job.get("TresPerNode", "")
        assert re.search(r"gres[:/]gpu[:=]1", tres), (job["rule"], tres)


# --------------------------------------------------------------------------- paper preset

PAPER = REPO_ROOT / "presets" / "paper.yaml"


def test_paper_preset_validates():
    from sharpgen.config import load_config

    cfg = load_config(REPO_ROOT / "config.yaml", PAPER)
    assert cfg["data"]["source"] == "jsoc"
    assert cfg["data"]["jsoc"]["start"].startswith("2010.05")
    assert cfg["data"]["jsoc"]["cadence"] == "8h"
    assert cfg["patches"]["mode"] == "resize" and cfg["patches"]["size"] == 128
    if "gan" in cfg:
        assert cfg["gan"]["arch"] == "paper" and cfg["gan"]["batch_size"] == 32
        assert cfg["gan"]["lr_g"] == cfg["gan"]["lr_d"] == 5e-4
        assert cfg["gan"]["structure"] == []  # the published loss: no structure term
    assert cfg["directions"]["fold"] == "none"  # plain SVM normals in z
    if "sampling" in cfg:
        assert cfg["sampling"]["n"] == 10000
    if "ssl" in cfg:
        assert cfg["ssl"]["batch_size"] == 64 and cfg["ssl"]["lr"] == 0.0125
    for section in ("results_dir", "checkpoint_dir"):
        assert cfg[section] != "results", "the paper run must not overwrite the default results"


@needs_plugin
def test_paper_preset_dry_run_with_slurm_profile(tmp_path):
    """The whole paper DAG plans under the SLURM profile, offline (a dry run never calls JSOC:
    proxies point at a closed port so any HTTP attempt would fail the run)."""
    work = su.copy_workflow(tmp_path / "wf")
    env = su.snakemake_env(work)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    proc = su.run_snakemake(work, "-n", "--workflow-profile", "profiles/slurm",
                            "--configfile", "presets/paper.yaml", timeout=180, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = su.parse_job_stats(out)
    assert "download_jsoc" in jobs and "synthesize" not in jobs, jobs
    paper_rules, _ = su.load_rules(REPO_ROOT, [PAPER])
    core = {"make_patches", "train_gan", "sample_latents", "fit_boundaries", "train_ssl",
            "embed", "evaluate_retrieval"} | {n for n, r in paper_rules.items() if r.gpu}
    missing = (core & set(paper_rules)) - set(jobs)
    assert not missing, f"paper DAG lacks {sorted(missing)}: {jobs}"
    # GPU rules go to the GPU partition with a GPU (the job blocks of the dry run)
    for name, rule in paper_rules.items():
        if rule.gpu and name in jobs:
            block = re.search(rf"rule {name}:\n(?:    .*\n)*?    resources: (.*)", out)
            assert block and "gpu=1" in block.group(1), name
            assert "slurm_partition=gpu" in block.group(1), (name, block.group(1))

