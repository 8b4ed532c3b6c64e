"""The Snakefile validates its config: an invalid key or value stops the run, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _dry_run(repo_root, *extra):
    return subprocess.run(
        [str(SNAKEMAKE), "-n", "--cores", "1", *extra],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("patches={'mode': 'zoom'}", "config key 'patches.mode': 'zoom' is not one of"),
        ("data={'source': 'ftp'}", "config key 'data.source': 'ftp' is not one of"),
        ("patches={'size': 'big'}", "config key 'patches.size': 'big' is not of type 'integer'"),
        ("bogus=1", "unknown config key(s) ['bogus'] under the top level"),
    ],
)
def test_invalid_config_stops_the_run(repo_root, override, message):
    proc = _dry_run(repo_root, "--config", override)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_every_rule_has_log_and_benchmark(repo_root):
    """Parse the rules through Snakemake's API and check log:/benchmark: on every rule."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(),
            snakefile=repo_root / "Snakefile",
            workdir=repo_root,
        )
        rules = list(wf._workflow.rules)
        assert rules
        for rule in rules:
            if rule.name == "all":
                continue
            assert rule.log, f"rule {rule.name} has no log:"
            assert rule.benchmark, f"rule {rule.name} has no benchmark:"
