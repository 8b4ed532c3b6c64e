"""envs/*.yaml (conda, for `snakemake --sdm conda`) agree with pyproject.toml, and every rule
names an env that provides what its script imports."""

from __future__ import annotations

import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import snakeutil as su
from snakeutil import REPO_ROOT

ENV_DIR = REPO_ROOT / "envs"
ENV_FILES = sorted(ENV_DIR.glob("*.yaml"))
# conda-forge name -> PyPI name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}
# import name -> PyPI name, where they differ
IMPORT_TO_PYPI = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow"}
NOT_PACKAGES = {"python", "pip"}
# runtime-only deps (Snakemake itself runs the job; the env needs no own copy)
PYPROJECT_ONLY = {"snakemake"}


def _pyproject():
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    reqs = {}
    for line in data["project"]["dependencies"]:
        r = Requirement(line)
        reqs[canonicalize_name(r.name)] = r.specifier
    return reqs


def _conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """'numpy >=1.26' / 'pytorch >=2.4,<=2.14.1' -> (pypi name, SpecifierSet)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", entry)
    assert m, f"cannot parse conda spec {entry!r}"
    name, spec = m.group(1), m.group(2).replace(" ", "")
    name = CONDA_TO_PYPI.get(name, name)
    return canonicalize_name(name), SpecifierSet(spec)


def _env_packages(path: Path) -> dict[str, SpecifierSet]:
    doc = yaml.safe_load(path.read_text())
    assert set(doc) <= {"name", "channels", "dependencies"}, f"{path.name}: unexpected keys {set(doc)}"
    assert "conda-forge" in doc.get("channels", []), f"{path.name}: conda-forge channel missing"
    pkgs = {}
    for entry in doc["dependencies"]:
        if isinstance(entry, dict):  # a pip: section
            for line in entry.get("pip", []):
                r = Requirement(line)
                pkgs[canonicalize_name(r.name)] = r.specifier
            continue
        name, spec = _conda_spec(entry)
        if name not in NOT_PACKAGES:
            pkgs[name] = spec
    return pkgs


def test_env_files_exist():
    names = {p.stem for p in ENV_FILES}
    assert {"data", "torch", "report"} <= names, f"envs/ has {sorted(names)}"


def _lock() -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_is_pinned_to_the_lock(env):
    """Every package of the env is a pyproject dependency, pinned (==) to the exact version of
    requirements.lock (torch: the Makefile's TORCH_SPEC), which satisfies pyproject's range:
    `--sdm conda` runs and `make` runs use the same versions (`make lock` re-pins envs/)."""
    pyproject, lock = _pyproject(), _lock()
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1)
    pkgs = _env_packages(env)
    assert pkgs, f"{env.name} lists no packages"
    for name, spec in pkgs.items():
        assert name in pyproject, f"{env.name}: {name} is not a pyproject.toml dependency"
        pins = [s for s in spec if s.operator == "=="]
        assert len(pins) == 1 and len(spec) == 1, f"{env.name}: {name}{spec} is not an exact pin"
        version = pins[0].version
        assert version == (torch_spec if name == "torch" else lock.get(name)), (
            f"{env.name}: {name}=={version} but the lock says {lock.get(name)} (run `make lock`)")
        assert pyproject[name].contains(version), f"{env.name}: {name}=={version} outside pyproject's {pyproject[name]}"


RULES, _ = su.load_rules(REPO_ROOT, [su.TINY])
JOB_RULES = sorted(n for n in RULES if n != "all")


@pytest.mark.parametrize("rule", JOB_RULES)
def test_rule_names_an_env_that_covers_its_imports(rule):
    info = RULES[rule]
    assert info.conda_env, f"rule {rule} has no conda: directive (add e.g. conda: \"../envs/data.yaml\")"
    env = (REPO_ROOT / "rules" / str(info.conda_env)).resolve()
    assert env.parent == ENV_DIR.resolve() and env.exists(), f"rule {rule}: env {info.conda_env} not in envs/"
    script = su.script_path(REPO_ROOT, info)
    if script is None or not script.exists():
        pytest.skip(f"{rule}: script not written yet")
    src = REPO_ROOT / "src" / "sharpgen"
    files = [script] + [src / f"{m}.py" for m in su.imported_sharpgen_modules(script)]
    needed = {canonicalize_name(IMPORT_TO_PYPI.get(n, n)) for n in su.third_party_imports(files)}
    missing = needed - set(_env_packages(env)) - PYPROJECT_ONLY
    assert not missing, f"rule {rule} imports {sorted(missing)} but {env.name} lacks them"


def test_lock_file_is_plain_exact_pins():
    """requirements.lock is pip constraints: only `name==version` lines (a `sharpgen @ file://...`
    line from `pip freeze` made every clean-clone install fail with ResolutionImpossible)."""
    for n, line in enumerate((REPO_ROOT / "requirements.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s;@]+", line.strip()), (
            f"requirements.lock:{n}: {line!r} is not an exact `name==version` pin (run `make lock`)")
        assert not line.lower().startswith(("sharpgen", "torch==")), f"requirements.lock:{n}: {line!r} must not be locked"
