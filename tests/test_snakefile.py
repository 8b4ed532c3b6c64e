"""The Snakefile validates its config: an invalid key or value stops the run, naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize(
    "overlay, message",
    [
        ("patches:\n  split: {train: 0.5, val: 0.5, test: 0.5}\n",
         "patches.split (train=0.5, val=0.5, test=0.5): the fractions sum to 1.5, not 1"),
        ("patches:\n  split: {train: 0, val: 0, test: 0}\n", "train must be > 0"),
        ("data:\n  source: jsoc\n  jsoc: {start: '2010.06.01_00:00:00_TAI', end: '2010.05.01_00:00:00_TAI'}\n",
         "the time range ends before it starts (start '2010.06.01_00:00:00_TAI', end '2010.05.01_00:00:00_TAI')"),
        ("data:\n  jsoc: {start: 'last tuesday'}\n",
         "config key 'data.jsoc.start': 'last tuesday' is not a JSOC TAI time"),
    ],
)
def test_semantic_config_errors_stop_the_dry_run(repo_root, tmp_path, overlay, message):
    """Split fractions and the JSOC time range are checked when the Snakefile loads its config,
    before any job (issue 18 point 5, issue 15 point 3)."""
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    proc = _dry_run(repo_root, "--configfile", str(path))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out, out[-3000:]
    assert "Job stats" not in out


def test_yaml_syntax_error_in_an_overlay(repo_root, tmp_path):
    """Snakemake reads --configfile overlays in its command line layer, before the Snakefile runs,
    and reports only "Config file is not valid JSON or YAML". README (Troubleshooting) says to
    rerun with --verbose, which shows PyYAML's own message with the file and line; this pins both
    halves, so a Snakemake upgrade that changes either is noticed."""
    path = tmp_path / "broken.yaml"
    path.write_text("patches:\n  size: 32\n   bin: 8\n")
    proc = _dry_run(repo_root, "--configfile", str(path))
    assert proc.returncode != 0
    assert "Config file is not valid JSON or YAML" in proc.stdout + proc.stderr
    proc = _dry_run(repo_root, "--verbose", "--configfile", str(path))
    assert proc.returncode != 0
    assert f'in "{path}", line 3, column 7' in proc.stdout + proc.stderr
    # the library loader used by the CLI and the tests names the file and line directly
    from sharpgen.config import load_config

    with pytest.raises(yaml.YAMLError, match=re.escape(f'in "{path}", line 3, column 7')):
        load_config(repo_root / "config.yaml", path)


# ------------------------------------------------------------------------------- lint, format, report


def test_snakefmt_check(repo_root):
    """The Snakefile and rules/*.smk are formatted as snakefmt writes them (fix: run
    `.venv/bin/snakefmt Snakefile rules/`)."""
    snakefmt = Path(sys.executable).with_name("snakefmt")
    if not snakefmt.exists():
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules/"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_snakemake_lint_is_clean(repo_root):
    """`snakemake --lint` reports nothing (and no warning about rules named in localrules that
    do not exist, e.g. fig_pipeline without graphviz)."""
    proc = subprocess.run([str(SNAKEMAKE), "--lint", "--cores", "1"], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Lints for" not in out and "not present in the Snakefile" not in out, out[-3000:]


def test_report_front_page_renders_with_the_config(repo_root):
    """`snakemake --report` renders rules/report/workflow.rst as a Jinja template (with
    ``snakemake.config``) and then as reStructuredText; both steps work on the default config
    and the tiny overlay without an undefined key or a docutils warning."""
    import jinja2
    from docutils.core import publish_parts

    from sharpgen.config import load_config

    text = (repo_root / "rules" / "report" / "workflow.rst").read_text()
    for overlays in ((), (repo_root / "tests" / "configs" / "tiny.yaml",)):
        cfg = load_config(repo_root / "config.yaml", *overlays)

        class Snakemake:
            config = cfg

        rst = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text).render(snakemake=Snakemake)
        html = publish_parts(rst, writer="html",  # as snakemake.report does (writer_name)
                             settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]
        assert "Pipeline" in html and f"mode <tt class=\"docutils literal\">{cfg['patches']['mode']}</tt>" in html
        assert ", ".join(cfg["directions"]["parameters"]) in html


def test_report_front_page_is_registered(repo_root):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(),
                          snakefile=repo_root / "Snakefile", workdir=repo_root)
        text = wf._workflow.report_text
    assert text is not None and str(text.get_path_or_uri(secret_free=True)).endswith("rules/report/workflow.rst")
