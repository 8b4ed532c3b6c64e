"""benchmarks/gpu_check.py (issue 16.6) in its CPU smoke form, and its shell wrapper. < 60 s."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
WRAPPER = REPO_ROOT / "benchmarks" / "gpu_check.sh"
SECTIONS = ("matmul", "gan[stable]", "gan[paper]", "resume", "simsiam", "traverse", "physics")


def _numbers(x, where="report"):
    """Every (path, value) of a number (bools left out) or a non-finite-looking string in x."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield where, float(x)
    elif isinstance(x, str) and x.strip().lower() in ("nan", "inf", "-inf", "infinity"):
        yield where, float(x)


def test_smoke_run_passes_every_section_with_finite_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--json",
                           str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "PASS: 7/7 sections passed" in proc.stdout
    report = json.loads(out.read_text())
    assert report["passed"] is True
    assert set(report["sections"]) == set(SECTIONS)
    for name, section in report["sections"].items():
        assert section["passed"] is True, (name, section)
        assert all(section.get("checks", {}).values()), (name, section.get("checks"))
        bad = [(p, v) for p, v in _numbers(section, name) if not math.isfinite(v)]
        assert not bad, bad
    resume = report["sections"]["resume"]
    assert resume["resumed"] is True
    assert resume["killed_at_step"] >= 3
    assert resume["resumed_from_step"] == resume["killed_at_step"]
    assert resume["final_step"] > resume["killed_at_step"]
    for arch in ("stable", "paper"):
        gan = report["sections"][f"gan[{arch}]"]
        assert gan["images_per_s"] > 0 and 0 < gan["mfu"]
    assert report["sections"]["simsiam"]["losses"][-1] < report["sections"]["simsiam"]["losses"][0]
    assert report["sections"]["physics"]["runs_on"] == "cpu"


def test_wrapper_is_executable_and_parses():
    assert os.access(WRAPPER, os.X_OK)
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)
    text = WRAPPER.read_text()
    assert "timeout 290" in text  # < 5 minutes
    # installs nothing
    assert not any(w in text for w in ("pip install", "conda install", "apt-get"))
