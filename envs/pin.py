"""Pin the conda environments (envs/*.yaml) to the exact versions of requirements.lock.

Snakemake's conda documentation recommends pinned environments for reproducibility; here the
pins come from the same lock file `make` installs from, so `--sdm conda` runs and the venv run
the same versions. torch is not in the lock (TORCH_SPEC chooses it): `pytorch` is pinned to the
version of TORCH_SPEC. Run by `make lock` after the lock is refreshed; tests/test_envs.py checks
the pins against the lock and pyproject.toml.

    python envs/pin.py [--lock requirements.lock] [--torch 2.13.0]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: conda-forge name -> PyPI name where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PACKAGES = {"python", "pip"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """requirements.lock -> {canonical name: version}."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def pin_env(text: str, lock: dict[str, str], torch_version: str) -> str:
    """Rewrite the ``  - name <spec>`` lines of an env file to ``  - name ==<locked version>``."""
    out = []
    in_deps = False  # only the entries under `dependencies:` (not `channels:`)
    for line in text.splitlines():
        if re.match(r"[A-Za-z_]+:", line):
            in_deps = line.startswith("dependencies:")
        m = re.fullmatch(r"(\s*-\s+)([A-Za-z0-9_.\-]+)(\s*[^#]*?)(\s*#.*)?", line)
        if in_deps and m and m.group(2) not in NOT_PACKAGES and not line.strip().startswith("- pip:"):
            name = m.group(2)
            pypi = canonical(CONDA_TO_PYPI.get(name, name))
            version = torch_version if pypi == "torch" else lock.get(pypi)
            if version is None:
                raise SystemExit(f"envs: {name} is not in the lock file")
            line = f"{m.group(1)}{name} =={version}{m.group(4) or ''}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    ap.add_argument("--torch", default="2.13.0", help="pytorch version (TORCH_SPEC's)")
    args = ap.parse_args(argv)
    lock = read_lock(args.lock)
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        env.write_text(pin_env(env.read_text(), lock, args.torch))
        print(f"pinned {env.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
