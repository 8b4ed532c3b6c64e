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


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_matches_pyproject(env):
    """Every package of the env is a pyproject dependency, with the same version bounds."""
    pyproject = _pyproject()
    pkgs = _env_packages(env)
    assert pkgs, f"{env.name} lists no packages"
    for name, spec in pkgs.items():
        assert name in pyproject, f"{env.name}: {name} is not a pyproject.toml dependency"
        assert spec == pyproject[name], (
            f"{env.name}: {name}{spec} but pyproject.toml says {name}{pyproject[name]}"
        )


def test_envs_cover_pyproject():
    """Together the envs provide every runtime dependency of pyproject.toml."""
    covered = set()
    for env in ENV_FILES:
        covered |= set(_env_packages(env))
    missing = set(_pyproject()) - covered - PYPROJECT_ONLY
    assert not missing, f"no env provides {sorted(missing)}"


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
